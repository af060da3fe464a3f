"""The benchmark run: build, count, then time every model in interleaved rounds.

Timing protocol (the same on CPU and GPU):

1. Every model is built (random weights, eval mode) and counted once (fvcore, batch 1, fp32, CPU).
2. Warm-up: each model runs ``warmup`` batch-1 forwards and one batch-N forward.
3. ``rounds`` rounds; in each round every model in turn (the starting model rotates each round)
   runs ``latency_iters`` timed batch-1 forwards and ``throughput_iters`` timed batch-N forwards.
   Interleaving means slow drifts of the machine (other processes, thermal limits) hit every model
   alike, so the ratios to the reference model, taken per round and then the median over rounds,
   are much steadier than the absolute times.
4. Peak memory: one batch-N forward per model; CPU: growth of the process's resident set (RSS)
   over its level before the forward, sampled every 0.5 ms after returning freed heap to the OS;
   CUDA: ``torch.cuda.max_memory_allocated`` minus the memory allocated before the forward.

Backends and dtypes (``backends`` x ``dtypes``, see ``mednext_zoo.deploy.runtimes``): every model gets one row
per combination, timed in the same interleaved rounds. Each row's drift columns compare its outputs with the
model's eager fp32 outputs on a fixed, seeded set of packaged medical sample images (``mednext_zoo.deploy``);
int8 is calibrated on a second, disjoint seeded set. A combination that cannot run here (not installed, no
hardware support, not offered) is a row with ``skipped`` set to the reason, never a missing row.
"""
from __future__ import annotations

import contextlib
import ctypes
import gc
import math
import os
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.nn as nn

from .._cpuload import load_average
from ..deploy import BACKENDS, DTYPES, BackendUnavailable, drift, prepare_runner, sample_images
from ..deploy.preprocessing import normalise_for_model
from ..errors import UserInputError
from ..machine import machine_info, machine_label
from .counting import count_model
from .specs import REFERENCE, SEG_REFERENCE, ModelSpec, build_model, resolve_models

__all__ = ['BenchConfig', 'BenchResult', 'run_benchmark', 'ROW_FIELDS']

ROW_FIELDS = [
    'name', 'label', 'arch', 'task', 'img_size', 'in_chans', 'num_classes', 'backend', 'dtype',
    'params_m', 'gflops', 'activations_m',
    'latency_ms_median', 'latency_ms_p90', 'throughput_ips', 'batch_size', 'peak_mem_mb',
    'params_ratio', 'gflops_ratio', 'latency_ratio', 'throughput_ratio', 'peak_mem_ratio',
    'speedup_vs_eager_fp32', 'max_abs_dlogit', 'top1_agreement', 'dice_vs_fp32',
    'skipped_ops', 'skipped', 'error',
]


@dataclass
class BenchConfig:
    """Settings of one run; ``None`` picks the default for the device / ``quick``."""

    models: Optional[List[str]] = None
    task: str = 'cls'
    img_size: Optional[int] = None
    batch_size: Optional[int] = None  # 8 on CPU, 256 on CUDA (4 / 64 with quick)
    device: str = 'cpu'
    amp: bool = False  # = dtypes ['bf16'] on CPU, ['fp16'] on CUDA
    channels_last: bool = False
    compile: bool = False  # = backends ['compile']
    backends: Optional[List[str]] = None  # eager / compile / onnxruntime / openvino (default: eager)
    dtypes: Optional[List[str]] = None  # fp32 / bf16 / fp16 / int8 (default: fp32)
    drift_images: int = 8  # sample images the drift columns compare on
    calibration_images: int = 32  # int8 calibration images (a disjoint seeded set)
    quick: bool = False
    rounds: Optional[int] = None  # 5 (quick: 2)
    latency_iters: Optional[int] = None  # per model per round: 3 (quick: 2)
    throughput_iters: int = 1  # per model per round
    warmup: Optional[int] = None  # batch-1 warm-up forwards per model: 2 (quick: 1)
    threads: Optional[int] = None  # torch.set_num_threads; None keeps torch's default
    num_classes: Optional[int] = None  # 1000 (cls) / 9 (seg)
    reference: Optional[str] = None  # mednext_base (cls) / medunext_base (seg)
    measure_memory: bool = True
    progress: bool = True
    note: str = ''  # free text recorded with the result (e.g. what else ran on the machine)

    def resolved(self) -> BenchConfig:
        """A copy with every ``None`` replaced by its default for the device and ``quick``; raises UserInputError for
        counts below 1 or a negative ``warmup``."""
        cuda = self.device.startswith('cuda')
        out = BenchConfig(**asdict(self))
        if out.batch_size is None:
            out.batch_size = (64 if self.quick else 256) if cuda else (4 if self.quick else 8)
        if out.rounds is None:
            out.rounds = 2 if self.quick else 5
        if out.latency_iters is None:
            out.latency_iters = 2 if self.quick else 3
        if out.warmup is None:
            out.warmup = 1 if self.quick else 2
        if out.reference is None:
            out.reference = SEG_REFERENCE if self.task == 'seg' else REFERENCE
        out.backends = _choices(out.backends or (['compile'] if self.compile else ['eager']), BACKENDS, 'backend')
        out.dtypes = _choices(out.dtypes or ([('fp16' if cuda else 'bf16')] if self.amp else ['fp32']), DTYPES,
                              'dtype')
        out.compile = out.backends == ['compile']
        out.amp = all(d in ('bf16', 'fp16') for d in out.dtypes)
        for key in ('batch_size', 'rounds', 'latency_iters', 'throughput_iters', 'drift_images',
                    'calibration_images'):
            if getattr(out, key) < 1:
                raise UserInputError(f'--{key.replace("_", "-")} must be at least 1, got {getattr(out, key)}.')
        if out.warmup < 0:
            raise UserInputError(f'--warmup must be 0 or more, got {out.warmup}.')
        return out


