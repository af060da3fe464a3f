"""``reproduce(tag, data, out)``: from a downloaded release to a publishable Hub folder, by the tag's protocol.

Steps: recognise the release (:mod:`mednext_zoo.data.releases`), check its contents, split it by the tag's rule
(:mod:`.splits`), time a few training steps and print the plan; then train each seed with
``mednext_zoo.finetune`` (classification) or ``mednext_zoo.finetune.segmentation`` (segmentation), evaluate on
the protocol's test split, and write ``RUN/export/`` with ``mednext_zoo.hub.save_pretrained``. The run folder::

    RUN/run.json           identity (tag, overrides): what --resume must match
    RUN/reproduce.json     one entry per session
    RUN/splits.csv         every image / case with its split (a resumed run must recompute the same file)
    RUN/datacheck.json     file checks, cached by path, size and modification time
    RUN/seed-K/            the fine-tuning run of seed K (resumable)
    RUN/summary.json       per-seed metrics, mean ± std, the paper's figures, deviations, environment
    RUN/export/            config.json, model.safetensors, README.md: ready for `mednext-zoo push`
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any, Dict, List, Optional

import torch

from .._atomic import atomic_write_text
from ..catalog import hub_id
from ..data.releases import ContentReport, Recognised, check_contents, recognise
from ..errors import UserInputError
from . import record as rec_mod
from .splits import SplitRow, split_release, split_table, to_data_source, write_split_file
from .tag_protocols import TagProtocol, get_tag_protocol
from .timing import Estimate, format_duration, measure_step_time, steps_per_epoch

__all__ = ['reproduce', 'build_config']

STATE = 'reproduce.json'


def _say(*args) -> None:
    if int(os.environ.get('RANK', '0')) == 0:
        print(*args, flush=True)


def _dump(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=lambda o: o.item() if hasattr(o, 'item') else str(o)) + '\n'


# ---------------------------------------------------------------- configuration
def build_config(protocol: TagProtocol, seed: int, out: str, data: str, *, epochs: Optional[int] = None,
                 batch_size: Optional[int] = None, img_size: Optional[int] = None, **engine: Any):
    """The ``ClassificationConfig`` / ``SegConfig`` of one seed: the config's defaults, the protocol's recipe, then the
    overrides; ``engine`` holds run settings (device, amp, resume, progress, ...)."""
    if protocol.task == 'classification':
        from ..finetune.classification.task import ClassificationConfig as Config
        fixed = dict(model=protocol.tag, data=data, out=out, in_chans=protocol.in_chans, export=False)
    else:
        from ..finetune.segmentation.task import SegConfig as Config
        fixed = dict(model=protocol.tag, data=data, out=out, protocol=protocol.split.lists, layout=protocol.release,
                     export=False)
    names = {f.name for f in dataclasses.fields(Config)}
    kw = {**fixed, **protocol.recipe, 'img_size': img_size or protocol.img_size, 'seed': seed}
    if epochs is not None:
        kw['epochs'] = epochs
    if batch_size is not None:
        kw['batch_size'] = batch_size
    kw.update({k: v for k, v in engine.items() if v is not None})
    unknown = sorted(set(kw) - names)
    if unknown:  # a protocol entry that the training config does not have: a bug in the table, not user input
        raise RuntimeError(f'{Config.__name__} has no field(s) {unknown} (protocol of {protocol.tag}).')
    return Config(**kw)


def _recipe_text(protocol: TagProtocol, cfg) -> str:
    """The training recipe of the plan, as the run will use it (the resolved config: lr, clipping ...)."""
    clip = f'gradient norm clipped to {cfg.clip_grad:g}' if cfg.clip_grad else 'no gradient clipping'
    if protocol.task == 'classification':
        return (f'{protocol.arch} from scratch at {cfg.img_size}x{cfg.img_size}, {protocol.in_chans} channels; AdamW '
                f'lr {cfg.lr:g} (cosine to {cfg.min_lr:g}, {cfg.warmup_epochs:g} warm-up epochs), weight decay '
                f'{cfg.weight_decay:g}, {clip}; batch {cfg.batch_size}; random resized crop (scale '
                f'{cfg.crop_scale[0]:g}-{cfg.crop_scale[1]:g}) + horizontal flip (p {cfg.hflip:g}); {cfg.epochs} '
                f'epochs; best checkpoint by validation {cfg.monitor if cfg.monitor != "auto" else "loss"}')
    return (f'{protocol.arch} from scratch at {cfg.img_size}x{cfg.img_size}, 1 channel; {cfg.opt} lr {cfg.lr:g} '
            f'(cosine to {cfg.min_lr:g}), weight decay {cfg.weight_decay:g}, {clip}; batch {cfg.batch_size}; loss '
            f'{cfg.ce_weight:g} CE + {cfg.dice_weight:g} soft Dice; augmentation {"on" if cfg.augment else "off"}; '
            f'intensity {cfg.intensity}; {cfg.epochs} epochs')


# ---------------------------------------------------------------- run folder
def _prepare_out(out: str, identity: Dict[str, Any], resume: bool, overwrite: bool) -> Dict[str, Any]:
    """The engine's run-folder rules (never overwrite silently; resume only the same setup), then the
    reproduction's own state (its sessions)."""
    from ..finetune.run_dir import prepare_run_dir
    resumed = prepare_run_dir(out, identity, resume, overwrite)
    state_path = os.path.join(out, STATE)
    if resumed and os.path.isfile(state_path):
        with open(state_path) as f:
            return json.load(f)
    state = {'identity': identity, 'created': time.strftime('%Y-%m-%dT%H:%M:%S'), 'sessions': []}
    atomic_write_text(state_path, _dump(state))
    return state


