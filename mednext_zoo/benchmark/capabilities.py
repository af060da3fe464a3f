"""Capability matrix: what each registered model supports, established by running checks.

One row per registered model (``mednext_*``, ``medunext_*``), one column per capability:

============== ==============================================================================================
column         check
============== ==============================================================================================
features_only  ``timm.create_model(name, features_only=True)``: one map per ``feature_info`` entry, with its
               channels and ``ceil(size / reduction)`` sides
intermediates  ``forward_intermediates``: the same shapes, and its final map equals ``forward_features``
in_chans       a state dict saved at 3 channels, loaded at ``in_chans=1`` through
               ``pretrained_cfg_overlay=dict(file=...)``: the first conv is the 3-channel one summed
img_size=      built at a non-default, non-square size; forward works (the note says which sizes are valid)
set_input_size resized in place: the new size runs, the old one is refused, axial matrices resampled
resize on load weights saved at one size load into a model of another size (axial matrices resampled)
dynamic size   another input size without rebuilding (MedNeXt: no, the axial mixing matrices fix the size)
TorchScript    ``torch.jit.script``: same output as eager
ONNX           ``torch.onnx.export`` (TorchScript-based exporter, dynamic batch), onnxruntime output within
               1e-4 of eager at another batch size
compile        ``torch.compile(fullgraph=True, backend='eager')``: dynamo captures one graph (any graph
               break fails) and the output matches eager. The eager backend checks graph capture only
               (inductor code generation is not exercised, and is much slower to run)
grad ckpt      ``set_grad_checkpointing()``: same output and same gradients as without
smp tu-        ``smp.Unet('tu-<name>', encoder_weights=None, img_size=...)`` builds and returns ``B, K, H, W``
============== ==============================================================================================

Checks run on small inputs (64 x 64 by default) with the registered widths and depths. Each cell is
``yes``, ``no: <reason>`` or ``not checked: <reason>`` (a package missing here).

The committed matrix (``capabilities.json`` beside this module, rendered to ``docs/capabilities.md``) is written by
``python -m mednext_zoo.benchmark.capabilities --write``; ``mednext-zoo list --capabilities`` prints it, and
``tests/test_capabilities.py`` re-runs the checks and fails if they disagree with it.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import logging
import math
import os
import tempfile
import warnings
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import timm
import torch
import torch.nn as nn

from .. import models as _models  # noqa: F401  (registers the architectures)
from ..errors import UserInputError
from ..models.mednext import resample_axial_bias, resample_axial_weight

__all__ = [
    'COLUMNS', 'Cell', 'check_model', 'check_models', 'registered_models', 'render_markdown', 'render_page',
    'render_text', 'load_committed', 'write_committed', 'COMMITTED_JSON', 'DOCS_PAGE',
]

COMMITTED_JSON = Path(__file__).with_name('capabilities.json')
"""The committed matrix (package data, so ``mednext-zoo list --capabilities`` works from a wheel)."""
DOCS_PAGE = Path(__file__).resolve().parents[2] / 'docs' / 'capabilities.md'
"""The rendered page that ``docs/models.md`` includes (in a source checkout)."""

YES, NO, SKIP = 'yes', 'no', 'not checked'
SIZE = 64  # every check's input side (a multiple of 32: valid for every family member)
ATOL = 1e-4


@dataclass(frozen=True)
class Cell:
    """One check's outcome: ``status`` is ``'yes'``, ``'no'`` or ``'not checked'``; ``note`` says why / how."""

    status: str
    note: str = ''

    def __str__(self) -> str:
        if not self.note:
            return self.status
        return f'{self.status} ({self.note})' if self.status == YES else f'{self.status}: {self.note}'


class _Failed(Exception):
    """A check's expectation did not hold (the cell becomes ``no: <message>``)."""


def _expect(cond: bool, message: str) -> None:
    if not cond:
        raise _Failed(message)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


_SIZES = ('tiny', 'small', 'base', 'large')


def registered_models() -> List[str]:
    """Every architecture this package registers in timm: MedNeXt then MedUNeXt, the paper's models small to
    large, then our variants (``*_hr``) small to large."""
    def order(name: str) -> Tuple[int, int, int, str]:
        _, size, *variant = name.split('_')
        return (name.startswith('medunext'), bool(variant), _SIZES.index(size) if size in _SIZES else len(_SIZES),
                name)
    return sorted(timm.list_models('mednext_*') + timm.list_models('medunext_*'), key=order)


