#!/usr/bin/env python
"""Where does the time of a fast-mode forward go? (GPU, giant, random weights; issue 3's 24-view target)

For each ``--modes`` entry (``bf16``, ``fp16``, with ``+compile`` for the compiled blocks) and each attention-kernel
choice in ``--sdpa`` (``default``: PyTorch's choice; ``no-cudnn``; ``cudnn``: cuDNN only; ``flash``: flash only; the
last two for the low-precision blocks, since neither takes the fp32 colour branch), at ``--views``, after warm-up
(which compiles):

* the median forward latency (CUDA events, ``--runs`` runs) and the median latency of the backbone alone (the rest of
  the forward is tap preparation, fusion, colour branch and head);
* in a second pass, after every configuration has been timed, one ``torch.profiler`` pass over ``--profile-runs``
  forwards: GPU kernel time per forward by category (matmul,
  attention, Triton-fused, other element-wise, copies) and the top kernels;
* the forward's FLOPs (``torch.utils.flop_counter``, counted once in eager mode) and the achieved TFLOP/s.

    python scripts/bench_profile_inference.py --output $OUT/bench_profile_inference.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference import cuda_median_ms, draw_inputs, log, set_tf32  # noqa: E402

from zipsplat_ns.models.layers import NO_CUDNN_BACKENDS, CrossAttention, SelfAttention  # noqa: E402
from zipsplat_ns.models.network import ZipSplat  # noqa: E402

SDPA_CHOICES: dict[str, tuple[SDPBackend, ...] | None] = {
    "default": None,
    "no-cudnn": NO_CUDNN_BACKENDS,
    "cudnn": (SDPBackend.CUDNN_ATTENTION,),
    "flash": (SDPBackend.FLASH_ATTENTION,),
}

# kernel-name fragments per category (first match wins); cuBLAS on Hopper names its GEMMs nvjet_* / sm90_xmma_*
CATEGORIES = (
    ("attention", ("flash", "fmha", "sdpa", "attention", "cudnn_generated")),
    ("matmul", ("gemm", "nvjet", "xmma", "cutlass", "cublas", "splitk")),
    ("triton", ("triton_",)),
    ("copy", ("memcpy", "memset", "copy_kernel", "cat", "direct_copy")),
    ("elementwise", ("elementwise", "vectorized", "reduce", "layer_norm", "softmax")),
)


def category(name: str) -> str:
    low = name.lower()
    for cat, keys in CATEGORIES:
        if any(k in low for k in keys):
            return cat
    return "other"


def set_sdpa(model: ZipSplat, backends: tuple[SDPBackend, ...] | None) -> None:
    """Restrict the attention of the low-precision blocks (flash / cuDNN take no fp32; the colour branch is fp32)."""
    for m in model.modules():
        if isinstance(m, SelfAttention):
            low = m.qkv.weight.dtype != torch.float32
        elif isinstance(m, CrossAttention):
            low = m.q_proj.weight.dtype != torch.float32
        else:
            continue
        m.sdpa_backends = backends if low else None


def kernel_profile(fn, runs: int, top: int) -> dict:
    """GPU kernel time per forward by category and the ``top`` kernels (by total time), from one profiler pass."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(runs):
            fn()
        torch.cuda.synchronize()
    per_kernel: dict[str, list[float]] = defaultdict(list)
    for evt in prof.events():
        if evt.device_type == torch.autograd.DeviceType.CUDA:
            per_kernel[evt.name].append(evt.time_range.elapsed_us() / 1e3)
    by_cat: dict[str, float] = defaultdict(float)
    for name, ts in per_kernel.items():
        by_cat[category(name)] += sum(ts) / runs
    rows = sorted(
        ({"kernel": n[:160], "category": category(n), "ms_per_forward": sum(ts) / runs, "calls_per_forward": len(ts) / runs}
         for n, ts in per_kernel.items()),
        key=lambda r: -r["ms_per_forward"],
    )  # fmt: skip
    return {
        "gpu_kernel_ms_per_forward": sum(by_cat.values()),
        "ms_by_category": dict(sorted(by_cat.items(), key=lambda kv: -kv[1])),
        "top_kernels": rows[:top],
        "num_distinct_kernels": len(rows),
    }


