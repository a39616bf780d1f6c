"""Exact nearest-neighbour search between point sets (the chamfer term's inner loop).

:func:`nearest_indices` returns, for every source point, the index of its nearest target point (squared Euclidean
distance, float32, exact up to ties). Two implementations:

- **CUDA**: a Triton kernel. Each program holds a block of ``BLOCK_N`` source points and streams all target points
  in tiles of ``BLOCK_M``, keeping a running minimum *per (source, lane)* and the tile it came from; the minimum over
  the lanes (and the lowest index reaching it) is taken once at the end. Coordinates are taken relative to the
  block's centroid ``c``, and a row's argmin of ``||s - t||^2`` is that of ``||t - c||^2 - 2 (s - c).(t - c)``, so the
  loop body is three FMAs, a compare and two selects per pair. Centring keeps the cancellation error of that form
  at ~1e-7 ``||t - c||^2``: comparisons among the near candidates are exact to fp32 rounding (the loss then
  recomputes the chosen point's distance directly). The ``N x M`` distance matrix is never stored, and points are
  passed as structure-of-arrays so loads are coalesced. Measured on an H200 in a 4-scene training step: 113 ms for
  the first version (two cross-lane reductions per tile), 27 ms with per-lane minima and a direct ``(s - t)^2``.
- **elsewhere** (or without Triton): ``torch.cdist`` in chunks of about ``chunk_elements`` distances.

The kernel runs with a fixed 64 x 64 tile. With ``ZIPSPLAT_NN_AUTOTUNE=1`` the tile shape is instead chosen by
``triton.autotune`` on the first call in a process, among :data:`TILE_CONFIGS` (the fixed tile first). The kernel
only writes its output, so the tuning runs are harmless. Under Triton's CPU interpreter (``TRITON_INTERPRET=1``,
which the tests use) the fixed tile is always used.
"""

from __future__ import annotations

import logging
import os
from typing import Optional

import torch
from torch import Tensor

logger = logging.getLogger(__name__)
BLOCK_N = 64  # the fixed tile (the default; the first entry of TILE_CONFIGS)
BLOCK_M = 64
# (BLOCK_N, BLOCK_M, num_warps) tried by the autotuner on CUDA (ZIPSPLAT_NN_AUTOTUNE=1)
TILE_CONFIGS = ((64, 64, 4), (64, 64, 8), (128, 32, 4), (64, 32, 2), (32, 64, 2), (128, 64, 8), (64, 128, 8))

_kernel = None  # None: not built yet; False: unavailable


