"""gsplat backend (CUDA only): one ``rasterization`` call per scene with all of its cameras.

gsplat 1.4.0 (nerfstudio's pin) has no batched-scene path, so a ``(B, N)`` batch is a loop over scenes. Where
gsplat >= 1.5.3 is installed the whole batch goes through one call with ``[B, N, ...]`` / ``[B, V, ...]`` inputs.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Dict, Tuple

import torch
from torch import Tensor


@lru_cache(maxsize=1)
def gsplat_version() -> Tuple[int, ...]:
    """Installed gsplat version as a tuple, or () when gsplat is not installed."""
    try:
        import gsplat
    except ImportError:
        return ()
    parts = []
    for p in str(getattr(gsplat, "__version__", "0")).split("+")[0].split("."):
        digits = "".join(ch for ch in p if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def supports_batched_scenes() -> bool:
    return gsplat_version() >= (1, 5, 3)


def _normalise_info(meta: Dict, lead: Tuple[int, ...]) -> Dict[str, Tensor]:
    radii = meta["radii"]
    if radii.ndim == len(lead) + 2:  # gsplat >= 1.5 returns per-axis radii (..., N, 2)
        radii = radii.amax(-1)
    keep = ("means2d", "depths", "conics")
    return {"radii": radii.to(torch.int32), **{k: meta[k] for k in keep}}


def render_gsplat(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    sh: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    *,
    sh_degree: int,
    mode: str,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    radius_clip: float = 0.0,
    tile_size: int = 16,
) -> Tuple[Tensor, Tensor, Dict[str, Tensor]]:
    """Render ``B`` scenes: means ``(B, N, 3)``, cameras ``(B, V, ...)``. Returns ``(B, V, H, W, C)`` and alphas."""
    from gsplat import rasterization

    if mode == "D":
        # depth alone: gsplat replaces the colours by the depths, so skip its SH evaluation (camera inverses,
        # per-view directions, the SH kernel) with a 1-channel dummy colour; the image is the same
        sh, sh_degree = means.new_zeros(means.shape[:-1] + (1,)), None
    kwargs = dict(
        width=width, height=height, sh_degree=sh_degree, render_mode=mode, packed=False,
        near_plane=near_plane, far_plane=far_plane, eps2d=eps2d, radius_clip=radius_clip, rasterize_mode="classic",
        tile_size=int(tile_size),
    )  # fmt: skip
    B = means.shape[0]
    if supports_batched_scenes() and B > 1:
        colors, alphas, meta = rasterization(means, quats, scales, opacities, sh, viewmats, Ks, **kwargs)
        return colors, alphas, _normalise_info(meta, (B, viewmats.shape[1]))
    outs = [
        rasterization(means[b], quats[b], scales[b], opacities[b], sh[b], viewmats[b], Ks[b], **kwargs)
        for b in range(B)
    ]
    colors = torch.stack([o[0] for o in outs])
    alphas = torch.stack([o[1] for o in outs])
    infos = [_normalise_info(o[2], (viewmats.shape[1],)) for o in outs]
    return colors, alphas, {k: torch.stack([i[k] for i in infos]) for k in infos[0]}
