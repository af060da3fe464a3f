"""Speed, round 2: before/after ratios to ResNet-18 / smp U-Net, each lever's share, backends x dtypes with drift.

One script, one process, three parts (all on the CPU):

1. **Ratios.** ``mednext_base`` on its reference path, its round-1 fast path and its round-2 fused path, against
   ``resnet18``; ``medunext_base`` the same against smp ``Unet("resnet34")``. Batch-16 throughput and batch-1
   latency, fp32, eval, ``torch.inference_mode``.
2. **Levers.** The round-2 levers switched on one after another (round 1 -> oneDNN GEMMs -> GELU post-ops ->
   residual post-ops -> batch slices -> prepacked weights), each also switched off alone (at batch N and at
   batch 1), and the levers we measured and did not keep (LAFFN's W1 / W2 as one GEMM; LayerNorm's affine folded
   into the next GEMM; SEM's four ``Wagg`` GEMMs as one).
3. **Backends.** ``mednext-zoo bench``'s harness for eager / torch.compile / ONNX Runtime / OpenVINO in fp32,
   bf16 and int8, with drift against eager fp32 on sample images.

Every timed model runs once untimed and once timed per round, in interleaved rounds (rotating start), so that
load from other processes hits all of them alike. A ratio is taken per round; the table gives the ratio of the
best (fastest) rounds, with the median and the range of the per-round ratios as the spread.

Clocks: ``--clock wall`` (``perf_counter``) is what a user sees; on a shared machine, ``--threads 1 --clock cpu``
(the thread's own CPU time, ``time.thread_time``) leaves out the time other processes hold the core, which is
far steadier, though cache and memory-bandwidth contention still show. The default is ``--clock cpu`` with one
thread when the 1-minute load average exceeds half the cores, else ``--clock wall`` with all cores.

    python benchmarks/speed/round2.py --threads 2 --clock wall   # the full run, quiet machine (see docs/speed.md)
    python benchmarks/speed/round2.py --quick                     # a rough look: 2 rounds, no torch.compile
    python benchmarks/speed/round2.py --parts ratios --rounds 3   # only the ratios

Writes ``benchmarks/speed/round2.md`` / ``.json`` (``--quick``: ``round2_quick.md`` / ``.json``).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Callable, Dict, Iterator, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..')))

import timm  # noqa: E402

import mednext_zoo.models  # noqa: E402,F401  (registers the models)
from mednext_zoo.models import _fused  # noqa: E402
from mednext_zoo.models import mednext as mx  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROUND1 = {'onednn': False}
ROUND2 = {'onednn': True, 'gelu': True, 'residual': True, 'chunk': True, 'packed': True}
LADDER = [  # cumulative: each step adds one lever to the one before
    ('round 1 fast path', ROUND1),
    ('+ oneDNN GEMMs (bias only)', {'onednn': True, 'gelu': False, 'residual': False, 'chunk': False, 'packed': False}),
    ('+ GELU as a GEMM / conv post-op', {'onednn': True, 'gelu': True, 'residual': False, 'chunk': False,
                                        'packed': False}),
    ('+ residual add as a GEMM post-op', {'onednn': True, 'gelu': True, 'residual': True, 'chunk': False,
                                         'packed': False}),
    ('+ batch slices of <= 4 MiB', {'onednn': True, 'gelu': True, 'residual': True, 'chunk': True, 'packed': False}),
    ('+ prepacked oneDNN weights (round 2)', ROUND2),
]
LEAVE_ONE_OUT = ['gelu', 'residual', 'chunk', 'packed']


# --------------------------------------------------------------------------------------------------- variants
@dataclass
class Variant:
    """One timed setting: a model, its inputs and the switches it runs under."""

    name: str
    model: nn.Module
    levers: Dict[str, bool] = field(default_factory=dict)
    patch: Optional[Callable[[], contextlib.AbstractContextManager]] = None
    group: str = ''

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        saved = dict(_fused.KERNELS)
        _fused.KERNELS.update(ROUND2)
        _fused.KERNELS.update(self.levers)
        try:
            with (self.patch() if self.patch else contextlib.nullcontext()):
                yield
        finally:
            _fused.KERNELS.clear()
            _fused.KERNELS.update(saved)


@contextlib.contextmanager
def _patched(name: str, fn: Callable, cls: Optional[type] = None) -> Iterator[None]:
    """``_fused.name`` (and the residual form registered for ``cls``) replaced by ``fn`` inside the block (a lever we
    measured), restored after it."""
    saved = getattr(_fused, name)
    saved_form = _fused.RESIDUAL_FORMS.get(cls)
    setattr(_fused, name, fn)
    if cls is not None:
        _fused.RESIDUAL_FORMS[cls] = fn
    try:
        yield
    finally:
        setattr(_fused, name, saved)
        if cls is not None:
            _fused.RESIDUAL_FORMS[cls] = saved_form


def merged_laffn_gemm() -> contextlib.AbstractContextManager:
    """Rejected lever: LAFFN's W1 and W2 read the same input, so one ``(C, 2C)`` GEMM; the two softmaxes then
    read strided halves, which PyTorch's CPU softmax copies to contiguous memory first."""
    def laffn(self, x, shortcut=None):
        B, H, W, C = x.shape
        weight = torch.cat([self.fc_channel.weight, self.fc_token.weight])
        bias = torch.cat([self.fc_channel.bias, torch.zeros_like(self.fc_token.bias)])
        logits = _fused.linear(x, weight, bias)
        attn = logits[..., :C].softmax(dim=-1)
        attn.mul_(logits[..., C:].reshape(B, H * W, C).softmax(dim=1).view(B, H, W, C))
        return _fused.linear(attn, self.proj.weight, self.proj.bias, add=shortcut)
    return _patched('laffn', laffn, mx.LAFFN)


