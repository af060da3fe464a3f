"""The preprocessing description (mednext_zoo.data.preprocessing): every recipe the package trains with round-trips
through its JSON form, a Hub config.json and an artefact's preprocessing.json, and `preprocess` (numpy, no torch)
reproduces the training-time loaders on raw DICOM / NIfTI / PNG files."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

import mednext_zoo  # noqa: F401  (registers the models)
from mednext_zoo.data import ImageClassificationDataset, Sample, build_transforms
from mednext_zoo.data.preprocessing import (
    PreprocessingSpec,
    as_spec,
    classification_spec,
    preprocess,
    read_spec,
    segmentation_spec,
)
from mednext_zoo.data.volumes import VolumeRecord, _fmt_of, load_volume
from mednext_zoo.errors import UserInputError

pydicom = pytest.importorskip('pydicom')
nib_testing = pytest.importorskip('nibabel.testing')
IMAGENET = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    """Raw files: pydicom's CT (HU), nibabel's 3D MR volume, an 8-bit grey and a colour PNG."""
    from PIL import Image
    from pydicom.data import get_testdata_file

    from mednext_zoo.deploy.samples import source_images
    root = tmp_path_factory.mktemp('raw')
    pool = source_images()
    grey = next(a for a in pool if a.ndim == 2)
    colour = next((a for a in pool if a.ndim == 3), np.stack([grey, grey.T, grey[::-1]], -1))
    Image.fromarray((grey * 255).astype(np.uint8)).save(root / 'grey.png')
    Image.fromarray((colour * 255).astype(np.uint8)).save(root / 'colour.png')
    return {'dicom': get_testdata_file('CT_small.dcm'),
            'nifti': os.path.join(nib_testing.data_path, 'anatomical.nii'),
            'grey': str(root / 'grey.png'), 'colour': str(root / 'colour.png')}


CLS_RECIPES = {
    'ct-preset': dict(window='abdomen'),
    'ct-level-width': dict(window='40.3,351.7'),
    'dicom-file-window': dict(window='file'),
    'minmax': dict(window=None),
}
SEG_RECIPES = {
    'ct-window': dict(intensity='ct', window=[-125.0, 275.0], img_size=32),
    'zscore': dict(intensity='zscore', img_size=40),
    'minmax': dict(intensity='minmax', img_size=24),
    'none': dict(intensity='none', img_size=36),
    '2.5d': dict(intensity='zscore', img_size=32, context=3, in_chans=3),
    'sliding-window': dict(intensity='ct', window=[-100.0, 200.0], img_size=32, patch_size=32, sw_overlap=0.25,
                           sw_mode='gaussian'),
}


def _all_specs():
    specs = {f'cls-{k}-{c}ch': classification_spec(37, c, IMAGENET['mean'], IMAGENET['std'], **v)
             for k, v in CLS_RECIPES.items() for c in (1, 3)}
    specs.update({f'seg-{k}': segmentation_spec(v) for k, v in SEG_RECIPES.items()})
    specs['seg-zscore-fixed'] = PreprocessingSpec(
        task='segmentation', in_chans=1, intensity={'mode': 'zscore', 'mean': 40.0, 'std': 350.0},
        spatial={'mode': 'resize', 'size': [32, 32], 'interpolation': 'bilinear', 'antialias': False},
        mean=(0.0,), std=(1.0,))
    specs['seg-colour'] = segmentation_spec(dict(intensity='none', img_size=32, in_chans=3))
    return specs


@pytest.mark.parametrize('name, spec', list(_all_specs().items()))
def test_each_recipe_round_trips(name, spec, tmp_path):
    doc = spec.to_dict()
    assert doc['schema'] == 'mednext-zoo.preprocessing/1' and doc['summary'] == spec.summary()
    back = PreprocessingSpec.from_dict(json.loads(json.dumps(doc)))
    assert back == spec and back.to_dict() == doc
    # as a Hub config.json records it, and as an artefact's preprocessing.json does
    (tmp_path / 'config.json').write_text(json.dumps({'architecture': 'x', 'preprocessing': doc}))
    assert read_spec(tmp_path) == spec
    from mednext_zoo.deploy.preprocessing import Preprocessing
    pre = Preprocessing(spec, task='cls' if spec.task == 'classification' else 'seg', extra={'format': 'onnx'})
    again = Preprocessing.from_json(pre.to_json())
    assert again.spec == spec and again.input_size == spec.input_size and again.extra == {'format': 'onnx'}


def test_recipes_say_what_they_do():
    s = _all_specs()
    assert s['cls-ct-preset-3ch'].intensity == {'mode': 'window', 'low': -160.0, 'high': 240.0, 'scale': 'window',
                                                'name': 'abdomen'}
    assert s['cls-ct-preset-3ch'].reader_window() == '40,400'
    assert s['cls-dicom-file-window-1ch'].intensity == {'mode': 'file_window'}
    assert s['cls-minmax-3ch'].intensity == {'mode': 'minmax'} and s['cls-minmax-3ch'].grey == 'replicate'
    assert s['cls-minmax-3ch'].spatial == {'mode': 'resize', 'size': [37, 37], 'interpolation': 'bilinear',
                                           'antialias': True}
    seg = s['seg-ct-window']
    assert seg.intensity == {'mode': 'window', 'low': -125.0, 'high': 275.0, 'scale': 'data'}
    assert seg.spatial['antialias'] is False and seg.mean == (0.0,) and seg.std == (1.0,)
    assert 'CT window -125..275 HU' in seg.summary() and "volume's clipped range" in seg.summary()
    assert s['seg-2.5d'].context == 3 and '3 adjacent slices' in s['seg-2.5d'].summary()
    sw = s['seg-sliding-window']
    assert sw.spatial == {'mode': 'sliding_window', 'patch': [32, 32], 'overlap': 0.25, 'blend': 'gaussian'}
    assert sw.input_size == (1, 32, 32) and sw.segmentation_settings()['patch_size'] == 32
    # a run's settings without the patch keys (every run before native-resolution training) resize
    assert segmentation_spec(dict(intensity='ct', img_size=32, patch_size=None)).spatial['mode'] == 'resize'


@pytest.mark.parametrize('recipe', list(CLS_RECIPES))
@pytest.mark.parametrize('in_chans', [1, 3])
def test_preprocess_is_the_classification_loader(recipe, in_chans, files):
    window = CLS_RECIPES[recipe]['window']
    mean, std = (IMAGENET['mean'], IMAGENET['std']) if in_chans == 3 else ((0.5,), (0.25,))
    spec = classification_spec(37, in_chans, mean, std, window)
    for kind, sl in (('dicom', None), ('nifti', 12), ('grey', None), ('colour', None)):
        if kind == 'colour' and in_chans == 1:
            with pytest.raises(UserInputError, match='colour image, but the model takes 1 channel'):
                preprocess(files[kind], spec)
            continue
        ds = ImageClassificationDataset([Sample(files[kind], 'a', slice_index=sl)], {'a': 0},
                                        build_transforms(37, mean, std, False), in_chans, window)
        got = preprocess(files[kind], spec, slice_index=sl)
        assert isinstance(got, np.ndarray) and got.dtype == np.float32 and got.shape == (1, in_chans, 37, 37)
        np.testing.assert_allclose(got[0], ds[0][0].numpy(), atol=2e-5, err_msg=f'{recipe} {kind}')
    # a NIfTI volume gives one input per slice, as predict reads it
    assert preprocess(files['nifti'], spec).shape == (25, in_chans, 37, 37)


@pytest.mark.parametrize('recipe', ['ct-window', 'zscore', 'minmax', 'none', '2.5d'])
def test_preprocess_is_the_segmentation_loader(recipe, files):
    from mednext_zoo.finetune.segmentation.inference import volume_inputs
    settings = {'context': 1, 'window': [-125.0, 275.0], **SEG_RECIPES[recipe]}
    spec = segmentation_spec(settings)
    for kind in ('nifti', 'grey'):
        vol = load_volume(VolumeRecord('x', files[kind], None, _fmt_of(files[kind])), None, 2)
        ref = volume_inputs(vol, settings['img_size'], settings['intensity'], tuple(settings['window']),
                            settings['context']).numpy()
        got = preprocess(files[kind], spec)
        assert got.shape == ref.shape
        scale = max(1.0, float(np.abs(ref).max()))
        assert np.abs(got - ref).max() / scale < 1e-5, (recipe, kind)
    with pytest.raises(UserInputError, match='unsupported file type'):
        preprocess(files['dicom'], spec)  # the segmentation reader takes volumes, not DICOM slices


def test_preprocess_fixed_zscore_colour_and_sliding_window(files):
    specs = _all_specs()
    vol = load_volume(VolumeRecord('x', files['nifti'], None, 'nifti'), None, 2).image
    fixed = preprocess(files['nifti'], specs['seg-zscore-fixed'])
    from scipy import ndimage
    expect = ndimage.zoom((vol[12] - 40.0) / 350.0, (32 / 33, 32 / 41), order=1, grid_mode=True, mode='nearest')
    np.testing.assert_allclose(fixed[12, 0], expect, atol=1e-5)
    # sliding window: the native slice, intensity-normalised; the model runs over patches of it
    sw = preprocess(files['nifti'], specs['seg-sliding-window'])
    assert sw.shape == (25, 1, 33, 41)
    np.testing.assert_allclose(sw[3, 0], (np.clip(vol[3], -100, 200) - np.clip(vol, -100, 200).min())
                               / np.ptp(np.clip(vol, -100, 200)), atol=1e-6)
    colour = preprocess(files['colour'], specs['seg-colour'])
    assert colour.shape == (1, 3, 32, 32)
    with pytest.raises(UserInputError, match='gives 1 channel'):
        preprocess(files['grey'], specs['seg-colour'])


def test_preprocess_needs_no_torch(files, monkeypatch):
    """The runtime side computes with numpy / Pillow / SciPy only: torch functions are never called."""
    spec = classification_spec(37, 3, IMAGENET['mean'], IMAGENET['std'], 'abdomen')
    seg = segmentation_spec(SEG_RECIPES['2.5d'])

    def boom(*a, **k):
        raise AssertionError('torch was used')
    for name in ('from_numpy', 'as_tensor', 'tensor', 'stack'):
        monkeypatch.setattr(torch, name, boom)
    monkeypatch.setattr(torch.nn.functional, 'interpolate', boom)
    assert preprocess(files['dicom'], spec).shape == (1, 3, 37, 37)
    assert preprocess(files['nifti'], seg).shape == (25, 3, 32, 32)


@pytest.mark.parametrize('change, message', [
    (lambda d: d.update(schema='other/1'), 'not a mednext-zoo preprocessing description'),
    (lambda d: d.update(extra=1), 'unknown key'),
    (lambda d: d['intensity'].update(mode='gamma'), 'intensity.mode'),
    (lambda d: d['intensity'].update(high=-500.0), 'must exceed low'),
    (lambda d: d['spatial'].update(mode='crop'), 'spatial.mode'),
    (lambda d: d['normalize'].update(std=[0.0]), 'std must be positive'),
    (lambda d: d['normalize'].update(mean=[0.0, 0.0]), 'one per channel'),
    (lambda d: d['channels'].update(context=2), 'odd number'),
    (lambda d: d.pop('spatial'), 'malformed'),
])
def test_malformed_descriptions_are_refused_clearly(change, message):
    doc = segmentation_spec(SEG_RECIPES['ct-window']).to_dict()
    change(doc)
    with pytest.raises(UserInputError, match=message):
        PreprocessingSpec.from_dict(doc, 'x.json')
    with pytest.raises(UserInputError, match='file_window.*applies to classification'):
        PreprocessingSpec(task='segmentation', in_chans=1, intensity={'mode': 'file_window'},
                          spatial={'mode': 'resize', 'size': [8, 8]}, mean=(0,), std=(1,))
    with pytest.raises(UserInputError, match='applies to segmentation'):
        classification_spec(32, 1, (0.5,), (0.5,)).__class__(
            task='classification', in_chans=1, intensity={'mode': 'zscore'}, spatial={'mode': 'resize', 'size': [8, 8]},
            mean=(0,), std=(1,))


def test_as_spec_from_folders_and_old_exports(tmp_path):
    spec = classification_spec(32, 1, (0.5,), (0.5,), 'lung')
    assert as_spec(spec.to_dict()) == spec and as_spec(spec) is spec
    (tmp_path / 'spec.json').write_text(spec.to_json())
    assert as_spec(tmp_path / 'spec.json') == spec
    old = tmp_path / 'old'
    old.mkdir()
    (old / 'config.json').write_text(json.dumps({'architecture': 'mednext_tiny', 'pretrained_cfg': {}}))
    with pytest.raises(UserInputError, match='holds no preprocessing description'):
        as_spec(old)
    (old / 'segmentation.json').write_text(json.dumps({'task': 'segmentation', 'intensity': 'ct', 'img_size': 32,
                                                       'window': [-125, 275], 'context': 1, 'in_chans': 1}))
    assert as_spec(old) == segmentation_spec(SEG_RECIPES['ct-window'])  # an older seg export: its settings
    with pytest.raises(UserInputError, match='does not exist'):
        as_spec(tmp_path / 'missing.json')
