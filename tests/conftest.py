"""Shared fixtures."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants as hf_constants

if os.environ.get('PYTEST_XDIST_WORKER'):
    # `pytest -n 2` (the README's test command): one intra-op thread per worker process, so that two workers on two
    # cores do not run four threads (oversubscribed oneDNN / OpenMP threads wait on each other)
    torch.set_num_threads(1)


@pytest.fixture
def offline_hf(tmp_path_factory, monkeypatch):
    """An empty Hugging Face home / cache, offline (HF_HUB_OFFLINE=1).

    huggingface_hub reads its environment into ``huggingface_hub.constants`` at import time, so the already
    imported constants are patched as well as the environment; transformers reads them from there at call time.
    """
    home = tmp_path_factory.mktemp('hf_home')
    cache = home / 'hub'
    cache.mkdir()
    for k, v in dict(HF_HOME=home, HF_HUB_CACHE=cache, HF_HUB_OFFLINE='1').items():
        monkeypatch.setenv(k, os.fspath(v))
    monkeypatch.setattr(hf_constants, 'HF_HOME', os.fspath(home))
    monkeypatch.setattr(hf_constants, 'HF_HUB_CACHE', os.fspath(cache))
    monkeypatch.setattr(hf_constants, 'HF_HUB_OFFLINE', True)
    return cache


OLD_CONFIG = Path(__file__).parent / 'data' / 'config_v0.1.0_mednext_tiny_sarscov2_ct.json'
"""config.json exactly as save_pretrained wrote it before transformers support (mednext-zoo 0.1.0, main b4f1c84):
mednext_tiny, 2 classes (sarscov2_ct labels), 64 x 64, with ``num_classes`` repeated in ``model_args``."""


@pytest.fixture
def old_style_folder(tmp_path):
    """(model, folder, old config dict): random mednext_tiny weights saved beside :data:`OLD_CONFIG`."""
    import safetensors.torch
    import timm
    import torch

    import mednext_zoo  # noqa: F401  (registers the architectures)

    torch.manual_seed(3)
    model = timm.create_model('mednext_tiny', img_size=64, num_classes=2).eval()
    folder = tmp_path / 'old'
    folder.mkdir()
    safetensors.torch.save_file(model.state_dict(), os.fspath(folder / 'model.safetensors'))
    shutil.copyfile(OLD_CONFIG, folder / 'config.json')
    (folder / 'README.md').write_text('# a card\n')
    return model, folder, json.loads(OLD_CONFIG.read_text())
