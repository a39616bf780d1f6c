"""Pure-torch Gaussian splatting renderer for CPUs (and a differentiable reference anywhere).

It follows the same image-formation model as gsplat's "classic" rasterizer so the two backends agree:

1. EWA projection: camera-space mean ``p``, 2D covariance ``J W Sigma W^T J^T + eps2d I`` with the perspective Jacobian
   ``J`` evaluated at ``p`` whose x/y are clamped to 1.3x the image frustum (avoids huge splats at grazing angles).
2. Culling: outside ``[near, far]``, non-positive-definite 2D covariance, or a 3-sigma box (radius from the largest
   eigenvalue, ``ceil(3 sqrt(lambda_max))``) that misses the image. The box also limits a Gaussian to the tiles
   (16x16 pixels unless ``tile_size`` says otherwise) it overlaps, as a tile rasterizer does: a tile size changes
   only the faint tails (beyond the 3-sigma box, alpha below ``0.011 o``) that a covered tile lets through.
3. Per pixel (centre at ``+0.5``): ``alpha = min(0.999, o * exp(-0.5 d^T Sigma^-1 d))``, contributions with
   ``alpha < 1/255`` dropped, front-to-back compositing in depth order with early termination once the transmittance
   would fall to 1e-4.

Dense per (pixel, Gaussian) evaluation is done per block of tiles with only the Gaussians overlapping the block, so a
256x256 image with 50k Gaussians needs a few hundred MB, not the (pixels x Gaussians) matrix. With gradients, large
blocks are recomputed in the backward pass instead of keeping their dense intermediates (activation checkpointing):
a differentiable render (training, pose refinement) then also needs only about one block's memory.
"""

from __future__ import annotations

import math
from typing import Dict, Tuple

import torch
import torch.utils.checkpoint
from jaxtyping import Float
from torch import Tensor

from zipsplat_ns.rendering.sh import eval_sh

TILE = 16  # gsplat's default tile size
ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.999
T_MIN = 1e-4
# differentiable blocks with at least this many (pixel, Gaussian) pairs are recomputed in the backward pass
CHECKPOINT_MIN_ENTRIES = 1 << 16


def quat_scale_to_covar(quats: Float[Tensor, "N 4"], scales: Float[Tensor, "N 3"]) -> Float[Tensor, "N 3 3"]:
    """World covariance ``R S S R^T`` from wxyz quaternions (normalised here) and linear scales."""
    from zipsplat_ns.pose import quat_to_rotmat

    R = quat_to_rotmat(quats)
    M = R * scales[..., None, :]
    return M @ M.transpose(-1, -2)


def project_gaussians(
    means: Float[Tensor, "N 3"],
    covars: Float[Tensor, "N 3 3"],
    viewmat: Float[Tensor, "4 4"],
    K: Float[Tensor, "3 3"],
    width: int,
    height: int,
    *,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    radius_clip: float = 0.0,
) -> Dict[str, Tensor]:
    """EWA-project Gaussians into one camera. Returns means2d, conics, depths, radii (0 = culled)."""
    R, t = viewmat[:3, :3], viewmat[:3, 3]
    p = means @ R.T + t
    x, y, z = p.unbind(-1)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]

    # Jacobian of the pinhole projection at the (frustum-clamped) camera-space mean.
    tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
    lim_x_pos, lim_x_neg = (width - cx) / fx + 0.3 * tan_fovx, cx / fx + 0.3 * tan_fovx
    lim_y_pos, lim_y_neg = (height - cy) / fy + 0.3 * tan_fovy, cy / fy + 0.3 * tan_fovy
    z_safe = torch.where(z.abs() > 1e-12, z, torch.full_like(z, 1e-12))
    rz = 1.0 / z_safe
    tx = z * torch.minimum(torch.maximum(x * rz, -lim_x_neg), lim_x_pos)
    ty = z * torch.minimum(torch.maximum(y * rz, -lim_y_neg), lim_y_pos)
    zeros = torch.zeros_like(z)
    J = torch.stack(
        [fx * rz, zeros, -fx * tx * rz * rz, zeros, fy * rz, -fy * ty * rz * rz], -1
    ).reshape(-1, 2, 3)
    cov_cam = R @ covars @ R.T
    cov2d = J @ cov_cam @ J.transpose(-1, -2)
    a = cov2d[:, 0, 0] + eps2d
    b = cov2d[:, 0, 1]
    c = cov2d[:, 1, 1] + eps2d
    det = a * c - b * b
    det_safe = torch.where(det > 0, det, torch.ones_like(det))
    conics = torch.stack([c / det_safe, -b / det_safe, a / det_safe], -1)
    means2d = torch.stack([fx * x * rz + cx, fy * y * rz + cy], -1)

    with torch.no_grad():
        mid = 0.5 * (a + c)
        lam = mid + torch.sqrt(torch.clamp(mid * mid - det, min=0.01))
        radius = torch.ceil(3.0 * torch.sqrt(lam))
        valid = (z > near_plane) & (z < far_plane) & (det > 0) & (radius > radius_clip)
        mx, my = means2d[:, 0], means2d[:, 1]
        on_screen = (mx + radius > 0) & (mx - radius < width) & (my + radius > 0) & (my - radius < height)
        valid &= on_screen & torch.isfinite(means2d).all(-1)
        radii = torch.where(valid, radius, torch.zeros_like(radius)).to(torch.int32)
    return {"means2d": means2d, "conics": conics, "depths": z, "radii": radii}


