"""An image folder, a glob pattern or a video -> one unposed scene (for inference).

Poses are identity and each view gets a centred pinhole camera with a guessed horizontal field of view;
``meta["posed"]`` is ``False`` so that nothing downstream mistakes them for real poses. Views of different sizes
are fine (cameras are per view); ``--square`` centre-crops every view to a square of one common size instead.

Photos whose EXIF Orientation tag says the pixels are stored rotated or mirrored (phones do this) are turned upright
first (the size and camera follow) and re-encoded like every other re-encoded view (lossless WebP); photos without
the tag, or with Orientation 1, are stored exactly as before. Only this converter does it: the benchmark converters
match the reference data, which has no EXIF handling.
"""

from __future__ import annotations

import glob as globlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, List, Optional, Tuple

import numpy as np
from rich.console import Console

from zipsplat_ns.data.converters.common import (
    BaseConvertConfig,
    ConvertError,
    ConvertReport,
    ImageOps,
    SceneSkipped,
    SplitWriters,
    build_scene,
    fov_camera,
    image_size,
    pose_row,
    process_view,
    progress_bar,
    sanitize_key,
    writer_kwargs,
)
from zipsplat_ns.images import IMAGE_SUFFIXES, VIDEO_SUFFIXES

_GLOB_CHARS = set("*?[")
EXIF_ORIENTATION = 0x0112  # the TIFF/EXIF Orientation tag: 1 = upright, 2-8 = mirrored and/or rotated


def exif_orientation(data: bytes, name: str = "image") -> Any:
    """The EXIF Orientation value of an encoded image (``None`` without the tag); raises ``ValueError`` naming
    ``name`` when the bytes are not an image."""
    from PIL import Image, UnidentifiedImageError

    if data[:8] == b"\x89PNG\r\n\x1a\n" and b"eXIf" not in data and b"Raw profile type exif" not in data:
        return None  # PIL decodes a whole PNG to look for EXIF (an eXIf chunk may follow the pixels); none here
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.getexif().get(EXIF_ORIENTATION)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ValueError(f"cannot read {name} as an image ({exc})") from exc


