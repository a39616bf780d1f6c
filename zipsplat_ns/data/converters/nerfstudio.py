"""nerfstudio data (``transforms.json`` as ``ns-process-data`` writes it) -> shards.

Per frame: intrinsics ``fl_x, fl_y, cx, cy, w, h`` (per frame, else top level; ``camera_angle_x`` also accepted),
optional OpenCV distortion ``k1, k2, p1, p2[, k3]``, ``file_path`` relative to the ``transforms.json`` folder and a
4x4 OpenGL camera-to-world ``transform_matrix``. Poses become OpenCV by negating the camera's y and z axes.
``applied_transform`` is ignored (``transform_matrix`` and ``points3D.ply`` are already in the same world frame).
Frames keep the order of the ``frames`` list; frames that cannot be used are skipped and listed in the report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from zipsplat_ns.data.converters.common import (
    BaseConvertConfig,
    ConvertError,
    ConvertReport,
    ImageOps,
    SceneProgress,
    SceneSkipped,
    SceneSource,
    build_scene,
    convert_scenes,
    image_size,
    load_json,
    make_K,
    opengl_to_opencv,
    parse_c2w,
    pose_row,
    process_view,
    sanitize_key,
    writer_kwargs,
)
from zipsplat_ns.data.scene import RawScene

TRANSFORMS = "transforms.json"
_UNSUPPORTED_MODELS = (
    "OPENCV_FISHEYE",
    "FISHEYE",
    "EQUIRECTANGULAR",
    "OMNIDIRECTIONALSTEREO_L",
    "OMNIDIRECTIONALSTEREO_R",
    "VR180_L",
    "VR180_R",
)
_EXTS = (".png", ".jpg", ".jpeg", ".JPG", ".PNG", ".webp")


def frame_intrinsics(tf: Dict, frame: Dict, actual_wh: Tuple[int, int]):
    """``(K, dist or None, declared (w, h))`` of one frame; per-frame values override the top level."""

    def get(k, default=None):
        v = frame.get(k, tf.get(k, default))
        return default if v is None else v

    model = str(get("camera_model", "OPENCV")).upper()
    if model in _UNSUPPORTED_MODELS:
        raise ValueError(f"camera_model {model} is not supported (pinhole or OPENCV radial-tangential only)")
    w, h = float(get("w", actual_wh[0])), float(get("h", actual_wh[1]))
    fx, fy = get("fl_x"), get("fl_y")
    if fx is None and get("camera_angle_x") is not None:
        fx = 0.5 * w / math.tan(0.5 * float(get("camera_angle_x")))
    if fy is None and get("camera_angle_y") is not None:
        fy = 0.5 * h / math.tan(0.5 * float(get("camera_angle_y")))
    if fx is None and fy is None:
        raise ValueError("no focal length (fl_x / fl_y / camera_angle_x)")
    fx = float(fx if fx is not None else fy)
    fy = float(fy if fy is not None else fx)
    cx, cy = float(get("cx", w / 2.0)), float(get("cy", h / 2.0))
    vals = [w, h, fx, fy, cx, cy]
    if not all(math.isfinite(v) for v in vals) or min(w, h, fx, fy) <= 0:
        raise ValueError(f"invalid intrinsics w,h,fx,fy,cx,cy = {vals}")
    k = [float(get(n, 0.0)) for n in ("k1", "k2", "p1", "p2", "k3", "k4")]
    if not all(math.isfinite(v) for v in k):
        raise ValueError("non-finite distortion coefficients")
    if k[5] != 0.0:
        raise ValueError("k4 is set: nerfstudio's 4-term radial model has no cv2 equivalent")
    dist = np.array(k[:5]) if any(v != 0.0 for v in k[:5]) else None
    return make_K(fx, fy, cx, cy), dist, (w, h)


def transforms_scene(
    key: str,
    tf: Dict,
    *,
    read_image: Callable[[str], Optional[bytes]],
    ops: ImageOps,
    meta: Dict,
    tick: Callable[[], None] = lambda: None,
    min_views: int = 1,
) -> Tuple[RawScene, List[Tuple[str, str]]]:
    """Build one scene from a parsed ``transforms.json``. ``read_image(file_path)`` returns bytes or ``None``.

    Returns ``(scene, skipped_frames)``; raises :class:`SceneSkipped` when the scene cannot be used at all.
    """
    frames = tf.get("frames") if isinstance(tf, dict) else None
    if not isinstance(frames, list):
        raise SceneSkipped("transforms.json has no 'frames' list")
    if not frames:
        raise SceneSkipped("transforms.json has an empty 'frames' list")
    cams, poses, images, names = [], [], [], []
    skipped: List[Tuple[str, str]] = []
    for i, frame in enumerate(frames):
        tick()
        label = f"frame {i}"
        try:
            if not isinstance(frame, dict) or "file_path" not in frame:
                raise ValueError("frame has no file_path")
            label = str(frame["file_path"])
            if "transform_matrix" not in frame:
                raise ValueError("frame has no transform_matrix")
            c2w = opengl_to_opencv(parse_c2w(frame["transform_matrix"]))
            data = read_image(label)
            if data is None:
                raise ValueError("image file missing")
            K, dist, declared = frame_intrinsics(tf, frame, image_size(data, label))
            img, cam = process_view(data, K, dist, ops, declared_size=declared, name=label)
        except (ValueError, OSError, KeyError, TypeError) as exc:
            skipped.append((label, str(exc)))
            continue
        cams.append(cam)
        poses.append(pose_row(c2w))
        images.append(img)
        names.append(label)
    if len(images) < max(1, min_views):
        first = f" (first: {skipped[0][0]}: {skipped[0][1]})" if skipped else ""
        raise SceneSkipped(f"{len(images)} usable frame(s) of {len(frames)}, need {max(1, min_views)}{first}")
    meta = dict(meta)
    meta["frames"] = names
    return build_scene(key, cams, poses, images, meta), skipped


def _file_reader(root: Path) -> Callable[[str], Optional[bytes]]:
    def read(file_path: str) -> Optional[bytes]:
        p = Path(file_path)
        p = p if p.is_absolute() else root / p
        if p.is_file():
            return p.read_bytes()
        if not p.suffix:  # blender-style "./train/r_0"
            for ext in _EXTS:
                q = p.with_name(p.name + ext)
                if q.is_file():
                    return q.read_bytes()
        return None

    return read


def find_nerfstudio_scenes(src: Path) -> List[Path]:
    """``[src]`` when ``src`` holds ``transforms.json`` (or is that file), else its sub-folders that hold one."""
    src = Path(src)
    if not src.exists():
        raise ConvertError(f"convert nerfstudio: {src} does not exist")
    if src.is_file():
        if src.suffix == ".json":
            return [src.parent]
        raise ConvertError(f"convert nerfstudio: {src} is a file, expected a folder with {TRANSFORMS}")
    if (src / TRANSFORMS).is_file():
        return [src]
    subs = sorted(p for p in src.iterdir() if p.is_dir() and (p / TRANSFORMS).is_file())
    if not subs:
        raise ConvertError(
            f"convert nerfstudio: {src / TRANSFORMS} is missing and no sub-folder of {src} holds a {TRANSFORMS}"
        )
    return subs


def convert_nerfstudio(
    src: Path,
    dst: Path,
    *,
    max_size: Optional[int] = None,
    downscale: float = 1.0,
    undistort: bool = True,
    transforms_name: str = TRANSFORMS,
    min_views: int = 1,
    shard_size_mb: float = 512.0,
    overwrite: bool = False,
    progress: bool = True,
) -> ConvertReport:
    """Convert one nerfstudio scene folder, or a folder of scene folders (one scene each, key = folder name)."""
    src = Path(src)
    if src.is_file() and src.suffix == ".json":
        transforms_name, src = src.name, src.parent
    if transforms_name != TRANSFORMS and (src / transforms_name).is_file():
        scene_dirs = [src]
    else:
        scene_dirs = find_nerfstudio_scenes(src)
    ops = ImageOps(undistort=undistort, max_size=max_size, downscale=downscale)

    def one(source: SceneSource, progress: SceneProgress):
        d = source.item
        tf_path = d / transforms_name
        try:
            tf = load_json(tf_path, str(tf_path))
        except ValueError as exc:  # its message names the file
            raise SceneSkipped(str(exc)) from exc
        frames = tf.get("frames") if isinstance(tf, dict) else None
        progress.set_total(len(frames) if isinstance(frames, list) else 0)
        meta = {"format": "nerfstudio", "source": str(d.resolve()), "posed": True}
        ply = tf.get("ply_file_path") if isinstance(tf, dict) else None
        ply = ply if isinstance(ply, str) else ("points3D.ply" if (d / "points3D.ply").is_file() else None)
        if ply and (d / ply).is_file():
            meta["points3D"] = ply
        try:
            return transforms_scene(
                source.key, tf, read_image=_file_reader(d), ops=ops, meta=meta, tick=progress.tick, min_views=min_views
            )
        except SceneSkipped as exc:
            raise SceneSkipped(f"{tf_path}: {exc.reason}") from exc

    return convert_scenes(
        ConvertReport("nerfstudio", str(src)),
        {"all": Path(dst)},
        [SceneSource(sanitize_key(d.name), d) for d in scene_dirs],
        one,
        what=str(src),
        writer=writer_kwargs(shard_size_mb, overwrite),
        progress=progress,
    )


@dataclass
class NerfstudioConvertConfig(BaseConvertConfig):
    """Convert nerfstudio data (``transforms.json`` + images) into shards: one scene folder, or a folder of them.

    Poses are flipped from OpenGL to OpenCV; OPENCV-distorted images are undistorted to pinhole cameras; JPEGs that
    need no pixel change are stored unchanged, everything else as lossless WebP.
    """

    max_size: Optional[int] = None
    """Shrink images so that the longest side is at most this many pixels."""
    downscale: float = 1.0
    """Divide the image size by this factor."""
    undistort: bool = True
    """Undistort OPENCV (k1, k2, p1, p2, k3) images to pinhole cameras (else the distortion is dropped)."""
    transforms_name: str = TRANSFORMS
    """Name of the transforms file inside each scene folder."""
    min_views: int = 1
    """Skip scenes with fewer usable frames than this."""

    def run(self) -> ConvertReport:
        return self._run(convert_nerfstudio)
