"""``BackendUnavailable``: a backend or dtype this machine / install cannot run (a skipped benchmark row)."""
from ..errors import UserInputError

__all__ = ['BackendUnavailable']


class BackendUnavailable(UserInputError):
    """The reason a backend x dtype cannot run here (not installed, no hardware support, not offered)."""