def _seed_done(seed_dir: str) -> bool:
    return os.path.isfile(os.path.join(seed_dir, 'metrics.json'))


# ---------------------------------------------------------------- plan
def _data_check_text(rec: Recognised, report: ContentReport) -> str:
    text = (f'{report.checked} files read: {len(report.unreadable)} unreadable, '
            f'{len(report.cross_label_duplicates)} identical under two '
            f'{"labels" if rec.release.task == "classification" else "cases"}, {report.duplicate_files} duplicate '
            f'file(s)')
    if report.merged_groups:
        text += f' ({report.merged_groups} group(s) merged so that copies stay in one split)'
    counts = '; '.join(f'{k} {report.counts.get(k, 0)} (published {v})' for k, v in report.published.items())
    return f'{text}. Counts: {counts}.'


def _estimate(protocol: TagProtocol, rec: Recognised, rows: List[SplitRow], cfg, seeds: int, world: int,
              timing_steps: int, device: torch.device, amp_dtype: Optional[torch.dtype]) -> Estimate:
    bs = cfg.batch_size
    if protocol.task == 'classification':
        n = {s: sum(r[4] == s for r in rows) for s in ('train', 'val', 'test')}
        train_steps = steps_per_epoch(n['train'], bs, world)
        eval_batches = math.ceil(n['val'] / (bs * world))
        final = math.ceil((n['val'] + n['test']) / (bs * world))
    else:
        where = {r[0]: r[4] for r in rows}
        slices = {s: sum(c.slices for c in rec.cases if where[c.case_id] == s) for s in ('train', 'val', 'test')}
        train_steps = steps_per_epoch(slices['train'], bs, world)
        eval_batches = math.ceil(min(slices['val'], cfg.val_max_slices) / (bs * world))
        final = math.ceil(slices['test'] / bs)
    sec = None
    if timing_steps > 0:
        sec = measure_step_time(protocol.tag, protocol.task, bs, cfg.img_size, device, amp_dtype, timing_steps).wall_s
    dtype = str(amp_dtype).replace('torch.', '') if amp_dtype is not None else 'float32'
    dev = torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{device.type} ({torch.get_num_threads()} '\
                                                                            f'threads)'
    return Estimate(sec, timing_steps, bs, dtype, dev, train_steps, eval_batches, final, cfg.epochs, seeds, world)


