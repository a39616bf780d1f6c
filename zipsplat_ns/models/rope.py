"""2D rotary position embedding (RoPE) used by the DA3 backbone (reference doc §1.3).

The head dimension is split into two halves: the first half is rotated by the token's *y* (row) position and the second
half by its *x* (column) position. Each half uses the "rotate-half" RoPE form with duplicated angles::

    inv_freq[j] = 1 / base ** (2j / half)           j = 0 .. half/2 - 1      (base = 100)
    angle       = cat([pos * inv_freq, pos * inv_freq])                       (length = half)
    rope(v)     = v * cos(angle) + rotate_half(v) * sin(angle)
    rotate_half([a, b]) = [-b, a]

For head_dim 64 this is ``inv_freq = 1 / 100 ** (arange(0, 32, 2) / 32)`` per axis, exactly as in the reference.

Positions (``patch_start_idx = 1``):

* local (per-view) blocks: the special token 0 sits at (0, 0) and patch ``(r, c)`` at ``(r + 1, c + 1)``;
* global (cross-view) blocks: the special token at (0, 0) and *every* patch of every view at (1, 1).
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

ROPE_BASE: float = 100.0


def rope_positions(
    grid_h: int, grid_w: int, *, global_attn: bool, num_views: int = 1, device: torch.device | None = None
) -> Int[Tensor, "L 2"]:
    """Integer ``(y, x)`` positions for one attention sequence.

    Local: one view, ``1 + grid_h * grid_w`` tokens. Global: ``num_views`` views concatenated, each
    ``1 + grid_h * grid_w`` tokens (special token first in every view).
    """
    n = grid_h * grid_w
    if global_attn:
        # every patch of every view shares (1, 1); only the special token differs (0, 0)
        per_view = torch.ones(1 + n, 2, dtype=torch.long, device=device)
        per_view[0] = 0
        return per_view.repeat(num_views, 1)
    ys = torch.arange(grid_h, device=device).repeat_interleave(grid_w) + 1
    xs = torch.arange(grid_w, device=device).repeat(grid_h) + 1
    patches = torch.stack([ys, xs], -1)
    return torch.cat([torch.zeros(1, 2, dtype=torch.long, device=device), patches], 0)


def rope_cos_sin(
    positions: Int[Tensor, "L 2"], head_dim: int, base: float = ROPE_BASE, dtype: torch.dtype = torch.float32
) -> tuple[Float[Tensor, "L Dh"], Float[Tensor, "L Dh"]]:
    """Precompute ``cos``/``sin`` tables of shape ``(L, head_dim)`` (y half first, then x half)."""
    if head_dim % 4 != 0:
        raise ValueError(f"2D RoPE needs head_dim divisible by 4, got {head_dim}")
    half = head_dim // 2
    inv_freq = 1.0 / (base ** (torch.arange(0, half, 2, device=positions.device, dtype=torch.float32) / half))
    angles = []
    for axis in range(2):  # 0 = y, 1 = x
        a = positions[:, axis].to(torch.float32)[:, None] * inv_freq[None, :]  # (L, half/2)
        angles.append(torch.cat([a, a], -1))  # duplicated angles -> (L, half)
    ang = torch.cat(angles, -1)  # (L, head_dim)
    return ang.cos().to(dtype), ang.sin().to(dtype)


def _rotate_halves(x: Tensor) -> Tensor:
    """``rotate_half`` applied independently to the y half and the x half: ``[a, b | c, d] -> [-b, a | -d, c]``."""
    q = x.shape[-1] // 4
    parts = x.unflatten(-1, (2, 2, q))  # (..., axis, half, q)
    return torch.stack([-parts[..., 1, :], parts[..., 0, :]], dim=-2).flatten(-3)


def apply_rope_2d(
    x: Float[Tensor, "*B H L Dh"], cos: Float[Tensor, "L Dh"], sin: Float[Tensor, "L Dh"]
) -> Float[Tensor, "*B H L Dh"]:
    """Rotate ``x`` (``(..., L, head_dim)``); the y half and x half are rotated independently.

    Element-wise this is ``x * cos + rotate_half(x) * sin`` on each half, written over the full head so it needs only
    a handful of kernels (``cos``/``sin`` already hold the y-half angles followed by the x-half angles).
    """
    cos = cos.to(x.dtype)
    sin = sin.to(x.dtype)
    return x * cos + _rotate_halves(x) * sin


def signed_sin(sin: Float[Tensor, "L Dh"]) -> Float[Tensor, "L Dh"]:
    """``sin`` with the rotate-half sign folded in: ``[-s_a, s_b | -s_c, s_d]`` (per quarter of the head)."""
    q = sin.shape[-1] // 4
    sign = torch.tensor([-1.0, 1.0], dtype=sin.dtype, device=sin.device).repeat_interleave(q).repeat(2)
    return sin * sign


def _swap_halves(x: Tensor) -> Tensor:
    """``[a, b | c, d] -> [b, a | d, c]`` (one copy kernel)."""
    q = x.shape[-1] // 4
    return x.unflatten(-1, (2, 2, q)).flip(-2).flatten(-3)


def apply_rope_2d_signed(
    x: Float[Tensor, "*B H L Dh"], cos: Float[Tensor, "L Dh"], sin_signed: Float[Tensor, "L Dh"]
) -> Float[Tensor, "*B H L Dh"]:
    """Same result as :func:`apply_rope_2d` (bit for bit: ``(-b) * s == b * (-s)``) with the sign pre-folded into
    ``sin_signed`` (:func:`signed_sin`), so the rotation is ``x * cos + swap(x) * sin_signed`` - one kernel fewer."""
    if cos.dtype != x.dtype:
        cos, sin_signed = cos.to(x.dtype), sin_signed.to(x.dtype)
    return x * cos + _swap_halves(x) * sin_signed


class RoPE2D(nn.Module):
    """Parameter-free 2D RoPE with a small cache of ``cos``/``sin`` tables keyed by (grid, mode, views, device, dtype).

    Tables are computed in fp32 and then cast to ``dtype``. :meth:`tables` returns ``(cos, signed_sin)`` for
    :func:`apply_rope_2d_signed`; the backbone looks them up once per forward (one local and one global pair).
    """

    def __init__(self, base: float = ROPE_BASE) -> None:
        super().__init__()
        self.base = base
        self._cache: dict[tuple, tuple[Tensor, Tensor]] = {}

    def tables(
        self,
        grid_h: int,
        grid_w: int,
        head_dim: int,
        *,
        global_attn: bool,
        num_views: int,
        device: torch.device,
        dtype: torch.dtype = torch.float32,
    ) -> tuple[Tensor, Tensor]:
        # global tables are identical per view, so the view count only changes the tiling
        key = (grid_h, grid_w, head_dim, global_attn, num_views if global_attn else 1, str(device), dtype)
        if key not in self._cache:
            pos = rope_positions(grid_h, grid_w, global_attn=global_attn, num_views=num_views, device=device)
            cos, sin = rope_cos_sin(pos, head_dim, self.base, dtype=torch.float32)
            self._cache[key] = (cos.to(dtype), signed_sin(sin).to(dtype))
        return self._cache[key]
