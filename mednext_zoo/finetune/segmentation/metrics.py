"""Moved: the segmentation metrics are :mod:`mednext_zoo.metrics.segmentation` (0.2); this module re-exports them for
older imports and will be removed in 0.3."""
from ...metrics.segmentation import *  # noqa: F401,F403
from ...metrics.segmentation import __all__  # noqa: F401