def _format_plan(plan: Dict[str, Any]) -> str:
    p = plan
    lines = [f'[mednext-zoo] reproduce {p["tag"]}: {p["dataset"]}',
             f'  data        {p["data"]} (release found at {p["base"]})',
             f'  data check  {p["data_check"]}',
             '  labels      ' + ', '.join(f'{i} {n}' + (' (positive)' if n == p['positive'] else '')
                                           for i, n in enumerate(p['labels'])),
             f'  split       {p["split_rule"]}']
    sizes = p['split_sizes']
    cols = list(next(iter(sizes.values())).keys())
    width = max(8, *(len(c) + 2 for c in cols))
    lines.append('              ' + 'split'.ljust(7) + ''.join(c.rjust(width) for c in cols)
                 + ('total'.rjust(width) if p['task'] == 'classification' else ''))
    for split, counts in sizes.items():
        tot = sum(counts.values())
        lines.append('              ' + split.ljust(7) + ''.join(str(counts[c]).rjust(width) for c in cols)
                     + (str(tot).rjust(width) if p['task'] == 'classification' else ''))
    lines += [f'  recipe      {p["recipe"]}',
              f'  seeds       {", ".join(map(str, p["seeds"]))}',
              f'  device      {p["device_text"]}, mixed precision {p["amp"]}',
              f'  estimate    {p["estimate"]}',
              '  deviations  ' + ('; '.join(p['deviations']) if p['deviations'] else 'none'),
              f'  licence     {p["licence"]}']
    return '\n'.join(lines)


