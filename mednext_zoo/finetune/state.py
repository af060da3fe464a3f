"""Training state without pickle: every tensor in one safetensors file, everything else in JSON.

``torch.save`` / ``torch.load(weights_only=False)`` would let a run folder copied from someone else run code on
``--resume``. The state a resume needs (optimiser, scheduler, grad scaler, EMA weights, the python / numpy /
torch RNG states, loop progress) is a tree of dicts, lists, tuples, numbers, strings, numpy arrays and tensors;
:func:`encode` splits it into a JSON-safe tree (tensors replaced by ``{"__tensor__": KEY}``) and a flat
``{KEY: tensor}`` dict for safetensors, and :func:`decode` puts it back together exactly (tuples stay tuples,
integer dict keys stay integers, NaN / inf survive). Anything else is refused when saving, never guessed.

safetensors has no notion of this nesting and json has no tensors, hence this small codec.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch

from .._atomic import atomic_path, atomic_write_bytes

__all__ = ['encode', 'decode', 'save_state', 'load_state']

_TENSOR, _TUPLE, _DICT, _ARRAY, _FLOAT = '__tensor__', '__tuple__', '__dict__', '__ndarray__', '__float__'


def encode(obj: Any) -> Tuple[Any, Dict[str, torch.Tensor]]:
    """``(json_tree, tensors)`` for ``obj``; raises TypeError naming the path of anything unsupported."""
    tensors: Dict[str, torch.Tensor] = {}
    storages: Dict[Tuple[int, int], str] = {}

    def enc(o: Any, path: str) -> Any:
        if isinstance(o, torch.Tensor):
            key = f't{len(tensors)}'
            t = o.detach().cpu().contiguous()
            ident = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
            if ident in storages or t.untyped_storage().nbytes() != t.numel() * t.element_size():
                t = t.clone()  # safetensors refuses tensors that share memory
            storages[ident] = key
            tensors[key] = t
            return {_TENSOR: key}
        if isinstance(o, np.ndarray):
            return {_ARRAY: o.tolist(), 'dtype': str(o.dtype), 'shape': list(o.shape)}
        if isinstance(o, (bool, np.bool_)):
            return bool(o)
        if isinstance(o, (int, np.integer)):
            return int(o)
        if isinstance(o, (float, np.floating)):
            f = float(o)
            return f if math.isfinite(f) else {_FLOAT: repr(f)}
        if o is None or isinstance(o, str):
            return o
        if isinstance(o, tuple):
            return {_TUPLE: [enc(v, f'{path}[{i}]') for i, v in enumerate(o)]}
        if isinstance(o, list):
            return [enc(v, f'{path}[{i}]') for i, v in enumerate(o)]
        if isinstance(o, dict):
            if all(isinstance(k, str) and not k.startswith('__') for k in o):
                return {k: enc(v, f'{path}.{k}') for k, v in o.items()}
            return {_DICT: [[enc(k, f'{path}<key>'), enc(v, f'{path}[{k!r}]')] for k, v in o.items()]}
        raise TypeError(f'Cannot store {type(o).__name__} at {path or "the top"} of the training state without '
                        f'pickle (supported: tensors, numpy arrays, numbers, strings, lists, tuples, dicts).')

    return enc(obj, ''), tensors


def decode(tree: Any, tensors: Dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`encode`."""
    if isinstance(tree, list):
        return [decode(v, tensors) for v in tree]
    if not isinstance(tree, dict):
        return tree
    if _TENSOR in tree:
        return tensors[tree[_TENSOR]]
    if _TUPLE in tree:
        return tuple(decode(v, tensors) for v in tree[_TUPLE])
    if _DICT in tree:
        return {_hashable(decode(k, tensors)): decode(v, tensors) for k, v in tree[_DICT]}
    if _ARRAY in tree:
        return np.asarray(tree[_ARRAY], dtype=tree['dtype']).reshape(tree['shape'])
    if _FLOAT in tree:
        return float(tree[_FLOAT])
    return {k: decode(v, tensors) for k, v in tree.items()}


def _hashable(k: Any) -> Any:
    return tuple(_hashable(v) for v in k) if isinstance(k, list) else k


def save_state(tensor_path: str, json_path: str, state: Any, extra: Optional[Dict[str, Any]] = None) -> None:
    """Write ``state`` as ``tensor_path`` (safetensors) + ``json_path``, each atomically, the JSON last.

    ``extra`` is stored beside the state in the JSON (e.g. sizes of companion files for completeness checks).
    """
    from safetensors.torch import save_file
    tree, tensors = encode(state)
    with atomic_path(tensor_path) as tmp:
        save_file(tensors, str(tmp), metadata={'format': 'pt', 'content': 'mednext-zoo training state'})
    doc = {'format': 'mednext-zoo training state v1', 'tensors': os.path.basename(tensor_path),
           'tensors_bytes': os.path.getsize(tensor_path), **(extra or {}), 'state': tree}
    atomic_write_bytes(json_path, (json.dumps(doc, allow_nan=False) + '\n').encode())


def load_state(tensor_path: str, json_path: str) -> Tuple[Any, Dict[str, Any]]:
    """``(state, json_document)`` written by :func:`save_state`; raises ValueError / OSError for a missing,
    truncated or inconsistent pair (a SafetensorError is re-raised as ValueError)."""
    from safetensors.torch import load_file
    with open(json_path) as f:
        doc = json.load(f)
    if not isinstance(doc, dict) or 'state' not in doc:
        raise ValueError(f'{os.path.basename(json_path)} holds no training state')
    size = os.path.getsize(tensor_path)
    if size != doc.get('tensors_bytes'):
        raise ValueError(f'{os.path.basename(tensor_path)} has {size} bytes, the state says '
                         f'{doc.get("tensors_bytes")} (truncated or replaced)')
    try:
        tensors = load_file(tensor_path)
    except Exception as e:  # noqa: BLE001 -- safetensors raises its own error type for a damaged file
        raise ValueError(f'{os.path.basename(tensor_path)}: {e}') from e
    return decode(doc['state'], tensors), doc
