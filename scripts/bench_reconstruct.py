#!/usr/bin/env python
"""Reconstruct-and-view timings on a GPU: `zipsplat-ns reconstruct`, the viewer's compression slider and its renders.

For each view count V: an image folder of V frames goes through :class:`zipsplat_ns.reconstruct.ReconstructCommand`
(giant network, weights from a file by reference: random weights saved once as .safetensors, the same path as the
released checkpoint), then the run is loaded as ``ns-viewer`` loads it (``eval_setup(test_mode="test")``) and we time

- ``reconstruct_s``: the whole command (staging the images as a shard, building the pipeline, loading the 5.8 GB of
  weights, predicting, checkpoint, PLY), once;
- ``predict_ms``: ``pipeline.select_scene`` (network forward at compression 1, bf16 autocast as the viewer runs it;
  what a scene switch costs), median of 5 after a warm-up;
- ``slider_ms``: ``select_scene(compression=0.5)`` (a compression-slider move), median of 5;
- ``render_ms``: ``model.get_outputs_for_camera`` for a 512 x 512 nerfstudio camera (one viewer frame: RGB,
  expected depth, accumulation; gsplat), median of 20 after a warm-up;
- peak GPU memory, the Gaussian count, the renderer backend.

Usage (GPU machine): ``python scripts/bench_reconstruct.py --frames FRAME_DIR --views 6 24 --output out.json``
(``FRAME_DIR``: images, e.g. frames of drone.mp4; V evenly spaced ones are used).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, repeat: int, warmup: int = 1) -> list:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeat):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        out.append((time.perf_counter() - t) * 1000)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=Path, required=True)
    ap.add_argument("--views", type=int, nargs="+", default=[6, 24])
    ap.add_argument("--variant", default="giant")
    ap.add_argument("--output", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--device", default="cuda", help="cuda (the benchmark); cpu only to check the script")
    args = ap.parse_args()

    from nerfstudio.cameras.cameras import Cameras
    from nerfstudio.utils.eval_utils import eval_setup
    from safetensors.torch import save_file

    from zipsplat_ns.models.network import ZipSplat
    from zipsplat_ns.reconstruct import ReconstructCommand

    work = args.work or Path(tempfile.mkdtemp(prefix="bench_rec_"))
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    t = time.perf_counter()
    wfile = work / f"random-{args.variant}.safetensors"
    save_file({k: v.contiguous() for k, v in ZipSplat(args.variant).state_dict().items()}, str(wfile))
    save_s = time.perf_counter() - t
    frames = sorted(p for p in args.frames.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    rows = []
    for v in args.views:
        src = work / f"frames_{v}"
        src.mkdir(exist_ok=True)
        for i in np.round(np.linspace(0, len(frames) - 1, v)).astype(int):
            shutil.copy(frames[i], src / frames[i].name)
        out = work / f"run_{v}"
        cuda = args.device == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        rep = ReconstructCommand(str(src), weights=str(wfile), variant=args.variant, output_dir=out, device=args.device,
                                 overwrite=True, progress=False).run()  # fmt: skip
        rec_s = time.perf_counter() - t
        rec_peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")

        _, pipe, _, _ = eval_setup(out / "config.yml", test_mode="test")
        key = pipe.datamanager.viewer_scene_key
        predict = timed(lambda: pipe.select_scene(key, compression=1.0), 5)
        slider = timed(lambda: pipe.select_scene(key, compression=0.5), 5)
        pipe.select_scene(key, compression=1.0)
        cam = Cameras(camera_to_worlds=torch.eye(4)[None, :3, :4], fx=400.0, fy=400.0, cx=256.0, cy=256.0,
                      width=512, height=512).to(args.device)  # fmt: skip
        outs = pipe.model.get_outputs_for_camera(cam)
        render = timed(lambda: pipe.model.get_outputs_for_camera(cam), 20)
        rows.append({
            "views": v,
            "num_gaussians": int(pipe.model.scene.num_gaussians),
            "num_gaussians_c05": int(v * 324 * 0.5) * 32,
            "backend": pipe.model._backend(torch.device(args.device)),
            "precision": pipe.model.net.config.precision,
            "reconstruct_s": round(rec_s, 2),
            "reconstruct_peak_gb": round(rec_peak, 2),
            "report_time_load_s": rep["time_load_s"],
            "predict_ms_median": round(statistics.median(predict), 1),
            "slider_c05_ms_median": round(statistics.median(slider), 1),
            "render_512_ms_median": round(statistics.median(render), 2),
            "render_512_ms_all": [round(x, 2) for x in render],
            "render_alpha_mean": float(outs["accumulation"].mean()),
        })
        print(json.dumps(rows[-1]))
        del pipe
        if cuda:
            torch.cuda.empty_cache()
    result = {
        "script": "scripts/bench_reconstruct.py",
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "torch": torch.__version__,
        "variant": args.variant,
        "weights": "RANDOM (seed 0), saved once as .safetensors and referenced by the run (as released weights are)",
        "save_weights_s": round(save_s, 1),
        "notes": "predict = select_scene (network forward, bf16 autocast ('auto' precision on CUDA), colour path, "
        "head); render = one 512x512 viewer frame (RGB+ED, gsplat 1.4.0), median of 20 after warm-up",
        "rows": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}))


if __name__ == "__main__":
    main()
