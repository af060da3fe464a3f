"""Deployable artefacts and inference backends: ONNX / OpenVINO export with parity, int8 with calibration images,
preprocessing.json, drift figures, skipped backend rows, and the errors bad requests get."""
from __future__ import annotations

import builtins
import json

import numpy as np
import pytest
import timm
import torch

import mednext_zoo  # noqa: F401  (registers the models)
from mednext_zoo.benchmark import run_benchmark
from mednext_zoo.cli import main
from mednext_zoo.deploy import (
    BackendUnavailable,
    Preprocessing,
    classification_spec,
    drift,
    export_model,
    load_artefact,
    prepare_runner,
    preprocess,
    sample_images,
    segmentation_spec,
)
from mednext_zoo.deploy.drift import label_map_dice
from mednext_zoo.errors import UserInputError

ort = pytest.importorskip('onnxruntime')
FAST = dict(progress=False, threads=1, rounds=1, latency_iters=1, warmup=0, batch_size=2, measure_memory=False,
            drift_images=2, calibration_images=4)


@pytest.fixture(scope='module')
def tiny():
    torch.manual_seed(0)
    return timm.create_model('mednext_tiny', img_size=64, num_classes=3).eval()


@pytest.fixture
def calib_dir(tmp_path):
    from PIL import Image
    folder = tmp_path / 'calib'
    folder.mkdir()
    for i, img in enumerate(sample_images(6, 3, (80, 72), seed=5)):
        Image.fromarray((img.permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(folder / f'{i}.png')
    return folder


def test_sample_images_are_fixed_and_real():
    a, b = sample_images(4, 1, (32, 40), seed=0), sample_images(4, 1, (32, 40), seed=0)
    assert a.shape == (4, 1, 32, 40) and torch.equal(a, b)
    assert not torch.equal(a, sample_images(4, 1, (32, 40), seed=1))
    assert 0 <= a.min() and a.max() <= 1 and a.std() > 0.05  # images, not a constant


def test_drift_figures():
    ref = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 3.0]])
    out = ref + torch.tensor([[0.0, 1.5, 0.0], [0.0, 0.0, -0.25]])
    d = drift(ref, out, 'cls')
    assert d['max_abs_dlogit'] == pytest.approx(1.5) and d['top1_agreement'] == 0.5 and d['dice_vs_fp32'] is None
    a = torch.tensor([[0, 0, 1, 1]])
    assert label_map_dice(a, a, 3) == 1.0
    assert label_map_dice(a, torch.tensor([[0, 1, 1, 1]]), 3) == pytest.approx((2 / 3 + 4 / 5) / 2)
    seg = drift(torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4), 'seg')
    assert 0 <= seg['dice_vs_fp32'] <= 1 and seg['top1_agreement'] is None


@pytest.mark.parametrize('fmt', ['onnx', 'openvino'])
def test_export_fp32_loads_back_with_parity(tiny, tmp_path, fmt):
    if fmt == 'openvino':
        pytest.importorskip('openvino')
    report = export_model(tiny, tmp_path / fmt, fmt=fmt, window='abdomen', parity_images=3)
    assert report.parity['max_abs_dlogit'] < 1e-4 and report.parity['top1_agreement'] == 1.0
    assert 'Parity against eager fp32' in report.summary() and 'top-1 agreement 100.0%' in report.summary()
    pre = Preprocessing.from_json((tmp_path / fmt / 'preprocessing.json').read_text())
    assert pre.input_size == (3, 64, 64) and pre.extra['format'] == fmt and pre.task == 'cls'
    assert pre.spec.intensity == {'mode': 'window', 'low': -160.0, 'high': 240.0, 'scale': 'window',
                                  'name': 'abdomen'}
    assert pre.mean == pytest.approx(timm.data.IMAGENET_DEFAULT_MEAN)
    x = pre.normalise(sample_images(2, 3, (64, 64), seed=3))
    with torch.no_grad():
        assert (load_artefact(tmp_path / fmt)(x) - tiny(x)).abs().max() < 1e-4
    assert json.loads((tmp_path / fmt / 'parity.json').read_text())['images'] == 3
    # the parity includes the preprocessing: raw DICOM / NIfTI / PNG files through preprocessing.json
    pp = report.parity['preprocessing_parity']
    assert {'CT_small.dcm', 'anatomical.nii', 'grey.png', 'colour.png'} == {r['file'] for r in pp['files']}
    assert pp['agrees'] and pp['max_abs_dinput'] < 1e-5 and pp['top1_agreement'] == 1.0
    assert 'Preprocessing parity on 4 raw files' in report.summary()
    # a deployment follows preprocessing.json with preprocess(): the training loader's inputs, the model's outputs
    from pydicom.data import get_testdata_file

    from mednext_zoo.data import ImageClassificationDataset, Sample, build_transforms
    ct = get_testdata_file('CT_small.dcm')
    deployed = load_artefact(tmp_path / fmt)(torch.from_numpy(preprocess(ct, tmp_path / fmt)))
    train_x = ImageClassificationDataset([Sample(ct, 'a')], {'a': 0}, build_transforms(64, pre.mean, pre.std, False),
                                         3, 'abdomen')[0][0]
    with torch.no_grad():
        assert (deployed - tiny(train_x[None])).abs().max() < 1e-4


