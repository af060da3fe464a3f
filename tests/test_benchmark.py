"""Benchmark harness: counts against timm's published figures, outputs, bad input, suites."""
from __future__ import annotations

import csv
import json

import pytest
import timm
import torch

import mednext_zoo  # noqa: F401  (registers the models)
from mednext_zoo.benchmark import count_model, load_results, resolve_models, run_benchmark, to_markdown, write_results
from mednext_zoo.benchmark import specs as specs_mod
from mednext_zoo.benchmark.suites import ablation, sdffn_claim
from mednext_zoo.cli import main
from mednext_zoo.errors import UserInputError

TINY = 'mednext_tiny@64'
FAST = dict(quick=True, progress=False, threads=1, rounds=1, latency_iters=1, warmup=0, batch_size=2)


@pytest.mark.parametrize('name, params_m, gflops', [
    ('resnet50', 25.56, 4.11),  # timm's published figures, 1000-class head, 224x224
    ('convnext_tiny', 28.59, 4.47),
])
def test_counts_match_timm_published(name, params_m, gflops):
    c = count_model(timm.create_model(name), (3, 224, 224))
    assert round(c.params / 1e6, 2) == params_m
    assert round(c.flops / 1e9, 2) == gflops
    assert c.activations > 0
    assert c.skipped_ops  # elementwise ops fvcore does not count are named


def test_mednext_base_counts_2_classes():
    c = count_model(timm.create_model('mednext_base', num_classes=2), (3, 224, 224))
    assert c.params == 10_771_786
    assert abs(c.flops / 1e9 - 1.912) < 0.001
    assert {'aten::softmax', 'aten::gelu'} <= set(c.skipped_ops)


def test_swin_192_window6_matches_paper_figure():
    spec = resolve_models(['swinv2_tiny_w6_192'], reference='')[0]
    assert spec.img_size == 192 and spec.kwargs == {'window_size': 6}
    c = count_model(specs_mod.build_model(spec), spec.input_size)
    assert abs(c.flops / 1e9 - 3.24) / 3.24 < 0.02  # the paper's "3.24 G"


def test_unknown_model_lists_close_matches():
    with pytest.raises(UserInputError, match='mednext_base'):
        resolve_models(['mednext_bse'])
    with pytest.raises(UserInputError, match='size after @'):
        resolve_models(['resnet18@big'])


def test_cli_unknown_model_message(capsys):
    assert main(['bench', '--models', 'resnet5O', '--no-progress']) == 2
    err = capsys.readouterr().err
    assert 'resnet50' in err and 'Traceback' not in err


def test_default_models_are_family_and_baselines():
    names = [s.name for s in resolve_models()]
    assert names[:4] == ['mednext_tiny', 'mednext_small', 'mednext_base', 'mednext_large']
    assert {'resnet18', 'resnet50', 'convnext_tiny', 'swinv2_cr_tiny_224', 'swinv2_tiny_window8_256',
            'swinv2_tiny_w6_192'} <= set(names)
    sizes = {s.name: s.img_size for s in resolve_models()}
    assert sizes['swinv2_tiny_window8_256'] == 256 and sizes['swinv2_tiny_w6_192'] == 192


@pytest.mark.skipif(torch.cuda.is_available(), reason='needs a machine without a CUDA GPU')
def test_cuda_without_gpu_is_a_clear_error(capsys):
    with pytest.raises(UserInputError, match='no CUDA GPU'):
        run_benchmark(models=[TINY], device='cuda', **FAST)
    assert main(['bench', '--device', 'cuda', '--no-progress']) == 2
    assert 'no CUDA GPU' in capsys.readouterr().err


def test_bad_size_row_has_error_and_others_still_measured():
    result = run_benchmark(models=[TINY, 'convnext_tiny@2'], reference=TINY, **FAST)
    ok, bad = result.row(TINY), result.row('convnext_tiny@2')
    assert ok['error'] is None and ok['latency_ms_median'] > 0 and ok['throughput_ips'] > 0
    assert ok['latency_ratio'] == 1.0 and ok['params_ratio'] == 1.0
    assert 'convnext_tiny' in bad['error'] and '2x2' in bad['error'] and '--img-size' in bad['error']
    assert bad['latency_ms_median'] is None


def test_batch_that_does_not_fit_is_reported_per_row():
    result = run_benchmark(models=[TINY], reference='', **{**FAST, 'batch_size': 10 ** 7})
    err = result.row(TINY)['error']
    assert 'does not fit' in err and '--batch-size' in err


