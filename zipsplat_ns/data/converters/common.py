"""Shared pieces of the converters: the report, errors, image operations with exact intrinsics, and output writers.

Pixel convention everywhere: ``(0, 0)`` is the top-left *corner* of the image, so pixel ``i`` has its centre at
``i + 0.5`` (nerfstudio, COLMAP and gsplat agree on this). OpenCV's image functions use pixel *centres* at integer
coordinates, so the principal point is shifted by 0.5 px on the way into and out of ``cv2``.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from zipsplat_ns.data.images import decode_image, detect_image_ext, encode_image
from zipsplat_ns.data.scene import KEY_PATTERN, RawScene, SceneError
from zipsplat_ns.data.shards import ShardWriter


# ---------------------------------------------------------------------------------------------------- errors/report
class ConvertError(ValueError):
    """The whole input is unusable (missing or malformed top-level file, nothing convertible). Names the file."""

    def __init__(self, message: str, report: Optional["ConvertReport"] = None):
        super().__init__(message)
        self.report = report


class SceneSkipped(Exception):
    """Internal: one scene cannot be converted; the converter records ``reason`` and goes on."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class ConvertReport:
    """What a converter did.

    ``converted``: scene keys written, in order; ``splits``: split name -> keys written there;
    ``outputs``: split name -> shard directory; ``skipped``: ``(scene, reason)`` for every scene left out;
    ``skipped_frames``: scene key -> ``[(frame, reason), ...]`` for frames dropped from a converted scene;
    ``num_views``: images written in total; ``notes``: other remarks (e.g. scenes not present in the input).
    """

    fmt: str
    src: str
    outputs: Dict[str, str] = field(default_factory=dict)
    converted: List[str] = field(default_factory=list)
    splits: Dict[str, List[str]] = field(default_factory=dict)
    skipped: List[Tuple[str, str]] = field(default_factory=list)
    skipped_frames: Dict[str, List[Tuple[str, str]]] = field(default_factory=dict)
    num_views: int = 0
    notes: List[str] = field(default_factory=list)

    @property
    def num_converted(self) -> int:
        return len(self.converted)

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    def add_scene(self, key: str, split: str, num_views: int, skipped_frames: Sequence[Tuple[str, str]] = ()) -> None:
        self.converted.append(key)
        self.splits.setdefault(split, []).append(key)
        self.num_views += num_views
        if skipped_frames:
            self.skipped_frames[key] = list(skipped_frames)

    def skip(self, scene: str, reason: str) -> None:
        self.skipped.append((scene, reason))

    def to_dict(self) -> Dict:
        return asdict(self)

    def summary(self, max_lines: int = 50) -> str:
        """Human-readable multi-line summary naming every skipped scene and (up to ``max_lines``) skipped frame."""
        lines = [
            f"convert {self.fmt}: {self.src}",
            f"  converted {self.num_converted} scene(s), {self.num_views} view(s); skipped {self.num_skipped} scene(s)",
        ]
        for split, d in self.outputs.items():
            lines.append(f"  {split}: {len(self.splits.get(split, []))} scene(s) -> {d}")
        for name, reason in self.skipped[:max_lines]:
            lines.append(f"  SKIPPED scene {name}: {reason}")
        if len(self.skipped) > max_lines:
            lines.append(f"  ... and {len(self.skipped) - max_lines} more skipped scenes")
        n = 0
        for key, frames in self.skipped_frames.items():
            lines.append(f"  scene {key}: skipped {len(frames)} frame(s)")
            for fname, reason in frames:
                if n < max_lines:
                    lines.append(f"    - {fname}: {reason}")
                n += 1
        if n > max_lines:
            lines.append(f"    ... and {n - max_lines} more skipped frames")
        lines += [f"  note: {s}" for s in self.notes]
        return "\n".join(lines)


