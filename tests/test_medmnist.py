"""MedMNIST .npz files as a classification source: each task type, name resolution, bad files (issue 21)."""
import os
import zipfile

import numpy as np
import pytest
import torch

from mednext_zoo.data import discover, load_sample
from mednext_zoo.data.images import ImageClassificationDataset
from mednext_zoo.data.medmnist import MEDMNIST_2D, array_item_id, is_array_source, read_medmnist, resolve_npz, subset_of
from mednext_zoo.errors import UserInputError

FIXTURE = os.path.join(os.path.dirname(__file__), 'data', 'pneumoniamnist_subset.npz')


def _write(path, n=(6, 3, 4), size=28, channels=1, labels=None, dtype=np.uint8, seed=0, **extra):
    """A MedMNIST-shaped file: ``labels(split, n)`` gives each split's label array (default: 2 classes)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, k in zip(('train', 'val', 'test'), n):
        shape = (k, size, size) if channels == 1 else (k, size, size, channels)
        arrays[f'{split}_images'] = rng.integers(0, 256, shape).astype(dtype)
        arrays[f'{split}_labels'] = (labels(split, k) if labels else (np.arange(k) % 2)[:, None]).astype(np.int64)
    arrays.update(extra)
    np.savez_compressed(path, **arrays)
    return str(path)


@pytest.mark.parametrize('name,task,k', [('pneumoniamnist', 'binary', 2), ('bloodmnist', 'multi-class', 8),
                                         ('retinamnist', 'ordinal', 5), ('chestmnist', 'multi-label', 14)])
def test_each_task_type_reads_with_the_built_in_table(tmp_path, name, task, k):
    info = MEDMNIST_2D[name]
    assert info.task == task and len(info.classes) == k
    if task == 'multi-label':
        labels = lambda split, n: np.eye(k, dtype=np.int64)[np.arange(n) % k] | (np.arange(n)[:, None] == 0)  # noqa
    else:
        labels = lambda split, n: (np.arange(n) % k)[:, None]  # noqa: E731
    path = _write(tmp_path / f'{name}_64.npz', n=(k + 2, 3, 4), size=64, channels=info.channels, labels=labels)
    src = discover(path)
    assert src.classes == list(info.classes)  # index order, not sorted
    assert src.meta['subset'] == name and src.meta['size'] == 64 and src.meta['task_type'] == task
    assert src.channels == info.channels
    assert [len(src.subset(s)) for s in ('train', 'val', 'test')] == [k + 2, 3, 4]
    assert src.samples[0].name.endswith('#train/0')
    assert src.multi_label == (task == 'multi-label')
    ds = ImageClassificationDataset(src.subset('train'), src.class_to_idx, in_chans=3, multi_label=src.multi_label)
    x, y = ds[1]
    assert x.shape == (3, 64, 64) and 0 <= float(x.min()) and float(x.max()) <= 1
    if task == 'multi-label':
        assert torch.equal(y, torch.eye(k)[1])
        assert src.samples[0].label.split('|')[0] == info.classes[0]  # image 0 has labels 0 (and 0 again)
    else:
        assert y == 1 and src.subset('train')[1].label == info.classes[1]


def test_pixels_are_scaled_like_an_8_bit_png(tmp_path):
    path = _write(tmp_path / 'pneumoniamnist.npz')
    with np.load(path) as z:
        raw = z['test_images'][2]
    src = discover(path)
    np.testing.assert_allclose(load_sample(src.subset('test')[2]), raw / 255.0, atol=1e-7)


def test_the_shared_fixture_keeps_its_official_splits_and_counts():
    src = discover(FIXTURE, labels='normal,pneumonia')
    counts = {s: np.bincount([src.class_to_idx[x.label] for x in src.subset(s)]).tolist()
              for s in ('train', 'val', 'test')}
    assert counts == {'train': [75, 225], 'val': [27, 73], 'test': [86, 114]}
    assert src.meta['task_type'] == 'binary'


def test_labels_override_names_and_an_unknown_file_gets_class_k(tmp_path):
    path = _write(tmp_path / 'mine.npz', labels=lambda s, n: (np.arange(n) % 3)[:, None])
    assert discover(path).classes == ['class_0', 'class_1', 'class_2']
    assert discover(path, labels='a, b, c').classes == ['a', 'b', 'c']
    with pytest.raises(UserInputError, match='outside 0..1'):
        discover(path, labels='a,b')
    with pytest.raises(UserInputError, match='distinct'):
        discover(path, labels='a,a,b')
    ml = _write(tmp_path / 'ml.npz', labels=lambda s, n: np.eye(3, dtype=np.int64)[np.arange(n) % 3])
    assert discover(ml).multi_label  # N, L 0/1 labels of an unknown file: multi-label
    with pytest.raises(UserInputError, match='multi-label'):
        discover(ml, labels='multi-class:a,b,c')


def test_names_resolve_in_the_medmnist_root_and_nothing_is_downloaded(tmp_path, monkeypatch):
    monkeypatch.setenv('MEDMNIST_ROOT', str(tmp_path))
    _write(tmp_path / 'pneumoniamnist_64.npz', size=64)
    _write(tmp_path / 'pneumoniamnist.npz')
    assert resolve_npz('pneumoniamnist_64') == str(tmp_path / 'pneumoniamnist_64.npz')
    assert resolve_npz('pneumoniamnist_28') == str(tmp_path / 'pneumoniamnist.npz')  # 28 px files carry no suffix
    assert is_array_source('pneumoniamnist_64') and not is_array_source('some_folder')
    assert discover('pneumoniamnist_64').meta['size'] == 64
    with pytest.raises(UserInputError) as e:
        resolve_npz('dermamnist_128')
    assert str(tmp_path / 'dermamnist_128.npz') in str(e.value) and 'Nothing is downloaded' in str(e.value)
    assert subset_of('/x/organamnist_224.npz') == 'organamnist' and subset_of('/x/mine.npz') is None


def _expect(path, match):
    with pytest.raises(UserInputError, match=match) as e:
        read_medmnist(path)
    assert os.fspath(path) in str(e.value)


def test_bad_files_are_user_errors_naming_the_file(tmp_path):
    rng = np.random.default_rng(0)
    ok = {f'{s}_{k}': (rng.integers(0, 255, (4, 28, 28)).astype(np.uint8) if k == 'images'
                       else np.zeros((4, 1), np.int64)) for s in ('train', 'val', 'test') for k in ('images', 'labels')}
    p = tmp_path / 'missing.npz'
    np.savez(p, **{k: v for k, v in ok.items() if k != 'val_labels'})
    _expect(p, 'lacks val_labels')
    p = tmp_path / 'lengths.npz'
    np.savez(p, **{**ok, 'test_labels': np.zeros((3, 1), np.int64)})
    _expect(p, '4 test images but 3 test labels')
    p = tmp_path / 'pneumoniamnist_128.npz'  # the table gives pneumonia 2 classes
    np.savez(p, **{**ok, 'train_labels': np.array([[0], [1], [2], [1]])})
    _expect(p, 'label 2, outside 0..1')
    p = tmp_path / 'chestmnist.npz'  # multi-label: 0 / 1 only
    np.savez(p, **{**ok, **{f'{s}_labels': np.full((4, 14), 2, np.int64) for s in ('train', 'val', 'test')}})
    _expect(p, 'each label must be 0 or 1')
    p = tmp_path / 'floats.npz'
    np.savez(p, **{**ok, 'val_images': ok['val_images'].astype(np.float32)})
    _expect(p, 'dtype float32; MedMNIST images are uint8')
    p = tmp_path / 'float_labels.npz'
    np.savez(p, **{**ok, 'val_labels': np.zeros((4, 1), np.float32)})
    _expect(p, 'labels must be integers')
    p = tmp_path / 'objects.npz'
    np.savez(p, **{**ok, 'train_labels': np.array([[0], [1], [0], [None]], dtype=object)})
    _expect(p, 'pickled data is never loaded')
    good = tmp_path / 'good.npz'
    np.savez_compressed(good, **ok)
    data = good.read_bytes()
    p = tmp_path / 'truncated.npz'
    p.write_bytes(data[:len(data) // 2])
    _expect(p, 'Cannot read MedMNIST file')
    p = tmp_path / 'notzip.npz'
    p.write_bytes(b'not a zip archive at all')
    _expect(p, 'Cannot read MedMNIST file')
    with zipfile.ZipFile(good) as zf:  # a stored (uncompressed) member cut short
        names = zf.namelist()
    p = tmp_path / 'stored.npz'
    np.savez(p, **ok)
    raw = bytearray(p.read_bytes())
    p.write_bytes(bytes(raw[:-200]))
    _expect(p, 'MedMNIST file')
    assert names


def test_item_identity_is_the_content(tmp_path):
    a = _write(tmp_path / 'a.npz', seed=1)
    b = _write(tmp_path / 'b.npz', seed=1)
    c = _write(tmp_path / 'c.npz', seed=2)
    assert array_item_id(a, 'test/1') == array_item_id(b, 'test/1')  # a copy matches
    assert array_item_id(a, 'test/1') != array_item_id(c, 'test/1')
    assert array_item_id(a, 'test/1') != array_item_id(a, 'test/2')
