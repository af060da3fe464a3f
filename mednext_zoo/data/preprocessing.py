"""One description of the input recipe a model was trained with, and a numpy implementation of it.

:class:`PreprocessingSpec` says how a raw file (PNG / JPEG / DICOM / NIfTI / NRRD ...) becomes the model's input
``(N, C, H, W)`` float32, for every recipe the package trains with: the CT window (clip HU, scale by the window or
by the clipped volume's own range), the DICOM file's own window, min-max, z-score (per image / volume, or a fixed
mean and std), resizing or sliding-window patches, grey replicated to RGB, 2.5D context, and the per-channel
normalisation mean / std. Fine-tuning runs write it (``export/config.json``, key ``preprocessing``), so do the
Hub folders and every ``mednext-zoo export --format`` artefact (``preprocessing.json``).

:func:`preprocess` applies it with numpy, Pillow and SciPy and the package's own file readers (no torch), so a
deployment reads exactly what training read::

    from mednext_zoo.deploy import preprocess
    x = preprocess('scan.dcm', 'deploy/onnx')       # (N, C, H, W) float32, ready for model.onnx

JSON form (``to_dict``; ``schema`` ``mednext-zoo.preprocessing/1``)::

    {"schema": "mednext-zoo.preprocessing/1", "task": "segmentation",
     "read": {"unit": "volume", "slice_axis": 2},
     "intensity": {"mode": "window", "low": -125.0, "high": 275.0, "scale": "data"},
     "channels": {"in_chans": 1, "grey": "single", "context": 1},
     "spatial": {"mode": "resize", "size": [224, 224], "interpolation": "bilinear", "antialias": false},
     "normalize": {"mean": [0.0], "std": [1.0]},
     "output": {"activation": "softmax", "label_map": "argmax", "resize_back": "nearest"}}

Layering: data layer; imports nothing above it (``hub``, ``finetune`` and ``deploy`` use it).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import UserInputError

__all__ = ['SCHEMA', 'PreprocessingSpec', 'classification_spec', 'segmentation_spec', 'preprocess', 'as_spec',
           'read_spec', 'INTENSITY_MODES', 'SPATIAL_MODES', 'TASKS']

SCHEMA = 'mednext-zoo.preprocessing/1'
TASKS = ('classification', 'segmentation')
INTENSITY_MODES = ('window', 'file_window', 'minmax', 'zscore', 'none')
SPATIAL_MODES = ('resize', 'sliding_window')
MIN_SIDE = 16  # the smallest in-plane side the segmentation loader accepts (preprocess.check_volume_size)
_TOP_KEYS = ('schema', 'task', 'read', 'intensity', 'channels', 'spatial', 'normalize', 'output', 'summary')


@dataclass
class PreprocessingSpec:
    """How a raw file becomes the model input ``(N, C, H, W)`` float32.

    ``task`` ``classification``: one 2D image per input (a NIfTI volume gives one per slice, each read as
    :func:`mednext_zoo.data.load_image` reads it; Pillow images are [0, 1]: 8-bit / 255, 16-bit by min-max),
    ``intensity`` acts on DICOM / NIfTI values per image. ``segmentation``: a whole volume sliced along
    ``slice_axis`` (a 2D image is a one-slice volume, read as [0, 1] first), ``intensity`` acts on the whole volume.
    Then: channels (grey replicated to ``in_chans`` for classifiers; ``context`` adjacent slices as channels),
    ``spatial`` (resize every slice, or keep the native size for sliding-window inference over ``patch``), and
    ``(x - mean) / std`` per channel.
    """

    task: str
    in_chans: int
    intensity: Dict[str, Any]
    spatial: Dict[str, Any]
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    context: int = 1
    slice_axis: int = 2
    output: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.mean = tuple(float(v) for v in self.mean)
        self.std = tuple(float(v) for v in self.std)
        self.validate()

    # ------------------------------------------------------------ checks and JSON
    def validate(self, source: str = 'the preprocessing description') -> None:
        """Raise :class:`UserInputError` naming ``source`` and the field when the description is inconsistent."""
        def bad(msg: str) -> UserInputError:
            return UserInputError(f'{source}: {msg}')

        if self.task not in TASKS:
            raise bad(f'task {self.task!r} is not one of {", ".join(TASKS)}.')
        if self.in_chans < 1:
            raise bad(f'channels.in_chans must be at least 1, got {self.in_chans}.')
        if self.context < 1 or self.context % 2 == 0:
            raise bad(f'channels.context must be an odd number of slices (1, 3, 5, ...), got {self.context}.')
        if self.task == 'classification' and self.context != 1:
            raise bad('channels.context (2.5D) applies to segmentation; a classifier reads one image.')
        if self.context > 1 and self.in_chans != self.context:
            raise bad(f'channels.in_chans {self.in_chans} differs from channels.context {self.context} (2.5D '
                      f'input: one channel per slice).')
        if len(self.mean) != self.in_chans or len(self.std) != self.in_chans:
            raise bad(f'normalize.mean / std need {self.in_chans} values (one per channel), got '
                      f'{len(self.mean)} / {len(self.std)}.')
        if any(not math.isfinite(s) or s <= 0 for s in self.std) or any(not math.isfinite(m) for m in self.mean):
            raise bad(f'normalize.std must be positive and finite, mean finite (got {list(self.mean)} / '
                      f'{list(self.std)}).')
        mode = self.intensity.get('mode')
        if mode not in INTENSITY_MODES:
            raise bad(f'intensity.mode {mode!r} is not one of {", ".join(INTENSITY_MODES)}.')
        if mode == 'window':
            try:
                low, high = float(self.intensity['low']), float(self.intensity['high'])
            except (KeyError, TypeError, ValueError):
                raise bad('intensity mode "window" needs numbers "low" and "high" (HU).') from None
            if not high > low:
                raise bad(f'intensity window high {high:g} must exceed low {low:g}.')
            scale = self.intensity.get('scale', 'window')
            if scale not in ('window', 'data'):
                raise bad(f'intensity.scale must be "window" (by the window bounds) or "data" (by the clipped '
                          f'values\' own min / max), got {scale!r}.')
            if self.task == 'classification' and scale != 'window':
                raise bad('a classifier\'s window scales by the window bounds (intensity.scale "window").')
        if mode == 'file_window' and self.task != 'classification':
            raise bad('intensity mode "file_window" (the DICOM file\'s own window) applies to classification, '
                      'which reads DICOM files.')
        if mode in ('zscore', 'none') and self.task == 'classification':
            raise bad(f'intensity mode {mode!r} applies to segmentation; a classifier reads images through the '
                      f'window / min-max reader (modes window, file_window, minmax).')
        if mode == 'zscore' and ('mean' in self.intensity) != ('std' in self.intensity):
            raise bad('a fixed z-score needs both intensity.mean and intensity.std.')
        if mode == 'zscore' and 'std' in self.intensity and not float(self.intensity['std']) > 0:
            raise bad(f'intensity.std must be positive, got {self.intensity["std"]}.')
        smode = self.spatial.get('mode')
        if smode == 'resize':
            size = self.spatial.get('size')
            if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(int(s) >= 1 for s in size)):
                raise bad(f'spatial.size must be [H, W], got {size!r}.')
            if self.spatial.get('interpolation', 'bilinear') != 'bilinear':
                raise bad(f'spatial.interpolation {self.spatial.get("interpolation")!r}: only bilinear is '
                          f'implemented (every recipe of the package resizes bilinearly).')
        elif smode == 'sliding_window':
            patch = self.spatial.get('patch')
            if not (isinstance(patch, (list, tuple)) and len(patch) == 2 and all(int(s) >= 1 for s in patch)):
                raise bad(f'spatial.patch must be [H, W], got {patch!r}.')
            overlap = float(self.spatial.get('overlap', 0.5))
            if not 0 <= overlap < 1:
                raise bad(f'spatial.overlap must be in [0, 1), got {overlap}.')
            if self.spatial.get('blend', 'gaussian') not in ('gaussian', 'constant'):
                raise bad(f'spatial.blend must be gaussian or constant, got {self.spatial.get("blend")!r}.')
            if self.task != 'segmentation':
                raise bad('sliding-window inference applies to segmentation.')
        else:
            raise bad(f'spatial.mode {smode!r} is not one of {", ".join(SPATIAL_MODES)}.')

    @property
    def input_size(self) -> Tuple[int, int, int]:
        """The model input ``(C, H, W)``: the resize target, or the sliding-window patch."""
        hw = self.spatial['size'] if self.spatial['mode'] == 'resize' else self.spatial['patch']
        return (self.in_chans, int(hw[0]), int(hw[1]))

    @property
    def grey(self) -> str:
        """``replicate`` (a grey image is repeated to ``in_chans``) or ``single``."""
        return 'replicate' if self.task == 'classification' and self.in_chans == 3 else 'single'

    def to_dict(self) -> Dict[str, Any]:
        """The JSON form (see the module docstring)."""
        read: Dict[str, Any] = {'unit': 'image' if self.task == 'classification' else 'volume'}
        if self.task == 'segmentation':
            read['slice_axis'] = self.slice_axis
        spatial = dict(self.spatial)
        for key in ('size', 'patch'):
            if key in spatial:
                spatial[key] = [int(v) for v in spatial[key]]
        return {'schema': SCHEMA, 'task': self.task, 'read': read, 'intensity': dict(self.intensity),
                'channels': {'in_chans': self.in_chans, 'grey': self.grey, 'context': self.context},
                'spatial': spatial, 'normalize': {'mean': list(self.mean), 'std': list(self.std)},
                'output': dict(self.output), 'summary': self.summary()}

    def to_json(self) -> str:
        """``to_dict`` as indented JSON text."""
        return json.dumps(self.to_dict(), indent=2) + '\n'

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = 'the preprocessing description') -> PreprocessingSpec:
        """Read the JSON form back; a clear :class:`UserInputError` naming ``source`` for anything malformed."""
        if not isinstance(data, Mapping):
            raise UserInputError(f'{source}: a preprocessing description is a JSON object, got '
                                 f'{type(data).__name__}.')
        if data.get('schema') != SCHEMA:
            raise UserInputError(f'{source}: not a mednext-zoo preprocessing description (schema '
                                 f'{data.get("schema")!r}, expected {SCHEMA!r}).')
        unknown = sorted(set(data) - set(_TOP_KEYS))
        if unknown:
            raise UserInputError(f'{source}: unknown key(s) {", ".join(unknown)} (known: {", ".join(_TOP_KEYS)}).')
        try:
            channels, spatial, norm = data['channels'], data['spatial'], data['normalize']
            read = data.get('read') or {}
            spec = cls(task=data['task'], in_chans=int(channels['in_chans']), intensity=dict(data['intensity']),
                       spatial=dict(spatial), mean=tuple(norm['mean']), std=tuple(norm['std']),
                       context=int(channels.get('context', 1)), slice_axis=int(read.get('slice_axis', 2)),
                       output=dict(data.get('output') or {}))
        except UserInputError as e:
            raise UserInputError(f'{source}: {e}') from None
        except (KeyError, TypeError, ValueError) as e:
            raise UserInputError(f'{source}: malformed preprocessing description ({type(e).__name__}: {e}); '
                                 f'write it with PreprocessingSpec.to_json or take it from a run\'s '
                                 f'export/config.json.') from None
        spec.validate(source)
        return spec

    # ------------------------------------------------------------ the training settings it stands for
    def reader_window(self) -> Optional[str]:
        """The ``window`` argument of :func:`mednext_zoo.data.load_image` (classification): ``"LEVEL,WIDTH"``,
        ``"file"`` or ``None`` (min-max)."""
        mode = self.intensity['mode']
        if mode == 'window':
            low, high = float(self.intensity['low']), float(self.intensity['high'])
            return f'{(low + high) / 2:.17g},{high - low:.17g}'
        return 'file' if mode == 'file_window' else None

    def segmentation_settings(self) -> Dict[str, Any]:
        """The segmentation run settings (``img_size``, ``intensity``, ``window``, ``context``, ``slice_axis``,
        ``in_chans``, ``patch_size``, ``sw_overlap``, ``sw_mode``) this description stands for; raises
        :class:`UserInputError` for a recipe the segmentation loader does not have (a fixed z-score, a window
        scaled by its bounds)."""
        mode = self.intensity['mode']
        if mode == 'window' and self.intensity.get('scale', 'window') != 'data':
            raise UserInputError('a CT window scaled by its bounds is not a segmentation training recipe '
                                 '(training scales the clipped volume by its own range: scale "data").')
        if mode == 'zscore' and 'mean' in self.intensity:
            raise UserInputError('a fixed z-score is not a segmentation training recipe (training uses the '
                                 'volume\'s own mean and std).')
        intensity = {'window': 'ct'}.get(mode, mode)
        window = [float(self.intensity['low']), float(self.intensity['high'])] if mode == 'window' \
            else [-125.0, 275.0]
        out = {'intensity': intensity, 'window': window, 'context': self.context, 'slice_axis': self.slice_axis,
               'in_chans': self.in_chans}
        if self.spatial['mode'] == 'resize':
            out.update(img_size=int(self.spatial['size'][0]), patch_size=None)
        else:
            out.update(img_size=int(self.spatial['patch'][0]), patch_size=int(self.spatial['patch'][0]),
                       sw_overlap=float(self.spatial.get('overlap', 0.5)),
                       sw_mode=self.spatial.get('blend', 'gaussian'))
        return out

    def summary(self) -> str:
        """One line, e.g. ``CT window -125..275 HU scaled by the volume's range; 1 channel; resized to 224x224
        (bilinear); (x - 0) / 1``."""
        i = self.intensity
        mode = i['mode']
        unit = 'image' if self.task == 'classification' else 'volume'
        if mode == 'window':
            name = f' ({i["name"]})' if i.get('name') else ''
            by = 'the window' if i.get('scale', 'window') == 'window' else f"the {unit}'s clipped range"
            what = f'CT window {float(i["low"]):g}..{float(i["high"]):g} HU{name}, scaled to [0, 1] by {by}'
        elif mode == 'file_window':
            what = "the DICOM file's own window (VOI LUT), then min-max"
        elif mode == 'minmax':
            what = f'min-max per {unit}'
        elif mode == 'zscore':
            what = (f'z-score with mean {float(i["mean"]):g}, std {float(i["std"]):g}' if 'mean' in i
                    else f'z-score per {unit}')
        else:
            what = 'values as stored'
        if self.task == 'classification' and mode != 'none':
            what += ' (DICOM / NIfTI; 8-bit images / 255)'
        chans = f'{self.in_chans} channel{"s" if self.in_chans > 1 else ""}'
        if self.grey == 'replicate':
            chans += ' (grey repeated)'
        if self.context > 1:
            chans += f' ({self.context} adjacent slices, 2.5D)'
        s = self.spatial
        if s['mode'] == 'resize':
            where = (f'resized to {s["size"][0]}x{s["size"][1]} (bilinear'
                     f'{", antialiased" if s.get("antialias") else ""})')
        else:
            where = (f'native resolution, sliding window {s["patch"][0]}x{s["patch"][1]} (overlap '
                     f'{float(s.get("overlap", 0.5)):g}, {s.get("blend", "gaussian")} blend)')
        mean = '/'.join(f'{v:.4g}' for v in self.mean)
        std = '/'.join(f'{v:.4g}' for v in self.std)
        return f'{what}; {chans}; {where}; (x - {mean}) / {std}'


# ---------------------------------------------------------------- constructors from the training settings
def classification_spec(img_size: Union[int, Sequence[int]], in_chans: int, mean: Sequence[float],
                        std: Sequence[float], window: Union[None, str, Tuple[float, float]] = None,
                        temperature: float = 1.0, activation: str = 'softmax') -> PreprocessingSpec:
    """The classification recipe of :mod:`mednext_zoo.finetune`: read with ``window`` (a CT preset,
    ``"LEVEL,WIDTH"``, ``"file"`` or ``None`` for min-max), grey repeated to ``in_chans``, the whole image resized
    to ``img_size`` (bilinear, antialiased, no crop), ``(x - mean) / std``. ``temperature``: the run's fitted
    softmax temperature (recorded for runtimes; 1 when not fitted)."""
    from .io import CT_WINDOWS, Window, parse_window

    win = parse_window(window)
    if win is None:
        intensity: Dict[str, Any] = {'mode': 'minmax'}
    elif isinstance(win, Window):
        intensity = {'mode': 'window', 'low': win.level - win.width / 2.0, 'high': win.level + win.width / 2.0,
                     'scale': 'window'}
        name = str(window).strip().lower() if isinstance(window, str) else ''
        if name in CT_WINDOWS:
            intensity['name'] = name
    else:
        intensity = {'mode': 'file_window'}
    size = [int(img_size), int(img_size)] if isinstance(img_size, int) else [int(v) for v in img_size]
    return PreprocessingSpec(task='classification', in_chans=int(in_chans), intensity=intensity,
                             spatial={'mode': 'resize', 'size': size, 'interpolation': 'bilinear',
                                      'antialias': True},
                             mean=_per_channel(mean, in_chans), std=_per_channel(std, in_chans),
                             output={'activation': activation, 'temperature': float(temperature)})


def segmentation_spec(settings: Mapping[str, Any], mean: Optional[Sequence[float]] = None,
                      std: Optional[Sequence[float]] = None) -> PreprocessingSpec:
    """The segmentation recipe of a run's settings (``segmentation.json`` / the run's ``config.json``):
    ``intensity`` (``ct``: HU clipped to ``window`` and scaled by the clipped volume's own range; ``zscore`` /
    ``minmax`` per volume; ``none``), ``context`` slices as channels, slices resized to ``img_size`` (bilinear, not
    antialiased) -- or, with ``patch_size`` set, kept at native resolution for sliding-window inference
    (``sw_overlap``, ``sw_mode``) -- and no further normalisation (mean 0, std 1) unless ``mean`` / ``std`` say so."""
    try:
        intensity_mode = settings['intensity']
        in_chans = int(settings.get('in_chans') or settings.get('context') or 1)
        context = int(settings.get('context', 1) or 1)
        img_size = int(settings['img_size'])
    except (KeyError, TypeError, ValueError) as e:
        raise UserInputError(f'segmentation settings lack {e} (intensity, img_size): not a run\'s '
                             f'segmentation.json / config.json.') from None
    if intensity_mode == 'ct':
        lo, hi = (float(v) for v in settings.get('window') or (-125.0, 275.0))
        intensity: Dict[str, Any] = {'mode': 'window', 'low': lo, 'high': hi, 'scale': 'data'}
    elif intensity_mode in ('zscore', 'minmax', 'none'):
        intensity = {'mode': intensity_mode}
    else:
        raise UserInputError(f'segmentation intensity {intensity_mode!r} is not one of ct, zscore, minmax, none.')
    patch = settings.get('patch_size')
    if patch:
        spatial: Dict[str, Any] = {'mode': 'sliding_window', 'patch': [int(patch), int(patch)],
                                   'overlap': float(settings.get('sw_overlap', 0.5) if settings.get('sw_overlap')
                                                    is not None else 0.5),
                                   'blend': str(settings.get('sw_mode') or 'gaussian')}
    else:
        spatial = {'mode': 'resize', 'size': [img_size, img_size], 'interpolation': 'bilinear', 'antialias': False}
    return PreprocessingSpec(task='segmentation', in_chans=in_chans, intensity=intensity, spatial=spatial,
                             mean=_per_channel(mean if mean is not None else (0.0,), in_chans),
                             std=_per_channel(std if std is not None else (1.0,), in_chans),
                             context=context, slice_axis=int(settings.get('slice_axis', 2)),
                             output={'activation': 'softmax', 'label_map': 'argmax',
                                     'resize_back': None if patch else 'nearest'})


def _per_channel(values: Sequence[float], chans: int) -> Tuple[float, ...]:
    values = tuple(float(v) for v in values)
    if len(values) == chans:
        return values
    return tuple([float(np.mean(values))] * chans)


# ---------------------------------------------------------------- reading a description from where it is kept
def read_spec(path: Union[str, os.PathLike]) -> Optional[PreprocessingSpec]:
    """The description kept in ``path``: a JSON file holding one (a description, an artefact's
    ``preprocessing.json``, a Hub ``config.json`` with key ``preprocessing``, a run's ``segmentation.json``), or a
    folder holding such a file. ``None`` when a readable file holds none; :class:`UserInputError` for a path that
    is neither."""
    p = Path(path)
    if p.is_dir():
        for name in ('preprocessing.json', 'config.json', 'segmentation.json'):
            if (p / name).is_file():
                found = read_spec(p / name)
                if found is not None:
                    return found
        if (p / 'export').is_dir():  # a fine-tuning run folder: its export records the description
            return read_spec(p / 'export')
        return None
    if not p.is_file():
        raise UserInputError(f'{p} does not exist: give a preprocessing JSON file, or a folder written by '
                             f'`mednext-zoo export` / a fine-tuning run\'s export/.')
    try:
        data = json.loads(p.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserInputError(f'{p} is not valid JSON ({e}).') from None
    if not isinstance(data, dict):
        raise UserInputError(f'{p} holds no JSON object.')
    if data.get('schema') == SCHEMA:
        return PreprocessingSpec.from_dict(data, str(p))
    if isinstance(data.get('preprocessing'), dict):
        return PreprocessingSpec.from_dict(data['preprocessing'], f'{p} ("preprocessing")')
    if data.get('task') == 'segmentation' and 'intensity' in data and 'img_size' in data:
        return segmentation_spec(data)  # a run's segmentation.json / config.json (settings, no description yet)
    return None


def as_spec(description: Union[PreprocessingSpec, Mapping[str, Any], str, os.PathLike]) -> PreprocessingSpec:
    """A :class:`PreprocessingSpec` from itself, its JSON form, or a file / folder that holds one."""
    if isinstance(description, PreprocessingSpec):
        return description
    if isinstance(description, Mapping):
        return PreprocessingSpec.from_dict(description)
    spec = read_spec(description)
    if spec is None:
        raise UserInputError(f'{description} holds no preprocessing description: it was written before '
                             f'mednext-zoo recorded one. Export the run again (`mednext-zoo export RUN OUT`).')
    return spec


# ---------------------------------------------------------------- the recipe in numpy
def preprocess(path: Union[str, os.PathLike], description: Union[PreprocessingSpec, Mapping[str, Any], str,
                                                                 os.PathLike],
               slice_index: Optional[int] = None) -> np.ndarray:
    """The model inputs of one file as ``description`` says: float32 ``(N, C, H, W)``.

    Classification: ``N`` is 1 for a 2D image and the number of slices of a NIfTI volume (or 1 with
    ``slice_index``). Segmentation: ``N`` is the number of slices of the volume (1 for a 2D image), at the resize
    target, or at native resolution when ``spatial.mode`` is ``sliding_window`` (then run the model over
    ``spatial.patch`` windows, e.g. with MONAI's ``sliding_window_inference``).
    ``description``: a :class:`PreprocessingSpec`, its JSON form, or a file / folder holding one (an artefact
    folder, a Hub folder, a run's ``export/``). Uses numpy, Pillow, SciPy and the package's readers; no torch.
    """
    spec = as_spec(description)
    path = os.fspath(path)
    x = _read_image(path, spec, slice_index) if spec.task == 'classification' else _read_volume(path, spec,
                                                                                                slice_index)
    mean = np.asarray(spec.mean, dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(spec.std, dtype=np.float32).reshape(1, -1, 1, 1)
    return np.ascontiguousarray((x - mean) / std, dtype=np.float32)


def _channels_first(arr: np.ndarray) -> np.ndarray:
    return arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)


def _read_image(path: str, spec: PreprocessingSpec, slice_index: Optional[int]) -> np.ndarray:
    from .io import image_kind, load_image, nifti_num_slices

    if slice_index is None and image_kind(path) == 'nifti' and nifti_num_slices(path) > 1:
        slices: List[Optional[int]] = list(range(nifti_num_slices(path)))
    else:
        slices = [slice_index]
    window = spec.reader_window()
    out = []
    for k in slices:
        img = _channels_first(load_image(path, k, window))
        if img.shape[0] == 1 and spec.in_chans == 3:
            img = np.repeat(img, 3, axis=0)
        elif img.shape[0] != spec.in_chans:
            raise UserInputError(f'{path}: a {"colour" if img.shape[0] == 3 else "grey"} image, but the model '
                                 f'takes {spec.in_chans} channel(s).')
        out.append(_resize(img, spec))
    return np.stack(out)


def _read_volume(path: str, spec: PreprocessingSpec, slice_index: Optional[int]) -> np.ndarray:
    from .volumes import load_volume, record_of

    vol = load_volume(record_of(path), None, spec.slice_axis)
    h, w = vol.image.shape[1:3]
    if h < MIN_SIDE or w < MIN_SIDE:
        raise UserInputError(f'{path}: slices of {h}x{w} voxels are too small for the model; each in-plane side '
                             f'needs at least {MIN_SIDE} voxels. Check that the slice axis is right.')
    img = _intensity(vol.image, spec.intensity)
    if img.ndim == 4:  # colour 2D image: 1, H, W, 3
        if spec.context != 1:
            raise UserInputError(f'{path}: 2.5D context needs grayscale volumes, not colour images.')
        x = np.stack([_resize(np.moveaxis(s, -1, 0), spec) for s in img])
    else:
        x = np.stack([_resize(s[None], spec)[0] for s in img])  # D, H', W'
        d, k = x.shape[0], spec.context
        idx = np.clip(np.arange(d)[:, None] + (np.arange(k) - k // 2)[None], 0, d - 1)
        x = x[idx]  # D, k, H', W': channel j of slice z is slice z - k // 2 + j (edges repeated)
    if x.shape[1] != spec.in_chans:
        raise UserInputError(f'{path}: gives {x.shape[1]} channel(s) per slice, but the model takes '
                             f'{spec.in_chans}.')
    if slice_index is not None:
        if not 0 <= slice_index < x.shape[0]:
            raise UserInputError(f'slice {slice_index} is out of range for {path} ({x.shape[0]} slices).')
        x = x[slice_index:slice_index + 1]
    return x


def _intensity(volume: np.ndarray, intensity: Mapping[str, Any]) -> np.ndarray:
    """Segmentation intensity over the whole volume (the same arithmetic as finetune.segmentation.preprocess)."""
    mode = intensity['mode']
    v = volume.astype(np.float32)
    if mode == 'window':
        lo, hi = float(intensity['low']), float(intensity['high'])
        v = np.clip(v, lo, hi)
        if intensity.get('scale', 'window') == 'data':
            vmin, vmax = float(v.min()), float(v.max())
            return (v - vmin) / (vmax - vmin) if vmax > vmin else np.zeros_like(v)
        return (v - lo) / (hi - lo)
    if mode == 'zscore':
        if 'mean' in intensity:
            return (v - np.float32(intensity['mean'])) / np.float32(intensity['std'])
        std = float(v.std())
        return (v - float(v.mean())) / std if std > 0 else v - float(v.mean())
    if mode == 'minmax':
        vmin, vmax = float(v.min()), float(v.max())
        return (v - vmin) / (vmax - vmin) if vmax > vmin else np.zeros_like(v)
    return v  # none


def _resize(img: np.ndarray, spec: PreprocessingSpec) -> np.ndarray:
    """``C, H, W`` -> ``C, H', W'`` as ``spec.spatial`` says (unchanged for sliding-window inference)."""
    s = spec.spatial
    if s['mode'] != 'resize':
        return img.astype(np.float32)
    size = (int(s['size'][0]), int(s['size'][1]))
    if tuple(img.shape[-2:]) == size:
        return img.astype(np.float32)
    if s.get('antialias'):
        return np.stack([_resize_antialiased(c, size) for c in img])
    return np.stack([_resize_bilinear(c, size) for c in img])


def _resize_antialiased(img: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """Bilinear with an antialiasing filter when shrinking: Pillow's, which torchvision's ``antialias=True``
    reproduces (``Resize`` in :func:`mednext_zoo.data.build_transforms`)."""
    from PIL import Image

    out = Image.fromarray(np.ascontiguousarray(img, dtype=np.float32)).resize((size[1], size[0]), Image.BILINEAR)
    return np.asarray(out, dtype=np.float32)


def _resize_bilinear(img: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """Plain bilinear, pixel centres aligned (``F.interpolate(mode='bilinear', align_corners=False)``, edges
    clamped): source coordinate ``(o + 0.5) * in / out - 0.5``."""
    try:
        from scipy import ndimage
    except ImportError:  # pragma: no cover
        raise UserInputError('Segmentation preprocessing needs SciPy: pip install "mednext-zoo[medical]".') from None
    h, w = img.shape
    sh, sw = h / size[0], w / size[1]
    return ndimage.affine_transform(np.asarray(img, dtype=np.float32), (sh, sw), offset=(0.5 * sh - 0.5,
                                                                                       0.5 * sw - 0.5),
                                    output_shape=size, order=1, mode='nearest', output=np.float32)
