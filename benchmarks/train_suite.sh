#!/usr/bin/env bash
# The committed training-efficiency tables (docs/benchmarks.md, "Training efficiency"): segmentation on the three
# phantoms (and `thick` again at twice the budget, where no row reaches Dice 0.9 in 150 steps) and
# classification on `lesion`, 3 seeds each, CPU, one torch thread per run, CPU-seconds clock.
# Resumable: a rerun reuses the finished runs logged in each --out folder (train.runs.jsonl).
#   bash benchmarks/train_suite.sh [--dry-run]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=benchmarks/results/train-cpu-amd-epyc-2core
seg=(python -m mednext_zoo.cli bench --suite train --task seg
     --models medunext_tiny_hr,unet_resnet34,medunext_tiny,monai_basicunet,unet_resnet18,medunext_base_hr
     --seeds 3 --steps 150 --eval-every 25 --workers 2 --threads 1 --clock cpu --resume --out "$out/seg")
thick300=(python -m mednext_zoo.cli bench --suite train --task seg --models medunext_tiny_hr,unet_resnet34 --phantoms thick
     --seeds 3 --steps 300 --eval-every 25 --workers 1 --threads 1 --clock cpu --resume --out "$out/seg-thick-300"
     --note "issue 11: the thick phantom at twice the budget, so that steps to Dice 0.9 can be compared")
cls=(python -m mednext_zoo.cli bench --suite train --task cls
     --row mednext_tiny --row resnet18 --row mednext_base --row convnext_atto
     --row "swinv2_cr_tiny_w8=swinv2_cr_tiny_ns_224 window_size=8"
     --row "mednext_tiny@lr5e-4=mednext_tiny recipe.lr=0.0005 recipe.clip_grad=none"
     --row "resnet18@lr5e-4=resnet18 recipe.lr=0.0005 recipe.clip_grad=none"
     --seeds 3 --steps 300 --eval-every 25 --workers 1 --threads 1 --clock cpu --resume --out "$out/cls")
if [[ "${1:-}" == "--dry-run" ]]; then
  printf '%q ' "${seg[@]}"; echo
  printf '%q ' "${thick300[@]}"; echo
  printf '%q ' "${cls[@]}"; echo
  exit 0
fi
"${seg[@]}"
"${thick300[@]}"
"${cls[@]}"
python benchmarks/update_docs.py