def test_medunext_export_is_scored_as_segmentation(tmp_path):
    # 'medunext' holds no 'unet': task_of once called MedUNeXt a classifier, so the parity printed a 'top-1
    # agreement' taken over the image width instead of the label-map Dice
    torch.manual_seed(0)
    seg = timm.create_model('medunext_tiny', img_size=32, num_classes=3, in_chans=1).eval()
    report = export_model(seg, tmp_path / 'seg', fmt='onnx', parity_images=2,
                          preprocessing=segmentation_spec({'intensity': 'minmax', 'img_size': 32}))
    assert report.parity['top1_agreement'] is None and report.parity['dice_vs_fp32'] > 0.999
    assert 'label-map Dice' in report.summary()
    assert Preprocessing.from_json((tmp_path / 'seg' / 'preprocessing.json').read_text()).task == 'seg'


def test_export_int8_onnx_with_calibration(tiny, tmp_path, calib_dir):
    report = export_model(tiny, tmp_path / 'q', fmt='onnx', int8=True, calibration=calib_dir, parity_images=4,
                          window='minmax')
    assert report.precision == 'int8'
    graph = __import__('onnx').load(str(tmp_path / 'q' / 'model.onnx')).graph
    assert any(n.op_type == 'QuantizeLinear' for n in graph.node)  # really quantised
    assert 0 < report.parity['max_abs_dlogit'] < 1.0  # int8 changes the outputs, but not wildly
    assert json.loads((tmp_path / 'q' / 'preprocessing.json').read_text())['extra']['calibration_images'] == 6


@pytest.mark.slow
def test_export_int8_openvino_with_calibration(tiny, tmp_path, calib_dir):
    pytest.importorskip('nncf')
    report = export_model(tiny, tmp_path / 'q', fmt='openvino', int8=True, calibration=calib_dir, parity_images=4,
                          window='minmax')
    assert report.precision == 'int8' and 0 < report.parity['max_abs_dlogit'] < 1.0
    assert 'FakeQuantize' in (tmp_path / 'q' / 'model.xml').read_text()


def test_export_bad_requests_raise_clear_errors(tiny, tmp_path, calib_dir):
    with pytest.raises(UserInputError, match='--int8 needs --calibration'):
        export_model(tiny, tmp_path / 'a', fmt='onnx', int8=True)
    with pytest.raises(UserInputError, match='no such folder'):
        export_model(tiny, tmp_path / 'a', fmt='onnx', int8=True, calibration=tmp_path / 'missing')
    with pytest.raises(UserInputError, match='holds no file the model\'s reader takes'):
        empty = tmp_path / 'empty'
        empty.mkdir()
        export_model(tiny, tmp_path / 'a', fmt='onnx', int8=True, calibration=empty, window='minmax')
    with pytest.raises(UserInputError, match='--int8 only'):
        export_model(tiny, tmp_path / 'a', fmt='onnx', calibration=calib_dir)
    with pytest.raises(UserInputError, match='unknown --format'):
        export_model(tiny, tmp_path / 'a', fmt='tflite')
    with pytest.raises(UserInputError, match='Unknown window'):
        export_model(tiny, tmp_path / 'a', fmt='onnx', window='kidney')
    # never from defaults: the recipe the model was trained with is required, once
    with pytest.raises(UserInputError, match='needs the preprocessing the model was trained with'):
        export_model(tiny, tmp_path / 'a', fmt='onnx')
    with pytest.raises(UserInputError, match='not both'):
        export_model(tiny, tmp_path / 'a', fmt='onnx', window='lung', preprocessing=spec_of(tiny))
    with pytest.raises(UserInputError, match='describes segmentation but the model is a classification'):
        export_model(tiny, tmp_path / 'a', fmt='onnx', preprocessing=segmentation_spec({'intensity': 'ct',
                                                                                         'img_size': 64}))
    with pytest.raises(UserInputError, match='resizes to 32x32 but the model was built for 64x64'):
        export_model(tiny, tmp_path / 'a', fmt='onnx', preprocessing=classification_spec(32, 3, (0.5,), (0.5,)))
    seg = timm.create_model('medunext_tiny', img_size=32, num_classes=2, in_chans=1)
    with pytest.raises(UserInputError, match='more than a window'):
        export_model(seg, tmp_path / 'a', fmt='onnx', window='abdomen')
    assert not (tmp_path / 'a').exists()


