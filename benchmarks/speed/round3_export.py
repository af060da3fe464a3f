"""Speed, round 3: the export graph under ONNX Runtime / OpenVINO, and eager best layout / bf16, before and after.

One process, on the CPU, ours against the dense-conv baseline of the same task in the same runtime and dtype:
``mednext_base`` / ``resnet18`` (cls) and ``medunext_base`` / smp ``Unet("resnet34")`` (seg), 224 x 224.

1. **Runtimes** (``onnxruntime``, ``openvino`` x ``fp32``, ``int8``, and OpenVINO ``bf16`` where the CPU has it):
   every runner is built by ``mednext_zoo.deploy.prepare_runner``, i.e. from the files ``mednext-zoo export
   --format`` writes. *Before*: the plain traced graph of round 2 (``form={'layout': 'reference'}``, OpenVINO with a
   dynamic batch, NNCF's transformer scheme for int8), for ours and for the baseline; *after*: the export form
   (OpenVINO compiled per static batch, NNCF's default scheme). Drift against eager fp32 on the 8 packaged sample
   images; int8 calibrated on 32 others.
2. **Levers** (fp32, batch N): the export form with one setting changed at a time (a change undone, or an
   alternative form), so each change's share shows.
3. **Eager**: fp32 with each model in its best memory layout (NCHW or channels-last input and weights, the faster
   per round), and bf16 autocast where the CPU has native bf16.
4. **Graph**: node counts of the written ONNX file and of ONNX Runtime's optimized graph, ONNX Runtime's profiler
   (per-op share) and OpenVINO's performance counters (per executed layer type) for ours after, batch N: what does
   not fuse.

Timing as round 2: each runner once untimed and once timed per round, interleaved rounds with a rotating start;
ratios per round; tables give the ratio of the best rounds with the median and range over rounds.

    python benchmarks/speed/round3_export.py              # the measurement: 2 threads, wall clock (quiet machine)
    python benchmarks/speed/round3_export.py --quick      # a rough look: 2 rounds, cls only, levers at batch N only
    python benchmarks/speed/round3_export.py --threads 1 --clock cpu   # on a busy machine: one thread's CPU time

Writes ``benchmarks/speed/round3_export.md`` / ``.json`` (``--quick``: ``round3_export_quick.*``).
"""
from __future__ import annotations

import argparse
import collections
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..')))

import timm  # noqa: E402

import mednext_zoo.models  # noqa: E402,F401  (registers the models)
from mednext_zoo.deploy import BackendUnavailable, Preprocessing, drift, prepare_runner, sample_images  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REFERENCE = {'layout': 'reference'}
# fp32 levers of the export form, each changed alone (the defaults are what `export` writes): a change undone, or an
# alternative measured and not kept
LEVERS = [
    ('LayerNorm affine not folded into the next convs', dict(fold_ln=False)),
    ('softmax over channels as one Softmax(axis=1)', dict(softmax_c='op')),
    ('LayerNorm as Transpose + LayerNormalization + Transpose', dict(layernorm='transpose')),
    ('SEM Wagg as one conv over a Concat (not four summed)', dict(agg='concat')),
    ('same-input convs merged (W1|W2, Wa|Wv) then Split', dict(merge=True)),
    ('1x1 projections as MatMul on B, C, H*W (+ Add bias) instead of Conv', dict(proj='matmul')),
    ('LayerNorm variance as ReduceL2 of the centred input (no squared tensor)', dict(layernorm='l2')),
]
TARGETS = {  # (task, runtime, dtype) -> ours / baseline target
    ('cls', 'onnxruntime', 'fp32'): 0.8, ('cls', 'openvino', 'fp32'): 0.8,
    ('cls', 'onnxruntime', 'int8'): 0.6, ('cls', 'openvino', 'int8'): 0.6,
    ('cls', 'eager', 'fp32'): 0.9, ('cls', 'eager', 'bf16'): 0.9,
    ('seg', 'onnxruntime', 'fp32'): 1.0, ('seg', 'openvino', 'fp32'): 1.0,
}


