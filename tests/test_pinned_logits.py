"""Pinned logits: what every registered model computes on fixed inputs, on each of its forward paths.

``python -m tests.test_pinned_logits --write`` (from the repository root) records, for each of the 12 models
(``mednext_*``, ``medunext_*``; 64 x 64, batch 2, eval, seeded weights with non-zero biases and BatchNorm
statistics) and each path -- ``fused`` (fp32 inference under ``no_grad``: the oneDNN kernels of
``models/_fused.py``), ``autograd`` (eval with autograd on: the plain optimised forwards) and ``reference``
(``set_reference_paths``) -- the SHA-256 of the logits' bytes, their shape and 32 values spread over them, with the
machine that wrote them (``tests/data/pinned_logits.json``).

On any machine the values must agree to 1e-4: moving code around (issue 22 moved the fused kernels out of
``mednext.py``) must not change what a model computes. On the machine that wrote the file (same CPU, torch version;
one thread) the hash must match too: bit for bit.
"""
import hashlib
import json
import platform
import sys
from pathlib import Path

import pytest
import torch

from tests._perturb import perturb

PINNED = Path(__file__).parent / 'data' / 'pinned_logits.json'
PATHS = ('fused', 'autograd', 'reference')
SIZE, BATCH, CLASSES = 64, 2, 3


def _machine() -> dict:
    from mednext_zoo.machine import machine_info
    return {'torch': torch.__version__, 'cpu_capability': torch.backends.cpu.get_cpu_capability(),
            'machine': platform.machine(), 'cpu': machine_info()['cpu'], 'threads': 1}


def logits(name: str) -> dict:
    """``{path: logits}`` of ``name`` on its fixed input, one thread."""
    import timm

    import mednext_zoo.models  # noqa: F401  (registers the models)
    from mednext_zoo.models.mednext import set_reference_paths
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = perturb(timm.create_model(name, img_size=SIZE, num_classes=CLASSES)).eval()
        x = torch.randn(BATCH, model.in_chans, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
        out = {}
        with torch.no_grad():
            out['fused'] = model(x)
        out['autograd'] = model(x).detach()
        with torch.no_grad():
            out['reference'] = set_reference_paths(model)(x)
        return out
    finally:
        torch.set_num_threads(threads)


def _record(t: torch.Tensor) -> dict:
    flat = t.contiguous().reshape(-1)
    idx = torch.linspace(0, flat.numel() - 1, 32).long()
    return {'sha256': hashlib.sha256(flat.numpy().tobytes()).hexdigest(), 'shape': list(t.shape),
            'values': [float(v) for v in flat[idx]]}


def _models() -> list:
    import timm

    import mednext_zoo.models  # noqa: F401
    return timm.list_models(['mednext*', 'medunext*'])


def test_pinned_file_covers_every_registered_model():
    doc = json.loads(PINNED.read_text())
    assert sorted(doc['models']) == sorted(_models()) and len(doc['models']) == 12
    assert all(list(paths) == list(PATHS) for paths in doc['models'].values())


@pytest.mark.parametrize('name', _models())
def test_logits_match_the_pinned_ones(name):
    doc = json.loads(PINNED.read_text())
    same_machine = doc['machine'] == _machine()
    for path, t in logits(name).items():
        pinned, now = doc['models'][name][path], _record(t)
        assert now['shape'] == pinned['shape'], (name, path)
        diff = max(abs(a - b) for a, b in zip(now['values'], pinned['values'], strict=True))
        assert diff <= 1e-4, f'{name} {path}: logits moved by {diff:.3g} from the pinned ones'
        if same_machine:
            assert now['sha256'] == pinned['sha256'], f'{name} {path}: not bit for bit the pinned logits'


if __name__ == '__main__':
    if sys.argv[1:] != ['--write']:
        sys.exit('usage: python -m tests.test_pinned_logits --write')
    doc = {'machine': _machine(), 'input': f'randn({BATCH}, in_chans, {SIZE}, {SIZE}), seed 1; weights seed 0',
           'models': {n: {p: _record(t) for p, t in logits(n).items()} for n in _models()}}
    PINNED.write_text(json.dumps(doc, indent=1) + '\n')
    print(f'wrote {PINNED}')
