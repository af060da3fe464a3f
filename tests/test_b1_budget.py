"""benchmarks/speed/b1_budget.py: oneDNN verbose records sorted into budget lines, and one small end-to-end run."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def b1():
    spec = importlib.util.spec_from_file_location('b1_budget', ROOT / 'benchmarks' / 'speed' / 'b1_budget.py')
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_GEMM = ('onednn_verbose,v1,primitive,exec,cpu,inner_product,brg_matmul:avx512_core,forward_inference,src:f32::blocked:'
         'ab::f0 wei:f32::blocked:AB16b64a::f0 bia:undef::undef::: dst:f32::blocked:ab::f0,attr-scratchpad:user,,'
         'mb16ic128oc128,0.00708008')
_DW = ('onednn_verbose,v1,primitive,exec,cpu,convolution,brdgmm_dw:avx512_core,forward_inference,src:f32::blocked:acdb'
       '::f0 wei:f32:a:blocked:debcA16a::f0 bia:f32:a:blocked:a::f0 dst:f32::blocked:acdb::f0,attr-scratchpad:user,'
       'alg:convolution_direct,g128mb1_ic128oc128_ih1oh1kh1sh1dh0ph0_iw16ow16kw7sw1dw0pw3,0.00195312')
_MULTIPLIER = _DW.replace('g128mb1_ic128oc128', 'g64mb1_ic64oc128')  # channel multiplier 2: not depth-wise
_DENSE = _DW.replace('g128mb1_ic128oc128', 'mb1_ic64oc128')
_REORDER = 'onednn_verbose,v1,primitive,exec,cpu,reorder,jit:uni,undef,src:f32::blocked:abcd::f0,,,1x3x224x224,0.0139'


def test_verbose_records_sorted_into_budget_lines(b1):
    assert b1.onednn_kind(_GEMM) == 'GEMMs'
    assert b1.onednn_kind(_DW) == 'depth-wise convs'
    assert b1.onednn_kind(_MULTIPLIER) == 'dense convs'
    assert b1.onednn_kind(_DENSE) == 'dense convs'
    assert b1.onednn_kind(_REORDER) == 'reorders'
    assert b1.onednn_kind('onednn_verbose,v1,info,oneDNN v3.7') is None
    assert b1.onednn_kind('@@budget-start@@') is None


def test_small_run_writes_a_budget_that_adds_up(b1, tmp_path):
    out = tmp_path / 'budget.md'
    assert b1.main(['--models', 'resnet18', '--threads', '1', '--rounds', '1', '--reps', '1', '--forwards', '1',
                    '--out', str(out)]) == 0
    text = out.read_text()
    assert '| **wall time** (best round, no profiler) |' in text and 'oneDNN kernels: dense convs' in text
    (row,) = json.loads(out.with_suffix('.json').read_text())
    assert row['model'] == 'resnet18' and row['wall_ms'] > 0
    assert row['kernels']['dense convs']['calls'] == 20  # resnet18: 20 convs per forward
    accounted = row['kernel_ms'] + row['onednn_setup_ms'] + row['other_ops_ms'] + row['python_dispatch_ms']
    assert accounted == pytest.approx(row['wall_ms'], rel=1e-6)