# --------------------------------------------------------------------------------------------------- models
def build(task: str) -> Tuple[nn.Module, nn.Module, str, str, int]:
    """(ours, baseline, our name, baseline name, input channels), eval, seeded random weights."""
    torch.manual_seed(0)
    if task == 'cls':
        ours = timm.create_model('mednext_base', num_classes=2).eval()
        torch.manual_seed(0)
        return ours, timm.create_model('resnet18').eval(), 'mednext_base', 'resnet18', 3
    import segmentation_models_pytorch as smp
    ours = timm.create_model('medunext_base', in_chans=1, num_classes=9).eval()
    torch.manual_seed(0)
    base = smp.Unet('resnet34', encoder_weights=None, in_channels=1, classes=9).eval()
    return ours, base, 'medunext_base', 'smp Unet(resnet34)', 1


class Runner:
    """One timed setting: a callable ``x -> logits`` and what it is."""

    def __init__(self, name: str, fn: Callable, group: str, model: str, runtime: str, dtype: str, stage: str,
                 workdir: Optional[str] = None):
        self.name, self.fn, self.group, self.model, self.runtime, self.dtype, self.stage = (
            name, fn, group, model, runtime, dtype, stage)
        self.workdir = workdir


def _torch_fn(model: nn.Module, layout: str, dtype: str, levers: Optional[Dict[str, bool]] = None) -> Callable:
    from mednext_zoo.models import _fused
    model = copy.deepcopy(model)
    if layout == 'channels_last':
        model = model.to(memory_format=torch.channels_last)
    amp = dtype == 'bf16'

    def run(x: torch.Tensor) -> torch.Tensor:
        if layout == 'channels_last':
            x = x.contiguous(memory_format=torch.channels_last)
        saved = dict(_fused.KERNELS)
        _fused.KERNELS.update(levers or {})
        try:
            with torch.inference_mode(), torch.autocast('cpu', dtype=torch.bfloat16, enabled=amp):
                return model(x)
        finally:
            _fused.KERNELS.update(saved)
    return run


# --------------------------------------------------------------------------------------------------- timing
def time_rounds(runners: List[Runner], x: torch.Tensor, rounds: int, clock: Callable[[], float],
                warmup: int = 1) -> Dict[str, List[float]]:
    """Seconds per call of every runner, ``rounds`` interleaved rounds with a rotating start."""
    times: Dict[str, List[float]] = {r.name: [] for r in runners}
    for r in runners:
        for _ in range(warmup):
            r.fn(x)
    for i in range(rounds):
        k = i % len(runners)
        for r in runners[k:] + runners[:k]:
            r.fn(x)  # untimed: the timed call sees this runner's steady state, not the previous one's
            t0 = clock()
            r.fn(x)
            times[r.name].append(clock() - t0)
    return times


def ratio(times: Dict[str, List[float]], a: str, b: str) -> Dict[str, float]:
    """Speed of ``a`` over ``b`` (> 1: ``a`` faster): best rounds; median and range of the per-round ratios."""
    per = [tb / ta for ta, tb in zip(times[a], times[b], strict=True)]
    return {'best': min(times[b]) / min(times[a]), 'median': statistics.median(per), 'min': min(per),
            'max': max(per)}


def best_of(times: Dict[str, List[float]], names: List[str]) -> List[float]:
    """Per round, the fastest of ``names`` (each model in its best layout)."""
    return [min(v) for v in zip(*(times[n] for n in names), strict=True)]


def _speed(times: Dict[str, List[float]], name: str, batch: int) -> str:
    """Best round as img/s (batch > 1) or ms (batch 1)."""
    best = min(times[name])
    return f'{batch / best:.1f} img/s' if batch > 1 else f'{best * 1e3:.1f} ms'


def _target(t: Optional[float]) -> str:
    return f'>= {t:.1f}x' if t else '-'


def _fmt(s: Optional[Dict[str, float]]) -> str:
    if s is None:
        return '-'
    return f"**{s['best']:.2f}x** ({s['median']:.2f}, {s['min']:.2f}-{s['max']:.2f})"


