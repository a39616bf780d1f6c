#!/usr/bin/env python
"""Where does the bf16 fast mode's error in the Gaussian means come from? (GPU, giant, random weights)

For the weight draw of ``scripts/bench_inference.py`` (same seed, same inputs) and optional further draws, measures
``||m - m_fp32|| / ||m_fp32||`` (the benchmark's metric, fp32 = TF32 off) when only one group of trunk matmul weights is
stored in bf16 ("only G in bf16": G's own contribution) and when every group except G is ("all but G": what keeping G
in fp32 buys). Groups are whole modules (patch embedding, quarters of the ViT's blocks, camera encoder, tap
projections, fusion cross/self-attention), so every module sees one dtype; and the error of the same storage rule with
fp16 instead of bf16. Also times the eager forward of each
"all but G" variant at ``--time-views`` (median of ``--runs``), since keeping a group in fp32 costs speed.

    python scripts/bench_bf16_sensitivity.py --output $OUT/bench_bf16_sensitivity.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference import cuda_median_ms, draw_inputs, log, means_rel_err, set_tf32  # noqa: E402

from zipsplat_ns.models.network import ZipSplat  # noqa: E402


def studied_parameters(model: ZipSplat) -> dict[str, torch.nn.Parameter]:
    """The fast modes' low-precision trunk weights plus the patch-embedding conv (which the fast modes keep in fp32
    since this script's first run showed its share of the error; it is studied here in both dtypes)."""
    pe = model.backbone.backbone.patch_embed.proj
    return {**model.trunk_linear_parameters(), **{f"backbone.backbone.patch_embed.proj.{k}": p
                                            for k, p in pe.named_parameters()}}  # fmt: skip


