"""The checkpoints of a run folder, without pickle: write, prune, find the newest readable one, set damaged ones
aside.

Layout::

    RUN_DIR/checkpoints/latest.json  pointer to the newest complete checkpoint (replaced atomically)
    RUN_DIR/checkpoints/step-N.safetensors                     model weights after N optimiser steps
    RUN_DIR/checkpoints/step-N.state.safetensors + .state.json optimiser, scheduler, scaler, EMA, RNG and loop
                                                               state: tensors in safetensors, the rest JSON
    RUN_DIR/checkpoints/best.safetensors                       weights at the best monitored score

Nothing here is pickled, so resuming a run folder from elsewhere runs no code. The newest ``keep`` (at least two)
checkpoints are kept; an unreadable or truncated one is set aside (``*.unreadable``) and the previous one is used.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
from typing import Any, Dict, List, Optional, Tuple

import torch

from ..errors import UserInputError
from .distributed import DistInfo, barrier
from .run_dir import atomic_save, atomic_write_json
from .state import load_state, save_state

__all__ = ['CheckpointStore', 'save_weights']


def save_weights(path: str, state_dict: Dict[str, torch.Tensor]) -> None:
    """Write a state dict as safetensors, atomically (tensors copied to contiguous CPU memory first)."""
    from safetensors.torch import save_file
    sd = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    atomic_save(path, lambda t: save_file(sd, t))


class CheckpointStore:
    """The checkpoint files of one run (``ckpt_dir``): see the module docstring. Only rank 0 writes; every rank
    reads. ``keep``: checkpoints kept (at least 2, so an unreadable newest one falls back to the one before)."""

    def __init__(self, ckpt_dir: str, keep: int = 2, dist_info: Optional[DistInfo] = None):
        self.dir, self.keep, self.dist = ckpt_dir, max(2, int(keep)), dist_info or DistInfo()

    @property
    def latest_path(self) -> str:
        """``latest.json``: the pointer to the newest complete checkpoint."""
        return os.path.join(self.dir, 'latest.json')

    def read_latest(self) -> Optional[Dict[str, Any]]:
        """The content of ``latest.json`` (tag, files, step, epochs completed), or None when missing or damaged."""
        try:
            with open(self.latest_path) as f:
                latest = json.load(f)
            return latest if isinstance(latest, dict) and 'tag' in latest else None
        except (OSError, ValueError):
            return None

    def tags(self) -> List[str]:
        """Checkpoint tags on disk, newest first (names are zero-padded step counts)."""
        if not os.path.isdir(self.dir):
            return []
        return sorted({n.split('.', 1)[0] for n in os.listdir(self.dir)
                       if n.startswith('step-') and not n.endswith('.unreadable')}, reverse=True)

    def write(self, weights: Dict[str, torch.Tensor], state: Dict[str, Any], step: int, epochs_completed: int,
              batch: int) -> str:
        """Weights (safetensors) and training state (safetensors + JSON) of optimiser step ``step``, then the atomic
        pointer to them; older checkpoints beyond ``keep`` are removed. Returns the tag."""
        tag = f'step-{step:08d}'
        wpath = os.path.join(self.dir, f'{tag}.safetensors')
        save_weights(wpath, weights)
        save_state(os.path.join(self.dir, f'{tag}.state.safetensors'), os.path.join(self.dir, f'{tag}.state.json'),
                   state, extra={'weights': os.path.basename(wpath), 'weights_bytes': os.path.getsize(wpath)})
        atomic_write_json(self.latest_path, {'tag': tag, 'weights': os.path.basename(wpath),
                                             'state': f'{tag}.state.json', 'step': step,
                                             'epochs_completed': epochs_completed, 'batches_into_next_epoch': batch})
        self.prune(keep=tag)
        return tag

    def prune(self, keep: str) -> None:
        """Remove the checkpoints beyond the newest ``self.keep`` (never ``keep``)."""
        for t in self.tags()[self.keep:]:
            if t == keep:
                continue
            for ext in ('.safetensors', '.state.safetensors', '.state.json', '.state.pt'):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(self.dir, t + ext))

    def read(self, tag: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
        """Weights and training state of ``tag``; ValueError / OSError if a file is missing, truncated or damaged."""
        from safetensors.torch import load_file
        state, doc = load_state(os.path.join(self.dir, f'{tag}.state.safetensors'),
                                os.path.join(self.dir, f'{tag}.state.json'))
        wpath = os.path.join(self.dir, doc['weights'])
        if os.path.getsize(wpath) != doc.get('weights_bytes'):
            raise ValueError(f'{doc["weights"]} has {os.path.getsize(wpath)} bytes, the state says '
                             f'{doc.get("weights_bytes")} (truncated or replaced)')
        try:
            weights = load_file(wpath)
        except Exception as e:  # noqa: BLE001 -- safetensors' own error type for a damaged file
            raise ValueError(f'{doc["weights"]}: {e}') from e
        return weights, state

    def find(self) -> Tuple[str, Dict[str, torch.Tensor], Dict[str, Any]]:
        """The newest checkpoint that reads completely; unreadable newer ones are reported and set aside. Raises
        UserInputError (saying what to do) when there is none."""
        latest = self.read_latest()
        order = self.tags()
        if latest is not None and latest['tag'] in order:  # normally the newest; kept first if not
            order.remove(latest['tag'])
            order.insert(0, latest['tag'])
        failures: List[Tuple[str, str]] = []
        for tag in order:
            if not os.path.isfile(os.path.join(self.dir, f'{tag}.state.json')) and not os.path.isfile(
                    os.path.join(self.dir, f'{tag}.state.safetensors')):
                continue  # an old-format (pickle) or half-pruned tag: not a candidate
            try:
                weights, state = self.read(tag)
            except (OSError, ValueError, KeyError, TypeError) as e:
                failures.append((tag, str(e)))
                continue
            if failures and self.dist.is_main:
                print(f'[mednext-zoo] --resume: checkpoint {", ".join(t for t, _ in failures)} is unreadable '
                      f'({"; ".join(r for _, r in failures)}); falling back to {tag} '
                      f'(step {state["progress"]["step"]}). The unreadable files are kept as *.unreadable.',
                      file=sys.stderr, flush=True)
            self.set_aside([t for t, _ in failures])
            return tag, weights, state
        if any(n.endswith('.state.pt') for n in (os.listdir(self.dir) if os.path.isdir(self.dir) else [])):
            raise UserInputError(
                f'--resume: {self.dir} holds checkpoints in the old pickle format (step-*.state.pt), which '
                f'--resume no longer loads: unpickling a file can run code. Start the run again with --overwrite, '
                f'or keep its best weights (checkpoints/best.safetensors, no pickle) and pass them as --pretrained.')
        if failures:
            raise UserInputError(f'--resume: no readable checkpoint in {self.dir} '
                                 f'({"; ".join(f"{t}: {r}" for t, r in failures)}). Start again with --overwrite.')
        raise UserInputError(f'--resume: no checkpoint in {self.dir}; the run stopped before its first '
                             f'checkpoint. Start it again with --overwrite.')

    def set_aside(self, tags: List[str]) -> None:
        """Rename the files of ``tags`` to ``*.unreadable`` (rank 0, once every rank has read its candidates)."""
        barrier(self.dist)
        if not self.dist.is_main:
            return
        for tag in tags:
            for ext in ('.safetensors', '.state.safetensors', '.state.json'):
                path = os.path.join(self.dir, tag + ext)
                if os.path.exists(path):
                    os.replace(path, path + '.unreadable')

    def remove_temporary(self) -> None:
        """Delete the temporary files of a write that was killed half-way."""
        for n in os.listdir(self.dir):
            if n.startswith('.') and '.tmp-' in n:
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(self.dir, n))
