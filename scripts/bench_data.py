#!/usr/bin/env python
"""Data-loader throughput: scenes/s and images/s of the training stream for several worker counts and two sources.

Every measured batch went through shard reading, view sampling, JPEG/PNG/WebP decoding, depth decoding,
resize-to-cover + crop and pose/scale normalisation. Warm-up batches (worker start-up, first shard opens) are not
timed. Images/s counts context + target images; the "keeps up" check compares *context* images/s with
``--required-images-per-s`` (400 = the small variant's GPU rate at 24 context images per step).

Sources (``--sources``, default both):

- ``full``: synthetic shards written to ``--workdir`` by ``--source planar`` (fast analytic textured planes stored
  like RE10K: 360x640 JPEG + log-uint8 WebP depth) or ``--source synth`` (the procedural generator,
  :mod:`zipsplat_ns.data.synth`; slow at 360x640), or the shards given with ``--data``;
- ``resized``: square ``--image-size`` copies of those shards (lossless WebP images, WebP depth), written with
  :func:`zipsplat_ns.data.shard_tools.resize_shards` (what ``zipsplat-ns shards resize`` writes; the reference also
  trains from resized copies). Loading them needs no resize at all.

``--profile-stages`` also times each per-image stage in this process (CPU time, one thread): the current loader path
next to the previous one (PIL decoding, full-image resize then crop).

    python scripts/bench_data.py --workers 1 2 8 --output benchmarks/bench_data.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zipsplat_ns.data.dataset import DatasetSpec, SamplerConfig, ShardStream  # noqa: E402
from zipsplat_ns.data.depth_codec import encode_depth  # noqa: E402
from zipsplat_ns.data.images import encode_image  # noqa: E402
from zipsplat_ns.data.scene import RawScene  # noqa: E402
from zipsplat_ns.data.shards import ShardWriter, list_shards  # noqa: E402


def planar_scene(key: str, views: int, h: int, w: int, seed: int) -> RawScene:
    """A textured plane seen from a smooth forward/sideways camera path, with its exact z-depth."""
    rng = np.random.default_rng(seed)
    f = 0.6 * w
    cams = np.tile(np.array([w, h, f, f, w / 2, h / 2], np.float32), (views, 1))
    freqs = rng.uniform(1, 12, (3, 4))
    u, v = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    poses, images, depths, ranges = [], [], [], []
    for i in range(views):
        a = 0.1 * np.sin(0.2 * i + seed)
        R = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
        c = np.array([0.05 * i, 0.02 * np.sin(0.3 * i), 0.03 * i])
        ray = np.stack([(u - w / 2) / f, (v - h / 2) / f, np.ones_like(u)], -1) @ R.T
        z = (6.0 - c[2]) / ray[..., 2]
        X, Y = c[0] + z * ray[..., 0], c[1] + z * ray[..., 1]
        img = np.stack([np.sin(fr[0] * X + fr[1]) * np.cos(fr[2] * Y + fr[3]) for fr in freqs], -1)
        img = img + 0.1 * rng.standard_normal(img.shape)
        images.append(encode_image((np.clip(img * 0.5 + 0.5, 0, 1) * 255).astype(np.uint8), "jpg", quality=90))
        b, r = encode_depth(z.astype(np.float32))
        depths.append(b)
        ranges.append(r)
        poses.append(np.concatenate([R.reshape(9), c]).astype(np.float32))
    return RawScene(key, cams, np.stack(poses), images, depths, ranges)


def _planar_job(job):
    key, views, h, w, seed = job
    torch.set_num_threads(1)
    return planar_scene(key, views, h, w, seed)


def _pool_map(fn, jobs):
    """``map`` over a process pool (all cores) in order; plain ``map`` with one core."""
    n = min(len(jobs), os.cpu_count() or 1)
    if n <= 1:
        return list(map(fn, jobs))
    import multiprocessing as mp

    with mp.get_context("fork").Pool(n) as pool:
        return pool.map(fn, jobs, chunksize=1)


def build_data(args) -> Path:
    out = (
        Path(args.workdir) / f"{args.source}-{args.scenes}x{args.views}-{args.height}x{args.width}-{args.shard_mb:g}mb"
    )
    train = out / "train-scenes"
    if train.is_dir() and list_shards(train):
        print(f"reusing {train}")
        return train
    t0 = time.perf_counter()
    if args.source == "synth":
        from zipsplat_ns.data.synth import synth_main

        synth_main(out, num_scenes=args.scenes, views=args.views, size=min(args.height, args.width),
                   height=args.height, width=args.width, test_fraction=0.0, num_workers=os.cpu_count() or 1,
                   overwrite=True, progress=True)  # fmt: skip
    else:
        jobs = [(f"plane{i:05d}", args.views, args.height, args.width, i) for i in range(args.scenes)]
        with ShardWriter(train, shard_size_mb=args.shard_mb, overwrite=True) as w:
            for scene in _pool_map(_planar_job, jobs):
                w.add(scene)
    print(
        f"wrote {args.scenes} scenes to {train} ({len(list_shards(train))} shards) in {time.perf_counter() - t0:.1f} s"
    )
    return train


def build_resized(src: Path, args) -> Tuple[Path, str]:
    """Square ``--image-size`` copies of ``src`` written by ``shard_tools.resize_shards`` (cached in ``--workdir``)."""
    from zipsplat_ns.data.shard_tools import resize_shards

    out = Path(args.workdir) / f"{src.parent.name if src.name == 'train-scenes' else src.name}-resized{args.image_size}"
    train = out / "train-scenes"
    if train.is_dir() and list_shards(train):
        print(f"reusing {train}")
        return train, "resize_shards"
    t0 = time.perf_counter()
    try:
        report = resize_shards(src, train, size=args.image_size, shard_size_mb=args.shard_mb / 4, overwrite=True)
        if report.good and not report.bad:
            print(f"resize_shards: {len(report.good)} scenes to {train} in {time.perf_counter() - t0:.1f} s")
            return train, "resize_shards"
        reason = report.bad[0][2] if report.bad else "no scenes"
        note = f"resize_shards failed on {len(report.bad)} of {len(report.bad) + len(report.good)} scenes: {reason}"
    except Exception as exc:  # noqa: BLE001 - fall back below, and say so in the report
        note = f"resize_shards raised {type(exc).__name__}: {exc}"
    print(f"WARNING: {note}; writing the resized copies with the bench's own equivalent (preprocess_view)", flush=True)
    t0 = time.perf_counter()
    from zipsplat_ns.data.shards import iter_scenes

    scenes = [(sc, args.image_size) for shard in list_shards(src) for sc in iter_scenes(shard)]
    with ShardWriter(train, shard_size_mb=args.shard_mb / 4, overwrite=True) as w:
        for scene in _pool_map(_resize_job, scenes):
            w.add(scene)
    print(f"fallback resize: {len(scenes)} scenes to {train} in {time.perf_counter() - t0:.1f} s")
    (out / "RESIZED_WITH_FALLBACK").write_text(note + "\n")
    return train, f"bench fallback ({note})"


def _resize_job(job) -> RawScene:
    """What ``shard_tools.resize_scene`` is meant to write: decoded uint8 -> resize-to-cover + centre crop
    (:func:`preprocess_view`) -> uint8 lossless WebP; depth decoded, nearest-resized + cropped, re-encoded."""
    from zipsplat_ns.data.depth_codec import decode_depth
    from zipsplat_ns.data.images import decode_image
    from zipsplat_ns.data.preprocess import preprocess_view

    scene, size = job
    torch.set_num_threads(1)
    images, depths, ranges, cams = [], [], [], []
    for i, data in enumerate(scene.images):
        dep = decode_depth(scene.depths[i], scene.depth_ranges[i]) if scene.depths is not None else None
        img, cam, dep = preprocess_view(decode_image(data), scene.cameras[i], size, depth=dep)
        images.append(encode_image((img * 255).round().byte().permute(1, 2, 0).numpy(), "webp"))
        cams.append(cam)
        if dep is not None:
            b, r = encode_depth(dep)
            depths.append(b)
            ranges.append(r)
    has = scene.depths is not None
    return RawScene(scene.key, np.stack(cams).astype(np.float32), scene.poses, images,
                    depths if has else None, ranges if has else None, dict(scene.meta))  # fmt: skip


def resolve(data: Path) -> Path:
    return data / "train-scenes" if (data / "train-scenes").is_dir() else data


def measure(path: Path, workers: int, args) -> dict:
    spec = DatasetSpec(
        path, sampler=SamplerConfig(args.sampler, args.min_distance, args.gap_multiplier, args.max_consecutive)
    )
    stream = ShardStream(
        [spec], train=True, image_size=args.image_size, image_budget=args.image_budget, min_views=args.min_views,
        max_views=args.max_views, num_target_views=args.num_target_views, seed=args.seed,
    )  # fmt: skip
    kw = {"prefetch_factor": args.prefetch} if workers > 0 else {}
    loader = DataLoader(stream, batch_size=None, num_workers=workers, **kw)
    it = iter(loader)
    t_start = time.perf_counter()
    for _ in range(args.warmup):
        next(it)
    t_warm = time.perf_counter() - t_start
    scenes = ctx_imgs = tgt_imgs = batches = 0
    skipped: dict = {}
    t0 = time.perf_counter()
    while batches < args.batches or time.perf_counter() - t0 < args.min_seconds:
        b = next(it)
        B, V = b["context"]["image"].shape[:2]
        scenes += B
        ctx_imgs += B * V
        tgt_imgs += B * b["target"]["image"].shape[1]
        batches += 1
        for k, v in b["skipped"].items():
            skipped[k] = skipped.get(k, 0) + v
    dt = time.perf_counter() - t0
    del it, loader
    res = {
        "workers": workers,
        "batches": batches,
        "seconds": round(dt, 3),
        "warmup_seconds": round(t_warm, 3),
        "scenes_per_s": round(scenes / dt, 2),
        "images_per_s": round((ctx_imgs + tgt_imgs) / dt, 1),
        "context_images_per_s": round(ctx_imgs / dt, 1),
        "batches_per_s": round(batches / dt, 3),
        "skipped": skipped,
    }
    res["keeps_up"] = res["context_images_per_s"] >= args.required_images_per_s
    return res


def _cpu_ms(fn, reps: int, rounds: int = 3) -> float:
    """Best-of-``rounds`` CPU time (``time.process_time``, this process) per call of ``fn``, ms."""
    best = float("inf")
    for _ in range(rounds):
        t0 = time.process_time()
        for _ in range(reps):
            fn()
        best = min(best, (time.process_time() - t0) / reps)
    return round(best * 1e3, 3)


def profile_stages(path: Path, args, views: int = 8) -> dict:
    """CPU ms per image of each loader stage on the first scene of ``path``: the current path and the previous one."""
    from zipsplat_ns.data import images as I
    from zipsplat_ns.data.dataset import _dequantize_lut, process_scene, unproject_norms
    from zipsplat_ns.data.depth_codec import dequantize_depth
    from zipsplat_ns.data.preprocess import (
        cover_size,
        crop_offsets,
        nearest_cover_crop,
        resize_crop_image,
        resize_image,
        transform_camera,
    )  # fmt: skip
    from zipsplat_ns.data.samplers import ViewSample
    from zipsplat_ns.data.shards import iter_scenes

    scene = next(iter_scenes(list_shards(path)[0]))
    S, n = args.image_size, min(views, scene.num_views)
    ims, deps = scene.images[:n], (scene.depths or [])[:n]
    u8 = [I.decode_image_tensor(x) for x in ims]
    H, W = u8[0].shape[-2:]
    nh, nw = cover_size(H, W, S)
    top, left = crop_offsets(nh, nw, S)
    hwc = [x.permute(1, 2, 0).contiguous().numpy() for x in u8]
    reps = max(1, args.profile_reps)
    each = lambda f, xs: _cpu_ms(lambda: [f(x) for x in xs], reps) / len(xs)  # noqa: E731
    out = {"image": f"{W}x{H} {I.detect_image_ext(ims[0])}", "crop": f"cover {nw}x{nh} -> {S}x{S}", "ms_per_image": {}}
    st = out["ms_per_image"]
    st["decode_image PIL (before)"] = each(lambda x: I._pil_decode(x, "RGB", "img"), ims)
    st["decode_image torchvision (now)"] = each(I.decode_image_tensor, ims)
    st["resize full + crop (before)"] = each(
        lambda a: resize_image(a, (nh, nw))[:, top : top + S, left : left + S].contiguous(), hwc
    )
    st["resize crop only (now)"] = each(lambda t: resize_crop_image(t, (nh, nw), top, left, S), u8)
    if deps:
        rng = scene.depth_ranges[0]
        st["depth decode PIL (before)"] = each(lambda x: I._pil_decode(x, "L", "dep"), deps)
        st["depth decode torchvision (now)"] = each(I.decode_gray_deferred, deps)
        codes_l = I._pil_decode(deps[0], "L", "dep")
        codes_d = I.decode_gray_deferred(deps[0])
        st["depth crop + dequantise (before)"] = each(
            lambda c: dequantize_depth(nearest_cover_crop(c, (H, W), S), rng), [codes_l]
        )
        st["depth crop + grey + LUT (now)"] = each(
            lambda c: _dequantize_lut(rng)[I.pil_luma(nearest_cover_crop(c, (H, W), S))], [codes_d])  # fmt: skip
        d = _dequantize_lut(rng)[I.pil_luma(nearest_cover_crop(codes_d, (H, W), S))]
        cam = transform_camera(scene.cameras[0], (H, W), S)
        st["scale: unproject + median, per context view (before)"] = each(
            lambda dd: float(np.median(unproject_norms(dd, cam, np.eye(4)))), [d]
        )
    vc = min(6, n - 2)
    vs = ViewSample(np.arange(vc), np.arange(vc, n))
    st["process_scene per image (now, all stages)"] = round(
        _cpu_ms(lambda: process_scene(scene, vs, image_size=S), reps) / n, 3
    )
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, help="shard root (with train-scenes/) or shard directory (the 'full' source)")
    p.add_argument("--sources", nargs="+", choices=["full", "resized"], default=["full", "resized"],
                   help="full: --data or the --source shards as stored; resized: their --image-size copies")  # fmt: skip
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 8])
    p.add_argument("--output", type=Path, help="write the results as JSON here")
    p.add_argument(
        "--required-images-per-s",
        type=float,
        default=400.0,
        help="context images/s the GPU consumes (small variant: 400 at 24 context images per step)",
    )
    p.add_argument("--batches", type=int, default=8, help="timed batches per worker count (at least)")
    p.add_argument("--min-seconds", type=float, default=5.0, help="time each worker count for at least this long")
    p.add_argument("--warmup", type=int, default=0, help="untimed batches (default: 2 per worker)")
    p.add_argument("--prefetch", type=int, default=2)
    p.add_argument("--image-size", type=int, default=252)
    p.add_argument("--image-budget", type=int, default=24)
    p.add_argument("--min-views", type=int, default=2)
    p.add_argument("--max-views", type=int, default=24)
    p.add_argument("--num-target-views", type=int, default=4)
    p.add_argument("--sampler", choices=["bounded", "random"], default="bounded")
    p.add_argument("--min-distance", type=int, default=8)
    p.add_argument("--gap-multiplier", type=int, default=11)
    p.add_argument("--max-consecutive", type=int, default=22)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--source", choices=["planar", "synth"], default="planar", help="synthetic data when no --data")
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "zipsplat_bench_data")
    p.add_argument("--scenes", type=int, default=32)
    p.add_argument("--views", type=int, default=32)
    p.add_argument("--height", type=int, default=360)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--shard-mb", type=float, default=2.0,
                   help="shard size (resized copies: a quarter): small, so that up to 16 workers each get shards of their own "
                        "(as in real training; with fewer shards than workers every worker reads them all)")  # fmt: skip
    p.add_argument("--profile-stages", action="store_true", help="also time each per-image stage (one process)")
    p.add_argument("--profile-reps", type=int, default=5)
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    full = resolve(args.data) if args.data else build_data(args)
    report = {
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "output"},
        "required_images_per_s": args.required_images_per_s,
        "sources": {},
    }
    t_all = time.perf_counter()
    for source in args.sources:
        if source == "full":
            path, how = full, ("given" if args.data else f"{args.source} {args.height}x{args.width}")
        else:
            path, how = build_resized(full, args)
        entry = {"data": str(path), "built_with": how, "shards": len(list_shards(path)), "results": []}
        report["sources"][source] = entry
        if args.profile_stages:
            entry["stages"] = profile_stages(path, args)
            print(f"[{source}] per-image CPU ms ({entry['stages']['image']}, {entry['stages']['crop']}):")
            for k, v in entry["stages"]["ms_per_image"].items():
                print(f"    {k:55s} {v:7.3f}")
        for w in args.workers:
            saved = args.warmup
            args.warmup = saved or 2 * max(1, w)
            r = measure(path, w, args)
            args.warmup = saved
            entry["results"].append(r)
            print(
                f"[{source}] workers={w:2d}: {r['scenes_per_s']:7.2f} scenes/s  {r['images_per_s']:8.1f} images/s "
                f"({r['context_images_per_s']:.1f} context/s)  keeps up with {args.required_images_per_s:g}/s: "
                f"{'yes' if r['keeps_up'] else 'NO'}",
                flush=True,
            )
    report["total_seconds"] = round(time.perf_counter() - t_all, 1)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
