"""Hard k-means token selection ("compression"), reference doc §1.6.

The reference runs its k-means under ``torch.no_grad()`` and ``torch.autocast(bfloat16)``. Autocast does *not* make
it a bf16 computation: the distances come from ``torch.cdist``, which is on autocast's float32 list on CUDA (and on
the CPU list too, checked with torch 2.14: ``cdist`` of bf16 inputs under CPU autocast returns float32), so it always
runs in fp32; ``scatter_add``/indexing/division are not autocast ops and run in the input dtype, which is fp32 in the
reference's fp32 inference. We therefore reproduce it by computing everything explicitly in fp32 with autocast
disabled; in our bf16 fast mode the tokens are upcast to fp32 first, which is exactly what autocast does to the
``cdist`` inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

CHUNK_SIZE = 2048  # the reference's rows per distance chunk: the least we use
CHUNK_BYTES = 256 * 2**20  # ours: larger chunks while a chunk's distance matrix stays under this (fewer GPU calls)
N_ITERS = 5


@dataclass
class KMeansResult:
    centroids: Float[Tensor, "B K D"]
    nearest_idx: Int[Tensor, "B K"]  # index of the real token closest to each centroid (duplicates possible)
    assignments: Int[Tensor, "B N"]  # cluster of every token (after the last update; for visualisation)


def num_selected_tokens(num_tokens: int, compression: float) -> int:
    """``K = max(1, int(N * compression))``."""
    return max(1, int(num_tokens * compression))


def _chunked_argmin_dist(a: Tensor, b: Tensor, chunk_size: int) -> Tensor:
    """For every row of ``a`` (B, N, D) the index of the nearest row of ``b`` (B, M, D), Euclidean; chunked over N.

    Rows are independent, so the chunking only bounds memory: chunks grow beyond ``chunk_size`` rows while their
    ``(B, rows, M)`` fp32 distances fit in ``CHUNK_BYTES`` (one ``cdist`` for small models' token counts instead of
    four per iteration; each is a GPU call the host has to issue).
    """
    B, N = a.shape[:2]
    chunk_size = max(chunk_size, CHUNK_BYTES // (4 * max(1, B * b.shape[1])))
    if chunk_size >= N:
        return torch.cdist(a, b).argmin(-1)
    out = []
    for s in range(0, N, chunk_size):
        out.append(torch.cdist(a[:, s : s + chunk_size], b).argmin(-1))
    return torch.cat(out, 1)


@torch.no_grad()
def hard_kmeans(
    x: Float[Tensor, "B N D"], k: int, n_iters: int = N_ITERS, chunk_size: int = CHUNK_SIZE
) -> KMeansResult:
    """Hard k-means with uniform init (tokens at ``linspace(0, N-1, K).round()``).

    Each iteration assigns every token to its nearest centroid and replaces each centroid by the mean of its tokens;
    counts are clamped to >= 1, so an *empty* cluster gets the zero vector as centroid.
    """
    B, N, D = x.shape
    if not 1 <= k <= N:
        raise ValueError(f"k must be in [1, N={N}], got {k}")
    with torch.autocast(device_type=x.device.type, enabled=False):
        x = x.float()
        init = torch.linspace(0, N - 1, k, device=x.device).round().long()
        centroids = x[:, init].clone()
        assign = torch.zeros(B, N, dtype=torch.long, device=x.device)
        for _ in range(n_iters):
            assign = _chunked_argmin_dist(x, centroids, chunk_size)  # (B, N)
            sums = torch.zeros(B, k, D, device=x.device, dtype=x.dtype)
            sums.scatter_add_(1, assign[..., None].expand(B, N, D), x)
            counts = torch.zeros(B, k, device=x.device, dtype=x.dtype)
            counts.scatter_add_(1, assign, torch.ones_like(assign, dtype=x.dtype))
            centroids = sums / counts.clamp(min=1)[..., None]
        nearest = _chunked_argmin_dist(centroids, x, chunk_size)  # (B, K)
    return KMeansResult(centroids=centroids, nearest_idx=nearest, assignments=assign)


def select_tokens(tokens: Float[Tensor, "B N D"], compression: float) -> Int[Tensor, "B K"]:
    """Token indices kept at a given compression: all tokens (``arange``) if ``K >= N``, else k-means nearest ids."""
    B, N, _ = tokens.shape
    k = num_selected_tokens(N, compression)
    if k >= N:
        return torch.arange(N, device=tokens.device).expand(B, N)
    return hard_kmeans(tokens, k).nearest_idx
