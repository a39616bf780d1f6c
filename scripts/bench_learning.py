#!/usr/bin/env python
"""Learning on real images: train ``zipsplat-small`` from scratch, compare it on held-out scenes with two baselines.

The experiment of issue 5, item 5, in steps that run where they must (CPU here, GPU there):

``prepare`` (CPU, here)
    Splits ``../shared/data/scenes`` into training scenes (copied to ``OUT/train_scenes``, the nerfstudio folders
    themselves, so that they travel to the GPU machine) and held-out scenes. For each held-out scene the index rule
    of ``scripts/eval_shared_scenes.py`` picks 6 context and 4 target frames (the longest side converted to 448 px,
    SfM depth where the scene has points); those 10 frames are written as one reduced shard folder
    (``OUT/heldout_shards``) with its index (``OUT/heldout_index.json``, positions in the reduced scene). From the same
    processed 252 px crops it writes

    * the **mean-of-context** baseline (every target predicted as the per-pixel mean of the 6 context crops):
      ``OUT/renders/mean/<scene>.npz``;
    * a nerfstudio folder per scene for the **splatfacto** baseline (``OUT/splatfacto/<scene>``: the 6 context crops as
      the train split, the 4 target crops as val/test, exact crop intrinsics, poses in OpenGL convention).

``train-data`` (GPU machine)
    Converts ``OUT/train_scenes`` into shards (448 px, SfM depth) and generates the synthetic shards.

``splatfacto`` (GPU machine)
    ``ns-train splatfacto`` for 7000 steps on each prepared folder (nerfstudio defaults otherwise: random init, its
    own pose normalisation), then renders the test split at the target poses: ``<out>/<scene>.npz``.

``report`` (CPU, here)
    PSNR / SSIM / LPIPS-VGG of every method's renders with :mod:`zipsplat_ns.metrics` (the same code and the exact
    VGG weights for all three), a table (JSON, CSV, Markdown) and the training curves from the run's
    ``zipsplat_metrics.jsonl``.

ZipSplat itself is evaluated on the GPU machine with ``zipsplat-ns eval --run-dir RUN --benchmark custom
--views 6 --index-file OUT/heldout_index.json --shard-dir OUT/heldout_shards --save-renders
--baseline-without-depth`` (the protocol: 252 px crops, fp32, target poses refined with the ``default`` preset; held-out
scenes without depth at their camera-baseline scale, which the protocol would skip); its ``renders/*.npz`` go into
``report``.
The whole sequence of commands is in ``benchmarks/learn_small_real/README.md``.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_SCENES = ROOT.parent / "shared" / "data" / "scenes"
DEFAULT_HELDOUT = ("llff-kwrous", "longlrm-mydesk", "ns-fruit")
METHODS = ("mean", "splatfacto", "zipsplat")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------------ prepare
def _subset_scene(raw, frames: list[int]):
    from zipsplat_ns.data.scene import RawScene

    return RawScene(
        raw.key,
        np.asarray(raw.cameras)[frames],
        np.asarray(raw.poses)[frames],
        [raw.images[i] for i in frames],
        None if raw.depths is None else [raw.depths[i] for i in frames],
        None if raw.depth_ranges is None else [raw.depth_ranges[i] for i in frames],
        dict(raw.meta),
    )


def _transform_matrix(pose) -> list[list[float]]:
    """Our OpenCV c2w pose -> the 4x4 OpenGL c2w of a nerfstudio ``transforms.json`` frame."""
    from zipsplat_ns.ns_cameras import opencv_to_opengl_c2w
    from zipsplat_ns.pose import Pose

    m = np.eye(4)
    m[:3, :] = opencv_to_opengl_c2w(Pose(pose.double()).Rt).numpy()
    return m.tolist()


def _write_npz(path: Path, render, gt) -> None:
    from zipsplat_ns.utils.atomic import atomic_open

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as f:
        np.savez(f, render=np.asarray(render, dtype=np.float32), gt=np.asarray(gt, dtype=np.float32))


def cmd_prepare(args) -> int:
    from zipsplat_ns.data.converters import convert
    from zipsplat_ns.data.dataset import ShardDirectory
    from zipsplat_ns.data.depth import fill_depth
    from zipsplat_ns.data.shards import write_shards
    from zipsplat_ns.eval.benchmarks import load_index, make_index, write_index
    from zipsplat_ns.eval.runner import iter_benchmark_items
    from zipsplat_ns.images import save_png

    scenes_dir, out = args.scenes, args.out
    if not scenes_dir.is_dir():
        log(f"error: {scenes_dir} does not exist (the ../shared development scenes)")
        return 1
    heldout = [s.strip() for s in args.heldout.split(",") if s.strip()]
    names = sorted(p.name for p in scenes_dir.iterdir() if (p / "transforms.json").is_file())
    unknown = sorted(set(heldout) - set(names))
    if unknown:
        log(f"error: held-out scene(s) {unknown} not in {scenes_dir}")
        return 1
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for name in names:
        if name not in heldout:
            shutil.copytree(scenes_dir / name, out / "train_scenes" / name)
    log(f"training scenes: {[n for n in names if n not in heldout]}")

    # held-out: full conversion (as eval_shared_scenes.py), the index rule, then only the 10 indexed frames
    work = out / "_heldout_full"
    src = out / "_heldout_src"
    src.mkdir()
    for name in heldout:
        (src / name).symlink_to((scenes_dir / name).resolve())
    convert("nerfstudio", src, work / "shards", max_size=args.max_size, progress=False)
    fill_depth(work / "shards", method="sfm", progress=False)
    entries, left_out = make_index(work / "shards", args.views, args.targets, scenes=heldout)
    if left_out:
        log(f"error: held-out scenes unusable: {left_out}")
        return 1
    d = ShardDirectory(work / "shards")
    reduced, index = [], {}
    for key in heldout:
        e = entries[key]
        frames = sorted(set(e["context"]) | set(e["target"]))
        pos = {f: i for i, f in enumerate(frames)}
        reduced.append(_subset_scene(d.load(key), frames))
        index[key] = {"context": [pos[f] for f in e["context"]], "target": [pos[f] for f in e["target"]],
                      "source_frames": {"context": e["context"], "target": e["target"]}}  # fmt: skip
    write_shards(reduced, out / "heldout_shards")
    write_index({k: {"context": v["context"], "target": v["target"]} for k, v in index.items()},
                out / "heldout_index.json")  # fmt: skip
    (out / "heldout_frames.json").write_text(json.dumps(index, indent=1))
    shutil.rmtree(work)
    shutil.rmtree(src)

    # the processed crops, exactly as the evaluation sees them
    sampler = load_index(out / "heldout_index.json", expected_context=args.views)
    for key, inputs, batch, reason in iter_benchmark_items([out / "heldout_shards"], sampler, heldout):
        if reason is not None:
            log(f"error: {key}: {reason}")
            return 1
        ctx = inputs["context_image"][0]  # (V, 3, S, S)
        gt = batch["image"][0]  # (T, 3, S, S)
        mean = ctx.mean(0, keepdim=True).expand_as(gt)
        _write_npz(out / "renders" / "mean" / f"{key}.npz", mean.numpy(), gt.numpy())
        folder = out / "splatfacto" / key
        (folder / "images").mkdir(parents=True)
        frames, train, test = [], [], []
        for role, imgs, cams, poses in (
            ("ctx", ctx, inputs["context_camera"][0], inputs["context_pose"][0]),
            ("tgt", gt, inputs["target_camera"][0], inputs["target_pose"][0]),
        ):
            for i in range(imgs.shape[0]):
                rel = f"images/{role}_{i:02d}.png"
                save_png(imgs[i], folder / rel)
                w, h, fx, fy, cx, cy = (float(x) for x in cams[i])
                frames.append({"file_path": rel, "transform_matrix": _transform_matrix(poses[i]),
                               "fl_x": fx, "fl_y": fy, "cx": cx, "cy": cy, "w": int(round(w)), "h": int(round(h))})  # fmt: skip
                (train if role == "ctx" else test).append(rel)
        meta = {"camera_model": "OPENCV", "frames": frames, "train_filenames": train, "val_filenames": test,
                "test_filenames": test}  # fmt: skip
        (folder / "transforms.json").write_text(json.dumps(meta, indent=1))
        log(f"{key}: {ctx.shape[0]} context + {gt.shape[0]} targets, scale source {batch['scale_source']}")
    return 0


# --------------------------------------------------------------------------------------------------- train-data
def cmd_train_data(args) -> int:
    from zipsplat_ns.data.converters import convert
    from zipsplat_ns.data.depth import fill_depth

    out = args.out
    real = out / "real"
    if not (real / "index.json").is_file():
        rep = convert("nerfstudio", args.train_scenes, real, max_size=args.max_size, progress=False)
        log(f"converted {args.train_scenes} -> {real}: {rep}")
        log(fill_depth(real, method="sfm", progress=False).summary())
    synth = out / "synth"
    if not (synth / "train-scenes" / "index.json").is_file():
        cmd = [sys.executable, "-m", "zipsplat_ns.cli", "synth", "--output", str(synth), "--num-scenes",
               str(args.synth_scenes), "--views", "32", "--size", "252", "--num-workers", str(args.workers)]  # fmt: skip
        log(" ".join(cmd))
        subprocess.run(cmd, check=True)
    return 0


# --------------------------------------------------------------------------------------------------- splatfacto
def _render_test_split(config_path: Path, out_npz: Path) -> None:
    import torch
    from nerfstudio.utils.eval_utils import eval_setup

    _, pipeline, _, _ = eval_setup(config_path, test_mode="test")
    ds = pipeline.datamanager.eval_dataset
    renders, gts = [], []
    with torch.no_grad():
        for i in range(len(ds)):
            cam = ds.cameras[i : i + 1].to(pipeline.device)
            out = pipeline.model.get_outputs_for_camera(cam)
            renders.append(out["rgb"].clamp(0, 1).permute(2, 0, 1).float().cpu().numpy())
            gts.append(ds.get_image_float32(i)[..., :3].permute(2, 0, 1).numpy())
    _write_npz(out_npz, np.stack(renders), np.stack(gts))


def cmd_splatfacto(args) -> int:
    folders = sorted(p for p in args.folders.iterdir() if (p / "transforms.json").is_file())
    if not folders:
        log(f"error: no prepared scene folders in {args.folders}")
        return 1
    timing = {}
    for folder in folders:
        key = folder.name
        out_npz = args.out / f"{key}.npz"
        if out_npz.is_file():
            continue
        run_root = args.work / key
        cmd = ["ns-train", "splatfacto", "--max-num-iterations", str(args.steps), "--vis", "tensorboard",
               "--output-dir", str(run_root), "--experiment-name", key, "--timestamp", "run",
               "--viewer.quit-on-train-completion", "True", "--steps-per-eval-batch", "1000000",
               "--steps-per-eval-image", "1000000", "--steps-per-eval-all-images", "1000000",
               "--steps-per-save", str(args.steps), "--logging.local-writer.enable", "False",
               "nerfstudio-data", "--data", str(folder)]  # fmt: skip
        log(f"{key}: " + " ".join(cmd))
        t0 = time.time()
        with open(args.work / f"{key}.log", "w") as f:
            subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT)
        timing[key] = round(time.time() - t0, 1)
        cfg = next(run_root.rglob("config.yml"))
        _render_test_split(cfg, out_npz)
        log(f"{key}: splatfacto {args.steps} steps in {timing[key]} s -> {out_npz}")
    (args.out / "timing.json").write_text(json.dumps(timing, indent=1))
    return 0


# ------------------------------------------------------------------------------------------------------- report
CURVE_COLUMNS = ("loss", "l1", "psnr", "lpips", "chamfer", "depth", "num_views", "compression", "images_per_s",
                 "skipped_scenes")


def _curves(metrics_jsonl: Path, png: Path, csv_path: Path, window: int = 50) -> dict:
    """Training curves from the run's ``zipsplat_metrics.jsonl`` (one row per step): a CSV of the main columns and
    a plot (raw values light, a ``window``-step moving average dark)."""
    rows = [json.loads(line) for line in metrics_jsonl.read_text().splitlines() if line.strip()]
    series = [r for r in rows if isinstance(r.get("step"), int)]
    if not series:
        raise ValueError(f"{metrics_jsonl}: no step rows")
    cols = ["step"] + [c for c in CURVE_COLUMNS if any(c in r for r in series)]
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for r in series:
            w.writerow([r.get(c, "") if not isinstance(r.get(c), float) else f"{r[c]:.6g}" for c in cols])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [c for c in ("loss", "l1", "psnr", "lpips", "num_views", "images_per_s") if c in cols]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.0))
    for ax, c in zip(np.atleast_1d(axes), panels):
        xs = np.array([r["step"] for r in series if c in r], dtype=float)
        ys = np.array([r[c] for r in series if c in r], dtype=float)
        ax.plot(xs, ys, lw=0.5, alpha=0.35)
        if len(ys) >= window:
            k = np.ones(window) / window
            ax.plot(xs[window - 1 :], np.convolve(ys, k, mode="valid"), lw=1.5)
        if c == "loss":
            ax.set_yscale("log")  # rare location-penalty spikes would flatten the curve
        ax.set_title(c, fontsize=9)
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(png, dpi=110)

    def avg(c, part):
        vals = [r[c] for r in part if c in r]
        return float(np.mean(vals)) if vals else None

    first, last = series[:100], series[-100:]
    return {
        "steps_logged": len(series),
        "last_step": series[-1]["step"],
        "first_100_steps_mean": {c: avg(c, first) for c in ("loss", "l1", "psnr", "lpips")},
        "last_100_steps_mean": {c: avg(c, last) for c in ("loss", "l1", "psnr", "lpips", "images_per_s")},
    }


def _grid(renders: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]], scenes: list[str], png: Path,
          view: int = 1) -> None:
    """One row per scene: ground truth, then each method's render of target ``view``."""
    from PIL import Image, ImageDraw

    tiles = []
    for s in scenes:
        row = [renders["mean"][s][1][view]] + [r[s][0][view] for r in renders.values()]
        tiles.append(np.concatenate([np.clip(t, 0, 1).transpose(1, 2, 0) for t in row], 1))
    img = Image.fromarray((np.concatenate(tiles, 0) * 255).round().astype(np.uint8))
    draw = ImageDraw.Draw(img)
    size = tiles[0].shape[0]
    for i, name in enumerate(["ground truth", *renders]):
        draw.text((i * size + 4, 2), name, fill=(255, 255, 0))
    img.save(png)


