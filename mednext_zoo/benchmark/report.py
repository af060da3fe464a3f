"""Write a ``BenchResult`` as results.json, results.csv, results.md and results.png (atomically)."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

from .._atomic import atomic_path
from .runner import ROW_FIELDS, BenchResult

__all__ = ['write_results', 'to_markdown', 'plot_results', 'load_results', 'CONVENTIONS']

CONVENTIONS = [
    'Params: every parameter element, in millions, with the head named in the "classes" column '
    '(1000 for classification as in timm\'s published tables; 9 for segmentation, the Synapse setting).',
    'GFLOPs: fvcore, one multiply-add = one FLOP, batch 1, fp32, at the "img" resolution. fvcore counts '
    'convolutions, linear / matrix products, BatchNorm / LayerNorm / GroupNorm, adaptive pooling and '
    'upsampling; the op types it skipped are listed per model (elementwise add / mul / div, activations, '
    'softmax, max-pool: under 1% of the total for every model here).',
    'Activations: fvcore ActivationCountAnalysis, output elements of convolutions and matrix products, batch 1.',
    'Latency: batch-1 forward, torch.inference_mode, median and 90th percentile over all timed runs.',
    'Throughput: images/s of a batch-N forward (N in the "batch" column), median over rounds.',
    'Peak memory: CPU, growth of the process resident set (RSS) during one batch-N forward over its level '
    'just before (freed heap returned to the OS first, RSS sampled every 0.5 ms; allocator caching can hide '
    'some growth, so read it as approximate); CUDA, torch.cuda.max_memory_allocated during the forward minus '
    'the memory allocated before it (weights and inputs excluded on both).',
    'Ratios ("x ref"): a model\'s figure divided by the reference model\'s, measured in the same run. Timed '
    'figures are interleaved: in every round each model runs in turn (rotating start), a ratio is taken per '
    'round from the per-round medians, and the median over rounds is reported. On a shared or busy machine '
    'the absolute times drift; the ratios are the figures to compare across machines.',
]


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
    flags = [f for f, on in (('AMP ' + str(meta.get('amp_dtype')), s['amp']), ('channels_last', s['channels_last']),
                             ('torch.compile', s['compile'])) if on]
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
        f"{', '.join(flags) if flags else 'fp32, contiguous (NCHW)'}{'; quick mode' if s['quick'] else ''}.",
        *_load_lines(meta),
        f"Reference for the x-ratios: `{ref}`." if meta.get('reference') else
        (f"Reference `{ref}` was not measured in this run: no ratios." if ref else 'No reference model: no ratios.'),
        '',
        '| model | img | classes | params (M) | GFLOPs | acts (M) | latency b1 ms (median / p90) | '
        f"throughput img/s (b{s['batch_size']}) | peak mem MB | params x ref | GFLOPs x ref | latency x ref | "
        'throughput x ref | mem x ref |',
        '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
    ]
    for r in result.rows:
        name = f"`{r['name']}`" + (f" ({r['label']})" if r.get('label') else '')
        if r.get('error'):
            lines.append(f"| {name} | {r['img_size']} | {r['num_classes']} | {_fmt(r['params_m'])} | "
                         f"{_fmt(r['gflops'])} | error: {r['error'].replace('|', '/')} | | | | | | | | |")
            continue
        lat = f"{_fmt(r['latency_ms_median'], 1)} / {_fmt(r['latency_ms_p90'], 1)}"
        lines.append(
            f"| {name} | {r['img_size']} | {r['num_classes']} | {_fmt(r['params_m'])} | {_fmt(r['gflops'])} | "
            f"{_fmt(r['activations_m'])} | {lat} | {_fmt(r['throughput_ips'], 1)} | {_fmt(r['peak_mem_mb'], 0)} | "
            f"{_fmt(r['params_ratio'])} | {_fmt(r['gflops_ratio'])} | {_fmt(r['latency_ratio'])} | "
            f"{_fmt(r['throughput_ratio'])} | {_fmt(r['peak_mem_ratio'])} |"
        )
    skipped = [f"`{r['name']}`: {r['skipped_ops']}" for r in result.rows if r.get('skipped_ops')]
    lines += ['', 'Conventions:', ''] + [f'- {c}' for c in CONVENTIONS]
    if skipped:
        lines += ['', 'Op types fvcore skipped (op:calls):', ''] + [f'- {s}' for s in skipped]
    return '\n'.join(lines) + '\n'


def _load_lines(meta: Dict[str, Any]) -> List[str]:
    lines = [f"Note: {meta['note']}"] if meta.get('note') else []
    load = [v for v in meta.get('load_avg_1min') or [] if v is not None]
    cores = meta['machine'].get('cpu_cores_usable') or 1
    if load:
        busy = max(load) > 0.5 * cores and meta['machine']['device'] == 'cpu'
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


def plot_results(result: BenchResult, path: Union[str, Path]) -> Optional[Path]:
    """Throughput against GFLOPs, marker area by params; returns the path, or None without matplotlib."""
    try:
        import matplotlib
        matplotlib.use('Agg', force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = [r for r in result.rows if not r.get('error') and r.get('throughput_ips') and r.get('gflops')]
    path = Path(path)
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    ref = result.meta.get('reference')
    for r in rows:
        family = r['name'].startswith(('mednext', 'medunext'))
        ax.scatter(r['gflops'], r['throughput_ips'], s=20 + 12 * r['params_m'], alpha=0.6,
                   color='tab:red' if family else 'tab:blue', edgecolors='black' if r['name'] == ref else 'none')
        ax.annotate(f"{r['name']} ({r['params_m']:.1f} M)", (r['gflops'], r['throughput_ips']),
                    textcoords='offset points', xytext=(6, 4), fontsize=7)
    s = result.meta['settings']
    ax.set_xlabel('GFLOPs (fvcore, multiply-adds, batch 1)')
    ax.set_ylabel(f"throughput (images/s, batch {s['batch_size']})")
    ax.set_title(f"{result.meta['machine_label']}\nmarker area ~ params; red: MedNeXt family", fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    fig.tight_layout()
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
