"""Pretrained weights: save, cache, upload and safely load mednext-zoo checkpoints.

Loading itself is timm's: ``import mednext_zoo, timm`` then
``timm.create_model("mednext_base.sarscov2_ct", pretrained=True)``, ``"hf-hub:<repo>"``,
``"local-dir:<folder>"`` or ``pretrained_cfg_overlay=dict(file=...)``. This package writes what
those read (:func:`save_pretrained`; classifiers also load in Hugging Face transformers), carries it
offline (:func:`seed_hf_cache`), repairs folders from older versions (:func:`fix_config`) and uploads it
(:func:`push_to_hub`). The weight registry (Hub org, tags, status) lives in
``mednext_zoo.catalog`` and the guarded loader in ``mednext_zoo.models`` so that the models can use them without
importing this layer.
"""
from ..catalog import DATASETS, HF_HUB_ORG, PRETRAINED_TAGS, hub_id, weight_status
from ..errors import PickleCheckpointError, PretrainedMismatchError, PretrainedWeightsNotFoundError
from ..models import check_state_dict
from ._hub import (
    FIX_RECORD_NAME,
    HUB_FILES,
    LOADER_ARGS,
    config_problems,
    count_params_flops,
    fix_config,
    list_pretrained,
    push_to_hub,
    save_pretrained,
    seed_hf_cache,
)
from ._io import load_state_dict
from .card import render_model_card

__all__ = [
    'HF_HUB_ORG', 'DATASETS', 'PRETRAINED_TAGS', 'HUB_FILES',
    'hub_id', 'weight_status', 'list_pretrained',
    'save_pretrained', 'seed_hf_cache', 'push_to_hub', 'load_state_dict', 'check_state_dict',
    'fix_config', 'config_problems', 'LOADER_ARGS', 'FIX_RECORD_NAME',
    'count_params_flops', 'render_model_card',
    'PretrainedWeightsNotFoundError', 'PretrainedMismatchError', 'PickleCheckpointError',
]