def cmd_report(args) -> int:
    import torch

    from zipsplat_ns.lpips import get_lpips_vgg
    from zipsplat_ns.metrics import compute_metrics

    folders = {m: f for m, f in (("mean", args.mean), ("splatfacto", args.splatfacto), ("zipsplat", args.zipsplat))
               if f is not None}  # fmt: skip
    # every method's (render, gt) per scene, each file read once
    renders: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for method, folder in folders.items():
        files = sorted(folder.glob("*.npz"))
        if not files:
            log(f"error: no renders (*.npz) in {folder}")
            return 1
        renders[method] = {}
        for f in files:
            z = np.load(f)
            if z["render"].shape != z["gt"].shape:
                log(f"error: {f}: render {tuple(z['render'].shape)} vs gt {tuple(z['gt'].shape)}")
                return 1
            renders[method][f.stem] = (z["render"], z["gt"])
    scenes = sorted(renders["mean"])
    for method, by_scene in renders.items():
        if sorted(by_scene) != scenes:
            log(f"error: {method} has scenes {sorted(by_scene)}, expected {scenes}")
            return 1
        # the same ground truth for every method (identical crops)
        for s, (_, gt) in by_scene.items():
            diff = float(np.abs(gt - renders["mean"][s][1]).max())
            if diff > 2.0 / 255:
                log(f"error: {method} {s}: its ground truth differs from the mean baseline's by {diff:.4f}")
                return 1
    net = get_lpips_vgg("cpu")
    table: dict[str, dict[str, dict[str, float]]] = {}
    per_view: dict[str, dict] = {}
    for method, by_scene in renders.items():
        table[method], per_view[method] = {}, {}
        for s, (render, gt) in by_scene.items():
            with torch.no_grad():
                m = compute_metrics(torch.from_numpy(render).float().clamp(0, 1), torch.from_numpy(gt).float(), net=net)
            table[method][s] = {k: float(v.double().mean()) for k, v in m.items()}
            per_view[method][s] = {k: [float(x) for x in v.reshape(-1)] for k, v in m.items()}
    summary = {m: {k: float(np.mean([table[m][s][k] for s in scenes])) for k in ("psnr", "ssim", "lpips")}
               for m in table}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"scenes": scenes, "per_scene": table, "mean_over_scenes": summary, "per_view": per_view,
              "metrics": "zipsplat_ns.metrics (PSNR on [0,1], SSIM 11x11 Gaussian, LPIPS-VGG v0.1), 252 px crops",
              "notes": args.note or ""}  # fmt: skip
    _grid(renders, scenes, args.out / "heldout_grid.png")
    if args.metrics_jsonl is not None:
        report["curves"] = _curves(args.metrics_jsonl, args.out / "curves.png", args.out / "curves.csv")
    (args.out / "heldout_metrics.json").write_text(json.dumps(report, indent=1))
    with open(args.out / "heldout_metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "scene", "psnr", "ssim", "lpips"])
        for m in table:
            for s in scenes:
                w.writerow([m, s] + [f"{table[m][s][k]:.4f}" for k in ("psnr", "ssim", "lpips")])
            w.writerow([m, "MEAN"] + [f"{summary[m][k]:.4f}" for k in ("psnr", "ssim", "lpips")])
    lines = ["| method | " + " | ".join(scenes) + " | mean PSNR | mean SSIM | mean LPIPS |",
             "|---" * (len(scenes) + 4) + "|"]  # fmt: skip
    for m in table:
        cells = [f"{table[m][s]['psnr']:.2f} / {table[m][s]['ssim']:.3f} / {table[m][s]['lpips']:.3f}" for s in scenes]
        lines.append(f"| {m} | " + " | ".join(cells) +
                     f" | {summary[m]['psnr']:.2f} | {summary[m]['ssim']:.3f} | {summary[m]['lpips']:.3f} |")  # fmt: skip
    (args.out / "heldout_metrics.md").write_text("Per scene: PSNR / SSIM / LPIPS\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="split scenes, build held-out shards, the mean baseline and splatfacto folders")
    p.add_argument("--scenes", type=Path, default=DEFAULT_SCENES)
    p.add_argument("--heldout", default=",".join(DEFAULT_HELDOUT), help="comma-separated held-out scene names")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--views", type=int, default=6)
    p.add_argument("--targets", type=int, default=4)
    p.add_argument("--max-size", type=int, default=448)
    p = sub.add_parser("train-data", help="convert the training scenes and generate synthetic shards")
    p.add_argument("--train-scenes", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--max-size", type=int, default=448)
    p.add_argument("--synth-scenes", type=int, default=256)
    p.add_argument("--workers", type=int, default=8)
    p = sub.add_parser("splatfacto", help="train splatfacto on each prepared folder and render its targets")
    p.add_argument("--folders", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--steps", type=int, default=7000)
    p = sub.add_parser("report", help="metrics table of all methods' renders, plus training curves")
    p.add_argument("--mean", type=Path, required=True)
    p.add_argument("--splatfacto", type=Path, default=None)
    p.add_argument("--zipsplat", type=Path, default=None)
    p.add_argument("--metrics-jsonl", type=Path, default=None)
    p.add_argument("--note", default="")
    p.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if args.cmd in ("splatfacto",):
        args.out.mkdir(parents=True, exist_ok=True)
        args.work.mkdir(parents=True, exist_ok=True)
    return {"prepare": cmd_prepare, "train-data": cmd_train_data, "splatfacto": cmd_splatfacto,
            "report": cmd_report}[args.cmd](args)  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
