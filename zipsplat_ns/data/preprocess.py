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

import functools
from typing import Optional, Tuple, Union

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
    """``uint8 (H, W, 3)`` -> float32 ``(3, h', w')`` in [0, 1]; torch bilinear with antialias (the whole image; the
    loader uses :func:`resize_crop_image`, which computes only the pixels of the crop)."""
    arr = np.ascontiguousarray(image)
    if not arr.flags.writeable:  # PIL-backed arrays are read-only; torch wants writable memory
        arr = arr.copy()
    x = torch.from_numpy(arr).permute(2, 0, 1)[None].float()
    if tuple(x.shape[-2:]) != tuple(hw):
        x = F.interpolate(x, size=hw, mode="bilinear", align_corners=False, antialias=True)
    return (x[0] / 255.0).clamp_(0.0, 1.0)


@functools.lru_cache(maxsize=32)
def aa_weights(n_in: int, n_out: int) -> torch.Tensor:
    """``(n_out, n_in)`` float32 matrix of torch's antialiased bilinear resize along one axis (``align_corners=False``):
    ``out[i] = sum_j W[i, j] * in[j]``. Read off ``F.interpolate`` itself (a unit impulse per input pixel, along a
    width axis, height 1 -> 1, which is the identity), so these are torch's own float32 weights, rounding included."""
    w = torch.empty(n_out, n_in, dtype=torch.float32)
    for j0 in range(0, n_in, 256):  # bounded memory for wide images
        j1 = min(n_in, j0 + 256)
        probe = torch.zeros(1, j1 - j0, 1, n_in)
        probe[0, torch.arange(j1 - j0), 0, torch.arange(j0, j1)] = 1.0
        resp = F.interpolate(probe, size=(1, n_out), mode="bilinear", align_corners=False, antialias=True)
        w[:, j0:j1] = resp[0, :, 0, :].T
    return w


