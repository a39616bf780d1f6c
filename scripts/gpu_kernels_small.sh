#!/usr/bin/env bash
# One device call: where small's *GPU* time goes with the fastest configuration (compiled + cuda_graphs, no
# activation checkpointing), at 1x24 and 4x6: bench_train.py with a 2-step Chrome trace each, summarised by
# trace_summary.py (kernel categories and top kernels). About 4 minutes. The ns-train smoke run with cuda_graphs is
# its own call (keeps each call short; the machine stopped answering during the one call that ran both).
# LAYOUTS=1x24 profiles one layout (about 2 minutes); EXTRA adds bench_train.py arguments (each extra configuration
# about a minute more; raise BENCH_TIMEOUT to match), e.g. EXTRA="--mask-render 8:1 24:1 24:2" BENCH_TIMEOUT=330:
# PROFILE=0 times the configurations without traces.
#   source .gpu/setup.sh && bash scripts/gpu_kernels_small.sh
#   source .gpu/setup.sh && METHOD=zipsplat-small STEPS=40 bash scripts/gpu_ns_train_smoke.sh 300 \
#     --pipeline.model.grad-checkpointing False --pipeline.model.cuda-graphs True
set -u
export PYTHONUNBUFFERED=1
: "${OUT:?set OUT}"
mkdir -p "$OUT/traces"
for L in ${LAYOUTS:-1x24 4x6}; do
  # shellcheck disable=SC2086
  timeout "${BENCH_TIMEOUT:-170}" python scripts/bench_train.py --variants small --layouts $L --compile compile --cuda-graphs on --grad-ckpt off \
    --steps "${BSTEPS:-8}" --warmup 4 --profile-steps "${PROFILE:-2}" --trace-dir /tmp/traces --lpips-weights random \
    ${EXTRA:-} --output "$OUT/small_${L}_compile_graphs.json" > "$OUT/small_${L}_compile_graphs.log" 2>&1
  echo "bench $L rc=$?"; python -c "
import json, sys
for r in json.load(open(sys.argv[1]))['results']:
    print({k: r.get(k) for k in ('views', 'mask_render_chunk', 'mask_render_downscale', 'ms_per_step_median',
           'images_per_s', 'images_per_s_cold', 'peak_memory_gb', 'gaussians_per_step_mean', 'ok', 'error')})
" "$OUT/small_${L}_compile_graphs.json"
done
for t in /tmp/traces/*.json; do
  [ -e "$t" ] || continue
  b=$(basename "${t%.json}")
  python scripts/trace_summary.py "$t" --output "$OUT/traces/$b.summary.json" > /dev/null
  python -c "
import json,sys; d=json.load(open(sys.argv[1])); print(sys.argv[1]); print(d['steps'])
print({k: v['ms_per_step'] for k, v in d['kernel_categories'].items()})
[print('  ', k['ms_per_step'], k['calls_per_step'], k['name'][:90]) for k in d['top_kernels'][:25]]" "$OUT/traces/$b.summary.json"
done
ls /tmp/traces
