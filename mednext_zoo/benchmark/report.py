"""Write a ``BenchResult`` as results.json, results.csv, results.md and results.png (atomically)."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

from .._atomic import atomic_path
from .._cpuload import busy as cpu_busy
from .runner import ROW_FIELDS, BenchResult

__all__ = ['write_results', 'to_markdown', 'plot_results', 'bench_figure', 'load_results', 'CONVENTIONS',
           'conventions']

CONVENTIONS = [
    'Params: every parameter element, in millions, with the head named in the "classes" column '
    '(1000 for classification as in timm\'s published tables; 9 for segmentation, the Synapse setting).',
    'GFLOPs: fvcore, one multiply-add = one FLOP, batch 1, fp32, at the "img" resolution. fvcore counts '
    'convolutions, linear / matrix products, BatchNorm / LayerNorm / GroupNorm, adaptive pooling and '
    'upsampling; the op types it skipped are listed per model (elementwise add / mul / div, activations, '
    'softmax, max-pool: under 1% of the total for every model here).',
    'Activations: fvcore ActivationCountAnalysis, output elements of convolutions and matrix products, batch 1.',
    'Latency: batch-1 forward, torch.inference_mode, median and 90th percentile over all timed runs.',
    'Throughput: images/s of a batch-N forward (N in the column header, "(bN)"), median over rounds.',
    'Peak memory: CPU, growth of the process resident set (RSS) during one batch-N forward over its level '
    'just before (freed heap returned to the OS first, RSS sampled every 0.5 ms; allocator caching can hide '
    'some growth, so read it as approximate); CUDA, torch.cuda.max_memory_allocated during the forward minus '
    'the memory allocated before it (weights and inputs excluded on both). Not measured for onnxruntime / '
    'openvino rows: their memory arenas are allocated at session creation, so the forward shows no growth.',
    'Backends and dtypes: eager PyTorch, torch.compile, ONNX Runtime (CPU provider) and OpenVINO (CPU), in fp32, '
    'bf16 (PyTorch autocast / OpenVINO inference precision) or int8 (onnxruntime static QDQ / NNCF post-training '
    'quantisation, calibrated on sample images). A combination that cannot run here is a row marked "skipped" '
    'with the reason. "x eager fp32": throughput over the same model\'s eager fp32 row, per round.',
    'Drift: each row\'s outputs against the same model\'s eager fp32 outputs on a fixed, seeded set of packaged '
    'medical sample images (pydicom CT / MR, scikit-image histology / retina; random crops): max |Δlogit| and, for '
    'classification, top-1 agreement, for segmentation the mean per-class Dice between the two label maps. The '
    'weights are random (nothing is downloaded), so read the drift as a numerical check, not as accuracy.',
    'Ratios ("x ref"): a model\'s figure divided by the reference model\'s (same backend and dtype), measured in '
    'the same run. Timed '
    'figures are interleaved: in every round each model runs in turn (rotating start), a ratio is taken per '
    'round from the per-round medians, and the median over rounds is reported. On a shared or busy machine '
    'the absolute times drift; the ratios are the figures to compare across machines.',
]


_BACKENDS = {'eager': 'eager PyTorch', 'compile': 'torch.compile', 'onnxruntime': 'ONNX Runtime (CPU provider)',
             'openvino': 'OpenVINO (CPU)'}
_DTYPES = {'fp32': 'fp32', 'bf16': 'bf16 (PyTorch autocast / OpenVINO inference precision)', 'fp16': 'fp16',
           'int8': 'int8 (onnxruntime static QDQ / NNCF post-training quantisation, calibrated on sample images)'}


def conventions(result: BenchResult) -> List[str]:
    """:data:`CONVENTIONS` for the rows of ``result``: the backends, dtypes and memory notes of what it shows."""
    rows = result.rows
    backends = list(dict.fromkeys(r.get('backend') or 'eager' for r in rows)) or ['eager']
    dtypes = list(dict.fromkeys(r.get('dtype') or 'fp32' for r in rows)) or ['fp32']
    out = []
    for c in CONVENTIONS:
        if c.startswith('Peak memory'):
            if all(r.get('peak_mem_mb') is None for r in rows if not (r.get('skipped') or r.get('error'))):
                c = 'Peak memory: not measured in this run (--no-memory), so its columns show "-".'
            elif not set(backends) & {'onnxruntime', 'openvino'}:
                c = c[:c.index(' Not measured for onnxruntime')]
        elif c.startswith('Backends and dtypes'):
            c = (f'Backends and dtypes: {", ".join(_BACKENDS.get(b, b) for b in backends)} in '
                 f'{", ".join(_DTYPES.get(d, d) for d in dtypes)}.'
                 + (' A combination that cannot run here is a row marked "skipped" with the reason.'
                    if any(r.get('skipped') for r in rows) else '')
                 + ' "x eager fp32": throughput over the same model\'s eager fp32 row, per round'
                 + (' (1.00 on every row here: only eager fp32 was run).' if backends == ['eager'] and
                    dtypes == ['fp32'] else '.'))
        out.append(c)
    return out


def _atomic_write(path: Path, write: Callable[[io.IOBase], None], binary: bool = False) -> None:
    """``write(f)`` into ``path`` atomically (text files: UTF-8, no newline translation)."""
    with atomic_path(path) as tmp, open(tmp, 'wb' if binary else 'w',
                                        **({} if binary else {'encoding': 'utf-8', 'newline': ''})) as f:
        write(f)


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return '-'
    if isinstance(value, float):
        return f'{value:.{digits}f}'
    return str(value)


def to_markdown(result: BenchResult) -> str:
    """The results table with the machine, settings and conventions, as Markdown."""
    meta, m = result.meta, result.meta['machine']
    s = meta['settings']
    ref = meta.get('reference') or s.get('reference')
    flags = [f for f, on in (('channels_last', s['channels_last']),) if on]
    combos = [f'backends {", ".join(s.get("backends") or ["compile" if s.get("compile") else "eager"])}',
              f'dtypes {", ".join(s.get("dtypes") or ["bf16" if s.get("amp") else "fp32"])}']
    seg = meta['task'] == 'seg'
    lines = [
        f"# {meta['title']} ({'segmentation' if meta['task'] == 'seg' else 'classification'})",
        '',
        f"Machine: **{meta['machine_label']}**; device `{m['device']}`; {m['ram_gb']} GiB RAM; {m['os']}.",
        f"Versions: torch {m['torch']}, timm {m['timm']}, fvcore {m['fvcore']}, mednext-zoo {m['mednext_zoo']}"
        + (f", segmentation_models_pytorch {m['segmentation_models_pytorch']}" if meta['task'] == 'seg' else '')
        + f", Python {m['python']}; torch threads {m['torch_num_threads']}.",
        f"Run: {meta['started_utc']}, {meta['wall_s']} s; batch-1 latency {s['rounds']} rounds x "
        f"{s['latency_iters']} runs, batch-{s['batch_size']} throughput {s['rounds']} rounds x "
        f"{s['throughput_iters']} runs, {s['warmup']} warm-up runs; "
        f"{'; '.join(combos + (flags or ['contiguous (NCHW)']))}{'; quick mode' if s['quick'] else ''}.",
        *_load_lines(meta),
        f"Reference for the x-ratios: `{ref}`." if meta.get('reference') else
        (f"Reference `{ref}` was not measured in this run: no ratios." if ref else 'No reference model: no ratios.'),
        '',
        '| model | backend | dtype | img | classes | params (M) | GFLOPs | acts (M) | latency b1 ms (median / p90) | '
        f"throughput img/s (b{s['batch_size']}) | peak mem MB | params x ref | GFLOPs x ref | latency x ref | "
        f"throughput x ref | mem x ref | x eager fp32 | max abs Δlogit | {'label Dice' if seg else 'top-1 agree'} |",
        '| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: '
        '| ---: | ---: | ---: |',
    ]
    for r in result.rows:
        name = f"`{r['name']}`" + (f" ({r['label']})" if r.get('label') else '')
        head = f"| {name} | {r.get('backend') or 'eager'} | {r.get('dtype') or 'fp32'} | {r['img_size']} | " \
               f"{r['num_classes']} | {_fmt(r['params_m'])} | {_fmt(r['gflops'])} |"
        why = ('skipped: ' + r['skipped']) if r.get('skipped') else ('error: ' + r['error']) if r.get('error') else ''
        if why:
            lines.append(f"{head} {why.replace('|', '/')} |" + ' |' * 11)
            continue
        lat = f"{_fmt(r['latency_ms_median'], 1)} / {_fmt(r['latency_ms_p90'], 1)}"
        agree = r.get('dice_vs_fp32') if seg else r.get('top1_agreement')
        lines.append(
            f"{head} {_fmt(r['activations_m'])} | {lat} | {_fmt(r['throughput_ips'], 1)} | "
            f"{_fmt(r['peak_mem_mb'], 0)} | {_fmt(r['params_ratio'])} | {_fmt(r['gflops_ratio'])} | "
            f"{_fmt(r['latency_ratio'])} | {_fmt(r['throughput_ratio'])} | {_fmt(r['peak_mem_ratio'])} | "
            f"{_fmt(r.get('speedup_vs_eager_fp32'))} | {_fmt_drift(r.get('max_abs_dlogit'))} | "
            f"{_fmt(agree, 3)} |"
        )
    skipped = list(dict.fromkeys(f"`{r['name']}`: {r['skipped_ops']}" for r in result.rows if r.get('skipped_ops')))
    lines += ['', 'Conventions:', ''] + [f'- {c}' for c in conventions(result)]
    if skipped:
        lines += ['', 'Op types fvcore skipped (op:calls):', ''] + [f'- {s}' for s in skipped]
    return '\n'.join(lines) + '\n'


def _fmt_drift(value: Optional[float]) -> str:
    return '-' if value is None else f'{value:.2g}'


def _load_lines(meta: Dict[str, Any]) -> List[str]:
    lines = [f"Note: {meta['note']}"] if meta.get('note') else []
    load = [v for v in meta.get('load_avg_1min') or [] if v is not None]
    cores = meta['machine'].get('cpu_cores_usable') or 1
    if load:
        busy = cpu_busy(load, cores) and meta['machine']['device'] == 'cpu'
        lines.append(
            f"System load (1-min average) at start / end: {' / '.join(f'{v:.1f}' for v in load)} on {cores} cores"
            + ('. **Other processes were competing for the CPU: absolute times are noisy; compare the x-ratios, '
               'which are measured interleaved.**' if busy else '.'))
    return lines


def load_results(path: Union[str, Path]) -> BenchResult:
    """Read a results.json (or the folder holding it) back into a ``BenchResult``."""
    path = Path(path)
    data = json.loads((path / 'results.json' if path.is_dir() else path).read_text())
    return BenchResult(meta=data['meta'], rows=data['rows'])


LABEL_GID = 'bench-label'  # the gid of every model label on the chart (the tests find them by it)


def _precision(meta: Dict[str, Any]) -> str:
    s = meta['settings']
    parts = [', '.join(s.get('dtypes') or [f"AMP {meta.get('amp_dtype') or 'autocast'}" if s.get('amp') else 'fp32'])]
    if s.get('channels_last'):
        parts.append('channels-last')
    backends = s.get('backends') or (['torch.compile'] if s.get('compile') else [])
    if backends and backends != ['eager']:
        parts.append(', '.join(backends))
    return ', '.join(parts)


def _overlap(a, b) -> float:
    """Intersection area of two display-space boxes ``(x0, y0, x1, y1)``."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return w * h if w > 0 and h > 0 else 0.0


