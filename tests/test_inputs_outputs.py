"""What goes in and comes out (issue 24): misspelled CSV columns, a one-class external set, predict's output folder
and inputs, segmentation masks a viewer can show, skip counts that agree, and the smaller messages of a second
newcomer walkthrough."""
from __future__ import annotations

import csv
import json
import os
import warnings

import numpy as np
import pytest
import torch

from mednext_zoo.cli import main
from mednext_zoo.data import discover
from mednext_zoo.data.images import read_csv_manifest
from mednext_zoo.errors import UserInputError
from tests.test_finetune import make_folder, small_cfg


@pytest.fixture(autouse=True, scope='module')
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp('imgs'), n=6, size=40)


@pytest.fixture(scope='module')
def cls_run(tmp_path_factory, folder):
    """A finished classification run (timm's tiny test_resnet, 1 epoch at 32 x 32)."""
    from mednext_zoo.finetune import fit
    out = tmp_path_factory.mktemp('cls') / 'run'
    fit(small_cfg(folder, out, model='test_resnet', n_bootstrap=0, export=False))
    return str(out)


def _csv(path, header, rows):
    with open(path, 'w', newline='') as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return str(path)


# ---------------------------------------------------------------- 2. misspelled optional CSV columns
def test_near_miss_columns_are_refused_naming_both(tmp_path, folder):
    a, b = os.path.join(folder, 'ihc', '000.png'), os.path.join(folder, 'retina', '000.png')
    rows = [[a, 'ihc', 'p1', 'train'], [b, 'retina', 'p2', 'train']]
    for header, wrong, right in ((['path', 'label', 'patient id', 'split'], 'patient id', 'patient_id'),
                                 (['path', 'label', 'Patient_ID', 'split'], 'patient_id', None),  # case: not a typo
                                 (['path', 'label', 'PatientID', 'split'], 'patientid', 'patient_id'),
                                 (['path', 'label', 'patient', 'split'], 'patient', 'patient_id'),
                                 (['path', 'label', 'patient_id', 'spilt'], 'spilt', 'split'),
                                 (['path', 'lable', 'patient_id', 'split'], 'lable', 'label')):
        path = _csv(tmp_path / 'm.csv', header, rows)
        if right is None:
            assert read_csv_manifest(path).samples[0].patient_id == 'p1'  # the reader lower-cases the header
            continue
        with pytest.raises(UserInputError, match=f"column '{wrong}' looks like a misspelling of '{right}'"):
            read_csv_manifest(path)
    # other unknown columns: listed in a warning and ignored; --strict-columns: an error
    path = _csv(tmp_path / 'extra.csv', ['path', 'label', 'age', 'patient_age'], [r[:2] + ['50', '50'] for r in rows])
    with pytest.warns(UserWarning, match=r"column\(s\) 'age', 'patient_age' are not used and are ignored"):
        src = discover(path)
    assert len(src.samples) == 2
    with pytest.raises(UserInputError, match=r"unknown column\(s\) 'age', 'patient_age' \(--strict-columns\)"):
        discover(path, strict_columns=True)
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # known columns only (and a trailing comma's empty name): no warning
        discover(_csv(tmp_path / 'ok.csv', ['path', 'label', 'patient_id', 'split', 'slice', ''],
                      [r + ['', ''] for r in rows]))


def test_near_miss_columns_of_a_segmentation_csv(tmp_path):
    from PIL import Image

    from mednext_zoo.data.volumes import discover as seg_discover
    for i in range(2):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(tmp_path / f'i{i}.png')
        Image.fromarray(np.eye(8, dtype=np.uint8)).save(tmp_path / f'm{i}.png')
    rows = [[f'i{i}.png', f'm{i}.png', f'p{i}'] for i in range(2)]
    with pytest.raises(UserInputError, match="column 'patient id' looks like a misspelling of 'patient_id'"):
        seg_discover(_csv(tmp_path / 'a.csv', ['image', 'label', 'patient id'], rows))
    with pytest.raises(UserInputError, match="column 'case id' looks like a misspelling of 'case_id'"):
        seg_discover(_csv(tmp_path / 'b.csv', ['image', 'label', 'case id'], rows))
    ds = seg_discover(_csv(tmp_path / 'c.csv', ['image', 'label', 'patient'], rows))  # an accepted alias
    assert [r.patient for r in ds.records] == ['p0', 'p1']
    with pytest.warns(UserWarning, match=r"column\(s\) 'site' are not used"):
        seg_discover(_csv(tmp_path / 'd.csv', ['image', 'label', 'site'], rows))
    with pytest.raises(UserInputError, match='--strict-columns'):
        seg_discover(_csv(tmp_path / 'd.csv', ['image', 'label', 'site'], rows), strict_columns=True)


