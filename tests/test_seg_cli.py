"""``mednext-zoo finetune --task seg`` / ``evaluate`` / ``predict`` on a segmentation run; bad input messages."""
import json
import os

import nibabel as nib
import numpy as np
import pytest

from mednext_zoo.cli import main
from mednext_zoo.finetune.segmentation.phantom import write_phantom_dataset

pytest.importorskip('mednext_zoo.models.medunext')  # MedUNeXt (issue 3)
pytest.importorskip('mednext_zoo.finetune.engine')  # the training engine and cli/finetune.py (issue 7)


@pytest.mark.slow
def test_cli_finetune_evaluate_predict(tmp_path, capsys):
    data = write_phantom_dataset(str(tmp_path / 'data'), n_cases=4, shape=(40, 40, 4), n_test=1)
    run = str(tmp_path / 'run')
    rc = main(['finetune', '--task', 'seg', '--model', 'medunext_tiny', '--data', data, '--out', run,
               '--img-size', '32', '--epochs', '1', '--batch-size', '4', '--no-progress', '--overlays', '0'])
    assert rc == 0
    cfg = json.load(open(os.path.join(run, 'config.json')))
    # options left at their defaults take the segmentation recipe; given ones are kept
    assert (cfg['epochs'], cfg['batch_size'], cfg['lr'], cfg['opt']) == (1, 4, 1e-3, 'adam')
    assert cfg['task'] == 'segmentation' and cfg['classes'][1:] == ['liver', 'kidney', 'spleen']
    out = capsys.readouterr().out
    assert 'mode `legacy`' in out and 'mode `strict`' in out and 'HD95 (mm)' in out
    assert os.path.isfile(os.path.join(run, 'eval-test', 'report.md'))  # imagesTs/labelsTs is the test split
    assert main(['evaluate', '--run', run, '--data', data, '--overlays', '0', '--no-progress']) == 0
    assert 'mode `strict`' in capsys.readouterr().out
    src = os.path.join(data, 'imagesTs', 'phantom_004_0000.nii.gz')
    assert main(['predict', '--run', run, src, '--out', str(tmp_path / 'pred'), '--overlays', '1']) == 0
    pred = str(tmp_path / 'pred' / 'phantom_004_0000_pred.nii.gz')
    assert capsys.readouterr().out.strip().endswith(pred)
    np.testing.assert_allclose(nib.load(pred).affine, nib.load(src).affine)
    # the existing run is never overwritten without --resume / --overwrite
    assert main(['finetune', '--task', 'seg', '--model', 'medunext_tiny', '--data', data, '--out', run,
                 '--img-size', '32', '--epochs', '1', '--no-progress']) == 2
    assert 'already exists' in capsys.readouterr().err


def test_cli_bad_input_is_one_line(tmp_path, capsys):
    data = write_phantom_dataset(str(tmp_path / 'data'), n_cases=2, shape=(20, 20, 2))
    os.remove(os.path.join(data, 'labelsTr', 'phantom_001.nii.gz'))
    rc = main(['finetune', '--task', 'seg', '--model', 'medunext_tiny', '--data', data, '--out',
               str(tmp_path / 'run'), '--img-size', '32', '--epochs', '1', '--no-progress'])
    err = capsys.readouterr().err
    assert rc == 2 and 'phantom_001_0000.nii.gz: missing label file' in err and 'Traceback' not in err
    rc = main(['finetune', '--task', 'seg', '--model', 'medunext_tiny', '--data', data, '--out',
               str(tmp_path / 'run'), '--ct-window', 'wide', '--no-progress'])
    assert rc == 2 and '--ct-window' in capsys.readouterr().err
