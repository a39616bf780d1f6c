"""``zipsplat-ns depth``: fill depth maps into existing shards, and say whether a shard set has depth.

Training normalises each sample's scale by the median distance of the context views' depth points (reference
§5.4), and the geometry losses need depth too. Shards from the converters have no depth; this module adds it:

* ``method="sfm"``: project the sparse SfM points of the scene's source (``points3D.ply`` with xyz float + rgb
  uchar, or COLMAP ``points3D.bin`` / ``.txt``, in the same world frame as the poses) into every view (OpenCV
  camera-to-world poses, pinhole cameras; ``z > 0``; pixel ``(0, 0)`` is the image's top-left *corner*, so a point
  at ``(u, v)`` lands in pixel ``(floor(v), floor(u))``), keep the nearest point per pixel (z-buffer), optionally
  splat it to a ``(2r+1)^2`` square; every other pixel is invalid. The source is found through the scene's
  ``meta["points3D"]`` / ``meta["sparse"]`` / ``meta["source"]`` (written by the converters), or ``points=``.
* ``method="da3"``: Depth-Anything-3 (``depth_anything_3`` package,
  ``depth-anything/DA3NESTED-GIANT-LARGE``) conditioned on the scene's intrinsics and world-to-camera extrinsics
  with ``align_to_input_ext_scale=True``, so depth is in the poses' units; ``max_views`` splits large scenes into
  round-robin chunks; depth is resized bilinearly to the image size.
* ``method="auto"``: SfM points where the scene has them, else DA3 when it is installed.

Depth is stored with the log-uint8 codec (:func:`~zipsplat_ns.data.depth_codec.encode_depth`) as
``{key}.dep{i}.webp`` + ``{key}.depth_ranges.json``; ``meta.json`` gets ``has_depth: true`` and
``depth_source``. Each shard is rewritten atomically (a temporary tar beside it, then a rename); ``index.json`` does
not change; images and every other member are copied byte for byte. Scenes that already have depth are kept unless
``overwrite``; scenes without usable points are skipped and reported; a corrupt shard is left untouched.

:func:`scale_status` / :func:`scene_scale_status` tell the datamanager which case applies: ``"depth"`` (scale from
depth, geometry losses on) or ``"baseline"`` (no depth: scale from the camera baseline, geometry losses off).
"""

from __future__ import annotations

import copy
import io
import json
import logging
import math
import os
import re
import shutil
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Literal, Optional, Sequence, Tuple, Union

import numpy as np

from zipsplat_ns.data.depth_codec import encode_depth
from zipsplat_ns.data.scene import RawScene, SceneError
from zipsplat_ns.data.shards import assemble_scene, tar_end_problem

__all__ = [
    "DA3_MODEL",
    "Da3DepthEstimator",
    "DepthConfig",
    "DepthError",
    "DepthReport",
    "ScaleStatus",
    "fill_depth",
    "find_points",
    "load_points",
    "project_points_depth",
    "round_robin_chunks",
    "run_depth",
    "scale_status",
    "scene_scale_status",
    "sfm_depth_maps",
]

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
DA3_MODEL = "depth-anything/DA3NESTED-GIANT-LARGE"
_MEMBER = re.compile(r"^(?P<key>[^.]+)\.(?P<rest>.+)$")
_DEP = re.compile(r"^dep\d+\.webp$")
_IMG = re.compile(r"^img(\d+)\.(jpg|png|webp|bin)$")
_POINT_FILES = ("points3D.ply", "sparse/0/points3D.bin", "sparse/0/points3D.txt", "sparse/points3D.bin",
                "sparse/points3D.txt", "points3D.bin", "points3D.txt", "colmap/sparse/0/points3D.bin",
                "colmap/sparse/0/points3D.txt")


class DepthError(RuntimeError):
    """Depth cannot be filled (missing package, bad option, no way to get depth)."""


class _Skip(Exception):
    """Internal: this scene gets no depth (reported, not fatal)."""


DA3_INSTALL_HINT = (
    "Install it with `pip install depth-anything-3` (or from https://github.com/ByteDance-Seed/Depth-Anything-3); "
    f"its weights ({DA3_MODEL}) are downloaded from Hugging Face on first use, and a GPU is strongly recommended."
)
SFM_HINT = ("`--method sfm` fills depth from the sparse SfM points of the scene's source (points3D.ply, or COLMAP "
            "points3D.bin/.txt), found through the scene's meta.json or given with --points.")