def test_strict_columns_on_the_command_line(tmp_path, folder, capsys):
    a, b = os.path.join(folder, 'ihc', '000.png'), os.path.join(folder, 'retina', '000.png')
    path = _csv(tmp_path / 'm.csv', ['path', 'label', 'site'], [[a, 'ihc', 'x'], [b, 'retina', 'y']])
    assert main(['finetune', '--model', 'mednext_tiny', '--data', path, '--out', str(tmp_path / 'run'),
                 '--strict-columns', '--no-progress']) == 2
    assert "unknown column(s) 'site' (--strict-columns)" in capsys.readouterr().err
    assert not (tmp_path / 'run').exists()


def test_a_missing_data_path_says_it_does_not_exist(tmp_path, folder):
    os.makedirs(tmp_path / 'cls' / 'train')
    with pytest.raises(UserInputError, match=r'--data .*cls/trian does not exist\. Did you mean .*cls/train\?'):
        discover(str(tmp_path / 'cls' / 'trian'))
    with pytest.raises(UserInputError, match=r'x does not exist\. Its folder .*nowhere does not exist either\.'):
        discover(str(tmp_path / 'nowhere' / 'x'))


# ---------------------------------------------------------------- 3. evaluate on one class
def test_evaluate_scores_a_one_class_set_and_says_auc_is_undefined(tmp_path, cls_run, capsys):
    from mednext_zoo.finetune import evaluate
    ext = make_folder(tmp_path / 'ext', n=4, size=40, seed=7)
    import shutil
    shutil.rmtree(os.path.join(ext, 'ihc'))  # an all-positive external set ('retina' is the positive class)
    capsys.readouterr()
    assert main(['evaluate', '--run', cls_run, '--data', ext, '--bootstrap', '20', '--no-progress']) == 0
    text = capsys.readouterr().out
    assert "auc       undefined: ROC AUC needs positive and negative images; the data holds only 'retina'" in text
    assert '  recall    ' in text and 'recall    undefined' not in text  # sensitivity is defined
    res = json.load(open(os.path.join(cls_run, 'eval-ext', 'metrics.json')))
    assert res['n'] == 4 and res['auc'] is None and res['ci95']['auc'] is None and 0 <= res['recall'] <= 1
    assert set(res['undefined']) == {'auc'} | ({'precision'} if res['recall'] == 0 else set())
    assert res['confusion_matrix'][0] == [0, 0]  # no 'ihc' images
    # an all-negative set: the sensitivity (recall) and F1 are undefined, the accuracy is the specificity
    neg = make_folder(tmp_path / 'neg', n=3, size=40, seed=8)
    shutil.rmtree(os.path.join(neg, 'retina'))
    res = evaluate(cls_run, neg, n_bootstrap=0, progress=False)
    assert res['recall'] is None and res['f1'] is None and 'sensitivity needs' in res['undefined']['recall']
    assert res['accuracy'] == pytest.approx(res['confusion_matrix'][0][0] / 3)  # the specificity
    with pytest.raises(UserInputError, match='needs at least two'):  # training still needs two classes
        discover(neg)


# ---------------------------------------------------------------- 6. predict's output folder and inputs
def test_classification_predict_refuses_to_overwrite_dedups_and_says_where(tmp_path, cls_run, folder, capsys):
    out = str(tmp_path / 'pred')
    one = os.path.join(folder, 'ihc', '000.png')
    capsys.readouterr()
    assert main(['predict', '--run', cls_run, os.path.join(folder, 'ihc'), one, '--out', out, '--cam']) == 0
    cap = capsys.readouterr()
    rows = list(csv.DictReader(open(os.path.join(out, 'predictions.csv'))))
    assert len(rows) == 6 and len(cap.out.strip().splitlines()) == 6  # 000.png given twice: predicted once
    assert '1 image(s) named more than once' in cap.err
    assert f'wrote 6 prediction(s) to {os.path.join(out, "predictions.csv")}, Grad-CAM overlays to ' \
           f'{os.path.join(out, "cam")}' in cap.err
    cams = sorted(os.listdir(os.path.join(out, 'cam')))
    assert len(cams) == 6
    # a second call into the same folder is refused: the 6 rows are not replaced by 1
    assert main(['predict', '--run', cls_run, one, '--out', out]) == 2
    assert 'already holds predictions of an earlier call (cam/' in capsys.readouterr().err
    assert len(list(csv.DictReader(open(os.path.join(out, 'predictions.csv'))))) == 6
    # --overwrite replaces them, and leaves no stale Grad-CAM images behind
    assert main(['predict', '--run', cls_run, one, '--out', out, '--overwrite']) == 0
    assert len(list(csv.DictReader(open(os.path.join(out, 'predictions.csv'))))) == 1
    assert not os.listdir(os.path.join(out, 'cam'))