# ---------------------------------------------------------------- main entry
def reproduce(tag: str, data: str, out: Optional[str] = None, *, epochs: Optional[int] = None, seeds: int = 1,
              dry_run: bool = False, resume: bool = False, overwrite: bool = False, device: str = 'auto',
              amp: str = 'auto', batch_size: Optional[int] = None, img_size: Optional[int] = None,
              allow_partial: bool = False, timing_steps: int = 3, num_workers: int = 0, progress: bool = True,
              n_bootstrap: int = 1000) -> Dict[str, Any]:
    """Reproduce pretrained tag ``tag`` from a downloaded release in ``data`` into run folder ``out``.

    Args:
        tag: One of ``PROTOCOLS`` (``mednext_base.sarscov2_ct`` ...).
        data: The folder the release was unpacked into.
        out: The run folder (not needed for ``dry_run``); ``out/export`` is the Hub folder.
        epochs, batch_size: Overrides of the protocol (recorded in the card as deviations).
        seeds: How many of the protocol's seeds to train (``3``: mean ± std over seeds 0, 1, 2 in the card).
        dry_run: Check the data and print the plan (split sizes, recipe, estimated time); train nothing.
        resume / overwrite: Continue an interrupted run in ``out`` / replace it.
        device, amp: Where and in what precision to train (``auto``: CUDA if present; bf16 / fp16 on CUDA).
        img_size: A smaller input for tests (a deviation: the tag's input is 224x224).
        allow_partial: Train on a copy that differs from the published release (count mismatches, unreadable
            files or images under two labels are left out); every difference is a recorded deviation.
        timing_steps: Training steps timed for the estimate (0: no estimate).

    Returns:
        The plan (``dry_run``) or the run summary (``summary.json``'s content); ``{}`` on non-main ranks.
    """
    t0 = time.time()
    protocol = get_tag_protocol(tag)
    if not 1 <= seeds <= len(protocol.seeds):
        raise UserInputError(f'--seeds must be 1..{len(protocol.seeds)} (the protocol\'s seeds are '
                             f'{", ".join(map(str, protocol.seeds))}); got {seeds}.')
    for name, v in (('epochs', epochs), ('batch_size', batch_size), ('img_size', img_size)):
        if v is not None and int(v) < 1:
            raise UserInputError(f'--{name.replace("_", "-")} must be at least 1, got {v}.')
    if out is None and not dry_run:
        raise UserInputError('--out RUN_DIR is needed to train (or pass --dry-run to only check the data and plan).')
    rank, world = int(os.environ.get('RANK', '0')), int(os.environ.get('WORLD_SIZE', '1'))
    is_main = rank == 0
    out = os.path.abspath(out) if out else None
    identity = {'tag': tag, 'epochs': epochs, 'batch_size': batch_size, 'img_size': img_size,
                'allow_partial': allow_partial}
    state = None
    if not dry_run and is_main:
        state = _prepare_out(out, identity, resume, overwrite)

    # 1. the data: recognise the release, check every file, split by the tag's rule
    rec = recognise(protocol.release, data, allow_partial)
    cache = os.path.join(out, 'datacheck.json') if (out and not dry_run and is_main) else None
    rec, report = check_contents(rec, allow_partial, cache=cache, progress=progress and is_main)
    rows = split_release(rec, protocol)
    sizes = split_table(rows, protocol)

    # 2. deviations from the protocol
    seed_list = list(protocol.seeds[:seeds])
    cfg0 = build_config(protocol, seed_list[0], os.path.join(out or '.', f'seed-{seed_list[0]}'), rec.base,
                        epochs=epochs, batch_size=batch_size, img_size=img_size)
    default = build_config(protocol, 0, '.', rec.base)
    deviations = []
    if cfg0.epochs != default.epochs:
        deviations.append(f'{cfg0.epochs} epochs instead of {default.epochs}')
    if cfg0.batch_size != default.batch_size:
        deviations.append(f'batch {cfg0.batch_size} instead of {default.batch_size}')
    if cfg0.img_size != protocol.img_size:
        deviations.append(f'input {cfg0.img_size}x{cfg0.img_size} instead of {protocol.img_size}x{protocol.img_size} '
                          f'(testing override)')
    if len(report.deviations) > 12:
        deviations += report.deviations[:12] + [f'... and {len(report.deviations) - 12} more (summary.json)']
    else:
        deviations += report.deviations

    # 3. where, how fast
    from ..finetune.distributed import resolve_amp_dtype, resolve_device
    dev = resolve_device(device, int(os.environ.get('LOCAL_RANK', '0')))
    amp_dtype = resolve_amp_dtype(amp, dev)
    est = _estimate(protocol, rec, rows, cfg0, len(seed_list), world, timing_steps if is_main else 0, dev, amp_dtype)
    device_text = (f'{est.device}' + (f' x {world} processes' if world > 1 else ''))
    ds = protocol.dataset
    rule = protocol.split
    split_rule = (f'{"/".join(str(round(f * 100)) for f in rule.fractions)} (train/val/test) stratified by label; '
                  f'groups kept together: {rule.group_by}; seed {rule.seed}' if rule.kind == 'fractions'
                  else rule.source)
    if rule.kind == 'fractions' and rule.train_kind != rule.test_kind:
        split_rule += f'; train/val use {rule.train_kind} images, test {rule.test_kind} images'
    plan = {
        'tag': tag, 'dataset': ds['name'], 'task': protocol.task, 'data': os.path.abspath(data), 'base': rec.base,
        'data_check': _data_check_text(rec, report), 'labels': list(protocol.label_order),
        'positive': ds.get('positive_class'), 'split_rule': split_rule, 'split_sizes': sizes,
        'recipe': _recipe_text(protocol, cfg0), 'seeds': seed_list, 'device_text': device_text,
        'amp': str(amp_dtype).replace('torch.', '') if amp_dtype else 'none (float32)',
        'estimate': est.describe(), 'estimate_s': est.total_s, 'sec_per_step': est.sec_per_step,
        'deviations': deviations, 'licence': rec.release.licence,
    }
    _say(_format_plan(plan))
    if dry_run:
        return plan if is_main else {}

    # 4. train every seed (resumable); under torchrun one process group serves every seed
    split_sha = write_split_file(os.path.join(out, 'splits.csv'), rows, rec.base) if is_main else ''
    source = to_data_source(rows, protocol, rec.base) if protocol.task == 'classification' else None
    from ..finetune.distributed import cleanup_distributed, setup_distributed
    info = setup_distributed(device)
    try:
        results = _train_seeds(protocol, seed_list, out, rec.base, source, epochs=epochs, batch_size=batch_size,
                               img_size=img_size, device=device, amp=amp, num_workers=num_workers, progress=progress,
                               n_bootstrap=n_bootstrap)
    finally:
        if info.enabled:
            cleanup_distributed()
    if not is_main:
        return {}

    # 5. summary over seeds, export of the first seed, card
    first = results[seed_list[0]]
    per_seed = [rec_mod.headline_metrics(protocol, results[s]) for s in seed_list]
    stats = rec_mod.seed_statistics(per_seed)
    hd95_unit = first['summaries']['strict'].get('hd95_unit', 'mm') if protocol.task == 'segmentation' else ''
    env = rec_mod.environment(str(dev), world, plan['amp'])
    sessions = state.get('sessions', []) + [{'start': time.strftime('%Y-%m-%dT%H:%M:%S', time.localtime(t0)),
                                             'wall_s': round(time.time() - t0, 1)}]
    options = {'epochs': epochs, 'seeds': seeds if seeds > 1 else None, 'batch_size': batch_size,
               'img_size': img_size, 'allow_partial': allow_partial}
    summary = {
        'tag': tag, 'dataset': ds['name'], 'task': protocol.task, 'seeds': seed_list, 'exported_seed': seed_list[0],
        'command': rec_mod.command_line(tag, os.path.abspath(data), out, options),
        'recipe': plan['recipe'], 'split_rule': split_rule, 'split_sizes': sizes, 'split_sha256': split_sha,
        'data_check': plan['data_check'], 'deviations': deviations, 'all_deviations': report.deviations,
        'per_seed': {str(s): m for s, m in zip(seed_list, per_seed)}, 'mean_std': stats,
        'paper': dict(protocol.paper), 'paper_source': f'Xue et al., PLoS One 2026, {protocol.paper_source}',
        'environment': env, 'device_text': device_text, 'sessions': len(sessions),
        'wall_time_s': round(sum(s['wall_s'] for s in sessions), 1),
        'train_time_s': [float(results[s].get('train_time_s', 0.0)) for s in seed_list],
        'estimate': plan['estimate'],
    }
    if protocol.task == 'segmentation':
        summary['split_cases'] = {s: [r[0] for r in rows if r[4] == s] for s in ('train', 'val', 'test')
                                  if any(r[4] == s for r in rows)}
    export_dir = os.path.join(out, 'export')
    model = _export(protocol, out, seed_list[0], export_dir, cfg0.img_size, first, stats, summary, hd95_unit)
    summary['round_trip'] = _check_round_trip(model, export_dir, protocol, cfg0.img_size)
    state['sessions'] = sessions
    atomic_write_text(os.path.join(out, STATE), _dump(state))
    atomic_write_text(os.path.join(out, 'summary.json'), _dump(summary))
    _print_result(protocol, summary, first, export_dir)
    return summary


