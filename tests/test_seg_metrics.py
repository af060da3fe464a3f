"""Dice / HD95 in the legacy and strict modes: agreement with medpy on real masks, every empty-mask rule,
anisotropic spacing, aggregation and reports."""
import math
import os

import numpy as np
import pytest
from scipy import ndimage

from mednext_zoo.errors import UserInputError
from mednext_zoo.finetune.segmentation.report import dice_boxplot, markdown_table, write_case_csv
from mednext_zoo.metrics import segmentation as M

medpy_binary = pytest.importorskip('medpy.metric.binary')


@pytest.fixture(scope='module')
def liver():
    pydicom = pytest.importorskip('pydicom')
    from pydicom.data import get_testdata_file
    mask = pydicom.dcmread(get_testdata_file('liver_1frame.dcm')).pixel_array > 0
    assert mask.shape == (512, 512) and mask.sum() > 10000
    return mask


def _perturbations(mask):
    fp = ndimage.generate_binary_structure(2, 1)
    return {
        'eroded3': ndimage.binary_erosion(mask, fp, iterations=3),
        'dilated5': ndimage.binary_dilation(mask, fp, iterations=5),
        'shift': np.roll(mask, (7, -4), axis=(0, 1)),
        'shift_eroded': np.roll(ndimage.binary_erosion(mask, fp, iterations=2), (-3, 11), axis=(0, 1)),
        'with_blob': mask | (np.add.outer((np.arange(512) - 60) ** 2, (np.arange(512) - 450) ** 2) < 15 ** 2),
    }


def test_legacy_matches_medpy_on_real_liver_mask_2d(liver):
    for name, pred in _perturbations(liver).items():
        d, h = M.binary_metrics(pred, liver, 'legacy')
        assert d == pytest.approx(medpy_binary.dc(pred, liver), abs=1e-12), name
        assert h == pytest.approx(medpy_binary.hd95(pred, liver), abs=1e-9), name
        assert 0 < d < 1 and h > 0


def test_legacy_and_strict_match_medpy_on_3d_stack(liver):
    p = _perturbations(liver)
    gt = np.stack([liver, np.roll(liver, 2, 0), ndimage.binary_erosion(liver, iterations=4)])
    pred = np.stack([p['shift'], p['eroded3'], p['dilated5']])
    d, h = M.binary_metrics(pred, gt, 'legacy')
    assert d == pytest.approx(medpy_binary.dc(pred, gt), abs=1e-12)
    assert h == pytest.approx(medpy_binary.hd95(pred, gt), abs=1e-9)
    spacing = (5.0, 0.7, 0.7)
    d2, h2 = M.binary_metrics(pred, gt, 'strict', spacing)
    assert d2 == d
    assert h2 == pytest.approx(medpy_binary.hd95(pred, gt, voxelspacing=spacing), abs=1e-9)
    assert h2 != pytest.approx(h)


def test_bbox_crop_changes_nothing_at_volume_edges():
    rng = np.random.default_rng(0)
    a = np.zeros((20, 30, 25), bool)
    b = np.zeros_like(a)
    a[0:8, 0:10, 3:20] = True  # touches the volume's faces
    b[2:12, 0:12, 0:18] = True
    a &= rng.random(a.shape) > 0.1
    sp = (2.5, 0.8, 1.1)
    assert M.hd95(a, b, sp) == pytest.approx(medpy_binary.hd95(a, b, voxelspacing=sp), abs=1e-9)
    assert M.hd95(a, b) == pytest.approx(medpy_binary.hd95(a, b), abs=1e-9)


