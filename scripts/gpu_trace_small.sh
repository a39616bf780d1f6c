#!/usr/bin/env bash
# One device call: profiled small training steps (eager / compiled, 4x6 / 1x24) with Chrome traces + their summaries in $OUT/traces.
#   source .gpu/setup.sh && bash scripts/gpu_trace_small.sh
set -u
export PYTHONUNBUFFERED=1
for cfg in "4x6 eager" "4x6 compile" "1x24 eager"; do
  set -- $cfg
  timeout 200 python scripts/bench_train.py --variants small --layouts $1 --compile $2 --grad-ckpt off --steps 4 --warmup 3 \
    --profile-steps 2 --trace-dir $OUT/traces --lpips-weights random --output $OUT/small_$1_$2.json > $OUT/small_$1_$2.log 2>&1
  tail -n 3 $OUT/small_$1_$2.log | cut -c1-600
done
for t in $OUT/traces/*.json; do
  python scripts/trace_summary.py $t --output ${t%.json}.summary.json > /dev/null && gzip -k $t && rm $t
done
ls -la $OUT/traces
