"""Training losses of ZipSplat (reference §4.1), per sample then averaged over the batch.

Every term is computed per sample (shape ``(B,)``) and averaged over the batch. With ``LossConfig()`` defaults::

    total = L1 + 0.05 LPIPS + scale_pen + opacity_pen + location_pen + 0.1 chamfer + 0.01 depth

- ``l1``: mean over (target views, C, H, W) of ``|render_rgb - gt|``.
- ``lpips``: LPIPS-VGG (:mod:`zipsplat_ns.lpips`) of the target views, both images clipped to [0, 1],
  ``normalize=True``, averaged over views.
- ``scale_penalty``: ``mean(relu(s - 0.1)^2) + mean(relu(1e-6 - s)^2)`` over all (N, 3) scales.
- ``opacity_penalty``: ``mean(relu(0.01 - o)^2)`` over N.
- ``location_penalty``: ``mean(relu(|mu| - 10)^2)`` over (N, 3).
- ``chamfer`` (one-directional, Gaussians -> GT points; needs depth): the GT depth of the target views is unprojected
  with *integer* pixel coordinates ``x = (p - c) / f * d`` (``p = 0 .. W-1``, no +0.5, as the reference), moved to
  the world frame by the target camera-to-world poses, and kept where ``d >= 0``. (The reference pads the point
  lists of a batch to one length by repeating random valid points; here pixels without depth become a point at
  1e18 instead, which keeps every nearest distance and needs no host synchronisation.) Then::

      chamfer = mean_n min_m ||clamp(mu_n, -10, 10) - P_m||^2  +  0.1 * mean(sqrt(relu(|mu| - 10 + 1e-6) + 1e-8))

  where ``mu`` are the means with the *activated* Gaussians detached (see below). The nearest neighbour is searched
  without gradient (:mod:`zipsplat_ns.nn_search`: Triton kernels on CUDA, chunked ``torch.cdist`` elsewhere); the
  squared distance to the chosen point is then recomputed with gradient (the gradient of a min is the gradient at its
  argmin).
- ``depth``: masked L1 between the rendered *accumulated* depth (``"D"``: sum_i w_i z_i) and the GT depth of the
  target views: ``sum(|D - d| [d >= 0]) / max(count, 1)`` per sample.

The geometry terms (``chamfer``, ``depth``) are 0 for samples without depth (``has_depth`` false) and the chamfer
term also for samples with no valid depth pixel.

Activated Gaussians
-------------------
Stock gsplat has no "activated" flag (the reference uses a gsplat fork). Here a Gaussian ``n`` is **activated in a
view** when all of these hold, read from that view's :class:`~zipsplat_ns.rendering.RenderOutput`:

1. it was rasterised: ``radii[n] > 0`` (not culled) and its camera depth ``z_n > near`` (``activated_near``, 0.01);
2. its projected centre ``(u, v) = means2d[n]`` lies in the image: ``0 <= u < W`` and ``0 <= v < H``; its centre
   pixel is ``(floor(v), floor(u))`` (pixel centres at +0.5);
3. it is drawn at that pixel: the rasterizer's alpha of the Gaussian at the pixel centre, ``o_n exp(-sigma)`` with
   ``sigma = a dx^2 / 2 + b dx dy + c dy^2 / 2`` (its conic, ``d`` = pixel centre - ``(u, v)``), is at least 1/255 and
   ``sigma >= 0``, the rasterizer's own skip rule (a Gaussian too faint to be drawn there gets no image gradient, so it
   must not be detached);
4. it is not occluded at that pixel: ``z_n <= ED * (1 + rel_tol) + abs_tol``, where ``ED = D / alpha`` is the
   rendered *expected* depth there (``rel_tol = 0.05``, ``abs_tol = 0.01`` by default). Pixels with
   ``alpha < 1e-6`` count as empty: nothing occludes there.

A Gaussian is activated when it is activated in **any** rendered context or target view (OR over views). Renders
used for the mask must contain depth (mode ``"D"``, ``"RGB+D"``, ...). The mask is computed without gradient.
Activated Gaussians enter the chamfer term through ``means.detach()``, so chamfer only moves Gaussians that no image
sees at their centre.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from zipsplat_ns.camera import Camera
    from zipsplat_ns.gaussians import Gaussians
    from zipsplat_ns.pose import Pose
    from zipsplat_ns.rendering import RenderOutput

LOSS_NAMES = ("l1", "lpips", "scale_penalty", "opacity_penalty", "location_penalty", "chamfer", "depth")


@dataclass
class LossConfig:
    """Weights and constants of the ZipSplat loss (defaults = the reference, ``configs/model/zipsplat.yaml``)."""

    l1_weight: float = 1.0
    lpips_weight: float = 0.05
    scale_penalty_weight: float = 1.0
    opacity_penalty_weight: float = 1.0
    location_penalty_weight: float = 1.0
    chamfer_weight: float = 0.1
    depth_weight: float = 0.01

    max_scale: float = 0.1
    """Scales above this are penalised quadratically."""
    min_scale: float = 1e-6
    """Scales below this are penalised quadratically."""
    min_opacity: float = 0.01
    """Opacities below this are penalised quadratically."""
    max_location: float = 10.0
    """Mean coordinates beyond +-this are penalised quadratically (location penalty)."""
    chamfer_max_coord: float = 10.0
    """Means are clamped to +-this before the chamfer distance."""
    chamfer_out_of_range_weight: float = 0.1
    """Weight of ``mean(sqrt(relu(|mu| - max_coord + 1e-6) + 1e-8))`` inside the chamfer term."""
    chamfer_chunk_elements: Optional[int] = None
    """Distance-matrix elements per chunk of the cdist nearest-neighbour search (None: 2^24 on CPU, 2^27 on CUDA)."""

    detach_activated: bool = True
    """Detach the means of activated Gaussians in the chamfer term."""
    activated_near: float = 0.01
    activated_rel_tol: float = 0.05
    activated_abs_tol: float = 0.01


@dataclass
class LossTerms:
    """``weighted``: the terms to sum (scalars with gradient, weights applied, batch-averaged; keys ``LOSS_NAMES``).
    ``raw``: detached, unweighted batch means of the same terms, plus ``activated_fraction`` and
    ``geometry_fraction`` (share of samples with depth), for logging.
    ``per_sample``: unweighted ``(B,)`` values of each term (with gradient)."""

    weighted: Dict[str, Tensor]
    raw: Dict[str, Tensor]
    per_sample: Dict[str, Tensor] = field(default_factory=dict)

    @property
    def total(self) -> Tensor:
        return torch.stack(list(self.weighted.values())).sum()


# ----------------------------------------------------------------------------------------------- penalties
def scale_penalty(scales: Tensor, max_scale: float = 0.1, min_scale: float = 1e-6) -> Tensor:
    """``mean(relu(s - max)^2) + mean(relu(min - s)^2)`` over the last two dims ``(N, 3)``; shape ``(...)``."""
    return (F.relu(scales - max_scale) ** 2).mean((-2, -1)) + (F.relu(min_scale - scales) ** 2).mean((-2, -1))


def opacity_penalty(opacities: Tensor, min_opacity: float = 0.01) -> Tensor:
    """``mean(relu(min - o)^2)`` over the last dim ``N``; shape ``(...)``."""
    return (F.relu(min_opacity - opacities) ** 2).mean(-1)


def location_penalty(means: Tensor, max_location: float = 10.0) -> Tensor:
    """``mean(relu(|mu| - max)^2)`` over ``(N, 3)``; shape ``(...)``."""
    return (F.relu(means.abs() - max_location) ** 2).mean((-2, -1))


# ------------------------------------------------------------------------------------------------ photometric
def l1_loss(pred: Tensor, gt: Tensor) -> Tensor:
    """Mean ``|pred - gt|`` over (V, C, H, W) of ``(B, V, C, H, W)``; shape ``(B,)``."""
    return (pred - gt).abs().flatten(1).mean(1)


def lpips_loss(pred: Tensor, gt: Tensor, lpips_fn: Optional[Callable[[Tensor, Tensor], Tensor]] = None) -> Tensor:
    """LPIPS-VGG of ``(B, V, 3, H, W)`` clipped to [0, 1], averaged over views; shape ``(B,)``.

    ``lpips_fn(pred, gt)`` takes ``(N, 3, H, W)`` images in [0, 1] and returns ``(N,)``; default: the cached
    :func:`zipsplat_ns.lpips.get_lpips_vgg` network of the input's device.
    """
    B, V = pred.shape[:2]
    p = pred.clamp(0, 1).reshape(B * V, *pred.shape[2:])
    g = gt.clamp(0, 1).reshape(B * V, *gt.shape[2:])
    if lpips_fn is None:
        from zipsplat_ns.lpips import get_lpips_vgg

        net = get_lpips_vgg(pred.device)
        d = net(p.float(), g.float(), normalize=True)
    else:
        d = lpips_fn(p, g)
    return d.reshape(B, V).mean(1)


# ------------------------------------------------------------------------------------------------------ depth
def _depth_bvhw(depths: Tensor) -> Tensor:
    if depths.ndim == 5:
        if depths.shape[2] != 1:
            raise ValueError(f"depth: expected (B, V, 1, H, W) or (B, V, H, W), got {tuple(depths.shape)}")
        depths = depths[:, :, 0]
    if depths.ndim != 4:
        raise ValueError(f"depth: expected (B, V, 1, H, W) or (B, V, H, W), got {tuple(depths.shape)}")
    return depths


def valid_depth_mask(depths: Tensor) -> Tensor:
    """``d >= 0`` (and finite): the reference's validity rule."""
    return torch.isfinite(depths) & (depths >= 0)