@functools.lru_cache(maxsize=64)
def _band_plan(n_in: int, n_out: int, start: int, length: int, group: int = 8):
    """Outputs ``start .. start + length - 1`` of :func:`aa_weights` as blocks of ``group`` outputs, each reading
    ``L`` consecutive inputs: ``(lo, hi, idx, wb)`` with the input span ``[lo, hi)`` the blocks need, ``idx``
    (``nb * L``) their input rows relative to ``lo`` and ``wb`` ``(nb, group, L)`` their weights."""
    W = aa_weights(n_in, n_out)[start : start + length]
    nz = (W != 0).numpy()
    first = nz.argmax(1)
    last = n_in - 1 - nz[:, ::-1].argmax(1)
    nb = -(-length // group)
    starts = [int(first[b * group : (b + 1) * group].min()) for b in range(nb)]
    ends = [int(last[b * group : (b + 1) * group].max()) + 1 for b in range(nb)]
    L = max(e - s for s, e in zip(starts, ends))
    lo, hi = int(first.min()), int(last.max()) + 1
    starts = [max(lo, min(s, hi - L)) for s in starts]
    hi = max(hi, max(starts) + L)
    wb = torch.zeros(nb, group, L)
    for b, s in enumerate(starts):
        rows = W[b * group : (b + 1) * group, s : s + L]
        wb[b, : rows.shape[0]] = rows
    idx = (torch.tensor(starts)[:, None] - lo + torch.arange(L)[None]).reshape(-1)
    return lo, hi, idx, wb


def resize_crop_image(image: torch.Tensor, hw: Tuple[int, int], top: int, left: int, size: int) -> torch.Tensor:
    """``(3, H, W)`` tensor with values 0..255 (uint8) -> float32 ``(3, size, size)`` in [0, 1]: the ``size x size``
    crop at ``(top, left)`` of the antialiased bilinear resize to ``hw``, i.e. ``resize_image(...)[:, top:top+size,
    left:left+size]``, but only the crop's pixels are computed (about 2.4x faster for 360x640 -> 252x448).

    Same filter: the weights are torch's own (:func:`aa_weights`), applied separably as small banded matrix products
    over the input rows / columns the crop needs. Only the summation order differs (vertical pass first, BLAS),
    which changes results by float rounding: below 1e-6 after the /255 (``tests/test_dataset.py`` checks it against
    the full ``F.interpolate`` for several sizes). An image that already has the size ``hw`` is only cropped.
    """
    C, H, W = image.shape
    nh, nw = hw
    if (H, W) == (nh, nw):
        return (image[:, top : top + size, left : left + size].float() / 255.0).clamp_(0.0, 1.0)
    ylo, yhi, yidx, ywb = _band_plan(H, nh, top, size)
    xlo, xhi, xidx, xwb = _band_plan(W, nw, left, size)
    x = image[:, ylo:yhi, xlo:xhi].float()  # (C, h, w): the input the crop depends on
    nb, G, L = ywb.shape
    v = torch.matmul(ywb, x.index_select(1, yidx).view(C, nb, L, xhi - xlo)).view(C, nb * G, xhi - xlo)[:, :size]
    vt = v.permute(2, 0, 1).reshape(xhi - xlo, C * size)  # columns first for the horizontal pass
    nb, G, L = xwb.shape
    h = torch.bmm(xwb, vt.index_select(0, xidx).view(nb, L, C * size)).view(nb * G, C, size)[:size]
    return (h.permute(1, 2, 0) / 255.0).clamp_(0.0, 1.0).contiguous()


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
    rs = slice(int(rows[0]), int(rows[0]) + size) if (np.diff(rows) == 1).all() else rows
    cs = slice(int(cols[0]), int(cols[0]) + size) if (np.diff(cols) == 1).all() else cols
    a = a[rs] if isinstance(rs, slice) else a.take(rs, axis=0)  # two takes: 3x faster than a[rows[:, None], cols]
    return a[:, cs] if isinstance(cs, slice) else a.take(cs, axis=1)


def preprocess_view(
    image: Union[np.ndarray, torch.Tensor], camera: np.ndarray, size: int = 252, depth: Optional[np.ndarray] = None
) -> Tuple[torch.Tensor, np.ndarray, Optional[np.ndarray]]:
    """One view: ``uint8 (H, W, 3)`` image (or a ``uint8 (3, H, W)`` tensor), ``[w, h, fx, fy, cx, cy]`` camera,
    optional ``(H_d, W_d)`` depth.

    Returns float32 ``(3, S, S)`` image in [0, 1], float64 ``(6,)`` camera of the crop, and float32 ``(S, S)`` depth
    (``-1`` = invalid) or ``None``. A depth map of another size than the image is resized straight to the image's
    cover size, so it stays aligned with the colours. Only the crop is resized (:func:`resize_crop_image`).
    """
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"preprocess_view: expected a (3, H, W) tensor, got shape {tuple(image.shape)}")
        t = image
    else:
        img = np.asarray(image)
        if img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"preprocess_view: expected an (H, W, 3) image, got shape {img.shape}")
        if not img.flags.writeable:  # PIL-backed arrays are read-only; torch wants writable memory
            img = img.copy()
        t = torch.from_numpy(img).permute(2, 0, 1)
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise ValueError(f"preprocess_view: size must be an int, got {type(size).__name__}")  # noqa: TRY004
    h, w = t.shape[-2:]
    nh, nw = cover_size(h, w, size)
    top, left = crop_offsets(nh, nw, size)
    out = resize_crop_image(t, (nh, nw), top, left, size)
    cam = transform_camera(camera, (h, w), size)
    dep = None
    if depth is not None:
        dep = np.ascontiguousarray(nearest_cover_crop(_depth_invalid_to_nan(depth), (h, w), size))
        dep = np.where(np.isnan(dep), np.float32(INVALID_DEPTH), dep).astype(np.float32)
    return out, cam, dep


def _depth_invalid_to_nan(depth: np.ndarray) -> np.ndarray:
    d = np.asarray(depth, dtype=np.float32)
    return np.where(np.isfinite(d) & (d >= 0), d, np.float32(np.nan)).astype(np.float32)


__all__ = [
    "cover_size",
    "crop_offsets",
    "transform_camera",
    "resize_image",
    "aa_weights",
    "resize_crop_image",
    "resize_depth",
    "nearest_cover_crop",
    "preprocess_view",
]