def spec_of(model, window=None):
    from mednext_zoo.deploy.preprocessing import spec_for_model
    return spec_for_model(model, window)


def test_cli_export_onnx_from_checkpoint_and_hub_folder(tiny, tmp_path, capsys, offline_hf):
    import safetensors.torch
    ckpt = tmp_path / 'w.safetensors'
    safetensors.torch.save_file(tiny.state_dict(), str(ckpt))
    args = ['export', 'mednext_tiny', str(tmp_path / 'onnx'), '--checkpoint', str(ckpt), '--num-classes', '3',
            '--img-size', '64', '--format', 'onnx']
    assert main(args) == 2  # a bare checkpoint carries no recipe: refused, never min-max by default
    assert 'needs the preprocessing the model was trained with' in capsys.readouterr().err
    assert not (tmp_path / 'onnx').exists()
    assert main(args + ['--window', 'minmax', '--labels', 'a,b,c']) == 0
    out = capsys.readouterr().out
    assert 'max |Δlogit|' in out and 'top-1 agreement 100.0%' in out and (tmp_path / 'onnx' / 'model.onnx').is_file()
    pre = Preprocessing.from_json((tmp_path / 'onnx' / 'preprocessing.json').read_text())
    assert pre.label_names == ['a', 'b', 'c'] and pre.spec.intensity == {'mode': 'minmax'}
    assert 'Preprocessing (from --window minmax): min-max per image' in out
    hub = ['export', 'mednext_tiny', str(tmp_path / 'hub'), '--checkpoint', str(ckpt), '--num-classes', '3',
           '--img-size', '64', '--no-flops']
    assert main(hub + ['--window', 'file']) == 0  # the Hub folder records the recipe given
    capsys.readouterr()
    assert main(['export', str(tmp_path / 'hub'), str(tmp_path / 'from_hub'), '--format', 'onnx']) == 0
    out = capsys.readouterr().out
    assert 'top-1 agreement 100.0%' in out and f'from {tmp_path / "hub"}/config.json' in out
    assert Preprocessing.from_json((tmp_path / 'from_hub' / 'preprocessing.json').read_text()).spec.intensity == \
        {'mode': 'file_window'}
    assert main(['export', str(tmp_path / 'hub'), str(tmp_path / 'x'), '--format', 'onnx', '--window', 'lung']) == 2
    assert 'records the preprocessing' in capsys.readouterr().err  # a recorded recipe is never overridden
    # a Hub folder written without a recipe: refused, unless it is given explicitly
    assert main(hub[:2] + [str(tmp_path / 'bare')] + hub[3:]) == 0
    capsys.readouterr()
    assert main(['export', str(tmp_path / 'bare'), str(tmp_path / 'y'), '--format', 'onnx']) == 2
    assert 'none is recorded' in capsys.readouterr().err
    assert main(['export', str(tmp_path / 'bare'), str(tmp_path / 'y'), '--format', 'onnx', '--preprocessing',
                 str(tmp_path / 'from_hub' / 'preprocessing.json')]) == 0
    assert 'Preprocessing (from --preprocessing' in capsys.readouterr().out


def test_export_warns_when_the_cpu_is_busy(tiny, tmp_path, monkeypatch):
    import mednext_zoo.deploy.export as ex
    monkeypatch.setattr(ex, 'load_average', lambda: 7.5)
    monkeypatch.setattr(ex, 'usable_cores', lambda: 2)
    report = export_model(tiny, tmp_path / 'busy', fmt='onnx', window='minmax', parity_images=1)
    assert report.parity['cpu_busy'] and report.parity['load_avg_1min'] == [7.5, 7.5]
    assert 'other processes were competing for the CPU (1-min load average 7.5 / 7.5' in report.summary()
    idle = ex.ExportReport(report.out_dir, 'onnx', 'fp32', [], {**report.parity, 'cpu_busy': False})
    assert 'competing for the CPU' not in idle.summary()