@pytest.fixture(scope='module')
def seg_run(tmp_path_factory):
    """A finished segmentation run on a 2D image / mask folder (medunext_tiny, 1 epoch at 32 x 32)."""
    from PIL import Image

    from mednext_zoo.finetune.segmentation import SegConfig, fit
    root = tmp_path_factory.mktemp('seg2d')
    (root / 'd' / 'images').mkdir(parents=True)
    (root / 'd' / 'masks').mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        img = rng.integers(0, 60, (32, 32)).astype(np.uint8)
        mask = np.zeros((32, 32), np.uint8)
        mask[8 + i:20 + i, 6:18] = 1
        img[mask > 0] += 150
        Image.fromarray(img).save(root / 'd' / 'images' / f'img{i}.png')
        Image.fromarray(mask * 255).save(root / 'd' / 'masks' / f'img{i}.png')
    import contextlib
    import io
    with contextlib.redirect_stdout(io.StringIO()) as log:
        fit(SegConfig(data=str(root / 'd'), out=str(root / 'run'), model='medunext_tiny', img_size=32, epochs=1,
                      batch_size=2, val_frac=0.25, overlays=0, progress=False, export=False))
    return str(root / 'd'), str(root / 'run'), log.getvalue()


def test_2d_segmentation_counts_images_and_writes_viewable_masks(seg_run, tmp_path, capsys):
    from PIL import Image
    data, run, log = seg_run
    assert 'train 3 images, val 1, test 0' in log and 'volumes' not in log.split('segmentation:')[1].splitlines()[0]
    images = os.path.join(data, 'images')
    out = str(tmp_path / 'p')
    assert main(['predict', '--run', run, images, os.path.join(images, 'img0.png'), '--out', out,
                 '--overlays', '1']) == 0
    cap = capsys.readouterr()
    assert len(cap.out.strip().splitlines()) == 4 and '1 input file(s) given more than once' in cap.err
    assert f'wrote 4 prediction(s) to {out} (label maps: pixel / voxel values are class indices, 0 background, ' \
           f'1 foreground; overlays in {os.path.join(out, "overlays")})' in cap.err
    mask = Image.open(os.path.join(out, 'img0_pred.png'))
    assert mask.mode == 'P'  # a palette PNG: class indices as values, colours in a viewer
    values = np.asarray(mask)
    assert set(np.unique(values)) <= {0, 1}
    rgb = np.asarray(mask.convert('RGB'))
    assert (rgb[values == 0] == 0).all() and (rgb[values == 1] == [0xff, 0x7f, 0x0e]).all()
    from mednext_zoo.finetune.segmentation.inference import MASK_PALETTE
    assert MASK_PALETTE[:6] == [0, 0, 0, 0xff, 0x7f, 0x0e]  # background black, class 1 orange (the overlays')
    # a second call is refused; --overwrite replaces, and stale overlays go
    assert main(['predict', '--run', run, images, '--out', out]) == 2
    assert 'already holds predictions of an earlier call' in capsys.readouterr().err
    assert main(['predict', '--run', run, os.path.join(images, 'img1.png'), '--out', out, '--overwrite',
                 '--overlays', '0']) == 0
    assert sorted(os.listdir(out)) == ['img1_pred.png', 'overlays'] and not os.listdir(os.path.join(out, 'overlays'))


def test_png_mask_round_trips_class_indices(tmp_path):
    from PIL import Image

    from mednext_zoo.data.volumes import _read_mask
    from mednext_zoo.finetune.segmentation.inference import save_png_mask
    a = np.zeros((6, 7), np.int16)
    a[1:3, 2:5], a[5, 6] = 1, 8
    save_png_mask(a, str(tmp_path / 'm.png'))
    im = Image.open(tmp_path / 'm.png')
    assert im.mode == 'P' and np.array_equal(np.asarray(im), a) and np.array_equal(_read_mask(str(tmp_path / 'm.png')),
                                                                                    a)
    assert im.convert('RGB').getpixel((2, 1)) == (0xff, 0x7f, 0x0e) and im.convert('RGB').getpixel((0, 0)) == (0, 0, 0)