def depth_l1_loss(rendered: Tensor, gt: Tensor) -> Tensor:
    """Masked L1 per sample: ``sum(|r - g| * valid) / max(count, 1)``, ``valid = g >= 0``; shape ``(B,)``."""
    r, g = _depth_bvhw(rendered), _depth_bvhw(gt)
    valid = valid_depth_mask(g)
    diff = torch.where(valid, (r - torch.where(valid, g, torch.zeros_like(g))).abs(), torch.zeros_like(r))
    return diff.flatten(1).sum(1) / valid.flatten(1).sum(1).clamp_min(1).to(r.dtype)


# ---------------------------------------------------------------------------------------------------- chamfer
def unproject_depth(depths: Tensor, cameras: "Camera", poses: "Pose") -> Tensor:
    """World points of ``(B, V, H, W)`` depth maps: ``R @ ((p - c) / f * d, d) + t``, integer pixel coords.

    ``cameras``/``poses`` have shape ``(B, V)`` (camera-to-world, OpenCV). Returns ``(B, V, H, W, 3)``.
    """
    d = _depth_bvhw(depths)
    B, V, H, W = d.shape
    dt, dev = d.dtype, d.device
    f = cameras.f.to(device=dev, dtype=dt)[..., None, None, :]  # (B, V, 1, 1, 2)
    c = cameras.c.to(device=dev, dtype=dt)[..., None, None, :]
    u = torch.arange(W, device=dev, dtype=dt).view(1, 1, 1, W).expand(B, V, H, W)
    v = torch.arange(H, device=dev, dtype=dt).view(1, 1, H, 1).expand(B, V, H, W)
    x = (u - c[..., 0]) / f[..., 0] * d
    y = (v - c[..., 1]) / f[..., 1] * d
    cam = torch.stack([x, y, d], -1)  # (B, V, H, W, 3)
    R = poses.R.to(device=dev, dtype=dt)  # (B, V, 3, 3)
    t = poses.t.to(device=dev, dtype=dt)
    return torch.einsum("bvij,bvhwj->bvhwi", R, cam) + t[:, :, None, None, :]


