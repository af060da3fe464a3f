"""benchmarks/int8_trained.py's pure parts: calibration volumes that read back as the training inputs, and the
per-runtime scoring (strict 3D Dice, label-map agreement, max |delta logit|) on a tiny phantom volume."""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

import mednext_zoo  # noqa: F401  (registers the models)
from mednext_zoo.data.synthetic import PHANTOM_CLASSES, write_phantom_dataset
from mednext_zoo.data.volumes import discover, load_volume

BENCH = Path(__file__).resolve().parents[1] / 'benchmarks'
SETTINGS = {'img_size': 32, 'intensity': 'ct', 'window': [-125.0, 275.0], 'context': 1, 'slice_axis': 2}


@pytest.fixture(scope='module')
def script():
    sys.path.insert(0, str(BENCH))
    try:
        return importlib.import_module('int8_trained')
    finally:
        sys.path.remove(str(BENCH))


@pytest.fixture(scope='module')
def phantom(tmp_path_factory):
    root = tmp_path_factory.mktemp('phantom')
    write_phantom_dataset(str(root), n_cases=1, n_test=1)
    return discover(str(root), 'auto').records


def test_calibration_cases_read_back_as_training_inputs(script, phantom, tmp_path):
    from mednext_zoo.data.preprocessing import segmentation_spec
    from mednext_zoo.deploy.preprocessing import Preprocessing, load_calibration_images
    from mednext_zoo.finetune.segmentation.inference import volume_inputs

    n = script.write_calibration_cases(phantom[:1], tmp_path)
    vol = load_volume(phantom[0], None, 2)
    assert n == vol.image.shape[0] and len(list(tmp_path.iterdir())) == 1
    # the export reads the raw volume through the run's recipe: exactly the training inputs, every slice
    got = load_calibration_images(tmp_path, Preprocessing(segmentation_spec(SETTINGS), task='seg'), limit=1000)
    expected = volume_inputs(vol, 32, 'ct', (-125.0, 275.0), 1)
    assert got.shape == expected.shape and (got - expected).abs().max() < 1e-5


def test_evaluate_runtimes_scores_and_compares(script, phantom):
    torch.manual_seed(0)
    model = timm.create_model('medunext_tiny', img_size=32, num_classes=4, in_chans=1).eval()
    vols = [load_volume(r, None, 2) for r in phantom]

    def lesion_everywhere(x):  # +50 on the last class: its label map covers every voxel
        out = model(x).clone()
        out[:, 3] += 50.0
        return out

    runners = {script.REFERENCE: lambda x: model(x), 'same': lambda x: model(x) + 1e-3,
               'shifted': lesion_everywhere}
    res = script.evaluate_runtimes(runners, vols, list(PHANTOM_CLASSES), SETTINGS, batch_size=5)
    rts = res['runtimes']
    assert res['n_cases'] == 2 and res['classes'] == ['liver', 'kidney', 'spleen']
    same, shifted = rts['same'], rts['shifted']
    assert same['agreement']['mean'] == 1.0 and same['voxels_changed'] == 0.0
    assert same['dice'] == rts[script.REFERENCE]['dice']
    assert same['max_abs_dlogit']['all'] == pytest.approx(1e-3, abs=1e-5)
    assert shifted['max_abs_dlogit']['spleen'] == pytest.approx(50.0, abs=1e-3)
    assert shifted['max_abs_dlogit']['liver'] == pytest.approx(0.0, abs=1e-6)
    assert shifted['agreement']['liver'] == 0.0 and shifted['voxels_changed'] > 0.5
    # every voxel labelled spleen: liver / kidney missed (strict Dice 0), spleen Dice = its share of the volume
    assert shifted['dice']['liver'] == 0.0 and shifted['dice']['kidney'] == 0.0
    assert shifted['n_common_cases']['liver'] == 2 and shifted['dice_common_cases']['liver'] == 0.0
    share = np.mean([(v.label == 3).mean() for v in vols])
    assert 0 < shifted['dice']['spleen'] < 2 * share / (1 + share) + 0.05
    md = script.render_markdown(res, '## tiny')
    assert '| shifted | 0.00 | 0.00 |' in md and 'liver in phantom_000' in md  # the per-case note lists moves


def test_script_help_runs(script, capsys):
    with pytest.raises(SystemExit) as e:
        script.main(['--help'])
    assert e.value.code == 0 and '--run' in capsys.readouterr().out
