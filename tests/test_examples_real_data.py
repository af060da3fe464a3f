"""The real-data examples in docs/examples/ run as the docs show them (issue 21): MedMNIST fine-tuning on the
PneumoniaMNIST fixture, native-resolution segmentation on a small vessel set."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_examples import run_example

FIXTURE = Path(__file__).resolve().parent / 'data' / 'pneumoniamnist_subset.npz'


@pytest.mark.slow
def test_medmnist_example_scores_the_official_test_split(tmp_path):
    report, out = run_example('medmnist_finetune.py', [FIXTURE, tmp_path / 'run', '--epochs', 1, '--img-size', 32,
                                                       '--labels', 'normal,pneumonia', '--bootstrap', 10])
    assert report['split'] == 'test' and report['n'] == 200
    assert report['training_overlap']['in_training_data'] == 0
    assert 'test split: ACC' in out
    assert json.loads((tmp_path / 'run' / 'metrics.json').read_text())['sizes'] == {'train': 300, 'val': 100,
                                                                                      'test': 200}


@pytest.mark.slow
def test_native_resolution_example_patches_and_predicts_at_native_size(tmp_path):
    result, out = run_example('native_resolution_seg.py', [tmp_path / 'vessels', tmp_path / 'run', '--demo',
                                                           '--demo-size', 96, '--img-size', 64, '--epochs', 1,
                                                           '--batch-size', 4])
    assert result['spatial'] == 'patch' and result['patch_size'] == 64
    assert 'patch mode, patch 64' in out and '(native size)' in out
    from PIL import Image
    pred = next((tmp_path / 'run' / 'predictions').glob('*_pred.png'))
    assert Image.open(pred).size == (96, 96)
