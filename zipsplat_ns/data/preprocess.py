"""Training / evaluation image preprocessing: resize-to-cover, centre crop to ``S x S``, intrinsics kept exact.

This is the reference's train/eval filter (not the inference package's PIL LANCZOS path of
:func:`zipsplat_ns.images.to_square`):

1. **Resize to cover** ``S x S``: one uniform scale ``max(S / h, S / w)``; the new size is rounded to *even* integers
   (and never below ``S``); colours use torch bilinear interpolation with antialias (``align_corners=False``).
   RE10K 360x640 and DL3DV 540x960 become 252x448, MipNeRF360 822x1236 becomes 252x378.
2. **Centre crop** to ``S x S`` with the integer offsets ``left = (w' - S) // 2``, ``top = (h' - S) // 2``.
3. Colours to float32 ``(3, S, S)`` in [0, 1].

Intrinsics follow the same transform exactly. Pixel ``(0, 0)`` is the top-left *corner* of the image (pixel centres
at ``+0.5``), so a resize from ``w`` to ``w'`` maps every continuous image coordinate ``u`` to ``u * w' / w``: ``fx``
and ``cx`` scale by ``s_x = w' / w`` and ``fy`` / ``cy`` by ``s_y = h' / h`` (the two differ slightly because of the
even rounding). The crop then subtracts its offsets from ``cx`` / ``cy`` and sets the size to ``S``.

If the stored camera's ``(w, h)`` differs from the decoded image's size, the camera is first rescaled to the decoded
size (the camera's ``w, h`` define the pixel frame its intrinsics are expressed in).

Depth is resized with nearest-neighbour sampling (``floor`` source index, as OpenCV's ``INTER_NEAREST``); invalid
pixels (negative or non-finite) are carried as NaN and come out as ``-1``.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from zipsplat_ns.data.depth_codec import INVALID_DEPTH


def _even(x: float) -> int:
    return int(round(x / 2.0)) * 2


def cover_size(h: int, w: int, size: int) -> Tuple[int, int]:
    """``(h', w')`` of the resize-to-cover step: uniform scale ``max(S/h, S/w)``, even sizes, each ``>= S``."""
    if h <= 0 or w <= 0 or size <= 0:
        raise ValueError(f"cover_size: sizes must be positive, got h={h}, w={w}, S={size}")
    s = max(size / h, size / w)
    return max(size, _even(h * s)), max(size, _even(w * s))


def crop_offsets(h: int, w: int, size: int) -> Tuple[int, int]:
    """``(top, left)`` of the centred ``S x S`` crop (integer floor, as the reference)."""
    return (h - size) // 2, (w - size) // 2


def transform_camera(camera: np.ndarray, src_hw: Tuple[int, int], size: int) -> np.ndarray:
    """Intrinsics ``[w, h, fx, fy, cx, cy]`` of an image of size ``src_hw`` after resize-to-cover and centre crop.

    ``camera``'s own ``(w, h)`` may differ from ``src_hw`` (the decoded image); it is rescaled first.
    """
    cam = np.asarray(camera, dtype=np.float64).copy()
    h, w = src_hw
    # express the intrinsics in the decoded image's pixel frame
    sx0, sy0 = w / cam[0], h / cam[1]
    fx, fy, cx, cy = cam[2] * sx0, cam[3] * sy0, cam[4] * sx0, cam[5] * sy0
    nh, nw = cover_size(h, w, size)
    sx, sy = nw / w, nh / h
    top, left = crop_offsets(nh, nw, size)
    return np.array([size, size, fx * sx, fy * sy, cx * sx - left, cy * sy - top], dtype=np.float64)


def resize_image(image: np.ndarray, hw: Tuple[int, int]) -> torch.Tensor:
    """``uint8 (H, W, 3)`` -> float32 ``(3, h', w')`` in [0, 1]; torch bilinear with antialias."""
    arr = np.ascontiguousarray(image)
    if not arr.flags.writeable:  # PIL-backed arrays are read-only; torch wants writable memory
        arr = arr.copy()
    x = torch.from_numpy(arr).permute(2, 0, 1)[None].float()
    if tuple(x.shape[-2:]) != tuple(hw):
        x = F.interpolate(x, size=hw, mode="bilinear", align_corners=False, antialias=True)
    return (x[0] / 255.0).clamp_(0.0, 1.0)


def resize_depth(depth: np.ndarray, hw: Tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of ``(H, W)`` depth; invalid (``< 0`` or non-finite) stays invalid (``-1``)."""
    d = np.asarray(depth, dtype=np.float32)
    d = np.where(np.isfinite(d) & (d >= 0), d, np.nan).astype(np.float32)
    H, W = d.shape
    h, w = hw
    if (H, W) != (h, w):
        # floor(dst * src / dst_size): the source index OpenCV's INTER_NEAREST and torch "nearest" use
        rows = np.minimum((np.arange(h) * (H / h)).astype(np.int64), H - 1)
        cols = np.minimum((np.arange(w) * (W / w)).astype(np.int64), W - 1)
        d = d[rows[:, None], cols[None, :]]
    return np.where(np.isnan(d), np.float32(INVALID_DEPTH), d).astype(np.float32)


def nearest_cover_crop(arr: np.ndarray, image_hw: Tuple[int, int], size: int) -> np.ndarray:
    """Nearest-neighbour resize of any ``(H_a, W_a)`` map to the cover size of an ``image_hw`` image, then the same
    centre crop as the image. Only the ``S x S`` output pixels are gathered (an elementwise map such as depth
    dequantisation commutes with it, so it can run after this on the small array)."""
    a = np.asarray(arr)
    H, W = a.shape[:2]
    nh, nw = cover_size(image_hw[0], image_hw[1], size)
    top, left = crop_offsets(nh, nw, size)
    rows = np.minimum((np.arange(top, top + size) * (H / nh)).astype(np.int64), H - 1)
    cols = np.minimum((np.arange(left, left + size) * (W / nw)).astype(np.int64), W - 1)
    return a[rows[:, None], cols[None, :]]


def preprocess_view(
    image: np.ndarray, camera: np.ndarray, size: int = 252, depth: Optional[np.ndarray] = None
) -> Tuple[torch.Tensor, np.ndarray, Optional[np.ndarray]]:
    """One view: ``uint8 (H, W, 3)`` image, ``[w, h, fx, fy, cx, cy]`` camera, optional ``(H_d, W_d)`` depth.

    Returns float32 ``(3, S, S)`` image in [0, 1], float64 ``(6,)`` camera of the crop, and float32 ``(S, S)`` depth
    (``-1`` = invalid) or ``None``. A depth map of another size than the image is resized straight to the image's
    cover size, so it stays aligned with the colours.
    """
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"preprocess_view: expected an (H, W, 3) image, got shape {img.shape}")
    h, w = img.shape[:2]
    nh, nw = cover_size(h, w, size)
    top, left = crop_offsets(nh, nw, size)
    out = resize_image(img, (nh, nw))[:, top : top + size, left : left + size].contiguous()
    cam = transform_camera(camera, (h, w), size)
    dep = None
    if depth is not None:
        dep = np.ascontiguousarray(resize_depth(depth, (nh, nw))[top : top + size, left : left + size])
    return out, cam, dep


__all__ = [
    "cover_size",
    "crop_offsets",
    "transform_camera",
    "resize_image",
    "resize_depth",
    "nearest_cover_crop",
    "preprocess_view",
]