@pytest.mark.parametrize('extra, message', [
    (['--format', 'onnx', '--int8'], '--int8 needs --calibration'),
    (['--format', 'onnx', '--int8', '--calibration', 'no/such/dir'], 'no such folder'),
    (['--int8', '--calibration', '.'], 'apply to --format onnx / openvino'),
    (['--format', 'onnx', '--repo-id', 'a/b'], 'describe a Hub folder'),
    (['--format', 'onnx'], 'needs trained weights'),
])
def test_cli_export_bad_inputs(extra, message, tmp_path, capsys):
    assert main(['export', 'mednext_tiny', str(tmp_path / 'o'), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and 'Traceback' not in err


def test_unsupported_combinations_say_why(tiny):
    x = torch.randn(1, 3, 64, 64)
    for backend, dtype, why in (('eager', 'int8', 'onnxruntime or openvino'), ('onnxruntime', 'bf16', 'no bf16'),
                                ('eager', 'fp16', 'GPU precision'), ('onnxruntime', 'int8', 'calibration')):
        with pytest.raises(BackendUnavailable, match=why):
            prepare_runner(tiny, backend, dtype, x)


def test_bench_rows_per_backend_with_drift_and_skipped_reasons(monkeypatch):
    real_import = builtins.__import__

    def no_openvino(name, *args, **kwargs):
        if name == 'openvino' or name.startswith('openvino.'):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, '__import__', no_openvino)
    result = run_benchmark(models=['mednext_tiny@64'], backends=['eager', 'onnxruntime', 'openvino'],
                           dtypes=['fp32', 'bf16', 'int8'], reference='', **FAST)
    rows = {(r['backend'], r['dtype']): r for r in result.rows}
    assert len(rows) == 9  # every combination has a row
    eager, onnx = rows['eager', 'fp32'], rows['onnxruntime', 'fp32']
    assert eager['max_abs_dlogit'] == 0 and eager['top1_agreement'] == 1 and eager['throughput_ips'] > 0
    assert onnx['max_abs_dlogit'] < 1e-4 and onnx['speedup_vs_eager_fp32'] > 0
    assert rows['onnxruntime', 'int8']['max_abs_dlogit'] > 0 and not rows['onnxruntime', 'int8']['skipped']
    assert 'no bf16' in rows['onnxruntime', 'bf16']['skipped']
    assert 'onnxruntime or openvino' in rows['eager', 'int8']['skipped']
    for dtype in ('fp32', 'bf16', 'int8'):
        assert 'openvino not installed' in rows['openvino', dtype]['skipped']
        assert rows['openvino', dtype]['throughput_ips'] is None


def test_bench_cli_backend_flags(tmp_path, capsys):
    assert main(['bench', '--models', 'mednext_tiny@64', '--backend', 'eager', '--dtype', 'fp32,int8',
                 '--batch-size', '2', '--rounds', '1', '--latency-iters', '1', '--warmup', '0', '--threads', '1',
                 '--no-memory', '--no-plot', '--no-progress', '--reference', '', '--out', str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert '| eager | int8 |' in captured.out and 'skipped: eager int8' in captured.out
    assert 'top-1 agree' in captured.out
    rows = json.loads((tmp_path / 'results.json').read_text())['rows']
    assert [(r['backend'], r['dtype']) for r in rows] == [('eager', 'fp32'), ('eager', 'int8')]
    assert main(['bench', '--backend', 'tensorrt', '--no-progress', '--out', str(tmp_path)]) == 2
    assert 'unknown --backend' in capsys.readouterr().err
    assert main(['bench', '--backend', 'eager', '--compile', '--no-progress', '--out', str(tmp_path)]) == 2
    capsys.readouterr()
    assert main(['bench', '--models', 'mednext_tiny@64', '--dtype', 'int8', '--reference', '', '--no-memory',
                 '--no-plot', '--no-progress', '--out', str(tmp_path / 'all_skipped')]) == 2  # nothing measured
    err = capsys.readouterr().err
    assert 'skipped: eager int8' in err and 'no model could be measured' in err


def test_bench_segmentation_drift_is_label_map_dice():
    result = run_benchmark(task='seg', models=['medunext_tiny@64'], backends=['eager', 'onnxruntime'],
                           dtypes=['fp32'], reference='', **FAST)
    onnx = result.row('medunext_tiny@64', backend='onnxruntime', dtype='fp32')
    assert onnx['dice_vs_fp32'] > 0.999 and onnx['top1_agreement'] is None and onnx['max_abs_dlogit'] < 1e-3


def test_preprocessing_parity_sees_a_description_that_disagrees_with_training(tiny, tmp_path):
    """The issue-23 mistake (a run trained with a CT window, exported with min-max) shows up: the reference side
    is the training loader configured from the run's record, not from the written description."""
    record = {'task': 'classification', 'window': 'abdomen', 'img_size': 64, 'in_chans': 3,
              'mean': list(timm.data.IMAGENET_DEFAULT_MEAN), 'std': list(timm.data.IMAGENET_DEFAULT_STD)}
    report = export_model(tiny, tmp_path / 'wrong', fmt='onnx', window='minmax', record=record, parity_images=1)
    pp = report.parity['preprocessing_parity']
    assert not pp['agrees'] and pp['max_abs_dinput'] > 0.1 and pp['reference'] == "the run's records"
    rows = {r['file']: r for r in pp['files']}
    assert rows['CT_small.dcm']['max_abs_dinput'] > 0.1 and rows['grey.png']['max_abs_dinput'] < 1e-5  # PNGs: no window
    assert 'preprocessing.json does NOT reproduce the inputs the model was trained on' in report.summary()


def test_sliding_window_recipe_exports_with_patch_parity(tmp_path):
    """Native-resolution training (patch_size set): the artefact takes patches; the parity runs MONAI's sliding
    window over the whole slice on both sides."""
    pytest.importorskip('monai')
    torch.manual_seed(0)
    seg = timm.create_model('medunext_tiny', img_size=32, num_classes=3, in_chans=1).eval()
    spec = segmentation_spec({'intensity': 'zscore', 'img_size': 32, 'patch_size': 32, 'sw_overlap': 0.5,
                              'sw_mode': 'gaussian'})
    report = export_model(seg, tmp_path / 'sw', fmt='onnx', preprocessing=spec, parity_images=1)
    pre = Preprocessing.from_json((tmp_path / 'sw' / 'preprocessing.json').read_text())
    assert pre.input_size == (1, 32, 32) and pre.spec.spatial['mode'] == 'sliding_window'
    pp = report.parity['preprocessing_parity']
    assert pp['agrees'] and pp['dice_vs_fp32'] > 0.999 and 'anatomical.nii' in [r['file'] for r in pp['files']]
    assert 'sliding window 32x32 (overlap 0.5, gaussian blend)' in report.summary()


def test_bench_runs_the_graph_export_writes(tiny, tmp_path):
    """One code path: the ONNX file `bench --backend onnxruntime` times is the one `export --format onnx` writes."""
    onnx = pytest.importorskip('onnx')
    export_model(tiny, tmp_path / 'exported', fmt='onnx', window='minmax', parity_images=1)
    (tmp_path / 'bench').mkdir()
    prepare_runner(tiny, 'onnxruntime', 'fp32', torch.randn(1, 3, 64, 64), workdir=str(tmp_path / 'bench'))
    a, b = (onnx.load(str(tmp_path / d / 'model.onnx')).graph for d in ('exported', 'bench'))
    assert [(n.op_type, list(n.input)) for n in a.node] == [(n.op_type, list(n.input)) for n in b.node]
    assert 'Transpose' not in [n.op_type for n in a.node][:-8]  # the export form: no transposes in the stages
    pre = json.loads((tmp_path / 'exported' / 'preprocessing.json').read_text())
    assert pre['extra']['graph'] == 'export-form-1'


def test_openvino_static_batch_compiles_per_shape(tiny, tmp_path):
    pytest.importorskip('openvino')
    from mednext_zoo.deploy.artefact import open_artefact, write_artefact
    x = torch.randn(3, 3, 64, 64)
    assert write_artefact(tiny, tmp_path, 'openvino', False, x[:1]) == ['model.xml', 'model.bin']
    with torch.no_grad():
        ref = tiny(x)
    for static in (True, False):
        run = open_artefact(tmp_path, 'openvino', threads=1, static_batch=static)
        for n in (1, 3, 2, 1):  # each new batch size compiles its own static model; earlier ones are reused
            assert (run(x[:n]) - ref[:n]).abs().max() < 1e-4
