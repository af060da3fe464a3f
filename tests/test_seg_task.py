"""Segmentation fine-tuning on the engine: a small MedUNeXt learns phantom organs on CPU; protocols end to end;
splits; run folder, evaluate, predict and export."""
import csv
import json
import os

import nibabel as nib
import numpy as np
import pytest
import torch

from mednext_zoo.data.synthetic import PHANTOM_CLASSES, write_phantom_dataset
from mednext_zoo.data.volumes import VolumeRecord, discover, load_volume
from mednext_zoo.errors import UserInputError
from mednext_zoo.finetune.segmentation import protocols as PR

pytest.importorskip('mednext_zoo.models.medunext')  # MedUNeXt (issue 3)
pytest.importorskip('mednext_zoo.finetune.engine')  # the training engine (issue 7)

from mednext_zoo.finetune.segmentation.data import Prepared  # noqa: E402
from mednext_zoo.finetune.segmentation.task import (  # noqa: E402
    SegConfig,
    SliceDataset,
    assign_case_splits,
    create_segmenter,
    evaluate,
    fit,
    predict,
)


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """medunext_tiny at 32x32, 10 epochs on 5 phantom volumes (2 held out for validation)."""
    root = tmp_path_factory.mktemp('seg')
    data = write_phantom_dataset(str(root / 'data'), n_cases=7, shape=(40, 40, 8), spacing=(1.5, 1.5, 4.0))
    cfg = SegConfig(data=data, out=str(root / 'run'), model='medunext_tiny', img_size=32, epochs=10, batch_size=8,
                    lr=3e-3, augment=False, val_frac=0.3, overlays=1, progress=False, seed=0)
    return cfg, fit(cfg)


@pytest.mark.slow
def test_medunext_learns_phantom_organs(trained):
    cfg, res = trained
    leg, st = res['summaries']['legacy'], res['summaries']['strict']
    dice = {r['class']: r['dice_mean'] for r in leg['per_class']}
    # chance level (a constant or random label map) is a Dice of a few percent for these organs
    assert dice['liver'] > 0.6 and dice['kidney'] > 0.5 and leg['mean_dice'] > 0.45, dice
    assert leg['hd95_unit'] == 'voxels' and st['hd95_unit'] == 'mm'
    assert res['sizes'] == {'train': 5, 'val': 2} and res['eval_split'] == 'val'
    log = [json.loads(line) for line in open(os.path.join(cfg.out, 'metrics.jsonl'))]
    assert len(log) == 10 and log[-1]['train_loss'] < log[0]['train_loss'] and 'val_dice_liver' in log[0]


