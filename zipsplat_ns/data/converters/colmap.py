"""COLMAP sparse models (binary or text) -> shards.

Readers follow COLMAP's documented file formats (little-endian binary; text with ``#`` comments):

- ``cameras``: camera id, model, width, height, parameters;
- ``images``: image id, rotation quaternion ``(qw, qx, qy, qz)`` and translation of world-to-camera, camera id, name,
  and the 2D observations ``(x, y, point3D_id)``;
- ``points3D``: point id, xyz, rgb, reprojection error, track ``(image_id, point2D_idx)``.

COLMAP's pixel convention matches ours (the image's top-left corner is ``(0, 0)``). Pose = ``inv(w2c)``.
Images are written sorted by file name (the MipNeRF360 benchmark rule).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
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
    check_rotation,
    convert_scenes,
    make_K,
    pose_row,
    process_view,
    sanitize_key,
    w2c_to_c2w,
    writer_kwargs,
)
from zipsplat_ns.data.scene import RawScene

# model id -> (name, number of parameters), from COLMAP's camera model list
CAMERA_MODELS: Dict[int, Tuple[str, int]] = {
    0: ("SIMPLE_PINHOLE", 3),
    1: ("PINHOLE", 4),
    2: ("SIMPLE_RADIAL", 4),
    3: ("RADIAL", 5),
    4: ("OPENCV", 8),
    5: ("OPENCV_FISHEYE", 8),
    6: ("FULL_OPENCV", 12),
    7: ("FOV", 5),
    8: ("SIMPLE_RADIAL_FISHEYE", 4),
    9: ("RADIAL_FISHEYE", 5),
    10: ("THIN_PRISM_FISHEYE", 12),
}
MODEL_IDS = {name: i for i, (name, _) in CAMERA_MODELS.items()}


@dataclass
class ColmapCamera:
    id: int
    model: str
    width: int
    height: int
    params: np.ndarray

    def calibration(self) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """``(K, OpenCV distortion or None)`` in pixels of a ``width x height`` image; raises for other models."""
        p = [float(v) for v in self.params]
        m = self.model
        if m == "SIMPLE_PINHOLE":
            return make_K(p[0], p[0], p[1], p[2]), None
        if m == "PINHOLE":
            return make_K(p[0], p[1], p[2], p[3]), None
        if m == "SIMPLE_RADIAL":
            return make_K(p[0], p[0], p[1], p[2]), np.array([p[3], 0.0, 0.0, 0.0])
        if m == "RADIAL":
            return make_K(p[0], p[0], p[1], p[2]), np.array([p[3], p[4], 0.0, 0.0])
        if m == "OPENCV":
            return make_K(p[0], p[1], p[2], p[3]), np.array(p[4:8])
        if m == "FULL_OPENCV":  # k1 k2 p1 p2 k3 k4 k5 k6: cv2's rational model takes the same order
            return make_K(p[0], p[1], p[2], p[3]), np.array(p[4:12])
        raise ValueError(f"camera model {m} is not supported (pinhole and OpenCV radial-tangential models only)")


@dataclass
class ColmapImage:
    id: int
    qvec: np.ndarray  # (w, x, y, z), world-to-camera rotation
    tvec: np.ndarray  # world-to-camera translation
    camera_id: int
    name: str
    xys: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    point3D_ids: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))

    def rotation(self) -> np.ndarray:
        w, x, y, z = (np.asarray(self.qvec, np.float64) / np.linalg.norm(self.qvec)).tolist()
        return np.array(
            [
                [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
            ]
        )

    def c2w(self) -> np.ndarray:
        """OpenCV camera-to-world ``(3, 4)`` = ``inv(w2c)``."""
        return w2c_to_c2w(self.rotation(), self.tvec)


@dataclass
class ColmapPoints:
    ids: np.ndarray  # (P,) int64
    xyz: np.ndarray  # (P, 3) float64
    rgb: np.ndarray  # (P, 3) uint8
    error: np.ndarray  # (P,) float64
    tracks: Optional[List[np.ndarray]] = None  # per point (L, 2) int (image_id, point2D_idx)


# ---------------------------------------------------------------------------------------------------- binary
class _Reader:
    def __init__(self, path: Path):
        self.path = path
        self.buf = path.read_bytes()
        self.pos = 0

    def read(self, fmt: str):
        size = struct.calcsize("<" + fmt)
        if self.pos + size > len(self.buf):
            raise ValueError(f"{self.path}: truncated at byte {self.pos} (needs {size} more bytes)")
        out = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += size
        return out

    def array(self, dtype, count: int) -> np.ndarray:
        dt = np.dtype(dtype).newbyteorder("<")
        n = dt.itemsize * count
        if self.pos + n > len(self.buf):
            raise ValueError(f"{self.path}: truncated at byte {self.pos} (needs {n} more bytes)")
        out = np.frombuffer(self.buf, dt, count, self.pos)
        self.pos += n
        return out

    def cstring(self) -> str:
        end = self.buf.find(b"\x00", self.pos)
        if end < 0:
            raise ValueError(f"{self.path}: unterminated image name at byte {self.pos}")
        s = self.buf[self.pos : end].decode("utf-8")
        self.pos = end + 1
        return s


def read_cameras_bin(path: Path) -> Dict[int, ColmapCamera]:
    r = _Reader(Path(path))
    (n,) = r.read("Q")
    cams = {}
    for _ in range(n):
        cid, mid, w, h = r.read("iiQQ")
        if mid not in CAMERA_MODELS:
            raise ValueError(f"{path}: unknown camera model id {mid} (camera {cid})")
        name, npar = CAMERA_MODELS[mid]
        cams[cid] = ColmapCamera(cid, name, int(w), int(h), np.array(r.read("d" * npar)))
    return cams


def read_images_bin(path: Path, with_points: bool = False) -> Dict[int, ColmapImage]:
    r = _Reader(Path(path))
    (n,) = r.read("Q")
    images = {}
    for _ in range(n):
        iid, qw, qx, qy, qz, tx, ty, tz, cid = r.read("idddddddi")
        name = r.cstring()
        (npts,) = r.read("Q")
        dt = np.dtype([("x", "<f8"), ("y", "<f8"), ("id", "<i8")])
        if with_points:
            pts = r.array(dt, npts)
            xys, ids = np.stack([pts["x"], pts["y"]], 1), pts["id"].astype(np.int64)
        else:
            r.pos += dt.itemsize * npts
            if r.pos > len(r.buf):
                raise ValueError(f"{path}: truncated in the observations of image {name}")
            xys, ids = np.zeros((0, 2)), np.zeros((0,), np.int64)
        images[iid] = ColmapImage(iid, np.array([qw, qx, qy, qz]), np.array([tx, ty, tz]), cid, name, xys, ids)
    return images


def read_points3D_bin(path: Path, with_tracks: bool = False) -> ColmapPoints:
    r = _Reader(Path(path))
    (n,) = r.read("Q")
    ids = np.zeros(n, np.int64)
    xyz = np.zeros((n, 3))
    rgb = np.zeros((n, 3), np.uint8)
    err = np.zeros(n)
    tracks = [] if with_tracks else None
    for i in range(n):
        pid, x, y, z, cr, cg, cb, e, tl = r.read("QdddBBBdQ")
        ids[i], xyz[i], rgb[i], err[i] = pid, (x, y, z), (cr, cg, cb), e
        t = r.array("<i4", 2 * tl)
        if with_tracks:
            tracks.append(t.reshape(-1, 2).astype(np.int64))
    return ColmapPoints(ids, xyz, rgb, err, tracks)


# ---------------------------------------------------------------------------------------------------- text
def _data_lines(path: Path) -> List[str]:
    return [ln.rstrip("\r\n") for ln in Path(path).read_text().splitlines() if not ln.lstrip().startswith("#")]


def read_cameras_txt(path: Path) -> Dict[int, ColmapCamera]:
    cams = {}
    for ln in _data_lines(path):
        tok = ln.split()
        if not tok:
            continue
        try:
            cid, model, w, h = int(tok[0]), tok[1].upper(), int(tok[2]), int(tok[3])
            params = np.array([float(v) for v in tok[4:]])
        except (IndexError, ValueError) as exc:
            raise ValueError(f"{path}: malformed camera line {ln!r}") from exc
        if model not in MODEL_IDS:
            raise ValueError(f"{path}: unknown camera model {model!r} (camera {cid})")
        if len(params) != CAMERA_MODELS[MODEL_IDS[model]][1]:
            raise ValueError(f"{path}: camera {cid} ({model}) has {len(params)} parameters")
        cams[cid] = ColmapCamera(cid, model, w, h, params)
    return cams


def read_images_txt(path: Path, with_points: bool = False) -> Dict[int, ColmapImage]:
    lines = _data_lines(path)
    images = {}
    i = 0
    while i < len(lines):
        if not lines[i].strip():  # blank lines between records (the observation line itself may be empty)
            i += 1
            continue
        tok = lines[i].split(maxsplit=9)
        try:
            iid, cid = int(tok[0]), int(tok[8])
            q = np.array([float(v) for v in tok[1:5]])
            t = np.array([float(v) for v in tok[5:8]])
            name = tok[9].strip()
        except (IndexError, ValueError) as exc:
            raise ValueError(f"{path}: malformed image line {lines[i]!r}") from exc
        obs = lines[i + 1] if i + 1 < len(lines) else ""
        xys, ids = np.zeros((0, 2)), np.zeros((0,), np.int64)
        if with_points and obs.strip():
            v = obs.split()
            if len(v) % 3:
                raise ValueError(f"{path}: observation line of image {name} does not hold (x, y, id) triples")
            a = np.array([float(x) for x in v]).reshape(-1, 3)
            xys, ids = a[:, :2], a[:, 2].astype(np.int64)
        images[iid] = ColmapImage(iid, q, t, cid, name, xys, ids)
        i += 2
    return images


def read_points3D_txt(path: Path, with_tracks: bool = False) -> ColmapPoints:
    ids, xyz, rgb, err, tracks = [], [], [], [], []
    for ln in _data_lines(path):
        tok = ln.split()
        if not tok:
            continue
        try:
            ids.append(int(tok[0]))
            xyz.append([float(v) for v in tok[1:4]])
            rgb.append([int(v) for v in tok[4:7]])
            err.append(float(tok[7]))
            if with_tracks:
                tracks.append(np.array([int(v) for v in tok[8:]], np.int64).reshape(-1, 2))
        except (IndexError, ValueError) as exc:
            raise ValueError(f"{path}: malformed point line {ln[:80]!r}") from exc
    return ColmapPoints(
        np.array(ids, np.int64),
        np.array(xyz, np.float64).reshape(-1, 3),
        np.array(rgb, np.uint8).reshape(-1, 3),
        np.array(err, np.float64),
        tracks if with_tracks else None,
    )


def _model_file(model_dir: Path, stem: str) -> Optional[Path]:
    for ext in (".bin", ".txt"):
        p = Path(model_dir) / f"{stem}{ext}"
        if p.is_file():
            return p
    return None


def read_model(model_dir: Path, with_points: bool = False):
    """``(cameras, images)`` of a sparse model folder (``.bin`` preferred over ``.txt``)."""
    cam_path, img_path = _model_file(model_dir, "cameras"), _model_file(model_dir, "images")
    if cam_path is None or img_path is None:
        raise FileNotFoundError(f"{model_dir}: no cameras.bin/.txt and images.bin/.txt")
    cams = read_cameras_bin(cam_path) if cam_path.suffix == ".bin" else read_cameras_txt(cam_path)
    imgs = (
        read_images_bin(img_path, with_points) if img_path.suffix == ".bin" else read_images_txt(img_path, with_points)
    )
    return cams, imgs


def read_points3D(model_dir: Path, with_tracks: bool = False) -> Optional[ColmapPoints]:
    """The model's points (``points3D.bin``/``.txt``), or ``None`` when the model has none."""
    p = _model_file(model_dir, "points3D")
    if p is None:
        return None
    return read_points3D_bin(p, with_tracks) if p.suffix == ".bin" else read_points3D_txt(p, with_tracks)


