"""Synthetic tasks of the data layer: documented fractions, absence, determinism, disjoint splits, preprocessing."""
import numpy as np
import pytest
import torch

from mednext_zoo.data import synthetic as S
from mednext_zoo.errors import UserInputError

# the means quoted in the module docstring (percent of the voxels of the cases that hold the structure)
DOCUMENTED = {'small': {'liver': 9.4, 'vessel': 0.27, 'lesion': 0.27},
              'lookalike': {'round': 0.87, 'elongated': 0.92},
              'thick': {'organ': 6.9, 'vessel': 0.29, 'nodule': 0.17}}


@pytest.fixture(scope='module')
def all_cases():
    return {name: S.make_seg_phantom(name) for name in S.SEG_PHANTOMS}


def _fractions(cases, k):
    return np.array([(c.label == k).mean() for c in cases])


def test_documented_fractions(all_cases):
    for name, want in DOCUMENTED.items():
        p = S.SEG_PHANTOMS[name]
        for cls, pct in want.items():
            f = _fractions(all_cases[name], p.classes.index(cls))
            assert 100 * f[f > 0].mean() == pytest.approx(pct, rel=0.1), (name, cls)


def test_small_structures_and_absence(all_cases):
    p, cases = S.SEG_PHANTOMS['small'], all_cases['small']
    for cls in ('vessel', 'lesion'):
        f = _fractions(cases, p.classes.index(cls))
        assert ((f == 0) | ((f >= 0.002) & (f < 0.005))).all(), cls  # 0.2-0.5 % where present
    lesion = _fractions(cases, p.classes.index('lesion'))
    assert [i for i, f in enumerate(lesion) if f == 0] == list(range(3, p.n_cases, 4))
    train, test = lesion[:p.n_train], lesion[p.n_train:]
    assert (train == 0).any() and (train > 0).any() and (test == 0).any() and (test > 0).any()


def test_geometry_spacing_and_ct_like_values(all_cases):
    for name, cases in all_cases.items():
        p = S.SEG_PHANTOMS[name]
        c = cases[0]
        assert c.image.shape == p.shape and c.label.shape == p.shape and c.image.dtype == np.float32
        assert c.label.dtype == np.int16 and c.spacing == p.spacing and p.spacing[2] > 2 * p.spacing[0]
        np.testing.assert_allclose(np.diag(c.affine)[:3], p.spacing)
        assert c.image.min() < -900 and (c.image > -150).mean() > 0.5  # air around a body
        assert set(np.unique(c.label)) == set(range(len(p.classes)))


def test_lookalike_same_intensity_and_thick_nodule_in_few_slices(all_cases):
    for c in all_cases['lookalike']:
        a, b = c.image[c.label == 1].mean(), c.image[c.label == 2].mean()
        assert abs(a - b) < 20  # only shape and position tell them apart
    for c in all_cases['thick']:
        assert 1 <= (c.label == 3).any(axis=(0, 1)).sum() <= 2


def test_determinism_by_seed():
    a, b = S.make_seg_phantom('small', 2, seed=5), S.make_seg_phantom('small', 2, seed=5)
    c = S.make_seg_phantom('small', 2, seed=6)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.image, y.image)
        np.testing.assert_array_equal(x.label, y.label)
    assert not np.array_equal(a[0].image, c[0].image)
    # a case does not depend on how many others are drawn with it
    np.testing.assert_array_equal(S.make_seg_phantom('small', 1, seed=5, start=1)[0].image, a[1].image)
    x1, x2 = S.make_cls_task('lesion', 'test', seed=1, n=4), S.make_cls_task('lesion', 'test', seed=1, n=4)
    assert torch.equal(x1.x, x2.x) and torch.equal(x1.y, x2.y)


def test_splits_are_disjoint_whole_cases():
    p = S.SEG_PHANTOMS['lookalike']
    train, test = S.phantom_cases('lookalike', 'train'), S.phantom_cases('lookalike', 'test')
    assert len(train) == p.n_train and len(test) == p.n_test
    assert not {c.case_id for c in train} & {c.case_id for c in test}
    for t in test:
        assert not any(np.array_equal(t.image, c.image) for c in train)
    sl = S.phantom_slices('lookalike', 'test')
    assert len(sl) == p.n_test * p.shape[2] and sl.case_ids == [c.case_id for c in test]
    assert sl.x.shape == (len(sl), 1, 64, 64) and sl.y.dtype == torch.int64 and 0 <= sl.x.min() < sl.x.max() <= 1
    assert torch.equal(sl.case, torch.arange(p.n_test).repeat_interleave(p.shape[2]))
    tr, te = S.make_cls_task('lesion', 'train', n=64), S.make_cls_task('lesion', 'test', n=64)
    assert not any(torch.equal(a, b) for a in te.x for b in tr.x)


def test_classification_task_balanced():
    t = S.make_cls_task('lesion', 'train', n=40)
    assert t.x.shape == (40, 1, 64, 64) and t.y.tolist() == [0, 1] * 20 and t.classes == ('no_lesion', 'lesion')
    assert 0 <= float(t.x.min()) < float(t.x.max()) <= 1


def test_written_dataset_reads_like_finetune(tmp_path):
    """write_phantom_dataset -> data.volumes -> finetune's CT normalisation equals phantom_slices."""
    from mednext_zoo.data.volumes import discover, load_volume
    from mednext_zoo.finetune.segmentation.preprocess import SYNAPSE_WINDOW, normalize_intensity
    assert S.CT_TRAIN_WINDOW == SYNAPSE_WINDOW
    root = S.write_phantom_dataset(str(tmp_path / 'small'), phantom='small', n_cases=2, n_test=1)
    ds = discover(root)
    assert [r.split for r in ds.records] == [None, None, 'test'] and ds.modality.lower() == 'ct'
    assert ds.label_names and 'lesion' in str(ds.label_names)
    vol = load_volume(ds.records[2])
    test = S.phantom_slices('small', 'test')
    n = S.SEG_PHANTOMS['small'].shape[2]
    np.testing.assert_allclose(vol.spacing, (2.5, 0.8, 0.8), rtol=1e-6)
    np.testing.assert_allclose(normalize_intensity(vol.image, 'ct'), test.x[:n, 0].numpy(), atol=1e-5)
    np.testing.assert_array_equal(vol.label, test.y[:n].numpy())


def test_unknown_names_are_user_errors():
    with pytest.raises(UserInputError, match='Unknown phantom.*small'):
        S.make_seg_phantom('nope')
    with pytest.raises(UserInputError, match='split'):
        S.phantom_cases('small', 'val')
    with pytest.raises(UserInputError, match='classification task'):
        S.make_cls_task('nope', 'train')