def _interpreting() -> bool:
    """Triton's CPU interpreter is on (it cannot time tile shapes, so the fixed tile is used)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _autotune_requested() -> bool:
    return os.environ.get("ZIPSPLAT_NN_AUTOTUNE", "0") == "1"


def _build_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def nn_kernel(src, tgt, out_idx, N, M, stride_sb, stride_tb, stride_ob,
                  BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr):  # fmt: skip
        # src (B, 3, N) and tgt (B, 3, M) are structure-of-arrays (x row, y row, z row): coalesced loads
        pid_n = tl.program_id(0)
        b = tl.program_id(1)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        s_ptr = src + b * stride_sb + offs_n
        sx = tl.load(s_ptr, mask=mask_n, other=0.0)
        sy = tl.load(s_ptr + N, mask=mask_n, other=0.0)
        sz = tl.load(s_ptr + 2 * N, mask=mask_n, other=0.0)
        # Coordinates relative to the block's centroid c. Per row, ||s - t||^2 = ||s'||^2 + (||t'||^2 - 2 s'.t')
        # with s' = s - c, t' = t - c, so the row's argmin only needs e = ||t'||^2 - 2 s'.t': three FMAs per pair.
        # Centring keeps the cancellation error at ~1e-7 ||t'||^2, i.e. small where it matters (near candidates).
        cnt = tl.maximum(tl.sum(mask_n.to(tl.float32), axis=0), 1.0)
        cx = tl.sum(sx, axis=0) / cnt
        cy = tl.sum(sy, axis=0) / cnt
        cz = tl.sum(sz, axis=0) / cnt
        px = (sx - cx)[:, None]
        py = (sy - cy)[:, None]
        pz = (sz - cz)[:, None]
        lanes = tl.arange(0, BLOCK_M)
        # Running minimum per (source, lane) and the tile it came from: no reduction inside the loop, only three
        # FMAs, a compare and two selects per pair. Lane j of tile m0 is target m0 + j.
        best = tl.full([BLOCK_N, BLOCK_M], float("inf"), tl.float32)
        best_m0 = tl.zeros([BLOCK_N, BLOCK_M], tl.int32)
        t_base = tgt + b * stride_tb
        for m0 in range(0, M, BLOCK_M):
            offs_m = m0 + lanes
            mask_m = offs_m < M
            qx = tl.load(t_base + offs_m, mask=mask_m, other=0.0) - cx
            qy = tl.load(t_base + M + offs_m, mask=mask_m, other=0.0) - cy
            qz = tl.load(t_base + 2 * M + offs_m, mask=mask_m, other=0.0) - cz
            # lanes past M: e = +inf, which never beats the running minimum
            qw = tl.where(mask_m, qx * qx + qy * qy + qz * qz, float("inf"))[None, :]
            e = px * (-2.0 * qx)[None, :] + (py * (-2.0 * qy)[None, :] + (pz * (-2.0 * qz)[None, :] + qw))
            better = e < best  # strict: within a lane the earliest tile wins ties
            best = tl.where(better, e, best)
            best_m0 = tl.where(better, m0, best_m0)
        # across lanes: the minimum, and the lowest target index reaching it (ties -> lowest index overall)
        emin = tl.min(best, axis=1)
        cand = tl.where(best == emin[:, None], best_m0 + lanes[None, :], 2147483647)
        imin = tl.min(cand, axis=1)
        imin = tl.where(imin == 2147483647, 0, imin)  # only if every value is nan
        tl.store(out_idx + b * stride_ob + offs_n, imin, mask=mask_n)

    if _interpreting() or not _autotune_requested():
        return nn_kernel, True
    configs = [triton.Config({"BLOCK_N": n, "BLOCK_M": m}, num_warps=w) for n, m, w in TILE_CONFIGS]
    return triton.autotune(configs=configs, key=[])(nn_kernel), False


def _triton_kernel():
    global _kernel
    if _kernel is None:
        try:
            _kernel = _build_kernel()
        except Exception as exc:  # noqa: BLE001 - no Triton: the chunked cdist path is used
            logger.info("Triton nearest-neighbour kernel unavailable (%s); using chunked cdist", exc)
            _kernel = False
    return _kernel or None


def kernel_tile() -> dict:
    """The Triton kernel's tile: ``{"mode": "not built"}``, the fixed tile, or the autotuner's pick (once it ran)."""
    if not _kernel:
        return {"mode": "not built"}
    kernel, fixed = _kernel
    if fixed:
        return {"mode": "fixed", "BLOCK_N": BLOCK_N, "BLOCK_M": BLOCK_M}
    best = getattr(kernel, "best_config", None)
    return {"mode": "autotune", "best": None if best is None else {**best.kwargs, "num_warps": best.num_warps}}


def nearest_indices_triton(src: Tensor, tgt: Tensor) -> Tensor:
    """Nearest ``tgt`` index per ``src`` point with the Triton kernel: ``(B, N, 3), (B, M, 3) -> (B, N)`` int64."""
    import triton

    built = _triton_kernel()
    if built is None:
        raise RuntimeError("Triton is not available")
    kernel, fixed_tile = built
    B, N, _ = src.shape
    M = tgt.shape[1]
    s = src.detach().float().transpose(1, 2).contiguous()  # (B, 3, N): structure of arrays
    t = tgt.detach().float().transpose(1, 2).contiguous()
    out = torch.zeros(B, N, dtype=torch.int32, device=s.device)
    if N and M:
        args = (s, t, out, N, M, s.stride(0), t.stride(0), out.stride(0))
        if fixed_tile:
            kernel[(triton.cdiv(N, BLOCK_N), B)](*args, BLOCK_N=BLOCK_N, BLOCK_M=BLOCK_M)
        else:
            kernel[lambda meta: (triton.cdiv(N, meta["BLOCK_N"]), B)](*args)
    return out.long()


def nearest_indices_cdist(src: Tensor, tgt: Tensor, chunk_elements: Optional[int] = None) -> Tensor:
    """The same with ``torch.cdist`` in chunks of about ``chunk_elements`` distances (2^24 on CPU, 2^27 on CUDA)."""
    B, N, _ = src.shape
    M = tgt.shape[1]
    out = torch.zeros(B, N, dtype=torch.long, device=src.device)
    s_all, t_all = src.detach().float(), tgt.detach().float()
    if chunk_elements is None:
        chunk_elements = 1 << (27 if src.is_cuda else 24)
    tchunk = min(M, max(1, chunk_elements))
    schunk = max(1, chunk_elements // max(tchunk, 1))
    for b in range(B):
        for s0 in range(0, N, schunk):
            s = s_all[b, s0 : s0 + schunk]
            best = torch.full((s.shape[0],), float("inf"), device=src.device)
            best_i = torch.zeros(s.shape[0], dtype=torch.long, device=src.device)
            for t0 in range(0, M, tchunk):
                dist = torch.cdist(s, t_all[b, t0 : t0 + tchunk])
                dmin, imin = dist.min(1)
                better = dmin < best
                best = torch.where(better, dmin, best)
                best_i = torch.where(better, imin + t0, best_i)
            out[b, s0 : s0 + schunk] = best_i
    return out


@torch.no_grad()
def nearest_indices(src: Tensor, tgt: Tensor, chunk_elements: Optional[int] = None) -> Tensor:
    """Index of the nearest ``tgt`` point for each ``src`` point: ``(B, N, 3), (B, M, 3) -> (B, N)``; exact.

    The Triton kernel on CUDA, chunked ``torch.cdist`` elsewhere (see the module docstring). Ties may resolve to
    different indices at equal distance.
    """
    if src.is_cuda and _triton_kernel() is not None:
        return nearest_indices_triton(src, tgt)
    return nearest_indices_cdist(src, tgt, chunk_elements)


__all__ = ["kernel_tile", "nearest_indices", "nearest_indices_cdist", "nearest_indices_triton"]
