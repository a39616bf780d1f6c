#!/usr/bin/env bash
# A short `ns-train` run with torch.compile on synthetic shards (GPU): 30 steps, LPIPS weight 0, the view schedule
# ramping 2 -> 24 views within 15 steps (batch layouts change nearly every step: the dynamic-shape path).
# Usage: [METHOD=zipsplat-small] [STEPS=30] gpu_ns_train_smoke.sh TIMEOUT_S [extra ns-train arguments]
# Writes ns_train_compile_<method>.log and the run's per-step metrics to $OUT. The shards go to /tmp/syn once and are
# reused, so two methods can run side by side after one of them (or `zipsplat-ns synth`) has made them.
# SYNTH_SCENES (default 40) sets how many synthetic scenes are made on first use.
# Called by gpu_train_speed.sh and gpu_bench_session.sh.
set -u
: "${OUT:?set OUT}"
limit=$1
shift
method=${METHOD:-zipsplat-small}
S=${STEPS:-30}
if [ ! -f /tmp/syn/.smoke-ready ]; then
  zipsplat-ns synth --output /tmp/syn --num-scenes "${SYNTH_SCENES:-40}" --views 32 --size 252 --num-workers 12 > /tmp/synth.log 2>&1 \
    && touch /tmp/syn/.smoke-ready
fi
log="$OUT/ns_train_compile_$method.log"
timeout "$limit" ns-train "$method" --data /tmp/syn --output-dir "/tmp/runs-$method" --experiment-name smoke \
  --timestamp run --max-num-iterations "$S" --pipeline.model.total-steps "$S" --pipeline.model.compile True \
  --optimizers.backbone.scheduler.max-steps "$S" --optimizers.head.scheduler.max-steps "$S" \
  --pipeline.model.loss.lpips-weight 0 --steps-per-save 1000 --steps-per-eval-batch 1000 \
  --steps-per-eval-image 1000 --pipeline.datamanager.num-workers 4 "$@" > "$log" 2>&1
echo "ns-train $method exit: $?"
cp "/tmp/runs-$method/smoke/$method/run/zipsplat_metrics.jsonl" "$OUT/ns_train_compile_${method}_metrics.jsonl" \
  2>/dev/null
tail -n 5 "$log"
