"""Segmentation data: layouts, geometry, protocols as data, preprocessing, loss, and every bad input."""
import json
import os
import random

import nibabel as nib
import numpy as np
import pytest
import torch

from mednext_zoo.data.synthetic import PHANTOM_CLASSES, write_phantom_dataset
from mednext_zoo.data.volumes import VolumeRecord, discover, load_volume
from mednext_zoo.errors import UserInputError
from mednext_zoo.finetune.segmentation import preprocess as P
from mednext_zoo.finetune.segmentation import protocols as PR
from mednext_zoo.finetune.segmentation.losses import DiceCELoss, SoftDiceLoss


@pytest.fixture(scope='module')
def phantom_root(tmp_path_factory):
    return write_phantom_dataset(str(tmp_path_factory.mktemp('ph')), n_cases=3, n_test=1, shape=(32, 40, 6))


def _nii(path, arr, affine=None):
    nib.save(nib.Nifti1Image(arr, np.diag([1.0, 1.0, 1.0, 1.0]) if affine is None else affine), path)
    return path


# ---------------------------------------------------------------- layouts
def test_nnunet_layout_geometry_and_names(phantom_root):
    ds = discover(phantom_root)
    assert ds.layout == 'nnunet' and len(ds.records) == 4
    assert [r.split for r in ds.records] == [None, None, None, 'test']
    lm = PR.get_label_map(PHANTOM_CLASSES)
    PR.check_label_names(ds.label_names, lm, ds.meta_source)  # matches
    with pytest.raises(UserInputError, match='dataset.json.*do not match.*synapse'):
        PR.check_label_names(ds.label_names, PR.SYNAPSE_LABEL_MAP, ds.meta_source)
    vol = load_volume(ds.records[0], lm)
    src = nib.load(ds.records[0].image)
    assert vol.image.shape == (6, 32, 40) and vol.label.shape == (6, 32, 40)
    assert vol.spacing == (4.0, 1.5, 1.5) and vol.native_spacing() == (1.5, 1.5, 4.0)
    np.testing.assert_array_equal(vol.affine, src.affine)
    np.testing.assert_array_equal(vol.to_native(vol.image), np.asanyarray(src.dataobj))
    assert set(np.unique(vol.label)) == {0, 1, 2, 3}


def test_transunet_synapse_layout(tmp_path):
    h5py = pytest.importorskip('h5py')
    (tmp_path / 'train_npz').mkdir()
    (tmp_path / 'test_vol_h5').mkdir()
    rng = np.random.default_rng(0)
    for z in range(3):
        lab = np.zeros((24, 24), np.uint8)
        lab[4:10, 4:10] = z + 1
        np.savez(tmp_path / 'train_npz' / f'case0005_slice{z:03d}.npz', image=rng.random((24, 24)).astype(np.float32),
                 label=lab)
    with h5py.File(tmp_path / 'test_vol_h5' / 'case0001.npy.h5', 'w') as f:
        f['image'] = rng.random((4, 24, 24)).astype(np.float32)
        f['label'] = np.full((4, 24, 24), 8, np.float32)
    ds = discover(str(tmp_path))
    assert ds.layout == 'synapse' and [(r.case_id, r.split) for r in ds.records] == [('case0005', 'train'),
                                                                                      ('case0001', 'test')]
    tr = load_volume(ds.records[0], PR.SYNAPSE_LABEL_MAP)
    assert tr.image.shape == (3, 24, 24) and [int(tr.label[z].max()) for z in range(3)] == [1, 2, 3]
    te = load_volume(ds.records[1], PR.SYNAPSE_LABEL_MAP)
    assert te.label.dtype == np.int16 and te.spacing_known is False
    with h5py.File(tmp_path / 'test_vol_h5' / 'case0002.npy.h5', 'w') as f:
        f['image'] = np.zeros((2, 24, 24), np.float32)
        f['label'] = np.full((2, 24, 24), 11, np.float32)  # a raw BTCV value (pancreas)
    bad = [r for r in discover(str(tmp_path)).records if r.case_id == 'case0002'][0]
    with pytest.raises(UserInputError, match=r'case0002\.npy\.h5.*\[11\].*outside the label map'):
        load_volume(bad, PR.SYNAPSE_LABEL_MAP)


