"""The reference's log-uint8 depth codec (8-bit greyscale WebP lossless; 0 = invalid).

- valid pixels: ``depth >= 0`` and finite; ``d_min`` / ``d_max`` are the 0.1 / 99.9 percentiles of the valid depths
  and pixels outside that range become invalid;
- ``u8 = clip(round((ln d - ln d_min) / (ln d_max - ln d_min) * 254) + 1, 1, 255)``;
- decode ``d = exp((u8 - 1) / 254 * ln(d_max / d_min) + ln d_min)``, invalid -> ``-1``;
- a flat range (``d_max - d_min < 1e-6``) stores 128 everywhere valid, which decodes to ``d_min``.

The step between codes is ``ln(d_max / d_min) / 254`` in log depth, so the relative error is at most
``expm1(ln(d_max / d_min) / 508)``: 0.9 % for a 100x depth range, below 1 % up to about 156x.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

from zipsplat_ns.data.images import decode_gray, encode_image

INVALID_DEPTH = -1.0


def quantize_depth(depth: np.ndarray) -> Tuple[np.ndarray, Tuple[float, float]]:
    """``(H, W)`` depth -> ``(uint8 codes, (d_min, d_max))``; NaN, inf and negative values are invalid."""
    d = np.asarray(depth, dtype=np.float64)
    if d.ndim != 2:
        raise ValueError(f"encode_depth: expected a (H, W) depth map, got shape {d.shape}")
    valid = np.isfinite(d) & (d >= 0)
    codes = np.zeros(d.shape, dtype=np.uint8)
    if not valid.any():
        return codes, (0.0, 0.0)
    d_min, d_max = np.percentile(d[valid], [0.1, 99.9])
    d_min = max(float(d_min), 1e-12)  # log needs a positive floor; a zero depth is a degenerate but valid value
    d_max = float(d_max)
    valid &= (d >= d_min) & (d <= d_max)
    if d_max - d_min < 1e-6:
        codes[valid] = 128
        return codes, (d_min, d_max)
    lo, hi = np.log(d_min), np.log(d_max)
    q = np.round((np.log(np.where(valid, d, d_min)) - lo) / (hi - lo) * 254) + 1
    codes[valid] = np.clip(q, 1, 255).astype(np.uint8)[valid]
    return codes, (d_min, d_max)


def dequantize_depth(codes: np.ndarray, d_range: Tuple[float, float]) -> np.ndarray:
    """Inverse of :func:`quantize_depth`: float32 depth, invalid = -1."""
    d_min, d_max = float(d_range[0]), float(d_range[1])
    codes = np.asarray(codes)
    out = np.full(codes.shape, INVALID_DEPTH, dtype=np.float32)
    valid = codes > 0
    if d_max - d_min < 1e-6:
        out[valid] = d_min
        return out
    lo = np.log(max(d_min, 1e-12))
    out[valid] = np.exp((codes[valid].astype(np.float64) - 1) / 254.0 * (np.log(d_max) - lo) + lo)
    return out


def encode_depth(depth: np.ndarray) -> Tuple[bytes, Tuple[float, float]]:
    """Depth map -> (WebP-lossless greyscale bytes, (d_min, d_max))."""
    codes, rng = quantize_depth(depth)
    return encode_image(codes, "webp"), rng


def decode_depth(data: bytes, d_range: Tuple[float, float], *, name: str = "depth") -> np.ndarray:
    """WebP bytes + range -> float32 depth (invalid = -1)."""
    return dequantize_depth(decode_gray(data, name=name), d_range)
