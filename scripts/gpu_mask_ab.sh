#!/usr/bin/env bash
# One device call: an A/B of the activated mask's context-render settings for small at 1x24 (compiled, cuda_graphs,
# no activation checkpointing), every configuration on the same compression draws (bench_train.py --same-draws) and
# listed twice, interleaved, against machine drift; then the same with the CUDA caching allocator's expandable
# segments (PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True: variable-sized buffers such as gsplat's tile
# intersections reuse address space instead of new cudaMalloc/cudaFree calls, which synchronise). About 5 minutes.
# ALLOCS=default runs the first half only.
#   source .gpu/setup.sh && MASKS="8:1 8:4 24:4" bash scripts/gpu_mask_ab.sh
# A third field draws that many context views for the mask (mask_context_views), e.g. MASKS="24:4 8:4:8 8:1:8".
set -u
export PYTHONUNBUFFERED=1
: "${OUT:?set OUT}"
masks=${MASKS:-8:1 8:4 24:4}
for alloc in ${ALLOCS:-default expandable}; do
  if [ "$alloc" = expandable ]; then export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True; fi
  # shellcheck disable=SC2086
  timeout "${BENCH_TIMEOUT:-200}" python scripts/bench_train.py --variants small --layouts 1x24 --compile compile \
    --cuda-graphs on --grad-ckpt off --steps "${BSTEPS:-12}" --warmup 4 --lpips-weights random --same-draws \
    --mask-render $masks $masks --output "$OUT/small_1x24_mask_ab_$alloc.json" > "$OUT/small_1x24_mask_ab_$alloc.log" 2>&1
  echo "allocator $alloc: rc=$?"
  python -c "
import json, sys
for r in json.load(open(sys.argv[1]))['results']:
    m = ':'.join(str(r.get(k, 0)) for k in ('mask_render_chunk', 'mask_render_downscale', 'mask_context_views'))
    print(m, {k: (round(r[k], 1) if isinstance(r.get(k), float) else r.get(k)) for k in
              ('ms_per_step_median', 'ms_per_step_median_cold', 'images_per_s', 'peak_memory_gb',
               'gaussians_per_step_mean', 'warmup_s_total', 'error')})
" "$OUT/small_1x24_mask_ab_$alloc.json"
done