# ---------------------------------------------------------------------------------------------------- conversion
def find_model_dir(scene_dir: Path) -> Optional[Path]:
    """``sparse/0``, ``sparse`` or the folder itself, whichever holds a model."""
    for d in (scene_dir / "sparse" / "0", scene_dir / "sparse", scene_dir):
        if _model_file(d, "cameras") and _model_file(d, "images"):
            return d
    if (scene_dir / "sparse").is_dir():  # sparse/1, sparse/2, ...: take the first numbered model
        for d in sorted((scene_dir / "sparse").iterdir(), key=lambda p: p.name):
            if d.is_dir() and _model_file(d, "cameras") and _model_file(d, "images"):
                return d
    return None


def colmap_scene(
    key: str,
    scene_dir: Path,
    model_dir: Path,
    image_dir: Path,
    ops: ImageOps,
    *,
    tick_total: Callable[[int], None] = lambda n: None,
    tick: Callable[[], None] = lambda: None,
    min_views: int = 1,
    fmt: str = "colmap",
) -> Tuple[RawScene, List[Tuple[str, str]]]:
    """One scene from a sparse model: images sorted by name; intrinsics scaled to the actual image size."""
    try:
        cams, imgs = read_model(model_dir)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise SceneSkipped(f"cannot read the sparse model: {exc}") from exc
    if not image_dir.is_dir():
        raise SceneSkipped(f"image folder {image_dir} is missing")
    order = sorted(imgs.values(), key=lambda im: im.name)
    tick_total(len(order))
    out_cams, poses, images, names = [], [], [], []
    skipped: List[Tuple[str, str]] = []
    for im in order:
        tick()
        try:
            if im.camera_id not in cams:
                raise ValueError(f"camera {im.camera_id} is not in cameras file")
            cam = cams[im.camera_id]
            K, dist = cam.calibration()
            R = im.rotation()
            if not np.isfinite(im.tvec).all() or not np.isfinite(im.qvec).all():
                raise ValueError("non-finite pose")
            reason = check_rotation(R)
            if reason:
                raise ValueError(reason)
            path = image_dir / im.name
            if not path.is_file():
                raise ValueError("image file missing")
            data, row = process_view(
                path.read_bytes(), K, dist, ops, declared_size=(cam.width, cam.height), name=str(path)
            )
        except (ValueError, OSError) as exc:
            skipped.append((im.name, str(exc)))
            continue
        out_cams.append(row)
        poses.append(pose_row(im.c2w()))
        images.append(data)
        names.append(im.name)
    if len(images) < max(1, min_views):
        first = f" (first: {skipped[0][0]}: {skipped[0][1]})" if skipped else ""
        raise SceneSkipped(f"{len(images)} usable image(s) of {len(order)}, need {max(1, min_views)}{first}")
    meta = {
        "format": fmt,
        "source": str(scene_dir.resolve()),
        "sparse": str(model_dir.resolve()),
        "posed": True,
        "frames": names,
    }
    return build_scene(key, out_cams, poses, images, meta), skipped


