"""Training loss of the TransUNet protocol: 0.5 cross-entropy + 0.5 soft Dice over all classes."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ['SoftDiceLoss', 'DiceCELoss']


class SoftDiceLoss(nn.Module):
    """TransUNet's ``DiceLoss``: mean over classes (background included) of 1 - soft Dice of the softmax.

    Sums run over the whole batch. ``logits`` ``B, K, H, W``; ``target`` ``B, H, W`` (class indices).
    """

    def __init__(self, num_classes: int, smooth: float = 1e-5):
        super().__init__()
        self.num_classes, self.smooth = num_classes, smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        prob = logits.float().softmax(dim=1)
        onehot = F.one_hot(target.long(), self.num_classes).permute(0, 3, 1, 2).float()
        dims = (0, 2, 3)
        inter = (prob * onehot).sum(dims)
        denom = (prob * prob).sum(dims) + onehot.sum(dims)
        dice = (2 * inter + self.smooth) / (denom + self.smooth)
        return 1.0 - dice.mean()


class DiceCELoss(nn.Module):
    """``ce_weight * CE + dice_weight * soft Dice`` (defaults 0.5 / 0.5, the Synapse / ACDC recipe)."""

    def __init__(self, num_classes: int, ce_weight: float = 0.5, dice_weight: float = 0.5):
        super().__init__()
        self.ce_weight, self.dice_weight = ce_weight, dice_weight
        self.dice = SoftDiceLoss(num_classes)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = target.long()
        ce = F.cross_entropy(logits.float(), target)
        return self.ce_weight * ce + self.dice_weight * self.dice(logits, target)