# --------------------------------------------------------------------------------------------------- parts
def runtime_runners(task: str, ours: nn.Module, base: nn.Module, names: Tuple[str, str], x1: torch.Tensor,
                    calib: torch.Tensor, args, tmp: str) -> Tuple[List[Runner], List[str]]:
    """Before / after runners for every runtime x dtype, plus the fp32 lever runners; skipped combinations."""
    runners: List[Runner] = []
    skipped: List[str] = []
    ours_name, base_name = names
    for runtime in args.runtimes:
        for dtype in args.dtypes:
            if runtime == 'onnxruntime' and dtype == 'bf16':
                continue
            settings = [('ours', ours, ours_name, 'after', None), ('base', base, base_name, 'after', None),
                        ('ours', ours, ours_name, 'before', REFERENCE)]
            if runtime == 'openvino':  # round 2 ran the baseline with a dynamic batch too
                settings.append(('base', base, base_name, 'before', REFERENCE))
            if dtype == 'fp32' and 'levers' in args.parts and (task == 'cls' or not args.quick):
                settings += [('ours', ours, ours_name, f'lever: {label}', form) for label, form in LEVERS]
                if runtime == 'openvino':
                    settings.append(('ours', ours, ours_name, 'lever: dynamic batch (no static shapes)',
                                     {'layout': 'nchw', '_dynamic': True}))
            for who, model, label, stage, form in settings:
                name = f'{label} {runtime} {dtype} {stage}'
                workdir = tempfile.mkdtemp(dir=tmp)
                print(f'[{task}] prepare {name}', file=sys.stderr, flush=True)
                try:
                    dynamic = bool(form and form.get('_dynamic'))
                    form_args = {k: v for k, v in (form or {}).items() if not k.startswith('_')} or None
                    fn = prepare_runner(model, runtime, dtype, x1, calibration=calib if dtype == 'int8' else None,
                                        threads=args.threads, workdir=workdir, form=form_args)
                    if dynamic:
                        from mednext_zoo.deploy.artefact import open_artefact
                        fn = open_artefact(workdir, 'openvino', 'fp32', args.threads, static_batch=False)
                except BackendUnavailable as exc:
                    skipped.append(f'{runtime} {dtype}: {exc}')
                    break
                group = 'lever' if stage.startswith('lever') else 'main'
                runners.append(Runner(name, fn, group, who, runtime, dtype, stage, workdir))
    return runners, sorted(set(skipped))


def part_runtimes(task: str, args, clock, tmp: str) -> Dict[str, Any]:
    ours, base, ours_name, base_name, c = build(task)
    pre = Preprocessing.from_model(ours)
    drift_x = pre.normalise(sample_images(8, c, (224, 224), seed=0))
    calib = pre.normalise(sample_images(32, c, (224, 224), seed=1))
    x1, xn = torch.randn(1, c, 224, 224), torch.randn(args.batch, c, 224, 224)
    with torch.inference_mode():
        ref = {'ours': ours(drift_x), 'base': base(drift_x)}
    runners, skipped = runtime_runners(task, ours, base, (ours_name, base_name), x1, calib, args, tmp)
    drifts = {}
    for r in runners:
        d = drift(ref[r.model], r.fn(drift_x), task)
        drifts[r.name] = d
    out: Dict[str, Any] = {'skipped': skipped, 'drift': drifts, 'names': {}, 'throughput_s': {}, 'latency_s': {}}
    for r in runners:
        out['names'][r.name] = dict(group=r.group, model=r.model, runtime=r.runtime, dtype=r.dtype, stage=r.stage)
    for runtime in args.runtimes:  # one runtime at a time: each times its own runners interleaved
        rs = [r for r in runners if r.runtime == runtime]
        if not rs:
            continue
        print(f'[{task}] {runtime}: {len(rs)} runners x {args.rounds} rounds at batch {args.batch}', file=sys.stderr)
        out['throughput_s'].update(time_rounds(rs, xn, args.rounds, clock))
        main = [r for r in rs if r.group == 'main' or not args.quick]
        print(f'[{task}] {runtime}: {len(main)} runners x {args.rounds * 3} rounds at batch 1', file=sys.stderr)
        out['latency_s'].update(time_rounds(main, x1, args.rounds * 3, clock, warmup=2))
    if 'graph' in args.parts:
        out['graph'] = graph_report(runners, xn, args)
    out['labels'] = {'ours': ours_name, 'base': base_name}
    return out