def test_anisotropic_spacing_from_nibabel_standard_honoured_in_strict(tmp_path):
    import nibabel as nib
    from nibabel.testing import data_path

    from mednext_zoo.data.volumes import VolumeRecord, load_volume
    src = os.path.join(data_path, 'standard.nii.gz')
    ref = nib.load(src)
    assert tuple(float(z) for z in ref.header.get_zooms()) == (1.0, 3.0, 2.0)
    vol = load_volume(VolumeRecord('standard', src, src, 'nifti'))  # the file is a 0/255 mask: use it as labels
    gt = vol.label > 0
    assert vol.spacing == (2.0, 1.0, 3.0)  # slices-first: (z, x, y)
    for axis, mm in ((0, 2.0), (1, 1.0), (2, 3.0)):  # pad, then shift the mask by one voxel along one axis
        g = np.pad(gt, 2)
        p = np.roll(g, 1, axis=axis)
        _, h_strict = M.binary_metrics(p, g, 'strict', vol.spacing)
        _, h_legacy = M.binary_metrics(p, g, 'legacy')
        assert h_strict == pytest.approx(medpy_binary.hd95(p, g, voxelspacing=vol.spacing), abs=1e-9)
        assert h_legacy == pytest.approx(medpy_binary.hd95(p, g), abs=1e-9)
        assert h_strict == pytest.approx(mm * h_legacy)  # a pure shift along one axis: distances scale with it
    # in the file's own axis order the spacing is the header's (1, 3, 2)
    assert vol.native_spacing() == (1.0, 3.0, 2.0)


def test_legacy_empty_mask_rules():
    gt = np.zeros((4, 8, 8), bool)
    gt[1:3, 2:5, 2:5] = True
    empty = np.zeros_like(gt)
    assert M.binary_metrics(gt, empty, 'legacy') == (1.0, 0.0)  # predicted, ground truth empty
    assert M.binary_metrics(empty, gt, 'legacy') == (0.0, 0.0)  # missed
    assert M.binary_metrics(empty, empty, 'legacy') == (0.0, 0.0)  # both empty: "prediction empty" rule
    assert M.binary_metrics(gt, gt, 'legacy') == (1.0, 0.0)


def test_strict_empty_mask_rules():
    gt = np.zeros((4, 8, 10), bool)
    gt[1:3, 2:5, 2:5] = True
    empty = np.zeros_like(gt)
    sp = (3.0, 0.5, 0.5)
    diag = math.sqrt((4 * 3.0) ** 2 + (8 * 0.5) ** 2 + (10 * 0.5) ** 2)
    assert M.volume_diagonal(gt.shape, sp) == pytest.approx(diag)
    assert M.binary_metrics(gt, empty, 'strict', sp) == (0.0, pytest.approx(diag))  # hallucinated
    assert M.binary_metrics(empty, gt, 'strict', sp) == (0.0, pytest.approx(diag))  # missed
    d, h = M.binary_metrics(empty, empty, 'strict', sp)  # both empty: excluded
    assert math.isnan(d) and math.isnan(h)
    assert M.binary_metrics(gt, gt, 'strict', sp) == (1.0, 0.0)
    with pytest.raises(UserInputError, match='spacing'):
        M.binary_metrics(gt, gt, 'strict', (1.0, 1.0))
    with pytest.raises(UserInputError, match='mode'):
        M.binary_metrics(gt, gt, 'nnunet')


def _case(seed, classes=('bg', 'a', 'b'), miss_b=False, extra_b=False):
    rng = np.random.default_rng(seed)
    gt = np.zeros((6, 20, 20), np.int16)
    gt[1:5, 3:10, 3:10] = 1
    if not extra_b:
        gt[2:4, 12:18, 12:18] = 2
    pred = np.roll(gt, int(rng.integers(0, 2)), axis=1)
    if miss_b:
        pred[pred == 2] = 0
    if extra_b:
        pred[2:4, 12:15, 12:15] = 2
    return pred, gt


def test_aggregation_mean_over_cases_then_classes_and_exclusion():
    classes = ('bg', 'a', 'b')
    sp = (2.0, 1.0, 1.0)
    cases = [M.evaluate_case(*_case(0), classes, 'c0', sp), M.evaluate_case(*_case(1, miss_b=True), classes, 'c1', sp),
             M.evaluate_case(*_case(2, extra_b=True), classes, 'c2', sp)]
    leg = M.summarize([c['legacy'] for c in cases])
    st = M.summarize([c['strict'] for c in cases])
    # legacy: b missed in c1 -> 0, hallucinated in c2 (gt empty) -> 1; all three cases count
    b_leg = [c['legacy'].dice[1] for c in cases]
    assert b_leg[1] == 0.0 and b_leg[2] == 1.0
    assert leg['per_class'][1]['dice_mean'] == pytest.approx(np.mean(b_leg)) and leg['per_class'][1]['n'] == 3
    assert leg['mean_dice'] == pytest.approx(np.mean([np.mean([c['legacy'].dice[i] for c in cases]) for i in (0, 1)]))
    # strict: hallucinated b in c2 -> 0 and worst-case distance (not excluded: only both-empty is)
    assert cases[2]['strict'].dice[1] == 0.0
    assert cases[2]['strict'].hd95[1] == pytest.approx(M.volume_diagonal((6, 20, 20), sp))
    assert st['hd95_unit'] == 'mm' and leg['hd95_unit'] == 'voxels'
    assert st['per_class'][1]['dice_mean'] < leg['per_class'][1]['dice_mean']
    # both empty in strict is excluded from the means
    pred, gt = _case(3)
    pred[pred == 2] = 0
    gt[gt == 2] = 0
    c3 = M.evaluate_case(pred, gt, classes, 'c3', sp)
    assert math.isnan(c3['strict'].dice[1])
    st2 = M.summarize([cases[0]['strict'], c3['strict']])
    assert st2['per_class'][1]['n'] == 1 and st2['per_class'][1]['dice_mean'] == cases[0]['strict'].dice[1]
    assert c3['legacy'].dice[1] == 0.0  # legacy counts the both-empty case as a 0


