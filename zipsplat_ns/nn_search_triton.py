"""The Triton kernels of :mod:`zipsplat_ns.nn_search` (imported only when Triton is; see that module's docstring).

Both kernels share one source-block loader, one tile step (the three-FMA distance form and the per-lane running
minimum) and one epilogue (the minimum over lanes); Triton only inlines ``@triton.jit`` helpers that are module-level
globals, hence this module.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _load_sources(src, b, pid_n, N, stride_sb, BLOCK_N: tl.constexpr):
    """The program's block of sources from ``src`` (B, 3, N), structure of arrays (x row, y row, z row): coalesced."""
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    s_ptr = src + b * stride_sb + offs_n
    sx = tl.load(s_ptr, mask=mask_n, other=0.0)
    sy = tl.load(s_ptr + N, mask=mask_n, other=0.0)
    sz = tl.load(s_ptr + 2 * N, mask=mask_n, other=0.0)
    return offs_n, mask_n, sx, sy, sz


@triton.jit
def _tile_step(t_base, M, m0, lanes, cx, cy, cz, px, py, pz, best, best_m0):
    """One tile of targets (``t_base``: this batch item's (3, M) rows) against the block: ``best`` / ``best_m0`` keep
    the running minimum per (source, lane) and the tile it came from; lane j of tile m0 is target m0 + j.

    Coordinates are relative to the block's centroid c. Per row, ||s - t||^2 = ||s'||^2 + (||t'||^2 - 2 s'.t') with
    s' = s - c, t' = t - c, so the row's argmin only needs e = ||t'||^2 - 2 s'.t': three FMAs, a compare and two
    selects per pair, no reduction. Centring keeps the cancellation error at ~1e-7 (|s'| + |t'|)^2."""
    offs_m = m0 + lanes
    mask_m = offs_m < M
    qx = tl.load(t_base + offs_m, mask=mask_m, other=0.0) - cx
    qy = tl.load(t_base + M + offs_m, mask=mask_m, other=0.0) - cy
    qz = tl.load(t_base + 2 * M + offs_m, mask=mask_m, other=0.0) - cz
    # lanes past M: e = +inf, which never beats the running minimum
    qw = tl.where(mask_m, qx * qx + qy * qy + qz * qz, float("inf"))[None, :]
    e = px * (-2.0 * qx)[None, :] + (py * (-2.0 * qy)[None, :] + (pz * (-2.0 * qz)[None, :] + qw))
    better = e < best  # strict: within a lane the earliest tile visited wins ties
    return tl.where(better, e, best), tl.where(better, m0, best_m0)


@triton.jit
def _store_nearest(out_ptr, mask_n, best, best_m0, lanes):
    """Across lanes: the minimum, and the lowest target index reaching it (ties -> lowest index among those)."""
    emin = tl.min(best, axis=1)
    cand = tl.where(best == emin[:, None], best_m0 + lanes[None, :], 2147483647)
    imin = tl.min(cand, axis=1)
    imin = tl.where(imin == 2147483647, 0, imin)  # only if every value is nan
    tl.store(out_ptr, imin, mask=mask_n)


@triton.jit
def _box_gap2(box, stride, lox, loy, loz, hix, hiy, hiz):
    """Squared distance between the block's AABB and the one at ``box`` (lo xyz, hi xyz, ``stride`` apart)."""
    dx = tl.maximum(tl.maximum(tl.load(box) - hix, lox - tl.load(box + 3 * stride)), 0.0)
    dy = tl.maximum(tl.maximum(tl.load(box + stride) - hiy, loy - tl.load(box + 4 * stride)), 0.0)
    dz = tl.maximum(tl.maximum(tl.load(box + 2 * stride) - hiz, loz - tl.load(box + 5 * stride)), 0.0)
    return dx * dx + dy * dy + dz * dz


@triton.jit
def nn_kernel(src, tgt, out_idx, N, M, stride_sb, stride_tb, stride_ob,
              BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr):  # fmt: skip
    """Brute force: src (B, 3, N) against every tile of tgt (B, 3, M)."""
    pid_n = tl.program_id(0)
    b = tl.program_id(1)
    offs_n, mask_n, sx, sy, sz = _load_sources(src, b, pid_n, N, stride_sb, BLOCK_N)
    cnt = tl.maximum(tl.sum(mask_n.to(tl.float32), axis=0), 1.0)
    cx = tl.sum(sx, axis=0) / cnt
    cy = tl.sum(sy, axis=0) / cnt
    cz = tl.sum(sz, axis=0) / cnt
    px = (sx - cx)[:, None]
    py = (sy - cy)[:, None]
    pz = (sz - cz)[:, None]
    lanes = tl.arange(0, BLOCK_M)
    best = tl.full([BLOCK_N, BLOCK_M], float("inf"), tl.float32)
    best_m0 = tl.zeros([BLOCK_N, BLOCK_M], tl.int32)
    t_base = tgt + b * stride_tb
    for m0 in range(0, M, BLOCK_M):
        best, best_m0 = _tile_step(t_base, M, m0, lanes, cx, cy, cz, px, py, pz, best, best_m0)
    _store_nearest(out_idx + b * stride_ob + offs_n, mask_n, best, best_m0, lanes)


