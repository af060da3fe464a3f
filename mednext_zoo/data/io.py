"""Reading one 2D image from disk: Pillow formats, DICOM (HU + windows) and NIfTI slices.

Every reader returns a float32 array in [0, 1] shaped ``(H, W)`` (grayscale) or ``(H, W, 3)`` (colour).
A NIfTI slice is addressed as ``path`` plus a slice index (``None`` picks the middle slice).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, Optional, Tuple, Union

import numpy as np

from ..errors import UserInputError

__all__ = [
    'CT_WINDOWS', 'Window', 'parse_window', 'image_kind', 'load_image', 'probe_image', 'nifti_num_slices',
    'PIL_EXTS', 'DICOM_EXTS', 'NIFTI_EXTS', 'SUPPORTED_EXTS',
]

PIL_EXTS = ('.png', '.jpg', '.jpeg', '.tif', '.tiff', '.bmp')
DICOM_EXTS = ('.dcm', '.dicom')
NIFTI_EXTS = ('.nii', '.nii.gz')
SUPPORTED_EXTS = PIL_EXTS + DICOM_EXTS + NIFTI_EXTS

# Window (level, width) in Hounsfield units, the usual radiology presets.
CT_WINDOWS: Dict[str, Tuple[float, float]] = {
    'lung': (-600.0, 1500.0),
    'mediastinum': (50.0, 350.0),
    'abdomen': (40.0, 400.0),
    'brain': (40.0, 80.0),
    'bone': (400.0, 1800.0),
}


FILE_WINDOW = 'file'  # use the DICOM file's own VOI LUT / WindowCenter-WindowWidth


@dataclass(frozen=True)
class Window:
    """A display window: values in ``[level - width / 2, level + width / 2]`` map linearly to ``[0, 1]``."""
    level: float
    width: float

    def apply(self, x: np.ndarray) -> np.ndarray:
        lo = self.level - self.width / 2.0
        return np.clip((x - lo) / self.width, 0.0, 1.0).astype(np.float32)


def parse_window(spec: Union[None, str, Tuple[float, float], Window]) -> Union[None, str, Window]:
    """``None`` (min-max scaling), a preset name (``lung``, ``bone`` ...), ``"LEVEL,WIDTH"``, a tuple, or
    ``"file"`` (the DICOM file's own window / VOI LUT; min-max where a file has none)."""
    if spec is None or isinstance(spec, Window) or spec == FILE_WINDOW:
        return spec
    if isinstance(spec, (tuple, list)):
        level, width = float(spec[0]), float(spec[1])
    else:
        s = str(spec).strip().lower()
        if s in ('', 'none', 'minmax', 'auto'):
            return None
        if s in CT_WINDOWS:
            level, width = CT_WINDOWS[s]
        else:
            parts = s.replace(':', ',').split(',')
            try:
                level, width = float(parts[0]), float(parts[1])
                if len(parts) != 2:
                    raise ValueError
            except (ValueError, IndexError):
                raise UserInputError(
                    f'Unknown window {spec!r}: use a preset ({", ".join(CT_WINDOWS)}), "LEVEL,WIDTH" in HU '
                    f'(e.g. "40,400") or "file" for the DICOM file\'s own window.') from None
    if width <= 0:
        raise UserInputError(f'Window width must be positive, got {width} (window {spec!r}).')
    return Window(level, width)


def image_kind(path: Union[str, os.PathLike]) -> Optional[str]:
    """``'pil'``, ``'dicom'``, ``'nifti'`` from the file name, or ``None`` if not an image we read."""
    name = os.fspath(path).lower()
    if name.endswith(NIFTI_EXTS):
        return 'nifti'
    if name.endswith(DICOM_EXTS):
        return 'dicom'
    if name.endswith(PIL_EXTS):
        return 'pil'
    return None


def _minmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32)
    lo, hi = float(np.min(x)), float(np.max(x))
    if hi <= lo:
        return np.zeros_like(x, dtype=np.float32)
    return (x - lo) / (hi - lo)


# ---------------------------------------------------------------- Pillow
_PIL_GRAY_MODES = ('1', 'L', 'LA', 'I', 'I;16', 'I;16B', 'I;16L', 'F')


