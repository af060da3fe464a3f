"""Safe checkpoint reading."""
from __future__ import annotations

import argparse
import hashlib
import os
import pickle
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Dict, Union

import safetensors.torch
import torch

from ..errors import PickleCheckpointError, UserInputError

PathLike = Union[str, os.PathLike]


def sha256_file(path: PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(chunk), b''):
            h.update(block)
    return h.hexdigest()


def _unwrap(checkpoint: Any) -> Dict[str, torch.Tensor]:
    if isinstance(checkpoint, torch.nn.Module):  # a whole pickled model (allow_pickle=True only)
        checkpoint = checkpoint.state_dict()
    if isinstance(checkpoint, dict):
        for key in ('state_dict_ema', 'model_ema', 'state_dict', 'model'):
            if isinstance(checkpoint.get(key), dict):
                checkpoint = checkpoint[key]
                break
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise UserInputError(
            'The checkpoint does not hold a state dict (a mapping of names to tensors). Save weights with '
            'torch.save(model.state_dict(), path) or mednext_zoo.hub.save_pretrained(model, folder).'
        )
    return {k[7:] if k.startswith('module.') else k: v for k, v in checkpoint.items()}


def load_state_dict(path: PathLike, *, allow_pickle: bool = False) -> Dict[str, torch.Tensor]:
    """Read the tensors of a checkpoint file without running untrusted code.

    ``.safetensors`` files are read with safetensors. Anything else (``.pth``, ``.pt``, ``.bin``,
    ``.pth.tar``) goes through ``torch.load(weights_only=True)``, which only rebuilds tensors and
    plain containers. A checkpoint that needs full unpickling (it stores a whole pickled model,
    custom Python objects, ...) is refused with :class:`PickleCheckpointError`
    unless ``allow_pickle=True``: only pass that for files whose origin you trust, since
    unpickling can execute arbitrary code. Training wrappers (``state_dict``, ``model``,
    ``state_dict_ema``) and a DataParallel ``module.`` prefix are unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f'Checkpoint file not found: {path}')
    if path.suffix == '.safetensors':
        try:
            return safetensors.torch.load_file(os.fspath(path), device='cpu')
        except Exception as e:  # SafetensorError is not exported under a stable name
            raise UserInputError(f'{path} is not a readable safetensors file ({e}).') from e
    try:
        # argparse.Namespace (the `args` of timm training checkpoints) is allowed, as timm does
        allow = getattr(torch.serialization, 'safe_globals', None)  # torch >= 2.5
        with allow([argparse.Namespace]) if allow else nullcontext():
            checkpoint = torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        if not allow_pickle:
            raise PickleCheckpointError(
                f'Refused to load {path}: it is a pickle checkpoint that stores Python objects besides tensors, '
                f'and unpickling can run arbitrary code. If you trust its origin, pass allow_pickle=True '
                f'(CLI: --allow-pickle) once and re-save it as safetensors (mednext-zoo export).'
            ) from e
        checkpoint = torch.load(path, map_location='cpu', weights_only=False)
    except (RuntimeError, EOFError) as e:
        raise UserInputError(f'{path} is not a readable PyTorch checkpoint ({e}).') from e
    return _unwrap(checkpoint)
