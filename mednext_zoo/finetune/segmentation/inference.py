"""Slice-wise inference of whole volumes, written back in the source geometry; PNG overlays.

Two spatial recipes, the run's (see :mod:`.data`):

* resize (the TransUNet protocol): each slice is resized to the model size, predicted, argmax-ed, and the label
  map resized back to the native slice size with nearest neighbour;
* patch (``patch_size``): each slice stays at native resolution and MONAI's ``sliding_window_inference`` slides a
  ``P x P`` window over it (``overlap``, Gaussian weighting of the softmax, zero padding at the borders).

The slices are stacked in the volume's own order and :meth:`Volume.to_native` restores the file's axis order, so
the NIfTI written here carries the source affine and lines up with the source image voxel for voxel.
"""
from __future__ import annotations

import contextlib
import io
import os
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ..._atomic import atomic_path, atomic_write_bytes
from ...data.volumes import Volume
from ...errors import UserInputError
from .preprocess import SYNAPSE_WINDOW, check_volume_size, normalize_intensity, resize_labels, resize_slices, stack_25d

__all__ = ['volume_inputs', 'predict_volume', 'sliding_window_probs', 'save_nifti', 'save_sitk', 'save_png_mask',
           'save_prediction', 'save_overlays']


def volume_inputs(vol: Volume, img_size: Optional[int], intensity: str = 'none',
                  window: Tuple[float, float] = SYNAPSE_WINDOW, context: int = 1,
                  normalized: Optional[np.ndarray] = None) -> torch.Tensor:
    """Model inputs of every slice: ``D, C * context, S, S`` (C = 3 for colour images, else 1); with ``img_size``
    None, at native resolution ``D, C * context, H, W``."""
    check_volume_size(vol.image.shape[1:3], vol.image_path, model_size=img_size)
    img = normalized if normalized is not None else normalize_intensity(vol.image, intensity, window)
    size = tuple(img.shape[1:3]) if img_size is None else (img_size, img_size)
    if img.ndim == 4:  # colour 2D image D, H, W, 3
        if context != 1:
            raise UserInputError(f'{vol.image_path}: 2.5D context needs grayscale volumes, not colour images.')
        return resize_slices(np.moveaxis(img, -1, 1), size)
    t = resize_slices(img, size)
    return stack_25d(t, context)


def _flip_tta(model: nn.Module, tta: bool, amp_dtype: Optional[torch.dtype], device: torch.device):
    """A predictor ``B, C, H, W`` -> softmax ``B, K, H, W``, averaged over identity / h / v flips with ``tta``."""
    flips: Sequence[Tuple[int, ...]] = ((), (-1,), (-2,)) if tta else ((),)

    def predictor(xb: torch.Tensor) -> torch.Tensor:
        prob = None
        for dims in flips:
            inp = torch.flip(xb, dims) if dims else xb
            with torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext():
                out = model(inp)
            p = out.float().softmax(1)
            p = torch.flip(p, dims) if dims else p
            prob = p if prob is None else prob + p
        return prob / len(flips)
    return predictor