INVALID_POINT = 1e18
"""Coordinate of the stand-in for a GT pixel without depth: its squared distance to any clamped mean (~3e36) is
finite and never the nearest while the sample has one valid point."""


def gt_points_from_depth(depths: Tensor, cameras: "Camera", poses: "Pose") -> "tuple[Tensor, Tensor]":
    """GT points of every pixel per sample, pixels without depth moved far away; no host synchronisation.

    Returns ``points (B, V*H*W, 3)`` and ``counts (B,)`` (valid points; samples with 0 must be masked by the caller).
    The reference compacts the valid points and pads the lists to a common length by repeating random valid points;
    both keep every nearest distance exactly (a repeat or a point at :data:`INVALID_POINT` never changes a minimum
    over a non-empty valid set), and this form needs neither the compaction's data-dependent sizes nor a per-sample
    loop.
    """
    d = _depth_bvhw(depths)
    pts = unproject_depth(d, cameras, poses).flatten(1, 3)  # (B, V*H*W, 3)
    valid = valid_depth_mask(d).flatten(1)
    out = torch.where(valid[..., None], pts, torch.full_like(pts, INVALID_POINT))
    return out, valid.sum(1)


def one_sided_chamfer(src: Tensor, tgt: Tensor, chunk_elements: Optional[int] = None) -> Tensor:
    """``mean_n min_m ||src_n - tgt_m||^2`` per batch item; ``(B, N, 3), (B, M, 3) -> (B,)``; gradient w.r.t. src.

    The nearest points are found without gradient (:func:`zipsplat_ns.nn_search.nearest_indices`); the distance to
    them is differentiated, which is the gradient of the min.
    """
    from zipsplat_ns.nn_search import nearest_indices

    idx = nearest_indices(src, tgt, chunk_elements)
    nn_pts = torch.gather(tgt, 1, idx[..., None].expand(-1, -1, 3)).to(src.dtype)
    return ((src - nn_pts) ** 2).sum(-1).mean(-1)


