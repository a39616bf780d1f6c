#!/usr/bin/env bash
# One device call (H200): the inference benchmark with the bf16 and fp16 modes (eager and compiled, plus 8 more
# weight draws for the accuracy), the small model's training-step benchmark (the default fusion_sdpa='no-cudnn',
# with and without checkpointing, plus a phase breakdown), and a short `ns-train zipsplat-small` run with
# torch.compile on synthetic data (the view schedule ramps 2 -> 24 views within 15 steps, so the batch layout
# changes nearly every step: the dynamic-shape path). Writes everything to $OUT. Run from the project root:
#   source .gpu/setup.sh && bash scripts/gpu_bench_session.sh
set -u
export PYTHONUNBUFFERED=1
: "${OUT:?set OUT}"
t0=$(date +%s)
left() { echo $(( ${BUDGET_S:-540} - ($(date +%s) - t0) )); }
quiet() { grep -v -i "warn" "$1" | grep -v "^ *_warn\|^ *warnings" | tail -n "$2"; }

timeout 260 python scripts/bench_inference.py --modes fp32 bf16 fp16 --views 2 6 12 24 --memory-views 64 \
  --compile --accuracy-draws 8 --output "$OUT/bench_inference.json" > "$OUT/bench_inference.log" 2>&1
echo "bench_inference exit: $?"
quiet "$OUT/bench_inference.log" 60

timeout 120 python scripts/bench_train.py --variants small --layouts 4x6 1x24 --compile eager --grad-ckpt on off \
  --steps 6 --warmup 3 --lpips-weights random --time-budget-s 90 --output "$OUT/bench_train_small.json" \
  > "$OUT/bench_train_small.log" 2>&1
echo "bench_train small exit: $?"
timeout 60 python scripts/bench_train.py --variants small --layouts 4x6 --compile eager --grad-ckpt off --breakdown \
  --steps 4 --warmup 3 --lpips-weights random --output "$OUT/bench_train_small_breakdown.json" \
  > "$OUT/bench_train_small_breakdown.log" 2>&1
python - "$OUT"/bench_train_small*.json <<'PY'
import json, sys
for f in sys.argv[1:]:
    for r in json.load(open(f))["results"]:
        print(r["variant"], f'{r["scenes"]}x{r["views"]}', "ckpt" if r.get("grad_checkpointing") else "no-ckpt",
              r.get("fusion_sdpa"), "cold", round(r.get("images_per_s_cold") or 0, 1), "warm",
              round(r.get("images_per_s", 0), 1), "img/s", round(r.get("peak_memory_gb", 0), 2), "GB",
              r.get("breakdown_ms_per_step", ""), r.get("error", ""))
PY

if [ "$(left)" -gt 90 ]; then
  bash scripts/gpu_ns_train_smoke.sh $(( $(left) - 10 ))
else
  echo "no time left for the ns-train run"
fi
