"""How long a reproduction will take: a few measured training steps times the protocol's number of steps."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch

from ..finetune.engine import format_duration

__all__ = ['Estimate', 'StepTime', 'measure_step_time', 'format_duration', 'steps_per_epoch']


@dataclass
class Estimate:
    """Measured seconds per optimiser step, and the steps a run needs.

    Step and batch counts are per process (a ``torchrun`` run shares each epoch between its processes).
    Evaluation is counted as a third of a training step per batch (a forward pass only).
    """
    sec_per_step: Optional[float]
    measured_steps: int
    batch_size: int
    dtype: str
    device: str
    train_steps_per_epoch: int
    eval_batches_per_epoch: int
    final_eval_batches: int
    epochs: int
    seeds: int
    world_size: int = 1

    @property
    def steps(self) -> float:
        """Training-step equivalents of the whole run, all seeds (evaluation batches count 1/3)."""
        per_seed = (self.train_steps_per_epoch + self.eval_batches_per_epoch / 3) * self.epochs \
            + self.final_eval_batches / 3
        return per_seed * self.seeds  # the step counts are per process already

    @property
    def total_s(self) -> Optional[float]:
        """Projected seconds for the whole run, or None when nothing was measured."""
        return None if self.sec_per_step is None else self.sec_per_step * self.steps

    def describe(self) -> str:
        """One line for the plan: the projected total time with what it was measured on, or what to pass to measure."""
        work = (f'{self.train_steps_per_epoch} steps/epoch x {self.epochs} epochs x {self.seeds} seed(s)'
                f'{f" / {self.world_size} processes" if self.world_size > 1 else ""}, plus evaluation')
        if self.sec_per_step is None:
            return f'not measured ({work}; pass --timing-steps N to measure)'
        steps = f'{self.measured_steps} step{"s" if self.measured_steps != 1 else ""}'
        return (f'~{format_duration(self.total_s)} (measured {self.sec_per_step:.2f} s/step over {steps} at batch '
                f'{self.batch_size}, {self.dtype}, {self.device}; {work})')


class StepTime(NamedTuple):
    """Seconds per training step: ``wall_s`` on the clock, ``cpu_s`` of this process's CPU time (all threads)."""
    wall_s: float  # seconds per step on the clock
    cpu_s: float  # CPU seconds per step of this process, all threads (less sensitive to other jobs than wall_s)


def measure_step_time(tag: str, task: str, batch_size: int, img_size: int, device: torch.device,
                      amp_dtype: Optional[torch.dtype], steps: int = 3) -> StepTime:
    """Time per training step (forward, loss, backward, optimiser) of ``tag``'s network on random inputs of the
    protocol's shape, after one warm-up step; CUDA is synchronised around the timed steps."""
    import timm

    from .. import models  # noqa: F401  (registers the architectures)
    model = timm.create_model(tag, pretrained=False, img_size=img_size).to(device).train()
    in_chans, n_cls = model.in_chans, model.num_classes
    x = torch.randn(batch_size, in_chans, img_size, img_size, device=device)
    if task == 'classification':
        y = torch.randint(0, n_cls, (batch_size,), device=device)
    else:
        y = torch.randint(0, n_cls, (batch_size, img_size, img_size), device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler('cuda') if amp_dtype == torch.float16 else None

    def step() -> None:
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()

    def sync() -> None:
        if device.type == 'cuda':
            torch.cuda.synchronize(device)

    step()
    sync()
    n = max(1, steps)
    t, c = time.perf_counter(), time.process_time()
    for _ in range(n):
        step()
    sync()
    return StepTime((time.perf_counter() - t) / n, (time.process_time() - c) / n)


def steps_per_epoch(n: int, batch_size: int, world_size: int = 1, drop_last: bool = True) -> int:
    """Optimiser steps per epoch and process for ``n`` items at ``batch_size`` per process: whole batches with
    ``drop_last`` (unless ``n`` is below one global batch), else rounded up; at least 1."""
    per = batch_size * world_size
    return max(1, n // per if drop_last and n >= per else math.ceil(n / per))
