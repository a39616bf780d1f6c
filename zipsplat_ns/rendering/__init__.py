"""One renderer interface, two backends: gsplat (CUDA) and dense pure torch (CPU).

Conventions shared by both backends (and the ZipSplat reference):

- cameras are OpenCV: ``viewmat`` = world-to-camera of a :class:`~zipsplat_ns.pose.Pose` (camera-to-world);
- pixel centres at ``+0.5``; all cameras of one scene share one image size;
- classic (non-antialiased) EWA splatting, ``eps2d = 0.3``, near 0.01, far 1e10, 16-pixel tiles (a Gaussian
  reaches the pixels of the tiles that its 3-sigma box overlaps; ``tile_size`` 32 quarters the tiles, so gsplat
  builds and sorts fewer (Gaussian, tile) pairs, but shades more per tile: on an H100 it made the activated mask's
  renders 2.2x slower, benchmarks/bench_train_mask_settings/; it changes only the faint tails beyond the box);
- modes: ``RGB`` colour; ``D`` *accumulated* depth ``sum_i w_i z_i``; ``ED`` expected depth ``D / alpha``;
  ``RGB+D`` and ``RGB+ED`` concatenate both (4 channels);
- the background is composited afterwards on the colour channels only: ``rgb + (1 - alpha) * background``;
  ``None`` means black, as in the reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, Literal, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from zipsplat_ns.camera import Camera, ensure_camera, size_range
from zipsplat_ns.pose import Pose, ensure_pose

if TYPE_CHECKING:
    from zipsplat_ns.gaussians import Gaussians

Backend = Literal["gsplat", "torch"]
RENDER_MODES = ("RGB", "D", "ED", "RGB+D", "RGB+ED")
MAX_TILE_SIZE = 32  # gsplat shades a tile with one thread per pixel, in one CUDA block (at most 1024 threads)


@dataclass
class RenderOutput:
    """Renders in channel-first layout.

    ``images``: ``(..., V, C, H, W)`` with C = 3 (RGB), 1 (D, ED) or 4 (RGB+D, RGB+ED);
    ``alphas``: ``(..., V, 1, H, W)``;
    ``info``: per-Gaussian, per-view ``radii (..., V, N)`` (0 = culled), ``means2d (..., V, N, 2)``,
    ``depths (..., V, N)`` (camera-space z), ``conics (..., V, N, 3)`` (``[a, b, c]`` of the inverse 2D covariance,
    gsplat's: the falloff at pixel offset ``d`` is ``exp(-(a dx^2 / 2 + b dx dy + c dy^2 / 2))``) and
    ``opacities (..., V, N)`` (the Gaussians' opacities, a broadcast view).
    """

    images: Tensor
    alphas: Tensor
    info: Dict[str, Tensor]
    mode: str

    @property
    def rgb(self) -> Optional[Tensor]:
        return self.images[..., :3, :, :] if "RGB" in self.mode else None

    @property
    def depth(self) -> Optional[Tensor]:
        if "D" not in self.mode:
            return None
        return self.images[..., -1:, :, :]


def default_backend(device: Union[torch.device, str]) -> Backend:
    """gsplat on CUDA devices, the torch renderer everywhere else."""
    return "gsplat" if torch.device(device).type == "cuda" else "torch"


def camera_image_size(cameras: Camera) -> Tuple[int, int]:
    """The ``(width, height)`` shared by all ``cameras``; raises if they differ or are not whole pixels."""
    # every check in one device -> host read (one synchronisation for CUDA cameras)
    w_max, w_min, h_max, h_min, frac = size_range(cameras.data).tolist()
    if w_max != w_min or h_max != h_min:
        raise ValueError("render: all cameras in one call must share the same image size")
    if frac > 1e-3:
        raise ValueError(f"render: image sizes must be whole pixels, got {cameras.size.reshape(-1, 2)[0].tolist()}")
    return int(round(w_max)), int(round(h_max))


def render(
    gaussians: "Gaussians",
    cameras: Union[Camera, Tensor],
    poses: Union[Pose, Tensor],
    *,
    mode: str = "RGB",
    background: Union[None, Sequence[float], Tensor] = None,
    sh_degree: Optional[int] = None,
    backend: Optional[Backend] = None,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    radius_clip: float = 0.0,
    image_size: Optional[Tuple[int, int]] = None,
    tile_size: int = 16,
) -> RenderOutput:
    """Render ``gaussians`` (batch shape ``()`` or ``(B,)``) into cameras of shape ``(V,)``/``(B, V)`` (or one camera).

    ``image_size``: ``(width, height)`` of every camera, for callers that have checked it already (the training step
    checks its batch once); without it the cameras' sizes are read from the device and checked here, which on a GPU
    waits for all queued work. ``tile_size``: pixels per tile side, 1 to 32 (gsplat runs one thread per pixel of a
    tile in a block, at most 1024).
    """
    if mode not in RENDER_MODES:
        raise ValueError(f"render: unknown mode {mode!r}; expected one of {RENDER_MODES}")
    if not 1 <= int(tile_size) <= MAX_TILE_SIZE or int(tile_size) != tile_size:
        raise ValueError(f"render: tile_size must be a whole number of pixels in [1, {MAX_TILE_SIZE}], got {tile_size}")
    cameras = ensure_camera(cameras, "cameras")
    poses = ensure_pose(poses, "poses")
    g = gaussians
    unbatched = len(g.batch_shape) == 0
    if len(g.batch_shape) > 1:
        raise ValueError(f"render: Gaussians must have batch shape () or (B,), got {tuple(g.batch_shape)}")
    single_view = len(cameras.shape) == (0 if unbatched else 1)
    if single_view:
        cameras, poses = cameras[None] if unbatched else cameras[:, None], poses[None] if unbatched else poses[:, None]
    if unbatched:
        g = g.add_batch_dim()
        cameras, poses = cameras[None], poses[None]
    B = g.batch_shape[0]
    if len(cameras.shape) != 2 or cameras.shape[0] != B:
        raise ValueError(
            f"render: cameras must have shape (V,) for unbatched Gaussians or (B={B}, V) for a batch; "
            f"got {tuple(cameras.shape)}"
        )
    if tuple(poses.shape) != tuple(cameras.shape):
        raise ValueError(f"render: poses shape {tuple(poses.shape)} != cameras shape {tuple(cameras.shape)}")
    if image_size is not None:
        width, height = (int(v) for v in image_size)
    else:
        width, height = camera_image_size(cameras)
    max_deg = g.sh_degree
    deg = max_deg if sh_degree is None else int(sh_degree)
    if not 0 <= deg <= max_deg:
        raise ValueError(f"render: sh_degree {deg} not in [0, {max_deg}] for these Gaussians")

    device = g.device
    backend = backend or default_backend(device)
    dtype = torch.float32
    means, quats, scales = g.means.to(dtype), g.quats.to(dtype), g.scales.to(dtype)
    opacities, sh = g.opacities.to(dtype), g.sh.to(dtype)
    viewmats = poses.to(device=device, dtype=dtype).Rt_inv
    Ks = cameras.to(device=device, dtype=dtype).K
    # Both backends rasterize accumulated depth; expected depth is derived below, identically for both.
    kw = dict(sh_degree=deg, mode=mode.replace("ED", "D"), near_plane=near_plane, far_plane=far_plane, eps2d=eps2d,
              radius_clip=radius_clip, tile_size=int(tile_size))  # fmt: skip

    if backend == "gsplat":
        if device.type != "cuda":
            raise RuntimeError(
                "render: the gsplat backend needs CUDA tensors (gsplat cannot render on a CPU); "
                "use backend='torch' or move the Gaussians to a GPU"
            )
        from zipsplat_ns.rendering.gsplat_backend import render_gsplat

        colors, alphas, info = render_gsplat(means, quats, scales, opacities, sh, viewmats, Ks, width, height, **kw)
    elif backend == "torch":
        from zipsplat_ns.rendering.torch_backend import render_scene_torch

        outs = [
            render_scene_torch(means[b], quats[b], scales[b], opacities[b], sh[b], viewmats[b], Ks[b], width, height, **kw)
            for b in range(B)
        ]
        colors = torch.stack([o[0] for o in outs])
        alphas = torch.stack([o[1] for o in outs])
        info = {k: torch.stack([o[2][k] for o in outs]) for k in outs[0][2]}
    else:
        raise ValueError(f"render: unknown backend {backend!r}; expected 'gsplat' or 'torch'")

    info["opacities"] = opacities[:, None, :].expand(B, cameras.shape[1], opacities.shape[-1])
    if mode.endswith("ED"):
        # Expected depth = accumulated depth / alpha (0 where nothing was hit).
        d = colors[..., -1:]
        colors = torch.cat([colors[..., :-1], torch.where(alphas > 0, d / alphas.clamp_min(1e-10), torch.zeros_like(d))], -1)
    if background is not None and "RGB" in mode:
        bg = torch.as_tensor(background, dtype=colors.dtype, device=colors.device)
        Bc, Vc = colors.shape[:2]  # colors: (B, V, H, W, C), whatever the input's batch shapes
        lead = tuple(bg.shape[:-1])
        # one colour, one per view (V, 3), or one per scene and view (B, V, 3), as the cameras are laid out
        allowed = [(), (Vc,)] + ([(Bc, Vc)] if not unbatched else [])
        if bg.ndim == 0 or bg.shape[-1] != 3 or lead not in allowed:
            raise ValueError(
                f"render: background must be (3,) RGB, or one RGB per camera ({'(V, 3)' if unbatched else '(V, 3) or (B, V, 3)'}"
                f" for cameras of shape {tuple(cameras.shape)}), got shape {tuple(bg.shape)}"
            )
        bg = bg.reshape((1,) * (3 - bg.ndim) + lead + (3,))[..., None, None, :]  # (1|B, 1|V, 1, 1, 3)
        rgb = colors[..., :3] + (1.0 - alphas) * bg
        colors = torch.cat([rgb, colors[..., 3:]], -1)

    images = colors.permute(0, 1, 4, 2, 3)  # (B, V, C, H, W)
    alphas = alphas.permute(0, 1, 4, 2, 3)
    if single_view:
        images, alphas, info = images[:, 0], alphas[:, 0], {k: v[:, 0] for k, v in info.items()}
    if unbatched:
        images, alphas, info = images[0], alphas[0], {k: v[0] for k, v in info.items()}
    return RenderOutput(images=images, alphas=alphas, info=info, mode=mode)


__all__ = ["render", "camera_image_size", "RenderOutput", "default_backend", "RENDER_MODES", "MAX_TILE_SIZE", "Backend"]
