#!/usr/bin/env bash
# The committed training-efficiency tables (docs/benchmarks.md, "Training efficiency"): segmentation on the three
# phantoms and classification on `lesion`, 3 seeds each, CPU, one torch thread per run, CPU-seconds clock.
# Resumable: a rerun reuses the finished runs logged in each --out folder (train.runs.jsonl).
#   bash benchmarks/train_suite.sh [--dry-run]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=benchmarks/results/train-cpu-amd-epyc-2core
seg=(python -m mednext_zoo.cli bench --suite train --task seg
     --models medunext_tiny_hr,unet_resnet34,medunext_tiny,monai_basicunet,unet_resnet18,medunext_base_hr
     --seeds 3 --steps 150 --eval-every 25 --workers 2 --threads 1 --clock cpu --resume --out "$out/seg")
cls=(python -m mednext_zoo.cli bench --suite train --task cls
     --row mednext_tiny --row resnet18 --row mednext_base --row convnext_atto
     --row "swinv2_cr_tiny_w8=swinv2_cr_tiny_ns_224 window_size=8"
     --seeds 3 --steps 300 --eval-every 25 --workers 1 --threads 1 --clock cpu --resume --out "$out/cls")
if [[ "${1:-}" == "--dry-run" ]]; then
  printf '%q ' "${seg[@]}"; echo
  printf '%q ' "${cls[@]}"; echo
  exit 0
fi
"${seg[@]}"
"${cls[@]}"
python benchmarks/update_docs.py
