"""Encoded-image helpers for shards: format detection from magic bytes, encode and decode."""

from __future__ import annotations

import io

import numpy as np


def detect_image_ext(data: bytes) -> str:
    """``jpg``, ``png``, ``webp`` or ``bin`` from the first bytes (the shard member suffix)."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return "bin"


def encode_image(image: np.ndarray, fmt: str = "webp", quality: int = 95, *, webp_effort: int = 25) -> bytes:
    """Encode ``uint8 (H, W, 3)`` (or ``(H, W)``). WebP and PNG are lossless; JPEG uses ``quality``.

    ``webp_effort`` (0-100) trades encoding time for size only; the pixels are identical at any effort (100 costs about
    1 s per 512x288 image, 25 about 35 ms, for files about 6 % larger).
    """
    from PIL import Image

    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3):
        raise ValueError(f"encode_image: expected uint8 (H, W[, 3]), got {arr.dtype} {arr.shape}")
    buf = io.BytesIO()
    im = Image.fromarray(np.ascontiguousarray(arr))
    if fmt == "webp":
        effort = int(min(100, max(0, webp_effort)))
        im.save(buf, format="WEBP", lossless=True, quality=effort, method=min(6, effort * 6 // 100))
    elif fmt == "png":
        im.save(buf, format="PNG", compress_level=1)
    elif fmt in ("jpg", "jpeg"):
        im.save(buf, format="JPEG", quality=quality)
    else:
        raise ValueError(f"encode_image: unknown format {fmt!r}")
    return buf.getvalue()


def _tv_decode(data: bytes, gray: bool, keep_rgb: bool = False):
    """torchvision's decoder for 8-bit JPEG / PNG / WebP (``uint8 (C, H, W)`` tensor, ``C`` = 3, or 1 for ``gray``;
    a WebP decoded for ``gray`` stays RGB with ``keep_rgb``), or ``None`` where it does not apply or gives up (the PIL
    path then decodes, or raises the error). Same pixels as PIL's ``convert("RGB")`` / ``convert("L")`` for these
    formats (libjpeg-turbo, libpng, libwebp; grey only from grey JPEG / PNG, or WebP through :func:`pil_luma`;
    ``tests/test_dataset.py`` checks it)."""
    global _TV
    if _TV is None:
        try:
            import warnings

            import torch

            with warnings.catch_warnings():  # torchvision 0.29 deprecates its image codecs (PIL stays the fallback)
                warnings.simplefilter("ignore", DeprecationWarning)
                from torchvision.io import ImageReadMode, decode_jpeg, decode_png, decode_webp

            _TV = (torch, ImageReadMode, {"jpg": decode_jpeg, "png": decode_png, "webp": decode_webp})
        except Exception:  # noqa: BLE001 - no (usable) torchvision: PIL only
            _TV = False
    if not _TV:
        return None
    torch, mode, fns = _TV
    ext = detect_image_ext(data)
    if ext not in fns:
        return None
    if ext == "png" and not _png_8bit(data, (0,) if gray else (0, 2, 4, 6)):
        return None
    if ext == "jpg" and _jpeg_components(data) not in ((1,) if gray else (1, 3)):
        return None
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # frombuffer on immutable bytes: we never write to it
            buf = torch.frombuffer(data, dtype=torch.uint8)
        t = fns[ext](buf, mode=mode.RGB if ext == "webp" or not gray else mode.GRAY)
    except Exception:  # noqa: BLE001 - corrupt or unsupported: let PIL decide (and word the error)
        return None
    if t.dtype != torch.uint8 or t.ndim != 3:
        return None
    if gray and t.shape[0] == 3:  # WebP has no grey mode (a greyscale image is stored as R = G = B)
        if keep_rgb:
            return t
        return torch.from_numpy(pil_luma(t.permute(1, 2, 0).numpy()))[None]
    return t if t.shape[0] == (1 if gray else 3) else None


_TV = None


def _png_8bit(data: bytes, colour_types) -> bool:
    """IHDR says 8 bits per sample and one of ``colour_types`` (0 grey, 2 RGB, 4 grey+alpha, 6 RGBA; never palette
    or 16-bit)."""
    return len(data) > 26 and data[12:16] == b"IHDR" and data[24] == 8 and data[25] in colour_types


def _jpeg_components(data: bytes) -> int:
    """Component count of a baseline / extended / progressive JPEG's frame header; 0 when there is an Adobe (APP14)
    marker (CMYK or untransformed RGB: those go through PIL) or the header cannot be read."""
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return False
        marker = data[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        seg = (data[i + 2] << 8) | data[i + 3]
        if marker == 0xEE:  # Adobe
            return 0
        if marker in (0xC0, 0xC1, 0xC2):
            return data[i + 9] if i + 9 < n else 0
        if marker == 0xDA:
            return 0
        i += 2 + seg
    return 0


def decode_image_tensor(data: bytes, *, name: str = "image"):
    """Decode encoded bytes to a ``uint8 (3, H, W)`` RGB tensor (torchvision where it applies, else PIL); the same
    pixels as :func:`decode_image`. Raises ``ValueError`` naming ``name`` on failure."""
    t = _tv_decode(data, gray=False)
    if t is not None:
        return t
    import torch

    return torch.from_numpy(_pil_decode(data, "RGB", name)).permute(2, 0, 1)


def decode_gray_deferred(data: bytes, *, name: str = "depth") -> np.ndarray:
    """Decode a greyscale image as ``uint8 (H, W, C)``: ``C = 1`` already grey, or ``C = 3`` RGB still to be reduced by
    :func:`pil_luma` (WebP stores greyscale as RGB). Select pixels first (crop, nearest resize), then call
    :func:`pil_luma`: the result equals :func:`decode_gray` on those pixels (the conversion is per pixel), while only
    the kept pixels are converted."""
    t = _tv_decode(data, gray=True, keep_rgb=True)
    if t is not None:
        return t.permute(1, 2, 0).numpy()
    return _pil_decode(data, "L", name)[..., None]


def pil_luma(pixels: np.ndarray) -> np.ndarray:
    """PIL's ``convert("L")`` of ``uint8 (..., 3)`` RGB (ITU-R 601-2 in 16-bit fixed point, rounded) or the single
    channel of ``(..., 1)``; ``uint8 (...)``."""
    a = np.asarray(pixels)
    if a.shape[-1] == 1:
        return a[..., 0]
    if np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 0], a[..., 2]):
        return a[..., 0]  # grey stored as RGB: L = R exactly (the weights sum to 65536)
    r, g, b = (a[..., k].astype(np.int32) for k in range(3))
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)


def _pil_decode(data: bytes, mode: str, name: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.array(im.convert(mode), dtype=np.uint8)  # a writable copy
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ValueError(f"cannot decode {name} ({len(data)} bytes): {exc}") from exc


def decode_image(data: bytes, *, name: str = "image") -> np.ndarray:
    """Decode encoded bytes to ``uint8 (H, W, 3)`` RGB; raises ``ValueError`` naming ``name`` on failure."""
    t = _tv_decode(data, gray=False)
    if t is not None:
        return np.ascontiguousarray(t.permute(1, 2, 0).numpy())
    return _pil_decode(data, "RGB", name)


def decode_gray(data: bytes, *, name: str = "depth") -> np.ndarray:
    """Decode an 8-bit greyscale image (the depth codec's WebP) to ``uint8 (H, W)``."""
    t = _tv_decode(data, gray=True)
    if t is not None:
        return t[0].numpy()
    return _pil_decode(data, "L", name)
