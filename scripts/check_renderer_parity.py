#!/usr/bin/env python
"""Check that the pure-torch renderer matches gsplat on random scenes (needs a CUDA GPU and gsplat).

Renders random scenes of 10k to 100k Gaussians into several cameras with both backends, in RGB and accumulated depth
(``RGB+D``) and expected depth (``ED``), and writes the per-scene differences to a JSON file. The acceptance bound is
a mean absolute RGB difference below 2e-3 per scene.

    python scripts/check_renderer_parity.py --output benchmarks/renderer_parity.json
"""

from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List

import torch
import tyro

from zipsplat_ns.camera import Camera
from zipsplat_ns.gaussians import Gaussians
from zipsplat_ns.pose import Pose


@dataclass
class Args:
    output: Path = Path("benchmarks/renderer_parity.json")
    """Where to write the JSON result."""
    num_gaussians: List[int] = field(default_factory=lambda: [10_000, 30_000, 60_000, 100_000])
    """Scene sizes; one random scene each."""
    views: int = 3
    """Cameras per scene."""
    size: int = 256
    """Square image size in pixels."""
    sh_degree: int = 1
    seed: int = 0
    rgb_tolerance: float = 2e-3
    """Acceptance bound on the mean absolute RGB difference per scene."""


def random_scene(n: int, sh_degree: int, gen: torch.Generator, device: str) -> Gaussians:
    """Gaussians in a 2-unit cube 3 units in front of the origin, with realistic size and opacity spreads."""
    means = (torch.rand(n, 3, generator=gen) * 2 - 1) * torch.tensor([1.5, 1.5, 1.0]) + torch.tensor([0.0, 0.0, 3.0])
    scales = torch.exp(torch.empty(n, 3).uniform_(math.log(0.003), math.log(0.05), generator=gen))
    quats = torch.randn(n, 4, generator=gen)
    quats = quats / quats.norm(dim=-1, keepdim=True)
    opacities = torch.rand(n, generator=gen) * 0.95 + 0.05
    sh = torch.randn(n, (sh_degree + 1) ** 2, 3, generator=gen) * 0.4
    return Gaussians(means, scales, quats, opacities, sh).to(device)


def orbit_cameras(views: int, size: int, device: str):
    poses = Pose.orbit(center=[0.0, 0.0, 3.0], radius=3.0, azimuths_deg=torch.linspace(-25, 25, views),
                       elevations_deg=torch.linspace(-10, 10, views))  # fmt: skip
    cams = Camera.from_fov(math.radians(55.0), w=size, h=size)
    cams = Camera(cams.data.expand(views, 6))
    return cams.to(device), poses.to(device)


def timed(fn):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return out, (time.perf_counter() - t0) * 1000


def main(args: Args) -> None:
    if not torch.cuda.is_available():
        raise SystemExit("check_renderer_parity.py needs a CUDA GPU (gsplat cannot render on a CPU)")
    import gsplat

    device = "cuda"
    gen = torch.Generator().manual_seed(args.seed)
    cams, poses = orbit_cameras(args.views, args.size, device)
    results = []
    for n in args.num_gaussians:
        g = random_scene(n, args.sh_degree, gen, device)
        g.render(cams, poses, mode="RGB+D", backend="gsplat")  # warm-up (kernel load)
        ref, t_gs = timed(lambda: g.render(cams, poses, mode="RGB+D", backend="gsplat"))
        ours, t_torch = timed(lambda: g.render(cams, poses, mode="RGB+D", backend="torch"))
        ref_ed = g.render(cams, poses, mode="ED", backend="gsplat")
        ours_ed = g.render(cams, poses, mode="ED", backend="torch")
        d_rgb = (ours.images[:, :3] - ref.images[:, :3]).abs()
        d_alpha = (ours.alphas - ref.alphas).abs()
        depth_ref = ref.images[:, 3:]
        d_depth = (ours.images[:, 3:] - depth_ref).abs()
        hit = (ref_ed.alphas > 0.5) & (ours_ed.alphas > 0.5)
        d_ed = (ours_ed.images - ref_ed.images).abs()[hit]
        radii_agree = float(((ours.info["radii"] > 0) == (ref.info["radii"] > 0)).float().mean())
        row = {
            "num_gaussians": n,
            "views": args.views,
            "size": [args.size, args.size],
            "rgb_mean_abs_diff": float(d_rgb.mean()),
            "rgb_max_abs_diff": float(d_rgb.max()),
            "rgb_p99_abs_diff": float(torch.quantile(d_rgb.flatten()[:: max(1, d_rgb.numel() // 1_000_000)], 0.99)),
            "alpha_mean_abs_diff": float(d_alpha.mean()),
            "accumulated_depth_mean_abs_diff": float(d_depth.mean()),
            "accumulated_depth_mean_rel_diff": float(d_depth.sum() / depth_ref.abs().sum().clamp_min(1e-12)),
            "expected_depth_mean_abs_diff_where_alpha_gt_0.5": float(d_ed.mean()) if d_ed.numel() else None,
            "visible_flag_agreement": radii_agree,
            "mean_rgb_value": float(ref.images[:, :3].mean()),
            "mean_alpha": float(ref.alphas.mean()),
            "gsplat_ms": round(t_gs, 2),
            "torch_backend_ms": round(t_torch, 2),
            "passed": bool(float(d_rgb.mean()) < args.rgb_tolerance),
        }
        results.append(row)
        print(json.dumps(row))
    report = {
        "script": "scripts/check_renderer_parity.py",
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "gsplat": getattr(gsplat, "__version__", "?"),
        "python": platform.python_version(),
        "rgb_tolerance": args.rgb_tolerance,
        "all_passed": all(r["passed"] for r in results),
        "scenes": results,
        "note": "timings are single warm runs for orientation only, not a benchmark",
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}; all_passed={report['all_passed']}")
    if not report["all_passed"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main(tyro.cli(Args))