def part_eager(task: str, args, clock) -> Dict[str, Any]:
    ours, base, ours_name, base_name, c = build(task)
    runners, skipped = [], []
    for dtype in ('fp32', 'bf16'):
        if dtype == 'bf16':
            try:
                prepare_runner(ours, 'eager', 'bf16', torch.randn(1, c, 8, 8))  # raises where bf16 is emulated
            except BackendUnavailable as exc:
                skipped.append(f'eager bf16: {exc}')
                continue
        for who, model, label in (('ours', ours, ours_name), ('base', base, base_name)):
            for layout in ('contiguous', 'channels_last'):
                runners.append(Runner(f'{label} eager {dtype} {layout}', _torch_fn(model, layout, dtype), 'eager',
                                      who, 'eager', dtype, layout))
        if dtype == 'fp32':  # round 2's fused path: the stem on the whole batch
            runners.append(Runner(f'{ours_name} eager fp32 contiguous, stem not sliced',
                                  _torch_fn(ours, 'contiguous', 'fp32', {'stem_chunk': False}), 'eager', 'ours-before',
                                  'eager', 'fp32', 'contiguous'))
    x1, xn = torch.randn(1, c, 224, 224), torch.randn(args.batch, c, 224, 224)
    print(f'[{task}] eager: {len(runners)} runners x {args.rounds} rounds', file=sys.stderr)
    out = {'skipped': skipped, 'throughput_s': time_rounds(runners, xn, args.rounds, clock),
           'latency_s': time_rounds(runners, x1, args.rounds * 3, clock, warmup=2),
           'names': {r.name: dict(model=r.model, dtype=r.dtype, layout=r.stage) for r in runners},
           'labels': {'ours': ours_name, 'base': base_name}}
    return out


def graph_report(runners: List[Runner], xn: torch.Tensor, args) -> Dict[str, Any]:
    """Ours after, fp32 and int8: ONNX node counts, ORT's optimized graph and profiler, OpenVINO's counters."""
    import onnx
    rep: Dict[str, Any] = {}
    for r in runners:
        if r.model != 'ours' or r.group != 'main' or r.stage not in ('after', 'before'):
            continue
        key = f'{r.runtime} {r.dtype} {r.stage}'
        files = os.listdir(r.workdir)
        if r.runtime == 'onnxruntime':
            path = os.path.join(r.workdir, 'model.onnx')
            rep[key] = {'written': _count(n.op_type for n in onnx.load(path).graph.node)}
            rep[key].update(_ort_profile(path, xn, args.threads))
        elif 'model.xml' in files:
            rep[key] = _ov_profile(os.path.join(r.workdir, 'model.xml'), xn, args.threads, r.dtype, r.stage)
    return rep


def _count(items) -> Dict[str, int]:
    return dict(collections.Counter(items).most_common())


def _ort_profile(path: str, x: torch.Tensor, threads: int) -> Dict[str, Any]:
    import onnx
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = threads, 1, 3
    so.optimized_model_filepath = path + '.opt.onnx'
    so.enable_profiling, so.profile_file_prefix = True, path + '.prof'
    s = ort.InferenceSession(path, so, providers=['CPUExecutionProvider'])
    arr = x.numpy()
    for _ in range(3):
        s.run(None, {'x': arr})
    with open(s.end_profiling()) as f:
        events = json.load(f)
    opt = onnx.load(path + '.opt.onnx').graph
    per: Dict[str, float] = collections.defaultdict(float)
    for e in events:
        if e.get('cat') == 'Node' and e['name'].endswith('_kernel_time'):
            per[e['args']['op_name']] += e['dur'] / 3e3
    total = sum(per.values())
    return {'optimized': _count((n.domain.split('.')[-1] + ':' if n.domain else '') + n.op_type for n in opt.node),
            'profile_ms': {k: round(v, 2) for k, v in sorted(per.items(), key=lambda kv: -kv[1])},
            'profile_total_ms': round(total, 1)}


