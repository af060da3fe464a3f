"""What a reproduction records: environment (commit, versions, device), the evaluation next to the paper's
figures, and the model card's "Reproduction" section."""
from __future__ import annotations

import os
import shlex
import subprocess
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from .tag_protocols import TagProtocol
from .timing import format_duration

__all__ = ['environment', 'git_commit', 'headline_metrics', 'seed_statistics', 'card_metrics', 'reproduction_section',
           'command_line']

CLS_METRICS = ('accuracy', 'precision', 'recall', 'f1', 'auc')


def git_commit() -> str:
    """The commit of the mednext_zoo source in use (``+dirty`` with uncommitted changes), or why it is unknown."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        sha = subprocess.run(['git', '-C', here, 'rev-parse', 'HEAD'], capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return 'unknown (not a git checkout; see the mednext-zoo version)'
        dirty = subprocess.run(['git', '-C', here, 'status', '--porcelain', '--untracked-files=no', '--', '.'],
                               capture_output=True, text=True, timeout=10)
        return sha.stdout.strip() + ('+dirty' if dirty.stdout.strip() else '')
    except (OSError, subprocess.SubprocessError):
        return 'unknown (git not available)'


def environment(device: str, world_size: int, amp_dtype: Optional[str]) -> Dict[str, Any]:
    """Commit, library versions and the device the run used."""
    from ..machine import machine_info
    info = machine_info(device)
    keep = ('device', 'cpu', 'gpu', 'gpu_memory_gb', 'cuda', 'cudnn', 'os', 'python', 'torch', 'timm', 'mednext_zoo')
    env = {k: info[k] for k in keep if info.get(k) is not None}
    env.update(commit=git_commit(), world_size=world_size, amp=amp_dtype or 'none (float32)')
    return env


def headline_metrics(protocol: TagProtocol, result: Mapping[str, Any]) -> Dict[str, float]:
    """The numbers compared across seeds and with the paper, from one seed's ``metrics.json``."""
    if protocol.task == 'classification':
        rep = result['test']
        return {k: float(rep[k]) for k in CLS_METRICS}
    s = result['summaries']
    out = {'dice_legacy': s['legacy']['mean_dice'], 'hd95_legacy': s['legacy']['mean_hd95'],
           'dice_strict': s['strict']['mean_dice'], 'hd95_strict': s['strict']['mean_hd95']}
    for row in s['legacy']['per_class']:
        out[f'dice_legacy {row["class"]}'] = row['dice_mean']
    return {k: float(v) for k, v in out.items()}


def seed_statistics(per_seed: Sequence[Mapping[str, float]]) -> Dict[str, Dict[str, float]]:
    """``{metric: {'mean', 'std', 'n'}}`` over seeds (sample std, ddof 1; 0 for a single seed)."""
    out = {}
    for k in per_seed[0]:
        v = np.array([s[k] for s in per_seed], dtype=float)
        out[k] = {'mean': float(np.nanmean(v)), 'std': float(np.nanstd(v, ddof=1)) if len(v) > 1 else 0.0,
                  'n': int(len(v))}
    return out


def _units(protocol: TagProtocol, hd95_unit: str) -> Dict[str, str]:
    return {'hd95_legacy': 'hd95_legacy (voxels)', 'hd95_strict': f'hd95_strict ({hd95_unit})'} \
        if protocol.task == 'segmentation' else {}


def card_metrics(protocol: TagProtocol, first: Mapping[str, Any], stats: Mapping[str, Mapping[str, float]],
                 hd95_unit: str = 'mm') -> Dict[str, Dict[str, Any]]:
    """Card rows: the exported seed's figure (with its bootstrap CI), mean ± std over seeds, the paper's figure."""
    rows: Dict[str, Dict[str, Any]] = {}
    names = _units(protocol, hd95_unit)
    ci = first['test'].get('ci95', {}) if protocol.task == 'classification' else {}
    measured = headline_metrics(protocol, first)
    for k, v in measured.items():
        row: Dict[str, Any] = {'value': v}
        if ci.get(k):
            row['ci'] = tuple(ci[k])
        if stats[k]['n'] > 1:
            row['mean_std'] = f'{stats[k]["mean"]:.4f} ± {stats[k]["std"]:.4f} (n={stats[k]["n"]})'
        if k in protocol.paper:
            row['paper'] = protocol.paper[k]
        rows[names.get(k, k)] = row
    return rows


def command_line(tag: str, data: str, out: str, options: Mapping[str, Any]) -> str:
    """The ``mednext-zoo reproduce`` command that repeats a run (non-default options only)."""
    parts = ['mednext-zoo', 'reproduce', tag, '--data', data, '--out', out]
    for k, v in options.items():
        if v is None or v is False:
            continue
        flag = '--' + k.replace('_', '-')
        parts += [flag] if v is True else [flag, str(v)]
    return ' '.join(shlex.quote(p) for p in parts)


def _table(rows: Sequence[Sequence[Any]]) -> List[str]:
    head, *body = rows
    return ['| ' + ' | '.join(map(str, head)) + ' |', '|' + '---|' * len(head)] + \
        ['| ' + ' | '.join(map(str, r)) + ' |' for r in body]


def reproduction_section(protocol: TagProtocol, record: Mapping[str, Any]) -> str:
    """Markdown of the card's "Reproduction" section from the run record (``summary.json``)."""
    env = record['environment']
    L: List[str] = [
        f'These weights were produced by `mednext-zoo reproduce` (seed {record["exported_seed"]} of '
        f'{", ".join(map(str, record["seeds"]))}):',
        '',
        '```bash',
        record['command'],
        '```',
        '',
        f'- Protocol: {protocol.split.source} Groups kept in one split: {protocol.split.group_by}; split seed '
        f'{protocol.split.seed}.' if protocol.split.kind == 'fractions' else f'- Protocol: {protocol.split.source}.',
        f'- Recipe: {record["recipe"]}. Source: {protocol.recipe_source}',
        f'- Intensities: {protocol.intensity}.',
        f'- Split file: `splits.csv` of the run folder (sha256 `{record["split_sha256"]}`); the rule above and its '
        f'seed recreate it from the release.',
        f'- Data check: {record["data_check"]}',
        '- Deviations from the protocol: ' + ('; '.join(record['deviations']) if record['deviations'] else 'none.'),
        f'- Code: mednext-zoo {env.get("mednext_zoo")}, commit `{env.get("commit")}`; torch {env.get("torch")}, '
        f'timm {env.get("timm")}, Python {env.get("python")}.',
        f'- Device: {record["device_text"]}; mixed precision {env.get("amp")}.',
        f'- Wall time: {format_duration(record["wall_time_s"])} in {record["sessions"]} session(s); training time '
        + ', '.join(f'seed {s} {format_duration(t)}' for s, t in zip(record['seeds'], record['train_time_s'])) + '.',
        '',
    ]
    table = [['split'] + list(next(iter(record['split_sizes'].values())).keys())]
    for split, counts in record['split_sizes'].items():
        table.append([split] + list(counts.values()))
    L += ['Split sizes:', ''] + _table(table) + ['']
    if protocol.task == 'segmentation':
        for split, ids in record.get('split_cases', {}).items():
            L.append(f'- {split}: {", ".join(ids)}')
        L.append('')
    return '\n'.join(L)