def test_reports(tmp_path):
    classes = ('bg', 'a', 'b')
    cases = [M.evaluate_case(*_case(i, miss_b=i == 1), classes, f'c{i}', (2.0, 1.0, 1.0)) for i in range(3)]
    for mode in M.MODES:
        s = M.summarize([c[mode] for c in cases])
        md = markdown_table(s, 'phantom')
        assert f'`{mode}`' in md and '| a |' in md and '+-' in md
        assert ('HD95 (mm)' in md) == (mode == 'strict')
    path = write_case_csv([c[m] for c in cases for m in M.MODES], str(tmp_path / 'cases.csv'))
    import csv
    rows = list(csv.DictReader(open(path)))
    assert len(rows) == 3 * 2 * 2 and {r['mode'] for r in rows} == {'legacy', 'strict'}
    png = dice_boxplot([c['legacy'] for c in cases], str(tmp_path / 'box.png'))
    assert open(png, 'rb').read(8) == b'\x89PNG\r\n\x1a\n'


def test_one_dice_with_named_empty_mask_rules():
    """Every Dice of the package is dice_from_counts; the rules differ only where a mask is empty."""
    import torch
    empty, full, half = np.zeros((2, 3), bool), np.ones((2, 3), bool), np.eye(2, 3, dtype=bool)
    expect = [  # (pred, gt, rule -> Dice)
        (empty, empty, {'medpy': 1.0, 'exclude': math.nan, 'exclude_absent': math.nan, 'legacy': 0.0}),
        (full, empty, {'medpy': 0.0, 'exclude': 0.0, 'exclude_absent': math.nan, 'legacy': 1.0}),
        (empty, full, {'medpy': 0.0, 'exclude': 0.0, 'exclude_absent': 0.0, 'legacy': 0.0}),
        (half, full, {r: 2 * 2 / (2 + 6) for r in M.EMPTY_RULES}),
    ]
    assert set(M.EMPTY_RULES) == {'medpy', 'exclude', 'exclude_absent', 'legacy'}
    for pred, gt, by_rule in expect:
        for rule, want in by_rule.items():
            for a, b in ((pred, gt), (torch.from_numpy(pred), torch.from_numpy(gt))):  # numpy or torch, same figure
                got = M.dice(a, b, rule)
                assert (math.isnan(got) and math.isnan(want)) or got == want, (rule, got, want)
    with pytest.raises(UserInputError, match='empty-mask rule'):
        M.dice(full, full, 'zero')
    # the legacy and strict modes use the legacy and exclude rules
    assert M.binary_metrics(full, empty, 'legacy')[0] == M.dice(full, empty, 'legacy') == 1.0
    assert math.isnan(M.binary_metrics(empty, empty, 'strict')[0])
    # per class over label maps (pooled over every slice), and the mean of the scored ones
    pred, gt = torch.tensor([[[0, 1], [2, 2]]]), torch.tensor([[[0, 1], [1, 2]]])
    assert M.class_dice(pred, gt, range(1, 4)) == pytest.approx([2 / 3, 2 / 3, math.nan], nan_ok=True)
    assert M.mean_scored([0.5, math.nan, 1.0]) == 0.75 and M.mean_scored([math.nan], default=0.0) == 0.0
