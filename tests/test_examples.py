"""Every script in docs/examples/ runs, on tiny inputs, as the docs show it (the docs include these files)."""
from __future__ import annotations

import contextlib
import copy
import io
import math
import runpy
from pathlib import Path

import numpy as np
import pytest

from tests._model_index import check_model_index, metric_values

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / 'docs' / 'examples'
SIZE = 64


def run_example(name: str, argv):
    """Load ``docs/examples/<name>`` (not as __main__) and call its ``main(argv)``: (return value, stdout)."""
    scope = runpy.run_path(str(EXAMPLES / name), run_name=f'example_{Path(name).stem}')
    with contextlib.redirect_stdout(io.StringIO()) as out:
        result = scope['main']([str(a) for a in argv])
    return result, out.getvalue()


def write_dicom_folder(root: Path, per_class: int = 6) -> Path:
    """``root/ct`` and ``root/mr``: copies of pydicom's CT_small.dcm / MR_small.dcm with noise, flips and shifts."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    for cls, fname in (('ct', 'CT_small.dcm'), ('mr', 'MR_small.dcm')):
        src = pydicom.dcmread(get_testdata_file(fname))
        pixels = src.pixel_array
        info = np.iinfo(pixels.dtype)
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            rng = np.random.default_rng(i)
            a = pixels.astype(np.int64) + rng.integers(-20, 21, pixels.shape)
            a = np.roll(a[:, ::-1] if i % 2 else a, int(rng.integers(-4, 5)), axis=0)
            ds = copy.deepcopy(src)
            ds.PixelData = np.clip(a, info.min, info.max).astype(pixels.dtype).tobytes()
            ds.SOPInstanceUID = generate_uid()
            ds.save_as(root / cls / f'{cls}_{i:02d}.dcm')
    return root


@pytest.fixture(scope='module')
def dicom_run(tmp_path_factory):
    """(data folder, run folder, metrics) of finetune_dicom.py on 12 perturbed DICOM slices, 1 epoch at 32 x 32."""
    root = tmp_path_factory.mktemp('dicom_example')
    data = write_dicom_folder(root / 'data')
    metrics, out = run_example('finetune_dicom.py', [data, root / 'run', '--epochs', 1, '--img-size', 32,
                                                     '--batch-size', 4, '--bootstrap', 20])
    return data, root / 'run', metrics, out


def test_finetune_dicom(dicom_run):
    _, run, result, out = dicom_run
    assert result['headline_split'] == 'test' and 0.0 <= result['test']['accuracy'] <= 1.0
    assert 'test accuracy' in out
    assert (run / 'export' / 'model.safetensors').is_file() and (run / 'export' / 'config.json').is_file()
    # the export's model card carries the test metrics in the Hub's model-index
    card = metric_values(check_model_index(run / 'export' / 'README.md'))
    assert card['accuracy'] == pytest.approx(result['test']['accuracy'], abs=1e-6)


def test_finetune_dicom_offers_only_windows_that_exist(tmp_path, capsys):
    """The help lists the real CT presets; an unknown one is a usage message, not a traceback from the run."""
    from mednext_zoo.data.io import CT_WINDOWS
    example = runpy.run_path(str(EXAMPLES / 'finetune_dicom.py'), run_name='example_finetune_dicom')['main']
    with pytest.raises(SystemExit) as e:
        example(['--help'])
    assert e.value.code == 0
    text = ' '.join(capsys.readouterr().out.split())
    assert 'soft_tissue' not in text and f"a preset ({', '.join(CT_WINDOWS)})" in text
    with pytest.raises(SystemExit) as e:
        example([str(tmp_path), str(tmp_path / 'run'), '--window', 'soft_tissue'])
    assert e.value.code == 2
    assert "argument --window: Unknown window 'soft_tissue': use a preset (lung, " in capsys.readouterr().err
    assert not (tmp_path / 'run').exists()


def test_load_export(dicom_run, tmp_path):
    data, run, _, _ = dicom_run
    files = [data / 'ct' / 'ct_00.dcm', data / 'mr' / 'mr_01.dcm']
    results, out = run_example('load_export.py', [run / 'export', *files])
    assert [r[0] for r in results] == [str(f) for f in files]
    assert all(label in ('ct', 'mr') and 0.5 <= p <= 1.0 for _, label, p in results)  # argmax of 2 classes
    assert 'ct_00.dcm: ' in out
    # the recorded recipe gives the run's own predictions (nothing passed by hand)
    from mednext_zoo.finetune import predict
    rows = predict(str(run), [str(f) for f in files], out=str(tmp_path / 'pred'))
    assert [r[1] for r in results] == [row['prediction'] for row in rows]
    assert [r[2] for r in results] == pytest.approx([row['confidence'] for row in rows], abs=1e-5)


def test_export_onnx_of_a_run(dicom_run, tmp_path):
    pytest.importorskip('onnxruntime')
    _, run, _, _ = dicom_run
    diff, out = run_example('export_onnx.py', [f'local-dir:{run / "export"}', tmp_path / 'run.onnx'])
    assert diff < 1e-4 and (tmp_path / 'run.onnx').is_file()


def test_export_onnx(tmp_path):
    pytest.importorskip('onnxruntime')
    diff, out = run_example('export_onnx.py', ['medunext_tiny', tmp_path / 'seg.onnx', '--img-size', SIZE])
    assert diff < 1e-4 and 'max |onnxruntime - PyTorch|' in out


def test_smp_encoder():
    pytest.importorskip('segmentation_models_pytorch')
    logits, out = run_example('smp_encoder.py', [SIZE])
    assert tuple(logits.shape) == (2, 4, SIZE, SIZE)


def test_compare_flops():
    result, out = run_example('compare_flops.py', [SIZE, 'mednext_tiny'])
    rows = {r['name']: r for r in result.rows}
    assert set(rows) == {'my_cnn', 'mednext_tiny'}
    assert rows['mednext_tiny']['params_ratio'] == pytest.approx(1.0)
    mine, ref = rows['my_cnn'], rows['mednext_tiny']
    assert mine['params_ratio'] == pytest.approx(mine['params_m'] / ref['params_m'], rel=0.01)
    assert all(r['gflops'] > 0 for r in rows.values()) and 'my_cnn' in out


def test_monai_sliding_window():
    pytest.importorskip('monai')
    (logits, same, labels), out = run_example('monai_sliding_window.py', [SIZE])
    assert tuple(logits.shape) == (1, 4, SIZE, SIZE, 6) and labels.shape == (SIZE, SIZE, 6)
    assert float((logits - same).abs().max()) == 0.0  # SliceInferer == the ROI (H, W, 1) wrapper
    assert f'roi {SIZE - 8}: UserInputError' in out and 'multiple of' in out


def test_monai_train():
    pytest.importorskip('monai')
    _, losses = run_example('monai_train.py', [SIZE, 6])[0]
    assert len(losses) == 6 and all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]  # DiceCE falls within a few Adam steps on the phantoms


def test_monai_metrics_output_is_committed():
    pytest.importorskip('monai')
    figures, out = run_example('monai_metrics.py', [])
    committed = (EXAMPLES / 'monai_metrics.out.md').read_text()
    assert out == committed, ('docs/examples/monai_metrics.out.md differs from what the script prints now: '
                              'run `python docs/examples/monai_metrics.py > docs/examples/monai_metrics.out.md`')
    assert figures['exact + a far island']['monai'][1] > 50 > figures['exact + a far island']['strict'][1]
    assert math.isnan(figures['missed (empty prediction)']['monai'][1])
    assert figures['missed (empty prediction)']['strict'][1] == pytest.approx(150.093, abs=1e-3)


TESTED = {'finetune_dicom.py', 'load_export.py', 'export_onnx.py', 'smp_encoder.py', 'compare_flops.py',
          'monai_sliding_window.py', 'monai_train.py', 'monai_metrics.py',
          'medmnist_finetune.py', 'native_resolution_seg.py'}  # these two: tests/test_examples_real_data.py


def test_every_example_is_tested_and_in_the_docs():
    scripts = {p.name for p in EXAMPLES.glob('*.py')}
    assert scripts == TESTED
    pages = (REPO / 'docs' / 'examples.md').read_text() + (REPO / 'docs' / 'monai.md').read_text()
    for name in scripts:
        assert f'--8<-- "docs/examples/{name}"' in pages, name