def chamfer_loss(
    means: Tensor,
    points: Tensor,
    *,
    max_coord: float = 10.0,
    out_of_range_weight: float = 0.1,
    chunk_elements: int = 1 << 24,
) -> Tensor:
    """The reference chamfer term per sample (see module docstring): ``(B, N, 3), (B, M, 3) -> (B,)``.

    ``means`` should already have the activated Gaussians detached.
    """
    clamped = means.clamp(-max_coord, max_coord)
    d = one_sided_chamfer(clamped, points, chunk_elements)
    extra = torch.sqrt(F.relu(means.abs() - max_coord + 1e-6) + 1e-8).mean((-2, -1))
    return d + out_of_range_weight * extra


# -------------------------------------------------------------------------------------------------- activated
@torch.no_grad()
def activated_in_views(
    render: "RenderOutput", *, near: float = 0.01, rel_tol: float = 0.05, abs_tol: float = 0.01, alpha_eps: float = 1e-6
) -> Tensor:
    """Per-view activation ``(B, V, N)`` (bool) of a batched render; see the module docstring for the definition."""
    if render.depth is None:
        raise ValueError(
            f"activated mask: the render (mode {render.mode!r}) has no depth channel; render with 'D' or 'RGB+D'"
        )
    acc = render.depth[..., 0, :, :].float()  # (B, V, H, W) accumulated depth (for ED renders: expected depth)
    alpha = render.alphas[..., 0, :, :].float()
    if render.mode.endswith("ED"):
        expected = acc
    else:
        expected = acc / alpha.clamp_min(1e-10)
    expected = torch.where(alpha >= alpha_eps, expected, torch.full_like(expected, float("inf")))
    info = render.info
    missing = [k for k in ("means2d", "depths", "radii", "conics", "opacities") if k not in info]
    if missing:
        raise ValueError(f"activated mask: the render's info lacks {missing} (render it with zipsplat_ns.rendering.render)")
    m2d, z, radii = info["means2d"].float(), info["depths"].float(), info["radii"]
    if radii.ndim == z.ndim + 1:
        radii = radii.amax(-1)
    if m2d.ndim != 4 or z.shape != m2d.shape[:-1]:
        raise ValueError(f"activated mask: expected batched info (B, V, N, 2), got means2d {tuple(m2d.shape)}")
    H, W = expected.shape[-2:]
    u, v = m2d[..., 0], m2d[..., 1]
    inside = (u >= 0) & (u < W) & (v >= 0) & (v < H) & torch.isfinite(u) & torch.isfinite(v)
    px = torch.where(inside, u, torch.zeros_like(u)).floor().long().clamp(0, W - 1)
    py = torch.where(inside, v, torch.zeros_like(v)).floor().long().clamp(0, H - 1)
    ed = torch.gather(expected.flatten(2), 2, py * W + px)  # (B, V, N)
    visible = z <= ed * (1.0 + rel_tol) + abs_tol
    # drawn at its centre pixel: gsplat's per-pixel alpha there (pixel centres at +0.5) and its skip rule
    conic = info["conics"].float()
    dx, dy = px.to(u.dtype) + 0.5 - u, py.to(v.dtype) + 0.5 - v
    sigma = 0.5 * (conic[..., 0] * dx * dx + conic[..., 2] * dy * dy) + conic[..., 1] * dx * dy
    alpha_c = (info["opacities"].float() * torch.exp(-sigma)).clamp_max(0.999)
    drawn = (sigma >= 0) & (alpha_c >= 1.0 / 255.0)
    return (radii > 0) & (z > near) & inside & drawn & visible