def _choices(values: List[str], allowed: tuple, what: str) -> List[str]:
    out = []
    for v in values:
        v = v.strip().lower()
        if v not in allowed:
            raise UserInputError(f'unknown --{what} {v!r}: choose from {", ".join(allowed)} (comma-separated).')
        if v not in out:
            out.append(v)
    return out


@dataclass
class BenchResult:
    """``meta``: settings, machine, conventions; ``rows``: one dict per model x backend x dtype (``ROW_FIELDS``)."""

    meta: Dict[str, Any]
    rows: List[Dict[str, Any]] = field(default_factory=list)

    def row(self, name: str, backend: Optional[str] = None, dtype: Optional[str] = None) -> Dict[str, Any]:
        """The row of the model named ``name`` (the first one, or the one of ``backend`` / ``dtype`` when given);
        raises KeyError if the run has none."""
        for r in self.rows:
            if r['name'] == name and backend in (None, r.get('backend')) and dtype in (None, r.get('dtype')):
                return r
        raise KeyError((name, backend, dtype))


@dataclass
class _Entry:
    spec: ModelSpec
    backend: str = 'eager'
    dtype: str = 'fp32'
    model: Optional[Callable[[torch.Tensor], torch.Tensor]] = None  # the runner: x -> logits
    x1: Optional[torch.Tensor] = None
    xn: Optional[torch.Tensor] = None
    row: Dict[str, Any] = field(default_factory=dict)
    latency: List[List[float]] = field(default_factory=list)  # per round, seconds
    throughput: List[List[float]] = field(default_factory=list)  # per round, images/s

    @property
    def ok(self) -> bool:
        return self.model is not None and not self.row.get('error')


def _check_device(device: str) -> torch.device:
    if device not in ('cpu', 'cuda') and not device.startswith('cuda:'):
        raise UserInputError(f'unknown device {device!r}: choose cpu or cuda.')
    if device.startswith('cuda'):
        if not torch.cuda.is_available():
            raise UserInputError(
                '--device cuda was asked for but PyTorch sees no CUDA GPU here '
                f'(torch {torch.__version__}, built for CUDA {torch.version.cuda}). '
                'Run with --device cpu, or install a CUDA build of PyTorch on a machine with an NVIDIA GPU.'
            )
        dev = torch.device(device)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserInputError(f'{device} does not exist: this machine has {torch.cuda.device_count()} GPU(s).')
        return dev
    return torch.device('cpu')


