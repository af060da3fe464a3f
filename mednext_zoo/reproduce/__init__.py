"""Reproduce the pretrained tags: from a downloaded public release to a publishable Hub folder.

    from mednext_zoo.reproduce import reproduce
    reproduce('mednext_base.sarscov2_ct', data='downloads/sarscov2', out='runs/sarscov2', seeds=3)

The protocols (release, label order, split rule, input, recipe, seeds, the paper's figures) are data in
:mod:`.protocols`; the releases' layouts and content checks live in :mod:`mednext_zoo.data.releases`. This layer
sits above ``finetune`` and ``hub`` and nothing below imports it.
"""
from .protocols import PROTOCOLS, SplitRule, TagProtocol, get_protocol
from .runner import build_config, reproduce

__all__ = ['PROTOCOLS', 'SplitRule', 'TagProtocol', 'get_protocol', 'build_config', 'reproduce']
