"""Exact nearest-neighbour search between point sets (the chamfer term's inner loop).

:func:`nearest_indices` returns, for every source point, the index of its nearest target point (squared Euclidean
distance, float32, exact up to ties). Two implementations:

- **CUDA**: a Triton kernel. Each program holds a block of source points in registers and streams all target points
  in tiles, keeping a running minimum and its index: ``(s - t)^2`` is evaluated directly (no ``|s|^2 + |t|^2 - 2 s.t``
  cancellation) and the ``N x M`` distance matrix is never stored. Its cost is ``N * M`` fused
  subtract-multiply-adds, against the 180 ms per scene of a compiled torch reduction (benchmarks/bench_train*.json).
- **elsewhere** (or without Triton): ``torch.cdist`` in chunks of about ``chunk_elements`` distances.

The kernel runs with a fixed 64 x 128 tile (the one measured in benchmarks/bench_train_breakdown.json). With
``ZIPSPLAT_NN_AUTOTUNE=1`` the tile shape is instead chosen by ``triton.autotune`` on the first call in a process,
among :data:`TILE_CONFIGS` (the fixed tile included): a 64 x 128 tile keeps more live values per thread than four
warps' registers hold, and the best shape depends on the GPU. This is opt-in until ``scripts/bench_train.py
--nn-autotune`` has measured it. The kernel only writes its output, so the tuning runs are harmless. Under Triton's
CPU interpreter (``TRITON_INTERPRET=1``, which the tests use) the fixed tile is always used.
"""

from __future__ import annotations

import logging
import os
from typing import Optional

import torch
from torch import Tensor

logger = logging.getLogger(__name__)
BLOCK_N = 64  # the fixed tile (the default; the first entry of TILE_CONFIGS)
BLOCK_M = 128
# (BLOCK_N, BLOCK_M, num_warps) tried by the autotuner on CUDA (ZIPSPLAT_NN_AUTOTUNE=1)
TILE_CONFIGS = ((64, 128, 4), (64, 128, 8), (64, 64, 4), (128, 64, 8), (64, 32, 4), (128, 32, 4), (32, 64, 2))

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
        pid_n = tl.program_id(0)
        b = tl.program_id(1)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        s_ptr = src + b * stride_sb + offs_n * 3
        sx = tl.load(s_ptr + 0, mask=mask_n, other=0.0)
        sy = tl.load(s_ptr + 1, mask=mask_n, other=0.0)
        sz = tl.load(s_ptr + 2, mask=mask_n, other=0.0)
        best = tl.full([BLOCK_N], float("inf"), tl.float32)
        best_i = tl.zeros([BLOCK_N], tl.int32)
        for m0 in range(0, M, BLOCK_M):
            offs_m = m0 + tl.arange(0, BLOCK_M)
            mask_m = offs_m < M
            t_ptr = tgt + b * stride_tb + offs_m * 3
            tx = tl.load(t_ptr + 0, mask=mask_m, other=0.0)
            ty = tl.load(t_ptr + 1, mask=mask_m, other=0.0)
            tz = tl.load(t_ptr + 2, mask=mask_m, other=0.0)
            dx = sx[:, None] - tx[None, :]
            dy = sy[:, None] - ty[None, :]
            dz = sz[:, None] - tz[None, :]
            d = dx * dx + dy * dy + dz * dz
            d = tl.where(mask_m[None, :], d, float("inf"))
            dmin = tl.min(d, axis=1)
            # first index reaching the tile minimum (an explicit argmin: ties resolve to the lowest index)
            cand = tl.where(d == dmin[:, None], offs_m[None, :], 2147483647)
            imin = tl.min(cand, axis=1)
            better = dmin < best
            best = tl.where(better, dmin, best)
            best_i = tl.where(better, imin, best_i)
        tl.store(out_idx + b * stride_ob + offs_n, best_i, mask=mask_n)

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
    s = src.detach().float().contiguous()
    t = tgt.detach().float().contiguous()
    B, N, _ = s.shape
    M = t.shape[1]
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
