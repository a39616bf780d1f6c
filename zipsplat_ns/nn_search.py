"""Nearest-neighbour search between point sets (the chamfer term's inner loop).

:func:`nearest_indices` returns, for every source point, the index of its nearest target point (squared Euclidean
distance, compared in float32). Implementations:

- **CUDA, pruned** (the default from ``PRUNE_MIN_TILES`` target tiles on; ``ZIPSPLAT_NN_PRUNE=0`` turns it off): both
  sets are sorted along a Morton (Z-order) curve, so that consecutive points are close in space; the targets are cut
  into tiles of ``BLOCK_M`` consecutive points, each with its axis-aligned bounding box, and groups of ``GROUP`` tiles
  with theirs. A program holds a block of ``BLOCK_N`` consecutive sources (a compact region) and visits the target
  groups and tiles starting from its own place on the curve; it skips any whose box is farther from the block's box
  than the block's current worst nearest distance (no point inside could improve any row, so the result is that of
  the full search). The pairwise work is that of the brute-force kernel below.
- **CUDA, brute force**: a Triton kernel. Each program holds a block of ``BLOCK_N`` source points and streams all
  target points in tiles of ``BLOCK_M``, keeping a running minimum *per (source, lane)* and the tile it came from;
  the minimum over the lanes (and the lowest index reaching it) is taken once at the end. Coordinates are taken
  relative to the block's centroid ``c``, and a row's argmin of ``||s - t||^2`` is that of
  ``||t - c||^2 - 2 (s - c).(t - c)``, so the loop body is three FMAs, a compare and two selects per pair. The
  ``N x M`` distance matrix is never stored, and points are passed as structure-of-arrays so loads are coalesced.
  Both kernels, with their shared tile step, are in :mod:`zipsplat_ns.nn_search_triton`.
- **elsewhere** (or without Triton): ``torch.cdist`` in chunks of about ``chunk_elements`` distances.

Accuracy: the centred form's rounding is ~1e-7 of ``(|s - c| + |t - c|)^2``, so it is small when the block is compact.
The pruned kernel's blocks are (Morton order); the brute-force kernel's are whatever order the sources come in.
Measured on an H200 against float64 (scripts/bench_nn_search.py, 4 x 62,208 sources, 4 x 254,016 targets, 16,384
points checked per geometry, benchmarks/bench_nn_search.json): the pruned kernel's pick was within 1e-5 of the true
nearest squared distance for all but 1 point (5e-4 relative), the brute-force kernel's for all but 0-57 (up to 4 %
relative, for sources 0.01 from a surface). The loss uses the chosen point's distance, computed directly. Time: 5.7
to 10.5 ms against 28.5 ms, and 25 ms where sources lie a unit's noise away from the surface.

The brute-force kernel runs with a fixed 64 x 64 tile. With ``ZIPSPLAT_NN_AUTOTUNE=1`` its tile shape is instead
chosen by ``triton.autotune`` on the first call in a process, among :data:`TILE_CONFIGS` (the fixed tile first). The
kernel only writes its output, so the tuning runs are harmless. Under Triton's CPU interpreter (``TRITON_INTERPRET=1``,
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
_pruned_kernel = None  # the pruned kernel (built with _kernel)
GROUP = 16  # target tiles per group in the pruned kernel's two-level AABB test
PRUNE_MIN_TILES = 2 * GROUP  # fewer target tiles: the brute-force kernel (nothing to prune)


def _interpreting() -> bool:
    """Triton's CPU interpreter is on (it cannot time tile shapes, so the fixed tile is used)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _autotune_requested() -> bool:
    return os.environ.get("ZIPSPLAT_NN_AUTOTUNE", "0") == "1"


def _build_kernel():
    """The brute-force kernel (autotuned when asked for, see the module docstring) and whether its tile is fixed;
    also sets the pruned kernel. Raises ImportError without Triton."""
    import triton

    from zipsplat_ns import nn_search_triton

    global _pruned_kernel
    _pruned_kernel = nn_search_triton.nn_pruned_kernel
    if _interpreting() or not _autotune_requested():
        return nn_search_triton.nn_kernel, True
    configs = [triton.Config({"BLOCK_N": n, "BLOCK_M": m}, num_warps=w) for n, m, w in TILE_CONFIGS]
    return triton.autotune(configs=configs, key=[])(nn_search_triton.nn_kernel), False


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


def _spread_bits(v: Tensor) -> Tensor:
    """10-bit integers -> every third bit (the Morton interleave of one axis)."""
    v = (v | (v << 16)) & 0x030000FF
    v = (v | (v << 8)) & 0x0300F00F
    v = (v | (v << 4)) & 0x030C30C3
    return (v | (v << 2)) & 0x09249249


