#!/usr/bin/env python
"""The chamfer term's exact nearest-neighbour search on the GPU: brute-force Triton kernel against the pruned one.

For point sets shaped like one training step of the recipe (``--batch`` scenes; ``--sources`` Gaussian means, up to
6 views x 324 tokens x 32; ``--targets`` GT points, 4 target depth maps of 252 x 252), in several geometries:

- ``volume``: sources and targets uniform in a cube (nearest distances tiny);
- ``surface_<sigma>``: targets on a depth-map-like height field, sources on it plus Gaussian noise ``sigma``
  (a trained model's means lie near the surfaces: small sigma; random weights: large);
- ``offset``: the sources a whole unit away from the targets (the pruning's worst case here).

It reports the median time of ``--runs`` calls of each kernel (CUDA events) and checks both against the exact
answer: for ``--check`` random source points per scene, the float64 nearest squared distance over all targets. A
kernel's pick counts as exact when its float64 squared distance exceeds that minimum by at most 1e-5 relative (both
kernels compare candidates in fp32, so near-ties within fp32 rounding may go either way; the loss then uses the
chosen point's distance). It also counts the points where the two kernels pick different distances.

    python scripts/bench_nn_search.py --output $OUT/bench_nn_search.json
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference import cuda_median_ms  # noqa: E402

from zipsplat_ns.nn_search import kernel_tile, nearest_indices_triton  # noqa: E402


def height_field(n: int, g: torch.Generator, dev: torch.device) -> torch.Tensor:
    """``(n, 3)`` points on z = 0.3 sin(2x) cos(3y) + a step, x, y in [-2, 2]."""
    xy = torch.rand(n, 2, generator=g, device=dev) * 4 - 2
    z = 0.3 * torch.sin(2 * xy[:, 0]) * torch.cos(3 * xy[:, 1]) + 0.5 * (xy[:, 0] > 0.5).float() + 3.0
    return torch.cat([xy, z[:, None]], 1)


def make_case(name: str, B: int, N: int, M: int, g: torch.Generator, dev: torch.device):
    if name == "volume":
        return torch.rand(B, N, 3, generator=g, device=dev) * 4 - 2, torch.rand(B, M, 3, generator=g, device=dev) * 4 - 2
    tgt = torch.stack([height_field(M, g, dev) for _ in range(B)])
    on = torch.stack([height_field(N, g, dev) for _ in range(B)])
    if name == "offset":
        return on + torch.tensor([0.0, 0.0, 1.0], device=dev), tgt
    sigma = float(name.split("_", 1)[1])
    return (on + sigma * torch.randn(B, N, 3, generator=g, device=dev)).clamp(-10, 10), tgt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output", type=Path, default=Path("bench_nn_search.json"))
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--sources", type=int, default=6 * 324 * 32)
    ap.add_argument("--targets", type=int, default=4 * 252 * 252)
    ap.add_argument("--cases", nargs="+", default=["volume", "surface_0.01", "surface_0.1", "surface_1", "offset"])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--check", type=int, default=4096, help="source points per scene checked against float64")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_nn_search.py needs a CUDA GPU")
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    rows = []
    for name in args.cases:
        src, tgt = make_case(name, args.batch, args.sources, args.targets, g, dev)
        pick = torch.randperm(args.sources, generator=g, device=dev)[: args.check]
        s64, t64 = src[:, pick].double(), tgt.double()
        exact = torch.stack([torch.cat([torch.cdist(s64[b], t64[b, m0 : m0 + 65536], compute_mode="donot_use_mm_for_euclid_dist").min(1).values[:, None]
                                        for m0 in range(0, args.targets, 65536)], 1).min(1).values
                             for b in range(args.batch)]) ** 2  # fmt: skip
        res = {}
        for prune in (False, True):
            idx = nearest_indices_triton(src, tgt, prune=prune)  # warm-up (and the kernel's compilation)
            ms = cuda_median_ms(lambda: nearest_indices_triton(src, tgt, prune=prune), args.runs)
            d = ((s64 - t64.gather(1, idx[:, pick, None].expand(-1, -1, 3))) ** 2).sum(-1)
            excess = (d - exact) / exact.clamp_min(1e-30)
            res[prune] = {"ms": ms, "d": d, "not_exact": int((excess > 1e-5).sum()), "max_rel_excess": float(excess.max())}
        row = {"case": name, "brute_ms": res[False]["ms"], "pruned_ms": res[True]["ms"],
               "speedup": res[False]["ms"] / res[True]["ms"], "checked_points": args.batch * len(pick),
               "brute_not_exact": res[False]["not_exact"], "pruned_not_exact": res[True]["not_exact"],
               "brute_max_rel_excess": res[False]["max_rel_excess"], "pruned_max_rel_excess": res[True]["max_rel_excess"],
               "kernels_differ": int((res[False]["d"] != res[True]["d"]).sum()),
               "rms_nearest_distance": math.sqrt(float(exact.mean()))}  # fmt: skip
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "python": platform.python_version(),
           "batch": args.batch, "sources": args.sources, "targets": args.targets, "tile": kernel_tile(),
           "rows": rows, "all_exact": all(r["brute_not_exact"] == r["pruned_not_exact"] == 0 for r in rows)}  # fmt: skip
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(out, indent=1))  # all_exact: no pick of either kernel beyond 1e-5
    return 0


if __name__ == "__main__":
    sys.exit(main())