def _explain(e: BaseException, what: str, spec: ModelSpec, batch: int, device: torch.device) -> str:
    text = str(e).strip()
    first = text.splitlines()[0] if text else type(e).__name__
    low = text.lower()
    oom_types = (MemoryError, torch.OutOfMemoryError) if hasattr(torch, 'OutOfMemoryError') else (MemoryError,)
    oom_words = ('out of memory', "can't allocate memory", 'not enough memory')
    if isinstance(e, oom_types) or any(s in low for s in oom_words):
        return (f'batch {batch} at {spec.img_size}x{spec.img_size} does not fit in {device.type} memory '
                f'({first[:160]}); ' + ('lower --batch-size.' if batch > 1 else 'choose a smaller --img-size.'))
    if isinstance(e, UserInputError):
        return first
    return (f'{spec.arch} could not {what} at {spec.img_size}x{spec.img_size} ({type(e).__name__}: {first[:300]}); '
            'if the input size is the cause, choose another --img-size or NAME@SIZE.')


def _malloc_trim() -> None:
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL('libc.so.6').malloc_trim(0)


def _rss_reader() -> Optional[Callable[[], int]]:
    try:
        import psutil
        proc = psutil.Process()
        return lambda: proc.memory_info().rss
    except ImportError:
        pass
    if os.path.exists('/proc/self/statm'):
        page = os.sysconf('SC_PAGE_SIZE')

        def read() -> int:
            with open('/proc/self/statm') as f:
                return int(f.read().split()[1]) * page
        return read
    return None


class _PeakRss(threading.Thread):
    def __init__(self, read: Callable[[], int], interval: float = 5e-4):
        super().__init__(daemon=True)
        self.read, self.interval = read, interval
        self.peak = read()
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.peak = max(self.peak, self.read())
            time.sleep(self.interval)

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        self.peak = max(self.peak, self.read())
        return self.peak