def test_acdc_layout_phases_and_4d_skipped(tmp_path):
    for pid in (1, 2):
        d = tmp_path / 'training' / f'patient{pid:03d}'
        d.mkdir(parents=True)
        (d / 'Info.cfg').write_text('ED: 1\nES: 12\nGroup: NOR\n')
        for fr in (1, 12):
            lab = np.zeros((20, 20, 3), np.uint8)
            lab[5:15, 5:15] = 3
            lab[8:12, 8:12] = 2 if fr == 1 else 1
            _nii(str(d / f'patient{pid:03d}_frame{fr:02d}.nii.gz'), np.ones((20, 20, 3), np.float32))
            _nii(str(d / f'patient{pid:03d}_frame{fr:02d}_gt.nii.gz'), lab)
        _nii(str(d / f'patient{pid:03d}_4d.nii.gz'), np.ones((20, 20, 3, 5), np.float32))
    ds = discover(str(tmp_path))
    assert ds.layout == 'acdc' and len(ds.records) == 4
    assert [(r.patient, r.phase) for r in ds.records] == [('patient001', 'ED'), ('patient001', 'ES'),
                                                          ('patient002', 'ED'), ('patient002', 'ES')]
    vol = load_volume(ds.records[0], PR.ACDC_LABEL_MAP)
    assert vol.image.shape == (3, 20, 20)
    # the 4D cine, if given directly, is refused by name
    four_d = str(tmp_path / 'training' / 'patient001' / 'patient001_4d.nii.gz')
    with pytest.raises(UserInputError, match=r'patient001_4d\.nii\.gz: a 4D image'):
        load_volume(VolumeRecord('p1', four_d, None, 'nifti'))


def test_2d_folders_and_csv(tmp_path):
    from PIL import Image
    from skimage import data as skdata
    rgb = skdata.immunohistochemistry()[:64, :80]
    (tmp_path / 'images').mkdir()
    (tmp_path / 'masks').mkdir()
    Image.fromarray(rgb).save(tmp_path / 'images' / 'ISIC_01.jpg')
    m = np.zeros((64, 80), np.uint8)
    m[10:40, 20:60] = 255
    Image.fromarray(m).save(tmp_path / 'masks' / 'ISIC_01_segmentation.png')
    ds = discover(str(tmp_path))
    assert ds.layout == 'folders'
    vol = load_volume(ds.records[0], PR.get_label_map(['background', 'lesion']))
    assert vol.image.shape == (1, 64, 80, 3) and set(np.unique(vol.label)) == {0, 1}
    assert 0 <= vol.image.min() and vol.image.max() <= 1
    # CSV of NIfTI pairs with patient ids and splits
    _nii(str(tmp_path / 'a.nii.gz'), np.zeros((20, 20, 2), np.float32))
    _nii(str(tmp_path / 'a_lab.nii.gz'), np.zeros((20, 20, 2), np.uint8))
    (tmp_path / 'list.csv').write_text('image,label,patient_id,split\na.nii.gz,a_lab.nii.gz,P1,train\n')
    ds = discover(str(tmp_path / 'list.csv'))
    assert ds.layout == 'csv' and ds.records[0].patient == 'P1' and ds.records[0].split == 'train'
    (tmp_path / 'bad.csv').write_text('image,label\na.nii.gz,nothere.nii.gz\n')
    with pytest.raises(UserInputError, match=r'bad\.csv line 2: missing label file .*nothere\.nii\.gz'):
        discover(str(tmp_path / 'bad.csv'))


# ---------------------------------------------------------------- bad input
def test_bad_inputs_name_the_file(tmp_path):
    root = tmp_path / 'ds'
    (root / 'imagesTr').mkdir(parents=True)
    (root / 'labelsTr').mkdir()
    img = _nii(str(root / 'imagesTr' / 'c1_0000.nii.gz'), np.zeros((20, 20, 4), np.float32))
    # missing label file
    with pytest.raises(UserInputError, match=r'c1_0000\.nii\.gz: missing label file .*labelsTr/c1\.nii\.gz'):
        discover(str(root))
    # shape mismatch
    lab = _nii(str(root / 'labelsTr' / 'c1.nii.gz'), np.zeros((20, 20, 5), np.uint8))
    with pytest.raises(UserInputError, match=r'labelsTr/c1\.nii\.gz: label shape \(20, 20, 5\) differs'):
        discover(str(root))  # found from the headers while indexing, before any training
    _nii(lab, np.zeros((20, 20, 4), np.uint8))
    rec = discover(str(root)).records[0]
    _nii(lab, np.zeros((20, 20, 5), np.uint8))  # changed after indexing: loading names it too
    with pytest.raises(UserInputError, match=r'labelsTr/c1\.nii\.gz: label shape \(20, 20, 5\) differs'):
        load_volume(rec)
    # affine mismatch
    _nii(lab, np.zeros((20, 20, 4), np.uint8), np.diag([1.0, 1.0, 2.5, 1.0]))
    with pytest.raises(UserInputError, match=r"labelsTr/c1\.nii\.gz: the label's affine differs"):
        load_volume(rec)
    # label values outside the map
    bad = np.zeros((20, 20, 4), np.uint8)
    bad[2, 2, 2] = 7
    _nii(lab, bad)
    with pytest.raises(UserInputError, match=r'labelsTr/c1\.nii\.gz: label values \[7\] are outside .*acdc'):
        load_volume(rec, PR.ACDC_LABEL_MAP)
    # non-integer labels (an image given as a label)
    _nii(lab, np.full((20, 20, 4), 0.5, np.float32))
    with pytest.raises(UserInputError, match=r'labelsTr/c1\.nii\.gz: label values must be integers'):
        load_volume(rec)
    # 4D image
    _nii(img, np.zeros((20, 20, 4, 3), np.float32))
    with pytest.raises(UserInputError, match=r'c1_0000\.nii\.gz: a 4D image \(20x20x4x3\)'):
        load_volume(rec)
    # empty dataset
    empty = tmp_path / 'empty'
    (empty / 'imagesTr').mkdir(parents=True)
    with pytest.raises(UserInputError, match='empty'):
        discover(str(empty))
    with pytest.raises(UserInputError, match='no such file'):
        discover(str(tmp_path / 'nothere'))
    # volume too small for the model
    with pytest.raises(UserInputError, match=r'small\.nii\.gz: slices of 8x20 voxels are too small.*224x224'):
        P.check_volume_size((3, 8, 20), 'small.nii.gz', model_size=224)


