"""Segmentation losses: soft Dice (batch or per-image), Dice + CE with class weights, deep supervision.

The defaults reproduce the TransUNet protocol's training loss: 0.5 cross-entropy + 0.5 soft Dice over all classes,
the Dice sums running over the whole batch.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ['SoftDiceLoss', 'DiceCELoss', 'DeepSupervisionLoss', 'DICE_MODES', 'downsample_target']

DICE_MODES = ('batch', 'image')


class SoftDiceLoss(nn.Module):
    """1 - soft Dice of the softmax, averaged over classes (TransUNet's ``DiceLoss`` by default).

    ``mode='batch'``: the sums run over the whole batch (TransUNet); ``'image'``: one Dice per image and class,
    averaged (nnU-Net's default; a class absent from an image scores 1 only when it is not predicted either).
    ``include_background=False`` leaves class 0 out of the average. ``logits`` ``B, K, H, W``; ``target``
    ``B, H, W`` (class indices).
    """

    def __init__(self, num_classes: int, smooth: float = 1e-5, mode: str = 'batch', include_background: bool = True):
        super().__init__()
        if mode not in DICE_MODES:
            raise ValueError(f'Dice mode must be one of {DICE_MODES}, got {mode!r}.')
        self.num_classes, self.smooth = num_classes, smooth
        self.mode, self.include_background = mode, include_background

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``1 - mean Dice`` (a scalar) of logits ``B, K, H, W`` against class indices ``B, H, W``."""
        prob = logits.float().softmax(dim=1)
        onehot = F.one_hot(target.long(), self.num_classes).permute(0, 3, 1, 2).float()
        dims = (0, 2, 3) if self.mode == 'batch' else (2, 3)
        inter = (prob * onehot).sum(dims)
        denom = (prob * prob).sum(dims) + onehot.sum(dims)
        dice = (2 * inter + self.smooth) / (denom + self.smooth)  # K (batch) or B, K (image)
        if not self.include_background:
            dice = dice[..., 1:]
        return 1.0 - dice.mean()


class DiceCELoss(nn.Module):
    """``ce_weight * CE + dice_weight * soft Dice`` (defaults 0.5 / 0.5, the Synapse / ACDC recipe).

    ``class_weights`` (``K``): per-class weights of the cross-entropy (e.g. inverse class frequencies); with
    PyTorch's mean reduction only their ratios matter. ``dice_mode`` / ``include_background``: see
    :class:`SoftDiceLoss`.
    """

    def __init__(self, num_classes: int, ce_weight: float = 0.5, dice_weight: float = 0.5, dice_mode: str = 'batch',
                 include_background: bool = True, class_weights: Optional[torch.Tensor] = None):
        super().__init__()
        self.ce_weight, self.dice_weight = ce_weight, dice_weight
        self.dice = SoftDiceLoss(num_classes, mode=dice_mode, include_background=include_background)
        self.register_buffer('class_weights', None if class_weights is None
                             else torch.as_tensor(class_weights, dtype=torch.float32), persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scalar loss of logits ``B, K, H, W`` against class indices ``B, H, W``."""
        target = target.long()
        weight = None if self.class_weights is None else self.class_weights.to(logits.device)
        ce = F.cross_entropy(logits.float(), target, weight=weight)
        return self.ce_weight * ce + self.dice_weight * self.dice(logits, target)


def downsample_target(target: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Nearest-neighbour resize of a label map ``B, H, W`` to ``size`` (h, w): the deep-supervision targets."""
    if tuple(target.shape[-2:]) == tuple(size):
        return target
    return F.interpolate(target[:, None].float(), size=tuple(size), mode='nearest')[:, 0].long()


class DeepSupervisionLoss(nn.Module):
    """nnU-Net-style deep supervision around a per-output loss.

    When the model returns a list / tuple of logits ``[full, 1/2, 1/4, ...]`` (in training), output ``i`` is
    scored against the nearest-downsampled target and weighted ``2**-i``, the weights normalised to sum to 1; a
    plain tensor is scored as is. ``enabled=False`` scores only the first (full-resolution) output.
    """

    def __init__(self, loss: nn.Module, enabled: bool = True):
        super().__init__()
        self.loss, self.enabled = loss, enabled

    @staticmethod
    def weights(n: int) -> torch.Tensor:
        """Weights ``2**-i`` of ``n`` outputs, normalised to sum to 1 (float64, shape ``n``)."""
        w = torch.tensor([0.5 ** i for i in range(n)], dtype=torch.float64)
        return w / w.sum()

    def forward(self, logits: Union[torch.Tensor, Sequence[torch.Tensor]], target: torch.Tensor) -> torch.Tensor:
        """The loss of logits ``B, K, H, W`` against ``target`` ``B, H, W``; for a list of outputs, the weighted sum
        of each against the target resized to its size (only the first output with ``enabled=False``); a scalar."""
        if isinstance(logits, torch.Tensor):
            return self.loss(logits, target)
        outs = list(logits) if self.enabled else [logits[0]]
        w = self.weights(len(outs))
        return sum(float(wi) * self.loss(o, downsample_target(target, o.shape[-2:])) for wi, o in zip(w, outs))