def _train_seeds(protocol: TagProtocol, seed_list: List[int], out: str, base: str, source, *,
                 n_bootstrap: int, **overrides: Any) -> Dict[int, Dict[str, Any]]:
    """Train (or resume, or read back) each seed's run ``out/seed-K``; returns each seed's final metrics."""
    results: Dict[int, Dict[str, Any]] = {}
    for seed in seed_list:
        seed_dir = os.path.join(out, f'seed-{seed}')
        if _seed_done(seed_dir):
            with open(os.path.join(seed_dir, 'metrics.json')) as f:
                results[seed] = json.load(f)
            _say(f'[mednext-zoo] seed {seed}: already trained ({seed_dir})')
            continue
        cfg = build_config(protocol, seed, seed_dir, base, **overrides,
                           resume=os.path.isfile(os.path.join(seed_dir, 'run.json')))
        if protocol.task == 'classification':
            cfg.n_bootstrap = n_bootstrap
            from ..finetune.classification.task import fit
            results[seed] = fit(cfg, source)
        else:
            from ..finetune.segmentation.task import fit
            results[seed] = fit(cfg)
    return results


def _export(protocol: TagProtocol, out: str, seed: int, export_dir: str, img_size: int, first: Dict[str, Any],
            stats, summary: Dict[str, Any], hd95_unit: str) -> torch.nn.Module:
    """``export_dir`` from the best weights of ``seed``, with the tag's config and a card of measured figures."""
    import timm
    from safetensors.torch import load_file

    from ..hub import save_pretrained
    model = timm.create_model(protocol.tag, pretrained=False, img_size=img_size)
    model.load_state_dict(load_file(os.path.join(out, f'seed-{seed}', 'checkpoints', 'best.safetensors')))
    model.eval()
    metrics = rec_mod.card_metrics(protocol, first, stats, hd95_unit)
    if protocol.task == 'classification':
        rep = first['test']
        note = (f'Measured by `mednext-zoo reproduce` on the protocol\'s test split (n={rep["n"]} images), binary '
                f'metrics of the positive class "{rep["positive_class"]}"; 95% CIs: percentile bootstrap over '
                f'images. ')
    else:
        n_test = summary['split_sizes']['test']['cases']
        note = (f'Measured by `mednext-zoo reproduce` on the protocol\'s test split ({n_test} volumes), 3D per '
                f'volume, in both metric modes (legacy: TransUNet code, HD95 in voxels; strict: HD95 in '
                f'{hd95_unit}, missed organs scored). ')
    note += f'"Measured" is seed {seed}, whose weights these are'
    if len(summary['seeds']) > 1:
        note += f'; "Mean ± std" is over seeds {", ".join(map(str, summary["seeds"]))} (sample std)'
    note += f'. "Paper" is {summary["paper_source"]}: the authors\' figure, not measured on these weights.'
    section = rec_mod.reproduction_section(protocol, summary)
    save_pretrained(model, export_dir, dataset=protocol.release, metrics=metrics, metrics_note=note,
                    sections=[('Reproduction', section)])
    return model


