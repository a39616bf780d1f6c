#!/usr/bin/env bash
# One device call: check_cuda_graphs.py (graphed vs eager: one step's losses and gradients from identical weights),
# bench_train.py for small (eager, no checkpointing; cuda_graphs off / on / off / on in one process; 4x6 and 1x24),
# then small compiled with cuda_graphs on (4x6, 1x24).
#   source .gpu/setup.sh && bash scripts/gpu_cuda_graphs.sh
set -u
export PYTHONUNBUFFERED=1
: "${OUT:?set OUT}"
summ() { grep '"variant"' "$1" | python -c "
import json,sys
for l in sys.stdin:
    r=json.loads(l); print(r['scenes'],'x',r['views'],'compile' if r.get('compile') else 'eager','graphs' if r.get('cuda_graphs') else 'no-graphs', 'warm',round(r.get('images_per_s',0),1), 'cold',round(r.get('images_per_s_cold',0) or 0,1), round(r.get('peak_memory_gb',0),2),'GB', r.get('error',''))"; }
timeout 150 python scripts/check_cuda_graphs.py --layouts 4x6 4x6 2x6 4x6 4x6 1x24 4x6 4x6 1x24 \
  --output "$OUT/check_cuda_graphs.json" > "$OUT/check_cuda_graphs.log" 2>&1
echo "check rc=$?"; grep -v -i warn "$OUT/check_cuda_graphs.log" | grep '^{' | cut -c1-500 | tail -n 4
timeout 200 python scripts/bench_train.py --variants small --layouts 4x6 1x24 --grad-ckpt off --cuda-graphs off on off on \
  --steps 12 --warmup 4 --lpips-weights random --time-budget-s 170 --output "$OUT/bench_train_small_graphs.json" \
  > "$OUT/bench_train_small_graphs.log" 2>&1
echo "bench rc=$?"; summ "$OUT/bench_train_small_graphs.log"
timeout 200 python scripts/bench_train.py --variants small --layouts 4x6 1x24 --grad-ckpt off --cuda-graphs on \
  --compile compile --steps 12 --warmup 4 --lpips-weights random --time-budget-s 150 \
  --output "$OUT/bench_train_small_compile_graphs.json" > "$OUT/bench_train_small_compile_graphs.log" 2>&1
echo "compile bench rc=$?"; summ "$OUT/bench_train_small_compile_graphs.log"; tail -n 3 "$OUT/bench_train_small_compile_graphs.log" | cut -c1-300
