#!/usr/bin/env python
"""Build a small procedural Gaussian scene, render it from an orbit and export it as a standard 3DGS PLY.

A smoke run of the Python API on any machine (the torch renderer on CPU, gsplat on a GPU):

    python scripts/demo_render.py --output-dir outputs/demo
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import tyro
from PIL import Image
from rich.console import Console

from zipsplat_ns import Camera, Gaussians, Pose
from zipsplat_ns.gaussians import rgb_to_sh0
from zipsplat_ns.utils.atomic import atomic_open

console = Console()


@dataclass
class Args:
    output_dir: Path = Path("outputs/demo")
    """Where scene.ply and render.png are written."""
    num_gaussians: int = 20_000
    size: int = 256
    """Rendered image size in pixels."""
    views: int = 4
    """Orbit views tiled into render.png."""
    seed: int = 0


def torus_scene(n: int, seed: int) -> Gaussians:
    """A torus with a hue that varies around it, standing 3 units in front of the origin (OpenCV frame)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, generator=g) * 2 * math.pi
    v = torch.rand(n, generator=g) * 2 * math.pi
    R, r = 1.0, 0.35
    pts = torch.stack([(R + r * torch.cos(v)) * torch.cos(u), r * torch.sin(v), (R + r * torch.cos(v)) * torch.sin(u)], -1)
    pts = pts @ torch.tensor([[1.0, 0, 0], [0, 0.8, -0.6], [0, 0.6, 0.8]]).T + torch.tensor([0.0, 0.0, 3.0])
    hue = u[:, None] / (2 * math.pi)
    rgb = 0.5 + 0.45 * torch.cos(2 * math.pi * (hue + torch.tensor([0.0, 1 / 3, 2 / 3])))
    q = torch.randn(n, 4, generator=g)
    return Gaussians(
        means=pts,
        scales=torch.full((n, 3), 0.03) * (0.5 + torch.rand(n, 3, generator=g)),
        quats=q / q.norm(dim=-1, keepdim=True),
        opacities=torch.full((n,), 0.8),
        sh=rgb_to_sh0(rgb)[:, None, :],
    )


def main(args: Args) -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    scene = torus_scene(args.num_gaussians, args.seed)
    poses = Pose.orbit(center=[0.0, 0.0, 3.0], radius=3.5, azimuths_deg=torch.linspace(0, 270, args.views),
                       elevations_deg=20.0)  # fmt: skip
    cams = Camera(Camera.from_fov(math.radians(55), w=args.size, h=args.size).data.expand(args.views, 6))
    with console.status(f"rendering {args.views} views of {args.num_gaussians:,} Gaussians on {device}"):
        out = scene.to(device).render(cams.to(device), poses.to(device), mode="RGB", background=(1.0, 1.0, 1.0))
    tiles = (out.images.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    args.output_dir.mkdir(parents=True, exist_ok=True)
    png = args.output_dir / "render.png"
    with atomic_open(png) as f:
        Image.fromarray(np.concatenate(list(tiles), axis=1)).save(f, format="PNG")
    ply = scene.save_ply(args.output_dir / "scene.ply")
    console.print(f"[green]wrote[/green] {ply} ({scene.num_gaussians:,} Gaussians) and {png}")


if __name__ == "__main__":
    main(tyro.cli(Args))