def _ov_profile(xml: str, x: torch.Tensor, threads: int, dtype: str, stage: str) -> Dict[str, Any]:
    import openvino as ov
    core = ov.Core()
    m = core.read_model(xml)
    if stage == 'after':
        m.reshape({m.input(0): ov.PartialShape(list(x.shape))})
    prec = 'bf16' if dtype == 'bf16' else 'f32'
    req = core.compile_model(m, 'CPU', {'INFERENCE_PRECISION_HINT': prec, 'PERFORMANCE_HINT': 'LATENCY',
                                        'INFERENCE_NUM_THREADS': threads, 'PERF_COUNT': True}).create_infer_request()
    arr = x.numpy()
    per: Dict[str, float] = collections.defaultdict(float)
    count: Dict[str, int] = collections.Counter()
    for i in range(3):
        req.infer({0: arr})
        for p in req.profiling_info:
            if p.status == p.Status.EXECUTED and i > 0:
                key = f'{p.node_type} [{p.exec_type}]'
                per[key] += p.real_time.total_seconds() * 1e3 / 2
                count[key] += 1
    return {'executed': {k: count[k] // 2 for k in per},
            'profile_ms': {k: round(v, 2) for k, v in sorted(per.items(), key=lambda kv: -kv[1])},
            'profile_total_ms': round(sum(per.values()), 1)}


# --------------------------------------------------------------------------------------------------- report
def table_runtimes(task: str, res: Dict[str, Any], batch: int) -> List[str]:
    names, thr, lat, dr = res['names'], res['throughput_s'], res['latency_s'], res['drift']
    labels = res['labels']
    agree = 'label-map Dice' if task == 'seg' else 'top-1 agreement'

    def find(runtime, dtype, model, stage):
        return next((n for n, v in names.items() if v['runtime'] == runtime and v['dtype'] == dtype
                     and v['model'] == model and v['stage'] == stage), None)
    lines = [f'| runtime | dtype | batch | {labels["ours"]} before | after | {labels["base"]} | ours / baseline before '
             f'| **ours / baseline after** (best; median, range) | target | after / before (ours) | drift after: '
             f'max abs Δlogit, {agree} |', '| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |'
             ]
    combos = sorted({(v['runtime'], v['dtype']) for v in names.values()}, key=lambda k: (k[0], ['fp32', 'bf16',
                                                                                                  'int8'].index(k[1])))
    for runtime, dtype in combos:
        oa, ob = find(runtime, dtype, 'ours', 'after'), find(runtime, dtype, 'ours', 'before')
        ba = find(runtime, dtype, 'base', 'after')
        bb = find(runtime, dtype, 'base', 'before') or ba
        if not (oa and ba):
            continue
        d = dr[oa]
        a = d['dice_vs_fp32'] if task == 'seg' else d['top1_agreement']
        for b, times in ((batch, thr), (1, lat)):
            if oa not in times or ba not in times:
                continue
            before = ratio(times, ob, bb) if ob in times and bb in times else None
            lines.append(f'| {runtime} | {dtype} | {b} | {_speed(times, ob, b) if ob in times else "-"} | '
                         f'{_speed(times, oa, b)} | {_speed(times, ba, b)} | {_fmt(before)} | '
                         f'{_fmt(ratio(times, oa, ba))} | {_target(TARGETS.get((task, runtime, dtype)))} | '
                         f'{_fmt(ratio(times, oa, ob)) if ob in times else "-"} | '
                         f'{d["max_abs_dlogit"]:.2g}, {a:.3f} |')
    if res['skipped']:
        lines += ['', 'Skipped: ' + '; '.join(res['skipped']) + '.']
    return lines


def table_levers(task: str, res: Dict[str, Any], batch: int) -> List[str]:
    names, thr, lat = res['names'], res['throughput_s'], res['latency_s']
    lines = [f'| runtime | fp32 export form with one setting changed | batch-{batch} speed vs the export form (best; '
             'median, range) | batch-1 speed vs the export form |', '| --- | --- | ---: | ---: |']
    for n, v in names.items():
        if v['group'] != 'lever':
            continue
        after = next(m for m, w in names.items() if w['runtime'] == v['runtime'] and w['dtype'] == 'fp32'
                     and w['model'] == 'ours' and w['stage'] == 'after')
        at1 = _fmt(ratio(lat, n, after)) if n in lat else '-'
        lines.append(f'| {v["runtime"]} | {v["stage"][7:]} | {_fmt(ratio(thr, n, after))} | {at1} |')
    for runtime in sorted({v['runtime'] for v in names.values()}):
        try:
            after = next(m for m, w in names.items() if w['runtime'] == runtime and w['dtype'] == 'fp32'
                         and w['model'] == 'ours' and w['stage'] == 'after')
            before = next(m for m, w in names.items() if w['runtime'] == runtime and w['dtype'] == 'fp32'
                          and w['model'] == 'ours' and w['stage'] == 'before')
        except StopIteration:
            continue
        lines.append(f'| {runtime} | the plain traced graph (round 2) | {_fmt(ratio(thr, before, after))} | '
                     f'{_fmt(ratio(lat, before, after)) if before in lat else "-"} |')
    return lines


def table_eager(task: str, res: Dict[str, Any], batch: int) -> List[str]:
    names, labels = res['names'], res['labels']
    lines = [f'| dtype | batch | {labels["ours"]} (layout: contiguous / channels-last) | {labels["base"]} | '
             f'**ours / baseline, best layout vs best layout** (best; median, range) | target |',
             '| --- | ---: | --- | --- | ---: | ---: |']
    for dtype in ('fp32', 'bf16'):
        for b, key in ((batch, 'throughput_s'), (1, 'latency_s')):
            times = res[key]
            sel = {who: [n for n, v in names.items() if v['model'] == who and v['dtype'] == dtype]
                   for who in ('ours', 'base')}
            if not sel['ours'] or not sel['base']:
                continue
            merged = {'ours': best_of(times, sel['ours']), 'base': best_of(times, sel['base'])}
            show = {who: ' / '.join(_speed(times, n, b) for n in ns) for who, ns in sel.items()}
            lines.append(f'| {dtype} | {b} | {show["ours"]} | {show["base"]} | {_fmt(ratio(merged, "ours", "base"))} | '
                         f'{_target(TARGETS.get((task, "eager", dtype)))} |')
    before = [n for n, v in names.items() if v['model'] == 'ours-before']
    if before:
        after = [n for n, v in names.items() if v['model'] == 'ours' and v['dtype'] == 'fp32']
        for b, key in ((batch, 'throughput_s'), (1, 'latency_s')):
            merged = {'after': best_of(res[key], after), 'before': res[key][before[0]]}
            lines.append(f'| fp32, {labels["ours"]} with / without the stem on batch slices | {b} | | | '
                         f'{_fmt(ratio(merged, "after", "before"))} | |')
    if res['skipped']:
        lines += ['', 'Skipped: ' + '; '.join(res['skipped']) + '.']
    return lines


def table_graph(rep: Dict[str, Any]) -> List[str]:
    lines = []
    for key, g in rep.items():
        lines += [f'**{key}**: profile total {g["profile_total_ms"]} ms per batch (one thread count as timed).', '']
        if 'written' in g:
            lines.append(f'- written ONNX: {sum(g["written"].values())} nodes '
                         + ', '.join(f'{k} {v}' for k, v in list(g['written'].items())[:12]))
            lines.append(f'- ONNX Runtime optimized: {sum(g["optimized"].values())} nodes '
                         + ', '.join(f'{k} {v}' for k, v in list(g['optimized'].items())[:14]))
        else:
            lines.append(f'- OpenVINO executed layers: {sum(g["executed"].values())} '
                         + ', '.join(f'{k} {v}' for k, v in list(g['executed'].items())[:14]))
        total = g['profile_total_ms'] or 1
        shares = list(g['profile_ms'].items())[:12]
        lines.append('- time share: ' + ', '.join(f'{k} {v / total:.1%}' for k, v in shares))
        lines.append('')
    return lines


# --------------------------------------------------------------------------------------------------- main
def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--parts', nargs='+', default=['runtimes', 'levers', 'eager', 'graph'],
                   choices=['runtimes', 'levers', 'eager', 'graph'])
    p.add_argument('--tasks', nargs='+', default=None, choices=['cls', 'seg'])
    p.add_argument('--runtimes', nargs='+', default=['onnxruntime', 'openvino'], choices=['onnxruntime', 'openvino'])
    p.add_argument('--dtypes', nargs='+', default=['fp32', 'int8', 'bf16'], choices=['fp32', 'int8', 'bf16'])
    p.add_argument('--rounds', type=int, default=5, help='interleaved rounds at batch N (batch 1: 3x as many)')
    p.add_argument('--batch', type=int, default=16)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--clock', choices=['wall', 'cpu'], default='wall',
                   help='wall: perf_counter; cpu: the process CPU time (use with --threads 1 on a busy machine)')
    p.add_argument('--quick', action='store_true',
                   help='2 rounds, cls only unless --tasks, levers for cls at batch N only')
    p.add_argument('--note', default='')
    p.add_argument('--out', default=None)
    args = p.parse_args(argv)
    if args.clock == 'cpu' and args.threads != 1:
        p.error('--clock cpu counts the CPU time of every thread: use it with --threads 1')
    if args.quick:
        args.rounds = min(args.rounds, 2)
        args.tasks = args.tasks or ['cls']
        args.note = ('QUICK MODE: a rough look, not the measurement. ' + args.note).strip()
    args.tasks = args.tasks or ['cls', 'seg']
    args.out = args.out or os.path.join(HERE, 'round3_export_quick.md' if args.quick else 'round3_export.md')
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == 'cpu' else time.perf_counter
    load0, started = os.getloadavg(), time.time()
    results: Dict[str, Any] = {}
    warnings.simplefilter('ignore')
    with tempfile.TemporaryDirectory(prefix='round3-') as tmp:
        for task in args.tasks:
            results[task] = {}
            if 'runtimes' in args.parts:
                results[task]['runtimes'] = part_runtimes(task, args, clock, tmp)
            if 'eager' in args.parts:
                results[task]['eager'] = part_eager(task, args, clock)
    load1 = os.getloadavg()
    head = (f'Machine: {platform.machine()} ({_cpu_name()}), {os.cpu_count()} cores; torch {torch.__version__}, '
            f'onnxruntime {_version("onnxruntime")}, openvino {_version("openvino")}, nncf {_version("nncf")}; '
            f'{args.threads} thread(s); clock: {"process CPU time" if args.clock == "cpu" else "wall time"}; '
            f'224x224, batch {args.batch} ({args.rounds} rounds) and batch 1 ({args.rounds * 3} rounds); random '
            f'weights. Load average (1, 5, 15 min) at start {_load(load0)}, at end {_load(load1)}; wall time '
            f'{time.time() - started:.0f} s. {args.note}').strip()
    lines = ['# Speed, round 3: the export graph and eager (`benchmarks/speed/round3_export.py`)', '', head, '']
    for task, res in results.items():
        title = 'mednext_base / resnet18' if task == 'cls' else 'medunext_base / smp Unet(resnet34)'
        if 'runtimes' in res:
            lines += [f'## {title}: ONNX Runtime and OpenVINO', '', *table_runtimes(task, res['runtimes'],
                                                                                   args.batch), '']
            if 'levers' in args.parts:
                lines += [f'### {title}: what each change bought (fp32)', '',
                          *table_levers(task, res['runtimes'], args.batch), '']
            if 'graph' in res['runtimes']:
                lines += [f'### {title}: what the runtimes make of it (ours)', '',
                          *table_graph(res['runtimes']['graph'])]
        if 'eager' in res:
            lines += [f'## {title}: eager', '', *table_eager(task, res['eager'], args.batch), '']
    lines += ['Ratios: ours / baseline throughput (batch N) or 1 / latency (batch 1) in the same runtime and dtype; '
              '"best" is the ratio of the best rounds, then the median and range of the per-round ratios. Before: '
              'round 2\'s plain traced graph (OpenVINO with a dynamic batch for both models, NNCF transformer scheme '
              'for int8); after: the export form as `mednext-zoo export --format` writes it, run as `load_artefact` '
              'and `mednext-zoo bench --backend` run it.', '']
    text = '\n'.join(lines).rstrip() + '\n'
    print(text)
    meta = {'args': vars(args), 'load_avg_start': load0, 'load_avg_end': load1, 'cpu': _cpu_name()}
    _write(args.out, text)
    _write(os.path.splitext(args.out)[0] + '.json', json.dumps({'meta': meta, **results}, indent=1, default=str))
    return 0


def _version(pkg: str) -> str:
    try:
        from importlib.metadata import version
        return version(pkg)
    except Exception:  # noqa: BLE001
        return 'not installed'


def _load(la) -> str:
    return ', '.join(f'{v:.1f}' for v in la)


def _cpu_name() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _write(path: str, text: str) -> None:
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        f.write(text)
    os.replace(tmp, path)


if __name__ == '__main__':
    raise SystemExit(main())
