"""Summarise a torch.profiler Chrome trace of training steps (``bench_train.py --trace-dir``): where the host time goes.

Per step (the ``stepN`` ranges): wall time, GPU busy time (union of kernel / memcpy / memset intervals) and the GPU's
idle share. Per named phase (``phase:*`` ranges): host wall time, aten ops issued, kernels launched and their device
time. Every ``cudaStreamSynchronize`` / ``cudaDeviceSynchronize`` / blocking copy with the innermost project or gsplat
Python frame that issued it, so each host-device synchronisation can be traced to its caller. Per kernel category
(rasterizer forward / backward, tile intersection, sorting, attention, GEMM, convolution, layer norm, Triton fusions,
...) and per kernel name: device time per step, so the GPU's own work can be attributed.

    python scripts/trace_summary.py TRACE.json [--output summary.json]
"""

from __future__ import annotations

import argparse
import bisect
import collections
import gzip
import json
import sys
from pathlib import Path

GPU_CATS = {"kernel", "gpu_memcpy", "gpu_memset"}
SYNC_NAMES = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy ")


def load(path: Path) -> list:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        data = json.load(f)
    return [e for e in data.get("traceEvents", data) if e.get("ph") == "X"]


def union_us(intervals) -> float:
    total, end = 0.0, -1e30
    for s, e in sorted(intervals):
        if e <= end:
            continue
        total += e - max(s, end)
        end = e
    return total


# first match wins: cuDNN's attention kernels before convolutions, gsplat's stages before the generic patterns
KERNEL_CATEGORIES = (
    ("raster_fwd", ("rasterize_to_pixels_fwd",)),
    ("raster_bwd", ("rasterize_to_pixels_bwd",)),
    ("tile_isect", ("isect_tiles", "isect_offset")),
    ("sort", ("RadixSort", "radix_sort", "cub::")),
    ("projection", ("projection", "proj_")),
    ("gsplat_other", ("gsplat::",)),
    ("nn_search", ("nn_kernel", "nn_pruned")),
    ("attention", ("flash", "sdpa", "fmha", "attention", "attn")),
    ("layer_norm", ("layer_norm", "LayerNorm", "GammaBeta")),
    ("triton", ("triton_",)),
    ("gemm", ("gemm", "xmma", "cutlass", "nvjet", "wgmma", "sm90_", "sm80_")),
    ("conv", ("conv", "implicit", "cudnn", "winograd", "nchw", "nhwc")),
    ("optimizer", ("multi_tensor", "fused_adam", "FusedAdam", "adamw")),
    ("reduce", ("reduce_kernel", "Reduce")),
    ("elementwise", ("elementwise", "vectorized", "unrolled")),
)


def kernel_category(name: str, cat: str) -> str:
    if cat != "kernel":
        return cat  # gpu_memcpy / gpu_memset
    for label, keys in KERNEL_CATEGORIES:
        if any(k in name for k in keys):
            return label
    return "other"


