"""Reproduce the pretrained tags: from a downloaded public release to a publishable Hub folder.

    from mednext_zoo.reproduce import reproduce
    reproduce('mednext_base.sarscov2_ct', data='downloads/sarscov2', out='runs/sarscov2', seeds=3)

The protocols of the tags (release, label order, split rule, input, recipe, seeds, the paper's figures) are data in
:mod:`.tag_protocols`; the releases' layouts and content checks live in :mod:`mednext_zoo.data.releases`. This layer
sits above ``finetune`` and ``hub`` and nothing below imports it. ``get_protocol``, the name of
``get_tag_protocol`` before 0.2, still works (with a DeprecationWarning) until 0.3.
"""
from typing import Any

from .runner import build_config, reproduce
from .tag_protocols import PROTOCOLS, SplitRule, TagProtocol, get_tag_protocol


def __getattr__(name: str) -> Any:
    if name == 'get_protocol':
        from . import protocols
        return protocols.get_protocol
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


__all__ = ['PROTOCOLS', 'SplitRule', 'TagProtocol', 'get_tag_protocol', 'build_config', 'reproduce']