def _p90(values: List[float]) -> float:
    s = sorted(values)
    k = (len(s) - 1) * 0.9
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def run_benchmark(config: Optional[BenchConfig] = None, **overrides: Any) -> BenchResult:
    """Run the benchmark described by ``config`` (or keyword overrides of the defaults).

    Per-model failures (an input size a model cannot take, a batch that does not fit in memory, a
    failed ``torch.compile``) become an ``error`` in that model's row; the other rows still come out.
    Raises ``UserInputError`` for settings no model could run with (unknown model, no CUDA GPU).
    """
    cfg = (config or BenchConfig())
    if overrides:
        cfg = BenchConfig(**{**asdict(cfg), **overrides})
    cfg = cfg.resolved()
    device = _check_device(cfg.device)
    specs = resolve_models(cfg.models, task=cfg.task, img_size=cfg.img_size, num_classes=cfg.num_classes,
                           reference=cfg.reference)
    if cfg.threads is not None:
        if cfg.threads < 1:
            raise UserInputError(f'--threads must be at least 1, got {cfg.threads}.')
        torch.set_num_threads(cfg.threads)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    combos = [(b, d) for b in cfg.backends for d in cfg.dtypes]

    entries = [_Entry(spec, b, d) for spec in specs for b, d in combos]
    for e in entries:
        e.row = {k: None for k in ROW_FIELDS}
        e.row.update(name=e.spec.name, label=e.spec.label, arch=e.spec.arch, task=e.spec.task,
                     img_size=e.spec.img_size, in_chans=e.spec.in_chans, num_classes=e.spec.num_classes,
                     batch_size=cfg.batch_size, backend=e.backend, dtype=e.dtype)

    steps = len(specs) + len(entries) * (cfg.rounds + 2 + int(cfg.measure_memory))
    bar = _progress(steps, cfg.progress)
    started = time.time()
    load_start = _loadavg()

    def forward(e: _Entry, x: torch.Tensor) -> torch.Tensor:
        out = e.model(x)
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        return out

    def fail(e: _Entry, exc: BaseException, what: str, batch: Optional[int] = None) -> None:
        if isinstance(exc, BackendUnavailable):
            e.row['skipped'] = f'{e.backend} {e.dtype}: {exc}'
        else:
            e.row['error'] = _explain(exc, what, e.spec, batch or cfg.batch_size, device)
        e.model = e.x1 = e.xn = None
        gc.collect()
        if device.type == 'cuda':
            torch.cuda.empty_cache()

    # 1. build and count once per model, then one runner per backend x dtype
    for spec in specs:
        group = [e for e in entries if e.spec is spec]
        bar.set_description(f'build+count {spec.name}')
        bar.update(1)
        try:
            _check_fits(spec, 1, torch.device('cpu'))  # the fvcore trace runs batch 1 on the CPU
            torch.manual_seed(0)
            model = build_model(spec)
        except Exception as exc:  # noqa: BLE001  (reported in the rows)
            for e in group:
                fail(e, exc, 'build', batch=1)
            bar.update(len(group))
            continue
        try:
            counts = count_model(model, spec.input_size)
        except Exception as exc:  # noqa: BLE001
            for e in group:
                fail(e, exc, 'run', batch=1)
            bar.update(len(group))
            continue
        for e in group:
            e.row.update(params_m=counts.params / 1e6, gflops=counts.flops / 1e9,
                         activations_m=counts.activations / 1e6,
                         skipped_ops=' '.join(f'{k.replace("aten::", "")}:{v}' for k, v in counts.skipped_ops.items()))
        try:
            _check_fits(spec, cfg.batch_size, device)
            model = model.to(device, memory_format=memory_format)
            x1 = torch.randn(1, *spec.input_size, device=device).to(memory_format=memory_format)
            xn = torch.randn(cfg.batch_size, *spec.input_size, device=device).to(memory_format=memory_format)
            drift_x, calib = _drift_inputs(model, spec, cfg, device, memory_format)
            with torch.inference_mode():
                reference_out = model(drift_x).float()
        except Exception as exc:  # noqa: BLE001
            for e in group:
                fail(e, exc, 'allocate')
            bar.update(len(group))
            continue
        for e in group:
            bar.set_description(f'prepare {spec.name} {e.backend} {e.dtype}')
            try:
                e.model = prepare_runner(model, e.backend, e.dtype, x1,
                                         calibration=calib if e.dtype == 'int8' else None, threads=cfg.threads)
                e.x1, e.xn = x1, xn
                e.row.update(drift(reference_out, forward(e, drift_x), spec.task))  # compiles / warms up too
            except Exception as exc:  # noqa: BLE001
                fail(e, exc, 'prepare' if e.backend == 'eager' else f'run under {e.backend} {e.dtype}')
            bar.update(1)

    # 2. warm-up
    for e in entries:
        bar.set_description(f'warm-up {e.spec.name} {e.backend} {e.dtype}')
        if e.ok:
            try:
                for _ in range(cfg.warmup):
                    forward(e, e.x1)
                forward(e, e.xn)
            except Exception as exc:  # noqa: BLE001
                fail(e, exc, 'run' if e.backend == 'eager' else f'run under {e.backend} {e.dtype}')
        bar.update(1)

    # 3. interleaved timed rounds
    for r in range(cfg.rounds):
        order = entries[r % len(entries):] + entries[:r % len(entries)]
        for e in order:
            bar.set_description(f'round {r + 1}/{cfg.rounds} {e.spec.name} {e.backend} {e.dtype}')
            if e.ok:
                try:
                    lat = []
                    for _ in range(cfg.latency_iters):
                        t0 = time.perf_counter()
                        forward(e, e.x1)
                        lat.append(time.perf_counter() - t0)
                    thr = []
                    for _ in range(cfg.throughput_iters):
                        t0 = time.perf_counter()
                        forward(e, e.xn)
                        thr.append(cfg.batch_size / (time.perf_counter() - t0))
                    e.latency.append(lat)
                    e.throughput.append(thr)
                except Exception as exc:  # noqa: BLE001
                    fail(e, exc, 'run')
            bar.update(1)

    # 4. peak memory of one batch-N forward
    if cfg.measure_memory:
        read_rss = _rss_reader() if device.type == 'cpu' else None
        for e in entries:
            bar.set_description(f'memory {e.spec.name}')
            if e.ok and e.backend in ('eager', 'compile'):  # runtimes with their own arenas show no growth
                try:
                    e.row['peak_mem_mb'] = _peak_memory(lambda e=e: forward(e, e.xn), device, read_rss)
                except Exception as exc:  # noqa: BLE001
                    fail(e, exc, 'run')
            bar.update(1)
    bar.close()

    for e in entries:
        if e.latency:
            flat = [t for rnd in e.latency for t in rnd]
            e.row['latency_ms_median'] = statistics.median(flat) * 1e3
            e.row['latency_ms_p90'] = _p90(flat) * 1e3
            e.row['throughput_ips'] = statistics.median([v for rnd in e.throughput for v in rnd])
    _ratios(entries, cfg.reference)
    _speedups(entries)

    info = machine_info(str(device))
    meta = {
        'title': 'mednext-zoo benchmark',
        'task': cfg.task,
        'machine': info,
        'machine_label': machine_label(info),
        'settings': {k: v for k, v in asdict(cfg).items() if k not in ('progress', 'models')},
        'models': [spec.name for spec in specs],
        'reference': cfg.reference if any(e.spec.name == cfg.reference and e.ok for e in entries) else None,
        'amp_dtype': ('float16' if 'fp16' in cfg.dtypes else 'bfloat16') if cfg.amp else None,
        'drift_inputs': f'{cfg.drift_images} packaged sample images (pydicom CT / MR, scikit-image), seeded crops; '
                        f'int8 calibrated on {cfg.calibration_images} others',
        'started_utc': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(started)),
        'wall_s': round(time.time() - started, 1),
        'load_avg_1min': [load_start, _loadavg()],  # at start and end: other processes competing for the CPU
        'note': cfg.note,
    }
    return BenchResult(meta=meta, rows=[e.row for e in entries])