def _text_box(txt, renderer, pad: float = 1.0) -> tuple:
    """Display-space box of a label's text alone (an Annotation's own extent also spans its leader line)."""
    import matplotlib.text as mtext
    if isinstance(txt, mtext.Annotation):
        txt.update_positions(renderer)  # place the text at its offset before measuring it
    bb = mtext.Text.get_window_extent(txt, renderer)
    return (bb.x0 - pad, bb.y0 - pad, bb.x1 + pad, bb.y1 + pad)


def _place_labels(fig, ax, points: List[Dict[str, Any]], fontsize: float = 7.5) -> None:
    """Greedy label placement: each label takes the first candidate spot (nearest first: right of its marker,
    left, then above, below and the diagonals, then the same further out) whose box stays inside the axes and
    overlaps no marker and no label placed before it; a label not straight beside its marker gets a leader
    line. Hand-written because the usual helper (adjustText) is not a dependency, and a dozen labels need no
    more than this.

    ``points``: dicts with ``x``, ``y`` (data), ``r`` (marker radius in points) and ``text``.
    """
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    px = fig.dpi / 72.0
    disp = [tuple(ax.transData.transform((p['x'], p['y']))) for p in points]
    ab = ax.get_window_extent(renderer)
    axes_box = (ab.x0 + 2, ab.y0 + 2, ab.x1 - 2, ab.y1 - 2)
    markers = [(cx - p['r'] * px, cy - p['r'] * px, cx + p['r'] * px, cy + p['r'] * px)
               for p, (cx, cy) in zip(points, disp)]

    def crowding(i):  # points with many close neighbours go first: they have the fewest free spots
        return -sum(1 for j, (x, y) in enumerate(disp)
                    if j != i and abs(x - disp[i][0]) < 150 and abs(y - disp[i][1]) < 60)

    directions = [(1, 0), (-1, 0), (1, 1), (1, -1), (0, 1), (0, -1), (-1, 1), (-1, -1)]
    placed: List[tuple] = []
    for i in sorted(range(len(points)), key=crowding):
        p = points[i]
        best = None
        for ring in (1.0, 1.8, 2.8, 4.0, 5.5, 7.5):
            gap = (p['r'] + 3) * ring
            for dx, dy in directions:
                off = (dx * gap, dy * gap - (fontsize * 0.45 if dy == 0 else 0))
                ha = 'left' if dx > 0 else 'right' if dx < 0 else 'center'
                va = 'bottom' if dy >= 0 else 'top'
                leader = ring > 1.0 or dy != 0
                txt = ax.annotate(
                    p['text'], (p['x'], p['y']), textcoords='offset points', xytext=off, fontsize=fontsize,
                    ha=ha, va=va, gid=LABEL_GID, zorder=4,
                    arrowprops=dict(arrowstyle='-', color='0.4', lw=0.6, shrinkA=0, shrinkB=p['r'])
                    if leader else None)
                box = _text_box(txt, renderer)
                outside = (max(0, axes_box[0] - box[0]) + max(0, box[2] - axes_box[2])
                           + max(0, axes_box[1] - box[1]) + max(0, box[3] - axes_box[3]))
                cost = (10 * sum(_overlap(box, b) for b in placed) + sum(_overlap(box, m) for m in markers)
                        + 1000 * outside)
                if best is None or cost < best[0]:
                    if best is not None:
                        best[1].remove()
                    best = (cost, txt, box)
                else:
                    txt.remove()
                if cost == 0:
                    break
            if best[0] == 0:
                break
        placed.append(best[2])


