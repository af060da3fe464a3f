"""Readers under fuzzing (issue 12, item 9): every damaged, odd or hostile file gives a ``UserInputError`` naming
the file (or is skipped under ``on_bad_file='skip'``, and counted) -- never another exception, never a hang, never
a huge allocation.

Inputs are real sample files (pydicom's CT_small.dcm / MR_small.dcm, nibabel's standard.nii.gz, PNG / JPEG /
TIFF written from scikit-image's sample images) mutated at the byte level (truncation, bit flips, header bytes
overwritten, header fields edited with valid checksums), plus files generated from hypothesis-drawn arrays
(NaN / inf voxels, zero-size dimensions, unusual dtypes, label maps with unexpected values) and manifests
(bad paths, encodings, extra fields, damaged JSON).

Runs derandomized with a bounded number of examples per reader. The per-reader counts are printed at the end of
the module. ``MEDNEXT_FUZZ_AUDIT=1`` records escaped exceptions instead of failing, to audit another version of
the readers (``PYTHONPATH=<old checkout> MEDNEXT_FUZZ_AUDIT=1 python -m pytest tests/test_fuzz_readers.py``).
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import os
import shutil
import struct
import tracemalloc
import warnings
import zlib
from collections import Counter, defaultdict
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

hypothesis = pytest.importorskip('hypothesis')
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

nib = pytest.importorskip('nibabel')
pydicom = pytest.importorskip('pydicom')
from PIL import Image  # noqa: E402

from mednext_zoo.data import images as images_mod  # noqa: E402
from mednext_zoo.data.io import load_image, probe_image  # noqa: E402
from mednext_zoo.data.labels import ACDC_LABEL_MAP, read_dataset_json  # noqa: E402
from mednext_zoo.data.volumes import VolumeRecord, discover, load_volume  # noqa: E402
from mednext_zoo.errors import UserInputError  # noqa: E402

pytestmark = [pytest.mark.timeout(300), pytest.mark.filterwarnings('ignore')]

AUDIT = os.environ.get('MEDNEXT_FUZZ_AUDIT') == '1'
N = int(os.environ.get('MEDNEXT_FUZZ_EXAMPLES', '60'))
FUZZ = settings(max_examples=N, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large, HealthCheck.large_base_example])
STATS: dict = defaultdict(Counter)
ESCAPED: dict = defaultdict(list)


# ---------------------------------------------------------------- the property
def attempt(reader: str, fn, *paths, check=None):
    """Run ``fn()``: it must return (then ``check(result)`` must hold) or raise a UserInputError naming a file
    of ``paths``. Counts every case under ``reader``."""
    STATS[reader]['tried'] += 1
    names = [os.path.basename(os.fspath(p)) for p in paths]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            out = fn()
    except UserInputError as e:
        if not any(n in str(e) for n in names):
            return _escaped(reader, AssertionError(f'UserInputError that names none of {names}: {e}'), paths)
        STATS[reader]['refused'] += 1
        return None
    except Exception as e:
        return _escaped(reader, e, paths)
    if check is not None:
        try:
            check(out)
        except AssertionError as e:
            return _escaped(reader, e, paths)
    STATS[reader]['loaded'] += 1
    return out


def _escaped(reader, e, paths):
    STATS[reader]['escaped'] += 1
    ESCAPED[reader].append(f'{type(e).__name__}: {str(e)[:160]}')
    if AUDIT:
        return None
    raise AssertionError(f'{reader}: {type(e).__name__} escaped for {[os.fspath(p) for p in paths]}: {e}') from e


@contextmanager
def small_allocations(what: str, limit_mb: int = 256):
    """The block must not allocate more than ``limit_mb`` (numpy reports its buffers to tracemalloc): a header
    declaring a gigantic array is refused before the array exists."""
    tracemalloc.start()
    try:
        yield
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < limit_mb * 2 ** 20, f'{peak / 2 ** 20:.0f} MiB allocated for {what}'


def _check_image(arr):
    assert isinstance(arr, np.ndarray) and arr.dtype == np.float32, type(arr)
    assert arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3), arr.shape
    assert arr.size and np.isfinite(arr).all(), 'empty or non-finite image'
    assert arr.min() >= 0.0 and arr.max() <= 1.0, (arr.min(), arr.max())


def _check_volume(vol):
    assert vol.image.dtype == np.float32 and vol.image.ndim in (3, 4) and vol.image.size
    assert np.isfinite(vol.image).all(), 'non-finite voxels'
    if vol.label is not None:
        assert vol.label.dtype == np.int16 and vol.label.shape == vol.image.shape[:3]
        assert vol.label.min() >= 0


@pytest.fixture(scope='module', autouse=True)
def _report(request):
    """Print the cases tried per reader (and anything that escaped, in audit mode) after the module."""
    yield
    tr = request.config.pluginmanager.get_plugin('terminalreporter')
    lines = [f'{"reader":<28} {"tried":>6} {"loaded":>7} {"refused":>8} {"escaped":>8}']
    for reader, c in sorted(STATS.items()):
        lines.append(f'{reader:<28} {c["tried"]:>6} {c["loaded"]:>7} {c["refused"]:>8} {c["escaped"]:>8}')
    total = sum((Counter(c) for c in STATS.values()), Counter())
    lines.append(f'{"total":<28} {total["tried"]:>6} {total["loaded"]:>7} {total["refused"]:>8} {total["escaped"]:>8}')
    for reader, errs in sorted(ESCAPED.items()):
        for kind, n in Counter(e.split(':')[0] for e in errs).most_common():
            example = next(e for e in errs if e.startswith(kind))
            lines.append(f'  escaped in {reader}: {n} x {example}')
    text = '\n'.join(['', 'fuzzing readers (tests/test_fuzz_readers.py):', *lines])
    out = os.environ.get('MEDNEXT_FUZZ_SUMMARY')
    if out:
        Path(out).write_text(text + '\n')
    if tr is not None:
        tr.write_line(text)


# ---------------------------------------------------------------- sample files
def _png_bytes(arr, fmt='PNG', **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope='module')
def samples():
    from pydicom.data import get_testdata_file
    from skimage import data as skdata
    from skimage.transform import resize

    gray = (resize(skdata.camera(), (48, 40)) * 255).astype(np.uint8)
    rgb = (resize(skdata.astronaut(), (40, 48)) * 255).astype(np.uint8)
    std = Path(nib.__file__).parent / 'tests' / 'data' / 'standard.nii.gz'
    std_bytes = std.read_bytes()
    return {
        'png': _png_bytes(gray),
        'png_rgb': _png_bytes(rgb),
        'png16': _png_bytes(gray.astype(np.uint16) * 200),
        'jpg': _png_bytes(rgb, 'JPEG', quality=90),
        'tif': _png_bytes(gray.astype(np.float32) / 7.0, 'TIFF'),
        'ct': Path(get_testdata_file('CT_small.dcm')).read_bytes(),
        'mr': Path(get_testdata_file('MR_small.dcm')).read_bytes(),
        'nii_gz': std_bytes,
        'nii': gzip.decompress(std_bytes),
    }


@st.composite
def mutated(draw, data: bytes, header: int = 512):
    """``data`` truncated, bit-flipped, with header bytes overwritten, or with a chunk cut out / repeated."""
    kind = draw(st.sampled_from(['truncate', 'flip', 'header', 'splice']))
    n = len(data)
    if kind == 'truncate':
        return data[:draw(st.integers(0, n - 1))]
    buf = bytearray(data)
    if kind == 'flip':
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, n - 1))
            buf[i] ^= 1 << draw(st.integers(0, 7))
        return bytes(buf)
    if kind == 'header':
        for _ in range(draw(st.integers(1, 6))):
            i = draw(st.integers(0, min(header, n) - 1))
            buf[i] = draw(st.integers(0, 255))
        return bytes(buf)
    i = draw(st.integers(0, n - 1))
    j = draw(st.integers(i, min(n, i + 256)))
    return bytes(buf[:i] + (buf[i:j] * 2 if draw(st.booleans()) else b'') + buf[j:])


def _write(folder: Path, name: str, data: bytes) -> Path:
    p = folder / name
    p.write_bytes(data)
    return p


def _load_and_probe(reader, path):
    attempt(f'{reader} probe_image', lambda: probe_image(path), path)
    attempt(f'{reader} load_image', lambda: load_image(path), path, check=_check_image)


# ---------------------------------------------------------------- 2D readers (data/io.py)
@pytest.mark.parametrize('key, name', [('png', 'x.png'), ('png_rgb', 'x.png'), ('png16', 'x.png'), ('jpg', 'x.jpg'),
                                       ('tif', 'x.tif')])
def test_pil_byte_mutations(samples, tmp_path, key, name):
    @FUZZ
    @given(data=mutated(samples[key], header=64))
    def run(data):
        _load_and_probe('pil', _write(tmp_path, name, data))
    run()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack('>I', len(payload)) + kind + payload + struct.pack('>I', zlib.crc32(kind + payload))


@FUZZ
@given(width=st.sampled_from([0, 1, 7, 2 ** 16, 2 ** 31 - 1]), height=st.sampled_from([0, 1, 5, 2 ** 16, 2 ** 31 - 1]),
       depth=st.sampled_from([1, 2, 4, 8, 16, 3]), color=st.sampled_from([0, 2, 3, 4, 6, 5]),
       idat=st.binary(max_size=64))
def test_png_header_fields(tmp_path_factory, width, height, depth, color, idat):
    """IHDR edited with a valid CRC (so it is parsed): zero, odd and gigantic sizes, invalid depth / colour."""
    ihdr = struct.pack('>IIBBBBB', width, height, depth, color, 0, 0, 0)
    data = b'\x89PNG\r\n\x1a\n' + _png_chunk(b'IHDR', ihdr) + _png_chunk(b'IDAT', zlib.compress(idat)) + \
        _png_chunk(b'IEND', b'')
    folder = tmp_path_factory.mktemp('png')
    path = _write(folder, 'hdr.png', data)
    with small_allocations(f'a {len(data)}-byte PNG'):
        _load_and_probe('pil header', path)


@pytest.mark.parametrize('key', ['ct', 'mr'])
def test_dicom_byte_mutations(samples, tmp_path, key):
    @FUZZ
    @given(data=mutated(samples[key], header=1024))
    def run(data):
        _load_and_probe('dicom', _write(tmp_path, 'x.dcm', data))
    run()


_DICOM_EDITS = {
    'Rows': st.sampled_from([0, 1, 127, 129, 4096, 65535]),
    'Columns': st.sampled_from([0, 1, 63, 65, 4096, 65535]),
    'BitsAllocated': st.sampled_from([0, 1, 7, 8, 12, 16, 32, 64]),
    'BitsStored': st.sampled_from([0, 1, 8, 12, 16, 40]),
    'SamplesPerPixel': st.sampled_from([0, 1, 2, 3, 4]),
    'PixelRepresentation': st.sampled_from([0, 1, 2]),
    'NumberOfFrames': st.sampled_from(['1', '2', '0', '-3', 'abc', '1e9']),
    'RescaleSlope': st.sampled_from(['1', '0', 'nan', 'inf', '-1e308', 'x']),
    'RescaleIntercept': st.sampled_from(['0', 'nan', '-inf', '1e400']),
    'PhotometricInterpretation': st.sampled_from(['MONOCHROME1', 'MONOCHROME2', 'RGB', 'YBR_FULL', 'PALETTE COLOR',
                                                  'WHATEVER']),
    'WindowCenter': st.sampled_from(['40', 'nan', '1e39', 'a']),
    'WindowWidth': st.sampled_from(['400', '0', '-5', 'inf']),
}


@pytest.mark.parametrize('key', ['ct', 'mr'])
def test_dicom_header_fields(samples, tmp_path, key):
    """Header elements edited through pydicom (the file stays well-formed DICOM): sizes, depths, frame counts,
    photometric interpretations, NaN / inf rescale and window values, a truncated or missing PixelData."""
    @FUZZ
    @given(edits=st.dictionaries(st.sampled_from(sorted(_DICOM_EDITS)), st.none(), min_size=1, max_size=4).flatmap(
        lambda d: st.fixed_dictionaries({k: _DICOM_EDITS[k] for k in d})),
        pixels=st.sampled_from(['keep', 'truncate', 'drop', 'double']), window=st.sampled_from([None, 'file', 'lung']))
    def run(edits, pixels, window):
        ds = pydicom.dcmread(io.BytesIO(samples[key]))
        path = tmp_path / 'edit.dcm'
        try:
            for k, v in edits.items():
                setattr(ds, k, v)
            if pixels == 'truncate':
                ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3]
            elif pixels == 'drop':
                del ds.PixelData
            elif pixels == 'double':
                ds.PixelData = ds.PixelData * 2
            ds.save_as(path, enforce_file_format=False)
        except Exception:  # pydicom refuses to set or write some values: nothing to read then
            return
        with small_allocations('a small DICOM'):
            attempt('dicom header probe_image', lambda: probe_image(path), path)
            attempt('dicom header load_image', lambda: load_image(path, window=window), path, check=_check_image)
    run()


@pytest.mark.parametrize('key, name', [('nii_gz', 'x.nii.gz'), ('nii', 'x.nii')])
def test_nifti_byte_mutations(samples, tmp_path, key, name):
    @FUZZ
    @given(data=mutated(samples[key], header=352), slice_index=st.sampled_from([None, 0, 3, 6, 7, -1]))
    def run(data, slice_index):
        path = _write(tmp_path, name, data if key == 'nii' or data[:2] != b'\x1f\x8b' else data)
        attempt('nifti probe_image', lambda: probe_image(path), path)
        attempt('nifti load_image', lambda: load_image(path, slice_index), path, check=_check_image)
    run()


def _nifti_header_bytes(raw: bytes, **fields) -> bytes:
    """``raw`` (an uncompressed .nii) with NIfTI-1 header fields overwritten at their byte offsets."""
    buf = bytearray(raw)
    offsets = {'dim': (40, '<8h'), 'datatype': (70, '<h'), 'bitpix': (72, '<h'), 'pixdim': (76, '<8f'),
               'vox_offset': (108, '<f'), 'scl_slope': (112, '<f'), 'scl_inter': (116, '<f')}
    for k, v in fields.items():
        off, fmt = offsets[k]
        struct.pack_into(fmt, buf, off, *(v if isinstance(v, (tuple, list)) else (v,)))
    return bytes(buf)


_DIMS = st.sampled_from([(3, 4, 5, 7), (3, 0, 5, 7), (3, 4, 5, 0), (3, -4, 5, 7), (3, 30000, 30000, 30000),
                         (3, 32767, 32767, 32767), (4, 4, 5, 7, 3), (2, 4, 5), (1, 140), (7, 2, 2, 2, 2, 2, 2, 2),
                         (0, 4, 5, 7), (9, 4, 5, 7)])
_DTYPES = st.sampled_from([(2, 8), (4, 16), (8, 32), (16, 32), (64, 64), (32, 64), (128, 24), (2304, 32),
                           (1792, 128), (1536, 128), (768, 32), (256, 8), (1024, 64), (3, 8), (0, 0)])


@given(dims=_DIMS, dtype=_DTYPES, vox_offset=st.sampled_from([352.0, 0.0, 348.0, 1e9, -352.0, float('nan')]),
       scl=st.sampled_from([(1.0, 0.0), (float('nan'), 0.0), (float('inf'), 0.0), (0.0, float('nan')), (1e38, 1e38)]),
       gz=st.booleans())
@FUZZ
def test_nifti_header_fields(samples, tmp_path_factory, dims, dtype, vox_offset, scl, gz):
    """dim / datatype / vox_offset / scaling edited: zero, negative and gigantic sizes must be refused from the
    header, before any voxel array is allocated."""
    d = list(dims) + [1] * (8 - len(dims))
    data = _nifti_header_bytes(samples['nii'], dim=d, datatype=dtype[0], bitpix=dtype[1], vox_offset=vox_offset,
                               scl_slope=scl[0], scl_inter=scl[1])
    folder = tmp_path_factory.mktemp('nii')
    path = _write(folder, 'h.nii.gz' if gz else 'h.nii', gzip.compress(data) if gz else data)
    rec = VolumeRecord('h', str(path), None, 'nifti')
    with small_allocations(f'a {path.stat().st_size}-byte NIfTI'):
        attempt('nifti header probe_image', lambda: probe_image(path), path)
        attempt('nifti header load_image', lambda: load_image(path), path, check=_check_image)
        attempt('nifti header load_volume', lambda: load_volume(rec), path, check=_check_volume)


# ---------------------------------------------------------------- generated arrays (data/volumes.py)
_SHAPES = st.tuples(st.integers(0, 6), st.integers(0, 6), st.integers(0, 4))
_IMAGE_DTYPES = st.sampled_from([np.uint8, np.int16, np.int32, np.int64, np.uint16, np.float32, np.float64])


@st.composite
def image_arrays(draw):
    shape = draw(_SHAPES)
    dtype = draw(_IMAGE_DTYPES)
    arr = draw(hnp.arrays(dtype, shape, elements=hnp.from_dtype(np.dtype(dtype), allow_nan=False,
                                                                  allow_infinity=False)
                          if np.dtype(dtype).kind == 'f' else None))
    if arr.size and np.dtype(dtype).kind == 'f' and draw(st.booleans()):
        arr.flat[draw(st.integers(0, arr.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    return arr


@st.composite
def label_arrays(draw, shape):
    kind = draw(st.sampled_from(['ok', 'big', 'negative', 'fraction', 'nan', 'float_ok']))
    if kind == 'ok':
        return draw(hnp.arrays(np.uint8, shape, elements=st.integers(0, 3)))
    if kind == 'big':
        return draw(hnp.arrays(np.int32, shape, elements=st.integers(0, 70000)))
    if kind == 'negative':
        return draw(hnp.arrays(np.int16, shape, elements=st.integers(-3, 3)))
    arr = draw(hnp.arrays(np.float32, shape, elements=st.integers(0, 3).map(float)))
    if arr.size and kind == 'fraction':
        arr.flat[0] = 0.5
    if arr.size and kind == 'nan':
        arr.flat[0] = np.nan
    return arr


def _finite_ok(arr) -> bool:
    return arr.size > 0 and (arr.dtype.kind != 'f' or np.isfinite(arr).all())


@FUZZ
@given(data=st.data(), fmt=st.sampled_from(['nii.gz', 'nii', 'nrrd', 'mha', 'h5', 'npz']))
def test_generated_volumes(tmp_path_factory, data, fmt):
    """NaN / inf voxels must be refused; zero-size dimensions, odd dtypes and label values outside the label map
    give a UserInputError naming the file; sound arrays load."""
    image = data.draw(image_arrays())
    label = data.draw(label_arrays(image.shape))
    folder = tmp_path_factory.mktemp('vol')
    img_p, lab_p = folder / f'img.{fmt}', folder / f'lab.{fmt}'
    try:
        if fmt.startswith('nii'):
            nib.save(nib.Nifti1Image(image, np.eye(4)), img_p)
            nib.save(nib.Nifti1Image(label, np.eye(4)), lab_p)
            rec = VolumeRecord('c', str(img_p), str(lab_p), 'nifti')
        elif fmt in ('nrrd', 'mha'):
            sitk = pytest.importorskip('SimpleITK')
            sitk.WriteImage(sitk.GetImageFromArray(image), str(img_p))
            sitk.WriteImage(sitk.GetImageFromArray(label), str(lab_p))
            rec = VolumeRecord('c', str(img_p), str(lab_p), 'sitk')
        elif fmt == 'h5':
            h5py = pytest.importorskip('h5py')
            img_p = folder / 'case.npy.h5'
            with h5py.File(img_p, 'w') as f:
                f['image'], f['label'] = image, label
            rec = VolumeRecord('c', str(img_p), str(img_p), 'h5')
        else:
            img_p = folder / 'case_slice000.npz'
            image, label = image[..., 0], label[..., 0]  # one 2D slice per file
            np.savez(img_p, image=image, label=label)
            rec = VolumeRecord('c', str(img_p), str(img_p), 'npz')
    except Exception:  # the writer refused the array (e.g. SimpleITK and a zero-size or int64 image)
        return
    vol = attempt(f'volume {fmt}', lambda: load_volume(rec, ACDC_LABEL_MAP), img_p, lab_p, check=_check_volume)
    if not _finite_ok(image) and image.size:
        assert vol is None or AUDIT, f'{fmt}: NaN / inf voxels were loaded'
    if vol is not None and label.size:
        assert label.min() >= 0 and label.max() <= 3 and np.all(label == np.round(label))


@FUZZ
@given(shape=st.sampled_from([(0, 4, 4), (3, 2 ** 20, 2 ** 20), (2 ** 31, 2, 2), (4, 4, 4)]),
       compression=st.sampled_from([None, 'gzip']), key=st.sampled_from(['image', 'label']))
def test_h5_declared_sizes(tmp_path_factory, shape, compression, key):
    """HDF5 datasets declared gigantic but never written (the file stays small) are refused, not allocated."""
    h5py = pytest.importorskip('h5py')
    path = tmp_path_factory.mktemp('h5') / 'case0001.npy.h5'
    with h5py.File(path, 'w') as f:
        for k in ('image', 'label'):
            s = shape if k == key else (4, 4, 4)
            f.create_dataset(k, shape=s, dtype='f4' if k == 'image' else 'u1', chunks=True if 0 not in s else None,
                             compression=compression if 0 not in s else None)
    rec = VolumeRecord('case0001', str(path), str(path), 'h5')
    with small_allocations('a small HDF5 file'):
        attempt('volume h5 declared size', lambda: load_volume(rec), path, check=_check_volume)


def _npz_with_header(shape, dtype='<f4', payload=b'') -> bytes:
    header = {'descr': dtype, 'fortran_order': False, 'shape': tuple(shape)}
    arr = io.BytesIO()
    np.lib.format.write_array_header_1_0(arr, header)
    out = io.BytesIO()
    import zipfile
    with zipfile.ZipFile(out, 'w', zipfile.ZIP_DEFLATED) as zf:
        zf.writestr('image.npy', arr.getvalue() + payload)
        zf.writestr('label.npy', arr.getvalue() + payload)
    return out.getvalue()


@FUZZ
@given(shape=st.sampled_from([(2 ** 16, 2 ** 16), (2 ** 40,), (0, 5), (4, 4), (3, 2 ** 30)]),
       dtype=st.sampled_from(['<f4', '|O', '<c8', '|b1', '<U3', '|V8']),
       payload=st.sampled_from([b'', b'\0' * 64, b'\0' * 4096]))
def test_npz_declared_sizes(tmp_path_factory, shape, dtype, payload):
    """``.npz`` members whose .npy header declares a gigantic, empty or non-numeric array."""
    path = _write(tmp_path_factory.mktemp('npz'), 'case0001_slice000.npz', _npz_with_header(shape, dtype, payload))
    rec = VolumeRecord('case0001', str(path), str(path), 'npz')
    with small_allocations('a small .npz'):
        attempt('volume npz declared size', lambda: load_volume(rec), path, check=_check_volume)


@pytest.mark.parametrize('fmt', ['nrrd', 'mha'])
def test_sitk_byte_mutations(tmp_path, fmt):
    sitk = pytest.importorskip('SimpleITK')
    base = tmp_path / f'base.{fmt}'
    img = np.asarray(nib.load(Path(nib.__file__).parent / 'tests' / 'data' / 'standard.nii.gz').dataobj)
    sitk.WriteImage(sitk.GetImageFromArray(img.astype(np.int16)), str(base), fmt == 'mha')
    raw = base.read_bytes()

    @FUZZ
    @given(data=mutated(raw, header=raw.find(b'\n\n') + 2 if fmt == 'nrrd' else 300),
           sizes=st.sampled_from([None, '100000 100000 100000', '0 5 4', '-1 5 4', '7 5 4']))
    def run(data, sizes):
        if sizes and fmt == 'nrrd':
            data = data.replace(b'sizes: 7 5 4', f'sizes: {sizes}'.encode(), 1)
        if sizes and fmt == 'mha':
            data = data.replace(b'DimSize = 7 5 4', f'DimSize = {sizes}'.encode(), 1)
        path = _write(tmp_path, f'x.{fmt}', data)
        rec = VolumeRecord('x', str(path), None, 'sitk')
        attempt(f'volume {fmt} mutation', lambda: load_volume(rec), path, check=_check_volume)
    run()


@pytest.mark.parametrize('key', ['png', 'png_rgb', 'png16'])
def test_image2d_pairs(samples, tmp_path, key):
    """2D image + mask pairs: mutated image or mask bytes; masks with unexpected values."""
    mask = (np.arange(48 * 40).reshape(48, 40) % 3).astype(np.uint8)
    if key == 'png_rgb':
        mask = mask.T.copy()

    @FUZZ
    @given(which=st.sampled_from(['image', 'mask']), data=st.data(),
           values=st.sampled_from([None, 255, 7, 300]))
    def run(which, data, values):
        m = mask.copy()
        if values is not None:
            m = m.astype(np.uint16 if values > 255 else np.uint8)
            m[0, 0] = values
        img_b = samples[key]
        mask_b = _png_bytes(m)
        if which == 'image':
            img_b = data.draw(mutated(img_b, header=64))
        else:
            mask_b = data.draw(mutated(mask_b, header=64))
        ip, mp = _write(tmp_path, 'im.png', img_b), _write(tmp_path, 'im_mask.png', mask_b)
        rec = VolumeRecord('im', str(ip), str(mp), 'image2d')
        attempt('volume image2d', lambda: load_volume(rec, ACDC_LABEL_MAP), ip, mp, check=_check_volume)
    run()


# ---------------------------------------------------------------- manifests, dataset.json, skip mode
_PATH_TEXT = st.text(st.characters(codec='utf-8', exclude_categories=['Cs']), max_size=12)


@FUZZ
@given(rows=st.lists(st.tuples(st.one_of(st.just('a.png'), st.just('missing.png'), _PATH_TEXT),
                               st.one_of(st.sampled_from(['cat', 'dog', '']), _PATH_TEXT),
                               st.sampled_from(['', 'train', 'val', 'test', 'nonsense']),
                               st.sampled_from(['', '0', '-1', 'x', '3.5'])), min_size=0, max_size=6),
       encoding=st.sampled_from(['utf-8', 'utf-8-sig', 'latin-1', 'utf-16']), extra=st.booleans(),
       header=st.sampled_from(['path,label,split,slice', 'label,split', '', 'PATH , Label,split,slice']),
       on_bad_file=st.sampled_from(['error', 'skip']))
def test_csv_manifests(samples, tmp_path_factory, rows, encoding, extra, header, on_bad_file):
    """Classification and segmentation CSVs: bad paths, bad encodings, NUL bytes, extra fields, bad columns."""
    folder = tmp_path_factory.mktemp('csv')
    (folder / 'a.png').write_bytes(samples['png'])
    (folder / 'b.png').write_bytes(samples['png_rgb'])
    (folder / 'dog').write_bytes(_png_bytes(np.eye(40, 48, dtype=np.uint8)))  # the mask of b.png (seg CSV)
    buf = io.StringIO()
    w = csv.writer(buf)
    if header:
        buf.write(header + '\n')
    for r in rows:
        w.writerow(list(r) + (['surplus'] if extra else []))
    w.writerow(['b.png', 'dog', '', ''])
    text = buf.getvalue()
    try:
        raw = text.encode(encoding)
    except UnicodeEncodeError:
        raw = text.encode('utf-8', 'surrogatepass')
    cls_csv = _write(folder, 'manifest.csv', raw)
    attempt('csv classification', lambda: images_mod.read_csv_manifest(str(cls_csv), on_bad_file), cls_csv)
    seg_raw = raw.replace(b'path', b'image', 1).replace(b'p\x00a\x00t\x00h', b'i\x00m\x00a\x00g\x00e', 1)
    seg_csv = _write(folder, 'seg.csv', seg_raw)
    attempt('csv segmentation', lambda: discover(str(seg_csv), 'csv', on_bad_file), seg_csv)


_JSON = st.recursive(st.none() | st.booleans() | st.integers(-2, 2 ** 40) | st.floats(allow_nan=False) | _PATH_TEXT,
                     lambda c: st.lists(c, max_size=4) | st.dictionaries(_PATH_TEXT | st.sampled_from(['0', '1']),
                                                                         c, max_size=4), max_leaves=8)


@FUZZ
@given(labels=st.one_of(_JSON, st.dictionaries(st.sampled_from(['0', '1', '2', '99999999', 'liver']),
                                               st.one_of(st.integers(-1, 10 ** 9), _PATH_TEXT, st.lists(st.integers())),
                                               max_size=4)),
       top=st.sampled_from(['object', 'list', 'damaged', 'latin-1']))
def test_dataset_json(tmp_path_factory, labels, top):
    """nnU-Net dataset.json with odd 'labels' (v1 / v2 / region lists / huge indices), non-objects, bad bytes."""
    root = tmp_path_factory.mktemp('nnunet')
    (root / 'imagesTr').mkdir()
    (root / 'labelsTr').mkdir()
    std = Path(nib.__file__).parent / 'tests' / 'data' / 'standard.nii.gz'
    shutil.copy(std, root / 'imagesTr' / 'c1_0000.nii.gz')
    shutil.copy(std, root / 'labelsTr' / 'c1.nii.gz')
    doc = {'labels': labels, 'modality': {'0': 'CT'}} if top != 'list' else [labels]
    raw = json.dumps(doc).encode()
    if top == 'damaged':
        raw = raw[: max(1, len(raw) // 2)]
    if top == 'latin-1':
        raw = json.dumps(doc, ensure_ascii=False).encode('utf-8') + b'\xff\xfe'
    meta = _write(root, 'dataset.json', raw)
    attempt('dataset.json', lambda: read_dataset_json(str(meta)), meta)
    attempt('dataset.json discover', lambda: discover(str(root)), meta)


def _image_folder(root: Path, samples, bad: dict):
    for cls in ('a', 'b'):
        (root / cls).mkdir(parents=True)
        for i, key in enumerate(('png', 'png_rgb', 'jpg')):
            ext = 'jpg' if key == 'jpg' else 'png'
            (root / cls / f'{i}.{ext}').write_bytes(samples[key])
    (root / 'a' / 'ct.dcm').write_bytes(samples['ct'])
    (root / 'b' / 'std.nii.gz').write_bytes(samples['nii_gz'])
    for name, data in bad.items():
        (root / 'a' / name).write_bytes(data)


@FUZZ
@given(data=st.data(), n_bad=st.integers(1, 3))
def test_image_folder_skip_counts(samples, tmp_path_factory, data, n_bad):
    """An ImageFolder with damaged files: 'error' names a bad file; 'skip' counts the skipped files and keeps
    only files that load (or that name themselves in a UserInputError when loaded)."""
    bad = {}
    for i in range(n_bad):
        key, ext = data.draw(st.sampled_from([('png', 'png'), ('jpg', 'jpg'), ('ct', 'dcm'), ('mr', 'dcm'),
                                              ('nii_gz', 'nii.gz'), ('nii', 'nii')]))
        bad[f'bad{i}.{ext}'] = data.draw(st.sampled_from([b'', samples[key][: len(samples[key]) // 2],
                                                          samples[key][:40]]))
    root = tmp_path_factory.mktemp('imgs') / 'data'
    _image_folder(root, samples, bad)
    attempt('ImageFolder error mode', lambda: images_mod.discover(str(root), 'error'), *[root / 'a' / b for b in bad])
    src = attempt('ImageFolder skip mode', lambda: images_mod.discover(str(root), 'skip'), root)
    if src is None:
        return
    skipped = {os.path.basename(p) for p, _ in src.skipped}
    assert skipped == set(bad), (skipped, set(bad))  # every damaged file here is caught by the probe
    for s in src.samples:
        attempt('ImageFolder kept sample', lambda s=s: load_image(s.path, s.slice_index), s.path, check=_check_image)


@FUZZ
@given(data=st.data())
def test_nnunet_skip_counts(samples, tmp_path_factory, data):
    """Segmentation discovery with damaged cases: 'skip' leaves them out with a count, the rest load."""
    root = tmp_path_factory.mktemp('seg') / 'ds'
    (root / 'imagesTr').mkdir(parents=True)
    (root / 'labelsTr').mkdir()
    std = samples['nii_gz']
    bad = set()
    for i in range(4):
        img, lab = std, std
        how = data.draw(st.sampled_from(['ok', 'ok', 'trunc_img', 'trunc_lab', 'empty_lab', 'no_lab', 'flip']))
        if how == 'trunc_img':
            img = std[: data.draw(st.integers(0, len(std) - 1))]
        elif how == 'trunc_lab':
            lab = std[: data.draw(st.integers(0, len(std) - 1))]
        elif how == 'empty_lab':
            lab = b''
        elif how == 'flip':
            buf = bytearray(std)
            buf[data.draw(st.integers(0, len(std) - 1))] ^= 0xFF
            img = bytes(buf)
        (root / 'imagesTr' / f'c{i}_0000.nii.gz').write_bytes(img)
        if how != 'no_lab':
            (root / 'labelsTr' / f'c{i}.nii.gz').write_bytes(lab)
        if how != 'ok':
            bad.add(f'c{i}')
    ds = attempt('nnU-Net skip mode', lambda: discover(str(root), 'auto', 'skip'), root)
    if ds is None:
        return
    for r in ds.records:
        attempt('nnU-Net kept case', lambda r=r: load_volume(r), r.image, r.label, check=_check_volume)
    skipped = {os.path.basename(p).split('_')[0] for p, _ in ds.skipped}
    assert len(ds.skipped) + len(ds.records) == 4
    assert skipped <= bad, f'sound cases skipped: {skipped - bad}'