def _loadavg() -> Optional[float]:
    return load_average()


def _check_fits(spec: ModelSpec, batch: int, device: torch.device) -> None:
    """Refuse before allocating when the batch-N input alone exceeds the memory there is."""
    need = batch * spec.in_chans * spec.img_size ** 2 * 4
    if device.type == 'cuda':
        free, _ = torch.cuda.mem_get_info(device)
    else:
        try:
            import psutil
            free = psutil.virtual_memory().available
        except ImportError:
            return
    if need > free:
        raise MemoryError(f'the input batch alone needs {need / 2 ** 30:.1f} GiB, {free / 2 ** 30:.1f} GiB free')


def _peak_memory(
        run: Callable[[], None], device: torch.device, read_rss: Optional[Callable[[], int]],
) -> Optional[float]:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        run()
        return (torch.cuda.max_memory_allocated(device) - before) / 2 ** 20
    if read_rss is None:
        return None
    _malloc_trim()
    sampler = _PeakRss(read_rss)
    before = sampler.peak
    sampler.start()
    try:
        run()
    finally:
        peak = sampler.stop()
    return max(peak - before, 0) / 2 ** 20


def _per_round_ratio(a: List[List[float]], b: List[List[float]]) -> Optional[float]:
    """Median over rounds of the ratio of per-round medians (``None`` unless both ran every round)."""
    if not a or len(a) != len(b):
        return None
    return statistics.median(statistics.median(x) / statistics.median(y) for x, y in zip(a, b, strict=True))


def _ratios(entries: List[_Entry], reference: str) -> None:
    """x-ratios to ``reference`` under the same backend and dtype."""
    for e in entries:
        ref = next((f for f in entries if f.spec.name == reference and f.backend == e.backend
                    and f.dtype == e.dtype and f.row.get('params_m')), None)
        if ref is None:
            continue
        r = e.row
        for key, src in (('params_ratio', 'params_m'), ('gflops_ratio', 'gflops'), ('peak_mem_ratio', 'peak_mem_mb')):
            if r.get(src) is not None and ref.row.get(src):
                r[key] = r[src] / ref.row[src]
        r['latency_ratio'] = _per_round_ratio(e.latency, ref.latency)
        r['throughput_ratio'] = _per_round_ratio(e.throughput, ref.throughput)


def _speedups(entries: List[_Entry]) -> None:
    """Throughput of each backend x dtype over the same model's eager fp32 row, per round (> 1: faster)."""
    for e in entries:
        base = next((f for f in entries if f.spec is e.spec and f.backend == 'eager' and f.dtype == 'fp32'), None)
        if base is not None:
            e.row['speedup_vs_eager_fp32'] = _per_round_ratio(e.throughput, base.throughput)


def _drift_inputs(model: nn.Module, spec: ModelSpec, cfg: BenchConfig, device: torch.device,
                  memory_format: torch.memory_format) -> tuple:
    """The drift inputs and the int8 calibration inputs (disjoint seeds), normalised as the model expects."""
    size = spec.input_size[1:]  # smp U-Nets carry no in_chans / img_size: the spec's input
    drift_x = normalise_for_model(model, sample_images(cfg.drift_images, spec.in_chans, size, seed=0))
    calib = normalise_for_model(model, sample_images(cfg.calibration_images, spec.in_chans, size, seed=1)) \
        if 'int8' in cfg.dtypes else None
    return drift_x.to(device).contiguous(memory_format=memory_format), calib


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm
    return tqdm(total=total, disable=not enabled, unit='step', dynamic_ncols=True, leave=False)