def count_flops(model: ZipSplat, x: torch.Tensor) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        model.predict(x)
    return float(fc.get_total_flops())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output", type=Path, default=Path("bench_profile_inference.json"))
    ap.add_argument("--variant", default="giant")
    ap.add_argument("--views", type=int, nargs="+", default=[24])
    ap.add_argument("--modes", nargs="+", default=["bf16+compile", "fp16+compile"],
                    choices=["bf16", "fp16", "bf16+compile", "fp16+compile"])  # fmt: skip
    ap.add_argument("--sdpa", nargs="+", default=["default"], choices=list(SDPA_CHOICES))
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--profile-runs", type=int, default=3)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_profile_inference.py needs a CUDA GPU")
    dev = torch.device("cuda")
    set_tf32(False)
    t0 = time.time()
    torch.manual_seed(args.seed)
    with torch.device(dev):
        model = ZipSplat(args.variant).eval()
    inputs = draw_inputs(sorted(set(args.views)), args.seed, dev)
    rows: list[dict] = []
    compiled = False
    model.set_precision("bf16")  # FLOPs are the same in every mode; counted eager (the counter cannot see compiled code)
    flops = {v: count_flops(model, inputs[v]) for v in sorted(set(args.views))}
    log("FLOPs per forward: " + ", ".join(f"V={v} {f / 1e12:.2f} T" for v, f in flops.items()))

    def write() -> None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.output.with_suffix(".tmp")
        tmp.write_text(json.dumps({
            "device": torch.cuda.get_device_name(0), "torch": torch.__version__, "python": platform.python_version(),
            "variant": args.variant, "random_weights": True, "seed": args.seed,
            "flops_per_forward": {str(v): f for v, f in flops.items()},
            "note": "latency: median of --runs CUDA-event-timed forwards (inference_mode); kernel times from one "
                    "torch.profiler pass (profiling adds a little overhead)",
            "rows": rows, "elapsed_s": time.time() - t0}, indent=1))  # fmt: skip
        tmp.replace(args.output)

    # Pass 1 times every configuration, pass 2 repeats them under the profiler: once the profiler has run, kernel
    # launches stay slower in this process (CUPTI), which inflated CPU-bound latencies (6 views) in a first version.
    configs = [(m, sdpa, v) for m in args.modes for sdpa in args.sdpa for v in args.views]
    for profile, (mode, sdpa, v) in itertools.product((False, True), configs):
        prec, _, comp = mode.partition("+")
        model.set_precision(prec)  # a dtype change of a compiled network recompiles
        if comp and not compiled:
            model.compile()
            compiled = True
        set_sdpa(model, SDPA_CHOICES[sdpa])
        x = inputs[v]
        row: dict = {"mode": mode, "sdpa": sdpa, "views": v, "profiled": profile}
        try:
            with torch.inference_mode():
                for _ in range(5):  # warm-up (compiles new shapes / dtypes / backends)
                    model.predict(x)
                torch.cuda.synchronize()
                if profile:
                    row.update(kernel_profile(lambda: model.predict(x), args.profile_runs, args.top))
                else:
                    row["median_ms"] = cuda_median_ms(lambda: model.predict(x), args.runs)
                    row["backbone_median_ms"] = cuda_median_ms(lambda: model.backbone(x), args.runs)
                    row["rest_median_ms"] = row["median_ms"] - row["backbone_median_ms"]
                    row["achieved_tflops"] = flops[v] / (row["median_ms"] * 1e-3) / 1e12
            if profile:
                cats = ", ".join(f"{k} {ms:.1f}" for k, ms in row["ms_by_category"].items())
                log(f"{mode} sdpa={sdpa} V={v}: kernels {row['gpu_kernel_ms_per_forward']:.1f} ms per forward: {cats}")
                for k in row["top_kernels"][:8]:
                    log(f"    {k['ms_per_forward']:6.2f} ms  x{k['calls_per_forward']:.0f}  {k['kernel'][:110]}")
            else:
                log(f"{mode} sdpa={sdpa} V={v}: {row['median_ms']:.1f} ms (backbone {row['backbone_median_ms']:.1f}), "
                    f"{row['achieved_tflops']:.0f} TFLOP/s")  # fmt: skip
        except Exception as e:  # noqa: BLE001 - e.g. a backend that cannot run this shape; keep going
            row.update(status="error", error=f"{type(e).__name__}: {e}"[:400])
            log(f"{mode} sdpa={sdpa} V={v}: ERROR {row['error']}")
        rows.append(row)
        write()
    log(f"done in {time.time() - t0:.0f}s -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
