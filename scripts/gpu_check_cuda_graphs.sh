#!/usr/bin/env bash
# One device call: check_cuda_graphs.py (graphed vs eager: one step's losses and gradients from identical weights).
#   source .gpu/setup.sh && bash scripts/gpu_check_cuda_graphs.sh
set -u
export PYTHONUNBUFFERED=1
: "${OUT:?set OUT}"
timeout 240 python scripts/check_cuda_graphs.py --layouts 4x6 4x6 2x6 4x6 4x6 1x24 4x6 4x6 1x24 \
  --output "$OUT/check_cuda_graphs.json" > "$OUT/check_cuda_graphs.log" 2>&1
echo "check rc=$?"; grep -v -i warn "$OUT/check_cuda_graphs.log" | grep '^{' | python -c "
import json,sys
for l in sys.stdin:
    r=json.loads(l)
    if 'step' in r: print(r['step'], r['layout'], 'priors', r['priors'], 'c=%.3f' % r['compression'], 'loss', r['loss'], 'noise %.2e graphed %.2e' % (r['grad_rel_diff_eager_vs_eager'], r['grad_rel_diff_eager_vs_graphed']), r['ok'])
    else: print(r)"
