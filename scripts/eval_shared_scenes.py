#!/usr/bin/env python
"""Evaluate the development scenes of ../shared/data/scenes with the benchmark protocol (CPU-sized).

Steps (all deterministic):

1. **Convert** every scene folder (nerfstudio format) into one temporary shard directory with
   ``convert("nerfstudio", src, dst, max_size=448)`` (longest side 448 px, so the 252 px centre crop of the protocol
   comes from a resize-to-cover like RE10K's and DL3DV's 252 x 448).
2. **Depth**: ``zipsplat-ns depth --method sfm`` (:func:`zipsplat_ns.data.depth.fill_depth`): the scenes with sparse
   SfM points (the three ``llff-*`` scenes) get sparse depth, so their scale is the protocol's depth median; every
   other scene has no depth and is evaluated with the camera-baseline scale (its rows say ``scale_source:
   baseline``).
3. **Index** (:func:`zipsplat_ns.eval.benchmarks.make_index`, the rule of ``scripts/make_index.py``): 6 context views
   evenly spaced over all frames of a scene (``round(linspace(0, n - 1, 6))``), 4 targets at the middle frames of the
   context gaps ``round(linspace(0, 4, 4)) = [0, 1, 3, 4]``; scenes with fewer than 11 frames are left out
   (``strecha-entry-p10``, 10 frames). The index is written to ``benchmarks/eval_shared_scenes_index.json``.
4. **Evaluate** with :func:`zipsplat_ns.eval.runner.evaluate` (``custom`` benchmark): 252 px crops, compression 1.0,
   fp32, target poses refined with the ``fast`` preset (AdamW lr 3e-3, masked L1, up to 50 steps unless
   ``--refine-steps``), PSNR / SSIM / LPIPS-VGG per target, per-scene means.

Unless ``--weights`` names trained weights, the network is ``random-tiny`` (seeded random initialisation of the tiny
variant with 1 Gaussian per token, so that the CPU renderer is affordable): **the numbers are those of RANDOM
WEIGHTS**, a smoke test of the evaluation path, not a measure of ZipSplat. The outputs say so.

Outputs: ``benchmarks/eval_shared_scenes_random_tiny.json`` (the runner's report: nerfstudio eval schema plus
settings, missing and skipped scenes, per-scene rows) and ``.csv`` (the per-scene table with frame counts and depth
sources).

Usage::

    python scripts/eval_shared_scenes.py [--scenes DIR] [--work DIR] [--refine-steps N] [--device cpu]

The committed ``benchmarks/eval_shared_scenes_random_tiny.*`` come from (CPU, about 5 minutes)::

    python scripts/eval_shared_scenes.py --refine-steps 5 --refine-batch-size 1

i.e. the ``fast`` preset cut to 5 steps and one view per refinement batch: when that table was made, the dense CPU
renderer kept every block's intermediates for the backward pass (~13 GB for 4 views of 1944 random, large Gaussians
at 252 px); it now recomputes them, so these limits are about time rather than memory. ``refine_steps`` in the table is summed
over a scene's views (4 x 5 = 20; fewer when a target sees no Gaussian, which is then left at its GT pose).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SCENES = ROOT.parent / "shared" / "data" / "scenes"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenes", type=Path, default=DEFAULT_SCENES, help="folder of nerfstudio scene folders")
    ap.add_argument("--work", type=Path, default=None, help="work folder (shards, resume log); default: a temp dir")
    ap.add_argument("--weights", default="random-tiny", help="network weights (default random-tiny)")
    ap.add_argument("--variant", default="giant", help="variant of --weights files")
    ap.add_argument("--gaussians-per-token", type=int, default=1, help="random weights only (default 1)")
    ap.add_argument("--preset", default="fast", choices=["default", "fast", "very_fast"])
    ap.add_argument("--refine-steps", type=int, default=None, help="override the preset's refinement steps")
    ap.add_argument(
        "--refine-batch-size", type=int, default=None,
        help="views refined together (protocol 10; 1 bounds the CPU renderer memory; early stopping is then per view)",
    )  # fmt: skip
    ap.add_argument("--views", type=int, default=6)
    ap.add_argument("--targets", type=int, default=4)
    ap.add_argument("--max-size", type=int, default=448, help="longest image side after conversion")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks")
    ap.add_argument("--name", default=None, help="output stem (default eval_shared_scenes_<weights>)")
    args = ap.parse_args(argv)

    from zipsplat_ns.data.converters import convert
    from zipsplat_ns.data.dataset import ShardDirectory
    from zipsplat_ns.data.depth import fill_depth
    from zipsplat_ns.eval.benchmarks import ResolvedBenchmark, make_index, scene_num_frames, write_index
    from zipsplat_ns.eval.pose_refine import preset
    from zipsplat_ns.eval.runner import EvalOptions, evaluate, load_network, net_model_fn

    if not args.scenes.is_dir():
        print(f"error: {args.scenes} does not exist", file=sys.stderr)
        return 1
    tmp = None
    work = args.work
    if work is None:
        tmp = tempfile.TemporaryDirectory(prefix="zipsplat-shared-eval-")
        work = Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    shards = work / "shards"
    t0 = time.time()
    if not (shards / "index.json").is_file():
        if shards.exists():
            shutil.rmtree(shards)
        print(f"converting {args.scenes} -> {shards} (max size {args.max_size})", file=sys.stderr)
        rep = convert("nerfstudio", args.scenes, shards, max_size=args.max_size, progress=False)
        for key, why in rep.skipped if hasattr(rep, "skipped") else []:
            print(f"  conversion skipped {key}: {why}", file=sys.stderr)
        print("sfm depth for the scenes with SfM points", file=sys.stderr)
        drep = fill_depth(shards, method="sfm", progress=False)
        print(drep.summary(), file=sys.stderr)
    d = ShardDirectory(shards)
    frames = {k: scene_num_frames(d, k) for k in sorted(d.keys())}
    has_depth = {k: d.load(k).depths is not None for k in frames}

    entries, left_out = make_index(shards, args.views, args.targets)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    index_path = write_index(entries, args.out_dir / "eval_shared_scenes_index.json")
    for k, why in left_out.items():
        print(f"left out {k}: {why}", file=sys.stderr)

    net, label = load_network(
        args.weights, variant=args.variant, seed=0, device=args.device,
        gaussians_per_token=args.gaussians_per_token if args.weights.startswith("random-") else None,
    )  # fmt: skip
    opts = EvalOptions(
        align_poses=True, preset=args.preset, refine=preset(args.preset, num_steps=args.refine_steps, batch_size=args.refine_batch_size),
        device=args.device, progress=sys.stderr.isatty(),
        require_depth=False,  # most shared scenes have no depth: their camera-baseline scale (labelled per scene)
    )  # fmt: skip
    bench = ResolvedBenchmark("custom", args.views, index_path, shards)
    report = evaluate(
        net_model_fn(net), bench, output_dir=work / "eval", options=opts,
        experiment_name="shared-scenes", method_name="zipsplat", checkpoint=args.weights, model_label=label,
    )  # fmt: skip
    rows = json.loads((work / "eval" / bench.tag / "per_scene.json").read_text())
    for r in rows:
        r["num_frames"] = frames.get(r["scene"])
        r["depth"] = "sfm" if has_depth.get(r["scene"]) else "none"
    report["note"] = (
        f"{label}: numbers are NOT those of a trained ZipSplat model; they exercise the evaluation path on the "
        "shared development scenes."
        if args.weights.startswith("random-")
        else label
    )
    report["index_rule"] = (
        f"make_index(views={args.views}, targets={args.targets}): context round(linspace(0, n-1, {args.views})), "
        "targets at the middle frames of evenly chosen context gaps; scenes with too few frames left out"
    )
    report["left_out_scenes"] = left_out
    report["conversion"] = {"max_size": args.max_size, "depth": "sfm where SfM points exist, else none (baseline)"}
    report["per_scene"] = [{k: v for k, v in r.items() if k != "per_view"} | {"per_view": r.get("per_view")}
                           for r in rows]  # fmt: skip
    report["wall_time_s"] = round(time.time() - t0, 1)
    stem = args.name or f"eval_shared_scenes_{args.weights.replace('-', '_').replace('/', '_')}"
    from zipsplat_ns.utils.atomic import atomic_write

    atomic_write(args.out_dir / f"{stem}.json", json.dumps(report, indent=2) + "\n")
    cols = [
        "scene",
        "num_frames",
        "depth",
        "scale_source",
        "psnr",
        "ssim",
        "lpips",
        "num_gaussians",
        "num_targets",
        "refine_steps",
        "refine_loss_initial",
        "refine_loss_final",
        "pose_update_rot_deg",
        "pose_update_trans",
    ]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{r[k]:.4f}" if isinstance(r.get(k), float) else r.get(k, "")) for k in cols})
    res = report["results"]
    w.writerow({"scene": "MEAN", "psnr": f"{res['psnr']:.4f}", "ssim": f"{res['ssim']:.4f}",
                "lpips": f"{res['lpips']:.4f}", "num_gaussians": f"{res['num_gaussians']:.0f}"})  # fmt: skip
    atomic_write(args.out_dir / f"{stem}.csv", buf.getvalue())
    print(buf.getvalue())
    print(f"{report['note']}\nwrote {args.out_dir / (stem + '.json')} and .csv", file=sys.stderr)
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
