"""Moved: the tags' protocols are :mod:`mednext_zoo.reproduce.tag_protocols` (0.2; ``get_protocol`` is now
``get_tag_protocol``); this module re-exports them for older imports and will be removed in 0.3."""
from typing import Any

from .tag_protocols import PROTOCOLS, SplitRule, TagProtocol, get_tag_protocol

__all__ = ['PROTOCOLS', 'SplitRule', 'TagProtocol', 'get_tag_protocol']


def __getattr__(name: str) -> Any:
    if name == 'get_protocol':
        import warnings
        warnings.warn('get_protocol is renamed get_tag_protocol (mednext_zoo.reproduce.tag_protocols); get_protocol '
                      'will be removed in 0.3.', DeprecationWarning, stacklevel=2)
        return get_tag_protocol
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