# ---------------------------------------------------------------- protocols
def test_protocol_lists():
    s = PR.SYNAPSE.splits
    assert len(s['train']) == 18 and len(s['test']) == 12 and not set(s['train']) & set(s['test'])
    assert s['test'] == (1, 2, 3, 4, 8, 22, 25, 29, 32, 35, 36, 38)
    a = PR.ACDC.splits
    assert (len(a['train']), len(a['val']), len(a['test'])) == (70, 10, 20)
    assert sorted(a['train'] + a['val'] + a['test']) == list(range(1, 101))
    ids = [f'case{n:04d}' for n in s['train'] + s['test']]
    split = PR.protocol_split(PR.SYNAPSE, ids)
    assert split['test'][:3] == ['case0001', 'case0002', 'case0003'] and len(split['train']) == 18
    with pytest.raises(UserInputError, match='needs case/patient numbers'):
        PR.protocol_split(PR.SYNAPSE, ids[:-1])
    with pytest.raises(UserInputError, match='none of the synapse'):
        PR.protocol_split(PR.SYNAPSE, ids + ['case0099'])
    acdc_ids = [f'patient{n:03d}_frame{f:02d}' for n in range(1, 101) for f in (1, 12)]
    asplit = PR.protocol_split(PR.ACDC, acdc_ids)
    assert len(asplit['test']) == 40 and 'patient002_frame01' in asplit['test']


def test_label_maps_synapse_btcv_acdc():
    assert PR.SYNAPSE_LABEL_MAP.classes[1:] == ('aorta', 'gallbladder', 'left kidney', 'right kidney', 'liver',
                                                'pancreas', 'spleen', 'stomach')
    assert PR.ACDC_LABEL_MAP.foreground == ('right ventricle', 'myocardium', 'left ventricle')
    # raw BTCV values map to the Synapse organ with the same name; the other organs become background
    raw = np.arange(14, dtype=np.int16)
    out = PR.remap_labels(raw, PR.BTCV_TO_SYNAPSE)
    for v in range(14):
        name = PR.BTCV_LABEL_MAP.classes[v]
        want = PR.SYNAPSE_LABEL_MAP.classes.index(name) if name in PR.SYNAPSE_LABEL_MAP.classes[1:] else 0
        assert out[v] == want
    assert out.tolist() == [0, 7, 4, 3, 2, 0, 5, 8, 1, 0, 0, 6, 0, 0]
    # TransUNet-style names are recognised; a swapped pair is not
    names = ['background', 'Aorta', 'Gallbladder', 'Kidney(L)', 'Kidney(R)', 'Liver', 'Pancreas', 'Spleen', 'Stomach']
    PR.check_label_names(names, PR.SYNAPSE_LABEL_MAP, 'x')
    names[3], names[4] = names[4], names[3]
    with pytest.raises(UserInputError, match="3: dataset 'Kidney\\(R\\)' vs map 'left kidney'"):
        PR.check_label_names(names, PR.SYNAPSE_LABEL_MAP, 'x')