def summarise(events: list) -> dict:
    for e in events:
        e["te"] = e["ts"] + e.get("dur", 0)
    ann = [e for e in events if e.get("cat") == "user_annotation"]
    steps = sorted((e for e in ann if e["name"].startswith("step")), key=lambda e: e["ts"])
    phases = [e for e in ann if e["name"].startswith("phase:")]
    gpu = [e for e in events if e.get("cat") in GPU_CATS]
    runtime = [e for e in events if e.get("cat") == "cuda_runtime" or e.get("cat") == "cuda_driver"]
    ops = [e for e in events if e.get("cat") == "cpu_op"]
    by_corr = {}
    for k in gpu:
        c = k.get("args", {}).get("correlation")
        if c is not None:
            by_corr[c] = k
    out: dict = {"steps": [], "phases": {}, "syncs": [], "kernel_categories": {}, "top_kernels": []}
    for st in steps:
        busy = union_us((k["ts"], k["te"]) for k in gpu if st["ts"] <= k["ts"] < st["te"])
        out["steps"].append({"name": st["name"], "wall_ms": round(st["dur"] / 1e3, 2), "gpu_busy_ms": round(busy / 1e3, 2),
                             "gpu_idle_frac": round(1 - busy / st["dur"], 3)})
    n = max(1, len(steps))
    acc = collections.defaultdict(lambda: collections.Counter())
    for ph in phases:
        a = acc[ph["name"][6:]]
        a["calls"] += 1
        a["host_ms"] += ph["dur"] / 1e3
        tid = ph["tid"]
        # ops and launches on the phase's own thread within its range (backward: the autograd thread is separate,
        # so its ops are counted under "autograd thread" below)
        a["aten_ops"] += sum(1 for o in ops if o["tid"] == tid and ph["ts"] <= o["ts"] < ph["te"] and o["name"].startswith("aten::"))
        launches = [r for r in runtime if r["tid"] == tid and ph["ts"] <= r["ts"] < ph["te"] and "Launch" in r["name"]]
        a["kernel_launches"] += len(launches)
        a["device_ms"] += sum(by_corr[r["args"]["correlation"]]["dur"] for r in launches
                              if r.get("args", {}).get("correlation") in by_corr) / 1e3
    main_tids = {st["tid"] for st in steps}
    other = collections.Counter()
    for o in ops:
        if o["tid"] not in main_tids and o["name"].startswith("aten::"):
            other["aten_ops"] += 1
    for r in runtime:
        if r["tid"] not in main_tids and "Launch" in r["name"]:
            other["kernel_launches"] += 1
            k = by_corr.get(r.get("args", {}).get("correlation"))
            if k is not None:
                other["device_ms"] += k["dur"] / 1e3
    acc["(autograd threads)"] = other
    out["phases"] = {k: {kk: round(vv / n, 2) for kk, vv in v.items()} for k, v in acc.items()}
    # the GPU's own work per step: by category and by kernel name (kernels inside the step ranges only)
    in_steps = [k for k in gpu if any(st["ts"] <= k["ts"] < st["te"] for st in steps)] if steps else gpu
    by_cat, by_name, count = collections.Counter(), collections.Counter(), collections.Counter()
    for k in in_steps:
        by_cat[kernel_category(k["name"], k.get("cat", ""))] += k["dur"] / 1e3
        by_name[k["name"][:100]] += k["dur"] / 1e3
        count[k["name"][:100]] += 1
    total = sum(by_cat.values()) or 1.0
    out["kernel_categories"] = {c: {"ms_per_step": round(v / n, 2), "share": round(v / total, 3)}
                                for c, v in by_cat.most_common()}
    out["top_kernels"] = [{"name": k, "ms_per_step": round(v / n, 3), "calls_per_step": round(count[k] / n, 1)}
                          for k, v in by_name.most_common(40)]
    # synchronisations and their callers: the innermost python frame in our code or gsplat enclosing each
    py = sorted((e for e in events if e.get("cat") == "python_function"), key=lambda e: e["ts"])
    py_by_tid = collections.defaultdict(list)
    for e in py:
        py_by_tid[e["tid"]].append(e)
    starts = {t: [e["ts"] for e in v] for t, v in py_by_tid.items()}
    callers = collections.Counter()
    wait = collections.Counter()
    for r in runtime:
        if not any(r["name"].startswith(s) for s in SYNC_NAMES):
            continue
        frames = py_by_tid.get(r["tid"], [])
        i = bisect.bisect_right(starts.get(r["tid"], []), r["ts"])
        best = None
        for e in reversed(frames[max(0, i - 4000):i]):  # enclosing frames start before and end after the sync
            if e["te"] >= r["te"] and ("zipsplat_ns" in e["name"] or "gsplat" in e["name"] or "scripts/" in e["name"]):
                best = e["name"]
                break
        key = f'{r["name"]} <- {best}'
        callers[key] += 1
        wait[key] += r["dur"] / 1e3
    out["syncs"] = [{"call": k, "per_step": round(c / n, 1), "ms_per_step": round(wait[k] / n, 2)}
                    for k, c in callers.most_common()]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("trace", type=Path)
    ap.add_argument("--output", type=Path, default=None)
    args = ap.parse_args(argv)
    summary = summarise(load(args.trace))
    text = json.dumps(summary, indent=1)
    if args.output:
        args.output.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