@torch.no_grad()
def activated_mask(
    renders: Sequence[Optional["RenderOutput"]],
    *,
    near: float = 0.01,
    rel_tol: float = 0.05,
    abs_tol: float = 0.01,
) -> Optional[Tensor]:
    """``(B, N)``: activated in any view of any of the given (batched) renders; ``None`` if none given."""
    out = None
    for r in renders:
        if r is None:
            continue
        a = activated_in_views(r, near=near, rel_tol=rel_tol, abs_tol=abs_tol).any(1)
        out = a if out is None else out | a
    return out


# ------------------------------------------------------------------------------------------------------ total
def compute_losses(
    gaussians: "Gaussians",
    target_render: "RenderOutput",
    target_images: Tensor,
    *,
    target_depths: Optional[Tensor] = None,
    target_cameras: Optional["Camera"] = None,
    target_poses: Optional["Pose"] = None,
    has_depth: Optional[Tensor] = None,
    any_depth: Optional[bool] = None,
    context_render: Optional["RenderOutput"] = None,
    activated: Optional[Tensor] = None,
    config: Optional[LossConfig] = None,
    lpips_fn: Optional[Callable[[Tensor, Tensor], Tensor]] = None,
    lpips_autocast: bool = False,
) -> LossTerms:
    """All ZipSplat loss terms for a batch.

    Args:
        gaussians: batched ``(B, N)`` Gaussians.
        target_render: batched render of the target views, ``images (B, Vt, 4, H, W)`` in mode ``"RGB+D"``
            (``"RGB"`` suffices when the batch has no depth and ``detach_activated`` has no render to use).
        target_images: GT ``(B, Vt, 3, H, W)`` in [0, 1].
        target_depths: GT depth ``(B, Vt, H, W)`` or ``(B, Vt, 1, H, W)``, invalid < 0; ``None``: no depth.
        target_cameras, target_poses: ``(B, Vt)`` intrinsics and camera-to-world poses (normalised frame) for the
            chamfer points; needed when any sample has depth.
        has_depth: ``(B,)`` bool, the samples whose context *and* target views have depth; default: every sample
            with ``target_depths`` given.
        any_depth: ``has_depth.any()`` when the caller knows it already (saves a GPU synchronisation).
        context_render: batched render of the context views (with depth) for the activated mask.
        activated: ``(B, N)`` precomputed activated flags (overrides the renders).
        config: weights and constants (:class:`LossConfig`).
        lpips_fn: ``(N, 3, H, W) x2 -> (N,)`` LPIPS on [0, 1] inputs; default the cached LPIPS-VGG.
        lpips_autocast: evaluate LPIPS under bf16 autocast (its convolutions in bf16), as the reference's
            mixed-precision training does (its whole loss runs inside ``torch.autocast(bfloat16)``); the other terms
            stay fp32.
    """
    cfg = config or LossConfig()
    means, scales, opac = gaussians.means, gaussians.scales, gaussians.opacities
    if means.ndim == 2:
        means, scales, opac = means[None], scales[None], opac[None]
    B = means.shape[0]
    rgb = target_render.rgb
    if rgb is None:
        raise ValueError(f"compute_losses: the target render (mode {target_render.mode!r}) has no RGB channels")
    if rgb.ndim != 5 or rgb.shape != target_images.shape or rgb.shape[0] != B:
        raise ValueError(
            f"compute_losses: render {tuple(rgb.shape)} and target images {tuple(target_images.shape)} must both be "
            f"(B={B}, V, 3, H, W)"
        )
    gt = target_images.to(rgb.dtype)
    dev, dt = rgb.device, rgb.dtype
    zero = torch.zeros(B, device=dev, dtype=dt)
    per: Dict[str, Tensor] = {}

    per["l1"] = l1_loss(rgb, gt) if cfg.l1_weight else zero
    if cfg.lpips_weight:
        # no weight-cast cache: CUDA-graph capture of the LPIPS net (cuda_graphs) needs it off; it would only save
        # the second cast of each conv weight (prediction and target passes), and the values are the same
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=lpips_autocast, cache_enabled=False):
            per["lpips"] = lpips_loss(rgb, gt, lpips_fn).to(dt)
    else:
        per["lpips"] = zero
    per["scale_penalty"] = scale_penalty(scales, cfg.max_scale, cfg.min_scale)
    per["opacity_penalty"] = opacity_penalty(opac, cfg.min_opacity)
    per["location_penalty"] = location_penalty(means, cfg.max_location)

    if has_depth is None:
        has_depth = torch.full((B,), target_depths is not None, dtype=torch.bool, device=dev)
    has_depth = has_depth.to(device=dev, dtype=torch.bool).reshape(B)
    if target_depths is None:
        has_depth = torch.zeros_like(has_depth)
        geo = False
    else:
        geo = bool(has_depth.any()) if any_depth is None else bool(any_depth)

    act = activated
    if act is None and cfg.detach_activated and cfg.chamfer_weight and geo:
        act = activated_mask(
            [context_render, target_render] if target_render.depth is not None else [context_render],
            near=cfg.activated_near,
            rel_tol=cfg.activated_rel_tol,
            abs_tol=cfg.activated_abs_tol,
        )

    chamfer = zero
    depth = zero
    if geo:
        gdepth = _depth_bvhw(target_depths.to(device=dev))
        if cfg.chamfer_weight:
            if target_cameras is None or target_poses is None:
                raise ValueError("compute_losses: chamfer needs target_cameras and target_poses when depth is given")
            points, counts = gt_points_from_depth(gdepth.float(), target_cameras, target_poses)
            src = means
            if cfg.detach_activated and act is not None:
                src = torch.where(act.to(dev)[..., None], means.detach(), means)
            ch = chamfer_loss(
                src.float(),
                points,
                max_coord=cfg.chamfer_max_coord,
                out_of_range_weight=cfg.chamfer_out_of_range_weight,
                chunk_elements=cfg.chamfer_chunk_elements,
            ).to(dt)
            chamfer = torch.where(has_depth & (counts > 0), ch, zero)
        if cfg.depth_weight:
            rendered_depth = target_render.depth
            if rendered_depth is None:
                raise ValueError(
                    f"compute_losses: the depth loss needs rendered depth; render the targets in 'RGB+D' "
                    f"(got {target_render.mode!r})"
                )
            if target_render.mode.endswith("ED"):
                raise ValueError("compute_losses: the depth loss uses accumulated depth ('RGB+D'), not expected depth")
            dl = depth_l1_loss(rendered_depth, gdepth.to(dt))
            depth = torch.where(has_depth, dl, zero)
    per["chamfer"] = chamfer
    per["depth"] = depth

    weights = {
        "l1": cfg.l1_weight,
        "lpips": cfg.lpips_weight,
        "scale_penalty": cfg.scale_penalty_weight,
        "opacity_penalty": cfg.opacity_penalty_weight,
        "location_penalty": cfg.location_penalty_weight,
        "chamfer": cfg.chamfer_weight,
        "depth": cfg.depth_weight,
    }
    weighted = {k: weights[k] * per[k].mean() for k in LOSS_NAMES}
    raw = {k: per[k].detach().mean() for k in LOSS_NAMES}
    raw["activated_fraction"] = act.float().mean().detach() if act is not None else torch.zeros((), device=dev)
    raw["geometry_fraction"] = has_depth.float().mean()
    return LossTerms(weighted=weighted, raw=raw, per_sample=per)


__all__ = [
    "LossConfig",
    "LossTerms",
    "LOSS_NAMES",
    "compute_losses",
    "scale_penalty",
    "opacity_penalty",
    "location_penalty",
    "l1_loss",
    "lpips_loss",
    "depth_l1_loss",
    "unproject_depth",
    "gt_points_from_depth",
    "one_sided_chamfer",
    "chamfer_loss",
    "activated_in_views",
    "activated_mask",
]