def test_cli_writes_four_outputs(tmp_path, capsys):
    out = tmp_path / 'bench'
    rc = main(['bench', '--models', f'{TINY},resnet18@64', '--reference', TINY, '--quick', '--rounds', '2',
               '--latency-iters', '1', '--batch-size', '2', '--threads', '1', '--out', str(out), '--no-progress',
               '--note', 'unit test run'])
    assert rc == 0
    printed = capsys.readouterr().out
    assert '| `resnet18@64`' in printed and 'Machine:' in printed
    data = json.loads((out / 'results.json').read_text())
    m = data['meta']['machine']
    assert m['torch'] == torch.__version__ and m['timm'] == timm.__version__ and m['torch_num_threads'] == 1
    assert data['meta']['reference'] == TINY
    rows = {r['name']: r for r in data['rows']}
    assert rows[TINY]['latency_ratio'] == 1.0
    r18 = rows['resnet18@64']
    assert r18['params_ratio'] == pytest.approx(r18['params_m'] / rows[TINY]['params_m'])
    assert r18['latency_ms_p90'] >= r18['latency_ms_median'] > 0 and r18['peak_mem_mb'] is not None
    with open(out / 'results.csv', newline='') as f:
        csv_rows = list(csv.DictReader(f))
    assert [r['name'] for r in csv_rows] == [TINY, 'resnet18@64'] and csv_rows[0]['machine']
    assert data['meta']['note'] == 'unit test run' and len(data['meta']['load_avg_1min']) == 2
    md = (out / 'results.md').read_text()
    assert md.startswith('# mednext-zoo benchmark') and 'Note: unit test run' in md
    assert to_markdown(load_results(out)) == md  # results.json holds everything the table shows
    assert (out / 'results.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_write_results_refuses_a_file_as_folder(tmp_path):
    result = run_benchmark(models=[TINY], reference='', measure_memory=False, **FAST)
    target = tmp_path / 'file'
    target.write_text('x')
    with pytest.raises(UserInputError, match='not a folder'):
        write_results(result, target)


def test_seg_baseline_missing_smp_is_skipped_with_message(monkeypatch):
    monkeypatch.setattr(specs_mod, 'smp_available', lambda: False)
    result = run_benchmark(task='seg', models=['unet_resnet34@64'], reference='', **FAST)
    assert 'seg-baselines' in result.row('unet_resnet34@64')['error']


def test_seg_task_runs_unet_baseline():
    pytest.importorskip('segmentation_models_pytorch')
    result = run_benchmark(task='seg', models=['unet_resnet34@64'], reference='', **FAST)
    row = result.row('unet_resnet34@64')
    assert row['error'] is None and row['in_chans'] == 1 and row['num_classes'] == 9
    assert 24.4 < row['params_m'] < 24.5  # smp U-Net / ResNet-34, 1 channel, 9 classes
    defaults = specs_mod.default_model_names('seg')
    assert 'unet_resnet50' in defaults and all(n.startswith(('medunext', 'unet_')) for n in defaults)


def test_sdffn_claim():
    ffn4, sdffn = sdffn_claim(512)
    assert ffn4['ours_weights'] == ffn4['paper'] == 2_097_152
    assert sdffn['ours_weights'] == 528_896 and sdffn['paper'] == 528_036


@pytest.mark.slow
def test_ablation_variants_and_checks():
    data = ablation()
    rows = {r['#']: r for r in data['variants']}
    assert len(rows) == 8 and rows[1]['params_delta_pct'] == 0
    assert rows[8]['params_m'] == pytest.approx(10.771786)  # the full variant is mednext_base
    assert rows[4]['params_m'] < rows[1]['params_m'] and rows[2]['params_m'] > rows[1]['params_m']
    c = data['checks']
    # mixer-independent arithmetic of the paper: -29.1% (SDFFN) and -25% (full) give our full model's size
    assert abs(c['implied_full_params_m'] / c['our_full_params_m'] - 1) < 0.01
    assert abs(c['our_full_over_sem_only_gflops'] / c['paper_full_over_sem_only_gflops'] - 1) < 0.01


def test_fresh_install_fallbacks(tmp_path, monkeypatch):
    """Without matplotlib the chart is skipped (others written); without psutil RSS comes from /proc."""
    import sys

    from mednext_zoo.benchmark import runner
    monkeypatch.setitem(sys.modules, 'psutil', None)
    reader = runner._rss_reader()
    if reader is not None:  # Linux: /proc/self/statm
        assert reader() > 10 * 2 ** 20
    result = run_benchmark(models=[TINY], reference='', **FAST)
    monkeypatch.setitem(sys.modules, 'matplotlib', None)
    written = write_results(result, tmp_path)
    assert set(written) == {'json', 'csv', 'md'} and not (tmp_path / 'results.png').exists()