@contextlib.contextmanager
def _quiet():
    """Silence the warnings and log lines of exporters and timm's loader (they are not results)."""
    timm_logger = logging.getLogger('timm')
    level = timm_logger.level
    timm_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter('ignore')
            yield
    finally:
        timm_logger.setLevel(level)


class _Context:
    """Shared state of one model's checks: the name, input size, a scratch folder and one built model.

    Building the large variants dominates the run time, so checks that only read a model share :meth:`base`
    and checks that change one work on :meth:`fresh` (a copy).
    """

    def __init__(self, name: str, tmp: Path, size: int = SIZE):
        self.name = name
        self.tmp = tmp
        self.size = size
        self._base: Optional[nn.Module] = None

    def create(self, **kwargs) -> nn.Module:
        """``timm.create_model(name, img_size=size, num_classes=3, **kwargs)`` in eval mode, seeded."""
        kwargs.setdefault('img_size', self.size)
        kwargs.setdefault('num_classes', 3)
        torch.manual_seed(0)
        return timm.create_model(self.name, **kwargs).eval()

    def base(self) -> nn.Module:
        """The model built with the defaults of :meth:`create` (shared: do not modify it)."""
        if self._base is None:
            self._base = self.create()
        return self._base

    def fresh(self) -> nn.Module:
        """A private copy of :meth:`base`."""
        return copy.deepcopy(self.base())

    def input(self, model: nn.Module, batch: int = 2, size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        g = torch.Generator().manual_seed(1)
        h, w = size or tuple(model.img_size)
        return torch.randn(batch, model.in_chans, h, w, generator=g)

    def save(self, model: nn.Module, stem: str) -> Path:
        import safetensors.torch
        path = self.tmp / f'{stem}.safetensors'
        safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.fspath(path))
        return path

    def load(self, path: Path, source: nn.Module, **kwargs) -> nn.Module:
        """A new model built with ``kwargs`` that loads ``path`` (saved from ``source``) through timm's loader."""
        overlay = dict(file=os.fspath(path), num_classes=source.num_classes,
                       input_size=(source.in_chans, *source.img_size))
        return self.create(pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)


def _first_conv(model: nn.Module) -> Union[str, Sequence[str]]:
    return model.pretrained_cfg['first_conv']


def _axial_keys(state_dict: Dict[str, torch.Tensor]) -> List[str]:
    return [k for k in state_dict if '.mix_h.' in k or '.mix_w.' in k]


def _check_axial_resampled(old: Dict[str, torch.Tensor], new: Dict[str, torch.Tensor]) -> None:
    keys = _axial_keys(old)
    _expect(bool(keys), 'no axial mixing matrices found')
    for k in keys:
        n = new[k].shape[-1]
        want = resample_axial_weight(old[k], n) if old[k].ndim == 2 else resample_axial_bias(old[k], n)
        _expect(new[k].shape == want.shape and _max_diff(new[k], want) < 1e-6, f'{k} not resampled')


def _strides(feature_info: Sequence[Dict]) -> str:
    return '/'.join(str(f['reduction']) for f in feature_info)


# ---------------------------------------------------------------- the checks

def _check_features_only(ctx: _Context) -> Cell:
    model = ctx.create(features_only=True)
    info = model.feature_info
    x = ctx.input(ctx.base())
    with torch.no_grad():
        feats = model(x)
    _expect(len(feats) == len(info), f'{len(feats)} maps for {len(info)} feature_info entries')
    for f, ch, red in zip(feats, info.channels(), info.reduction()):
        want = (x.shape[0], ch, math.ceil(ctx.size / red), math.ceil(ctx.size / red))
        _expect(tuple(f.shape) == want, f'map {tuple(f.shape)}, feature_info says {want}')
    return Cell(YES, f'strides {_strides(info.get_dicts())}')


def _check_intermediates(ctx: _Context) -> Cell:
    model = ctx.base()
    x = ctx.input(model)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        feats = model.forward_features(x)
        only = model.forward_intermediates(x, intermediates_only=True, stop_early=True)
    _expect(len(inter) == len(model.feature_info), f'{len(inter)} intermediates')
    for f, g, info in zip(inter, only, model.feature_info):
        _expect(f.shape[1] == info['num_chs'], f'{f.shape[1]} channels where feature_info says {info["num_chs"]}')
        _expect(_max_diff(f, g) <= ATOL, 'stop_early intermediates differ')
    _expect(_max_diff(final, feats) <= ATOL, 'final map differs from forward_features')
    return Cell(YES)