def rasterize_dense(
    means2d: Float[Tensor, "N 2"],
    conics: Float[Tensor, "N 3"],
    opacities: Float[Tensor, "N"],
    features: Float[Tensor, "N C"],
    depths: Float[Tensor, "N"],
    radii: Tensor,
    width: int,
    height: int,
    *,
    max_entries: int = 1 << 23,
    tile_size: int = TILE,
) -> Tuple[Float[Tensor, "H W C"], Float[Tensor, "H W 1"]]:
    """Composite ``features`` front to back over the image; returns (features, alpha)."""
    tile = int(tile_size)  # pixels per tile side (the rasterizer's work unit, and the tails it lets through)
    device, dtype = means2d.device, means2d.dtype
    C = features.shape[-1]
    out = torch.zeros(height, width, C, device=device, dtype=features.dtype)
    out_alpha = torch.zeros(height, width, 1, device=device, dtype=dtype)
    keep = torch.nonzero(radii > 0).squeeze(-1)
    if keep.numel() == 0:
        return out, out_alpha
    order = keep[torch.argsort(depths[keep].detach(), stable=True)]
    m2d, con, opa, feat = means2d[order], conics[order], opacities[order], features[order]
    with torch.no_grad():
        r = radii[order].to(dtype)
        tiles_x, tiles_y = math.ceil(width / tile), math.ceil(height / tile)
        # Tile range [tmin, tmax) overlapped by each Gaussian's 3-sigma box, as in a tile rasterizer.
        tmin_x = torch.floor((m2d[:, 0] - r) / tile).clamp(0, tiles_x)
        tmax_x = torch.ceil((m2d[:, 0] + r) / tile).clamp(0, tiles_x)
        tmin_y = torch.floor((m2d[:, 1] - r) / tile).clamp(0, tiles_y)
        tmax_y = torch.ceil((m2d[:, 1] + r) / tile).clamp(0, tiles_y)

    block = 4  # tiles per block side; shrunk to 1 when a block overlaps too many Gaussians
    for by0 in range(0, tiles_y, block):
        for bx0 in range(0, tiles_x, block):
            by1, bx1 = min(by0 + block, tiles_y), min(bx0 + block, tiles_x)
            sel = (tmin_x < bx1) & (tmax_x > bx0) & (tmin_y < by1) & (tmax_y > by0)
            if not bool(sel.any()):
                continue
            n_sel = int(sel.sum())
            npx = (by1 - by0) * (bx1 - bx0) * tile * tile
            if n_sel * npx > max_entries and block > 1:
                spans = [(ty, tx) for ty in range(by0, by1) for tx in range(bx0, bx1)]
                sizes = [(ty, ty + 1, tx, tx + 1) for ty, tx in spans]
            else:
                sizes = [(by0, by1, bx0, bx1)]
            for ty0, ty1, tx0, tx1 in sizes:
                _composite_block(
                    out, out_alpha, m2d, con, opa, feat, (tmin_x, tmax_x, tmin_y, tmax_y),
                    ty0, ty1, tx0, tx1, width, height, tile,
                )  # fmt: skip
    return out, out_alpha


def _composite_block(out, out_alpha, m2d, con, opa, feat, tile_range, ty0, ty1, tx0, tx1, width, height, tile) -> None:
    """Composite the Gaussians overlapping tiles ``[ty0, ty1) x [tx0, tx1)`` into ``out`` / ``out_alpha``.

    With gradients, the dense (pixels x Gaussians) intermediates of a large block are not kept for the backward pass:
    the block is recomputed there (``torch.utils.checkpoint``), so the memory of a differentiable render is that of
    one block, not of every block of every view (tens of GB for 15k Gaussians at 252 px otherwise).
    """
    tmin_x, tmax_x, tmin_y, tmax_y = tile_range
    sel = (tmin_x < tx1) & (tmax_x > tx0) & (tmin_y < ty1) & (tmax_y > ty0)
    idx = torch.nonzero(sel).squeeze(-1)  # still sorted by depth
    if idx.numel() == 0:
        return
    y0, y1 = ty0 * tile, min(ty1 * tile, height)
    x0, x1 = tx0 * tile, min(tx1 * tile, width)
    boxes = torch.stack([tmin_x[idx], tmax_x[idx], tmin_y[idx], tmax_y[idx]], -1)
    args = (m2d[idx], con[idx], opa[idx], feat[idx], boxes, y0, y1, x0, x1, tile)
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in args[:4])
    if needs_grad and idx.numel() * (y1 - y0) * (x1 - x0) >= CHECKPOINT_MIN_ENTRIES:
        color, acc = torch.utils.checkpoint.checkpoint(_shade_pixels, *args, use_reentrant=False)
    else:
        color, acc = _shade_pixels(*args)
    out[y0:y1, x0:x1] = color.reshape(y1 - y0, x1 - x0, -1)
    out_alpha[y0:y1, x0:x1] = acc.reshape(y1 - y0, x1 - x0, 1)