@torch.no_grad()
def sliding_window_probs(model: nn.Module, x: torch.Tensor, patch: int, overlap: float = 0.5, batch_size: int = 16,
                         tta: bool = False, device: Optional[torch.device] = None,
                         amp_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Softmax ``N, K, H, W`` of images ``N, C, H, W`` of any size, by MONAI's ``sliding_window_inference``:
    ``patch x patch`` windows with ``overlap``, Gaussian-weighted blending, zero padding where an image is smaller
    than the window. The model sees only ``patch x patch`` inputs, so memory follows ``batch_size`` and ``patch``
    (plus the ``K, H, W`` output)."""
    try:
        from monai.inferers import sliding_window_inference
    except ImportError:  # pragma: no cover - monai is in the finetune extra
        raise UserInputError("Sliding-window prediction needs MONAI: pip install 'mednext-zoo[finetune]'.") from None
    device = device or next(model.parameters()).device
    predictor = _flip_tta(model, tta, amp_dtype, device)
    return sliding_window_inference(x, (patch, patch), batch_size, predictor, overlap=overlap, mode='gaussian',
                                    padding_mode='constant', cval=0.0, sw_device=device, device=torch.device('cpu'))


@torch.no_grad()
def predict_volume(model: nn.Module, vol: Volume, img_size: int, intensity: str = 'none',
                   window: Tuple[float, float] = SYNAPSE_WINDOW, context: int = 1, batch_size: int = 16,
                   tta: bool = False, device: Optional[torch.device] = None,
                   amp_dtype: Optional[torch.dtype] = None, patch_size: Optional[int] = None,
                   overlap: float = 0.5) -> np.ndarray:
    """Label map ``D, H, W`` (int16, slices-first like ``vol.image``) predicted slice by slice, at native
    resolution.

    Without ``patch_size`` each slice is resized to ``img_size`` and the label map resized back; with it, a
    ``patch_size`` window slides over the native slice (:func:`sliding_window_probs`, ``overlap``). ``tta``
    averages the softmax over the identity and horizontal / vertical flips.
    """
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    x = volume_inputs(vol, None if patch_size else img_size, intensity, window, context)
    predictor = _flip_tta(model, tta, amp_dtype, device)
    preds = []
    for i in range(0, x.shape[0], batch_size):
        if patch_size:
            prob = sliding_window_probs(model, x[i:i + batch_size], patch_size, overlap, batch_size, tta, device,
                                        amp_dtype)
        else:
            prob = predictor(x[i:i + batch_size].to(device))
        preds.append(prob.argmax(1).cpu())
    model.train(was_training)
    lab = torch.cat(preds)
    return resize_labels(lab, vol.image.shape[1:3]).numpy().astype(np.int16)


def save_nifti(pred: np.ndarray, vol: Volume, path: str) -> str:
    """Write a ``D, H, W`` prediction as NIfTI in the source image's geometry (affine, axis order)."""
    import nibabel as nib

    data = vol.to_native(np.asarray(pred)).astype(np.int16)
    img = nib.Nifti1Image(data, vol.affine)
    if vol.header is not None:
        img.header.set_zooms(tuple(vol.header.get_zooms()[:data.ndim]))
        img.header.set_xyzt_units(*vol.header.get_xyzt_units())
        with contextlib.suppress(Exception):
            img.header.set_qform(vol.header.get_qform(), code=int(vol.header['qform_code']))
            img.header.set_sform(vol.header.get_sform(), code=int(vol.header['sform_code']))
    img.header.set_data_dtype(np.int16)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return path


# matplotlib's tab10, the overlays' colours: class c is drawn in colour c (class 0, background, black)
_TAB10 = ('1f77b4', 'ff7f0e', '2ca02c', 'd62728', '9467bd', '8c564b', 'e377c2', '7f7f7f', 'bcbd22', '17becf')
MASK_PALETTE = [0, 0, 0] + [int(h[i:i + 2], 16) for c in range(1, 256) for h in [_TAB10[c % 10]] for i in (0, 2, 4)]


def save_png_mask(pred: np.ndarray, path: str) -> str:
    """Write a 2D label map as an 8-bit palette PNG: the pixel values are the class indices (what PIL / numpy read
    back), and image viewers show them in colour (:data:`MASK_PALETTE`) instead of near-black greys."""
    from PIL import Image

    buf = io.BytesIO()
    img = Image.fromarray(np.asarray(pred, dtype=np.uint8))
    img.putpalette(MASK_PALETTE)  # an 'L' image becomes 'P': same bytes, shown through the palette
    img.save(buf, format='PNG')
    atomic_write_bytes(path, buf.getvalue())
    return path


def save_sitk(pred: np.ndarray, vol: Volume, path: str) -> str:
    """Write a ``D, H, W`` prediction with SimpleITK in the source image's geometry (origin, spacing, direction)."""
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(vol.to_native(np.asarray(pred)).astype(np.int16))
    img.CopyInformation(vol.sitk_ref)
    with atomic_path(path) as tmp:
        sitk.WriteImage(img, str(tmp), True)
    return path


def save_prediction(pred: np.ndarray, vol: Volume, out_dir: str) -> str:
    """NIfTI for NIfTI sources (source affine), NRRD / MHA for SimpleITK sources (source geometry), a PNG for 2D
    images, else NIfTI with the stored geometry."""
    if vol.sitk_ref is not None:
        ext = '.nrrd' if vol.image_path.lower().endswith(('.nrrd', '.nhdr')) else '.mha'
        return save_sitk(pred, vol, os.path.join(out_dir, f'{vol.case_id}_pred{ext}'))
    if vol.header is None and vol.native_ndim == 2:
        return save_png_mask(pred[0], os.path.join(out_dir, f'{vol.case_id}_pred.png'))
    return save_nifti(pred, vol, os.path.join(out_dir, f'{vol.case_id}_pred.nii.gz'))


def save_overlays(vol: Volume, pred: np.ndarray, out_dir: str, slices: Optional[Sequence[int]] = None,
                  num_classes: Optional[int] = None, gt: Optional[np.ndarray] = None, max_slices: int = 3) -> List[str]:
    """PNG overlays (image in grey, prediction in colour; ground truth beside it when given) of chosen slices.

    ``slices`` defaults to the ``max_slices`` slices with the most predicted foreground.
    """
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    d = vol.image.shape[0]
    if slices is None:
        fg = (pred > 0).reshape(d, -1).sum(1)
        slices = sorted(np.argsort(-fg, kind='stable')[:max_slices].tolist())
    bad = [s for s in slices if not 0 <= s < d]
    if bad:
        raise UserInputError(f'{vol.case_id}: slices {bad} are outside 0..{d - 1}.')
    k = int(num_classes or max(int(pred.max()), int(gt.max()) if gt is not None else 0) + 1)
    cmap = plt.get_cmap('tab10' if k <= 10 else 'tab20')
    paths = []
    for s in slices:
        img = vol.image[s]
        if img.ndim == 2:
            lo, hi = np.percentile(img, (1, 99))
            img = np.clip((img - lo) / (hi - lo + 1e-8), 0, 1)
        panels = [('prediction', pred[s])] + ([('ground truth', gt[s])] if gt is not None else [])
        fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4), squeeze=False)
        for ax, (title, lab) in zip(axes[0], panels):
            ax.imshow(img, cmap='gray' if img.ndim == 2 else None)
            masked = np.ma.masked_where(lab == 0, lab)
            ax.imshow(masked, cmap=cmap, vmin=0, vmax=cmap.N - 1, alpha=0.45, interpolation='nearest')
            ax.set_title(f'{vol.case_id} slice {s}: {title}', fontsize=8)
            ax.axis('off')
        buf = io.BytesIO()
        fig.savefig(buf, format='png', dpi=100, bbox_inches='tight')
        plt.close(fig)
        path = os.path.join(out_dir, f'{vol.case_id}_slice{s:03d}.png')
        atomic_write_bytes(path, buf.getvalue())
        paths.append(path)
    return paths
