#!/usr/bin/env python
"""Where the bf16 fast mode loses accuracy on the GPU: an ablation of two numerics switches (random giant weights).

For V in --views the fp32 means (TF32 off) are compared with the bf16 mode's means (``||m_bf16 - m_fp32|| /
||m_fp32||``, the metric of ``bench_inference.py``) under each combination of

* ``exact_reduction``: ``torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False`` (cuBLAS bf16
  GEMMs summed in fp32, no bf16 split-K partial sums);
* ``fp32_attention``: q, k, v up-cast to fp32 for ``scaled_dot_product_attention`` (diagnostic only: it costs the
  flash kernel), to see how much of the error the bf16 attention probabilities carry.

The random weights are drawn on the CPU (``torch.manual_seed(--seed)``, then moved to the GPU), so they are a
different draw from ``bench_inference.py``'s (drawn on the GPU with the same seed). Latency is the eager median of --runs CUDA-event-timed forwards (no compile; ``bench_inference.py`` has the
compiled figures). Usage: ``python scripts/bench_bf16_accuracy.py --output $OUT/bench_bf16_accuracy.json``
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from zipsplat_ns.models.network import ZipSplat  # noqa: E402

_SDPA = F.scaled_dot_product_attention


def _sdpa_fp32(q, k, v, *args, **kwargs):
    return _SDPA(q.float(), k.float(), v.float(), *args, **kwargs).to(q.dtype)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", default="giant")
    ap.add_argument("--views", type=int, nargs="+", default=[2, 6, 24])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--output", type=Path, required=True)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_bf16_accuracy: needs a CUDA GPU")
    dev = torch.device("cuda")
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(args.seed)
    model = ZipSplat(args.variant).eval().to(dev)
    rows = []

    def forward(x):
        with torch.inference_mode():
            return model.predict(x).means

    for V in args.views:
        x = torch.rand(1, V, 3, 252, 252, device=dev, generator=torch.Generator(dev).manual_seed(V))
        model.set_precision("fp32")
        ref = forward(x).double()
        model.set_precision("bf16")
        for exact in (False, True):
            for att32 in (False, True):
                torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = not exact
                F.scaled_dot_product_attention = _sdpa_fp32 if att32 else _SDPA
                try:
                    forward(x)
                    times = []
                    for _ in range(args.runs):
                        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                        a.record()
                        m = forward(x)
                        b.record()
                        torch.cuda.synchronize()
                        times.append(a.elapsed_time(b))
                finally:
                    F.scaled_dot_product_attention = _SDPA
                    torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = True
                d = m.double() - ref
                per = d.norm(dim=-1) / ref.norm(dim=-1).clamp_min(1e-12)
                row = {"views": V, "exact_reduction": exact, "fp32_attention": att32,
                       "means_rel_err": float(d.norm() / ref.norm()),
                       "per_gaussian_rel_err_median": float(per.median()),
                       "eager_median_ms": statistics.median(times)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    out = {"device": torch.cuda.get_device_name(dev), "torch": torch.__version__, "variant": args.variant,
           "random_weights": True, "metric": "||m_bf16 - m_fp32|| / ||m_fp32|| (fp32: TF32 off)", "rows": rows,
           "when": time.strftime("%Y-%m-%d %H:%M:%S")}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
