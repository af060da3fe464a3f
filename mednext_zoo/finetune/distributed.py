"""Where a training process runs: its place in a ``torchrun`` launch, rank-0 work shared with every rank, seeding,
the device and the mixed-precision dtype.

Everything here is a no-op outside ``torchrun`` (one process, rank 0 of 1), so the tasks and the engine call it
unconditionally.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..errors import UserInputError

__all__ = [
    'DistInfo', 'setup_distributed', 'cleanup_distributed', 'barrier', 'broadcast_object', 'on_main',
    'seed_everything', 'rng_state', 'set_rng_state', 'resolve_device', 'resolve_amp_dtype', 'unwrap',
]


@dataclass
class DistInfo:
    """This process's place in a ``torchrun`` launch (``rank`` 0 of ``world_size`` 1 when not distributed)."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """Whether more than one process takes part."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0 (the process that writes files and logs)."""
        return self.rank == 0


_GROUP_USERS = 0  # setup_distributed calls not yet matched by cleanup_distributed


def setup_distributed(device: str = 'auto') -> DistInfo:
    """Join the process group started by ``torchrun`` (gloo on CPU, NCCL on CUDA); a no-op otherwise.

    Calls nest: the group lives until every ``setup_distributed`` has had its ``cleanup_distributed``, so that a
    caller running several fits in one launch (``mednext-zoo reproduce --seeds 3``) keeps one group throughout
    (torchrun's store does not support creating the default group a second time).
    """
    global _GROUP_USERS
    world = int(os.environ.get('WORLD_SIZE', '1'))
    if world <= 1:
        return DistInfo()
    rank, local_rank = int(os.environ.get('RANK', '0')), int(os.environ.get('LOCAL_RANK', '0'))
    _GROUP_USERS += 1
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and device in ('auto', '', None) or str(device).startswith('cuda')
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend='nccl' if use_cuda else 'gloo')
    return DistInfo(rank, world, local_rank)


def cleanup_distributed() -> None:
    """Undo one :func:`setup_distributed`; the process group is destroyed when the last caller has cleaned up."""
    global _GROUP_USERS
    _GROUP_USERS = max(0, _GROUP_USERS - 1)
    if _GROUP_USERS == 0 and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    """Wait for every rank (a no-op in a single process)."""
    if info.enabled:
        dist.barrier()


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank (``obj`` itself in a single process)."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(info: DistInfo, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ``fn`` on rank 0 and share its result, or its UserInputError, with every rank (no rank hangs)."""
    res, err = None, None
    if info.is_main:
        try:
            res = fn(*args, **kwargs)
        except UserInputError as e:
            err = str(e)
    res, err = broadcast_object((res, err), info)
    if err is not None:
        raise UserInputError(err)
    return res


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators (numpy with ``seed % 2**32``)."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def rng_state() -> Dict[str, Any]:
    """The Python, numpy, torch (and CUDA) generator states, for a checkpoint."""
    state = {'python': random.getstate(), 'numpy': np.random.get_state(), 'torch': torch.get_rng_state()}
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    random.setstate(state['python'])
    np.random.set_state(state['numpy'])
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


def resolve_device(device: str = 'auto', local_rank: int = 0) -> torch.device:
    """``'auto'``: ``cuda:{local_rank}`` when a GPU is available, else CPU; anything else as ``torch.device``. Raises
    UserInputError when CUDA is asked for and none is available."""
    if device in ('auto', '', None):
        return torch.device(f'cuda:{local_rank}') if torch.cuda.is_available() else torch.device('cpu')
    dev = torch.device(device)
    if dev.type == 'cuda' and not torch.cuda.is_available():
        raise UserInputError(f'--device {device} asked for CUDA but no GPU is available; use --device cpu.')
    return dev


def resolve_amp_dtype(amp: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype of ``--amp`` on ``device``: ``auto`` (CUDA: bf16 if supported, else fp16; CPU: none),
    ``none``, ``bf16`` or ``fp16`` (CUDA only); None means full precision."""
    amp = (amp or 'none').lower()
    if amp == 'auto':
        if device.type != 'cuda':
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if amp in ('none', 'off', 'fp32', 'false'):
        return None
    if amp == 'bf16':
        return torch.bfloat16
    if amp == 'fp16':
        if device.type != 'cuda':
            raise UserInputError('--amp fp16 needs a CUDA device; on CPU use --amp bf16.')
        return torch.float16
    raise UserInputError(f'Unknown --amp {amp!r}; use auto, none, bf16 or fp16.')


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` wrapper, or ``model`` itself."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