def exif_upright(data: bytes, name: str = "image") -> np.ndarray:
    """Decode to uint8 RGB ``(H, W, 3)`` turned upright by the EXIF orientation (``PIL.ImageOps.exif_transpose``),
    so that a phone photo stored sideways is seen the way it was taken."""
    from PIL import Image, UnidentifiedImageError
    from PIL import ImageOps as PILImageOps

    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.array(PILImageOps.exif_transpose(im).convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ValueError(f"cannot decode {name} ({len(data)} bytes): {exc}") from exc


def _identity_row() -> np.ndarray:
    return pose_row(np.eye(4)[:3])


def find_media(src) -> Tuple[str, List[Path]]:
    """``("video", [file])`` or ``("images", sorted files)`` for a folder, a glob, a video or one image."""
    s = str(src)
    if any(c in s for c in _GLOB_CHARS) and not Path(s).exists():
        files = sorted(Path(p) for p in globlib.glob(s, recursive=True) if Path(p).is_file())
        if not files:
            raise ConvertError(f"convert media: the pattern {s!r} matches no files")
        return "images", files
    p = Path(s)
    if not p.exists():
        raise ConvertError(f"convert media: {p} does not exist")
    if p.is_dir():
        files = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ConvertError(f"convert media: {p} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
        return "images", files
    if p.suffix.lower() in VIDEO_SUFFIXES:
        return "video", [p]
    if p.suffix.lower() in IMAGE_SUFFIXES:
        return "images", [p]
    raise ConvertError(
        f"convert media: cannot tell what {p} is: expected an image folder, a glob pattern, an image "
        f"({', '.join(IMAGE_SUFFIXES)}) or a video ({', '.join(VIDEO_SUFFIXES)})"
    )


def _video_frames(path: Path, num_frames: int, stride: Optional[int]) -> Iterator[Tuple[int, np.ndarray]]:
    """Evenly sampled frames (``linspace(0, T-1, n).round()``) or every ``stride``-th, as uint8 RGB."""
    import imageio.v3 as iio

    try:
        total = sum(1 for _ in iio.imiter(path))  # container frame counts are often missing or wrong
    except Exception as exc:  # noqa: BLE001 - any decoder failure becomes a clear error naming the file
        raise ConvertError(f"convert media: cannot decode {path} as a video ({type(exc).__name__}: {exc})") from exc
    if total == 0:
        raise ConvertError(f"convert media: {path} contains no frames")
    if stride:
        wanted = set(range(0, total, stride))
    else:
        wanted = set(np.linspace(0, total - 1, min(num_frames, total)).round().astype(int).tolist())
    for i, f in enumerate(iio.imiter(path)):
        if i in wanted:
            f = np.asarray(f)
            if f.ndim == 2:
                f = np.repeat(f[..., None], 3, -1)
            yield i, np.ascontiguousarray(f[..., :3].astype(np.uint8))


def convert_media(
    src,
    dst: Path,
    *,
    key: Optional[str] = None,
    num_frames: int = 8,
    stride: Optional[int] = None,
    fov_deg: float = 60.0,
    square: bool = False,
    size: Optional[int] = None,
    max_size: Optional[int] = None,
    shard_size_mb: float = 512.0,
    overwrite: bool = False,
    progress: bool = True,
) -> ConvertReport:
    """Write one unposed scene from an image folder, a glob pattern, one image or a video."""
    if num_frames < 1 and not stride:
        raise ConvertError(f"convert media: --num-frames must be >= 1, got {num_frames}")
    kind, files = find_media(src)
    src_path = Path(str(src))
    name = key or (files[0].stem if kind == "video" else (src_path.name if src_path.is_dir() else files[0].parent.name))
    key = sanitize_key(name)
    report = ConvertReport("media", str(src))
    cams, images, names = [], [], []
    skipped: List[Tuple[str, str]] = []

    square_size = size
    if square and square_size is None and kind == "images":  # common size = the smallest square side (headers only)
        sides = []
        for f in files:
            try:
                sides.append(min(image_size(f.read_bytes(), str(f))))
            except (ValueError, OSError):
                pass
        square_size = min(sides) if sides else None
    ops = ImageOps(undistort=False, square=square, square_size=square_size, max_size=max_size)

    rotated: list[str] = []  # photos turned upright by their EXIF orientation
    odd_tags: list[str] = []  # photos whose Orientation value is not 1-8: stored as they are, and said so

    def add(data, label: str) -> None:
        orientation = None if isinstance(data, np.ndarray) else exif_orientation(data, label)
        turned = orientation in (2, 3, 4, 5, 6, 7, 8)
        if turned:
            data = exif_upright(data, label)  # pixels now, so re-encoded like a video frame (lossless WebP)
        w, h = (data.shape[1], data.shape[0]) if isinstance(data, np.ndarray) else image_size(data, label)
        img, cam = process_view(data, fov_camera(w, h, fov_deg), None, ops, name=label)
        cams.append(cam)
        images.append(img)
        names.append(label)
        if turned:
            rotated.append(label)
        elif orientation not in (None, 1):
            odd_tags.append(f"{label} ({orientation!r})")

    with (
        progress_bar(progress) as prog,
        SplitWriters({"all": Path(dst)}, report, **writer_kwargs(shard_size_mb, overwrite)) as out,
    ):
        if kind == "video":
            t = prog.add_task(f"{files[0].name}", total=None)
            for i, frame in _video_frames(files[0], num_frames, stride):
                if square and square_size is None:
                    square_size = ops.square_size = min(frame.shape[:2])
                add(frame, f"frame {i}")
                prog.advance(t)
        else:
            t = prog.add_task(f"{key}", total=len(files))
            for f in files:
                try:
                    add(f.read_bytes(), f.name)
                except (ValueError, OSError) as exc:
                    skipped.append((f.name, str(exc)))
                prog.advance(t)
        if not images:
            reasons = "; ".join(f"{n}: {r}" for n, r in skipped[:5])
            raise ConvertError(f"convert media: no readable image in {src} ({reasons})")
        meta = {
            "format": "media",
            "source": str(src_path.resolve()) if src_path.exists() else str(src),
            "posed": False,
            "fov_deg_guess": float(fov_deg),
            "frames": names,
        }
        try:
            scene = build_scene(key, cams, [_identity_row()] * len(images), images, meta)
        except SceneSkipped as exc:
            raise ConvertError(f"convert media: {src}: {exc.reason}") from exc
        out.add("all", scene, skipped)
    if rotated or odd_tags:
        line = f"convert media: {key}: {len(rotated)} of {len(images)} image(s) rotated upright by their EXIF "
        line += "orientation" + (f"; {len(odd_tags)} with an invalid Orientation value, stored as they are: "
                                 f"{', '.join(odd_tags[:5])}" if odd_tags else "")  # fmt: skip
        Console(stderr=True).print(line, markup=False, highlight=False)
    return report


@dataclass
class MediaConvertConfig(BaseConvertConfig):
    """Turn an image folder, a glob pattern ("photos/*.jpg") or a video into one UNPOSED scene for inference.

    Poses are identity and intrinsics a guess from --fov-deg (meta "posed": false). Views keep their own sizes
    unless --square is given. Photos with an EXIF orientation (phones) are turned upright first.
    """

    key: Optional[str] = None
    """Scene key (default: the folder or video name)."""
    num_frames: int = 8
    """Video: number of evenly spaced frames to take."""
    stride: Optional[int] = None
    """Video: take every n-th frame instead of --num-frames."""
    fov_deg: float = 60.0
    """Guessed horizontal field of view in degrees."""
    square: bool = False
    """Centre-crop every view to a square of one common size (--size, else the smallest side)."""
    size: Optional[int] = None
    """Side of the square views with --square."""
    max_size: Optional[int] = None
    """Shrink images so that the longest side is at most this many pixels."""

    def run(self) -> ConvertReport:
        return self._run(convert_media)