def convert_colmap(
    src: Path,
    dst: Path,
    *,
    images: str = "images",
    model: Optional[str] = None,
    max_size: Optional[int] = None,
    downscale: float = 1.0,
    min_views: int = 1,
    shard_size_mb: float = 512.0,
    overwrite: bool = False,
    progress: bool = True,
) -> ConvertReport:
    """Convert a COLMAP scene folder (``sparse/0`` + ``images/``), or a folder of such scene folders."""
    src = Path(src)
    if not src.is_dir():
        raise ConvertError(f"convert colmap: {src} is not a folder")
    if model is not None:
        md = Path(model) if Path(model).is_absolute() else src / model
        if not (_model_file(md, "cameras") and _model_file(md, "images")):
            raise ConvertError(f"convert colmap: {md} holds no cameras.bin/.txt and images.bin/.txt")
        scenes = [(src, md)]
    elif find_model_dir(src) is not None:
        scenes = [(src, find_model_dir(src))]
    else:
        scenes = [(d, find_model_dir(d)) for d in sorted(src.iterdir()) if d.is_dir() and find_model_dir(d)]
        if not scenes:
            raise ConvertError(
                f"convert colmap: no sparse model in {src} (looked for sparse/0, sparse and the folder itself, "
                "each with cameras.bin/.txt and images.bin/.txt) nor in its sub-folders"
            )
    ops = ImageOps(undistort=True, max_size=max_size, downscale=downscale)

    def one(source: SceneSource, progress: SceneProgress):
        scene_dir, model_dir = source.item
        return colmap_scene(
            source.key,
            scene_dir,
            model_dir,
            scene_dir / images,
            ops,
            tick_total=progress.set_total,
            tick=progress.tick,
            min_views=min_views,
        )

    sources = [SceneSource(sanitize_key(d.resolve().name), (d, md)) for d, md in scenes]
    return convert_scenes(
        ConvertReport("colmap", str(src)),
        {"all": Path(dst)},
        sources,
        one,
        what=str(src),
        writer=writer_kwargs(shard_size_mb, overwrite),
        progress=progress,
    )


@dataclass
class ColmapConvertConfig(BaseConvertConfig):
    """Convert a COLMAP sparse model (``sparse/0/{cameras,images,points3D}.bin|.txt``) and its ``images/`` folder.

    SIMPLE_PINHOLE and PINHOLE cameras are used directly; SIMPLE_RADIAL, RADIAL, OPENCV and FULL_OPENCV images are
    undistorted to pinhole cameras. Images are sorted by file name. SRC may also be a folder of scene folders.
    """

    images: str = "images"
    """Image folder, relative to each scene folder."""
    model: Optional[str] = None
    """Sparse model folder (default: sparse/0, sparse, or SRC itself)."""
    max_size: Optional[int] = None
    """Shrink images so that the longest side is at most this many pixels."""
    downscale: float = 1.0
    """Divide the image size by this factor."""
    min_views: int = 1
    """Skip scenes with fewer usable images than this."""

    def run(self) -> ConvertReport:
        return self._run(convert_colmap)