@pytest.mark.slow
def test_run_folder_evaluate_predict_export(trained, tmp_path):
    cfg, res = trained
    ev = os.path.join(cfg.out, 'eval-val')
    for name in ('cases.csv', 'report.md', 'metrics.json', 'dice_box_legacy.png', 'dice_box_strict.png'):
        assert os.path.isfile(os.path.join(ev, name)), name
    assert len(os.listdir(os.path.join(ev, 'overlays'))) == 3
    rows = list(csv.DictReader(open(os.path.join(ev, 'cases.csv'))))
    assert len(rows) == 2 * 2 * 3  # cases x modes x organs
    report = open(os.path.join(ev, 'report.md')).read()
    assert '`legacy`' in report and '`strict`' in report and 'HD95 (mm)' in report
    splits = list(csv.DictReader(open(os.path.join(cfg.out, 'splits.csv'))))
    assert sorted(r['split'] for r in splits) == ['train'] * 5 + ['val'] * 2
    assert all(len(r['sha256']) == 64 for r in splits)  # each case's identity, for evaluate's guard
    # the run's own data is all train / val: evaluate refuses to score it unless told to
    with pytest.raises(UserInputError, match=r"All 7 cases .* training data \(5 train, 2 val.*include-training-data"):
        evaluate(cfg.out, data=cfg.data, overlays=0, progress=False)
    # with the flag, evaluate from the run folder reproduces the fit's numbers, and the report lists the overlap
    again = evaluate(cfg.out, split=None, out=str(tmp_path / 'ev'), overlays=0, progress=False,
                     data=cfg.data, include_training_data=True)
    assert again['training_overlap']['in_training_data'] == 7 and again['training_overlap']['val'] == 2
    assert 'scored anyway (--include-training-data)' in open(tmp_path / 'ev' / 'report.md').read()
    assert len(open(tmp_path / 'ev' / 'training_overlap.csv').read().splitlines()) == 1 + 7
    val_ids = {r['case_id'] for r in splits if r['split'] == 'val'}
    fit_cases = {c['case_id']: c['dice'] for c in json.load(open(os.path.join(ev, 'metrics.json')))['cases']['legacy']}
    re_cases = {c['case_id']: c['dice'] for c in again['cases']['legacy']}
    for cid in val_ids:
        assert re_cases[cid] == pytest.approx(fit_cases[cid])
    # predict writes NIfTI in the source geometry, and overlays
    src = os.path.join(cfg.data, 'imagesTr', sorted(val_ids)[0] + '_0000.nii.gz')
    out = predict(cfg.out, [src], out=str(tmp_path / 'pred'), overlays=2)
    img = nib.load(out[0]['prediction'])
    assert img.shape == nib.load(src).shape
    np.testing.assert_allclose(img.affine, nib.load(src).affine)
    assert len(out[0]['overlays']) == 2 and out[0]['voxels_liver'] > 0
    # export: timm loads it after `import mednext_zoo`; segmentation.json says how to preprocess
    import timm

    import mednext_zoo  # noqa: F401
    exp = os.path.join(cfg.out, 'export')
    seg = json.load(open(os.path.join(exp, 'segmentation.json')))
    assert seg['classes'] == list(PHANTOM_CLASSES) and seg['intensity'] == 'ct' and seg['img_size'] == 32
    m = timm.create_model(f'local-dir:{exp}', pretrained=True, img_size=32).eval()
    ref, _ = __import__('mednext_zoo.finetune.segmentation.task', fromlist=['load_run_model']).load_run_model(cfg.out)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref(x))
    with pytest.raises(UserInputError, match='not a fine-tuning run folder'):
        evaluate(str(tmp_path), data=cfg.data)


@pytest.mark.slow
def test_synapse_protocol_end_to_end_on_transunet_layout(tmp_path):
    h5py = pytest.importorskip('h5py')
    root = tmp_path / 'Synapse'
    (root / 'train_npz').mkdir(parents=True)
    (root / 'test_vol_h5').mkdir()
    rng = np.random.default_rng(0)

    def sl(seed):
        lab = np.zeros((40, 40), np.uint8)
        lab[8:20, 8:24] = 5  # liver
        lab[24:30, 26:32] = 7  # spleen
        img = np.clip(lab / 8.0 + rng.normal(0, 0.05, lab.shape), 0, 1).astype(np.float32)
        return img, lab

    for n in PR.SYNAPSE.splits['train']:
        for z in range(2):
            img, lab = sl(n)
            np.savez(root / 'train_npz' / f'case{n:04d}_slice{z:03d}.npz', image=img, label=lab)
    for n in PR.SYNAPSE.splits['test']:
        img, lab = zip(*[sl(n) for _ in range(3)])
        with h5py.File(root / 'test_vol_h5' / f'case{n:04d}.npy.h5', 'w') as f:
            f['image'], f['label'] = np.stack(img), np.stack(lab).astype(np.float32)
    cfg = SegConfig(data=str(root), out=str(tmp_path / 'run'), model='medunext_tiny', protocol='synapse',
                    img_size=32, epochs=1, batch_size=12, overlays=0, progress=False, export=False)
    res = fit(cfg)
    assert res['protocol'] == 'synapse' and res['sizes'] == {'train': 18, 'test': 12} and res['eval_split'] == 'test'
    assert res['intensity'] == 'none'  # the TransUNet files are already windowed
    leg = res['summaries']['legacy']
    assert [r['class'] for r in leg['per_class']] == list(PR.SYNAPSE_LABEL_MAP.foreground)
    assert leg['n_cases'] == 12
    # absent organs: legacy counts an empty prediction as DSC 0 / HD95 0; strict excludes both-empty cases
    aorta_leg = leg['per_class'][0]
    aorta_st = res['summaries']['strict']['per_class'][0]
    assert aorta_leg['n'] == 12 and (aorta_st['n'] < 12 or aorta_st['dice_mean'] == 0.0)
    assert 'no voxel spacing' in open(tmp_path / 'run' / 'eval-test' / 'report.md').read()
    # a case moved to the wrong folder is refused
    os.rename(root / 'test_vol_h5' / 'case0001.npy.h5', root / 'test_vol_h5' / 'case0005.npy.h5')
    with pytest.raises(UserInputError):
        fit(SegConfig(data=str(root), out=str(tmp_path / 'run2'), model='medunext_tiny', protocol='synapse',
                      img_size=32, epochs=1, progress=False))


