"""Fine-tuning: data I/O, splits, engine (resume, repeatability, freezing, layer decay), metrics, CLI, DDP."""
from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from mednext_zoo.data import (
    EpochSampler,
    assign_splits,
    discover,
    kfold_assignments,
    load_image,
    parse_window,
)
from mednext_zoo.data.io import nifti_num_slices
from mednext_zoo.errors import UserInputError
from mednext_zoo.finetune import ClassificationConfig, fit
from mednext_zoo.finetune.classification.metrics import classification_report, fit_temperature

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pydicom = pytest.importorskip('pydicom')
nib = pytest.importorskip('nibabel')
skdata = pytest.importorskip('skimage.data')


# ---------------------------------------------------------------- fixtures
@pytest.fixture(autouse=True, scope='module')
def _one_thread():
    # the CI machine is shared: one intra-op thread is far faster than two under contention
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _crops(img: np.ndarray, n: int, size: int, rng) -> list:
    from PIL import Image
    h, w = img.shape[:2]
    out = []
    for _ in range(n):
        c = int(rng.integers(min(h, w) // 4, min(h, w) // 2))
        y, x = int(rng.integers(0, h - c)), int(rng.integers(0, w - c))
        out.append(Image.fromarray(img[y:y + c, x:x + c]).resize((size, size)))
    return out


def make_folder(root, n: int = 12, size: int = 40, seed: int = 0, gray: bool = False) -> str:
    """Two visually distinct classes: crops of a fundus photo vs crops of an IHC slide."""
    rng = np.random.default_rng(seed)
    srcs = {'ihc': skdata.immunohistochemistry(), 'retina': skdata.retina()}
    for cls, img in srcs.items():
        os.makedirs(os.path.join(root, cls), exist_ok=True)
        for i, im in enumerate(_crops(img, n, size, rng)):
            (im.convert('L') if gray else im).save(os.path.join(root, cls, f'{i:03d}.png'))
    return str(root)


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp('imgs'), n=10, size=40)


def small_cfg(data, out, **kw) -> ClassificationConfig:
    base = dict(model='mednext_tiny', data=str(data), out=str(out), epochs=1, img_size=32, batch_size=4, lr=1e-3,
                warmup_epochs=0, n_bootstrap=20, progress=False, device='cpu', val_frac=0.25)
    base.update(kw)
    return ClassificationConfig(**base)


def _ct_path():
    from pydicom.data import get_testdata_file
    return get_testdata_file('CT_small.dcm')


# ---------------------------------------------------------------- I/O
def test_dicom_ct_hu_and_windows(tmp_path):
    ds = pydicom.dcmread(_ct_path())
    hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    level, width = 40.0, 400.0  # abdomen
    expect = np.clip((hu - (level - width / 2)) / width, 0, 1)
    got = load_image(_ct_path(), window='abdomen')
    assert got.shape == (128, 128) and got.dtype == np.float32
    np.testing.assert_allclose(got, expect, atol=1e-6)
    np.testing.assert_allclose(load_image(_ct_path(), window='40,400'), got)
    assert not np.allclose(load_image(_ct_path(), window='lung'), got)
    mm = load_image(_ct_path())
    assert mm.min() == 0.0 and mm.max() == 1.0
    # MONOCHROME1 is inverted
    ds.PhotometricInterpretation = 'MONOCHROME1'
    inv = tmp_path / 'mono1.dcm'
    ds.save_as(inv)
    np.testing.assert_allclose(load_image(inv, window='abdomen'), 1.0 - got, atol=1e-6)


def test_dicom_mr_and_multiframe_rejected(tmp_path):
    from pydicom.data import get_testdata_file
    mr = load_image(get_testdata_file('MR_small.dcm'))
    assert mr.shape == (64, 64) and 0 <= mr.min() < mr.max() <= 1
    own = load_image(get_testdata_file('MR_small.dcm'), window='file')  # the file's WindowCenter 600 / Width 1600
    raw = pydicom.dcmread(get_testdata_file('MR_small.dcm')).pixel_array.astype(np.float32)
    assert own.shape == (64, 64) and np.corrcoef(own.ravel(), np.clip(raw, -200, 1400).ravel())[0, 1] > 0.99
    ds = pydicom.dcmread(_ct_path())
    ds.NumberOfFrames = 2
    ds.PixelData = ds.PixelData * 2
    bad = tmp_path / 'multi.dcm'
    ds.save_as(bad)
    with pytest.raises(UserInputError, match='multi-frame.*2 frames') as e:
        load_image(bad)
    assert 'multi.dcm' in str(e.value)


def test_window_parsing():
    assert parse_window('lung').level == -600 and parse_window('bone').width == 1800
    w = parse_window('-100,300')
    assert (w.level, w.width) == (-100, 300)
    assert parse_window(None) is None
    with pytest.raises(UserInputError, match='Unknown window'):
        parse_window('liverish')
    with pytest.raises(UserInputError, match='positive'):
        parse_window('40,0')


def test_nifti_slices_and_grouping(tmp_path):
    src = os.path.join(os.path.dirname(nib.__file__), 'tests', 'data', 'standard.nii.gz')
    n = nifti_num_slices(src)
    vol = np.asarray(nib.load(src).dataobj, dtype=np.float32)
    assert n == vol.shape[2] > 1
    sl = load_image(src, slice_index=1)
    assert sl.shape == vol.shape[1::-1][:2] or sl.shape == (vol.shape[1], vol.shape[0])
    assert 0 <= sl.min() and sl.max() <= 1
    with pytest.raises(UserInputError, match='out of range'):
        load_image(src, slice_index=n)
    # a volume in an ImageFolder contributes every slice, grouped as one patient
    for cls in ('a', 'b'):
        os.makedirs(tmp_path / cls)
        for i in range(3):
            img = nib.Nifti1Image(np.random.default_rng(i).random((8, 8, 4)).astype(np.float32), np.eye(4))
            nib.save(img, str(tmp_path / cls / f'v{i}.nii.gz'))
    source = discover(tmp_path)
    assert len(source.samples) == 2 * 3 * 4 and source.channels == 1
    split = assign_splits(source, val_frac=0.34, seed=0)
    by_vol = {}
    for s in split.samples:
        by_vol.setdefault(s.path, set()).add(s.split)
    assert all(len(v) == 1 for v in by_vol.values())  # no volume straddles two splits


# ---------------------------------------------------------------- data discovery and splits
def test_imagefolder_with_given_splits(tmp_path):
    for split in ('train', 'val'):
        make_folder(tmp_path / split, n=3, size=16, seed=1 if split == 'val' else 0)
    src = assign_splits(discover(tmp_path))
    assert src.classes == ['ihc', 'retina'] and src.channels == 3
    assert sorted({s.split for s in src.samples}) == ['train', 'val']
    assert len(src.subset('val')) == 6


def test_csv_manifest_patient_grouped_stratified(tmp_path, folder):
    rows = []
    for cls in ('ihc', 'retina'):
        for i, f in enumerate(sorted(os.listdir(os.path.join(folder, cls)))):
            rows.append((os.path.join(folder, cls, f), cls, f'{cls}-p{i // 2}'))  # 2 images per patient
    man = tmp_path / 'm.csv'
    with open(man, 'w', newline='') as f:
        w = csv.writer(f)
        w.writerow(['path', 'label', 'patient_id'])
        w.writerows(rows)
    src = assign_splits(discover(man), val_frac=0.2, seed=3)
    splits = {}
    for s in src.samples:
        splits.setdefault(s.patient_id, set()).add(s.split)
    assert all(len(v) == 1 for v in splits.values())
    val_labels = {s.label for s in src.subset('val')}
    assert val_labels == {'ihc', 'retina'}  # stratified: both classes in val
    folds = kfold_assignments(src, 3, seed=0)
    vals = [frozenset(s.patient_id for s in f.subset('val')) for f in folds]
    assert len(folds) == 3 and frozenset().union(*vals) == frozenset(splits) and sum(map(len, vals)) == len(splits)


def _write_csv(path, header, rows):
    with open(path, 'w', newline='') as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return str(path)


def test_bad_inputs(tmp_path, folder):
    a = os.path.join(folder, 'ihc', '000.png')
    b = os.path.join(folder, 'retina', '000.png')
    (tmp_path / 'empty').mkdir()
    with pytest.raises(UserInputError, match='No images found'):
        discover(tmp_path / 'empty')
    one = tmp_path / 'one' / 'only'
    one.mkdir(parents=True)
    from PIL import Image
    Image.open(a).save(one / 'x.png')
    with pytest.raises(UserInputError, match="Only one class .'only'"):
        discover(tmp_path / 'one')
    with pytest.raises(UserInputError, match='lacks column.*label'):
        discover(_write_csv(tmp_path / 'nolabel.csv', ['path'], [[a]]))
    with pytest.raises(UserInputError, match='Empty label.*line 3'):
        discover(_write_csv(tmp_path / 'emptylabel.csv', ['path', 'label'], [[a, 'x'], [b, '']]))
    with pytest.raises(UserInputError, match='missing.png.*does not exist'):
        discover(_write_csv(tmp_path / 'nofile.csv', ['path', 'label'], [[a, 'x'], ['missing.png', 'y']]))
    with pytest.raises(UserInputError, match="Patient 'p1' appears in both"):
        discover(_write_csv(tmp_path / 'leak.csv', ['path', 'label', 'patient_id', 'split'],
                            [[a, 'x', 'p1', 'train'], [b, 'y', 'p1', 'test']]))
    # corrupt image: error naming it, or skipped and counted
    bad = tmp_path / 'corrupt'
    make_folder(bad, n=2, size=16)
    (bad / 'ihc' / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\n not really a png')
    with pytest.raises(UserInputError, match='broken.png'):
        discover(bad)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        src = discover(bad, on_bad_file='skip')
    assert len(src.skipped) == 1 and 'broken.png' in src.skipped[0][0] and len(src.samples) == 4


def test_bad_model_and_in_chans(tmp_path, folder):
    with pytest.raises(UserInputError, match='Unknown model .mednext_tiyn.*mednext_tiny'):
        fit(small_cfg(folder, tmp_path / 'r1', model='mednext_tiyn'))
    with pytest.raises(UserInputError, match='--in-chans 1 contradicts the data.*colour'):
        fit(small_cfg(folder, tmp_path / 'r2', in_chans=1))
    with pytest.raises(UserInputError, match='not an image classifier'):
        fit(small_cfg(folder, tmp_path / 'r3', model='medunext_tiny'))


def test_epoch_sampler_shards_and_resumes():
    s = EpochSampler(10, seed=1, shuffle=True)
    s.set_epoch(2)
    full = [i for i, _ in s]
    s.set_epoch(2, start=4)
    assert [i for i, _ in s] == full[4:]
    s.set_epoch(3)
    assert [i for i, _ in s] != full and sorted(full) == list(range(10))
    r0, r1 = EpochSampler(10, 1, True, 0, 2), EpochSampler(10, 1, True, 1, 2)
    r0.set_epoch(2)
    r1.set_epoch(2)
    assert sorted([i for i, _ in r0] + [i for i, _ in r1]) == sorted(full)
    bal = EpochSampler(100, seed=0, weights=[1.0] * 90 + [9.0] * 10)
    minority = sum(i >= 90 for i, _ in bal)
    assert 30 < minority < 70  # ~50% instead of 10%


# ---------------------------------------------------------------- optimiser: layer-wise lr decay
def test_layer_decay_gives_each_group_its_lr():
    import timm

    from mednext_zoo.finetune.classification import build_optimizer
    model = timm.create_model('mednext_tiny', img_size=32, num_classes=2)
    cfg = small_cfg('x', 'y', layer_decay=0.5, lr=1e-3, warmup_epochs=0, epochs=2)
    opt, sched = build_optimizer(model, cfg.recipe(updates_per_epoch=5), total_steps=10)
    name_of = {id(p): n for n, p in model.named_parameters()}
    lr_by = {}
    for g in opt.param_groups:
        for p in g['params']:
            lr_by[name_of[id(p)]] = g['lr']
    stem, head = lr_by['stem.0.conv.weight'], lr_by['head.fc.weight']
    assert head == pytest.approx(1e-3)
    assert stem < lr_by['stages.1.blocks.0.laffn.proj.weight'] < lr_by['stages.3.blocks.1.laffn.proj.weight'] < head
    n_layers = len({g['lr_scale'] for g in opt.param_groups})
    assert n_layers > 5 and stem == pytest.approx(1e-3 * 0.5 ** (n_layers - 1), rel=1e-6)
    sched.step_update(num_updates=5)  # the schedule keeps the ratios
    lrs = sorted({round(g['lr'] / g['lr_scale'], 12) for g in opt.param_groups})
    assert len(lrs) == 1 and lrs[0] < 1e-3
    # no decay: a single lr
    opt2, _ = build_optimizer(model, small_cfg('x', 'y').recipe(updates_per_epoch=5), total_steps=5 * 2)
    assert len({g['lr'] for g in opt2.param_groups}) == 1


# ---------------------------------------------------------------- metrics
def test_metrics_binary_and_macro():
    from sklearn.metrics import f1_score, roc_auc_score
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    logits = torch.tensor(np.stack([-y * 1.5 + rng.normal(size=200), y * 1.5 + rng.normal(size=200)], 1))
    rep = classification_report(logits, torch.tensor(y), ['neg', 'pos'], n_bootstrap=200)
    probs = torch.softmax(logits, 1).numpy()
    assert rep['averaging'] == 'binary' and rep['positive_class'] == 'pos'
    assert rep['f1'] == pytest.approx(f1_score(y, probs.argmax(1)))
    assert rep['auc'] == pytest.approx(roc_auc_score(y, probs[:, 1]))
    lo, hi = rep['ci95']['auc']
    assert lo < rep['auc'] < hi and hi - lo < 0.2
    assert np.array(rep['confusion_matrix']).sum() == 200 and 0 <= rep['ece'] <= 1
    rep_neg = classification_report(logits, torch.tensor(y), ['neg', 'pos'], positive_class='neg', n_bootstrap=0)
    assert rep_neg['positive_class'] == 'neg' and rep_neg['recall'] == rep['per_class']['neg']['recall']
    y3 = rng.integers(0, 3, 150)
    l3 = torch.tensor(np.eye(3)[y3] * 2 + rng.normal(size=(150, 3)))
    rep3 = classification_report(l3, torch.tensor(y3), ['a', 'b', 'c'], n_bootstrap=50)
    assert rep3['averaging'] == 'macro' and rep3['positive_class'] is None
    assert rep3['f1'] == pytest.approx(f1_score(y3, l3.argmax(1).numpy(), average='macro'))
    # temperature scaling fixes over-confident logits
    t = fit_temperature(logits * 5, torch.tensor(y))
    assert 3 < t < 8
    over = classification_report(logits * 5, torch.tensor(y), ['neg', 'pos'], n_bootstrap=0)
    cal = classification_report(logits * 5, torch.tensor(y), ['neg', 'pos'], temperature=t, n_bootstrap=0)
    assert cal['ece'] < over['ece'] and cal['accuracy'] == over['accuracy']


# ---------------------------------------------------------------- Grad-CAM
def test_gradcam_default_layers():
    import timm

    from mednext_zoo.finetune.classification.cam import GradCAM, default_target_layer, overlay
    m = timm.create_model('mednext_tiny', img_size=64, num_classes=3).eval()
    assert default_target_layer(m)[0] == 'stages.3'
    r = timm.create_model('resnet18', num_classes=2).eval()
    assert default_target_layer(r)[0] == 'layer4'
    cam = GradCAM(r)
    maps, logits = cam(torch.randn(2, 3, 64, 64))
    cam.close()
    assert maps.shape == (2, 64, 64) and logits.shape == (2, 2)
    assert float(maps.min()) >= 0 and float(maps.max()) == pytest.approx(1.0, abs=1e-5)
    ov = overlay(np.zeros((32, 32), np.float32), maps[0].numpy())
    assert ov.shape == (32, 32, 3) and ov.dtype == np.uint8
    assert overlay(np.zeros((32, 48, 3), np.float32), maps[0].numpy(), min_size=64).shape == (64, 96, 3)


# ---------------------------------------------------------------- engine: run dirs, resume, repeatability
def test_run_dir_policy(tmp_path, folder):
    out = tmp_path / 'run'
    out.mkdir()
    (out / 'notes.txt').write_text('mine')
    with pytest.raises(UserInputError, match='already exists.*--resume.*--overwrite'):
        fit(small_cfg(folder, out))
    with pytest.raises(UserInputError, match='not a mednext-zoo run folder'):
        fit(small_cfg(folder, out, overwrite=True))
    assert (out / 'notes.txt').read_text() == 'mine'
    run = tmp_path / 'run2'
    os.makedirs(run)
    from mednext_zoo.finetune import prepare_run_dir
    prepare_run_dir(str(run), {'model': 'mednext_tiny', 'classes': ['ihc', 'retina'], 'in_chans': 3, 'img_size': 32})
    with pytest.raises(UserInputError, match="different setup.*model: run has 'mednext_tiny', now 'mednext_small'"):
        fit(small_cfg(folder, run, model='mednext_small', resume=True))


def _weights(run_dir):
    from safetensors.torch import load_file
    with open(os.path.join(run_dir, 'checkpoints', 'latest.json')) as f:
        latest = json.load(f)
    return latest, load_file(os.path.join(run_dir, 'checkpoints', latest['weights']))


class _Interrupt(Exception):
    pass


def test_resume_after_interruption_matches_uninterrupted(tmp_path, folder, capsys):
    kw = dict(epochs=2, accum_steps=2, batch_size=2, ckpt_every_steps=1, ema_decay=0.9, warmup_epochs=1,
              export=False, label_smoothing=0.1)
    fit(small_cfg(folder, tmp_path / 'a', **kw))
    latest_a, wa = _weights(tmp_path / 'a')

    def boom(engine):
        if engine.progress.step == 5:  # 4 updates per epoch: step 5 is inside the second epoch
            raise _Interrupt

    cfg_b = small_cfg(folder, tmp_path / 'b', **kw)
    cfg_b._callbacks = [boom]
    with pytest.raises(_Interrupt):
        fit(cfg_b)
    latest_b, _ = _weights(tmp_path / 'b')
    assert latest_b['step'] == 5 and latest_b['batches_into_next_epoch'] == 2 and latest_b['epochs_completed'] == 1
    # the training state needs no pickle: safetensors + JSON only; the newest two checkpoints are kept
    ckpt = tmp_path / 'b' / 'checkpoints'
    names = sorted(os.listdir(ckpt))
    assert all(n.endswith(('.safetensors', '.json')) for n in names), names
    assert sorted({n.split('.')[0] for n in names if n.startswith('step-')}) == ['step-00000004', 'step-00000005']
    # the newest checkpoint is damaged (a truncated file): resume falls back to the one before, with a message,
    # and still ends on exactly the uninterrupted weights
    newest = ckpt / 'step-00000005.state.safetensors'
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    fit(small_cfg(folder, tmp_path / 'b', resume=True, **kw))
    err = capsys.readouterr().err
    assert 'step-00000005 is unreadable' in err and 'falling back to step-00000004' in err
    assert (ckpt / 'step-00000005.state.safetensors.unreadable').is_file()
    latest_b, wb = _weights(tmp_path / 'b')
    assert latest_b['step'] == latest_a['step']
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    lines = [json.loads(ln) for ln in open(tmp_path / 'b' / 'metrics.jsonl')]
    lines_a = [json.loads(ln) for ln in open(tmp_path / 'a' / 'metrics.jsonl')]
    assert [r['epoch'] for r in lines] == [1, 2]  # epochs counted from 1, like best_epoch
    assert [r['train_loss'] for r in lines] == [r['train_loss'] for r in lines_a]  # the interrupted epoch too
    ma = json.load(open(tmp_path / 'a' / 'metrics.json'))
    mb = json.load(open(tmp_path / 'b' / 'metrics.json'))
    assert ma['val']['accuracy'] == mb['val']['accuracy'] and ma['val']['auc'] == mb['val']['auc']


def test_linear_probe_and_bf16_keep_backbone(tmp_path, folder):
    import timm
    from safetensors.torch import load_file
    fit(small_cfg(folder, tmp_path / 'lp', linear_probe=True, amp='bf16', export=False))
    torch.manual_seed(0)
    init = timm.create_model('mednext_tiny', img_size=32, num_classes=2).state_dict()
    trained = load_file(str(tmp_path / 'lp' / 'checkpoints' / 'best.safetensors'))
    assert torch.equal(trained['stem.0.conv.weight'], init['stem.0.conv.weight'])
    assert torch.equal(trained['stem.0.bn.running_mean'], init['stem.0.bn.running_mean'])  # BN stats frozen too
    assert not torch.equal(trained['head.fc.weight'], init['head.fc.weight'])


# ---------------------------------------------------------------- a task the model must learn, CLI end to end
@pytest.mark.slow
def test_cli_learns_evaluates_predicts_exports(tmp_path):
    import timm

    import mednext_zoo
    from mednext_zoo.cli import main
    data = make_folder(tmp_path / 'data', n=24, size=40, seed=5)
    test = make_folder(tmp_path / 'test', n=8, size=40, seed=99)
    out = tmp_path / 'run'
    rc = main(['finetune', '--model', 'mednext_tiny', '--data', data, '--out', str(out), '--epochs', '6',
               '--img-size', '32', '--batch-size', '8', '--lr', '2e-3', '--warmup-epochs', '1',
               '--bootstrap', '100', '--no-progress', '--device', 'cpu', '--temperature-scaling'])
    assert rc == 0
    m = json.load(open(out / 'metrics.json'))
    assert m['val']['averaging'] == 'binary' and m['val']['positive_class'] == 'retina'
    assert m['val']['accuracy'] >= 0.8 and m['val']['auc'] >= 0.9
    assert m['temperature'] != 1.0 and 'val_uncalibrated' in m
    for f in ('config.json', 'splits.csv', 'metrics.jsonl', 'plots/curves.png', 'plots/roc_val.png',
              'plots/confusion_val.png', 'export/config.json', 'export/model.safetensors'):
        assert (out / f).is_file(), f
    assert rc == 0 and main(['finetune', '--model', 'mednext_tiny', '--data', data, '--out', str(out)]) == 2
    # evaluate on held-out images: well above chance
    assert main(['evaluate', '--run', str(out), '--data', test, '--bootstrap', '100', '--no-progress']) == 0
    ev = json.load(open(out / 'eval-test' / 'metrics.json'))
    assert ev['n'] == 16 and ev['accuracy'] >= 0.75 and ev['ci95']['accuracy'][0] <= ev['accuracy']
    # a label the model does not know is refused by name
    from PIL import Image
    os.makedirs(tmp_path / 'test' / 'xray')
    Image.open(os.path.join(test, 'ihc', '000.png')).save(tmp_path / 'test' / 'xray' / 'a.png')
    with pytest.raises(UserInputError, match=r"class\(es\) \['xray'\] the model was not trained on"):
        from mednext_zoo.finetune import evaluate
        evaluate(str(out), test, n_bootstrap=0, progress=False)
    # predict with Grad-CAM overlays
    pred_dir = str(tmp_path / 'p')
    assert main(['predict', '--run', str(out), os.path.join(test, 'retina'), '--cam', '--out', pred_dir]) == 0
    rows = list(csv.DictReader(open(tmp_path / 'p' / 'predictions.csv')))
    assert len(rows) == 8 and sum(r['prediction'] == 'retina' for r in rows) >= 6
    assert all(os.path.isfile(r['cam']) for r in rows)
    # the export loads through timm after import mednext_zoo
    assert mednext_zoo
    model = timm.create_model(f'local-dir:{out / "export"}', pretrained=True)
    from safetensors.torch import load_file
    best = load_file(str(out / 'checkpoints' / 'best.safetensors'))
    assert all(torch.equal(best[k], v) for k, v in model.state_dict().items())


@pytest.mark.slow
def test_kfold_summary(tmp_path, folder):
    res = fit(small_cfg(folder, tmp_path / 'cv', folds=2, export=False, test_frac=0.2))
    assert res['folds'] == 2 and set(res['mean']) >= {'accuracy', 'f1', 'auc'}
    f0 = json.load(open(tmp_path / 'cv' / 'fold-0' / 'metrics.json'))
    f1 = json.load(open(tmp_path / 'cv' / 'fold-1' / 'metrics.json'))
    assert f0['sizes']['test'] == f1['sizes']['test'] == 4 and f0['test']['n'] == 4  # same held-out test set
    assert f0['sizes']['val'] + f1['sizes']['val'] == 16
    s = json.load(open(tmp_path / 'cv' / 'cv_summary.json'))
    assert len(s['per_fold']) == 2 and s['std']['accuracy'] >= 0
    assert 'optimistic' in s['split'] and s['test']['n'] == 4  # the held-out test images, scored by every fold
    assert s['test']['mean']['accuracy'] == pytest.approx(np.mean([f0['test']['accuracy'], f1['test']['accuracy']]))
    assert all((tmp_path / 'cv' / f'fold-{k}' / 'metrics.json').is_file() for k in range(2))


@pytest.mark.parametrize('name', ['mednext_tiny', 'medunext_tiny'])
def test_grads_come_in_the_parameters_layout(name):
    """DDP's gradient buckets copy each parameter's strides; a gradient with other strides makes every rank
    print "Grad strides do not match bucket view strides". The cause (channels-last convs on parameters with
    contiguous strides) is checked here without DDP."""
    import timm

    import mednext_zoo  # noqa: F401
    model = timm.create_model(name, img_size=64, num_classes=3).train()
    if name.startswith('medunext'):
        model.reset_classifier(4)
    model(torch.randn(2, model.in_chans, 64, 64)).float().mean().backward()
    wrong = [(n, tuple(p.shape), p.stride(), p.grad.stride()) for n, p in model.named_parameters()
             if p.grad is not None and p.grad.stride() != p.stride()]
    assert not wrong, wrong[:5]


@pytest.mark.slow
def test_ddp_two_processes_gloo(tmp_path, folder):
    out = tmp_path / 'ddp'
    env = {**os.environ, 'PYTHONPATH': REPO, 'OMP_NUM_THREADS': '1'}
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', '--master_port=29571',
           '-m', 'mednext_zoo.cli', 'finetune', '--model', 'mednext_tiny', '--data', folder, '--out', str(out),
           '--epochs', '1', '--img-size', '32', '--batch-size', '2', '--bootstrap', '20', '--no-progress',
           '--device', 'cpu', '--val-frac', '0.25']
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert 'Grad strides do not match' not in p.stdout + p.stderr
    cfg = json.load(open(out / 'config.json'))
    m = json.load(open(out / 'metrics.json'))
    assert cfg['world_size'] == 2
    assert m['val']['n'] == m['sizes']['val'] == 5  # gathered from both ranks, no padding duplicates
    assert (out / 'export' / 'model.safetensors').is_file()
    assert len([ln for ln in open(out / 'metrics.jsonl')]) == 1  # rank 0 logs once


def test_grayscale_one_channel_unfreeze_and_early_stop(tmp_path):
    from safetensors.torch import load_file

    from mednext_zoo.data import ImageClassificationDataset
    gray = make_folder(tmp_path / 'gray', n=8, size=32, gray=True)
    src = discover(gray)
    assert src.channels == 1
    one = ImageClassificationDataset(src.samples[:1], src.class_to_idx, None, in_chans=1)[0][0]
    three = ImageClassificationDataset(src.samples[:1], src.class_to_idx, None, in_chans=3)[0][0]
    assert one.shape == (1, 32, 32) and three.shape == (3, 32, 32) and torch.equal(three[2], one[0])
    seen = {}

    def snap(engine):
        seen.setdefault(engine.progress.epoch, engine.model.stem[0].conv.weight.detach().clone())

    cfg = small_cfg(gray, tmp_path / 'run', in_chans=1, epochs=2, freeze_epochs=1, imbalance='weights', export=False)
    cfg._callbacks = [snap]
    torch.manual_seed(cfg.seed)
    res = fit(cfg)
    import timm
    torch.manual_seed(0)
    init = timm.create_model('mednext_tiny', img_size=32, num_classes=2, in_chans=1).state_dict()
    assert torch.equal(seen[0], init['stem.0.conv.weight'])  # frozen in epoch 0
    assert not torch.equal(seen[1], init['stem.0.conv.weight'])  # unfrozen from epoch 1
    assert res['sizes']['train'] > 0
    # early stopping: with lr 0 nothing improves after the first epoch; a corrupt file is skipped and counted
    (tmp_path / 'gray' / 'ihc' / 'zz_broken.png').write_bytes(b'not an image')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        res = fit(small_cfg(gray, tmp_path / 'stop', epochs=5, lr=0.0, min_lr=0.0, patience=1, export=False,
                            on_bad_file='skip'))
    assert res['stopped_early'] and res['epochs_run'] == 2 and res['best_epoch'] == 1
    assert res['skipped_files'] == 1
    assert 'zz_broken.png' in json.load(open(tmp_path / 'stop' / 'config.json'))['skipped_files'][0][0]
    assert len(load_file(str(tmp_path / 'stop' / 'checkpoints' / 'best.safetensors'))) > 0


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume(tmp_path, folder):
    import signal
    import time
    out = tmp_path / 'killed'
    env = {**os.environ, 'PYTHONPATH': REPO, 'OMP_NUM_THREADS': '1'}
    args = ['-m', 'mednext_zoo.cli', 'finetune', '--model', 'mednext_tiny', '--data', folder, '--out', str(out),
            '--epochs', '2', '--img-size', '32', '--batch-size', '2', '--bootstrap', '20', '--no-progress',
            '--device', 'cpu', '--val-frac', '0.25', '--ckpt-every', '1', '--no-export']
    proc = subprocess.Popen([sys.executable, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    latest = out / 'checkpoints' / 'latest.json'
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        try:
            if json.loads(latest.read_text())['step'] >= 3:  # mid-epoch (7 steps per epoch)
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = json.loads(latest.read_text())
    assert 0 < state['step'] < 14 and not (out / 'metrics.json').exists()
    p = subprocess.run([sys.executable, *args, '--resume'], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert 'resuming' in p.stdout
    assert json.loads(latest.read_text())['step'] == 14
    lines = [json.loads(ln) for ln in open(out / 'metrics.jsonl')]
    assert [r['epoch'] for r in lines] == [1, 2] and (out / 'metrics.json').is_file()


def test_any_timm_classifier_with_cam(tmp_path, folder):
    from mednext_zoo.finetune import predict
    res = fit(small_cfg(folder, tmp_path / 'rn', model='test_resnet'))
    assert res['model'] == 'test_resnet' and res['val']['n'] == 5
    import timm
    exported = timm.create_model(f'local-dir:{tmp_path / "rn" / "export"}', pretrained=True)
    assert type(exported).__name__ == 'ResNet' and exported.num_classes == 2
    assert (tmp_path / 'rn' / 'export' / 'README.md').is_file()  # the model card
    rows = predict(str(tmp_path / 'rn'), [os.path.join(folder, 'ihc', '000.png')], cam=True)
    assert len(rows) == 1 and os.path.isfile(rows[0]['cam']) and set(rows[0]) >= {'p_ihc', 'p_retina'}


def test_pretrained_from_export_and_file(tmp_path, folder):
    import timm
    from safetensors.torch import load_file, save_file
    src = timm.create_model('mednext_tiny', img_size=32, num_classes=5)
    save_file(src.state_dict(), str(tmp_path / 'w.safetensors'))
    res = fit(small_cfg(folder, tmp_path / 'a', pretrained=str(tmp_path / 'w.safetensors'), linear_probe=True))
    best = load_file(str(tmp_path / 'a' / 'checkpoints' / 'best.safetensors'))
    key = 'stages.2.blocks.0.laffn.proj.weight'
    assert torch.equal(best[key], src.state_dict()[key])
    assert best['head.fc.weight'].shape == (2, src.num_features)  # new classifier for the 2 classes
    # a run's export seeds the next run
    fit(small_cfg(folder, tmp_path / 'b', pretrained=str(tmp_path / 'a' / 'export'), linear_probe=True,
                  export=False))
    again = load_file(str(tmp_path / 'b' / 'checkpoints' / 'best.safetensors'))
    assert torch.equal(again['stem.0.conv.weight'], best['stem.0.conv.weight'])
    assert res['classes'] == ['ihc', 'retina']
    with pytest.raises(UserInputError, match='does not exist'):
        fit(small_cfg(folder, tmp_path / 'c', pretrained=str(tmp_path / 'missing.safetensors')))


def test_engine_is_task_agnostic(tmp_path):
    """A regression task through the bare engine: what a segmentation task will plug into."""
    eng, resumed = _regression_engine(tmp_path / 'reg', lr=0.1, epochs=5, monitor='mae')
    summary = eng.fit(resume=resumed)
    lines = [json.loads(ln) for ln in open(tmp_path / 'reg' / 'metrics.jsonl')]
    assert summary['epochs_run'] == 5 and summary['steps'] == 40
    assert lines[-1]['val_mae'] < 0.1 * lines[0]['val_mae']
    assert summary['best_score'] == min(r['val_mae'] for r in lines)
    assert (tmp_path / 'reg' / 'checkpoints' / 'best.safetensors').is_file()
    # resuming a finished run trains nothing more and keeps the weights
    w = eng.model.weight.detach().clone()
    eng2, resumed = _regression_engine(tmp_path / 'reg', lr=0.1, epochs=5, monitor='mae', resume=True)
    s2 = eng2.fit(resume=resumed)
    assert s2['steps'] == 40 and torch.equal(eng2.model.weight, w)


# ---------------------------------------------------------------- issue 12: state without pickle, fallback, divergence
def test_training_state_round_trips_without_pickle(tmp_path):
    import random

    from mednext_zoo.finetune.state import load_state, save_state
    random.seed(3)
    np.random.seed(4)
    state = {'rng': {'python': random.getstate(), 'numpy': np.random.get_state(), 'torch': torch.get_rng_state()},
             'optimizer': {'state': {0: {'step': torch.tensor(3.0), 'exp_avg': torch.randn(2, 3)}},
                           'param_groups': [{'lr': 1e-3, 'betas': (0.9, 0.999), 'params': [0]}]},
             'progress': {'best': float('nan'), 'step': 7}, 'scaler': None}
    save_state(str(tmp_path / 's.safetensors'), str(tmp_path / 's.json'), state)
    back, _ = load_state(str(tmp_path / 's.safetensors'), str(tmp_path / 's.json'))
    assert back['rng']['python'] == state['rng']['python']  # tuples stay tuples: random.setstate accepts it
    random.setstate(back['rng']['python'])
    np.random.set_state(back['rng']['numpy'])
    assert np.array_equal(back['rng']['numpy'][1], state['rng']['numpy'][1])
    assert torch.equal(back['rng']['torch'], state['rng']['torch'])
    assert torch.equal(back['optimizer']['state'][0]['exp_avg'], state['optimizer']['state'][0]['exp_avg'])
    assert back['optimizer']['param_groups'][0]['betas'] == (0.9, 0.999) and math.isnan(back['progress']['best'])
    json.loads((tmp_path / 's.json').read_text())  # standard JSON (no NaN literal), no pickle anywhere
    with pytest.raises(TypeError, match='Cannot store object at .x'):
        save_state(str(tmp_path / 'b.safetensors'), str(tmp_path / 'b.json'), {'x': object()})
    (tmp_path / 's.safetensors').write_bytes((tmp_path / 's.safetensors').read_bytes()[:-10])
    with pytest.raises(ValueError, match='truncated'):
        load_state(str(tmp_path / 's.safetensors'), str(tmp_path / 's.json'))


class _Pairs(torch.utils.data.Dataset):
    def __init__(self, n):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 4, generator=g)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1

    def __len__(self):
        return len(self.x)

    def __getitem__(self, item):
        i = item[0] if isinstance(item, tuple) else item
        return self.x[i], self.y[i]


def _regression_engine(out, lr, resume=False, epochs=6, monitor='loss'):
    """A linear least-squares task on the bare engine (SGD, no scheduler); returns ``(engine, resumed)``."""
    from torch import nn
    from torch.utils.data import DataLoader

    from mednext_zoo.finetune import Engine, EngineConfig, Task, prepare_run_dir

    class Regression(Task):
        def loss(self, model, inputs, targets):
            return nn.functional.mse_loss(model(inputs).squeeze(1), targets)

        def evaluate(self, outputs, targets):
            return {'loss': float(nn.functional.mse_loss(outputs.squeeze(1), targets)),
                    'mae': float((outputs.squeeze(1) - targets).abs().mean())}

    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    tl = DataLoader(_Pairs(64), batch_size=8, sampler=EpochSampler(64, seed=0), generator=torch.Generator())
    vl = DataLoader(_Pairs(16), batch_size=8, sampler=EpochSampler(16, shuffle=False))
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    resumed = prepare_run_dir(str(out), {'task': 'regression'}, resume=resume)
    eng = Engine(model, Regression(), tl, vl, opt, None, str(out),
                 EngineConfig(epochs=epochs, monitor=monitor, monitor_mode='min', progress=False, device='cpu'))
    return eng, resumed


def test_too_high_lr_stops_with_step_and_lr_and_keeps_the_last_checkpoint(tmp_path):
    from mednext_zoo.finetune.engine import TrainingDivergedError
    eng, _ = _regression_engine(tmp_path / 'r', lr=3.0)  # SGD on least squares diverges for lr > 1
    with pytest.raises(TrainingDivergedError) as e:
        eng.fit()
    msg, step = str(e.value), e.value.step
    assert f'at optimiser step {step}' in msg and 'learning rate 3' in msg and '--resume --lr 0.3' in msg
    latest = json.loads((tmp_path / 'r' / 'checkpoints' / 'latest.json').read_text())
    assert 0 < latest['step'] < step and f"(step {latest['step']}," in msg
    from safetensors.torch import load_file
    weights = load_file(str(tmp_path / 'r' / 'checkpoints' / latest['weights']))
    assert all(bool(torch.isfinite(v).all()) for v in weights.values())  # nothing of the bad step was saved
    assert not any(n.endswith('.pt') for n in os.listdir(tmp_path / 'r' / 'checkpoints'))


def test_checkpoint_with_nan_weights_is_refused(tmp_path):
    from mednext_zoo.finetune.engine import TrainingDivergedError
    eng, _ = _regression_engine(tmp_path / 'r', lr=0.01, epochs=2)

    def poison(engine):  # weights turn NaN at the last step of the first epoch (e.g. an fp16 overflow)
        if engine.progress.step == 8:
            with torch.no_grad():
                engine.model.weight.fill_(float('nan'))

    eng.callbacks = [poison]
    with pytest.raises(TrainingDivergedError, match=r'weights became non-finite \(weight\) after optimiser step 8 '
                       r'\(end of epoch 1; learning rate 0.01\)') as e:
        eng.fit()
    assert 'No checkpoint was written yet: start again with a lower learning rate' in str(e.value)
    assert not (tmp_path / 'r' / 'checkpoints' / 'latest.json').exists()  # no checkpoint of NaN weights


def test_old_pickle_checkpoints_are_not_loaded(tmp_path):
    eng, _ = _regression_engine(tmp_path / 'r', lr=0.01, epochs=1)
    eng.fit()
    ckpt = tmp_path / 'r' / 'checkpoints'
    for n in os.listdir(ckpt):
        if n.startswith('step-'):
            os.unlink(ckpt / n)
    (ckpt / 'step-00000008-e1-b0.state.pt').write_bytes(b'a pickle that must never be loaded')
    (ckpt / 'latest.json').write_text(json.dumps({'weights': 'x.safetensors', 'state': 'step-00000008-e1-b0.state.pt',
                                                  'epoch': 1, 'batch': 0, 'step': 8}))
    eng2, resumed = _regression_engine(tmp_path / 'r', lr=0.01, resume=True, epochs=2)
    with pytest.raises(UserInputError, match='old pickle format.*unpickling a file can run code'):
        eng2.fit(resume=resumed)


def test_divergence_stops_the_run_and_resume_takes_a_lower_lr(tmp_path, folder, capsys):
    from mednext_zoo.finetune.engine import TrainingDivergedError
    kw = dict(epochs=2, export=False)  # 15 training images, batch 4: 3 optimiser steps per epoch

    def blow_up(engine):  # what an overflow does: NaN weights after step 4, so step 5's loss is NaN
        if engine.progress.step == 4:
            with torch.no_grad():
                engine.model.head.fc.weight.fill_(float('nan'))

    cfg = small_cfg(folder, tmp_path / 'run', lr=1e-3, **kw)
    cfg._callbacks = [blow_up]
    with pytest.raises(TrainingDivergedError) as e:
        fit(cfg)
    msg = str(e.value)
    assert 'the loss became nan at optimiser step 5 (epoch 2, batch 2; learning rate' in msg
    assert 'schedule peak 0.001)' in msg
    assert 'last good checkpoint (step 3, 1 epoch(s) completed)' in msg and '--resume --lr 0.0001' in msg
    latest, weights = _weights(tmp_path / 'run')
    assert latest['step'] == 3 and all(bool(torch.isfinite(v).all()) for v in weights.values())
    capsys.readouterr()
    res = fit(small_cfg(folder, tmp_path / 'run', lr=1e-4, resume=True, **kw))
    out = capsys.readouterr().out
    assert 'resuming at step 3 from checkpoint step-00000003: epoch 2 of 2, from its first batch' in out
    assert 'resuming with changed settings: --lr 0.001 -> 0.0001 (learning rate now' in out
    assert res['epochs_run'] == 2
    log = [json.loads(ln) for ln in open(tmp_path / 'run' / 'metrics.jsonl')]
    assert [r['epoch'] for r in log] == [1, 2] and log[0]['lr'] > 1e-4 >= log[1]['lr'] > 0  # the new lr is used
    run = json.load(open(tmp_path / 'run' / 'run.json'))
    assert run['resumes'][-1]['step'] == 3 and run['resumes'][-1]['changed'] == ['--lr 0.001 -> 0.0001']


def test_failed_start_leaves_no_folder_and_never_touches_an_earlier_run(tmp_path, folder, monkeypatch, capsys):
    from huggingface_hub import constants as hf_constants

    from mednext_zoo.cli import main
    monkeypatch.setattr(hf_constants, 'HF_HUB_OFFLINE', True)  # the tag's weights are not published
    monkeypatch.setattr(hf_constants, 'HF_HUB_CACHE', str(tmp_path / 'hf'))
    out = tmp_path / 'run'
    args = ['finetune', '--model', 'mednext_base', '--data', folder, '--out', str(out), '--img-size', '32',
            '--epochs', '1', '--batch-size', '4', '--bootstrap', '0', '--no-progress', '--no-export']
    assert main(args + ['--pretrained', 'sarscov2_ct']) == 2
    err = capsys.readouterr().err
    assert 'not yet published' in err and '  3. A weights file' in err and 'pretrained=False' in err  # whole message
    assert 'Traceback' not in err and not out.exists()  # nothing left behind: the same command can run again
    # a start that fails after creating the folder but before its first checkpoint removes it too
    cfg = small_cfg(folder, out, export=False)

    def stop(engine):
        raise _Interrupt

    cfg._callbacks = [stop]
    with pytest.raises(_Interrupt):
        fit(cfg)
    assert not out.exists()
    # a finished run is kept whole when a later --overwrite or --resume fails during set-up
    fit(small_cfg(folder, out, export=False))
    before = sorted(os.listdir(out / 'checkpoints'))
    assert main(args + ['--model', 'mednext_tiny', '--overwrite', '--pretrained', str(tmp_path / 'nope.safetensors')]
                ) == 2
    assert main(args + ['--model', 'mednext_tiny', '--resume', '--pretrained', str(tmp_path / 'nope.safetensors')]
                ) == 2
    assert 'does not exist' in capsys.readouterr().err
    assert sorted(os.listdir(out / 'checkpoints')) == before and (out / 'metrics.json').is_file()


def test_evaluate_never_scores_training_data_silently(tmp_path, folder, capsys):
    import shutil

    from mednext_zoo.cli import main
    from mednext_zoo.finetune import evaluate
    run = tmp_path / 'run'
    res = fit(small_cfg(folder, run, epochs=2, test_frac=0.2, export=False))
    fit_out = capsys.readouterr().out
    # the final metrics say which weights they come from, with epochs counted from 1 everywhere
    log = [json.loads(ln) for ln in open(run / 'metrics.jsonl')]
    assert [r['epoch'] for r in log] == [1, 2]
    assert res['best_epoch'] == min(log, key=lambda r: r['val_loss'])['epoch']
    label = f"the best checkpoint (epoch {res['best_epoch']} of 2, monitored: val loss, min)"
    assert res['scored_with'] == label and f'test metrics of {label}' in fit_out
    # splits.csv records each image's content hash
    rows = list(csv.DictReader(open(run / 'splits.csv')))
    assert all(len(r['sha256']) == 64 for r in rows)
    n_test = sum(r['split'] == 'test' for r in rows)
    assert 0 < n_test < len(rows) == 20
    # the same images in another folder: recognised by content, only the held-out ones are scored
    copy = tmp_path / 'copy'
    shutil.copytree(folder, copy)
    ev = evaluate(str(run), str(copy), n_bootstrap=0, progress=False)
    out = capsys.readouterr().out
    assert ev['n'] == n_test and ev['training_overlap']['in_training_data'] == 20 - n_test
    assert f'{20 - n_test} of the 20 images of {copy} are in the run\'s training data' in out
    assert f'scoring only the {n_test} held-out images' in out
    # renamed copies of training images only: nothing held out, refused
    only = tmp_path / 'train_only'
    for i, r in enumerate(r for r in rows if r['split'] != 'test'):
        os.makedirs(only / r['label'], exist_ok=True)
        shutil.copy(r['path'], only / r['label'] / f'renamed_{i}.png')
    with pytest.raises(UserInputError, match=rf'All {20 - n_test} images .* training data .*include-training-data'):
        evaluate(str(run), str(only), n_bootstrap=0, progress=False)
    # --include-training-data scores everything and the report lists the overlap
    assert main(['evaluate', '--run', str(run), '--data', str(copy), '--include-training-data', '--bootstrap', '0',
                 '--no-progress']) == 0
    assert '--include-training-data: scoring all 20 images' in capsys.readouterr().out
    m = json.load(open(run / 'eval-copy' / 'metrics.json'))
    assert m['n'] == 20 and m['training_overlap']['scored'] == 'all (--include-training-data)'
    assert len(m['training_overlap']['overlapping']) == 20 - n_test
    assert len(open(run / 'eval-copy' / 'training_overlap.csv').read().splitlines()) == 1 + 20 - n_test
    # a run from before the sha256 column: the recorded paths are hashed, and the console says so
    with open(run / 'splits.csv', 'w', newline='') as f:
        w = csv.writer(f)
        w.writerow(['path', 'label', 'patient_id', 'split', 'slice'])
        w.writerows([r['path'], r['label'], r['patient_id'], r['split'], r['slice']] for r in rows)
    ev = evaluate(str(run), str(copy), n_bootstrap=0, progress=False)
    assert ev['n'] == n_test and 'predates the sha256 column' in capsys.readouterr().out


def test_resume_survives_a_torn_log_line_and_removes_temporary_files(tmp_path):
    eng, _ = _regression_engine(tmp_path / 'r', lr=0.1, epochs=2)
    eng.fit()
    with open(tmp_path / 'r' / 'metrics.jsonl', 'a') as f:
        f.write('{"epoch": 3, "step": 2')  # a kill in the middle of a log write
    tmp = tmp_path / 'r' / 'checkpoints' / '.step-00000017.safetensors.tmp-x1y2.safetensors'
    tmp.write_bytes(b'half a file')  # a kill in the middle of a checkpoint write (the atomic writer's name)
    eng2, resumed = _regression_engine(tmp_path / 'r', lr=0.1, epochs=3, resume=True)
    assert eng2.fit(resume=resumed)['epochs_run'] == 3
    assert [json.loads(ln)['epoch'] for ln in open(tmp_path / 'r' / 'metrics.jsonl')] == [1, 2, 3]
    assert not tmp.exists()


def test_lr_and_clipping_defaults_depend_on_the_start():
    from mednext_zoo.benchmark.training import classification_recipe
    from mednext_zoo.finetune.classification import task as T
    scratch = ClassificationConfig(model='mednext_tiny', data='d', out='o')
    assert (scratch.lr, scratch.clip_grad) == (T.SCRATCH_LR, T.SCRATCH_CLIP_GRAD) == (1e-3, 1.0)
    tuned = ClassificationConfig(model='mednext_tiny', data='d', out='o', pretrained='w.safetensors')
    assert (tuned.lr, tuned.clip_grad) == (T.FINETUNE_LR, None)
    mine = ClassificationConfig(model='mednext_tiny', data='d', out='o', lr=1e-4, clip_grad=0.0)
    assert (mine.lr, mine.clip_grad) == (1e-4, 0.0)  # explicit values win; 0 keeps clipping off
    r = classification_recipe()  # the training-efficiency suite's classification rows train from random weights
    assert (r.opt, r.lr, r.clip_grad, r.oversample_fg) == ('adamw', scratch.lr, scratch.clip_grad, 0.0)


def test_names_before_0_2_still_work_with_a_deprecation_warning():
    """ClassificationConfig / TrainingRecipe / classification_recipe / the tag protocols were renamed in 0.2; the old
    names stay for one minor version, as the same objects, and say so."""
    from mednext_zoo.benchmark import training
    from mednext_zoo.finetune import ClassificationConfig, TrainingRecipe
    from mednext_zoo.finetune.classification import task
    from mednext_zoo.reproduce import tag_protocols
    for module, old, new in ((task, 'FinetuneConfig', ClassificationConfig),
                             (__import__('mednext_zoo.finetune', fromlist=['x']), 'FinetuneConfig',
                              ClassificationConfig),
                             (__import__('mednext_zoo.finetune.segmentation.recipe', fromlist=['x']), 'SegRecipe',
                              TrainingRecipe),
                             (training, 'cls_recipe', training.classification_recipe),
                             (__import__('mednext_zoo.reproduce.protocols', fromlist=['x']), 'get_protocol',
                              tag_protocols.get_tag_protocol)):
        with pytest.warns(DeprecationWarning, match=f'{old} is renamed'):
            assert getattr(module, old) is new


# ---------------------------------------------------------------- export: the run's recipe travels with the weights
def _dicom_classes(root, n: int = 4) -> str:
    """Two classes of CT slices (HU in the files): pydicom's CT_small.dcm with noise, mirrored for class b."""
    ds0 = pydicom.dcmread(_ct_path())
    rng = np.random.default_rng(0)
    for cls, flip in (('a', False), ('b', True)):
        os.makedirs(os.path.join(root, cls), exist_ok=True)
        for i in range(n):
            ds = pydicom.dcmread(_ct_path())
            arr = ds0.pixel_array.astype(np.int32)
            arr = np.clip((arr[:, ::-1] if flip else arr) + rng.integers(-20, 20, arr.shape), 0, 4095)
            ds.PixelData = arr.astype(ds0.pixel_array.dtype).tobytes()
            ds.save_as(os.path.join(root, cls, f'{i}.dcm'))
    return str(root)


def test_dicom_window_classifier_exports_that_window(tmp_path, capsys):
    """A classifier trained on DICOM with --window abdomen: its export/, `export RUN` and `export RUN/export` (Hub
    and ONNX) all carry that window, and a deployment following preprocessing.json gives `predict`'s
    probabilities. Before, the ONNX export said window null (min-max) and `export RUN` needed --checkpoint."""
    pytest.importorskip('onnxruntime')
    from mednext_zoo.cli import main
    from mednext_zoo.data.preprocessing import as_spec
    from mednext_zoo.deploy import load_artefact, preprocess
    from mednext_zoo.finetune import predict
    run = tmp_path / 'run'
    fit(small_cfg(_dicom_classes(tmp_path / 'dcm'), run, window='abdomen', temperature_scaling=True,
                  n_bootstrap=0))
    config = json.load(open(run / 'export' / 'config.json'))
    rec = config['preprocessing']
    assert rec['intensity'] == {'mode': 'window', 'low': -160.0, 'high': 240.0, 'scale': 'window', 'name': 'abdomen'}
    temperature = json.load(open(run / 'metrics.json'))['temperature']
    assert rec['output'] == {'activation': 'softmax', 'temperature': temperature}
    assert rec['spatial'] == {'mode': 'resize', 'size': [32, 32], 'interpolation': 'bilinear', 'antialias': True}
    capsys.readouterr()
    for src, dst in ((run, 'onnx'), (run / 'export', 'onnx2')):
        assert main(['export', str(src), str(tmp_path / dst), '--format', 'onnx']) == 0
        out = capsys.readouterr().out
        assert 'CT window -160..240 HU (abdomen)' in out and 'the loader configured from the run\'s records' in out
        assert as_spec(tmp_path / dst) == as_spec(run / 'export')
        pp = json.load(open(tmp_path / dst / 'parity.json'))['preprocessing_parity']
        assert pp['agrees'] and 'CT_small.dcm' in [r['file'] for r in pp['files']] and pp['top1_agreement'] == 1.0
    # the deployed artefact, fed as preprocessing.json says, gives the run's own predictions
    ct = _ct_path()
    logits = load_artefact(tmp_path / 'onnx')(torch.from_numpy(preprocess(ct, tmp_path / 'onnx')))
    probs = torch.softmax(logits / temperature, 1)[0]
    row = predict(str(run), [ct], out=str(tmp_path / 'pred'))[0]
    assert probs.tolist() == pytest.approx([row['p_a'], row['p_b']], abs=1e-5)
    # the Hub folder of `export RUN` / `export RUN/export` is the run's own export: labels, resize, recipe, weights
    for src, dst in ((run, 'hub'), (run / 'export', 'hub2')):
        assert main(['export', str(src), str(tmp_path / dst), '--no-flops']) == 0
        assert json.load(open(tmp_path / dst / 'config.json')) == config
        weights = (tmp_path / dst / 'model.safetensors').read_bytes()
        assert weights == (run / 'export' / 'model.safetensors').read_bytes()
    assert config['label_names'] == ['a', 'b'] and config['pretrained_cfg']['crop_pct'] == 1.0
    # what the run recorded is not overridden
    capsys.readouterr()
    for extra, message in ((['--window', 'lung'], 'records the preprocessing'),
                           (['--labels', 'x,y'], 'records its labels'),
                           (['--checkpoint', 'w.safetensors'], 'carries its own weights')):
        assert main(['export', str(run), str(tmp_path / 'z'), '--format', 'onnx', *extra]) == 2
        assert message in capsys.readouterr().err