def _combo(row: Dict[str, Any]) -> str:
    backend, dtype = row.get('backend') or 'eager', row.get('dtype') or 'fp32'
    return '' if (backend, dtype) == ('eager', 'fp32') else f' [{backend} {dtype}]'


def bench_figure(result: BenchResult):
    """The results chart: throughput against GFLOPs, marker area by params, labels that do not overlap."""
    import matplotlib
    matplotlib.use('Agg', force=False)
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    meta, s = result.meta, result.meta['settings']
    rows = [r for r in result.rows if not r.get('error') and r.get('throughput_ips') and r.get('gflops')]
    ref = meta.get('reference')
    seg = meta.get('task') == 'seg'
    fig, ax = plt.subplots(figsize=(9, 6.2), dpi=120)
    points = []
    for r in rows:
        family = r['name'].startswith(('mednext', 'medunext'))
        area = 20 + 12 * r['params_m']
        is_ref = r['name'] == ref
        ax.scatter(r['gflops'], r['throughput_ips'], s=area, alpha=0.6, zorder=3,
                   color='tab:red' if family else 'tab:blue',
                   edgecolors='black' if is_ref else 'none', linewidths=1.6 if is_ref else 0)
        points.append({'x': r['gflops'], 'y': r['throughput_ips'], 'r': (area / 3.14159) ** 0.5,
                       'text': f"{r['name']}{_combo(r)} ({r['params_m']:.1f} M)"})
    if rows:
        ax.set_xlim(0, max(r['gflops'] for r in rows) * 1.3)
        ax.set_ylim(0, max(r['throughput_ips'] for r in rows) * 1.15)
    device = meta['machine'].get('device', s.get('device', 'cpu'))
    ax.set_title(f"{'Segmentation' if seg else 'Classification'} throughput vs GFLOPs: {meta['machine_label']}, "
                 f"{device}, batch {s['batch_size']}, {_precision(meta)}\n"
                 f"up and to the left is better (more images/s for fewer GFLOPs); marker area ~ params",
                 fontsize=9)
    ax.set_xlabel('GFLOPs (fvcore, multiply-adds, batch 1)  \u2190 fewer is better')
    ax.set_ylabel(f"throughput (images/s, batch {s['batch_size']})  more is better \u2192")
    ax.grid(alpha=0.3, zorder=0)
    family_name = 'MedUNeXt family' if seg else 'MedNeXt family'
    handles = [
        Line2D([], [], ls='', marker='o', ms=8, color='tab:red', alpha=0.6, label=family_name),
        Line2D([], [], ls='', marker='o', ms=8, color='tab:blue', alpha=0.6, label='baselines'),
    ]
    if ref and any(r['name'] == ref for r in rows):
        handles.append(Line2D([], [], ls='', marker='o', ms=8, markerfacecolor='none', markeredgecolor='black',
                              markeredgewidth=1.6, label=f'outlined: {ref}, the reference of the "x ref" ratios'))
    fig.legend(handles=handles, loc='lower center', ncol=len(handles), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    _place_labels(fig, ax, points)
    return fig


def plot_results(result: BenchResult, path: Union[str, Path]) -> Optional[Path]:
    """Write :func:`bench_figure` as a PNG; returns the path, or None without matplotlib."""
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    path = Path(path)
    fig = bench_figure(result)
    try:
        _atomic_write(path, lambda f: fig.savefig(f, format='png'), binary=True)
    finally:
        plt.close(fig)
    return path


def write_results(result: BenchResult, out_dir: Union[str, Path], plot: bool = True) -> Dict[str, Path]:
    """Write results.json / .csv / .md (and .png when matplotlib is installed) into ``out_dir``."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        from ..errors import UserInputError
        raise UserInputError(f'--out {out} exists and is not a folder: name a folder.')
    written: Dict[str, Path] = {}
    payload = {'meta': result.meta, 'conventions': CONVENTIONS, 'fields': ROW_FIELDS, 'rows': result.rows}
    _atomic_write(out / 'results.json', lambda f: json.dump(payload, f, indent=2, default=str))
    written['json'] = out / 'results.json'

    def write_csv(f) -> None:
        w = csv.DictWriter(f, fieldnames=ROW_FIELDS + ['machine', 'device', 'torch', 'timm', 'threads'])
        w.writeheader()
        m = result.meta['machine']
        for r in result.rows:
            w.writerow({**r, 'machine': result.meta['machine_label'], 'device': m['device'], 'torch': m['torch'],
                        'timm': m['timm'], 'threads': m['torch_num_threads']})
    _atomic_write(out / 'results.csv', write_csv)
    written['csv'] = out / 'results.csv'
    md = to_markdown(result)
    _atomic_write(out / 'results.md', lambda f: f.write(md))
    written['md'] = out / 'results.md'
    if plot:
        png = plot_results(result, out / 'results.png')
        if png is not None:
            written['png'] = png
    return written


def rows_table(rows: List[Dict[str, Any]], columns: List[str]) -> str:
    """A small Markdown table of ``columns`` from ``rows`` (used by the suites)."""
    lines = ['| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
    for r in rows:
        lines.append('| ' + ' | '.join(_fmt(r.get(c)) for c in columns) + ' |')
    return '\n'.join(lines)
