"""Weights that exercise every fold of the fused inference path (shared by the speed-path and pinned-logit tests)."""
from __future__ import annotations

import torch
import torch.nn as nn


def perturb(module: nn.Module, seed: int = 0) -> nn.Module:
    """Non-zero biases and BatchNorm statistics (init zeroes them), so every bias / BatchNorm fold is exercised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith('bias'):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
    return module
