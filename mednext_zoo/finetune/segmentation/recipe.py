"""Moved: the training recipe is :mod:`mednext_zoo.finetune.recipe` (0.2; ``SegRecipe`` is now ``TrainingRecipe``);
this module re-exports it for older imports and will be removed in 0.3."""
from typing import Any

from .. import recipe as _recipe
from ..recipe import *  # noqa: F401,F403
from ..recipe import __all__  # noqa: F401


def __getattr__(name: str) -> Any:
    return getattr(_recipe, name)  # SegRecipe: with its deprecation warning