def morton_codes(points: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """30-bit Morton (Z-order) codes of ``(B, K, 3)`` points on a 1024^3 grid over the box ``[lo, hi]`` (``(B, 1, 3)``);
    points outside the box (or not finite) get the code of the nearest cell. Only the order matters: it keeps points
    that are close in space mostly close in the sorted list."""
    q = ((points - lo) / (hi - lo).clamp_min(1e-12) * 1023.0).nan_to_num(0.0).clamp(0.0, 1023.0).to(torch.int64)
    return _spread_bits(q[..., 0]) | (_spread_bits(q[..., 1]) << 1) | (_spread_bits(q[..., 2]) << 2)


def _sorted_problem(src: Tensor, tgt: Tensor) -> dict:
    """Both point sets in Morton order, the targets padded to whole tiles, with the tiles' and groups' AABBs and each
    source block's starting tile (the pruned kernel's inputs)."""
    B, N, _ = src.shape
    M = tgt.shape[1]
    # the grid spans the sources and the targets that are not the chamfer term's far sentinels (|x| >= 1e6)
    big = torch.tensor(float("inf"), device=src.device)
    finite_s = torch.isfinite(src).all(-1, keepdim=True)
    near_t = (tgt.abs() < 1e6).all(-1, keepdim=True)
    lo = torch.minimum(torch.where(finite_s, src, big).amin(1, keepdim=True),
                       torch.where(near_t, tgt, big).amin(1, keepdim=True))  # fmt: skip
    hi = torch.maximum(torch.where(finite_s, src, -big).amax(1, keepdim=True),
                       torch.where(near_t, tgt, -big).amax(1, keepdim=True))  # fmt: skip
    lo, hi = torch.where(torch.isfinite(lo), lo, 0.0), torch.where(torch.isfinite(hi), hi, 1.0)
    cs, ct = morton_codes(src, lo, hi), morton_codes(tgt, lo, hi)
    cs, ps = cs.sort(1)
    ct, pt = ct.sort(1)
    s_sorted = src.gather(1, ps[..., None].expand(-1, -1, 3))
    T = -(-M // BLOCK_M)
    pad = T * BLOCK_M - M  # the last point repeated: a duplicate never changes a nearest distance
    pt_pad = torch.cat([pt, pt[:, -1:].expand(B, pad)], 1)
    t_sorted = tgt.gather(1, pt_pad[..., None].expand(-1, -1, 3))
    tiles = t_sorted.view(B, T, BLOCK_M, 3)
    boxes = torch.cat([tiles.amin(2), tiles.amax(2)], -1)  # (B, T, 6)
    G = -(-T // GROUP)
    gpad = torch.cat([boxes, boxes[:, -1:].expand(B, G * GROUP - T, 6)], 1).view(B, G, GROUP, 6)
    gboxes = torch.cat([gpad[..., :3].amin(2), gpad[..., 3:].amax(2)], -1)  # (B, G, 6)
    first = torch.arange(-(-N // BLOCK_N), device=src.device) * BLOCK_N  # each source block's first sorted point
    mid = first + (N - first).clamp(max=BLOCK_N) // 2
    start = (torch.searchsorted(ct, cs[:, mid].contiguous()) // BLOCK_M).clamp(max=T - 1).to(torch.int32)
    return {
        "src": s_sorted.transpose(1, 2).contiguous(), "tgt": t_sorted.transpose(1, 2).contiguous(),
        "boxes": boxes.transpose(1, 2).contiguous(), "gboxes": gboxes.transpose(1, 2).contiguous(),
        "start": start.contiguous(), "ps": ps, "pt": pt, "T": T, "G": G,
    }  # fmt: skip


def _nearest_pruned(src: Tensor, tgt: Tensor) -> Tensor:
    """The pruned kernel on ``(B, N, 3), (B, M, 3)``: sort, search, and map the indices back to the input order."""
    import triton

    B, N, _ = src.shape
    M = tgt.shape[1]
    prob = _sorted_problem(src.detach().float(), tgt.detach().float())
    s, t, boxes, gboxes, start = (prob[k] for k in ("src", "tgt", "boxes", "gboxes", "start"))
    idx = torch.zeros(B, N, dtype=torch.int32, device=src.device)
    _pruned_kernel[(triton.cdiv(N, BLOCK_N), B)](
        s, t, boxes, gboxes, start, idx, N, prob["T"], prob["G"],
        s.stride(0), t.stride(0), boxes.stride(0), gboxes.stride(0), start.stride(0), idx.stride(0),
        BLOCK_N=BLOCK_N, BLOCK_M=BLOCK_M, GROUP=GROUP,
    )  # fmt: skip
    # sorted target index -> original (padding repeats the last sorted point); sorted source order -> original
    orig = prob["pt"].gather(1, idx.long().clamp(max=M - 1))
    return torch.empty_like(orig).scatter_(1, prob["ps"], orig)


def nearest_indices_triton(src: Tensor, tgt: Tensor, *, prune: Optional[bool] = None) -> Tensor:
    """Nearest ``tgt`` index per ``src`` point with the Triton kernel: ``(B, N, 3), (B, M, 3) -> (B, N)`` int64.

    ``prune`` (default: when the targets fill at least ``PRUNE_MIN_TILES`` tiles, unless ``ZIPSPLAT_NN_PRUNE=0``)
    uses the Morton-ordered kernel that skips target tiles by their bounding boxes; it finds the same nearest
    distances (ties may pick another of the tied points)."""
    import triton

    built = _triton_kernel()
    if built is None:
        raise RuntimeError("Triton is not available")
    kernel, fixed_tile = built
    B, N, _ = src.shape
    M = tgt.shape[1]
    if prune is None:
        prune = -(-M // BLOCK_M) >= PRUNE_MIN_TILES and os.environ.get("ZIPSPLAT_NN_PRUNE", "1") != "0"
    if prune and N and M:
        return _nearest_pruned(src, tgt)
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
    """Index of the nearest ``tgt`` point for each ``src`` point: ``(B, N, 3), (B, M, 3) -> (B, N)``.

    The Triton kernels on CUDA, chunked ``torch.cdist`` elsewhere (see the module docstring). Ties may resolve to
    different indices at equal distance.
    """
    if src.is_cuda and _triton_kernel() is not None:
        return nearest_indices_triton(src, tgt)
    return nearest_indices_cdist(src, tgt, chunk_elements)


__all__ = ["kernel_tile", "morton_codes", "nearest_indices", "nearest_indices_cdist", "nearest_indices_triton"]
