"""Grad-CAM (Selvaraju et al. 2017) with forward / backward hooks, and overlays of the heatmap on the input."""
from __future__ import annotations

import warnings
from typing import Optional, Tuple

import numpy as np
import torch
from torch import nn

__all__ = ['GradCAM', 'default_target_layer', 'overlay']


def default_target_layer(model: nn.Module) -> Tuple[str, nn.Module]:
    """The layer whose activations Grad-CAM weighs, by model family.

    MedNeXt / ConvNeXt and most timm CNNs: the last stage (``stages[-1]``); ResNet: ``layer4``; otherwise the
    module named by the last entry of timm's ``feature_info``.
    """
    modules = dict(model.named_modules())
    stages = getattr(model, 'stages', None)
    if isinstance(stages, nn.Sequential) and len(stages):
        return f'stages.{len(stages) - 1}', stages[-1]
    if 'layer4' in modules:
        return 'layer4', modules['layer4']
    info = getattr(model, 'feature_info', None)
    if info:
        name = info[-1]['module'] if isinstance(info, list) else info.module_name()[-1]
        if name in modules:
            return name, modules[name]
    raise ValueError(f'No default Grad-CAM layer for {type(model).__name__}; pass target_layer=<module name>.')


class GradCAM:
    """Class activation maps ``(B, H, W)`` in [0, 1] at the input resolution.

    Args:
        model: A classifier in eval mode.
        target_layer: Module name (see ``model.named_modules()``); default from :func:`default_target_layer`.
    """

    def __init__(self, model: nn.Module, target_layer: Optional[str] = None):
        self.model = model
        if target_layer is None:
            self.layer_name, layer = default_target_layer(model)
        else:
            modules = dict(model.named_modules())
            if target_layer not in modules:
                raise ValueError(f'Unknown Grad-CAM layer {target_layer!r}.')
            self.layer_name, layer = target_layer, modules[target_layer]
        self._warned = False
        self._acts: Optional[torch.Tensor] = None
        self._grads: Optional[torch.Tensor] = None
        self._handles = [layer.register_forward_hook(self._fwd)]

    def _fwd(self, module, inputs, output):
        out = output if torch.is_tensor(output) else output[0]
        self._acts = out
        out.register_hook(self._bwd)

    def _bwd(self, grad):
        self._grads = grad

    def close(self) -> None:
        """Remove the forward hook from the model; call when done (the object cannot be used afterwards)."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def __call__(self, x: torch.Tensor, class_idx: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """``x`` (B, C, H, W) -> (cams (B, H, W), logits (B, K)); ``class_idx`` defaults to the predicted class."""
        self.model.zero_grad(set_to_none=True)
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)  # ensures a graph even when the model's weights are frozen
            logits = self.model(x)
            idx = logits.argmax(1) if class_idx is None else torch.as_tensor(class_idx).view(-1)
            logits.gather(1, idx.view(-1, 1)).sum().backward()
        acts, grads = self._acts, self._grads
        if acts.shape[-1] != grads.shape[-1] or acts.ndim != 4:
            raise ValueError('Grad-CAM needs a (B, C, H, W) feature map at the target layer.')
        if acts.shape[-2:] == (1, 1) and not self._warned:  # one value per image: the overlay is a flat tint
            self._warned = True
            name = self.layer_name
            earlier = (f' (e.g. --cam-layer stages.{int(name.split(".")[1]) - 1})'
                       if name.startswith('stages.') and name.split('.')[1].isdigit() and int(name.split('.')[1])
                       else '')
            warnings.warn(f'Grad-CAM: layer {name} gives a 1 x 1 map for {x.shape[-2]} x {x.shape[-1]} inputs, so '
                          f'every heatmap is one uniform tint. Use a larger image size, or an earlier layer{earlier}.',
                          stacklevel=2)
        weights = grads.mean(dim=(2, 3), keepdim=True)
        cam = torch.relu((weights * acts).sum(1, keepdim=True))
        cam = nn.functional.interpolate(cam, size=x.shape[-2:], mode='bilinear', align_corners=False)[:, 0]
        flat = cam.flatten(1)
        lo, hi = flat.min(1)[0].view(-1, 1, 1), flat.max(1)[0].view(-1, 1, 1)
        cam = (cam - lo) / (hi - lo).clamp(min=1e-8)
        return cam.detach(), logits.detach()


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.45, min_size: int = 0) -> np.ndarray:
    """Blend a [0, 1] heatmap ``(H, W)`` (jet colour map) over an image ``(H, W)`` or ``(H, W, 3)``; uint8 RGB.

    ``min_size`` upsamples small images so that their shorter side has at least that many pixels.
    """
    import matplotlib
    from PIL import Image
    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if min_size and min(img.shape[:2]) < min_size:
        f = min_size / min(img.shape[:2])
        size = (int(round(img.shape[1] * f)), int(round(img.shape[0] * f)))
        img = np.asarray(Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).resize(size, Image.BICUBIC),
                         dtype=np.float32) / 255.0
    if img.shape[:2] != cam.shape:
        cam = np.asarray(Image.fromarray((cam * 255).astype(np.uint8)).resize(img.shape[1::-1], Image.BILINEAR),
                         dtype=np.float32) / 255.0
    heat = matplotlib.colormaps['jet'](cam)[..., :3]
    out = (1 - alpha) * img + alpha * heat
    return (np.clip(out, 0, 1) * 255).astype(np.uint8)