def _check_in_chans(ctx: _Context) -> Cell:
    src = ctx.base() if ctx.base().in_chans == 3 else ctx.create(in_chans=3)
    path = ctx.save(src, 'rgb')
    with _quiet():
        dst = ctx.load(path, src, in_chans=1)
    first = _first_conv(src)
    for conv in (first,) if isinstance(first, str) else first:  # a model may read the input with several convs
        want = src.state_dict()[f'{conv}.weight'].sum(dim=1, keepdim=True)
        got = dst.state_dict()[f'{conv}.weight']
        _expect(got.shape == want.shape and _max_diff(got, want) < 1e-6, f'{conv} was not summed over channels')
    with torch.no_grad():
        dst(ctx.input(dst))
    return Cell(YES, '3 -> 1 summed')


def _check_img_size(ctx: _Context) -> Cell:
    note = 'any size'
    try:  # non-square, and a side that is not a multiple of 32
        model = ctx.create(img_size=(ctx.size, ctx.size + 8))
    except UserInputError:
        stride = getattr(ctx.base(), 'stride', None)
        note = f'multiples of {stride}' if stride else 'restricted sizes'
        model = ctx.create(img_size=(ctx.size, ctx.size + 32))
    with torch.no_grad():
        out = model(ctx.input(model))
    _expect(out.shape[0] == 2, f'output {tuple(out.shape)}')
    return Cell(YES, note)


def _check_set_input_size(ctx: _Context) -> Cell:
    model = ctx.fresh()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    new = (ctx.size + 32, ctx.size + 32)
    model.set_input_size(img_size=new)
    _expect(tuple(model.img_size) == new, f'img_size is {model.img_size}')
    with torch.no_grad():
        model(ctx.input(model, size=new))
        try:
            model(ctx.input(model, size=(ctx.size, ctx.size)))
            raise _Failed('the old size still runs after set_input_size')
        except UserInputError:
            pass
    _check_axial_resampled(before, model.state_dict())
    return Cell(YES)


def _check_resize_on_load(ctx: _Context) -> Cell:
    src = ctx.base()
    path = ctx.save(src, 'small')
    with _quiet():
        dst = ctx.load(path, src, img_size=ctx.size + 32)
    _check_axial_resampled(src.state_dict(), dst.state_dict())
    with torch.no_grad():
        dst(ctx.input(dst))
    return Cell(YES)


def _check_dynamic_size(ctx: _Context) -> Cell:
    model = ctx.base()
    try:
        with torch.no_grad():
            model(ctx.input(model, size=(ctx.size + 32, ctx.size + 32)))
    except UserInputError:
        return Cell(NO, 'fixed at construction; UserInputError names img_size= / set_input_size')
    return Cell(YES)


def _check_torchscript(ctx: _Context) -> Cell:
    model = ctx.base()
    x = ctx.input(model)
    with _quiet():
        scripted = torch.jit.script(model)
    with torch.no_grad():
        diff = _max_diff(scripted(x), model(x))
    _expect(diff <= ATOL, f'scripted output differs by {diff:.2g}')
    return Cell(YES)


def _check_onnx(ctx: _Context) -> Cell:
    try:
        import onnxruntime as ort
    except ImportError:
        return Cell(SKIP, 'onnxruntime not installed')
    model = ctx.base()
    buffer = io.BytesIO()
    with _quiet(), torch.no_grad():
        torch.onnx.export(model, (ctx.input(model),), buffer, input_names=['x'], output_names=['logits'],
                          dynamic_axes={'x': {0: 'batch'}, 'logits': {0: 'batch'}}, dynamo=False)
    session = ort.InferenceSession(buffer.getvalue(), providers=['CPUExecutionProvider'])
    x = ctx.input(model, batch=3)
    out = torch.from_numpy(session.run(None, {'x': x.numpy()})[0])
    with torch.no_grad():
        diff = _max_diff(out, model(x))
    _expect(diff <= ATOL, f'onnxruntime output differs by {diff:.2g}')
    return Cell(YES, 'dynamic batch')


def _check_compile(ctx: _Context) -> Cell:
    model = ctx.base()
    x = ctx.input(model)
    torch._dynamo.reset()
    try:
        with _quiet(), torch.no_grad():
            out = torch.compile(model, backend='eager', fullgraph=True)(x)
    except Exception as e:  # a graph break under fullgraph=True raises (torch._dynamo.exc.Unsupported and kin)
        raise _Failed(f'graph break: {str(e).strip().splitlines()[0][:120]}') from e
    finally:
        torch._dynamo.reset()
    with torch.no_grad():
        diff = _max_diff(out, model(x))
    _expect(diff <= ATOL, f'compiled output differs by {diff:.2g}')
    return Cell(YES)