def sanitize_key(name: str) -> str:
    """A valid shard scene key from a name: characters other than letters, digits, ``_`` and ``-`` become ``_``."""
    key = re.sub(r"[^A-Za-z0-9_\-]", "_", str(name)).strip("_") or "scene"
    assert KEY_PATTERN.match(key)
    return key


# ---------------------------------------------------------------------------------------------------- poses
def check_rotation(R: np.ndarray, tol: float = 1e-3) -> Optional[str]:
    """``None`` when ``R`` is a proper rotation, else the reason."""
    if not np.isfinite(R).all():
        return "non-finite values in the pose"
    err = float(np.abs(R @ R.T - np.eye(3)).max())
    if err > tol:
        return f"rotation is not orthonormal (|R R^T - I|max = {err:.3g})"
    if np.linalg.det(R) < 0:
        return "rotation has determinant -1 (a reflection)"
    return None


def parse_c2w(matrix, what: str = "transform_matrix") -> np.ndarray:
    """A ``4x4`` or ``3x4`` nested list -> float64 ``(3, 4)``; raises ``ValueError`` with the reason."""
    try:
        m = np.asarray(matrix, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} is not a numeric matrix ({exc})") from exc
    if m.shape not in ((4, 4), (3, 4)):
        raise ValueError(f"{what} has shape {m.shape}, expected 4x4 or 3x4")
    if not np.isfinite(m).all():
        raise ValueError(f"{what} has non-finite values (NaN/inf)")
    reason = check_rotation(m[:3, :3])
    if reason:
        raise ValueError(f"{what}: {reason}")
    return m[:3, :4].copy()


def opengl_to_opencv(c2w: np.ndarray) -> np.ndarray:
    """OpenGL/nerfstudio camera-to-world ``(3, 4)`` -> OpenCV: negate the camera's y and z axes (columns 1, 2 of R)."""
    import torch

    from zipsplat_ns.ns_cameras import opengl_to_opencv_c2w

    return opengl_to_opencv_c2w(torch.from_numpy(np.asarray(c2w, dtype=np.float64))).numpy()


def pose_row(c2w: np.ndarray) -> np.ndarray:
    """``(3, 4)`` c2w -> the shard's ``(12,)`` ``[R row-major, t]``."""
    c2w = np.asarray(c2w, dtype=np.float64)
    return np.concatenate([c2w[:3, :3].reshape(9), c2w[:3, 3]])


