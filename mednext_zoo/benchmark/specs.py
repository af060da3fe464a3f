"""Which models a benchmark builds: names, resolutions and baselines.

A model is named by its timm name (``resnet50``), optionally with a resolution (``resnet50@160``),
or by one of the named settings below (``swinv2_tiny_w6_192``, ``unet_resnet34``).
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field, replace
from typing import Any, Dict, List, Optional, Sequence

import timm
import torch.nn as nn

from .. import models  # noqa: F401  (registers mednext_* / medunext_* in timm)
from ..errors import UserInputError

__all__ = [
    'ModelSpec', 'NAMED_SPECS', 'CLS_BASELINES', 'SEG_BASELINES', 'default_model_names', 'resolve_models',
    'build_model', 'smp_available', 'REFERENCE', 'SEG_REFERENCE',
]

REFERENCE = 'mednext_base'
SEG_REFERENCE = 'medunext_base'
SEG_IN_CHANS = 1  # a CT / MRI slice
SEG_NUM_CLASSES = 9  # Synapse: background + 8 organs


@dataclass(frozen=True)
class ModelSpec:
    """One benchmarked setting: a model, its input size and how to build it."""

    name: str  # key in results and on the command line
    arch: str  # timm model name, or the smp encoder for builder 'smp'
    img_size: int
    in_chans: int = 3
    num_classes: int = 1000
    task: str = 'cls'
    builder: str = 'timm'  # 'timm' or 'smp'
    kwargs: Dict[str, Any] = field(default_factory=dict)
    label: str = ''
    pass_img_size: bool = False  # give img_size to the constructor even at the native size

    @property
    def input_size(self) -> tuple:
        """``(in_chans, img_size, img_size)``: one input without the batch dimension."""
        return (self.in_chans, self.img_size, self.img_size)


NAMED_SPECS: Dict[str, ModelSpec] = {
    'swinv2_tiny_w6_192': ModelSpec(
        'swinv2_tiny_w6_192', 'swinv2_tiny_window8_256', 192, kwargs={'window_size': 6}, pass_img_size=True,
        label="Swin-v2-T @192, window 6: the setting that matches the paper's 3.24 G",
    ),
    'unet_resnet34': ModelSpec(
        'unet_resnet34', 'resnet34', 224, in_chans=SEG_IN_CHANS, num_classes=SEG_NUM_CLASSES, task='seg',
        builder='smp', label='U-Net, ResNet-34 encoder (segmentation_models_pytorch)',
    ),
    'unet_resnet50': ModelSpec(
        'unet_resnet50', 'resnet50', 224, in_chans=SEG_IN_CHANS, num_classes=SEG_NUM_CLASSES, task='seg',
        builder='smp', label='U-Net, ResNet-50 encoder (segmentation_models_pytorch)',
    ),
}

CLS_BASELINES = (
    'resnet18', 'resnet50', 'convnext_tiny', 'swinv2_cr_tiny_224', 'swinv2_tiny_window8_256', 'swinv2_tiny_w6_192',
)
SEG_BASELINES = ('unet_resnet34', 'unet_resnet50')

_LABELS = {
    'swinv2_tiny_window8_256': 'Swin-v2-T @256 (native), window 8',
    'swinv2_cr_tiny_224': 'Swin-v2-T (timm "cr" variant) @224, window 7',
}


def smp_available() -> bool:
    """Whether ``segmentation_models_pytorch`` can be imported (the segmentation baselines need it)."""
    try:
        import segmentation_models_pytorch  # noqa: F401
    except ImportError:
        return False
    return True


def default_model_names(task: str = 'cls') -> List[str]:
    """The MedNeXt (or MedUNeXt) family registered in timm, then the baselines."""
    if task == 'seg':
        return _family('medunext_*') + list(SEG_BASELINES)
    return _family('mednext_*') + list(CLS_BASELINES)


def _family(pattern: str) -> List[str]:
    order = {'tiny': 0, 'small': 1, 'base': 2, 'large': 3}
    names = timm.list_models(pattern)
    return sorted(names, key=lambda n: (order.get(n.rsplit('_', 1)[-1], 9), n))


def _native_size(arch: str) -> int:
    cfg = timm.get_pretrained_cfg(arch)
    size = getattr(cfg, 'input_size', None) if cfg is not None else None
    return int(size[-1]) if size else 224


def _unknown(name: str, task: str) -> UserInputError:
    pool = set(timm.list_models()) | set(NAMED_SPECS)
    close = difflib.get_close_matches(name, sorted(pool), n=5, cutoff=0.6)
    hint = f' Did you mean: {", ".join(close)}?' if close else ''
    return UserInputError(
        f'unknown model {name!r}.{hint} Any timm model name works (`timm.list_models()`), '
        f'optionally with a resolution as NAME@SIZE, or one of the named settings: {", ".join(sorted(NAMED_SPECS))}.'
    )


def resolve_models(
        names: Optional[Sequence[str]] = None,
        task: str = 'cls',
        img_size: Optional[int] = None,
        num_classes: Optional[int] = None,
        reference: Optional[str] = None,
) -> List[ModelSpec]:
    """Specs for ``names`` (default: the family and the baselines of ``task``), reference first-added.

    ``img_size`` overrides every model's native resolution unless a name carries ``@SIZE``.
    ``num_classes`` defaults to 1000 for classification (timm's published figures) and 9 for
    segmentation (Synapse). Raises ``UserInputError`` for an unknown name, with close matches.
    """
    if task not in ('cls', 'seg'):
        raise UserInputError(f'unknown task {task!r}: choose cls or seg.')
    if img_size is not None and img_size < 1:
        raise UserInputError(f'--img-size must be a positive number of pixels, got {img_size}.')
    if num_classes is not None and num_classes < 1:
        raise UserInputError(f'--num-classes must be at least 1, got {num_classes}.')
    names = list(names) if names else default_model_names(task)
    reference = reference if reference is not None else (SEG_REFERENCE if task == 'seg' else REFERENCE)
    if reference and reference not in names and (reference in NAMED_SPECS or timm.is_model(reference)):
        names.append(reference)
    specs, seen = [], set()
    for raw in names:
        raw = raw.strip()
        if not raw or raw in seen:
            continue
        seen.add(raw)
        specs.append(_resolve_one(raw, task, img_size, num_classes))
    return specs


def _resolve_one(raw: str, task: str, img_size: Optional[int], num_classes: Optional[int]) -> ModelSpec:
    name, _, size_txt = raw.partition('@')
    size = None
    if size_txt:
        if not size_txt.isdigit() or int(size_txt) < 1:
            raise UserInputError(f'{raw!r}: the size after @ must be a positive integer (e.g. resnet50@160).')
        size = int(size_txt)
    seg_default_classes = SEG_NUM_CLASSES if task == 'seg' else 1000
    if name in NAMED_SPECS:
        spec = NAMED_SPECS[name]
    elif timm.is_model(name):
        is_seg = name.startswith('medunext')
        spec = ModelSpec(
            name, name, _native_size(name),
            in_chans=SEG_IN_CHANS if is_seg else 3,
            num_classes=SEG_NUM_CLASSES if is_seg else 1000,
            task='seg' if is_seg else 'cls',
            label=_LABELS.get(name, ''),
        )
    else:
        raise _unknown(name, task)
    new_size = size or img_size
    changes: Dict[str, Any] = {'name': raw}
    if new_size and new_size != spec.img_size:
        changes.update(img_size=new_size, pass_img_size=True)
    if num_classes is not None:
        changes['num_classes'] = num_classes
    elif spec.task != task:
        changes['num_classes'] = seg_default_classes
    return replace(spec, **changes)


def build_model(spec: ModelSpec) -> nn.Module:
    """Build ``spec``'s model with random weights (nothing is downloaded), in eval mode."""
    if spec.builder == 'smp':
        if not smp_available():
            raise UserInputError(
                "segmentation_models_pytorch is not installed: pip install 'mednext-zoo[seg-baselines]'."
            )
        import segmentation_models_pytorch as smp
        model = smp.Unet(
            encoder_name=spec.arch, encoder_weights=None, in_channels=spec.in_chans, classes=spec.num_classes,
        )
        return model.eval()
    kwargs = dict(spec.kwargs, num_classes=spec.num_classes, in_chans=spec.in_chans, pretrained=False)
    if spec.pass_img_size:
        try:
            return timm.create_model(spec.arch, img_size=spec.img_size, **kwargs).eval()
        except TypeError as e:
            if 'img_size' not in str(e):
                raise
            # a size-agnostic architecture (ResNet, ConvNeXt) takes any input as built
    return timm.create_model(spec.arch, **kwargs).eval()