@triton.jit
def nn_pruned_kernel(src, tgt, boxes, gboxes, start, out_idx, N, T, G,
                     stride_sb, stride_tb, stride_bb, stride_gb, stride_stb, stride_ob,
                     BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, GROUP: tl.constexpr):  # fmt: skip
    """Pruned: src (B, 3, N) and tgt (B, 3, T * BLOCK_M) in Morton order (tgt padded to whole tiles); boxes (B, 6, T):
    each target tile's AABB (lo xyz, hi xyz); gboxes (B, 6, G): the AABB of each group of GROUP consecutive tiles;
    start (B, cdiv(N, BLOCK_N)): the tile nearest in Morton order to each source block."""
    pid_n = tl.program_id(0)
    b = tl.program_id(1)
    offs_n, mask_n, sx, sy, sz = _load_sources(src, b, pid_n, N, stride_sb, BLOCK_N)
    valid = mask_n & (sx == sx) & (sy == sy) & (sz == sz)  # NaN rows take no part in the bounds
    cnt = tl.maximum(tl.sum(valid.to(tl.float32), axis=0), 1.0)
    cx = tl.sum(tl.where(valid, sx, 0.0), axis=0) / cnt
    cy = tl.sum(tl.where(valid, sy, 0.0), axis=0) / cnt
    cz = tl.sum(tl.where(valid, sz, 0.0), axis=0) / cnt
    lox = tl.min(tl.where(valid, sx, float("inf")), axis=0)
    loy = tl.min(tl.where(valid, sy, float("inf")), axis=0)
    loz = tl.min(tl.where(valid, sz, float("inf")), axis=0)
    hix = tl.max(tl.where(valid, sx, float("-inf")), axis=0)
    hiy = tl.max(tl.where(valid, sy, float("-inf")), axis=0)
    hiz = tl.max(tl.where(valid, sz, float("-inf")), axis=0)
    ux = sx - cx
    uy = sy - cy
    uz = sz - cz
    sn = ux * ux + uy * uy + uz * uz  # ||s'||^2: a row's squared distance is sn + e
    r2 = tl.max(tl.where(valid, sn, 0.0), axis=0)  # the block's squared radius about its centroid
    px = ux[:, None]
    py = uy[:, None]
    pz = uz[:, None]
    lanes = tl.arange(0, BLOCK_M)
    best = tl.full([BLOCK_N, BLOCK_M], float("inf"), tl.float32)
    best_m0 = tl.zeros([BLOCK_N, BLOCK_M], tl.int32)
    # U: the largest current nearest distance over the block's rows (an upper bound of every row's answer). A
    # tile whose AABB is farther than U from the block's AABB cannot hold a better point for any row: skipped.
    # The margin covers the centred form's rounding (~1e-7 of (|s'| + |t'|)^2 <= 8 r2 + 2 U near the answer).
    U = float("inf")
    nproc = 0
    t_base = tgt + b * stride_tb
    Mp = T * BLOCK_M
    g0 = tl.load(start + b * stride_stb + pid_n) // GROUP
    for gi in range(0, G):  # groups circularly from the block's own position in Morton order
        g = g0 + gi
        g = tl.where(g >= G, g - G, g)
        gap = _box_gap2(gboxes + b * stride_gb + g, G, lox, loy, loz, hix, hiy, hiz)
        if gap <= U + 1e-5 * (8.0 * r2 + 2.0 * U):
            for j in range(0, GROUP):
                tile = g * GROUP + j
                if tile < T:
                    gap = _box_gap2(boxes + b * stride_bb + tile, T, lox, loy, loz, hix, hiy, hiz)
                    if gap <= U + 1e-5 * (8.0 * r2 + 2.0 * U):
                        best, best_m0 = _tile_step(t_base, Mp, tile * BLOCK_M, lanes, cx, cy, cz, px, py, pz,
                                                   best, best_m0)  # fmt: skip
                        nproc += 1
                        # the bound needs a reduction over the tile: after each of the first 8 tiles, then every 8th
                        if (nproc <= 8) | (nproc % 8 == 0):
                            U = tl.max(tl.where(valid, sn + tl.min(best, axis=1), float("-inf")), axis=0)
    _store_nearest(out_idx + b * stride_ob + offs_n, mask_n, best, best_m0, lanes)
