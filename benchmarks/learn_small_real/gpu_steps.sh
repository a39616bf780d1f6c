#!/bin/bash
# The GPU-machine side of the learning experiment (issue 5, item 5), exactly as it ran. One call per step, on one
# machine kept warm between the calls (so /tmp/learn, the training process and the torch hub cache persist):
#   call 1:  bash benchmarks/learn_small_real/gpu_steps.sh start    (data, launch ns-train in the background, splatfacto)
#   call 2:  bash benchmarks/learn_small_real/gpu_steps.sh wait     (training goes on; progress comes back)
#   call 3:  bash benchmarks/learn_small_real/gpu_steps.sh finish   (stop at >= TRAIN_MINUTES, evaluate, collect)
# Call 1 carries .devdata/learn/{train_scenes,heldout_shards,heldout_index.json,splatfacto} and the AlexNet hub file;
# call 3 carries .devdata/learn/{heldout_shards,heldout_index.json} again.
# Inputs (prepared here by `python scripts/bench_learning.py prepare --out .devdata/learn`, carried to the device):
# .devdata/learn/{train_scenes,heldout_shards,heldout_index.json,splatfacto}; LPIPS backbones in the torch hub cache.
set -euo pipefail
W=/tmp/learn
RUN=$W/runs/learn/zipsplat-small/run
TRAIN_MINUTES=${TRAIN_MINUTES:-20.5}
STEPS=${STEPS:-3000}
mkdir -p "$W"

collect_progress() {
  [ -f "$RUN/zipsplat_metrics.jsonl" ] && cp "$RUN/zipsplat_metrics.jsonl" "$OUT/" || true
  [ -f "$W/train.log" ] && tail -c 200000 "$W/train.log" > "$OUT/train_log_tail.txt" || true
  nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv >> "$OUT/train_log_tail.txt" 2>&1 || true
}

latest_ckpt() { { ls -1 "$RUN"/nerfstudio_models/step-*.ckpt 2>/dev/null || true; } | tail -n 1; }

splatfacto_baseline() {  # $1: time limit in seconds
  timeout "$1" python scripts/bench_learning.py splatfacto --folders .devdata/learn/splatfacto \
    --out $W/renders_splatfacto --work $W/splatfacto --steps 7000 || echo "splatfacto baseline stopped or FAILED"
  cp $W/renders_splatfacto/*.npz "$OUT/" 2>/dev/null || true
  cp $W/renders_splatfacto/timing.json "$OUT/splatfacto_timing.json" 2>/dev/null || true
  tail -n 30 $W/splatfacto/*.log 2>/dev/null | tail -c 100000 > "$OUT/splatfacto_log_tail.txt" || true
}

case "${1:-}" in
start)
  python scripts/bench_learning.py train-data --train-scenes .devdata/learn/train_scenes --out $W/data \
    --synth-scenes 256 --workers 14
  date +%s > $W/train_start
  # zipsplat-small from scratch, the recipe's losses (LPIPS-VGG included), 24 context images per step; the cosine
  # schedule is laid out over $STEPS steps and the run is stopped after TRAIN_MINUTES of GPU time (see `finish`).
  setsid nohup ns-train zipsplat-small --output-dir $W/runs --experiment-name learn --timestamp run \
    --max-num-iterations $STEPS --pipeline.model.total-steps $STEPS \
    --optimizers.backbone.scheduler.max-steps $STEPS --optimizers.head.scheduler.max-steps $STEPS \
    --steps-per-save 50 --steps-per-eval-batch 250 --steps-per-eval-image 500 \
    --pipeline.datamanager.num-workers 6 ${LPIPS_WEIGHT:+--pipeline.model.loss.lpips-weight $LPIPS_WEIGHT} \
    --pipeline.datamanager.datasets synth $W/data/synth 0.5 real $W/data/real 0.5 \
    > $W/train.log 2>&1 < /dev/null &
  # the splatfacto baseline meanwhile (7000 steps per held-out scene, same context crops)
  splatfacto_baseline "${SPLAT_TIMEOUT:-480}"
  collect_progress
  ;;
wait)
  end=$(( $(date +%s) + ${WAIT_S:-560} ))
  # scenes the first call had no time for (finished ones are skipped)
  ls $W/renders_splatfacto/*.npz 2>/dev/null | wc -l | grep -qx 3 || splatfacto_baseline $(( end - $(date +%s) - 20 ))
  while [ "$(date +%s)" -lt "$end" ] && pgrep -f "ns-train zipsplat-small" > /dev/null; do sleep 10; done
  collect_progress
  ;;
finish)
  # The held-out inputs must be on the machine: carry .devdata/learn/heldout_shards and heldout_index.json again in
  # this call (in the recorded run they were gone after the `wait` call, which had not carried them, and the
  # evaluation was re-run in one more call that carried them).
  for f in .devdata/learn/heldout_shards .devdata/learn/heldout_index.json; do
    [ -e "$f" ] || { echo "finish: $f is missing; carry it in this call" >&2; exit 2; }
  done
  t0=$(cat $W/train_start)
  deadline=$(python3 -c "print(int($t0 + 60 * $TRAIN_MINUTES))")
  while [ "$(date +%s)" -lt "$deadline" ] && pgrep -f "ns-train zipsplat-small" > /dev/null; do sleep 5; done
  if pgrep -f "ns-train zipsplat-small" > /dev/null; then
    # stop right after the next checkpoint is complete (never kill a half-written one)
    before=$(latest_ckpt)
    while [ "$(latest_ckpt)" = "$before" ] && pgrep -f "ns-train zipsplat-small" > /dev/null; do sleep 1; done
    sleep 3
    pkill -9 -f "ns-train zipsplat-small" || true
  fi
  echo "{\"train_start\": $t0, \"train_stop\": $(date +%s), \"checkpoint\": \"$(basename "$(latest_ckpt)")\"}" \
    > "$OUT/train_time.json"
  sleep 2
  zipsplat-ns eval --run-dir $RUN --benchmark custom --views 6 --index-file .devdata/learn/heldout_index.json \
    --shard-dir .devdata/learn/heldout_shards --output-dir $W/eval --save-renders --preset default --no-progress \
    --baseline-without-depth
  cp $W/eval/custom_heldout_index/renders/*.npz "$OUT/"
  cp $W/eval/custom_heldout_index/results.json "$OUT/zipsplat_eval_results.json"
  collect_progress
  ls -1 $RUN/events.out.tfevents.* | head -n 1 | xargs -I{} cp {} "$OUT/tfevents"
  ;;
*)
  echo "usage: $0 start|wait|finish" >&2; exit 2;;
esac