def groups_of(model: ZipSplat) -> dict[str, list[str]]:
    """Studied parameter names by group (every name in exactly one group)."""
    names = list(studied_parameters(model))
    depth = len(model.backbone.backbone.blocks)
    q = max(depth // 4, 1)
    groups: dict[str, list[str]] = {}

    def key(n: str) -> str:
        if ".patch_embed." in n:
            return "patch_embed"
        if n.startswith("backbone.backbone.blocks."):
            i = int(n.split(".")[3])
            lo = (i // q) * q
            return f"vit_blocks_{lo}-{min(lo + q, depth) - 1}"
        if n.startswith("backbone.cam_enc."):
            return "camera_encoder"
        if n.startswith("downscale."):
            return "tap_downscale"
        if n.startswith("cross_attention."):
            return "fusion_cross_attention"
        if n.startswith("self_attention."):
            return "fusion_self_attention"
        return "other"

    for n in names:
        groups.setdefault(key(n), []).append(n)
    return groups


@torch.no_grad()
def store(model: ZipSplat, master: dict[str, torch.Tensor], dtype_of: dict[str, torch.dtype], precision: str) -> None:
    """Store every studied weight in ``dtype_of[name]``, cast from the fp32 master copy (fp32 ones as copies, so
    that the model never aliases the master), under the network's ``precision`` flag."""
    model.config.precision = precision
    for name, p in studied_parameters(model).items():
        src, dtype = master[name], dtype_of[name]
        p.data = src.clone() if dtype == src.dtype else src.to(dtype)


def set_bf16(model: ZipSplat, master: dict[str, torch.Tensor], bf16_names: set[str],
             dtype: torch.dtype = torch.bfloat16) -> None:  # fmt: skip
    """Store exactly ``bf16_names`` in ``dtype`` (from the fp32 master copy), every other trunk weight in fp32."""
    store(model, master, {n: dtype if n in bf16_names else torch.float32 for n in master},
          "bf16" if bf16_names else "fp32")  # fmt: skip


# Mixed storage recipes: group -> dtype overrides on top of the base dtype (every other trunk matmul weight).
F32, F16, B16 = torch.float32, torch.float16, torch.bfloat16
RECIPES: dict[str, tuple[torch.dtype, dict[str, torch.dtype]]] = {
    "bf16": (B16, {}),
    "bf16, patch_embed fp32": (B16, {"patch_embed": F32}),
    "bf16, patch_embed fp32, vit_blocks_0-9 fp16": (B16, {"patch_embed": F32, "vit_blocks_0-9": F16}),
    "bf16, patch_embed fp32, vit_blocks_0-19 fp16": (B16, {"patch_embed": F32, "vit_blocks_0-9": F16,
                                                           "vit_blocks_10-19": F16}),
    "fp16": (F16, {}),
    "fp16, patch_embed fp32": (F16, {"patch_embed": F32}),
}


def set_recipe(model: ZipSplat, master: dict[str, torch.Tensor], groups: dict[str, list[str]], recipe: str) -> None:
    """Store the studied weights as ``RECIPES[recipe]`` says (from the fp32 master copy)."""
    base, overrides = RECIPES[recipe]
    dtype_of = {n: overrides.get(g, base) for g, names in groups.items() for n in names}
    store(model, master, dtype_of, "bf16" if base == B16 else "fp16")


def time_forward(model: ZipSplat, x: torch.Tensor, runs: int) -> float:
    for _ in range(3):
        model.predict(x)
    return cuda_median_ms(lambda: model.predict(x), runs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output", type=Path, default=Path("bench_bf16_sensitivity.json"))
    ap.add_argument("--variant", default="giant")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1],
                    help="weight draws; seed 0 with bench_inference.py's input sequence is the benchmark's draw")
    ap.add_argument("--views", type=int, nargs="+", default=[2, 6])
    ap.add_argument("--time-views", type=int, nargs="*", default=[6, 24])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--recipes-only", action="store_true",
                    help="only the mixed-storage recipes (RECIPES) per seed and V; no group sweep, no timings")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_bf16_sensitivity.py needs a CUDA GPU")
    dev = torch.device("cuda")
    set_tf32(False)
    t0 = time.time()
    rows, timings = [], []
    for seed in args.seeds:
        torch.manual_seed(seed)
        with torch.device(dev):
            model = ZipSplat(args.variant).eval()
        # bench_inference.py's inputs for its default --views 2 6 12 24 --memory-views 64, then any other V
        bench_views = [2, 6, 12, 24, 64]
        extra = sorted((set(args.views) | set(args.time_views)) - set(bench_views))
        inputs = draw_inputs(bench_views + extra, seed, dev)
        master = {n: p.detach().clone() for n, p in studied_parameters(model).items()}
        groups = groups_of(model)
        every = set(master)
        log(f"seed {seed}: groups " + ", ".join(f"{k} ({len(v)})" for k, v in groups.items()))
        with torch.inference_mode():
            for v in args.views if args.recipes_only else []:
                set_bf16(model, master, set())
                ref = model.predict(inputs[v]).means.double()
                row = {"seed": seed, "views": v, "recipes": {}}
                for recipe in RECIPES:
                    set_recipe(model, master, groups, recipe)
                    m = model.predict(inputs[v]).means
                    row["recipes"][recipe] = means_rel_err(m, ref) if bool(torch.isfinite(m).all()) else "non-finite"
                rows.append(row)
                log(f"seed {seed} V={v}: " + ", ".join(f"[{k}] {e:.2e}" if isinstance(e, float) else f"[{k}] {e}"
                                                     for k, e in row["recipes"].items()))  # fmt: skip
            for v in [] if args.recipes_only else args.views:
                x = inputs[v]
                set_bf16(model, master, set())
                ref = model.predict(x).means.double()
                set_bf16(model, master, every)
                full = means_rel_err(model.predict(x).means, ref)
                # for comparison: the same storage rule with fp16 (10 mantissa bits against bf16's 7)
                set_bf16(model, master, every, torch.float16)
                m16 = model.predict(x).means
                fp16 = means_rel_err(m16, ref) if bool(torch.isfinite(m16).all()) else "non-finite"
                row = {"seed": seed, "views": v, "all_bf16": full, "all_fp16": fp16, "only_group_bf16": {},
                       "all_but_group_bf16": {}}
                for name, members in groups.items():
                    for label, names in (("only_group_bf16", set(members)), ("all_but_group_bf16", every - set(members))):
                        try:
                            set_bf16(model, master, names)
                            row[label][name] = means_rel_err(model.predict(x).means, ref)
                        except Exception as e:  # noqa: BLE001 - a dtype mix that a module cannot take is recorded
                            row[label][name] = f"{type(e).__name__}: {e}"[:200]
                rows.append(row)
                log(f"seed {seed} V={v}: all bf16 {full:.2e}, all fp16 {fp16}; only G: "
                    + ", ".join(f"{k} {e:.1e}" if isinstance(e, float) else f"{k} ERR" for k, e in row["only_group_bf16"].items()))
                log("   all but G: " + ", ".join(f"{k} {e:.1e}" if isinstance(e, float) else f"{k} ERR"
                                             for k, e in row["all_but_group_bf16"].items()))  # fmt: skip
            if seed == args.seeds[0] and not args.recipes_only:
                for v in args.time_views:
                    set_bf16(model, master, every, torch.float16)
                    timings.append({"views": v, "fp32_group": "none (all fp16)",
                                    "eager_median_ms": time_forward(model, inputs[v], args.runs)})
                    log(f"V={v} all fp16: {timings[-1]['eager_median_ms']} ms")
                    for name, members in [("none (all bf16)", [])] + list(groups.items()):
                        set_bf16(model, master, every - set(members))
                        try:
                            ms = time_forward(model, inputs[v], args.runs)
                        except Exception as e:  # noqa: BLE001
                            ms = f"{type(e).__name__}"
                        timings.append({"views": v, "fp32_group": name, "eager_median_ms": ms})
                        log(f"V={v} fp32 {name}: {ms} ms")
        del model, master
        torch.cuda.empty_cache()
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps({
            "device": torch.cuda.get_device_name(0), "torch": torch.__version__, "python": platform.python_version(),
            "variant": args.variant, "metric": "||m - m_fp32|| / ||m_fp32|| (fp32: TF32 off), eager",
            "rows": rows, "timings_all_but_group_bf16": timings, "elapsed_s": time.time() - t0}, indent=1))  # fmt: skip
    log(f"done in {time.time() - t0:.0f}s -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