def _load_pil(path: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode in ('L', 'LA', '1'):
                return np.asarray(im.convert('L'), dtype=np.float32) / 255.0
            if mode in _PIL_GRAY_MODES:  # 16-bit / 32-bit grayscale: scale by the data range
                return _minmax(np.asarray(im, dtype=np.float32))
            return np.asarray(im.convert('RGB'), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise UserInputError(f'Cannot read image {path}: {e}. Fix or remove the file '
                             f'(or pass --on-bad-file skip).') from None


def _probe_pil(path: str) -> int:
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as im:
            mode = im.mode
            im.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise UserInputError(f'Cannot read image {path}: {e}. Fix or remove the file '
                             f'(or pass --on-bad-file skip).') from None
    return 1 if mode in _PIL_GRAY_MODES else 3


# ---------------------------------------------------------------- DICOM
def _read_dicom(path: str, stop_before_pixels: bool = False):
    try:
        import pydicom
    except ImportError:  # pragma: no cover
        raise UserInputError('Reading DICOM needs pydicom: pip install "mednext-zoo[medical]".') from None
    from pydicom.errors import InvalidDicomError
    try:
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except (InvalidDicomError, OSError, EOFError, ValueError) as e:
        raise UserInputError(f'Cannot read DICOM file {path}: {e}. Fix or remove the file '
                             f'(or pass --on-bad-file skip).') from None


def _check_dicom_header(ds, path: str) -> int:
    frames = int(ds.get('NumberOfFrames', 1) or 1)
    if frames > 1:
        raise UserInputError(
            f'DICOM file {path} is multi-frame ({frames} frames); only single-frame 2D images are supported. '
            f'Split it into one file per frame (e.g. with pydicom) or export the frames as images.')
    if 'PixelData' not in ds and 'FloatPixelData' not in ds and 'DoubleFloatPixelData' not in ds:
        raise UserInputError(f'DICOM file {path} has no pixel data.')
    return 3 if int(ds.get('SamplesPerPixel', 1) or 1) == 3 else 1


def _load_dicom(path: str, window: Union[None, str, Window]) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut
    ds = _read_dicom(path)
    chans = _check_dicom_header(ds, path)
    try:
        arr = ds.pixel_array
    except Exception as e:  # pydicom raises many types for undecodable pixel data
        raise UserInputError(f'Cannot decode the pixels of DICOM file {path}: {e}.') from None
    if chans == 3:
        if str(ds.get('PhotometricInterpretation', '')).startswith('YBR'):
            from pydicom.pixels import convert_color_space
            arr = convert_color_space(arr, ds.PhotometricInterpretation, 'RGB')
        return _minmax(arr) if arr.dtype != np.uint8 else arr.astype(np.float32) / 255.0
    values = apply_modality_lut(arr, ds).astype(np.float32)  # CT: Hounsfield units
    if window == FILE_WINDOW:
        has_voi = 'VOILUTSequence' in ds or ('WindowCenter' in ds and 'WindowWidth' in ds)
        out = _minmax(apply_voi_lut(values, ds)) if has_voi else _minmax(values)
    elif window is not None:
        out = window.apply(values)
    else:
        out = _minmax(values)
    if str(ds.get('PhotometricInterpretation', '')).upper() == 'MONOCHROME1':
        out = 1.0 - out  # MONOCHROME1: low values are displayed white
    return out


# ---------------------------------------------------------------- NIfTI
def _nib_load(path: str):
    try:
        import nibabel as nib
    except ImportError:  # pragma: no cover
        raise UserInputError('Reading NIfTI needs nibabel: pip install "mednext-zoo[medical]".') from None
    try:
        return nib.load(path)
    except Exception as e:  # nibabel raises ImageFileError, OSError, EOFError...
        raise UserInputError(f'Cannot read NIfTI file {path}: {e}. Fix or remove the file '
                             f'(or pass --on-bad-file skip).') from None


def nifti_num_slices(path: Union[str, os.PathLike]) -> int:
    """Number of 2D slices along the last spatial axis (1 for a 2D image)."""
    img = _nib_load(os.fspath(path))
    shape = tuple(int(s) for s in img.shape)
    if len(shape) > 4 or (len(shape) == 4 and shape[3] != 1):
        raise UserInputError(f'NIfTI file {path} has shape {shape}; expected a 2D image or a 3D volume.')
    return 1 if len(shape) == 2 else shape[2]


def _load_nifti(path: str, slice_index: Optional[int], window: Union[None, str, Window]) -> np.ndarray:
    img = _nib_load(path)
    n = nifti_num_slices(path)
    idx = n // 2 if slice_index is None else int(slice_index)
    if not 0 <= idx < n:
        raise UserInputError(f'Slice {idx} is out of range for NIfTI file {path} ({n} slices).')
    try:
        data = np.asarray(img.dataobj[..., idx] if len(img.shape) >= 3 else img.dataobj, dtype=np.float32)
    except Exception as e:
        raise UserInputError(f'Cannot read slice {idx} of NIfTI file {path}: {e}.') from None
    data = np.squeeze(data)
    data = np.rot90(data)  # NIfTI stores (x, y): show rows top-down like a radiology viewer
    return window.apply(data) if isinstance(window, Window) else _minmax(data)


# ---------------------------------------------------------------- public
def load_image(
        path: Union[str, os.PathLike],
        slice_index: Optional[int] = None,
        window: Union[None, str, Tuple[float, float], Window] = None,
) -> np.ndarray:
    """Read a 2D image as float32 in [0, 1], ``(H, W)`` for grayscale or ``(H, W, 3)`` for colour.

    Args:
        path: PNG / JPEG / TIFF / BMP, DICOM (``.dcm``) or NIfTI (``.nii``, ``.nii.gz``).
        slice_index: NIfTI slice along the last axis (``None``: the middle slice).
        window: For DICOM / NIfTI intensities: a CT preset, ``"LEVEL,WIDTH"`` in HU, ``"file"`` (the DICOM's
            own window), or ``None`` for min-max scaling. DICOM values are first rescaled to HU with the
            modality LUT, and MONOCHROME1 images are inverted so that high values are bright.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserInputError(f'Image file {path} does not exist.')
    kind = image_kind(path)
    win = parse_window(window)
    if kind == 'pil':
        return _load_pil(path)
    if kind == 'dicom':
        return _load_dicom(path, win)
    if kind == 'nifti':
        return _load_nifti(path, slice_index, win)
    raise UserInputError(f'Unsupported file type {path}; supported extensions: {", ".join(SUPPORTED_EXTS)}.')


def probe_image(path: Union[str, os.PathLike]) -> int:
    """Check that ``path`` opens (header and structure) and return its channel count (1 or 3).

    Cheap compared to :func:`load_image`; raises :class:`UserInputError` naming the file if it is unreadable.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserInputError(f'Image file {path} does not exist.')
    kind = image_kind(path)
    if kind == 'pil':
        return _probe_pil(path)
    if kind == 'dicom':
        return _check_dicom_header(_read_dicom(path), path)
    if kind == 'nifti':
        nifti_num_slices(path)
        return 1
    raise UserInputError(f'Unsupported file type {path}; supported extensions: {", ".join(SUPPORTED_EXTS)}.')