def _check_grad_checkpointing(ctx: _Context) -> Cell:
    model = ctx.fresh().train()
    x = ctx.input(model, batch=1)

    def run(enable: bool) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        model.set_grad_checkpointing(enable)
        out = model(x)
        out.square().mean().backward()
        return out.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    out0, g0 = run(False)
    out1, g1 = run(True)
    _expect(_max_diff(out0, out1) <= ATOL, 'output differs with checkpointing')
    _expect(g0.keys() == g1.keys() and bool(g0), 'different parameters get gradients')
    worst = max(_max_diff(g0[k], g1[k]) / (float(g0[k].abs().max()) + 1e-12) for k in g0)
    _expect(worst <= 1e-3, f'gradients differ (relative {worst:.2g})')
    return Cell(YES)


def _check_smp(ctx: _Context) -> Cell:
    try:
        import segmentation_models_pytorch as smp
    except ImportError:
        return Cell(SKIP, 'segmentation-models-pytorch not installed')
    torch.manual_seed(0)
    with _quiet():
        net = smp.Unet(f'tu-{ctx.name}', encoder_weights=None, in_channels=1, classes=2, img_size=ctx.size).eval()
    x = torch.randn(1, 1, ctx.size, ctx.size)
    with torch.no_grad():
        out = net(x)
    _expect(tuple(out.shape) == (1, 2, ctx.size, ctx.size), f'Unet output {tuple(out.shape)}')
    return Cell(YES, 'Unet, img_size= passed on')


CHECKS: Dict[str, Callable[[_Context], Cell]] = {
    'features_only': _check_features_only,
    'forward_intermediates': _check_intermediates,
    'in_chans adaptation': _check_in_chans,
    'img_size=': _check_img_size,
    'set_input_size': _check_set_input_size,
    'resize on load': _check_resize_on_load,
    'dynamic size': _check_dynamic_size,
    'TorchScript': _check_torchscript,
    'ONNX + onnxruntime': _check_onnx,
    'compile fullgraph': _check_compile,
    'grad checkpointing': _check_grad_checkpointing,
    'smp tu- encoder': _check_smp,
}
COLUMNS: Tuple[str, ...] = tuple(CHECKS)
"""Column names, in table order."""


def check_model(name: str, columns: Optional[Sequence[str]] = None, size: int = SIZE) -> Dict[str, Cell]:
    """Run the capability checks (all, or ``columns``) for the registered model ``name``: column -> :class:`Cell`.

    A check whose expectation fails gives ``no: <what differed>``; an unexpected exception gives
    ``no: <ExceptionType>: <first line>`` (never a crash: one failing capability does not hide the others).
    """
    if name not in registered_models():
        raise UserInputError(f'{name!r} is not a registered mednext-zoo model; choose one of '
                             f'{", ".join(registered_models())}.')
    unknown = [c for c in (columns or ()) if c not in CHECKS]
    if unknown:
        raise UserInputError(f'Unknown capability column(s) {unknown}; choose from {", ".join(COLUMNS)}.')
    row: Dict[str, Cell] = {}
    with tempfile.TemporaryDirectory(prefix='mednext-capabilities-') as tmp:
        ctx = _Context(name, Path(tmp), size)
        for col in columns or COLUMNS:
            try:
                row[col] = CHECKS[col](ctx)
            except _Failed as e:
                row[col] = Cell(NO, str(e))
            except Exception as e:  # noqa: BLE001  (the matrix reports it instead of stopping)
                first = str(e).strip().splitlines()[0][:120] if str(e).strip() else ''
                row[col] = Cell(NO, f'{type(e).__name__}: {first}')
    return row


def check_models(names: Optional[Sequence[str]] = None, columns: Optional[Sequence[str]] = None,
                 progress: Optional[Callable[[str], None]] = None) -> Dict[str, Dict[str, Cell]]:
    """:func:`check_model` for each of ``names`` (default: every registered model): name -> row."""
    rows = {}
    for name in names or registered_models():
        if progress:
            progress(name)
        rows[name] = check_model(name, columns)
    return rows


def _versions() -> Dict[str, str]:
    out = {}
    for pkg in ('torch', 'timm', 'onnx', 'onnxruntime', 'segmentation-models-pytorch'):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = 'not installed'
    return out


