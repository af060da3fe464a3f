"""benchmarks/gpu.sh: the plan it prints (--dry-run), its refusal without CUDA, and its training-step part on the
CPU (a smoke test: the GPU run itself cannot happen here)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / 'benchmarks' / 'gpu.sh'
pytestmark = pytest.mark.skipif(shutil.which('bash') is None, reason='needs bash')


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, 'PYTHON': sys.executable, 'PYTHONPATH': str(ROOT)}
    return subprocess.run(['bash', str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=120)


def test_dry_run_prints_the_plan(tmp_path):
    res = _run('--dry-run', '--out', str(tmp_path / 'gpu'))
    assert res.returncode == 0, res.stderr
    out = res.stdout
    for name in ('mednext_base', 'medunext_base', 'convnext_tiny', 'resnet50', 'resnet18', 'swinv2_cr_tiny_224',
                 'unet_resnet34'):
        assert name in out
    for part in ('--dtype fp32,bf16,fp16', '--channels-last', '--backend eager,compile', '--compile both',
                 'gpu_train_step.py', 'infer-seg-channels-last'):
        assert part in out
    assert '6 steps' in out and not (tmp_path / 'gpu').exists()  # nothing run, nothing written


def test_bad_argument_exits_2():
    res = _run('--bogus')
    assert res.returncode == 2 and "unknown argument '--bogus'" in res.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason='this machine has a GPU: the script would run')
def test_refuses_without_cuda(tmp_path):
    res = _run('--out', str(tmp_path / 'gpu'))
    assert res.returncode == 3
    assert 'no CUDA GPU is visible to PyTorch' in res.stderr and 'nothing was run' in res.stderr
    assert f'torch {torch.__version__}' in res.stderr
    assert not (tmp_path / 'gpu').exists()


def test_train_step_part_runs_on_cpu(tmp_path):
    cmd = [sys.executable, str(ROOT / 'benchmarks' / 'gpu_train_step.py'), '--device', 'cpu', '--models',
           'resnet18@32', '--dtype', 'fp32,bf16', '--channels-last', 'both', '--compile', 'off', '--batch-size', '2',
           '--warmup', '1', '--steps', '1', '--rounds', '1', '--out', str(tmp_path)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, 'PYTHONPATH': str(ROOT)})
    assert res.returncode == 0, res.stderr
    rows = json.loads((tmp_path / 'train_step.json').read_text())['rows']
    assert len(rows) == 4 and all(not r.get('error') and r['img_per_s_best'] > 0 for r in rows)
    assert {p.name for p in tmp_path.iterdir()} >= {'train_step.json', 'train_step.csv', 'train_step.md'}
    cuda = subprocess.run([*cmd[:2], '--device', 'cuda', '--models', 'resnet18', '--out', str(tmp_path / 'c')],
                          capture_output=True, text=True, timeout=120, env={**os.environ, 'PYTHONPATH': str(ROOT)})
    if not torch.cuda.is_available():
        assert cuda.returncode == 3 and 'no CUDA GPU' in cuda.stderr