def _acdc(tmp_path, patients=range(1, 101)):
    for pid in patients:
        d = tmp_path / f'patient{pid:03d}'
        d.mkdir(parents=True)
        for fr in (1, 10):
            lab = np.zeros((20, 20, 2), np.uint8)
            lab[4:12, 4:12] = 1
            stem = str(d / f'patient{pid:03d}_frame{fr:02d}')
            nib.save(nib.Nifti1Image(np.ones((20, 20, 2), np.float32), np.eye(4)), stem + '.nii.gz')
            nib.save(nib.Nifti1Image(lab, np.eye(4)), stem + '_gt.nii.gz')
    return discover(str(tmp_path))


def test_acdc_protocol_split_keeps_ed_es_together(tmp_path):
    ds = _acdc(tmp_path)
    splits = assign_case_splits(ds, PR.ACDC)
    assert {k: len(v) for k, v in splits.items()} == {'train': 140, 'val': 20, 'test': 40}
    test_patients = sorted({r.patient for r in splits['test']})
    assert test_patients[:3] == ['patient002', 'patient003', 'patient008']
    for s, rs in splits.items():
        for r in rs:
            assert all(o.patient != r.patient for t, os_ in splits.items() if t != s for o in os_)


def test_random_and_kfold_splits_group_patients(tmp_path):
    ds = _acdc(tmp_path, range(1, 11))
    sp = assign_case_splits(ds, None, val_frac=0.3, seed=1)
    assert len(sp['val']) == 6 and len(sp['train']) == 14
    assert {r.patient for r in sp['val']}.isdisjoint({r.patient for r in sp['train']})
    seen = []
    for k in range(5):
        f = assign_case_splits(ds, None, folds=5, fold=k)
        assert {r.patient for r in f['val']}.isdisjoint({r.patient for r in f['train']})
        seen += [r.case_id for r in f['val']]
    assert sorted(seen) == sorted(ds.case_ids)
    with pytest.raises(UserInputError, match='--fold'):
        assign_case_splits(ds, None, folds=5, fold=5)
    # a patient the user put in two splits
    ds.records[0].split, ds.records[1].split = 'train', 'val'
    with pytest.raises(UserInputError, match='patient001 is in both'):
        assign_case_splits(ds, None)


def test_slice_dataset_25d_and_seeded_augmentation():
    img = torch.arange(5.0)[:, None, None, None].expand(5, 1, 8, 8).clone()
    lab = torch.zeros(5, 8, 8, dtype=torch.long)
    lab[:, :3, :2] = 1
    ds = SliceDataset([Prepared(img, lab)], context=3, augment=True, seed=0)
    assert len(ds) == 5
    x, y = ds[(0, 0)]
    assert x.shape == (3, 8, 8) and x[:, 0, 0].tolist() in ([0, 0, 1],)
    a = [ds[(i, 1)][1] for i in range(5)]
    b = [ds[(i, 1)][1] for i in range(5)]
    assert all(torch.equal(p, q) for p, q in zip(a, b))  # same (epoch, index): same augmentation
    c = [ds[(i, 2)][1] for i in range(5)]
    assert any(not torch.equal(p, q) for p, q in zip(a, c))
    sub = SliceDataset([Prepared(img, lab), Prepared(img, lab)], max_slices=4)
    assert sub.index == [(0, 0), (0, 3), (1, 1), (1, 4)]


def test_create_segmenter_checks():
    with pytest.raises(UserInputError, match='Unknown model'):
        create_segmenter('medunext_tinny', 4, 1, 32)
    with pytest.raises(UserInputError, match='not per-pixel logits|not a segmentation model'):
        create_segmenter('resnet18', 4, 1, 32)
    m = create_segmenter('medunext_tiny', 4, 3, 32).eval()
    assert m(torch.zeros(1, 3, 32, 32)).shape == (1, 4, 32, 32)


