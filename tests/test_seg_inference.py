"""Slice-wise volume inference: native geometry, NIfTI round trip with the source affine, TTA, overlays."""
import os

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from mednext_zoo.data.synthetic import PHANTOM_CLASSES, write_phantom_dataset
from mednext_zoo.data.volumes import VolumeRecord, discover, load_volume
from mednext_zoo.errors import UserInputError
from mednext_zoo.finetune.segmentation import inference as I
from mednext_zoo.finetune.segmentation.metrics import evaluate_case
from mednext_zoo.finetune.segmentation.preprocess import ct_window


class IntensityOracle(nn.Module):
    """Logits that pick the phantom class from the windowed intensity (a per-pixel, flip-equivariant model)."""

    def __init__(self, centres):
        super().__init__()
        self.centres = torch.tensor(centres)[None, :, None, None]
        self.w = nn.Parameter(torch.ones(()))

    def forward(self, x):
        return -self.w * (x[:, :1] - self.centres) ** 2 * 400


@pytest.fixture(scope='module')
def phantom(tmp_path_factory):
    root = write_phantom_dataset(str(tmp_path_factory.mktemp('ph')), n_cases=2, shape=(40, 56, 5),
                                 spacing=(1.2, 0.9, 3.5))
    return discover(root)


def _oracle(vol=None):
    if vol is None:  # windowed value (x + 125) / 400 of body 0, liver 60, kidney 180, spleen 110 HU
        return IntensityOracle([(v + 125) / 400 for v in (0.0, 60.0, 180.0, 110.0)])
    w = ct_window(vol.image)  # the mean windowed intensity of each class in this volume
    return IntensityOracle([float(w[(vol.label == k) & (vol.image > -500)].mean()) for k in range(4)])


def test_predict_volume_native_geometry_and_nifti_round_trip(phantom, tmp_path):
    rec = phantom.records[0]
    vol = load_volume(rec)
    pred = I.predict_volume(_oracle(vol), vol, img_size=64, intensity='ct', batch_size=2)
    assert pred.shape == vol.label.shape and pred.dtype == np.int16
    body = vol.image > -500
    pred[~body] = vol.label[~body]  # air is background in both; the oracle only knows organ intensities
    m = evaluate_case(pred, vol.label, PHANTOM_CLASSES, spacing=vol.spacing)
    assert min(m['legacy'].dice) > 0.6, m['legacy'].dice
    path = I.save_nifti(pred, vol, str(tmp_path / 'out' / 'p_pred.nii.gz'))
    src, out = nib.load(rec.image), nib.load(path)
    assert out.shape == src.shape
    np.testing.assert_allclose(out.affine, src.affine)
    assert out.header.get_zooms() == src.header.get_zooms()
    np.testing.assert_array_equal(np.asanyarray(out.dataobj), vol.to_native(pred))
    # reading the prediction back as a label of the source image passes the geometry checks
    back = load_volume(VolumeRecord('rt', rec.image, path, 'nifti'))
    np.testing.assert_array_equal(back.label, pred)
    assert not [n for n in os.listdir(tmp_path / 'out') if n.startswith('.tmp')]


def test_other_slice_axis_round_trip(phantom, tmp_path):
    rec = phantom.records[1]
    vol = load_volume(rec, slice_axis=0)  # sagittal slices of 56 x 5 voxels: too small for a model
    assert vol.image.shape == (40, 56, 5) and vol.spacing == pytest.approx((1.2, 0.9, 3.5))
    with pytest.raises(UserInputError, match=r'phantom_001_0000\.nii\.gz: slices of 56x5 voxels are too small'):
        I.predict_volume(_oracle(), vol, img_size=32, intensity='ct')
    from mednext_zoo.data.synthetic import make_phantom
    img, lab, aff = make_phantom((20, 24, 18), (2.0, 1.0, 1.5), seed=3)
    nib.save(nib.Nifti1Image(img, aff), str(tmp_path / 'v.nii.gz'))
    vol = load_volume(VolumeRecord('v', str(tmp_path / 'v.nii.gz'), None, 'nifti'), slice_axis=0)
    assert vol.image.shape == (20, 24, 18)
    pred = I.predict_volume(_oracle(), vol, img_size=32, intensity='ct')
    out = nib.load(I.save_nifti(pred, vol, str(tmp_path / 'sag.nii.gz')))
    assert out.shape == img.shape
    np.testing.assert_allclose(out.affine, aff)
    np.testing.assert_array_equal(np.asanyarray(out.dataobj), np.moveaxis(pred, 0, 0))


