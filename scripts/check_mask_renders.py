#!/usr/bin/env python
"""What the activated mask's context-render settings cost and change (needs a CUDA GPU and gsplat).

For the Gaussians that a randomly initialised network predicts on ``bench_train.py``'s batch (the state a training
run starts from), render every context view in depth for the activated mask with each ``DOWNSCALE:TILE`` setting
(the model's ``mask_render_downscale``, and gsplat's tile size: ``render(tile_size=...)``) and report:

- gsplat's (Gaussian, tile) intersections, the work of its tile-intersection kernels and radix sort;
- the renders' GPU time (median of repeated calls, CUDA events; no gradient, as in training);
- how the mask differs from the default's (16-pixel tiles, full size): flags that flip, and for a tile size alone,
  how much the depth images differ (only the faint tails beyond a Gaussian's 3-sigma box can);
- that a depth-only render (which skips gsplat's SH evaluation) equals the depth channel of an RGB+D render.

    python scripts/check_mask_renders.py --output benchmarks/.../check_mask_renders.json
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_train import S, make_batch  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", default="small")
    ap.add_argument("--views", type=int, default=24, help="context views of the one scene")
    ap.add_argument("--compression", type=float, default=0.7, help="the network's compression ratio")
    ap.add_argument("--chunk", type=int, default=8, help="context views per rasterizer call (mask_render_chunk)")
    ap.add_argument("--settings", nargs="+", default=["1:16", "1:32", "2:16", "2:32", "4:16"],
                    metavar="DOWNSCALE:TILE")  # fmt: skip
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--output", type=Path, required=True)
    ap.add_argument("--device", default="cuda", help="cpu: a smoke run of this script (torch renderer, no counts)")
    args = ap.parse_args()
    for spec in args.settings:
        parts = spec.split(":")
        if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts) or int(parts[1]) > 32:
            raise SystemExit(f"--settings {spec!r}: expected DOWNSCALE:TILE, positive whole numbers, TILE at most 32")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("check_mask_renders.py: no CUDA GPU here (gsplat renders on CUDA only); "
                         "--device cpu smoke-tests the script")

    from zipsplat_ns.camera import Camera
    from zipsplat_ns.losses import activated_mask
    from zipsplat_ns.models.network import ZipSplat
    from zipsplat_ns.pose import Pose
    from zipsplat_ns.rendering import render

    torch.backends.cuda.matmul.allow_tf32 = True
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    net = ZipSplat(args.variant).to(device).eval()
    inputs, _ = make_batch(1, args.views, 4, device, seed=0)
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
        pred = net.predict(inputs["context_image"], compression=args.compression)
    g = pred.to_gaussians().detach()
    ccam, cpose = Camera(inputs["context_camera"]), Pose(inputs["context_pose"])
    tcam, tpose = Camera(inputs["target_camera"]), Pose(inputs["target_pose"])
    with torch.no_grad():
        target = render(g, tcam, tpose, mode="RGB+D", image_size=(S, S))

    def context_renders(ds: int, tile: int):
        cams = ccam.scale(1.0 / ds) if ds > 1 else ccam
        size = (S // ds, S // ds)
        return [render(g, cams[:, v0 : v0 + args.chunk], cpose[:, v0 : v0 + args.chunk], mode="D", image_size=size,
                       tile_size=tile) for v0 in range(0, args.views, args.chunk)]  # fmt: skip

    def intersections(ds: int, tile: int):
        if not cuda:
            return None
        from gsplat import rasterization

        cams = (ccam.scale(1.0 / ds) if ds > 1 else ccam)[0]
        _, _, meta = rasterization(g.means[0], g.quats[0], g.scales[0], g.opacities[0], g.sh[0], cpose[0].Rt_inv,
                                   cams.K, S // ds, S // ds, sh_degree=1, render_mode="D", packed=False,
                                   tile_size=tile, rasterize_mode="classic", eps2d=0.3)  # fmt: skip
        return int(meta["flatten_ids"].numel())

    with torch.no_grad():  # depth-only renders skip gsplat's SH evaluation: the same depth as RGB+D's channel?
        d_only = render(g, ccam[:, :8], cpose[:, :8], mode="D", image_size=(S, S)).images
        d_of_rgbd = render(g, ccam[:, :8], cpose[:, :8], mode="RGB+D", image_size=(S, S)).images[..., 3:4, :, :]
    radii = target.info["radii"].float()
    rec = {"what": __doc__.strip().splitlines()[0], "device": torch.cuda.get_device_name(0) if cuda else "cpu",
           "torch": torch.__version__,
           "python": platform.python_version(), "variant": args.variant, "context_views": args.views,
           "compression": args.compression, "gaussians": int(g.means.shape[1]), "chunk": args.chunk,
           "target_view_radius_px": {"median": float(radii[radii > 0].median()), "mean": float(radii[radii > 0].mean()),
                                     "p90": float(radii[radii > 0].quantile(0.9))},
           "depth_only_vs_rgbd_depth_max_abs": float((d_only - d_of_rgbd).abs().max()),
           "settings": []}  # fmt: skip
    base_mask = None
    by_ds = {}
    with torch.no_grad():
        for spec in args.settings:
            ds, tile = (int(x) for x in spec.split(":"))
            renders = context_renders(ds, tile)
            times = []
            for _ in range(args.repeats if cuda else 0):
                torch.cuda.synchronize()
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                context_renders(ds, tile)
                b.record()
                torch.cuda.synchronize()
                times.append(a.elapsed_time(b))
            mask = activated_mask([target, *renders])
            imgs = torch.cat([r.images for r in renders], 1)
            s = {"downscale": ds, "tile_size": tile, "intersections": intersections(ds, tile),
                 "render_ms_median": round(statistics.median(times), 3) if times else None,
                 "render_ms_all": [round(t, 3) for t in times],
                 "activated_fraction": float(mask.float().mean())}  # fmt: skip
            if base_mask is None:
                base_mask = mask
            s["mask_flags_differing_from_first"] = int((mask != base_mask).sum())
            s["mask_flags_differing_fraction"] = float((mask != base_mask).float().mean())
            if ds in by_ds and by_ds[ds][0] == 16:  # the same size with 16-pixel tiles: what the tile size changes
                ref = by_ds[ds][1]
                d = (imgs - ref).abs()
                s["depth_vs_tile16_same_size"] = {"max_abs": float(d.max()), "mean_abs": float(d.mean()),
                                                  "pixels_differing_fraction": float((d > 0).float().mean()),
                                                  "ref_depth_mean": float(ref.mean())}  # fmt: skip
            by_ds.setdefault(ds, (tile, imgs))
            rec["settings"].append(s)
            print(json.dumps({k: v for k, v in s.items() if k != "render_ms_all"}), flush=True)
    rec["time"] = time.strftime("%Y-%m-%d %H:%M:%S")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(rec, indent=2))


if __name__ == "__main__":
    main()