def test_grouped_kfold_keeps_ed_es_together():
    ids = [f'patient{n:03d}_frame{f:02d}' for n in range(1, 13) for f in (1, 10)]
    folds = PR.grouped_kfold(ids, k=4, seed=1)
    assert len(folds) == 4
    seen = []
    for train, val in folds:
        assert {PR.patient_id(c) for c in train}.isdisjoint({PR.patient_id(c) for c in val})
        seen += val
    assert sorted(seen) == sorted(ids)
    assert PR.patient_id('patient007_frame01') == 'patient007' and PR.patient_id('case_ES') == 'case'
    with pytest.raises(UserInputError, match='k-fold'):
        PR.grouped_kfold(ids, k=13)


# ---------------------------------------------------------------- preprocessing and loss
def test_intensity_and_resizing():
    hu = np.array([[-1000.0, -125.0, 75.0, 275.0, 2000.0]])
    np.testing.assert_allclose(P.ct_window(hu), [[0, 0, 0.5, 1, 1]])
    np.testing.assert_allclose(P.ct_window(hu[:, 1:3], per_volume=False), [[0, 0.5]])
    z = P.zscore(np.random.default_rng(0).normal(5, 3, (4, 10, 10)))
    assert abs(z.mean()) < 1e-5 and abs(z.std() - 1) < 1e-4
    with pytest.raises(UserInputError, match='intensity'):
        P.normalize_intensity(hu, 'hist')
    lab = np.zeros((2, 37, 53), np.int16)
    lab[:, 5:20, 10:40] = 3
    lab[1, 25:30, 5:9] = 1
    small = P.resize_labels(lab, (64, 64))
    assert small.shape == (2, 64, 64) and set(small.unique().tolist()) == {0, 1, 3}
    back = P.resize_labels(small, (37, 53)).numpy()
    assert back.shape == lab.shape and (back == lab).mean() > 0.97
    t = torch.arange(4.0)[:, None, None].expand(4, 2, 2)
    s = P.stack_25d(t, 3)
    assert s.shape == (4, 3, 2, 2) and s[0, :, 0, 0].tolist() == [0, 0, 1] and s[3, :, 0, 0].tolist() == [2, 3, 3]
    with pytest.raises(UserInputError, match='odd'):
        P.stack_25d(t, 2)


def test_augmentation_keeps_labels_aligned():
    rng = random.Random(0)
    img = torch.zeros(2, 32, 32)
    lab = torch.zeros(32, 32, dtype=torch.long)
    lab[4:12, 6:20] = 2
    img[:, 4:12, 6:20] = 1.0
    for _ in range(20):
        i2, l2 = P.augment_pair(img, lab, rng)
        assert i2.shape == img.shape and l2.shape == lab.shape and set(l2.unique().tolist()) <= {0, 2}
        inside = i2[0][l2 == 2]
        assert inside.numel() and inside.mean() > 0.8  # image moved with the label


def test_dice_ce_loss():
    target = torch.zeros(2, 8, 8, dtype=torch.long)
    target[:, 2:6, 2:6] = 1
    good = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float() * 20
    bad = torch.zeros(2, 3, 8, 8)
    loss = DiceCELoss(3)
    assert loss(good, target) < 0.4 < loss(bad, target)
    # 0.5 CE + 0.5 soft Dice, by hand
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    ce = torch.nn.functional.cross_entropy(x, target)
    p = x.softmax(1)
    oh = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float()
    d = torch.stack([1 - (2 * (p[:, c] * oh[:, c]).sum() + 1e-5) / ((p[:, c] ** 2).sum() + oh[:, c].sum() + 1e-5)
                     for c in range(3)]).mean()
    assert torch.allclose(loss(x, target), 0.5 * ce + 0.5 * d, atol=1e-6)
    assert torch.allclose(SoftDiceLoss(3)(x, target), d, atol=1e-6)
    loss(x, target).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_dataset_json_v1_labels(tmp_path):
    write_phantom_dataset(str(tmp_path), n_cases=1, shape=(20, 20, 2))
    meta = json.load(open(tmp_path / 'dataset.json'))
    meta['labels'] = {str(i): n for i, n in enumerate(PHANTOM_CLASSES)}  # nnU-Net v1 / MSD style
    json.dump(meta, open(tmp_path / 'dataset.json', 'w'))
    ds = discover(str(tmp_path))
    PR.check_label_names(ds.label_names, PR.get_label_map(PHANTOM_CLASSES), 'dataset.json')
    assert os.path.basename(ds.meta_source) == 'dataset.json'


def test_label_maps_agree_with_medunext_defaults():
    medunext = pytest.importorskip('mednext_zoo.models.medunext')
    assert tuple(medunext.SYNAPSE_LABELS) == PR.SYNAPSE_LABEL_MAP.classes
    assert tuple(medunext.ACDC_LABELS) == PR.ACDC_LABEL_MAP.classes