def w2c_to_c2w(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Invert a world-to-camera ``(R, t)`` -> c2w ``(3, 4)``."""
    R = np.asarray(R, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64).reshape(3)
    return np.concatenate([R.T, (-R.T @ t)[:, None]], 1)


# ---------------------------------------------------------------------------------------------------- intrinsics
def make_K(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=np.float64)


def camera_row(K: np.ndarray, w: int, h: int) -> np.ndarray:
    """``[w, h, fx, fy, cx, cy]`` from ``K`` and the stored image size."""
    return np.array([w, h, K[0, 0], K[1, 1], K[0, 2], K[1, 2]], dtype=np.float64)


def fov_camera(w: int, h: int, hfov_deg: float) -> np.ndarray:
    """A centred pinhole ``K`` with the given horizontal field of view."""
    f = 0.5 * w / math.tan(math.radians(hfov_deg) / 2)
    return make_K(f, f, w / 2.0, h / 2.0)


def image_size(data: bytes, name: str = "image") -> Tuple[int, int]:
    """``(w, h)`` from the encoded header only (no full decode)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            return int(im.size[0]), int(im.size[1])
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ValueError(f"cannot read {name} as an image ({exc})") from exc


# ---------------------------------------------------------------------------------------------------- image ops
def has_distortion(dist: Optional[np.ndarray]) -> bool:
    return dist is not None and bool(np.any(np.abs(np.asarray(dist, dtype=np.float64)) > 0))


_MAP_CACHE: Dict[tuple, tuple] = {}


def undistort_image(img: np.ndarray, K: np.ndarray, dist: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Undistort an OpenCV radial-tangential image (``dist`` = k1, k2, p1, p2[, k3[, k4, k5, k6]]) to a pinhole.

    The new calibration is ``cv2.getOptimalNewCameraMatrix(alpha=0)`` (only valid pixels, same image size). ``K`` and
    the returned ``K`` use the corner pixel convention; the 0.5 px shift for OpenCV is applied here.
    """
    import cv2

    h, w = img.shape[:2]
    dist = np.asarray(dist, dtype=np.float64).reshape(-1)
    K_cv = K.astype(np.float64).copy()
    K_cv[0, 2] -= 0.5
    K_cv[1, 2] -= 0.5
    ck = (w, h, tuple(np.round(K_cv.reshape(-1), 9)), tuple(np.round(dist, 12)))
    if ck not in _MAP_CACHE:
        newK_cv, _ = cv2.getOptimalNewCameraMatrix(K_cv, dist, (w, h), 0, (w, h))
        maps = cv2.initUndistortRectifyMap(K_cv, dist, None, newK_cv, (w, h), cv2.CV_32FC2)
        if len(_MAP_CACHE) > 8:
            _MAP_CACHE.clear()
        _MAP_CACHE[ck] = (newK_cv, maps)
    newK_cv, (m1, m2) = _MAP_CACHE[ck]
    out = cv2.remap(img, m1, m2, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    newK = np.asarray(newK_cv, dtype=np.float64).copy()
    newK[0, 1] = 0.0
    newK[0, 2] += 0.5
    newK[1, 2] += 0.5
    return out, newK


def crop_image(img: np.ndarray, K: np.ndarray, left: int, top: int, width: int, height: int):
    """Crop a box; the principal point moves by the box offset."""
    K = K.copy()
    K[0, 2] -= left
    K[1, 2] -= top
    return img[top : top + height, left : left + width], K


def crop_to_principal_point(img: np.ndarray, K: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Largest (integer) crop centred on the principal point; the principal point ends within 0.5 px of the centre."""
    h, w = img.shape[:2]
    cx, cy = float(K[0, 2]), float(K[1, 2])
    hw, hh = min(cx, w - cx), min(cy, h - cy)
    if hw < 1 or hh < 1:
        raise ValueError(f"principal point ({cx:.1f}, {cy:.1f}) lies at or outside the image border ({w}x{h})")
    left, right = max(0, int(round(cx - hw))), min(w, int(round(cx + hw)))
    top, bottom = max(0, int(round(cy - hh))), min(h, int(round(cy + hh)))
    return crop_image(img, K, left, top, right - left, bottom - top)


def resize_image(img: np.ndarray, K: np.ndarray, new_w: int, new_h: int) -> Tuple[np.ndarray, np.ndarray]:
    """Resize to ``new_w x new_h``; ``fx, cx`` scale by ``new_w / w`` and ``fy, cy`` by ``new_h / h`` (exact)."""
    import cv2

    h, w = img.shape[:2]
    if (new_w, new_h) == (w, h):
        return img, K
    interp = cv2.INTER_AREA if new_w * new_h < w * h else cv2.INTER_CUBIC
    out = cv2.resize(img, (int(new_w), int(new_h)), interpolation=interp)
    K = K.copy()
    K[0, :] *= new_w / w
    K[1, :] *= new_h / h
    return out, K


def resize_to_cover_and_crop(img: np.ndarray, K: np.ndarray, out_w: int, out_h: int):
    """Uniform resize so the image covers ``out_w x out_h``, then a centred crop to exactly that size."""
    h, w = img.shape[:2]
    s = max(out_w / w, out_h / h)
    nw, nh = max(out_w, int(round(w * s))), max(out_h, int(round(h * s)))
    img, K = resize_image(img, K, nw, nh)
    return crop_image(img, K, (nw - out_w) // 2, (nh - out_h) // 2, out_w, out_h)


def scaled_size(w: int, h: int, max_size: Optional[int], downscale: float) -> Tuple[int, int]:
    """Output size for ``--downscale`` (divide) and ``--max-size`` (longest side), rounded to whole pixels."""
    s = 1.0 / downscale if downscale and downscale != 1 else 1.0
    if max_size and max(w, h) * s > max_size:
        s = max_size / max(w, h)
    if s == 1.0:
        return w, h
    return max(1, int(round(w * s))), max(1, int(round(h * s)))


@dataclass
class ImageOps:
    """How each view's pixels are turned into a stored image (applied in this order).

    ``undistort``: remove OpenCV radial-tangential distortion (to a pinhole, ``getOptimalNewCameraMatrix(alpha=0)``);
    ``crop_principal_point``: crop so the principal point is centred; ``keep_size``: after that crop, resize back
    to the input size (resize-to-cover + centre crop); ``square``: centre crop to a square (resized to
    ``square_size`` if set); ``max_size`` / ``downscale``: shrink; ``fmt``: re-encoding format (WebP is lossless);
    ``passthrough``: store JPEG inputs unchanged when no pixel operation applies.
    """

    undistort: bool = True
    crop_principal_point: bool = False
    keep_size: bool = False
    square: bool = False
    square_size: Optional[int] = None
    max_size: Optional[int] = None
    downscale: float = 1.0
    fmt: str = "webp"
    passthrough: bool = True
    webp_effort: int = 25


def encode_view(img: np.ndarray, fmt: str = "webp", webp_effort: int = 25) -> bytes:
    """Encode a converted view (see :func:`~zipsplat_ns.data.images.encode_image`)."""
    return encode_image(img, fmt, webp_effort=webp_effort)


def process_view(
    data,
    K: np.ndarray,
    dist: Optional[np.ndarray],
    ops: ImageOps,
    *,
    declared_size: Optional[Tuple[float, float]] = None,
    name: str = "image",
) -> Tuple[bytes, np.ndarray]:
    """One source image (encoded bytes, or uint8 ``(H, W, 3)`` pixels) + its calibration ->
    (stored bytes, ``[w, h, fx, fy, cx, cy]``).

    ``declared_size``: the ``(w, h)`` that ``K`` refers to; when the actual image differs (a downscaled image folder),
    ``K`` is scaled by ``actual / declared`` per axis first. Raises ``ValueError`` when the image cannot be read.
    """
    array_in = isinstance(data, np.ndarray)
    if array_in:
        if data.dtype != np.uint8 or data.ndim != 3 or data.shape[2] != 3:
            raise ValueError(f"{name}: expected uint8 (H, W, 3) pixels, got {data.dtype} {data.shape}")
        h, w = data.shape[:2]
    else:
        w, h = image_size(data, name)
    K = np.asarray(K, dtype=np.float64).copy()
    if declared_size is not None:
        dw, dh = float(declared_size[0]), float(declared_size[1])
        if dw > 0 and dh > 0 and (abs(dw - w) > 1e-6 or abs(dh - h) > 1e-6):
            # a downscaled copy keeps the aspect ratio up to rounding to whole pixels; anything else (a rotated,
            # cropped or wrong image) would get silently distorted intrinsics
            sx, sy = w / dw, h / dh
            if abs(sx - sy) > 1.01 * (1.0 / min(w, h)) + 1e-9:
                raise ValueError(
                    f"{name}: the image is {w}x{h} but its calibration is for {dw:g}x{dh:g}, a different aspect ratio "
                    f"(x{sx:.4f} wide, x{sy:.4f} high): is it rotated, cropped, or the wrong file?"
                )
            K[0, :] *= sx
            K[1, :] *= sy
    distorted = has_distortion(dist)
    target = scaled_size(w, h, ops.max_size, ops.downscale)
    need_pixels = (
        (distorted and ops.undistort)
        or ops.crop_principal_point
        or ops.square
        or target != (w, h)
        or not ops.passthrough
        or array_in
        or detect_image_ext(data) != "jpg"
    )
    if not need_pixels:
        return data, camera_row(K, w, h)
    img = data if array_in else decode_image(data, name=name)
    if img.shape[:2] != (h, w):
        raise ValueError(f"{name}: decoded size {img.shape[1]}x{img.shape[0]} differs from header {w}x{h}")
    if distorted and ops.undistort:
        img, K = undistort_image(img, K, dist)
    if ops.crop_principal_point:
        ih, iw = img.shape[:2]
        img, K = crop_to_principal_point(img, K)
        if ops.keep_size:
            img, K = resize_to_cover_and_crop(img, K, iw, ih)
    if ops.square:
        ih, iw = img.shape[:2]
        side = min(ih, iw)
        img, K = crop_image(img, K, (iw - side) // 2, (ih - side) // 2, side, side)
        if ops.square_size:
            img, K = resize_image(img, K, ops.square_size, ops.square_size)
    ih, iw = img.shape[:2]
    nw, nh = scaled_size(iw, ih, ops.max_size, ops.downscale)
    img, K = resize_image(img, K, nw, nh)
    img = np.ascontiguousarray(img)
    return encode_view(img, ops.fmt, ops.webp_effort), camera_row(K, img.shape[1], img.shape[0])


def build_scene(key: str, cams: List[np.ndarray], poses: List[np.ndarray], images: List[bytes], meta: Dict) -> RawScene:
    """Stack per-view rows into a :class:`RawScene` (float32) and validate it; raises :class:`SceneSkipped`."""
    if not images:
        raise SceneSkipped("no usable frames")
    scene = RawScene(
        key,
        np.stack(cams).astype(np.float32),
        np.stack(poses).astype(np.float32),
        list(images),
        meta=meta,
    )
    try:
        scene.validate()
    except SceneError as exc:
        raise SceneSkipped(exc.reason) from exc
    return scene


# ---------------------------------------------------------------------------------------------------- outputs
class SplitWriters:
    """One :class:`ShardWriter` per split, created on first use (an empty split writes nothing)."""

    def __init__(self, dirs: Dict[str, Path], report: ConvertReport, **writer_kwargs):
        self.dirs = {k: Path(v) for k, v in dirs.items()}
        self.report = report
        self.kwargs = writer_kwargs
        self.writers: Dict[str, ShardWriter] = {}
        for split, d in self.dirs.items():  # fail early (before any work) when an output exists
            if d.is_dir() and any(d.glob("*.tar")) and not writer_kwargs.get("overwrite", False):
                raise FileExistsError(f"{d} already holds shards; choose an empty directory or pass --overwrite")

    def add(self, split: str, scene: RawScene, skipped_frames: Sequence[Tuple[str, str]] = ()) -> bool:
        """Write a scene; a duplicate key is recorded as a skipped scene. Returns whether it was written."""
        if split not in self.writers:
            self.writers[split] = ShardWriter(self.dirs[split], **self.kwargs)
            self.report.outputs[split] = str(self.dirs[split])
        try:
            self.writers[split].add(scene)
        except SceneError as exc:
            self.report.skip(scene.key, exc.reason)
            return False
        self.report.add_scene(scene.key, split, scene.num_views, skipped_frames)
        return True

    def close(self) -> None:
        for w in self.writers.values():
            w.close()

    def abort(self) -> None:
        for w in self.writers.values():
            w.abort()

    def __enter__(self) -> "SplitWriters":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def finish(report: ConvertReport, what: str) -> ConvertReport:
    """Raise :class:`ConvertError` when nothing was converted (naming every reason), else return the report."""
    if report.num_converted == 0:
        reasons = "; ".join(f"{k}: {r}" for k, r in report.skipped[:10]) or "no scenes found"
        raise ConvertError(f"convert {report.fmt}: nothing converted from {what} ({reasons})", report)
    return report


class SceneSource(NamedTuple):
    """One scene for :func:`convert_scenes`: its key, what the converter reads it from, and its output split."""

    key: str
    item: Any
    split: str = "all"
    label: str = ""
    """Prefixed to the scene's skip reason (the file the reason is about), if any."""


class SceneProgress(NamedTuple):
    """A scene's line in the progress display; converters set its frame count and advance it per frame."""

    prog: Any
    task: Any

    def set_total(self, n: int) -> None:
        self.prog.update(self.task, total=n)

    def tick(self) -> None:
        self.prog.advance(self.task)


def convert_scenes(
    report: ConvertReport,
    dirs: Dict[str, Path],
    scenes: Sequence[SceneSource],
    convert_one: Callable[[SceneSource, SceneProgress], Tuple[RawScene, Sequence[Tuple[str, str]]]],
    *,
    what: str,
    writer: Dict,
    progress: bool = True,
) -> ConvertReport:
    """The scene loop of the multi-scene converters.

    ``convert_one(source, progress)`` returns ``(scene, skipped_frames)`` or raises :class:`SceneSkipped`. A skipped
    scene is recorded with its reason and the run goes on; converted scenes go to their split's shards. When nothing
    was converted, :func:`finish` raises inside the writers' context, so no shard of the failed run is left behind.
    """
    with progress_bar(progress) as prog, SplitWriters(dirs, report, **writer) as out:
        t_scenes = prog.add_task("scenes", total=len(scenes))
        for source in scenes:
            task = prog.add_task(f"  {source.key[:24]}", total=None)
            try:
                scene, skipped = convert_one(source, SceneProgress(prog, task))
            except SceneSkipped as exc:
                report.skip(source.key, f"{source.label}: {exc.reason}" if source.label else exc.reason)
            else:
                out.add(source.split, scene, skipped)
            prog.remove_task(task)
            prog.advance(t_scenes)
        finish(report, what)
    return report


@contextlib.contextmanager
def progress_bar(enabled: bool = True) -> Iterator["object"]:
    """A rich progress bar (scenes and frames); a disabled one when ``enabled`` is False."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    prog = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        disable=not enabled,
        transient=False,
    )
    with prog:
        yield prog


def load_json(path_or_bytes, name: str):
    """Parse JSON, raising ``ValueError`` that names the file and the position of the error."""
    try:
        text = path_or_bytes.read_text() if isinstance(path_or_bytes, Path) else path_or_bytes
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{name}: malformed JSON ({exc})") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{name}: cannot read ({exc})") from exc


def writer_kwargs(shard_size_mb: float, overwrite: bool, per_scene: bool = False) -> Dict:
    return {"shard_size_mb": shard_size_mb, "overwrite": overwrite, "per_scene": per_scene}


# ---------------------------------------------------------------------------------------------------- CLI options
try:  # tyro marks SRC and DST as positional arguments of `zipsplat-ns convert <fmt> SRC DST`
    from typing import Annotated

    import tyro

    SrcPath = Annotated[tyro.conf.Positional[Path], tyro.conf.arg(metavar="SRC")]
    DstPath = Annotated[tyro.conf.Positional[Path], tyro.conf.arg(metavar="DST")]
except ImportError:  # pragma: no cover - tyro is a dependency, but the converters do not need it
    SrcPath = DstPath = Path


@dataclass
class BaseConvertConfig:
    """Options shared by every converter (subclasses add their own; ``run()`` converts and prints the report)."""

    src: SrcPath
    """Input (a folder, file or archive; see the format's description)."""
    dst: DstPath
    """Output shard folder."""
    shard_size_mb: float = 512.0
    """Start a new shard file after about this many MB."""
    overwrite: bool = False
    """Replace shards already in the output folder."""
    progress: bool = True
    """Show a progress bar."""

    def options(self) -> Dict:
        """The keyword options of the converter function (everything but ``src`` and ``dst``)."""
        return {k: v for k, v in vars(self).items() if k not in ("src", "dst")}

    def _run(self, fn) -> ConvertReport:
        from rich.console import Console

        report = fn(Path(self.src), Path(self.dst), **self.options())
        Console(stderr=True).print(report.summary(), markup=False, highlight=False)
        return report
