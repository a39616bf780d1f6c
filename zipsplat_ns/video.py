"""Turntable and wiggle videos of a Gaussian scene (reference §8.2).

The camera orbits the per-axis median of the means at ``1.2 x`` the 0.9-quantile of the means' distance to it,
with a ``55`` degree field of view on both axes and a white background, in the scene's own frame (our OpenCV
convention: azimuth = elevation = 0 is the reference view's side, world up = -y, see :meth:`Pose.orbit`).

- ``turntable``: azimuth ``sweep_deg * t`` for ``t = linspace(0, 1, T)``, constant elevation;
- ``wiggle``: azimuth ``16 sin(2 pi t)``, elevation ``2 sin(4 pi t)`` degrees (a small look-around).

Frames are rendered in chunks and written as H.264 (``yuv420p``) through imageio, into a temporary file that is
renamed into place only when complete.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Literal, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from zipsplat_ns.camera import Camera
from zipsplat_ns.gaussians import Gaussians
from zipsplat_ns.pose import Pose

VideoKind = Literal["turntable", "wiggle"]


def orbit_path(
    gaussians: Gaussians,
    num_frames: int,
    kind: VideoKind = "turntable",
    *,
    sweep_deg: float = 360.0,
    elevation_deg: float = 0.0,
) -> Tuple[torch.Tensor, float, Pose]:
    """``(centre, radius, poses (T,))`` of the video camera around unbatched ``gaussians``."""
    if gaussians.batch_shape:
        raise ValueError(f"orbit_path needs unbatched Gaussians, got batch shape {tuple(gaussians.batch_shape)}")
    if gaussians.num_gaussians == 0:
        raise ValueError("orbit_path: the scene has no Gaussians")
    if num_frames < 1:
        raise ValueError(f"orbit_path: num_frames must be >= 1, got {num_frames}")
    means = gaussians.means.detach().float().cpu()
    centre = means.median(0).values
    radius = 1.2 * float(torch.quantile((means - centre).norm(dim=-1), 0.9))
    if not math.isfinite(radius) or radius <= 0:
        raise ValueError(f"orbit_path: degenerate scene extent (radius {radius})")
    t = torch.linspace(0.0, 1.0, num_frames)
    if kind == "turntable":
        az, el = sweep_deg * t, torch.full_like(t, float(elevation_deg))
    elif kind == "wiggle":
        az, el = 16.0 * torch.sin(2 * math.pi * t), 4.0 * torch.sin(4 * math.pi * t) * 0.5
    else:
        raise ValueError(f"unknown video kind {kind!r}; choose turntable or wiggle")
    return centre, radius, Pose.orbit(centre, radius, az, el)


def render_video(
    gaussians: Gaussians,
    path: Union[str, Path],
    kind: VideoKind = "turntable",
    *,
    num_frames: int = 180,
    size: int = 512,
    fov_deg: float = 55.0,
    fps: int = 30,
    background: Sequence[float] = (1.0, 1.0, 1.0),
    chunk: int = 16,
    backend: Optional[str] = None,
    progress: bool = True,
) -> Path:
    """Render an orbit video of unbatched ``gaussians`` to ``path`` (mp4); returns the path."""
    import imageio.v2 as imageio
    from rich.progress import Progress

    path = Path(path)
    _, _, poses = orbit_path(gaussians, num_frames, kind)
    cam = Camera.from_fov(math.radians(fov_deg), math.radians(fov_deg), w=size, h=size)
    dev = gaussians.device
    tmp = path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix}")
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = imageio.get_writer(
        tmp, fps=fps, codec="libx264", pixelformat="yuv420p", macro_block_size=1, quality=8, ffmpeg_log_level="error"
    )
    try:
        with Progress(disable=not progress, transient=True) as prog:
            task = prog.add_task(f"{kind} video", total=num_frames)
            for s in range(0, num_frames, chunk):
                p = Pose(poses.data[s : s + chunk]).to(dev)
                c = Camera(cam.data.expand(p.shape[0], 6)).to(dev)
                with torch.no_grad():
                    out = gaussians.render(c, p, mode="RGB", background=background, backend=backend)
                frames = (out.images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
                for f in frames:
                    writer.append_data(np.ascontiguousarray(f))
                prog.advance(task, len(frames))
        writer.close()
        os.replace(tmp, path)
    except BaseException:
        try:
            writer.close()
        finally:
            tmp.unlink(missing_ok=True)
        raise
    return path


__all__ = ["VideoKind", "orbit_path", "render_video"]
