#!/bin/bash
# issue 22 target: the round-2 speed ratio at batch 16 before (main, inline fused path) and after (i22, models/_fused.py),
# in one run: the two trees alternate, 2 passes each, --parts ratios --tasks cls, 1 thread, CPU clock.
# run from the checkout after the change, with BEFORE=<a worktree of the commit before it>
out=$(realpath -m "${OUT:-benchmarks/speed/issue22-before-after}"); BEFORE=${BEFORE:?checkout of the commit before issue 22}; AFTER=${AFTER:-$PWD}; mkdir -p $out
for pass in 1 2; do
  for tree in before:"$BEFORE" after:"$AFTER"; do
    name=${tree%%:*}; dir=${tree#*:}
    (cd $dir && PYTHONPATH=$dir python benchmarks/speed/round2.py --parts ratios --tasks cls --rounds 3 --batch 16 \
       --threads 1 --clock cpu --note "issue 22 before/after, $name pass $pass" --out $out/$name-$pass.md) > $out/$name-$pass.log 2>&1
    echo "$name pass $pass rc=$?"
  done
done
