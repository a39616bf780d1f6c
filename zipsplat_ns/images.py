"""Image and video loading, and the square crop the network expects.

``to_square`` follows the reference inference package: centre crop of the longer side (integer-floor offset), then a
PIL LANCZOS resize through uint8. (Training and evaluation in the reference use torch bilinear with antialias
instead; :mod:`zipsplat_ns.data` handles that path.)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional, Tuple, Union

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from zipsplat_ns.camera import Camera

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm")
PathLike = Union[str, os.PathLike]


def load_image(path: PathLike) -> Float[Tensor, "3 H W"]:
    """Read an image file as RGB float ``(3, H, W)`` in [0, 1] (alpha is dropped, greyscale is expanded)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"load_image: no such file: {path}")
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ValueError(f"load_image: cannot decode {path} as an image ({exc})") from exc
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255.0


def load_video(path: PathLike, num_frames: int = 8, stride: Optional[int] = None) -> List[Float[Tensor, "3 H W"]]:
    """Sample frames of a video: ``num_frames`` evenly spaced (``linspace(0, T-1, n).round()``), or every ``stride``."""
    import imageio.v3 as iio

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"load_video: no such file: {path}")
    if num_frames < 1 and stride is None:
        raise ValueError(f"load_video: num_frames must be >= 1, got {num_frames}")
    def frames():
        return iio.imiter(path)

    try:
        total = sum(1 for _ in frames())  # frame counts in container metadata are often missing or wrong
    except Exception as exc:  # noqa: BLE001 - any decoder failure is reported with the file name
        raise ValueError(f"load_video: cannot decode {path} as a video ({type(exc).__name__}: {exc})") from exc
    if total == 0:
        raise ValueError(f"load_video: {path} contains no frames")
    if stride is not None:
        if stride < 1:
            raise ValueError(f"load_video: stride must be >= 1, got {stride}")
        wanted = set(range(0, total, stride))
    else:
        wanted = set(np.linspace(0, total - 1, min(num_frames, total)).round().astype(int).tolist())
    out = []
    for i, f in enumerate(frames()):  # second pass keeps only the sampled frames in memory
        if i in wanted:
            f = np.asarray(f)
            if f.ndim == 2:
                f = np.repeat(f[..., None], 3, -1)
            out.append(torch.from_numpy(np.ascontiguousarray(f[..., :3])).permute(2, 0, 1).float() / 255.0)
    return out


def save_png(image: Float[Tensor, "3 H W"], path: PathLike) -> None:
    """Write an RGB image in [0, 1] (clamped) as an 8-bit PNG (values rounded to the nearest level)."""
    from PIL import Image

    arr = (image.detach().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    Image.fromarray(arr).save(path)


def safe_filename(name: str) -> str:
    """``name`` with every character other than letters, digits, ``-``, ``_`` and ``.`` replaced by ``_``."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def square_crop_box(w: int, h: int) -> Tuple[int, int, int]:
    """``(left, top, side)`` of the centred square crop (integer-floor offsets)."""
    side = min(w, h)
    return (w - side) // 2, (h - side) // 2, side


def square_camera(camera: Camera, wh, size: int) -> Camera:
    """Intrinsics after :func:`to_square` of images of ``wh = (w, h)`` (or ``(..., 2)`` per image, broadcasting over
    the camera batch): the reference's ``camera.crop((side - w, side - h)).scale(size / side)``, ``side = min(w, h)``."""
    wh = torch.as_tensor(wh, dtype=torch.float64)
    side = wh.min(-1, keepdim=True).values
    return camera.crop((side - wh).to(camera.dtype)).scale((size / side).expand_as(wh).to(camera.dtype))


def to_square(
    image: Float[Tensor, "3 H W"], size: int = 252, camera: Optional[Camera] = None
) -> Tuple[Float[Tensor, "3 S S"], Optional[Camera]]:
    """Centre-crop to a square and resize to ``size`` with PIL LANCZOS (through uint8, truncating, as the reference;
    a crop that already has the size is returned as it is); adjust ``camera`` to match.

    The intrinsics follow the reference: ``camera.crop((side - w, side - h)).scale(size / side)``.
    """
    from PIL import Image

    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"to_square: expected an image of shape (3, H, W), got {tuple(image.shape)}")
    h, w = image.shape[-2:]
    left, top, side = square_crop_box(w, h)
    crop = image[:, top : top + side, left : left + side]
    if side == size:
        out = crop.float()  # the reference resizes (and quantises) only when the size changes
    else:
        # as the reference: clip(x * 255) truncated to uint8 (float32 maths, so 8-bit sources round-trip exactly)
        u8 = (crop.float() * 255).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        u8 = np.asarray(Image.fromarray(u8).resize((size, size), Image.LANCZOS))
        out = torch.from_numpy(u8.copy()).permute(2, 0, 1).float().to(image.device) / 255.0
    return out, (square_camera(camera, (w, h), size) if camera is not None else None)


__all__ = ["load_image", "load_video", "to_square", "square_camera", "square_crop_box", "IMAGE_SUFFIXES", "VIDEO_SUFFIXES"]