def folded_layernorm_affine() -> contextlib.AbstractContextManager:
    """Rejected lever: LayerNorm without its affine, ``g`` and ``b`` folded into the next GEMMs
    (``W diag(g)``, ``b' = b + W b``), recomputed per call as the BatchNorm folds are."""
    def fold(linear: nn.Linear, g: torch.Tensor, b: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(weight=linear.weight * g, bias=linear.bias + linear.weight @ b)

    def med_block(self, x):
        for norm, sub in ((self.norm1, self.laffn), (self.norm2, self.token_mixer), (self.norm3, self.ffn)):
            if sub is None:
                continue
            xn = F.layer_norm(x, norm.normalized_shape, None, None, norm.eps)
            names = {mx.LAFFN: ('fc_channel', 'fc_token'), mx.SEM: ('fc_in', 'fc_value'), mx.SDFFN: ('fc1',)}
            folded = copy.copy(sub)
            folded._modules = dict(sub._modules)
            for name in names.get(type(sub), ()):
                folded._modules[name] = fold(getattr(sub, name), norm.weight, norm.bias)
            x = _fused.residual(folded, xn, x)
        return x
    return _patched('med_block', med_block)


def sem_agg_one_gemm() -> contextlib.AbstractContextManager:
    """Rejected lever (batch 1): SEM's four ``Wagg`` GEMMs (z0, z1 and the two axial mixes, accumulated) as one GEMM
    with ``K = 4 C`` over the concatenated paths; the concatenation costs what the fewer calls save."""
    def sem(self, x, shortcut=None):
        B, H, W, C = x.shape
        u = _fused.linear(x, _fused.gemm_weight(self.fc_in), self.fc_in.bias, gelu=True)
        v = _fused.linear(x, _fused.gemm_weight(self.fc_value), self.fc_value.bias)
        u_2d = u.permute(0, 3, 1, 2)
        z0 = _fused.conv(self.dw0_v, _fused.conv(self.dw0_h, u_2d)).permute(0, 2, 3, 1).reshape(B, H * W, C)
        z1 = _fused.conv(self.dw1_v, _fused.conv(self.dw1_h, u_2d)).permute(0, 2, 3, 1).reshape(B, H * W, C)
        mix_h = torch.bmm(self.mix_h.weight.expand(B, H, H), u.view(B, H, W * C)).view(B, H * W, C)
        mix_w = torch.bmm(self.mix_w.weight.expand(B * H, W, W), u.view(B * H, W, C)).view(B, H * W, C)

        def build():
            *blocks, bias = _fused.sem_agg_weights(self, C)
            return _fused.pack_linear_weight(torch.cat(blocks, 1)), bias
        weight, bias = _fused.derived(self, 'agg_one_gemm', _fused.sem_agg_sources(self), build)
        attn = _fused.linear(torch.cat([z0, z1, mix_h, mix_w], -1), weight, add=bias.expand(B, H * W, C))
        attn = attn.mul_(v.view(B, H * W, C)).view(B, H, W, C)
        return _fused.linear(attn, _fused.gemm_weight(self.proj), self.proj.bias, add=shortcut)
    return _patched('sem', sem, mx.SEM)


def _build_timm(name: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, **kwargs).eval()


def _build_smp_unet() -> nn.Module:
    import segmentation_models_pytorch as smp
    torch.manual_seed(0)
    return smp.Unet('resnet34', encoder_weights=None, in_channels=1, classes=9).eval()


def _reference(model: nn.Module) -> nn.Module:
    return mx.set_reference_paths(copy.deepcopy(model))


def task_variants(task: str, levers: bool) -> List[Variant]:
    """The timed settings of one task: cls (mednext_base vs resnet18) or seg (medunext_base vs smp U-Net)."""
    if task == 'cls':
        ours, base_name = _build_timm('mednext_base', num_classes=2), 'resnet18'
        base = _build_timm('resnet18')
        name = 'mednext_base'
    else:
        ours, base_name = _build_timm('medunext_base', in_chans=1, num_classes=9), 'smp Unet(resnet34)'
        try:
            base = _build_smp_unet()
        except ImportError:
            base = None
        name = 'medunext_base'
    out = [
        Variant(f'{name}, reference path', _reference(ours), group='ratios'),
        Variant(f'{name}, round 1 fast path', ours, ROUND1, group='ratios'),
        Variant(f'{name}, round 2', ours, ROUND2, group='ratios'),
    ]
    if base is not None:
        out.append(Variant(base_name, base, group='ratios'))
    if levers:
        out += [Variant(f'{name}, {label}', ours, sw, group='ladder') for label, sw in LADDER[1:-1]]
        out += [Variant(f'{name}, round 2 without {k}', ours, {k: False}, group='leave-one-out')
                for k in LEAVE_ONE_OUT]
        out += [
            Variant(f'{name}, round 2 + LAFFN W1/W2 as one GEMM', ours, ROUND2, merged_laffn_gemm, 'rejected'),
            Variant(f'{name}, round 2 + LayerNorm affine folded', ours, ROUND2, folded_layernorm_affine, 'rejected'),
            Variant(f'{name}, round 2 + SEM Wagg as one GEMM', ours, ROUND2, sem_agg_one_gemm, 'rejected'),
        ]
    return out


# --------------------------------------------------------------------------------------------------- timing
def time_rounds(variants: List[Variant], x: torch.Tensor, rounds: int, clock: Callable[[], float],
                warmup: int = 1) -> Dict[str, List[float]]:
    """Seconds per forward of every variant, ``rounds`` interleaved rounds with a rotating start."""
    times: Dict[str, List[float]] = {v.name: [] for v in variants}
    with torch.inference_mode():
        for v in variants:
            with v.active():
                for _ in range(warmup):
                    v.model(x)
        for r in range(rounds):
            k = r % len(variants)
            for v in variants[k:] + variants[:k]:
                with v.active():
                    v.model(x)  # untimed: the timed call sees this model's steady state, not the previous one's
                    t0 = clock()
                    v.model(x)
                    times[v.name].append(clock() - t0)
    return times


def ratio_stats(times: Dict[str, List[float]], a: str, b: str) -> Dict[str, float]:
    """Speed of ``a`` relative to ``b`` (``> 1``: ``a`` is faster): best rounds, median and range per round."""
    per_round = [tb / ta for ta, tb in zip(times[a], times[b], strict=True)]
    return {'best': min(times[b]) / min(times[a]), 'median': statistics.median(per_round),
            'min': min(per_round), 'max': max(per_round)}


def _fmt_ratio(s: Dict[str, float]) -> str:
    return f"{s['best']:.3f}x (median {s['median']:.3f}, range {s['min']:.3f}-{s['max']:.3f})"


# --------------------------------------------------------------------------------------------------- parts
def part_ratios_and_levers(task: str, args, clock) -> Dict:
    variants = task_variants(task, levers='levers' in args.parts)
    in_chans = 3 if task == 'cls' else 1
    torch.manual_seed(0)
    x = torch.randn(args.batch, in_chans, 224, 224)
    x1 = torch.randn(1, in_chans, 224, 224)
    print(f'[{task}] batch {args.batch}: {len(variants)} settings x {args.rounds} rounds', file=sys.stderr)
    thr = time_rounds(variants, x, args.rounds, clock)
    ratio_vs = [v for v in variants if v.group == 'ratios']
    print(f'[{task}] batch 1: {len(ratio_vs)} settings x {args.rounds * 3} rounds', file=sys.stderr)
    lat = time_rounds(ratio_vs, x1, args.rounds * 3, clock, warmup=2)
    out = {'throughput_s': thr, 'latency_s': lat, 'batch': args.batch, 'names': {v.name: v.group for v in variants}}
    lever_vs = [v for v in variants if v.group in ('leave-one-out', 'rejected')]
    if lever_vs:  # the same switches at batch 1 (latency), in their own interleaved rounds with round 2
        print(f'[{task}] batch 1, levers: {len(lever_vs) + 1} settings x {args.rounds * 3} rounds', file=sys.stderr)
        out['latency_levers_s'] = time_rounds([ratio_vs[2]] + lever_vs, x1, args.rounds * 3, clock, warmup=2)
    return out


def _table_ratios(task: str, res: Dict) -> List[str]:
    thr, lat, b = res['throughput_s'], res['latency_s'], res['batch']
    names = [n for n, g in res['names'].items() if g == 'ratios']
    base = names[-1] if len(names) == 4 else None
    lines = [f'| {task} setting | batch-{b} img/s (best round) | batch-1 latency ms (best round) |',
             '| --- | ---: | ---: |']
    for n in names:
        lines.append(f'| {n} | {b / min(thr[n]):.1f} | {min(lat[n]) * 1e3:.1f} |')
    if base is None:
        return lines + ['', f'(baseline not available: {task} ratios not measured)']
    lines += ['', f'| {task} ratio | before (reference path) | round 1 | round 2 | target |',
              '| --- | --- | --- | --- | --- |']
    stem = names[0].split(',')[0]
    target = ('>= 0.9x' if task == 'cls' else '>= 1.1x')
    row = [_fmt_ratio(ratio_stats(thr, n, base)) for n in names[:3]]
    lines.append(f'| batch-{b} throughput vs {base} | ' + ' | '.join(row) + f' | {target} |')
    if task == 'cls':
        row = [_fmt_ratio(ratio_stats(lat, n, base)) for n in names[:3]]
        lines.append(f'| batch-1 speed (1 / latency) vs {base} | ' + ' | '.join(row) + ' | >= 1x |')
    vs_ref = _fmt_ratio(ratio_stats(thr, names[2], names[0]))
    vs_r1 = _fmt_ratio(ratio_stats(thr, names[2], names[1]))
    lines += ['', f'After / before, {stem}: round 2 vs reference path {vs_ref}, round 2 vs round 1 {vs_r1} '
              f'(batch-{b} throughput).']
    return lines


def _table_levers(task: str, res: Dict) -> List[str]:
    thr, b = res['throughput_s'], res['batch']
    groups = res['names']
    stem = next(iter(groups)).split(',')[0]
    r1, r2 = f'{stem}, round 1 fast path', f'{stem}, round 2'
    if r1 not in thr or not any(g == 'ladder' for g in groups.values()):
        return []
    total = min(thr[r1]) - min(thr[r2])
    lines = [f'| {task}: lever (batch {b}) | speed vs round 1 (best rounds; median, range) | '
             f'this step alone | share of the round-1 -> round-2 gain |', '| --- | --- | --- | ---: |']
    prev = r1
    ladder = [r1] + [n for n, g in groups.items() if g == 'ladder'] + [r2]
    for n in ladder[1:]:
        step = min(thr[prev]) / min(thr[n])
        share = (min(thr[prev]) - min(thr[n])) / total * 100 if total else float('nan')
        label = n.split(', ', 1)[1]
        lines.append(f'| {label} | {_fmt_ratio(ratio_stats(thr, n, r1))} | {step:.3f}x | {share:.0f}% |')
        prev = n
    lat = res.get('latency_levers_s', {})
    lines += ['', f'| {task}: round 2 with one lever off, or one more lever | batch-{b} speed vs round 2 (best rounds; '
              'median, range) | batch-1 speed (1 / latency) vs round 2 |', '| --- | --- | --- |']
    for n, g in groups.items():
        if g in ('leave-one-out', 'rejected'):
            at1 = _fmt_ratio(ratio_stats(lat, n, r2)) if n in lat else ''
            lines.append(f'| {n.split(", ", 1)[1]} | {_fmt_ratio(ratio_stats(thr, n, r2))} | {at1} |')
    return lines


BACKENDS = ['eager', 'compile', 'onnxruntime', 'openvino']
DTYPES = ['fp32', 'bf16', 'int8']


def part_backends(args) -> Dict:
    """``mednext-zoo bench``'s harness, every backend x dtype, wall clock (the harness's own interleaving)."""
    from mednext_zoo.benchmark import BenchConfig, run_benchmark
    out = {}
    backends = [b for b in BACKENDS if not (args.quick and b == 'compile')]  # inductor builds take minutes per model
    models = {'cls': ['mednext_base', 'resnet18'], 'seg': ['medunext_base', 'unet_resnet34']}
    for task in args.tasks:
        print(f'[{task}] backends {backends} x dtypes {DTYPES}', file=sys.stderr)
        cfg = BenchConfig(models=models[task], task=task, batch_size=args.batch, threads=args.threads,
                          backends=backends, dtypes=DTYPES, rounds=max(2, args.rounds // 2), latency_iters=2,
                          warmup=1, measure_memory=False, progress=False, note='benchmarks/speed/round2.py')
        result = run_benchmark(cfg)
        out[task] = {'rows': result.rows, 'meta': result.meta, 'backends': backends}
    return out


def _table_backends(task: str, res: Dict) -> List[str]:
    """backend x dtype: throughput, speed-up over eager fp32, ratio to the baseline, drift; skipped rows say why."""
    rows = res['rows']
    ours = rows[0]['name']
    agree = 'label-map Dice' if task == 'seg' else 'top-1 agreement'
    lines = [f'| model | backend | dtype | batch-{rows[0]["batch_size"]} img/s | x eager fp32 | batch-1 ms | '
             f'max abs Δlogit | {agree} |', '| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |']
    for r in rows:
        head = f"| {r['name']} | {r['backend']} | {r['dtype']} |"
        why = r.get('skipped') or r.get('error')
        if why:
            lines.append(f"{head} {'skipped' if r.get('skipped') else 'error'}: {why.split(': ', 1)[-1]} | | | | |")
            continue
        a = r['dice_vs_fp32'] if task == 'seg' else r['top1_agreement']
        lines.append(f"{head} {r['throughput_ips']:.1f} | {_num(r['speedup_vs_eager_fp32'], '.2f')}x | "
                     f"{r['latency_ms_median']:.1f} | {r['max_abs_dlogit']:.2g} | {_num(a, '.3f')} |")
    base = [r for r in rows if r['name'] != ours and r.get('throughput_ips')]
    if base:
        lines += ['', f'{ours} throughput / {base[0]["name"]} throughput under the same backend and dtype '
                  '(per-round median):', '']
        for r in rows:
            if r['name'] != ours and r.get('throughput_ratio'):
                lines.append(f"- {r['backend']} {r['dtype']}: {1 / r['throughput_ratio']:.2f}x")
    return lines


def _num(v, spec: str) -> str:
    return '-' if v is None else format(v, spec)


# --------------------------------------------------------------------------------------------------- main
def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--parts', nargs='+', default=['ratios', 'levers', 'backends'],
                   choices=['ratios', 'levers', 'backends'], help='what to run (default: all three)')
    p.add_argument('--tasks', nargs='+', default=['cls', 'seg'], choices=['cls', 'seg'])
    p.add_argument('--rounds', type=int, default=7, help='interleaved rounds at batch N (batch 1: 3x as many)')
    p.add_argument('--batch', type=int, default=16)
    p.add_argument('--threads', type=int, default=None, help='torch threads (default: see --clock)')
    p.add_argument('--clock', choices=['cpu', 'wall'], default=None,
                   help='cpu: thread CPU time (1 thread only); wall: perf_counter (default: cpu on a busy machine)')
    p.add_argument('--note', default='', help='free text recorded with the results')
    p.add_argument('--out', default=None, help='markdown file, .json beside it (default benchmarks/speed/round2.md, '
                                               'with --quick round2_quick.md)')
    p.add_argument('--quick', action='store_true',
                   help='a rough look (about 10-15 min on 2 busy cores): 2 rounds, the backends part without '
                        'torch.compile; results marked as quick')
    args = p.parse_args(argv)
    if args.quick:
        args.rounds = min(args.rounds, 2)
        args.note = ('QUICK MODE (2 rounds, no torch.compile row): a rough look, not the measurement. '
                     + args.note).strip()
    args.out = args.out or os.path.join(HERE, 'round2_quick.md' if args.quick else 'round2.md')
    load0 = os.getloadavg()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
    busy = load0[0] > 0.5 * cores
    args.clock = args.clock or ('cpu' if busy else 'wall')
    args.threads = args.threads or (1 if args.clock == 'cpu' else cores)
    if args.clock == 'cpu' and args.threads != 1:
        p.error('--clock cpu measures one thread\'s CPU time: use it with --threads 1')
    torch.set_num_threads(args.threads)
    clock = time.thread_time if args.clock == 'cpu' else time.perf_counter
    started = time.time()

    results: Dict = {'tasks': {}}
    for task in args.tasks:
        if {'ratios', 'levers'} & set(args.parts):
            results['tasks'][task] = part_ratios_and_levers(task, args, clock)
    if 'backends' in args.parts:
        results['backends'] = part_backends(args)
    load1 = os.getloadavg()

    head = (f'Machine: {platform.processor() or platform.machine()} ({_cpu_name()}), {cores} cores; torch '
            f'{torch.__version__}, timm {timm.__version__}; {args.threads} torch thread(s); clock: '
            + ('thread CPU time (time.thread_time)' if args.clock == 'cpu' else 'wall time (perf_counter)')
            + f'; fp32, eval, inference_mode, 224x224; {args.rounds} rounds at batch {args.batch}, '
            f'{args.rounds * 3} at batch 1. Load average (1, 5, 15 min) at start {_load(load0)}, at end '
            f'{_load(load1)}; wall time {time.time() - started:.0f} s. {args.note}').strip()
    lines = ['# Speed, round 2 (`benchmarks/speed/round2.py`)', '', head, '']
    for task, res in results['tasks'].items():
        lines += ['## ' + ('Classification: mednext_base vs resnet18' if task == 'cls'
                           else 'Segmentation: medunext_base vs smp Unet(resnet34)'), '']
        lines += _table_ratios(task, res) + ['']
        lever_lines = _table_levers(task, res)
        if lever_lines:
            lines += ['### Levers', ''] + lever_lines + ['']
    if 'backends' in results:
        for task, res in results['backends'].items():
            lines += [f'## Backends x dtypes ({task})', '', *_table_backends(task, res), '']
        lines += ['Backends part: `mednext-zoo bench` harness, wall clock, '
                  f'{max(2, args.rounds // 2)} interleaved rounds, batch {args.batch}; drift against eager fp32 on '
                  '8 packaged sample images (pydicom CT / MR, scikit-image), int8 calibrated on 32 others; random '
                  'weights (drift is a numerical check, not accuracy).', '']
    text = '\n'.join(lines).rstrip() + '\n'
    print(text)
    meta = {'args': vars(args), 'load_avg_start': load0, 'load_avg_end': load1, 'cores': cores,
            'torch': torch.__version__, 'timm': timm.__version__, 'cpu': _cpu_name()}
    _write(args.out, text)
    _write(os.path.splitext(args.out)[0] + '.json', json.dumps({'meta': meta, **results}, indent=1, default=str))
    return 0


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