def _check_round_trip(model: torch.nn.Module, export_dir: str, protocol: TagProtocol, img_size: int) -> str:
    """Load ``export_dir`` the way users will (``local-dir:``) and require bit-identical outputs."""
    import timm
    loaded = timm.create_model(f'local-dir:{export_dir}', pretrained=True).eval()
    x = torch.randn(2, protocol.in_chans, img_size, img_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        same = torch.equal(model(x), loaded(x))
    if not same:
        raise RuntimeError(f'{export_dir} does not reproduce the trained model\'s outputs when loaded with local-dir:.')
    return 'local-dir: load gives bit-identical outputs'


def _print_result(protocol: TagProtocol, summary: Dict[str, Any], first: Dict[str, Any], export_dir: str) -> None:
    stats = summary['mean_std']
    lines = [f'[mednext-zoo] {protocol.tag}: test split, seed {summary["exported_seed"]} (exported)'
             + (f' and mean ± std over seeds {", ".join(map(str, summary["seeds"]))}' if len(summary['seeds']) > 1
                else '') + f'; paper = {summary["paper_source"]}, reference only']
    measured = summary['per_seed'][str(summary['exported_seed'])]
    ci = first['test'].get('ci95', {}) if protocol.task == 'classification' else {}
    for k, v in measured.items():
        if ' ' in k:
            continue  # per-class rows: see the card
        s = f'  {k:12s} measured {v:.4f}'
        if ci.get(k):
            s += f' [95% CI {ci[k][0]:.4f}-{ci[k][1]:.4f}]'
        if stats[k]['n'] > 1:
            s += f'   mean {stats[k]["mean"]:.4f} ± {stats[k]["std"]:.4f}'
        if k in summary['paper']:
            s += f'   paper {summary["paper"][k]:.4f}'
        lines.append(s)
    repo = hub_id(*protocol.tag.split('.', 1))
    lines += [f'[mednext-zoo] Hub folder {export_dir} ({summary["round_trip"]}); wall time '
              f'{format_duration(summary["wall_time_s"])}',
              '[mednext-zoo] read the card, then publish:',
              f'  mednext-zoo push {export_dir} {repo} --dry-run',
              f'  mednext-zoo push {export_dir} {repo}']
    _say('\n'.join(lines))