def _shade_pixels(g_m, g_c, g_o, g_f, boxes, y0: int, y1: int, x0: int, x1: int, tile: int) -> Tuple[Tensor, Tensor]:
    """Front-to-back compositing of depth-sorted Gaussians over the pixels ``[y0, y1) x [x0, x1)``: ``(P, C), (P, 1)``."""
    ys = torch.arange(y0, y1, device=g_m.device, dtype=g_m.dtype)
    xs = torch.arange(x0, x1, device=g_m.device, dtype=g_m.dtype)
    py, px = torch.meshgrid(ys, xs, indexing="ij")
    px, py = px.reshape(-1), py.reshape(-1)  # (P,)
    dx = (px + 0.5)[:, None] - g_m[None, :, 0]
    dy = (py + 0.5)[:, None] - g_m[None, :, 1]
    power = -0.5 * (g_c[None, :, 0] * dx * dx + g_c[None, :, 2] * dy * dy) - g_c[None, :, 1] * dx * dy
    alpha = torch.clamp(g_o[None, :] * torch.exp(power), max=ALPHA_MAX)
    with torch.no_grad():
        # A Gaussian only touches pixels in the tiles its box overlaps, and only with a non-negligible alpha.
        tpx, tpy = (px // tile)[:, None], (py // tile)[:, None]
        inside = (tpx >= boxes[None, :, 0]) & (tpx < boxes[None, :, 1])
        inside &= (tpy >= boxes[None, :, 2]) & (tpy < boxes[None, :, 3])
        use = inside & (power <= 0) & (alpha >= ALPHA_MIN)
    alpha = torch.where(use, alpha, torch.zeros_like(alpha))
    one_minus = 1.0 - alpha
    T_after = torch.cumprod(one_minus, dim=1)
    with torch.no_grad():
        # Early termination: stop before the Gaussian that would drop transmittance to T_MIN (it is not added).
        stop = T_after <= T_MIN
        alive = torch.cumsum(stop.to(torch.int32), dim=1) == 0
    alpha = torch.where(alive, alpha, torch.zeros_like(alpha))
    T_before = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1.0 - alpha[:, :-1]], 1), dim=1)
    w = alpha * T_before  # (P, G)
    return w.to(g_f.dtype) @ g_f, w.sum(1, keepdim=True)


def render_scene_torch(
    means: Float[Tensor, "N 3"],
    quats: Float[Tensor, "N 4"],
    scales: Float[Tensor, "N 3"],
    opacities: Float[Tensor, "N"],
    sh: Float[Tensor, "N K 3"],
    viewmats: Float[Tensor, "V 4 4"],
    Ks: Float[Tensor, "V 3 3"],
    width: int,
    height: int,
    *,
    sh_degree: int,
    mode: str,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    radius_clip: float = 0.0,
    tile_size: int = TILE,
) -> Tuple[Float[Tensor, "V H W C"], Float[Tensor, "V H W 1"], Dict[str, Tensor]]:
    """Render one scene into V cameras (channels per ``mode``; depth channels are *accumulated* depth)."""
    covars = quat_scale_to_covar(quats, scales)
    colors_all, alphas_all, info = [], [], {"radii": [], "means2d": [], "depths": [], "conics": []}
    for v in range(viewmats.shape[0]):
        proj = project_gaussians(
            means, covars, viewmats[v], Ks[v], width, height,
            near_plane=near_plane, far_plane=far_plane, eps2d=eps2d, radius_clip=radius_clip,
        )  # fmt: skip
        feats = []
        if "RGB" in mode:
            cam_center = -viewmats[v, :3, :3].T @ viewmats[v, :3, 3]
            feats.append(eval_sh(sh, means - cam_center, sh_degree))
        if "D" in mode:
            feats.append(proj["depths"][:, None])
        features = torch.cat(feats, -1)
        img, alpha = rasterize_dense(
            proj["means2d"], proj["conics"], opacities, features, proj["depths"], proj["radii"], width, height,
            tile_size=tile_size,
        )
        colors_all.append(img)
        alphas_all.append(alpha)
        for k in info:
            info[k].append(proj[k])
    return torch.stack(colors_all), torch.stack(alphas_all), {k: torch.stack(v) for k, v in info.items()}
