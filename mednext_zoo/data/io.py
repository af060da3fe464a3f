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
from ._untrusted import SKIP_HINT, check_declared_size, check_finite, check_gzip_complete, reading

__all__ = [
    'CT_WINDOWS', 'Window', 'parse_window', 'image_kind', 'load_image', 'probe_image', 'nifti_num_slices',
    'check_nifti_header',
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
        """Map ``x`` (e.g. HU) to float32 in ``[0, 1]``, clipping values outside the window; same shape as ``x``."""
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


def _minmax(x: np.ndarray, path: str = '') -> np.ndarray:
    x = check_finite(np.asarray(x, dtype=np.float32), path)
    if x.size == 0:
        raise UserInputError(f'{path}: the image is empty (shape {x.shape}). {SKIP_HINT}')
    lo, hi = float(np.min(x)), float(np.max(x))
    if hi <= lo:
        return np.zeros_like(x, dtype=np.float32)
    return (x - lo) / (hi - lo)


# ---------------------------------------------------------------- Pillow
_PIL_GRAY_MODES = ('1', 'L', 'LA', 'I', 'I;16', 'I;16B', 'I;16L', 'F')


def _open_pil(path: str):
    """Open with Pillow, refusing an empty image; Pillow itself refuses decompression bombs (more than
    twice ``Image.MAX_IMAGE_PIXELS``) before decoding."""
    from PIL import Image
    im = Image.open(path)
    if im.width <= 0 or im.height <= 0:
        im.close()
        raise UserInputError(f'{path}: the image is empty ({im.width}x{im.height}). {SKIP_HINT}')
    return im


def _load_pil(path: str) -> np.ndarray:
    with reading(path, 'image'), _open_pil(path) as im:
        im.load()
        mode = im.mode
        if mode in ('L', 'LA', '1'):
            return np.asarray(im.convert('L'), dtype=np.float32) / 255.0
        if mode in _PIL_GRAY_MODES:  # 16-bit / 32-bit grayscale: scale by the data range
            return _minmax(np.asarray(im, dtype=np.float32), path)
        return np.asarray(im.convert('RGB'), dtype=np.float32) / 255.0


def _probe_pil(path: str) -> int:
    """Channel count after a full decode: ``verify()`` alone passes a truncated JPEG. JPEGs decode at reduced
    scale (``draft``), which still reads every byte of the entropy-coded data."""
    with reading(path, 'image'):
        with _open_pil(path) as im:
            mode = im.mode
            im.verify()  # chunk CRCs (PNG)
        with _open_pil(path) as im:
            im.draft(im.mode, (max(1, im.width // 8), max(1, im.height // 8)))
            im.load()
    return 1 if mode in _PIL_GRAY_MODES else 3


# ---------------------------------------------------------------- DICOM
def _read_dicom(path: str, stop_before_pixels: bool = False):
    try:
        import pydicom
    except ImportError:  # pragma: no cover
        raise UserInputError('Reading DICOM needs pydicom: pip install "mednext-zoo[medical]".') from None
    with reading(path, 'DICOM file'):
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)


def _check_dicom_header(ds, path: str) -> int:
    """Channel count; refuses multi-frame files, missing pixel data and a declared size the file cannot hold."""
    with reading(path, 'DICOM file'):
        frames = int(ds.get('NumberOfFrames', 1) or 1)
        if frames > 1:
            raise UserInputError(
                f'DICOM file {path} is multi-frame ({frames} frames); only single-frame 2D images are supported. '
                f'Split it into one file per frame (e.g. with pydicom) or export the frames as images.')
        if 'PixelData' not in ds and 'FloatPixelData' not in ds and 'DoubleFloatPixelData' not in ds:
            raise UserInputError(f'DICOM file {path} has no pixel data.')
        samples = int(ds.get('SamplesPerPixel', 1) or 1)
        rows, cols, bits = int(ds.get('Rows', 0) or 0), int(ds.get('Columns', 0) or 0), \
            int(ds.get('BitsAllocated', 0) or 0)
        if samples not in (1, 3):
            raise UserInputError(f'DICOM file {path} has {samples} samples per pixel; 1 (grayscale) or 3 (colour) '
                                 f'are supported. {SKIP_HINT}')
        if bits not in (1, 8, 16, 32, 64):
            raise UserInputError(f'DICOM file {path} declares BitsAllocated {bits}. {SKIP_HINT}')
        itemsize = max(1, bits // 8)
        encapsulated = 'PixelData' in ds and ds.file_meta.get('TransferSyntaxUID') is not None \
            and ds.file_meta.TransferSyntaxUID.is_encapsulated
        available = None
        if not encapsulated:
            elem = next(ds[k] for k in ('PixelData', 'FloatPixelData', 'DoubleFloatPixelData') if k in ds)
            length = len(elem.value) if elem.value is not None else 0
            available = length * 8 if bits == 1 else length  # 1-bit data is packed eight pixels per byte
        check_declared_size(path, (rows, cols, samples), itemsize, available=available)
    return 3 if samples == 3 else 1


def _load_dicom(path: str, window: Union[None, str, Window]) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut
    ds = _read_dicom(path)
    chans = _check_dicom_header(ds, path)
    with reading(path, 'DICOM pixel data of'):
        arr = ds.pixel_array
        if arr.ndim != (3 if chans == 3 else 2):
            raise UserInputError(f'DICOM file {path}: pixel array of shape {arr.shape} for a single '
                                 f'{"colour" if chans == 3 else "grayscale"} frame. {SKIP_HINT}')
        if chans == 3:
            if str(ds.get('PhotometricInterpretation', '')).startswith('YBR'):
                from pydicom.pixels import convert_color_space
                arr = convert_color_space(arr, ds.PhotometricInterpretation, 'RGB')
            return _minmax(arr, path) if arr.dtype != np.uint8 else arr.astype(np.float32) / 255.0
        values = check_finite(apply_modality_lut(arr, ds).astype(np.float32), path)  # CT: Hounsfield units
        if window == FILE_WINDOW:
            has_voi = 'VOILUTSequence' in ds or ('WindowCenter' in ds and 'WindowWidth' in ds)
            out = _minmax(apply_voi_lut(values, ds), path) if has_voi else _minmax(values, path)
        elif window is not None:
            out = window.apply(values)
        else:
            out = _minmax(values, path)
        if str(ds.get('PhotometricInterpretation', '')).upper() == 'MONOCHROME1':
            out = 1.0 - out  # MONOCHROME1: low values are displayed white
        return out


# ---------------------------------------------------------------- NIfTI
def _nib_load(path: str):
    """A lazily loaded NIfTI image whose header passed :func:`check_nifti_header` (no voxel read yet)."""
    try:
        import nibabel as nib
    except ImportError:  # pragma: no cover
        raise UserInputError('Reading NIfTI needs nibabel: pip install "mednext-zoo[medical]".') from None
    with reading(path, 'NIfTI file'):
        img = nib.load(path)
        check_nifti_header(img, path)
    return img


def check_nifti_header(img, path: str) -> None:
    """Refuse a NIfTI header whose voxel array the file cannot hold (truncated file, damaged header).

    Uncompressed: the declared bytes must fit after ``vox_offset``. ``.nii.gz``: the declared bytes must be
    within deflate's reach of the file size, and the gzip stream must be complete.
    """
    with reading(path, 'NIfTI file'):
        hdr = img.header
        shape = tuple(int(s) for s in hdr.get_data_shape())
        dtype = np.dtype(hdr.get_data_dtype())
        offset = int(hdr.get('vox_offset', 0) or 0) if hasattr(hdr, 'get') else 0
        size = os.path.getsize(path)
        if not shape:
            raise UserInputError(f'{path}: the NIfTI header declares no dimensions. {SKIP_HINT}')
        if path.lower().endswith('.gz'):
            nbytes = check_declared_size(path, shape, dtype.itemsize, compressed=size)
            check_gzip_complete(path, expected=offset + nbytes)
        else:
            check_declared_size(path, shape, dtype.itemsize, available=size - offset)
        if dtype.kind not in 'biuf' or dtype.names is not None:
            raise UserInputError(f'{path}: voxel type {dtype} (e.g. complex or RGB) is not a scalar intensity; '
                                 f'convert the image to a grayscale integer or float type. {SKIP_HINT}')


def nifti_num_slices(path: Union[str, os.PathLike]) -> int:
    """Number of 2D slices along the last spatial axis (1 for a 2D image)."""
    img = _nib_load(os.fspath(path))
    shape = tuple(int(s) for s in img.shape)
    if len(shape) > 4 or len(shape) < 2 or (len(shape) == 4 and shape[3] != 1):
        raise UserInputError(f'NIfTI file {path} has shape {shape}; expected a 2D image or a 3D volume.')
    return 1 if len(shape) == 2 else shape[2]


def _load_nifti(path: str, slice_index: Optional[int], window: Union[None, str, Window]) -> np.ndarray:
    img = _nib_load(path)
    n = nifti_num_slices(path)
    idx = n // 2 if slice_index is None else int(slice_index)
    if not 0 <= idx < n:
        raise UserInputError(f'Slice {idx} is out of range for NIfTI file {path} ({n} slices).')
    with reading(path, f'slice {idx} of NIfTI file'):
        data = np.asarray(img.dataobj[..., idx] if len(img.shape) >= 3 else img.dataobj, dtype=np.float32)
    data = check_finite(np.squeeze(data), path)
    data = np.rot90(data)  # NIfTI stores (x, y): show rows top-down like a radiology viewer
    return window.apply(data) if isinstance(window, Window) else _minmax(data, path)


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
    """Check that ``path`` can be loaded and return its channel count (1 or 3), without normalising it.

    Pillow formats are decoded (JPEG at reduced scale); DICOM headers are read and the pixel data's length is
    checked against the declared size; NIfTI headers are checked against the file size (and a ``.nii.gz``
    stream for completeness). Raises :class:`UserInputError` naming the file if it is unreadable, so that
    ``--on-bad-file skip`` can drop it before training rather than fail in the middle of an epoch.
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
