#!/usr/bin/env bash
# The GPU table in one command: inference throughput / latency / peak memory (mednext-zoo bench) and
# training-step throughput / peak memory (benchmarks/gpu_train_step.py), for mednext_base / medunext_base
# against convnext_tiny, resnet50, resnet18, swinv2_cr_tiny_224 and smp Unet("resnet34"), in fp32, AMP bf16 and
# AMP fp16, contiguous and channels-last, eager and torch.compile. Outputs json / csv / md / png per part under
# --out, and OUT/README.md listing them.
#
#   benchmarks/gpu.sh                 # everything (~40-60 min on one modern GPU, most of it torch.compile)
#   benchmarks/gpu.sh --quick         # fewer rounds / steps, no compile (~5-10 min)
#   benchmarks/gpu.sh --dry-run       # print the plan, run nothing (works without a GPU)
#
# Exit codes: 0 done; 2 bad arguments; 3 no CUDA GPU visible to PyTorch (nothing is run); else the failing step's.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
PY="${PYTHON:-python}"
OUT="$ROOT/benchmarks/results/gpu"
DRY_RUN=0
QUICK=0

usage() { sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --quick) QUICK=1 ;;
    --out) [[ $# -ge 2 ]] || { echo "gpu.sh: --out needs a folder" >&2; exit 2; }; OUT="$2"; shift ;;
    --out=*) OUT="${1#--out=}" ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done

CLS_MODELS="mednext_base,convnext_tiny,resnet50,resnet18,swinv2_cr_tiny_224"
SEG_MODELS="medunext_base,unet_resnet34"
if [[ $QUICK -eq 1 ]]; then
  BENCH_ROUNDS=(--rounds 2); BACKENDS="eager"; TRAIN_ARGS=(--rounds 2 --steps 5 --warmup 2 --compile off)
else
  BENCH_ROUNDS=(--rounds 5); BACKENDS="eager,compile"; TRAIN_ARGS=(--rounds 3 --steps 10 --warmup 3 --compile both)
fi

PLAN=()
for task in cls seg; do
  models=$CLS_MODELS; [[ $task == seg ]] && models=$SEG_MODELS
  for layout in contiguous channels-last; do
    flag=(); [[ $layout == channels-last ]] && flag=(--channels-last)
    PLAN+=("$PY -m mednext_zoo.cli bench --device cuda --task $task --models $models --backend $BACKENDS \
--dtype fp32,bf16,fp16 ${flag[*]:-} ${BENCH_ROUNDS[*]} --no-progress --out $OUT/infer-$task-$layout")
  done
  PLAN+=("$PY $ROOT/benchmarks/gpu_train_step.py --device cuda --task $task --models $models \
--dtype fp32,bf16,fp16 --channels-last both ${TRAIN_ARGS[*]} --out $OUT/train-$task")
done

if [[ $DRY_RUN -eq 1 ]]; then
  echo "benchmarks/gpu.sh plan (${#PLAN[@]} steps; outputs under $OUT):"
  i=0
  for cmd in "${PLAN[@]}"; do i=$((i + 1)); echo "  $i. $(echo "$cmd" | tr -s ' ')"; done
  echo "Then: $OUT/README.md lists the tables (results.md / train_step.md) and charts of every step."
  exit 0
fi

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  info="$("$PY" -c 'import torch; print(f"torch {torch.__version__}, built for CUDA {torch.version.cuda}")' 2>/dev/null \
    || echo 'torch not importable')"
  echo "benchmarks/gpu.sh: no CUDA GPU is visible to PyTorch here ($info): nothing was run." >&2
  echo "Run it on a machine with an NVIDIA GPU and a CUDA build of PyTorch; --dry-run prints the plan." >&2
  exit 3
fi

cd "$ROOT"
mkdir -p "$OUT"
i=0
for cmd in "${PLAN[@]}"; do
  i=$((i + 1))
  echo "[$i/${#PLAN[@]}] $cmd" >&2
  eval "$cmd"
done
{
  echo "# GPU benchmark ($(date -u +%Y-%m-%dT%H:%M:%SZ))"
  echo
  "$PY" -c 'import torch; print(f"{torch.cuda.get_device_name(0)}; torch {torch.__version__}, CUDA {torch.version.cuda}")'
  echo
  for d in "$OUT"/infer-* "$OUT"/train-*; do
    [[ -d $d ]] || continue
    for f in "$d"/results.md "$d"/train_step.md; do
      [[ -f $f ]] && echo "- [$(basename "$d")/$(basename "$f")]($(basename "$d")/$(basename "$f"))"
    done
  done
} > "$OUT/README.md.tmp" && mv "$OUT/README.md.tmp" "$OUT/README.md"
echo "wrote $OUT/README.md" >&2
