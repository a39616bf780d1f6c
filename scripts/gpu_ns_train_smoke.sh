#!/usr/bin/env bash
# A short `ns-train zipsplat-small` run with torch.compile on synthetic shards (GPU): 30 steps, LPIPS weight 0, the
# view schedule ramping 2 -> 24 views within 15 steps (batch layouts change nearly every step: the dynamic-shape
# path). Usage: gpu_ns_train_smoke.sh TIMEOUT_S [extra ns-train arguments]; writes ns_train_compile.log and the
# run's metrics to $OUT. Called by gpu_train_speed.sh and gpu_bench_session.sh.
set -u
: "${OUT:?set OUT}"
limit=$1
shift
zipsplat-ns synth --output /tmp/syn --num-scenes 40 --views 32 --size 252 --num-workers 12 > /tmp/synth.log 2>&1
S=30
timeout "$limit" ns-train zipsplat-small --data /tmp/syn --output-dir /tmp/runs --experiment-name smoke \
  --timestamp run --max-num-iterations $S --pipeline.model.total-steps $S --pipeline.model.compile True \
  --optimizers.backbone.scheduler.max-steps $S --optimizers.head.scheduler.max-steps $S \
  --pipeline.model.loss.lpips-weight 0 --steps-per-save 1000 --steps-per-eval-batch 1000 \
  --steps-per-eval-image 1000 --pipeline.datamanager.num-workers 4 "$@" > "$OUT/ns_train_compile.log" 2>&1
echo "ns-train exit: $?"
cp /tmp/runs/smoke/zipsplat-small/run/zipsplat_metrics.jsonl "$OUT/ns_train_compile_metrics.jsonl" 2>/dev/null
tail -n 5 "$OUT/ns_train_compile.log"