def test_create_segmenter_reads_the_pretrained_folders_the_classifier_reads(tmp_path):
    """One pretrained resolver for both factories: a folder with pytorch_model.bin (and no model.safetensors), as
    Hugging Face writes, loads into a segmenter too (it used to be refused as a missing file)."""
    torch.manual_seed(0)
    src = create_segmenter('medunext_tiny', 3, 1, 32)
    torch.save(src.state_dict(), tmp_path / 'pytorch_model.bin')
    m = create_segmenter('medunext_tiny', 3, 1, 32, pretrained=str(tmp_path))
    head = m.pretrained_cfg['classifier']  # timm keeps a new head when the classes differ from the tag's
    loaded = {k: torch.equal(v, m.state_dict()[k]) for k, v in src.state_dict().items() if not k.startswith(head)}
    assert len(loaded) > 300 and all(loaded.values())
    (tmp_path / 'empty').mkdir()
    with pytest.raises(UserInputError, match='holds no model.safetensors'):
        create_segmenter('medunext_tiny', 3, 1, 32, pretrained=str(tmp_path / 'empty'))


def test_fit_bad_inputs(tmp_path):
    data = write_phantom_dataset(str(tmp_path / 'd'), n_cases=3, shape=(12, 12, 3))
    with pytest.raises(UserInputError, match=r'phantom_00\d_0000\.nii\.gz: slices of 12x12 voxels are too small'):
        fit(SegConfig(data=data, out=str(tmp_path / 'r'), model='medunext_tiny', img_size=32, epochs=1,
                      progress=False))
    with pytest.raises(UserInputError, match="do not match the label map 'acdc'"):
        fit(SegConfig(data=data, out=str(tmp_path / 'r'), model='medunext_tiny', labels='acdc', img_size=32,
                      epochs=1, progress=False))


@pytest.mark.slow
def test_2d_colour_folders_train_and_predict_png(tmp_path):
    from PIL import Image
    from skimage import data as skdata
    rgb = skdata.immunohistochemistry()
    (tmp_path / 'd' / 'images').mkdir(parents=True)
    (tmp_path / 'd' / 'masks').mkdir()
    for i in range(4):
        crop = rgb[i * 64:i * 64 + 96, :96]
        Image.fromarray(crop).save(tmp_path / 'd' / 'images' / f'img{i}.png')
        Image.fromarray(((crop.mean(-1) < 120) * 255).astype(np.uint8)).save(
            tmp_path / 'd' / 'masks' / f'img{i}_segmentation.png')
    res = fit(SegConfig(data=str(tmp_path / 'd'), out=str(tmp_path / 'run'), model='medunext_tiny', img_size=32,
                        epochs=1, batch_size=2, val_frac=0.25, overlays=1, progress=False, export=False))
    assert res['classes'] == ['background', 'foreground'] and res['intensity'] == 'none'
    cfg = json.load(open(tmp_path / 'run' / 'config.json'))
    assert cfg['in_chans'] == 3
    out = predict(str(tmp_path / 'run'), [str(tmp_path / 'd' / 'images' / 'img0.png')], out=str(tmp_path / 'p'),
                  overlays=1)
    mask = np.asarray(Image.open(out[0]['prediction']))
    assert mask.shape == (96, 96) and set(np.unique(mask)) <= {0, 1}


