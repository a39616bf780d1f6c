#!/usr/bin/env bash
# One device call (H200): the training-speed benchmark (giant, small) and a short `ns-train zipsplat-small` run with
# torch.compile (--pipeline.model.compile True; small runs eager by default) on synthetic data (the view schedule ramps 2 -> 24 views within 15 steps, so batch
# layouts change nearly every step: the dynamic-shape path). Writes everything to $OUT. Run from the project root:
#   source .gpu/setup.sh && bash scripts/gpu_train_speed.sh
set -u
export PYTHONUNBUFFERED=1
: "${OUT:?set OUT}"
t0=$(date +%s)
left() { echo $(( ${BUDGET_S:-540} - ($(date +%s) - t0) )); }

timeout 240 python scripts/bench_train.py --variants giant --layouts 4x6 1x24 --compile compile eager --steps 6 \
  --warmup 3 --profile-steps 1 --lpips-weights random --time-budget-s 190 --output "$OUT/bench_train_giant.json" \
  > "$OUT/bench_train_giant.log" 2>&1
grep -v -i warn "$OUT/bench_train_giant.log" | grep -v "^ *_warn\|^ *warnings" | tail -n 25

timeout 150 python scripts/bench_train.py --variants small --layouts 4x6 1x24 --compile compile \
  --grad-ckpt on off --steps 6 --warmup 3 --lpips-weights random --time-budget-s 110 \
  --output "$OUT/bench_train_small.json" > "$OUT/bench_train_small.log" 2>&1
timeout 60 python scripts/bench_train.py --variants small --layouts 4x6 --compile eager \
  --grad-ckpt on off --steps 6 --warmup 3 --lpips-weights random --time-budget-s 40 \
  --output "$OUT/bench_train_small_eager.json" > "$OUT/bench_train_small_eager.log" 2>&1
python - "$OUT"/bench_train_*.json <<'PY'
import json, sys
for f in sys.argv[1:]:
    for r in json.load(open(f))["results"]:
        print(r["variant"], f'{r["scenes"]}x{r["views"]}', "compile" if r.get("compile") else "eager",
              "ckpt" if r.get("grad_checkpointing") else "no-ckpt", round(r.get("images_per_s", 0), 1), "img/s",
              round(r.get("peak_memory_gb", 0), 2), "GB", r.get("error", ""))
PY

if [ "$(left)" -gt 90 ]; then
  bash scripts/gpu_ns_train_smoke.sh $(( $(left) - 10 ))
else
  echo "no time left for the ns-train run"
fi