def test_flip_tta(phantom):
    vol = load_volume(phantom.records[0])
    model = _oracle()
    a = I.predict_volume(model, vol, 64, 'ct')
    b = I.predict_volume(model, vol, 64, 'ct', tta=True)
    np.testing.assert_array_equal(a, b)  # a per-pixel model is flip-equivariant

    class TopLeft(nn.Module):  # class 1 in the top-left quadrant only: flip TTA must outvote it
        def __init__(self):
            super().__init__()
            self.p = nn.Parameter(torch.zeros(()))

        def forward(self, x):
            out = torch.zeros(x.shape[0], 2, *x.shape[-2:])
            out[:, 0] = 1.0
            out[:, :, : x.shape[-2] // 2, : x.shape[-1] // 2] = torch.tensor([0.0, 1.0])[:, None, None]
            return out + self.p

    c = I.predict_volume(TopLeft(), vol, 64, 'ct')
    d = I.predict_volume(TopLeft(), vol, 64, 'ct', tta=True)
    assert c[:, :20, :28].all() and c.sum() == 5 * 20 * 28
    assert d.sum() == 0  # 0.73 + 0.27 + 0.27 < 0.27 + 0.73 + 0.73 in the top-left quadrant


def test_25d_inputs_and_colour(phantom):
    vol = load_volume(phantom.records[0])
    x = I.volume_inputs(vol, 32, 'ct', context=3)
    assert x.shape == (5, 3, 32, 32)
    torch.testing.assert_close(x[1:, 0], x[:-1, 1])  # channel 0 of slice z is slice z - 1
    ref = torch.nn.functional.interpolate(torch.from_numpy(ct_window(vol.image))[:, None], size=(32, 32),
                                          mode='bilinear', align_corners=False)[:, 0]
    torch.testing.assert_close(x[:, 1], ref)


def test_overlays_and_2d_png(tmp_path, phantom):
    vol = load_volume(phantom.records[0])
    paths = I.save_overlays(vol, vol.label, str(tmp_path / 'ov'), num_classes=4, gt=vol.label)
    assert len(paths) == 3 and all(open(p, 'rb').read(4) == b'\x89PNG' for p in paths)
    with pytest.raises(UserInputError, match='outside'):
        I.save_overlays(vol, vol.label, str(tmp_path / 'ov'), slices=[99])
    p = I.save_png_mask(vol.label[2], str(tmp_path / 'm.png'))
    from PIL import Image
    np.testing.assert_array_equal(np.asarray(Image.open(p)), vol.label[2])


def test_simpleitk_nrrd_round_trip_keeps_geometry(tmp_path):
    sitk = pytest.importorskip('SimpleITK')
    from mednext_zoo.data.synthetic import make_phantom
    img, lab, _ = make_phantom((36, 40, 6), (0.8, 0.7, 5.0), seed=2)
    # SimpleITK arrays are k, j, i; spacing / origin are x, y, z
    sim = sitk.GetImageFromArray(np.ascontiguousarray(img.transpose(2, 1, 0)))
    sim.SetSpacing((0.8, 0.7, 5.0))
    sim.SetOrigin((10.0, -20.0, 30.0))
    sim.SetDirection((0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    sitk.WriteImage(sim, str(tmp_path / 'ct.nrrd'))
    slab = sitk.GetImageFromArray(np.ascontiguousarray(lab.transpose(2, 1, 0)))
    slab.CopyInformation(sim)
    sitk.WriteImage(slab, str(tmp_path / 'ct_label.nrrd'))
    vol = load_volume(VolumeRecord('ct', str(tmp_path / 'ct.nrrd'), str(tmp_path / 'ct_label.nrrd'), 'sitk'))
    assert vol.image.shape == (6, 40, 36) and vol.spacing == pytest.approx((5.0, 0.7, 0.8))
    np.testing.assert_array_equal(np.moveaxis(vol.label, 0, 2).transpose(1, 0, 2), lab)
    pred = I.predict_volume(_oracle(vol), vol, 32, 'ct')
    path = I.save_prediction(pred, vol, str(tmp_path / 'out'))
    assert path.endswith('ct_pred.nrrd')
    back = sitk.ReadImage(path)
    assert back.GetSpacing() == pytest.approx(sim.GetSpacing()) and back.GetOrigin() == pytest.approx(sim.GetOrigin())
    assert back.GetDirection() == pytest.approx(sim.GetDirection())
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), vol.to_native(pred))
    # a label on another grid is refused by name
    slab.SetOrigin((0.0, 0.0, 0.0))
    sitk.WriteImage(slab, str(tmp_path / 'ct_label.nrrd'))
    with pytest.raises(UserInputError, match=r"ct_label\.nrrd: the label's geometry"):
        load_volume(VolumeRecord('ct', str(tmp_path / 'ct.nrrd'), str(tmp_path / 'ct_label.nrrd'), 'sitk'))


def test_prediction_names_drop_the_nnunet_channel_suffix(tmp_path):
    from mednext_zoo.data.volumes import case_id_of
    from mednext_zoo.finetune.segmentation.task import _expand_volumes
    assert case_id_of('/d/imagesTs/liver_7_0000.nii.gz') == 'liver_7'
    assert case_id_of('case0001.npy.h5') == 'case0001' and case_id_of('img_0001.png') == 'img_0001'
    assert case_id_of('_0000.nii.gz') == '_0000'  # nothing left to name the case: kept
    for d in ('a', 'b'):
        (tmp_path / d).mkdir()
        nib.save(nib.Nifti1Image(np.zeros((4, 4, 2), np.float32), np.eye(4)), str(tmp_path / d / 'p1_0000.nii.gz'))
    assert [r.case_id for r in _expand_volumes([str(tmp_path / 'a')])] == ['p1']
    # two inputs that would write the same p1_pred.nii.gz are refused, not silently overwritten
    with pytest.raises(UserInputError, match=r'p1_0000\.nii\.gz and .*p1_0000\.nii\.gz would both be written as p1'):
        _expand_volumes([str(tmp_path / 'a'), str(tmp_path / 'b' / 'p1_0000.nii.gz')])