def test_raw_btcv_labels_remapped_to_synapse(tmp_path):
    from mednext_zoo.data.volumes import VolumeRecord
    from mednext_zoo.finetune.segmentation.task import load_case as _load
    lab = np.zeros((20, 20, 2), np.uint8)
    lab[2:6, 2:6] = 6  # raw BTCV liver
    lab[10:14, 10:14] = 1  # raw BTCV spleen
    lab[15:18, 2:5] = 13  # raw BTCV left adrenal gland: not a Synapse organ
    nib.save(nib.Nifti1Image(np.zeros((20, 20, 2), np.float32), np.eye(4)), str(tmp_path / 'img0001.nii.gz'))
    nib.save(nib.Nifti1Image(lab, np.eye(4)), str(tmp_path / 'label0001.nii.gz'))
    rec = VolumeRecord('img0001', str(tmp_path / 'img0001.nii.gz'), str(tmp_path / 'label0001.nii.gz'), 'nifti')
    with pytest.raises(UserInputError, match=r'label0001\.nii\.gz: label values \[13\]'):
        _load(rec, PR.SYNAPSE_LABEL_MAP, 2)
    vol = _load(rec, PR.SYNAPSE_LABEL_MAP, 2, 'btcv-to-synapse')
    names = PR.SYNAPSE_LABEL_MAP.classes
    assert names[int(vol.label[0, 3, 3])] == 'liver' and names[int(vol.label[0, 11, 11])] == 'spleen'
    assert vol.label[0, 16, 3] == 0
    with pytest.raises(UserInputError, match='remapping'):
        _load(rec, None, 2, 'btcv-to-acdc')


def test_interrupted_run_resumes_to_the_same_weights(tmp_path):
    from safetensors.torch import load_file
    data = write_phantom_dataset(str(tmp_path / 'd'), n_cases=4, shape=(40, 40, 4))
    kw = dict(data=data, model='medunext_tiny', img_size=32, epochs=2, batch_size=4, progress=False, overlays=0,
              export=False, eval_split='none', ckpt_every_steps=1)

    def final_weights(run):
        latest = json.load(open(os.path.join(run, 'checkpoints', 'latest.json')))
        return load_file(os.path.join(run, 'checkpoints', latest['weights']))

    fit(SegConfig(out=str(tmp_path / 'a'), **kw))

    class Stop(Exception):
        pass

    def stop_at_4(engine):
        if engine.progress.step == 4:
            raise Stop

    cfg = SegConfig(out=str(tmp_path / 'b'), **kw)
    cfg._callbacks = (stop_at_4,)
    with pytest.raises(Stop):
        fit(cfg)
    fit(SegConfig(out=str(tmp_path / 'b'), resume=True, **kw))
    a, b = final_weights(str(tmp_path / 'a')), final_weights(str(tmp_path / 'b'))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_ct_window_run_export_carries_its_window(tmp_path, capsys):
    """Issue 23's case: a run trained with the CT window -125..275, exported from RUN/export to ONNX, wrote
    "window": null (min-max) and its parity fed the same tensors to both runtimes. Now preprocessing.json holds
    the run's recipe, the parity takes a raw CT volume through it against the training loader, and a deployment
    following it labels the volume as the run itself does."""
    pytest.importorskip('onnxruntime')
    from mednext_zoo.cli import main
    from mednext_zoo.data.preprocessing import as_spec, segmentation_spec
    from mednext_zoo.deploy import load_artefact, preprocess
    from mednext_zoo.finetune.segmentation.inference import volume_inputs
    from mednext_zoo.finetune.segmentation.task import load_run_model
    data = write_phantom_dataset(str(tmp_path / 'data'), n_cases=3, n_test=1, shape=(40, 40, 6))
    cfg = SegConfig(data=data, out=str(tmp_path / 'run'), model='medunext_tiny', img_size=32, epochs=1, batch_size=8,
                    val_frac=0.34, overlays=0, progress=False, intensity='ct', window=(-125.0, 275.0),
                    eval_split='none')
    fit(cfg)
    held_out = os.path.join(data, 'imagesTs', sorted(os.listdir(os.path.join(data, 'imagesTs')))[0])  # raw HU
    capsys.readouterr()
    art = tmp_path / 'onnx'
    assert main(['export', os.path.join(cfg.out, 'export'), str(art), '--format', 'onnx', '--sample', held_out]) == 0
    out = capsys.readouterr().out
    pre = json.load(open(art / 'preprocessing.json'))['preprocessing']
    assert pre['intensity'] == {'mode': 'window', 'low': -125.0, 'high': 275.0, 'scale': 'data'}
    assert pre['spatial'] == {'mode': 'resize', 'size': [32, 32], 'interpolation': 'bilinear', 'antialias': False}
    assert as_spec(art) == as_spec(os.path.join(cfg.out, 'export')) == segmentation_spec(
        json.load(open(os.path.join(cfg.out, 'export', 'segmentation.json'))))
    pp = json.load(open(art / 'parity.json'))['preprocessing_parity']
    assert pp['agrees'] and pp['reference'] == "the run's records" and pp['dice_vs_fp32'] > 0.999
    assert os.path.basename(held_out) in [r['file'] for r in pp['files']] and 'Preprocessing parity on 3 raw' in out
    # the deployment: raw volume -> preprocess (numpy) -> ONNX Runtime, against the run's own inference path
    run = load_artefact(art)
    labels = run(torch.from_numpy(preprocess(held_out, art))).argmax(1)
    model, _ = load_run_model(cfg.out)
    vol = load_volume(VolumeRecord('t', held_out, None, 'nifti'))
    with torch.no_grad():
        expected = model(volume_inputs(vol, 32, 'ct', (-125.0, 275.0), 1)).argmax(1)
    assert (labels == expected).float().mean() > 0.999
    # the recipe matters here: per-volume min-max (what "window": null meant) feeds this model other inputs
    minmax = preprocess(held_out, segmentation_spec({'intensity': 'minmax', 'img_size': 32}))
    assert np.abs(minmax - preprocess(held_out, art)).max() > 0.1
    # `export RUN` writes the run's own Hub folder again, from its records
    assert main(['export', cfg.out, str(tmp_path / 'hub'), '--no-flops']) == 0
    for name in ('config.json', 'segmentation.json', 'model.safetensors'):
        assert (tmp_path / 'hub' / name).read_bytes() == open(os.path.join(cfg.out, 'export', name), 'rb').read()