# ---------------------------------------------------------------- 7. smaller items
def test_segmentation_skip_counts_agree(tmp_path):
    import nibabel as nib

    from mednext_zoo.data.synthetic import write_phantom_dataset
    from mednext_zoo.finetune.segmentation import SegConfig, fit
    data = write_phantom_dataset(str(tmp_path / 'd'), n_cases=3, shape=(16, 16, 2))
    for i in (1, 2):  # two cases without a label file: skipped while the dataset is indexed
        os.remove(os.path.join(data, 'labelsTr', f'phantom_{i:03d}.nii.gz'))
    img = os.path.join(data, 'imagesTr', 'phantom_000_0000.nii.gz')  # one whose voxels are NaN: skipped when loaded
    nii = nib.load(img)
    nib.save(nib.Nifti1Image(np.full(nii.shape, np.nan, np.float32), nii.affine), img)
    with pytest.warns(UserWarning, match=r'Skipped 2 case\(s\) of .* while indexing'), \
            pytest.raises(UserInputError, match=r'no readable training volumes \(3 case\(s\) skipped: 2 when the '
                                                r'dataset was indexed, 1 when loaded\)'):
        fit(SegConfig(data=data, out=str(tmp_path / 'run'), model='medunext_tiny', img_size=32, epochs=1,
                      on_bad_file='skip', progress=False))


def test_gradcam_warns_when_the_map_is_one_pixel():
    import timm

    import mednext_zoo  # noqa: F401
    from mednext_zoo.finetune.classification.cam import GradCAM
    model = timm.create_model('mednext_tiny', img_size=32, num_classes=2).eval()
    gc = GradCAM(model)
    with pytest.warns(UserWarning, match=r'layer stages.3 gives a 1 x 1 map for 32 x 32 inputs, so every heatmap is '
                                         r'one uniform tint.*--cam-layer stages.2'):
        cams, _ = gc(torch.rand(2, 3, 32, 32))
    assert float(cams.std()) == 0.0  # what the warning is about
    gc.close()
    gc = GradCAM(model, 'stages.2')
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        cams, _ = gc(torch.rand(2, 3, 32, 32))
    gc.close()


def test_list_capabilities_prints_no_html_comment(capsys):
    assert main(['list', '--capabilities']) == 0
    out = capsys.readouterr().out
    assert '| model |' in out and '<!--' not in out


def _bench_result(rows):
    from mednext_zoo.benchmark import load_results
    from mednext_zoo.benchmark.runner import BenchResult
    base = load_results(os.path.join(os.path.dirname(__file__), '..', 'benchmarks', 'results',
                                     'cls-cpu-amd-epyc-2core'))
    return BenchResult(meta=base.meta, rows=rows(base.rows))


def test_bench_legend_describes_the_columns_and_rows_shown():
    from mednext_zoo.benchmark import to_markdown
    eager = _bench_result(lambda rows: [dict(r, backend='eager', dtype='fp32') for r in rows[:2]])
    md = to_markdown(eager).split('Conventions:')[1]
    assert '"batch" column' not in md and '(N in the column header, "(bN)")' in md
    for absent in ('onnxruntime', 'OpenVINO', 'int8', 'torch.compile', 'bf16', 'marked "skipped"'):
        assert absent not in md, absent
    assert 'Backends and dtypes: eager PyTorch in fp32.' in md
    mixed = _bench_result(lambda rows: [dict(rows[0], backend='eager', dtype='fp32'),
                                        dict(rows[0], backend='onnxruntime', dtype='int8', peak_mem_mb=None),
                                        dict(rows[1], backend='openvino', dtype='bf16', skipped='no bf16 here')])
    md = to_markdown(mixed).split('Conventions:')[1]
    assert 'eager PyTorch, ONNX Runtime (CPU provider), OpenVINO (CPU) in fp32, int8' in md
    assert 'Not measured for onnxruntime / openvino rows' in md and 'marked "skipped"' in md
    nomem = _bench_result(lambda rows: [dict(r, backend='eager', dtype='fp32', peak_mem_mb=None) for r in rows[:2]])
    assert 'Peak memory: not measured in this run (--no-memory)' in to_markdown(nomem)


def test_training_bench_with_one_seed_shows_no_spread(tmp_path):
    from mednext_zoo.benchmark.training import TrainRow, run_training_suite
    tiny = dict(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), stem_chs=(8, 8))
    run_training_suite(task='cls', rows=[TrainRow('m', 'mednext_tiny', tiny)], out_dir=str(tmp_path), seeds=1,
                       steps=2, eval_every=1, batch_size=4, threads=1, workers=1, progress=False)
    md = (tmp_path / 'train.md').read_text()
    assert ' ± ' not in md.split('Cells:')[0] and 'Cells: the value of the single seed' in md  # no '± 0.000'
    assert '@ step' not in md and 'The metric columns are at the last step.' in md
