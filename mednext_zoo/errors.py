"""Errors raised for bad user input: the CLI prints their message without a traceback."""


class MedNeXtZooError(Exception):
    """Base class for errors that say what was wrong and what to do."""


class UserInputError(MedNeXtZooError, ValueError):
    """A file, value or option given by the user cannot be used."""


class PretrainedWeightsNotFoundError(UserInputError):
    """``pretrained=True`` but the weights are not where timm looked."""


class PretrainedMismatchError(UserInputError):
    """The checkpoint does not belong to this architecture / configuration."""


class PickleCheckpointError(UserInputError):
    """The checkpoint needs full (unsafe) unpickling and was not explicitly allowed."""
