#!/usr/bin/env python
"""bf16 fast mode with its first k ViT blocks in fp32 / TF32 (``ZipSplatConfig.fp32_blocks``) or in fp16
(``ZipSplatConfig.fp16_blocks``): accuracy and cost.

``--fp32-blocks`` and ``--fp16-blocks`` each take a list of counts, and one of them (the swept one) may list several:
the default sweeps ``fp32_blocks`` with ``fp16_blocks=0`` (plain bf16 storage elsewhere), as in the committed
benchmarks/bench_fp32_blocks.json; ``--fp32-blocks 0 --fp16-blocks 0 4 6 10 13`` sweeps the fp16 blocks. For each
weight draw (``--seeds``; seed 0 with bench_inference.py's inputs is the benchmark's own draw, seeds >= 1 use
the inputs of bench_inference.py's ``--accuracy-draws``) and each V in ``--views``, measures the benchmark's metric
``||m - m_fp32|| / ||m_fp32||`` (fp32 = TF32 off, eager) of ``precision="bf16"`` for every swept k. For the first
seed it also times the eager forward of every k at ``--time-views`` (median of ``--runs``), since the fp32 blocks'
matmuls run on TF32 tensor cores at about half the bf16 rate (fp16 and bf16 run at the same rate). The compiled
latency of a chosen k is ``scripts/bench_inference.py --fp32-blocks k --fp16-blocks j --compile``; ``--compile-blocks``
measures it here for the swept count.

    python scripts/bench_fp32_blocks.py --output $OUT/bench_fp32_blocks.json
    python scripts/bench_fp32_blocks.py --fp32-blocks 0 --fp16-blocks 0 4 6 10 13 --output $OUT/bench_fp16_blocks.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference import cuda_median_ms, draw_inputs, draw_inputs_of_draw, log, means_rel_err, set_tf32  # noqa: E402

from zipsplat_ns.models.network import ZipSplat  # noqa: E402


def inputs_for(seed: int, views: list[int], dev: torch.device) -> dict[int, torch.Tensor]:
    """The images bench_inference.py uses for this weight draw (see the module docstring)."""
    if seed == 0:
        bench_views = [2, 6, 12, 24, 64]  # its default --views 2 6 12 24 --memory-views 64, drawn in this order
        extra = sorted(set(views) - set(bench_views))
        return draw_inputs(bench_views + extra, seed, dev)
    return draw_inputs_of_draw(views, seed, dev)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output", type=Path, default=Path("bench_fp32_blocks.json"))
    ap.add_argument("--variant", default="giant")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--views", type=int, nargs="+", default=[2, 6])
    ap.add_argument("--fp32-blocks", type=int, nargs="+", default=[0, 2, 4, 6, 8, 10, 13])
    ap.add_argument("--fp16-blocks", type=int, nargs="+", default=[0],
                    help="the bf16 mode's leading fp16 blocks (default 0: plain bf16 storage after the fp32 blocks)")
    ap.add_argument("--time-views", type=int, nargs="*", default=[6, 24])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--compile-blocks", type=int, nargs="*", default=[],
                    help="for the first seed: torch.compile the blocks and measure, per k, the compiled means error "
                         "(V in --views) and the compiled latency (V in --compile-views, median of --runs)")
    ap.add_argument("--compile-views", type=int, nargs="*", default=[6, 24])
    ap.add_argument("--target", type=float, default=1e-2, help="the means error target (issue 3: 1e-2)")
    ap.add_argument("--device", default="cuda", help="'cpu' only for a smoke test of this script (no timings)")
    args = ap.parse_args()
    if len(args.fp32_blocks) > 1 and len(args.fp16_blocks) > 1:
        ap.error("sweep one count at a time: give --fp32-blocks or --fp16-blocks a single value")
    swept = "fp16_blocks" if len(args.fp16_blocks) > 1 else "fp32_blocks"
    ks = getattr(args, swept)

    def recipe(k: int) -> dict[str, int]:  # set_precision's keywords for swept count k
        fixed = {"fp32_blocks": args.fp32_blocks[0], "fp16_blocks": args.fp16_blocks[0]}
        return {**fixed, swept: k}

    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_fp32_blocks.py needs a CUDA GPU (or --device cpu for a smoke test)")
    set_tf32(False)
    t0 = time.time()
    rows, timings, compiled = [], [], []
    for seed in args.seeds:
        torch.manual_seed(seed)
        with torch.device(dev):
            model = ZipSplat(args.variant).eval()
        inputs = inputs_for(seed, sorted(set(args.views) | set(args.time_views) | set(args.compile_views)), dev)
        with torch.inference_mode():
            model.set_precision("fp32")
            refs = {v: model.predict(inputs[v]).means.double() for v in args.views}
            seed_rows = {v: {"seed": seed, "views": v, "means_rel_err": {}} for v in args.views}
            for k in ks:  # k outermost: each change of k re-casts ~1e9 weights
                model.set_precision("bf16", **recipe(k))
                for v in args.views:
                    seed_rows[v]["means_rel_err"][str(k)] = means_rel_err(model.predict(inputs[v]).means.double(), refs[v])
                for v in args.time_views if seed == args.seeds[0] and dev.type == "cuda" else []:
                    for _ in range(3):
                        model.predict(inputs[v])
                    ms = cuda_median_ms(lambda: model.predict(inputs[v]), args.runs)
                    timings.append({"views": v, **recipe(k), "eager_median_ms": ms})
                    log(f"V={v} k={k}: eager {ms:.1f} ms")
            for v, row in seed_rows.items():
                rows.append(row)
                log(f"seed {seed} V={v}: " + ", ".join(f"k={k} {e:.2e}" for k, e in row["means_rel_err"].items()))
            if seed == args.seeds[0] and args.compile_blocks and dev.type == "cuda":
                model.compile()  # a change of k re-casts weights, which drops and recompiles the graphs
                for k in args.compile_blocks:
                    model.set_precision("bf16", **recipe(k))
                    rec = {**recipe(k), "seed": seed, "means_rel_err": {}, "median_ms": {}}
                    for v in args.compile_views:
                        for _ in range(5):  # the first calls compile
                            model.predict(inputs[v])
                        rec["median_ms"][str(v)] = cuda_median_ms(lambda: model.predict(inputs[v]), args.runs)
                    for v in args.views:
                        rec["means_rel_err"][str(v)] = means_rel_err(model.predict(inputs[v]).means.double(), refs[v])
                    compiled.append(rec)
                    log(f"compiled k={k}: " + ", ".join(f"V={v} {t:.1f} ms" for v, t in rec["median_ms"].items())
                        + "; err " + ", ".join(f"V={v} {e:.2e}" for v, e in rec["means_rel_err"].items()))
        del model, inputs
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        per_k = {
            str(k): {
                "max": max(r["means_rel_err"][str(k)] for r in rows),
                "median": statistics.median(r["means_rel_err"][str(k)] for r in rows),
            }
            for k in ks
        }
        meeting = [k for k in ks if per_k[str(k)]["max"] <= args.target]
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps({
            "device": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu", "torch": torch.__version__, "python": platform.python_version(),
            "variant": args.variant, "seeds_done": sorted({r["seed"] for r in rows}),
            "metric": "||m - m_fp32|| / ||m_fp32|| (fp32: TF32 off), eager, precision='bf16'",
            "swept": swept, "fp32_blocks": args.fp32_blocks, "fp16_blocks": args.fp16_blocks,
            "rows": rows, f"per_{swept}": per_k, "target": args.target,
            f"smallest_{swept}_meeting_target_every_draw": min(meeting) if meeting else None,
            "eager_timings": timings, "compiled_first_seed": compiled, "elapsed_s": time.time() - t0}, indent=1))  # fmt: skip
    log(f"done in {time.time() - t0:.0f}s -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