# ================================================================================================== SfM points
def load_points(path: PathLike) -> np.ndarray:
    """``(M, 3)`` float64 xyz from a ``.ply`` (vertex x, y, z) or a COLMAP ``points3D.bin`` / ``points3D.txt``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"points file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".ply":
            from plyfile import PlyData

            ply = PlyData.read(str(path))
            v = ply["vertex"]
            xyz = np.stack([np.asarray(v[a], dtype=np.float64) for a in ("x", "y", "z")], axis=1)
        elif suffix in (".bin", ".txt"):
            from zipsplat_ns.data.converters.colmap import read_points3D_bin, read_points3D_txt

            pts = read_points3D_bin(path) if suffix == ".bin" else read_points3D_txt(path)
            xyz = np.asarray(pts.xyz, dtype=np.float64).reshape(-1, 3)
        else:
            raise ValueError(f"unsupported points file {path.name!r} (expected .ply, points3D.bin or points3D.txt)")
    except (KeyError, ValueError, OSError, IndexError) as err:
        raise ValueError(f"cannot read SfM points from {path}: {err}") from err
    xyz = xyz[np.isfinite(xyz).all(axis=1)]
    return xyz


def _points_in_dir(d: Path) -> Optional[Path]:
    for rel in _POINT_FILES:
        p = d / rel
        if p.is_file():
            return p
    return None


def _points_from_option(key: str, points: Path, num_scenes: int) -> Optional[Path]:
    if points.is_file() and points.suffix.lower() == ".json":
        mapping = json.loads(points.read_text())
        if not isinstance(mapping, dict):
            raise DepthError(f"--points {points}: expected a JSON object mapping scene keys to point files")
        value = mapping.get(key)
        if value is None:
            return None
        p = Path(value).expanduser()
        p = p if p.is_absolute() else points.parent / p
        return (_points_in_dir(p) if p.is_dir() else p) if p.exists() else None
    if points.is_file():
        if num_scenes > 1:
            raise DepthError(
                f"--points {points} is one points file but the shards hold {num_scenes} scenes; give a folder "
                "(<key>.ply or <key>/points3D.*) or a JSON mapping {key: path} instead"
            )
        return points
    if points.is_dir():
        for cand in (points / f"{key}.ply", points / f"{key}.bin", points / f"{key}.txt"):
            if cand.is_file():
                return cand
        if (points / key).is_dir():
            return _points_in_dir(points / key)
        return None
    raise DepthError(f"--points {points} does not exist")


def find_points(scene: RawScene, points: Optional[PathLike] = None, *, num_scenes: int = 1) -> Optional[Path]:
    """The SfM points file for ``scene``, or ``None``.

    ``points`` (``--points``) wins: a JSON object ``{key: path}``, a folder with ``<key>.ply`` or
    ``<key>/points3D.*`` (or ``<key>/sparse/0/points3D.*``), or one file for a single-scene shard set. Otherwise the
    scene's meta (written by the converters): ``points3D`` (a file, relative to ``source``), ``sparse`` (a COLMAP
    model folder), then the usual places inside ``source`` (``points3D.ply``, ``sparse/0/points3D.bin|txt``, ...).
    """
    if points is not None:
        return _points_from_option(scene.key, Path(points).expanduser(), num_scenes)
    meta = scene.meta or {}
    source = meta.get("source")
    src = Path(str(source)).expanduser() if source else None
    rel = meta.get("points3D")
    if isinstance(rel, str) and rel:
        p = Path(rel).expanduser()
        if not p.is_absolute() and src is not None:
            p = (src if src.is_dir() else src.parent) / p
        if p.is_file():
            return p
    sparse = meta.get("sparse")
    if isinstance(sparse, str) and sparse and Path(sparse).is_dir():
        found = _points_in_dir(Path(sparse))  # points3D.bin / .txt inside the model folder
        if found is not None:
            return found
    if src is not None:
        if src.is_file() and src.suffix.lower() in (".ply", ".bin", ".txt") and src.name.startswith("points3D"):
            return src
        if src.is_dir():
            return _points_in_dir(src)
    return None


def _c2w(pose_row: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    p = np.asarray(pose_row, dtype=np.float64)
    return p[:9].reshape(3, 3), p[9:12]


def project_points_depth(xyz: np.ndarray, camera: np.ndarray, pose: np.ndarray, *, radius: int = 0,
                         min_depth: float = 1e-6) -> np.ndarray:
    """Sparse depth of one view: ``(h, w)`` float32, the camera-space ``z`` of the nearest point per pixel, ``-1``
    elsewhere.

    ``camera``: ``[w, h, fx, fy, cx, cy]``; ``pose``: camera-to-world OpenCV ``[R row-major, t]``. A point at
    ``(u, v) = (fx x/z + cx, fy y/z + cy)`` covers pixel ``(row, col) = (floor(v), floor(u))`` (pixel ``(0, 0)`` is
    the top-left corner) and, with ``radius`` r, the ``(2r+1)^2`` square around it.
    """
    w, h, fx, fy, cx, cy = (float(v) for v in np.asarray(camera, dtype=np.float64)[:6])
    W, H = int(round(w)), int(round(h))
    depth = np.full((H, W), -1.0, dtype=np.float32)
    if len(xyz) == 0:
        return depth
    R, t = _c2w(pose)
    cam = (np.asarray(xyz, dtype=np.float64) - t) @ R  # R^T (X - t), row vectors
    z = cam[:, 2]
    front = z > min_depth
    cam, z = cam[front], z[front]
    if len(z) == 0:
        return depth
    u = fx * cam[:, 0] / z + cx
    v = fy * cam[:, 1] / z + cy
    col = np.floor(u)
    row = np.floor(v)
    inside = (col >= 0) & (col < W) & (row >= 0) & (row < H) & np.isfinite(u) & np.isfinite(v)
    col, row, z = col[inside].astype(np.int64), row[inside].astype(np.int64), z[inside]
    if radius > 0:
        offs = np.arange(-radius, radius + 1)
        dr, dc = np.meshgrid(offs, offs, indexing="ij")
        row = (row[:, None] + dr.reshape(1, -1)).reshape(-1)
        col = (col[:, None] + dc.reshape(1, -1)).reshape(-1)
        z = np.repeat(z, dr.size)
        ok = (col >= 0) & (col < W) & (row >= 0) & (row < H)
        row, col, z = row[ok], col[ok], z[ok]
    if len(z) == 0:
        return depth
    flat = row * W + col
    order = np.lexsort((z, flat))  # by pixel, then nearest first
    flat, z = flat[order], z[order]
    first = np.ones(len(flat), dtype=bool)
    first[1:] = flat[1:] != flat[:-1]
    depth.reshape(-1)[flat[first]] = z[first].astype(np.float32)
    return depth


def sfm_depth_maps(scene: RawScene, xyz: np.ndarray, *, radius: int = 0) -> List[np.ndarray]:
    """One :func:`project_points_depth` map per view of ``scene``."""
    return [project_points_depth(xyz, scene.cameras[i], scene.poses[i], radius=radius)
            for i in range(scene.num_views)]


# ============================================================================================================ DA3
def round_robin_chunks(n: int, max_views: Optional[int]) -> List[List[int]]:
    """Split views ``0..n-1`` into ``ceil(n / max_views)`` round-robin chunks (``[0, k, 2k, ...], [1, k+1, ...]``),
    so that every chunk spans the whole trajectory. ``None`` or ``>= n``: one chunk."""
    if n <= 0:
        return []
    if max_views is None or max_views <= 0 or max_views >= n:
        return [list(range(n))]
    k = math.ceil(n / max_views)
    return [list(range(j, n, k)) for j in range(k)]


def _import_da3() -> Any:
    try:
        from depth_anything_3.api import DepthAnything3
    except ImportError as err:
        raise DepthError(
            f"Depth method 'da3' needs the depth-anything-3 package, which cannot be imported ({err}). "
            f"{DA3_INSTALL_HINT} Without it, {SFM_HINT}"
        ) from err
    return DepthAnything3


def da3_available() -> bool:
    """Whether ``depth_anything_3.api`` can be imported."""
    try:
        _import_da3()
    except DepthError:
        return False
    return True


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach()
    if hasattr(x, "cpu"):
        x = x.cpu()
    if hasattr(x, "float") and not isinstance(x, np.ndarray):
        x = x.float()
    return np.asarray(x, dtype=np.float32)


def _resize_bilinear(depth: np.ndarray, w: int, h: int) -> np.ndarray:
    if depth.shape == (h, w):
        return depth.astype(np.float32, copy=False)
    import cv2

    return cv2.resize(depth.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)


class Da3DepthEstimator:
    """Depth-Anything-3 depth in pose units for a scene (model loaded once, on first use).

    ``max_views``: at most this many views per ``inference`` call (round-robin chunks); ``process_res``: DA3's
    processing resolution; ``device``: default ``cuda[:LOCAL_RANK]`` when available, else ``cpu``.
    """

    def __init__(self, model_name: str = DA3_MODEL, *, device: Optional[str] = None,
                 max_views: Optional[int] = None, process_res: int = 504):
        self.model_name, self.device, self.max_views, self.process_res = model_name, device, max_views, process_res
        self._model: Any = None

    def _load(self) -> Any:
        if self._model is not None:
            return self._model
        cls = _import_da3()
        device = self.device
        if device is None:
            try:
                import torch

                device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"
            except ImportError:  # pragma: no cover
                device = "cpu"
        logger.info("Loading %s on %s", self.model_name, device)
        try:
            model = cls.from_pretrained(self.model_name)
        except Exception as err:  # noqa: BLE001 - hub/network errors, reworded
            raise DepthError(
                f"Could not load the DA3 model {self.model_name!r}: {type(err).__name__}: {err}. It is downloaded from "
                "Hugging Face on first use (check the network, HF_TOKEN, HF_HUB_OFFLINE / HF_HUB_CACHE)."
            ) from err
        if hasattr(model, "to"):
            model = model.to(device)
        if hasattr(model, "eval"):
            model.eval()
        self._model = model
        return model

    def __call__(self, scene: RawScene) -> List[np.ndarray]:
        from zipsplat_ns.data.images import decode_image

        model = self._load()
        n = scene.num_views
        images = [decode_image(b, name=f"{scene.key}.img{i}") for i, b in enumerate(scene.images)]
        cams = np.asarray(scene.cameras, dtype=np.float64)
        K = np.zeros((n, 3, 3), dtype=np.float32)
        K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = cams[:, 2], cams[:, 3], cams[:, 4], cams[:, 5], 1
        c2w = np.tile(np.eye(4), (n, 1, 1))
        poses = np.asarray(scene.poses, dtype=np.float64)
        c2w[:, :3, :3] = poses[:, :9].reshape(n, 3, 3)
        c2w[:, :3, 3] = poses[:, 9:12]
        w2c = np.linalg.inv(c2w).astype(np.float32)
        out: List[Optional[np.ndarray]] = [None] * n
        for idx in round_robin_chunks(n, self.max_views):
            pred = model.inference(
                image=[images[i] for i in idx], intrinsics=K[idx], extrinsics=w2c[idx],
                align_to_input_ext_scale=True, process_res=self.process_res,
            )  # fmt: skip
            depth = _to_numpy(pred.depth if hasattr(pred, "depth") else pred["depth"])
            if depth.ndim == 4 and depth.shape[1] == 1:
                depth = depth[:, 0]
            if depth.ndim != 3 or depth.shape[0] != len(idx):
                raise DepthError(f"DA3 returned depth of shape {depth.shape} for {len(idx)} views")
            for j, i in enumerate(idx):
                h, w = images[i].shape[:2]
                out[i] = _resize_bilinear(depth[j], w, h)
        return [d for d in out if d is not None]


# =================================================================================================== reporting
@dataclass
class DepthReport:
    """What :func:`fill_depth` did."""

    filled: List[Tuple[str, str, float]] = field(default_factory=list)
    """(scene key, depth source, median fraction of valid pixels per view)"""
    kept: List[str] = field(default_factory=list)
    """Scenes that already had depth (not overwritten)."""
    skipped: List[Tuple[str, str]] = field(default_factory=list)
    """(scene key, reason): scenes that got no depth."""
    shard_errors: List[Tuple[str, str]] = field(default_factory=list)
    """(shard, reason): shards left untouched because they could not be read."""
    shards_rewritten: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.skipped and not self.shard_errors

    def summary(self, max_lines: int = 30) -> str:
        lines = [f"depth: filled {len(self.filled)} scene(s), kept {len(self.kept)} with existing depth, "
                 f"skipped {len(self.skipped)}; rewrote {len(self.shards_rewritten)} shard(s)"]
        by_source: Dict[str, int] = {}
        for _, src, _ in self.filled:
            by_source[src] = by_source.get(src, 0) + 1
        if by_source:
            lines.append("  sources: " + ", ".join(f"{k}: {v}" for k, v in sorted(by_source.items())))
        if self.filled:
            fr = [f for _, _, f in self.filled]
            lines.append(f"  valid pixels per view (median over scenes): {100 * float(np.median(fr)):.2f}%")
        if self.kept:
            lines.append(f"  kept (already have depth; --overwrite replaces them): {', '.join(self.kept[:10])}"
                         + (" ..." if len(self.kept) > 10 else ""))
        for key, reason in self.skipped[:max_lines]:
            lines.append(f"  skipped {key}: {reason}")
        if len(self.skipped) > max_lines:
            lines.append(f"  ... and {len(self.skipped) - max_lines} more skipped")
        for shard, reason in self.shard_errors:
            lines.append(f"  shard {shard} left unchanged: {reason}")
        return "\n".join(lines)

    def to_dict(self) -> Dict:
        return {"filled": [list(x) for x in self.filled], "kept": self.kept,
                "skipped": [list(x) for x in self.skipped], "shard_errors": [list(x) for x in self.shard_errors],
                "shards_rewritten": self.shards_rewritten}


# =============================================================================================== shard rewriting
def _shard_dirs(root: Path) -> List[Path]:
    """``root`` when it holds ``*.tar``, else its sub-folders (up to 3 levels) that do (e.g. train/test-scenes)."""
    if not root.is_dir():
        raise FileNotFoundError(f"shard directory not found: {root}")
    if any(p.is_file() for p in root.glob("*.tar")):
        return [root]
    found = []
    for pattern in ("*/*.tar", "*/*/*.tar", "*/*/*/*.tar"):
        found += sorted({p.parent for p in root.glob(pattern) if p.is_file() and not p.parent.name.startswith(".")})
        if found:
            break
    if not found:
        raise FileNotFoundError(f"no *.tar shards in {root} (nor in its sub-folders)")
    return found


def _groups(tar: tarfile.TarFile) -> Iterator[Tuple[Optional[str], List[Tuple[tarfile.TarInfo, bytes]]]]:
    """Contiguous member groups by scene key (``None`` for members outside the naming scheme), with their bytes."""
    key: Optional[str] = None
    members: List[Tuple[tarfile.TarInfo, bytes]] = []
    for info in tar:
        m = _MEMBER.match(info.name) if info.isfile() else None
        k = m.group("key") if m else None
        data = b""
        if info.isfile():
            f = tar.extractfile(info)
            data = f.read() if f is not None else b""
            if len(data) != info.size:
                raise tarfile.ReadError(f"member {info.name} is truncated ({len(data)} of {info.size} bytes)")
        if k is None:
            if members:
                yield key, members
                key, members = None, []
            yield None, [(info, data)]
            continue
        if k != key and members:
            yield key, members
            members = []
        key = k
        members.append((info, data))
    if members:
        yield key, members


def _new_info(name: str, size: int, like: Optional[tarfile.TarInfo] = None) -> tarfile.TarInfo:
    if like is not None:
        info = copy.copy(like)
        info.name = name
    else:
        info = tarfile.TarInfo(name)
        info.mode = 0o644
    info.size = size
    info.mtime = int(time.time())
    return info


SceneDepthFn = Callable[[RawScene], Tuple[List[np.ndarray], str, Dict[str, Any]]]


def _process_group(key: str, members: List[Tuple[tarfile.TarInfo, bytes]], shard: str, *, overwrite: bool,
                   depth_fn: SceneDepthFn, report: DepthReport) -> Tuple[List[Tuple[tarfile.TarInfo, bytes]], bool]:
    """New members for one scene and whether they changed."""
    prefix = key + "."
    by_rest = {info.name[len(prefix):]: (info, data) for info, data in members}
    if "meta.json" not in by_rest:
        report.skipped.append((key, f"no {key}.meta.json member (left unchanged; see `zipsplat-ns shards check`)"))
        return members, False
    meta_info, meta_bytes = by_rest["meta.json"]
    try:
        meta = json.loads(meta_bytes)
        if not isinstance(meta, dict):
            raise ValueError("not an object")
    except ValueError as err:
        report.skipped.append((key, f"unreadable meta.json ({err}); left unchanged"))
        return members, False
    has_depth = bool(meta.get("has_depth")) or any(_DEP.match(r) for r in by_rest) or "depth_ranges.json" in by_rest
    if has_depth and not overwrite:
        report.kept.append(key)
        return members, False

    keep = [(info, data) for info, data in members
            if not (_DEP.match(info.name[len(prefix):]) or info.name[len(prefix):] == "depth_ranges.json")]
    clean_meta = dict(meta, has_depth=False)
    plain = {info.name[len(prefix):]: data for info, data in keep}
    plain["meta.json"] = json.dumps(clean_meta).encode()
    try:
        scene = assemble_scene(key, plain, shard)
        maps, source, extra = depth_fn(scene)
        if len(maps) != scene.num_views:
            raise _Skip(f"got {len(maps)} depth maps for {scene.num_views} views")
        encoded: List[bytes] = []
        ranges: List[Tuple[float, float]] = []
        fractions = []
        for i, d in enumerate(maps):
            w, h = int(round(float(scene.cameras[i][0]))), int(round(float(scene.cameras[i][1])))
            if d.shape != (h, w):
                raise _Skip(f"depth map {i} is {d.shape[1]}x{d.shape[0]}, the camera says {w}x{h}")
            data, rng = encode_depth(d)
            encoded.append(data)
            ranges.append((float(rng[0]), float(rng[1])))
            fractions.append(float(np.mean(np.isfinite(d) & (d > 0))))
        if not any(f > 0 for f in fractions):
            raise _Skip(f"{source}: no valid depth in any view"
                        + (" (no SfM point projects into any image: are the points in the poses' world frame?)"
                           if source == "sfm" else ""))
    except (_Skip, SceneError, ValueError, OSError) as err:
        reason = err.reason if isinstance(err, SceneError) else str(err)
        report.skipped.append((key, reason))
        return members, False

    for k in ("depth_source", "depth_points", "depth_model"):
        meta.pop(k, None)
    meta.update({"has_depth": True, "depth_source": source, **extra})
    # num_views and has_depth first, like RawScene.meta_json()
    ordered = {"num_views": meta.pop("num_views", scene.num_views), "has_depth": meta.pop("has_depth"), **meta}
    new_meta = json.dumps(ordered).encode()
    out: List[Tuple[tarfile.TarInfo, bytes]] = []
    for info, data in keep:
        if info is meta_info:
            out.append((_new_info(info.name, len(new_meta), info), new_meta))
        else:
            out.append((info, data))
    # depth members follow the images (the format's order), before any extra members
    last_img = max((j for j, (info, _) in enumerate(out) if _IMG.match(info.name[len(prefix):])), default=len(out) - 1)
    depth_members = [(_new_info(f"{prefix}dep{i}.webp", len(b), meta_info), b) for i, b in enumerate(encoded)]
    rng_bytes = json.dumps([[a, b] for a, b in ranges]).encode()
    depth_members.append((_new_info(f"{prefix}depth_ranges.json", len(rng_bytes), meta_info), rng_bytes))
    out = out[: last_img + 1] + depth_members + out[last_img + 1:]
    report.filled.append((key, source, float(np.median(fractions))))
    return out, True


def _rewrite_shard(path: Path, *, overwrite: bool, depth_fn: SceneDepthFn, report: DepthReport,
                   keys: Optional[set] = None) -> bool:
    """Rewrite one shard with depth; atomic (temp file + rename); returns whether it changed.

    A damaged shard is left unchanged (a ``shard_errors`` entry): rewriting it would make the loss of the scenes
    after the damage permanent.
    """
    problem = tar_end_problem(path)  # a tar cut at a member boundary reads "fine"; rewriting it would keep the loss
    if problem is not None:
        report.shard_errors.append((str(path), problem))
        return False
    tmp = path.with_name(f".{path.name}.depth-{os.getpid()}.tmp")
    changed = False
    n_before = (len(report.filled), len(report.kept))
    try:
        with tarfile.open(path, "r|") as src, tarfile.open(tmp, "w", format=tarfile.GNU_FORMAT) as dst:
            for key, members in _groups(src):
                if key is not None and (keys is None or key in keys):
                    members, ch = _process_group(key, members, path.name, overwrite=overwrite, depth_fn=depth_fn,
                                                 report=report)
                    changed |= ch
                for info, data in members:
                    dst.addfile(info, io.BytesIO(data) if info.isfile() else None)
            end = src.offset  # where tarfile stopped reading
        # tarfile takes an unreadable header for the end of the archive: with a junk header mid-file (and a valid end
        # marker, which the check above wants) the rewrite would silently drop the scenes after it
        problem = tar_end_problem(path, end)
        if problem is None and changed:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            shutil.copymode(path, tmp)
            os.replace(tmp, path)
    except (tarfile.TarError, EOFError, OSError) as err:
        problem = f"cannot read or rewrite it ({type(err).__name__}: {err})"
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.unlink(missing_ok=True)  # unchanged or refused (after os.replace there is none left)
    if problem is not None:
        # the scenes of this shard counted as filled or kept were not written: report them as skipped instead
        lost = [key for key, _, _ in report.filled[n_before[0]:]] + report.kept[n_before[1]:]
        del report.filled[n_before[0]:]
        del report.kept[n_before[1]:]
        report.skipped += [(key, f"not written: shard {path.name} left unchanged ({problem})") for key in lost]
        report.shard_errors.append((str(path), problem))
        return False
    if changed:
        report.shards_rewritten.append(str(path))
    return changed


def _count_scenes(dirs: Sequence[Path]) -> int:
    n = 0
    for d in dirs:
        index = d / "index.json"
        if index.is_file():
            try:
                n += len(json.loads(index.read_text()))
                continue
            except (ValueError, TypeError):
                pass
        n += len(list(d.glob("*.tar")))
    return n


# ============================================================================================================ API
Method = Literal["auto", "sfm", "da3"]


def fill_depth(
    shard_dir: PathLike,
    *,
    method: Method = "auto",
    points: Optional[PathLike] = None,
    overwrite: bool = False,
    splat_radius: int = 0,
    max_views: Optional[int] = None,
    model: str = DA3_MODEL,
    device: Optional[str] = None,
    process_res: int = 504,
    keys: Optional[Sequence[str]] = None,
    rank: Optional[int] = None,
    world_size: Optional[int] = None,
    estimator: Optional[Callable[[RawScene], List[np.ndarray]]] = None,
    progress: bool = True,
) -> DepthReport:
    """Fill depth into every scene of the shards in ``shard_dir`` (or its sub-folders with shards).

    See the module docstring for the methods. ``keys`` limits the work to those scenes; ``rank`` / ``world_size``
    (default: the ``RANK`` / ``WORLD_SIZE`` environment of ``torchrun``) split the shards between processes;
    ``estimator`` replaces the DA3 model (a callable ``scene -> depth maps``). Returns a :class:`DepthReport`;
    raises :class:`DepthError` when no scene can get depth for a reason that concerns them all.
    """
    if method not in ("auto", "sfm", "da3"):
        raise DepthError(f"unknown depth method {method!r}; choose auto, sfm or da3")
    if splat_radius < 0:
        raise DepthError(f"--splat-radius must be >= 0, got {splat_radius}")
    if max_views is not None and max_views < 1:
        raise DepthError(f"--max-views must be >= 1, got {max_views}")
    root = Path(shard_dir)
    dirs = _shard_dirs(root)
    shards = [p for d in dirs for p in sorted(d.glob("*.tar")) if p.is_file()]
    rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
    if world_size > 1:
        shards = shards[rank::world_size]
    num_scenes = _count_scenes(dirs)

    da3: Optional[Callable[[RawScene], List[np.ndarray]]] = estimator
    da3_error: Optional[str] = None
    if da3 is None and method in ("auto", "da3"):
        if method == "da3":
            _import_da3()  # fail early, before touching any shard
        elif not da3_available():
            da3_error = "the depth-anything-3 package is not installed"
        if da3_error is None:
            da3 = Da3DepthEstimator(model, device=device, max_views=max_views, process_res=process_res)

    points_cache: Dict[Path, np.ndarray] = {}

    def sfm(scene: RawScene, path: Path) -> Tuple[List[np.ndarray], str, Dict[str, Any]]:
        path = path.resolve()
        if path not in points_cache:
            points_cache.clear()  # one scene's points at a time
            points_cache[path] = load_points(path)
        xyz = points_cache[path]
        if len(xyz) == 0:
            raise _Skip(f"{path} holds no points")
        return sfm_depth_maps(scene, xyz, radius=splat_radius), "sfm", {"depth_points": str(path)}

    def depth_fn(scene: RawScene) -> Tuple[List[np.ndarray], str, Dict[str, Any]]:
        if method in ("auto", "sfm"):
            path = find_points(scene, points, num_scenes=num_scenes)
            if path is not None:
                return sfm(scene, path)
            if method == "sfm":
                src = (scene.meta or {}).get("source")
                raise _Skip("no SfM points found (looked at meta points3D/sparse/source"
                            + (f" = {src}" if src else ", but the scene has no source") + "; use --points)")
        if da3 is None:
            raise _Skip(f"no SfM points for this scene and {da3_error}: {DA3_INSTALL_HINT} Or give the points with "
                        "--points.")
        try:
            maps = da3(scene)
        except RuntimeError as err:
            if "out of memory" in str(err).lower():
                raise DepthError(
                    f"DA3 ran out of memory on scene {scene.key} ({scene.num_views} views): pass --max-views (e.g. "
                    f"{max(1, min(scene.num_views // 2, 32))}) to process fewer views per call, or a smaller "
                    f"--process-res"
                ) from err
            # one scene's failure must not end a run over many: skipped, counted and named in the report
            raise _Skip(f"the depth model failed on this scene: {type(err).__name__}: {err}") from err
        return maps, "da3", {"depth_model": model if estimator is None else getattr(estimator, "model_name", model)}

    report = DepthReport()
    key_set = set(keys) if keys is not None else None
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(shards), unit="shard", desc="depth", disable=None)
    try:
        for shard in shards:
            _rewrite_shard(shard, overwrite=overwrite, depth_fn=depth_fn, report=report, keys=key_set)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(filled=len(report.filled), skipped=len(report.skipped))
    finally:
        if bar is not None:
            bar.close()
    if method == "auto" and not report.filled and not report.kept and report.skipped and da3 is None:
        raise DepthError(
            f"No scene in {root} got depth: none has SfM points and {da3_error}. Either install Depth-Anything-3 "
            f"({DA3_INSTALL_HINT}) and use --method da3, or give the scenes' sparse points: {SFM_HINT}\n"
            + report.summary()
        )
    return report


# ==================================================================================================== scale mode
@dataclass
class ScaleStatus:
    """Which scale normalisation a shard set allows.

    ``mode``: ``"depth"`` when every scene has depth maps (scale = median distance of the context depth points,
    geometry losses on), else ``"baseline"`` (scale from the camera baseline, geometry losses off).
    """

    mode: Literal["depth", "baseline"]
    num_scenes: int
    num_with_depth: int
    without_depth: List[str] = field(default_factory=list)
    unreadable: List[str] = field(default_factory=list)

    @property
    def message(self) -> str:
        if self.mode == "depth":
            return (f"depth: all {self.num_scenes} scene(s) have depth maps -> scale from the median depth of the "
                    f"context points, geometry losses on")
        if self.num_with_depth == 0:
            why = f"none of the {self.num_scenes} scene(s) has depth maps"
        else:
            shown = ", ".join(self.without_depth[:5]) + (" ..." if len(self.without_depth) > 5 else "")
            why = f"{self.num_scenes - self.num_with_depth} of {self.num_scenes} scene(s) have no depth ({shown})"
        return (f"baseline: {why} -> scale from the camera baseline, geometry losses off "
                f"(add depth with `zipsplat-ns depth <shard dir>`)")


def _scan_shard(path: Path) -> Tuple[Dict[str, bool], Optional[str]]:
    """``key -> has depth`` from member names only (no payload is read)."""
    found: Dict[str, bool] = {}
    try:
        with tarfile.open(path, "r:") as tar:
            for info in tar:
                m = _MEMBER.match(info.name)
                if m is None:
                    continue
                k, rest = m.group("key"), m.group("rest")
                found.setdefault(k, False)
                if rest == "depth_ranges.json":
                    found[k] = True
    except (tarfile.TarError, EOFError, OSError) as err:
        return found, f"{type(err).__name__}: {err}"
    return found, None


def scale_status(*shard_dirs: PathLike) -> ScaleStatus:
    """Scan the shards of one or more shard folders (member names only) and return a :class:`ScaleStatus`."""
    scenes: Dict[str, bool] = {}
    unreadable: List[str] = []
    for sd in shard_dirs:
        for d in _shard_dirs(Path(sd)):
            for shard in sorted(d.glob("*.tar")):
                found, err = _scan_shard(shard)
                for k, v in found.items():
                    scenes[f"{d.name}/{k}" if len(shard_dirs) > 1 else k] = v
                if err:
                    unreadable.append(f"{shard}: {err}")
    with_depth = sum(scenes.values())
    mode: Literal["depth", "baseline"] = "depth" if scenes and with_depth == len(scenes) else "baseline"
    without = [k for k, v in scenes.items() if not v]
    return ScaleStatus(mode, len(scenes), with_depth, without, unreadable)


def scene_scale_status(*shard_dirs: PathLike) -> Literal["depth", "baseline"]:
    """``"depth"`` if every scene in the shard folder(s) has depth, else ``"baseline"`` (see :func:`scale_status`)."""
    return scale_status(*shard_dirs).mode


# ============================================================================================================ CLI
try:  # tyro marks SHARD_DIR as positional in `zipsplat-ns depth SHARD_DIR`
    from tyro.conf import Positional as _Positional

    _ShardDirArg = _Positional[Path]
except ImportError:  # pragma: no cover - tyro is a dependency
    _ShardDirArg = Path  # type: ignore[misc]


@dataclass
class DepthConfig:
    """Fill depth maps into existing shards (in place; each shard is rewritten atomically, index.json unchanged).

    --method sfm projects the sparse SfM points of each scene's source (points3D.ply or COLMAP points3D.bin/.txt,
    found through the scene's meta.json or --points) into every view; --method da3 runs Depth-Anything-3 with the
    scene's cameras (needs the depth-anything-3 package and a GPU); --method auto uses SfM points where a scene has
    them, else DA3. Scenes that already have depth are kept unless --overwrite. Works under torchrun (shards are
    split by rank).
    """

    shard_dir: _ShardDirArg
    """Shard folder (*.tar + index.json), or a dataset folder whose sub-folders hold shards."""
    method: Method = "auto"
    """Where depth comes from: sfm (sparse points), da3 (Depth-Anything-3), or auto (sfm where available, else da3)."""
    points: Optional[Path] = None
    """SfM points instead of the ones the scenes' meta.json points to: a folder (<key>.ply or <key>/points3D.*), a
    JSON file {scene key: path}, or one file when the shards hold a single scene."""
    overwrite: bool = False
    """Replace depth that scenes already have."""
    splat_radius: int = 0
    """sfm: also write each point's depth to the (2r+1)x(2r+1) pixels around it (nearest point wins)."""
    max_views: Optional[int] = None
    """da3: at most this many views per DA3 call (views are split round-robin)."""
    model: str = DA3_MODEL
    """da3: Hugging Face model id for DepthAnything3.from_pretrained."""
    device: Optional[str] = None
    """da3: torch device (default: cuda[:LOCAL_RANK] when available, else cpu)."""
    process_res: int = 504
    """da3: processing resolution."""
    json_output: Optional[Path] = None
    """Also write the report as JSON here."""
    progress: bool = True
    """Show a progress bar (on a terminal)."""

    def run(self) -> DepthReport:
        return fill_depth(self.shard_dir, method=self.method, points=self.points, overwrite=self.overwrite,
                          splat_radius=self.splat_radius, max_views=self.max_views, model=self.model,
                          device=self.device, process_res=self.process_res, progress=self.progress)

    def main(self) -> int:
        """Run, print the report and the resulting scale mode (stderr); exit code 1 when scenes were skipped."""
        import sys

        report = self.run()
        print(report.summary(), file=sys.stderr)
        print(scale_status(self.shard_dir).message, file=sys.stderr)
        if self.json_output is not None:
            from zipsplat_ns.utils.atomic import atomic_write

            atomic_write(self.json_output, json.dumps(report.to_dict(), indent=2) + "\n")
        return 0 if report.ok else 1


def run_depth(cfg: DepthConfig) -> DepthReport:
    """Run ``zipsplat-ns depth`` from a config (returns the report)."""
    return cfg.run()