@pytest.mark.slow
def test_patch_run_export_carries_its_sliding_window(tmp_path, capsys):
    """A run trained on patches at native resolution (patch_size): its export records a sliding-window recipe,
    the ONNX artefact takes patch-sized inputs, and the deployment (preprocess + MONAI sliding window over the
    artefact) labels an image as the run's own predict_volume does."""
    pytest.importorskip('onnxruntime')
    from monai.inferers import sliding_window_inference

    from mednext_zoo.cli import main
    from mednext_zoo.data.synthetic_vessels import write_vessel_dataset
    from mednext_zoo.deploy import load_artefact, preprocess
    from mednext_zoo.finetune.segmentation.inference import predict_volume
    from mednext_zoo.finetune.segmentation.task import load_run_model
    data = write_vessel_dataset(str(tmp_path / 'vessels'), n_train=3, n_val=1, n_test=1, size=96)
    run = str(tmp_path / 'run')
    fit(SegConfig(data=data, out=run, model='medunext_tiny_hr', img_size=64, epochs=1, batch_size=4, overlays=0,
                  progress=False))
    spec = json.load(open(os.path.join(run, 'export', 'config.json')))['preprocessing']
    assert spec['spatial'] == {'mode': 'sliding_window', 'patch': [64, 64], 'overlap': 0.5, 'blend': 'gaussian'}
    image = data.replace('dataset.csv', 'images/vessels_004.png')
    capsys.readouterr()
    assert main(['export', run, str(tmp_path / 'onnx'), '--format', 'onnx', '--sample', image]) == 0
    assert 'sliding window 64x64' in capsys.readouterr().out
    pp = json.load(open(tmp_path / 'onnx' / 'parity.json'))['preprocessing_parity']
    assert pp['agrees'] and pp['dice_vs_fp32'] > 0.999 and pp['files'][-1]['file'] == 'vessels_004.png'
    x = torch.from_numpy(preprocess(image, tmp_path / 'onnx'))
    assert x.shape == (1, 3, 96, 96)  # native resolution
    art = load_artefact(tmp_path / 'onnx')
    with torch.no_grad():
        labels = sliding_window_inference(x, (64, 64), 4, lambda t: art(t).softmax(1), overlap=0.5,
                                          mode='gaussian').argmax(1)
    model, rc = load_run_model(run)
    vol = load_volume(VolumeRecord('v', image, None, 'image2d'))
    expected = predict_volume(model, vol, rc['img_size'], rc['intensity'], tuple(rc['window']), rc['context'],
                              patch_size=rc['patch_size'], overlap=rc['sw_overlap'])
    assert (labels.numpy() == expected).mean() > 0.999