def to_json(rows: Dict[str, Dict[str, Cell]]) -> Dict:
    """The committed form: columns, rows of ``{status, note}`` and the package versions of the run."""
    return {
        'columns': list(COLUMNS),
        'input': f'batch 2 (1 for smp), {SIZE} x {SIZE}, float32, CPU',
        'versions': _versions(),
        'rows': {name: {c: asdict(cell) for c, cell in row.items()} for name, row in rows.items()},
    }


def load_committed(path: Path = COMMITTED_JSON) -> Tuple[Dict[str, Dict[str, Cell]], Dict]:
    """(rows, the whole JSON document) of the committed matrix."""
    doc = json.loads(Path(path).read_text())
    rows = {name: {c: Cell(**cell) for c, cell in row.items()} for name, row in doc['rows'].items()}
    return rows, doc


def _legend() -> List[str]:
    return [
        'Every cell comes from a check in `mednext_zoo/benchmark/capabilities.py` (see its docstring for what each',
        'column runs); `tests/test_capabilities.py` re-runs them and fails if this table disagrees.',
        'Regenerate with `python -m mednext_zoo.benchmark.capabilities --write`.',
    ]


GENERATED_NOTE = '<!-- generated by `python -m mednext_zoo.benchmark.capabilities --write`: do not edit by hand -->\n\n'
"""Heads the docs page only (``mednext-zoo list --capabilities`` prints :func:`render_markdown` to a terminal)."""


def render_page(rows: Dict[str, Dict[str, Cell]], doc: Optional[Dict] = None) -> str:
    """``docs/capabilities.md``: :data:`GENERATED_NOTE` and :func:`render_markdown`."""
    return GENERATED_NOTE + render_markdown(rows, doc)


def render_markdown(rows: Dict[str, Dict[str, Cell]], doc: Optional[Dict] = None) -> str:
    """The matrix as Markdown: one row per model, one column per capability."""
    cols = [c for c in COLUMNS if any(c in r for r in rows.values())]
    lines = ['| model | ' + ' | '.join(f'`{c}`' if c in ('features_only', 'forward_intermediates', 'img_size=',
                                                          'set_input_size') else c for c in cols) + ' |',
             '|---|' + '---|' * len(cols)]
    for name, row in rows.items():
        lines.append(f'| `{name}` | ' + ' | '.join(str(row.get(c, '')) for c in cols) + ' |')
    lines += ['']
    if doc:
        versions = ', '.join(f'{k} {v}' for k, v in doc['versions'].items())
        lines += [f'Checked on {doc["input"]}; {versions}.', '']
    lines += _legend() + ['']
    return '\n'.join(lines)


def render_text(rows: Dict[str, Dict[str, Cell]]) -> str:
    """The matrix for a terminal: one block per model, one line per capability."""
    width = max(len(c) for c in COLUMNS)
    out = []
    for name, row in rows.items():
        out.append(name)
        out += [f'  {c.ljust(width)}  {cell}' for c, cell in row.items()]
    return '\n'.join(out)


def write_committed(rows: Dict[str, Dict[str, Cell]], json_path: Path = COMMITTED_JSON,
                    page_path: Path = DOCS_PAGE) -> None:
    """Write the JSON (package data) and the Markdown page the docs include."""
    from .._atomic import atomic_write_text

    doc = to_json(rows)
    atomic_write_text(json_path, json.dumps(doc, indent=2) + '\n')
    atomic_write_text(page_path, render_page(rows, doc))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m mednext_zoo.benchmark.capabilities [MODEL ...] [--write]``: run the checks, print or write."""
    parser = argparse.ArgumentParser(prog='python -m mednext_zoo.benchmark.capabilities',
                                     description='Run the capability checks and print (or --write) the matrix.')
    parser.add_argument('models', nargs='*', help='models to check (default: every registered model)')
    parser.add_argument('--write', action='store_true',
                        help=f'write {COMMITTED_JSON.name} and docs/capabilities.md (needs every model)')
    args = parser.parse_args(argv)
    if args.write and args.models:
        parser.error('--write regenerates the whole matrix: give no model names')
    if args.write and not (DOCS_PAGE.parent.parent / 'pyproject.toml').is_file():
        parser.error(f'--write updates the files of a source checkout; {DOCS_PAGE.parent} is not one')
    rows = check_models(args.models or None, progress=lambda n: print(f'checking {n} ...', flush=True))
    if args.write:
        write_committed(rows)
        print(f'wrote {COMMITTED_JSON} and {DOCS_PAGE}')
    else:
        print(render_text(rows))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
