"""``mednext-zoo finetune --task seg`` / ``evaluate`` / ``predict`` on a segmentation run; bad input messages."""
import json
import os

import nibabel as nib
import numpy as np
import pytest

from mednext_zoo.cli import main
from mednext_zoo.data.synthetic import write_phantom_dataset

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
    assert (cfg['epochs'], cfg['batch_size'], cfg['lr'], cfg['opt']) == (1, 4, 3e-3, 'adam')
    assert cfg['task'] == 'segmentation' and cfg['classes'][1:] == ['liver', 'kidney', 'spleen']
    out = capsys.readouterr().out
    assert 'mode `legacy`' in out and 'mode `strict`' in out and 'HD95 (mm)' in out
    assert os.path.isfile(os.path.join(run, 'eval-test', 'report.md'))  # imagesTs/labelsTs is the test split
    assert main(['evaluate', '--run', run, '--data', data, '--overlays', '0', '--no-progress']) == 0
    out = capsys.readouterr().out
    assert 'mode `strict`' in out  # the run's own data: only its held-out test case is scored, and it says so
    assert "4 of the 5 cases of" in out and 'scoring only the 1 held-out cases' in out
    src = os.path.join(data, 'imagesTs', 'phantom_004_0000.nii.gz')
    assert main(['predict', '--run', run, src, '--out', str(tmp_path / 'pred'), '--overlays', '1']) == 0
    pred = str(tmp_path / 'pred' / 'phantom_004_pred.nii.gz')  # the nnU-Net channel suffix _0000 is dropped
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
    # a start that fails during set-up (here: its --pretrained file) leaves no run folder behind
    data = write_phantom_dataset(str(tmp_path / 'ok'), n_cases=3, shape=(32, 32, 2))
    rc = main(['finetune', '--task', 'seg', '--model', 'medunext_tiny', '--data', data, '--out',
               str(tmp_path / 'run'), '--img-size', '32', '--epochs', '1', '--no-progress',
               '--pretrained', str(tmp_path / 'missing.safetensors')])
    assert rc == 2 and 'missing.safetensors does not exist' in capsys.readouterr().err
    assert not (tmp_path / 'run').exists()


@pytest.mark.slow
def test_two_process_ddp_segmentation(tmp_path):
    import subprocess
    import sys
    data = write_phantom_dataset(str(tmp_path / 'data'), n_cases=6, shape=(40, 40, 6), seed=3)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, 'PYTHONPATH': root, 'OMP_NUM_THREADS': '1'}
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', '--master_port=29517',
           '-m', 'mednext_zoo.cli', 'finetune', '--task', 'seg', '--model', 'medunext_tiny', '--data', data,
           '--out', str(tmp_path / 'run'), '--img-size', '32', '--epochs', '2', '--batch-size', '4',
           '--no-progress', '--overlays', '0', '--no-export']
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'Grad strides do not match' not in proc.stdout + proc.stderr  # channels-last weights fit DDP buckets
    cfg = json.load(open(tmp_path / 'run' / 'config.json'))
    assert cfg['world_size'] == 2
    log = [json.loads(line) for line in open(tmp_path / 'run' / 'metrics.jsonl')]
    assert len(log) == 2 and all('val_dice' in r for r in log)  # one line per epoch (rank 0 only)
    assert os.path.isfile(tmp_path / 'run' / 'eval-val' / 'report.md')
