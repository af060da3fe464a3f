"""``--on-bad-file skip`` for both tasks (issue 12, item 9): damaged files are left out and counted in the report;
without it they stop the run with a message naming the file."""
import json
import os

import numpy as np
import pytest

from mednext_zoo.cli import main
from mednext_zoo.data import discover as discover_images
from mednext_zoo.data.synthetic import write_phantom_dataset
from mednext_zoo.data.volumes import discover as discover_volumes
from mednext_zoo.errors import UserInputError

pytest.importorskip('mednext_zoo.finetune.engine')


def _truncate(path, keep=0.5):
    data = open(path, 'rb').read()
    with open(path, 'wb') as f:
        f.write(data[:int(len(data) * keep)])


def test_seg_finetune_skips_and_counts_bad_volumes(tmp_path, capsys):
    data = write_phantom_dataset(str(tmp_path / 'data'), n_cases=5, shape=(40, 40, 4), n_test=0)
    bad = os.path.join(data, 'imagesTr', 'phantom_001_0000.nii.gz')
    _truncate(bad)
    open(os.path.join(data, 'labelsTr', 'phantom_003.nii.gz'), 'wb').close()  # an empty label file
    args = ['finetune', '--task', 'seg', '--model', 'medunext_tiny', '--data', data, '--img-size', '32',
            '--epochs', '1', '--batch-size', '4', '--no-progress', '--overlays', '0', '--no-export']
    assert main(args + ['--out', str(tmp_path / 'run_err')]) == 2
    err = capsys.readouterr().err
    assert 'phantom_001_0000.nii.gz' in err and 'Traceback' not in err
    assert not os.path.exists(tmp_path / 'run_err' / 'checkpoints')
    assert main(args + ['--out', str(tmp_path / 'run'), '--on-bad-file', 'skip']) == 0
    cfg = json.load(open(tmp_path / 'run' / 'config.json'))
    assert sorted(os.path.basename(f) for f, _ in cfg['skipped_files']) == \
        ['phantom_001_0000.nii.gz', 'phantom_003_0000.nii.gz']
    assert sum(cfg['split_sizes'].values()) == 3
    assert json.load(open(tmp_path / 'run' / 'metrics.json'))['skipped_files'] == 2
    assert '2 case(s) skipped' in capsys.readouterr().out
    with open(tmp_path / 'run' / 'splits.csv') as f:
        assert 'phantom_001' not in f.read()


def test_seg_discover_skip_keeps_sound_cases(tmp_path):
    data = write_phantom_dataset(str(tmp_path / 'data'), n_cases=3, shape=(24, 24, 3), n_test=0)
    _truncate(os.path.join(data, 'labelsTr', 'phantom_002.nii.gz'), 0.3)
    with pytest.raises(UserInputError, match=r'phantom_002\.nii\.gz'):
        discover_volumes(data)
    with pytest.warns(UserWarning, match='Skipped 1 case'):
        ds = discover_volumes(data, on_bad_file='skip')
    assert [r.case_id for r in ds.records] == ['phantom_000', 'phantom_001'] and len(ds.skipped) == 1


def test_cls_csv_skip_counts_missing_and_damaged_files(tmp_path):
    from PIL import Image
    for i in range(4):
        Image.fromarray(np.full((16, 16), 40 * i, np.uint8)).save(tmp_path / f'{i}.png')
    _truncate(tmp_path / '3.png', 0.4)
    (tmp_path / 'm.csv').write_text('path,label\n0.png,a\n1.png,b\n2.png,a\n3.png,b\ngone.png,a\n5.png,b\n',
                                    encoding='utf-8')
    with pytest.raises(UserInputError, match=r'gone\.png'):
        discover_images(str(tmp_path / 'm.csv'))
    with pytest.warns(UserWarning, match='Skipped 3'):
        src = discover_images(str(tmp_path / 'm.csv'), on_bad_file='skip')
    assert sorted(os.path.basename(p) for p, _ in src.skipped) == ['3.png', '5.png', 'gone.png']
    assert len(src.samples) == 3


@pytest.mark.parametrize('raw, match', [
    ('path,label\nä.png,a\n'.encode('latin-1'), 'not UTF-8'),
    (b'path,label\n0.png,a,extra\n', 'line 2: 3 fields for 2 columns'),
    (b'path,label\n0.png\x00,a\n', 'NUL byte'),
])
def test_cls_csv_damaged_manifest(tmp_path, raw, match):
    (tmp_path / 'm.csv').write_bytes(raw)
    with pytest.raises(UserInputError, match=match):
        discover_images(str(tmp_path / 'm.csv'), on_bad_file='skip')
