"""Builders of small source-format fixtures for the converter tests (written from the public format descriptions).

Every builder takes KNOWN OpenCV camera-to-world poses and pinhole intrinsics (corner pixel convention) so that the
tests can compare the converted shards with the exact numbers. Images are tiny; ``render_dots`` draws Gaussian
blobs at the (optionally distorted) projections of 3D points, so pixel positions can be checked after conversion.
"""

from __future__ import annotations

import io
import json
import struct
import zipfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

GL_FLIP = np.diag([1.0, -1.0, -1.0, 1.0])


# ---------------------------------------------------------------------------------------------------- geometry
def look_at_c2w(eye, target=(0.0, 0.0, 0.0), up=(0.0, -1.0, 0.0)) -> np.ndarray:
    """OpenCV camera-to-world 4x4 (x right, y down, z forward) looking from ``eye`` at ``target``."""
    eye, target, up = (np.asarray(v, np.float64) for v in (eye, target, up))
    z = target - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, up)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    m = np.eye(4)
    m[:3, :3] = np.stack([x, y, z], 1)
    m[:3, 3] = eye
    return m


def orbit_poses(n: int, radius: float = 4.0, height: float = -1.0, seed: int = 0) -> List[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        a = 2 * np.pi * i / n + rng.uniform(-0.1, 0.1)
        eye = (radius * np.cos(a), height + rng.uniform(-0.2, 0.2), radius * np.sin(a))
        out.append(look_at_c2w(eye, target=rng.uniform(-0.2, 0.2, 3)))
    return out


def K_matrix(fx, fy, cx, cy) -> np.ndarray:
    return np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])


def distort_normalized(xy: np.ndarray, dist: Optional[Sequence[float]]) -> np.ndarray:
    """OpenCV radial-tangential model (k1, k2, p1, p2[, k3]) on normalised coordinates ``(N, 2)``."""
    if dist is None:
        return xy
    d = list(dist) + [0.0] * (5 - len(dist))
    k1, k2, p1, p2, k3 = d[:5]
    x, y = xy[:, 0], xy[:, 1]
    r2 = x * x + y * y
    radial = 1 + k1 * r2 + k2 * r2**2 + k3 * r2**3
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    return np.stack([xd, yd], 1)


def project_cv(points: np.ndarray, c2w: np.ndarray, K: np.ndarray, dist=None) -> Tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (corner convention) and depth of world points seen by an OpenCV c2w camera."""
    R, t = c2w[:3, :3], c2w[:3, 3]
    pc = (points - t) @ R
    xy = pc[:, :2] / pc[:, 2:3]
    xy = distort_normalized(xy, dist)
    return xy * [K[0, 0], K[1, 1]] + [K[0, 2], K[1, 2]], pc[:, 2]


def scene_points(n: int = 6, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-0.8, 0.8, (n, 3))


def render_dots(w: int, h: int, uv: np.ndarray, sigma: float = 1.3, background: int = 30) -> np.ndarray:
    """uint8 RGB image with a white Gaussian blob centred at each ``uv`` (corner convention: centre of pixel i is
    at i + 0.5) over a dark, slightly textured background."""
    jj, ii = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    img = np.full((h, w), float(background))
    img += 6 * np.sin(jj * 0.7) * np.cos(ii * 0.5)
    for u, v in uv:
        img += 220 * np.exp(-((jj - u) ** 2 + (ii - v) ** 2) / (2 * sigma**2))
    img = np.clip(img, 0, 255).astype(np.uint8)
    return np.repeat(img[..., None], 3, -1)


def encode(img: np.ndarray, fmt: str = "png", quality: int = 95) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    if fmt in ("jpg", "jpeg"):
        Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    else:
        Image.fromarray(img).save(buf, format=fmt.upper())
    return buf.getvalue()


def random_image(w: int, h: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------------------------------- nerfstudio
def nerfstudio_transforms(
    poses_cv: Sequence[np.ndarray],
    K: np.ndarray,
    w: int,
    h: int,
    names: Sequence[str],
    dist: Optional[Sequence[float]] = None,
    per_frame: bool = False,
) -> Dict:
    """A transforms.json dict: OpenGL c2w (= OpenCV c2w @ diag(1, -1, -1, 1)), intrinsics top-level or per frame."""
    intr = {"fl_x": K[0, 0], "fl_y": K[1, 1], "cx": K[0, 2], "cy": K[1, 2], "w": w, "h": h}
    if dist is not None:
        intr.update(dict(zip(("k1", "k2", "p1", "p2"), [float(v) for v in dist[:4]])))
    tf: Dict = {"camera_model": "OPENCV" if dist is not None else "PINHOLE"}
    if not per_frame:
        tf.update(intr)
    tf["frames"] = []
    for name, c2w in zip(names, poses_cv):
        fr = {"file_path": name, "transform_matrix": (c2w @ GL_FLIP).tolist()}
        if per_frame:
            fr.update(intr)
        tf["frames"].append(fr)
    tf["applied_transform"] = np.eye(4)[:3].tolist()
    return tf


def write_nerfstudio_scene(
    root: Path,
    poses_cv: Sequence[np.ndarray],
    K: np.ndarray,
    w: int,
    h: int,
    *,
    dist=None,
    fmt: str = "jpg",
    per_frame: bool = False,
    points: Optional[np.ndarray] = None,
    images: Optional[Sequence[np.ndarray]] = None,
) -> Dict:
    """A nerfstudio scene folder; images are dot renders of ``points`` (or random) at the distorted projections."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    names = [f"images/frame_{i:05d}.{fmt}" for i in range(len(poses_cv))]
    for i, (name, c2w) in enumerate(zip(names, poses_cv)):
        if images is not None:
            img = images[i]
        elif points is not None:
            img = render_dots(w, h, project_cv(points, c2w, K, dist)[0])
        else:
            img = random_image(w, h, i)
        (root / name).write_bytes(encode(img, fmt))
    tf = nerfstudio_transforms(poses_cv, K, w, h, names, dist, per_frame)
    (root / "transforms.json").write_text(json.dumps(tf, indent=1))
    return tf


# ---------------------------------------------------------------------------------------------------- COLMAP
COLMAP_MODELS = {
    "SIMPLE_PINHOLE": (0, 3),
    "PINHOLE": (1, 4),
    "SIMPLE_RADIAL": (2, 4),
    "RADIAL": (3, 5),
    "OPENCV": (4, 8),
}


def rotmat_to_qvec(R: np.ndarray) -> np.ndarray:
    """(w, x, y, z) of a rotation matrix (w >= 0)."""
    K = (
        np.array(
            [
                [R[0, 0] - R[1, 1] - R[2, 2], 0, 0, 0],
                [R[1, 0] + R[0, 1], R[1, 1] - R[0, 0] - R[2, 2], 0, 0],
                [R[2, 0] + R[0, 2], R[2, 1] + R[1, 2], R[2, 2] - R[0, 0] - R[1, 1], 0],
                [R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1], R[0, 0] + R[1, 1] + R[2, 2]],
            ]
        )
        / 3.0
    )
    vals, vecs = np.linalg.eigh(K)
    q = vecs[[3, 0, 1, 2], np.argmax(vals)]
    return q if q[0] >= 0 else -q


def write_colmap_model(
    model_dir: Path,
    cameras: Dict[int, Tuple[str, int, int, Sequence[float]]],
    images: Dict[int, Tuple[np.ndarray, int, str]],
    points: Optional[np.ndarray] = None,
    binary: bool = True,
) -> None:
    """cameras: id -> (model, w, h, params); images: id -> (OpenCV c2w 4x4, camera id, name); points: (P, 3).

    Observations: every point is observed in every image at its pinhole projection (enough to exercise the reader).
    """
    d = Path(model_dir)
    d.mkdir(parents=True, exist_ok=True)
    pts = np.zeros((0, 3)) if points is None else np.asarray(points, np.float64)
    w2c = {iid: np.linalg.inv(c2w) for iid, (c2w, _, _) in images.items()}
    if binary:
        b = struct.pack("<Q", len(cameras))
        for cid, (model, w, h, params) in cameras.items():
            mid, npar = COLMAP_MODELS[model]
            assert len(params) == npar
            b += struct.pack("<iiQQ", cid, mid, w, h) + struct.pack(f"<{npar}d", *params)
        (d / "cameras.bin").write_bytes(b)
        b = struct.pack("<Q", len(images))
        for iid, (c2w, cid, name) in images.items():
            R, t = w2c[iid][:3, :3], w2c[iid][:3, 3]
            b += struct.pack("<i4d3di", iid, *rotmat_to_qvec(R), *t, cid) + name.encode() + b"\x00"
            b += struct.pack("<Q", len(pts))
            for pid, X in enumerate(pts):
                xy = (R @ X + t)[:2] / (R @ X + t)[2]
                b += struct.pack("<ddq", xy[0], xy[1], pid + 1)
        (d / "images.bin").write_bytes(b)
        b = struct.pack("<Q", len(pts))
        for pid, X in enumerate(pts):
            b += struct.pack("<Q3d3Bd", pid + 1, *X, 200, 100, 50, 0.5) + struct.pack("<Q", len(images))
            for iid in images:
                b += struct.pack("<ii", iid, pid)
        (d / "points3D.bin").write_bytes(b)
    else:
        lines = ["# Camera list with one line of data per camera:", "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]"]
        lines += [
            f"{cid} {m} {w} {h} " + " ".join(repr(float(p)) for p in ps) for cid, (m, w, h, ps) in cameras.items()
        ]
        (d / "cameras.txt").write_text("\n".join(lines) + "\n")
        lines = [
            "# Image list with two lines of data per image:",
            "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME",
        ]
        for n, (iid, (c2w, cid, name)) in enumerate(images.items()):
            R, t = w2c[iid][:3, :3], w2c[iid][:3, 3]
            vals = " ".join(repr(float(v)) for v in [*rotmat_to_qvec(R), *t])
            lines.append(f"{iid} {vals} {cid} {name}")
            if n % 2 == 0 or not len(pts):  # alternate empty observation lines (legal in the format)
                lines.append("")
            else:
                obs = []
                for pid, X in enumerate(pts):
                    xy = (R @ X + t)[:2] / (R @ X + t)[2]
                    obs.append(f"{float(xy[0])!r} {float(xy[1])!r} {pid + 1}")
                lines.append(" ".join(obs))
        (d / "images.txt").write_text("\n".join(lines) + "\n")
        lines = ["# 3D point list with one line of data per point:"]
        for pid, X in enumerate(pts):
            track = " ".join(f"{iid} {pid}" for iid in images)
            lines.append(f"{pid + 1} {float(X[0])!r} {float(X[1])!r} {float(X[2])!r} 200 100 50 0.5 {track}")
        (d / "points3D.txt").write_text("\n".join(lines) + "\n")


def write_colmap_scene(
    root: Path,
    poses_cv: Sequence[np.ndarray],
    model: str,
    params: Sequence[float],
    cam_w: int,
    cam_h: int,
    *,
    img_w: Optional[int] = None,
    img_h: Optional[int] = None,
    binary: bool = True,
    images_dir: str = "images",
    names: Optional[Sequence[str]] = None,
    points: Optional[np.ndarray] = None,
    image_ids: Optional[Sequence[int]] = None,
    dot_points: Optional[np.ndarray] = None,
) -> List[str]:
    """A COLMAP scene (``sparse/0`` + an image folder). Images may be smaller than the camera (``images_4``)."""
    root = Path(root)
    img_w, img_h = img_w or cam_w, img_h or cam_h
    names = list(names or [f"img_{i:03d}.png" for i in range(len(poses_cv))])
    ids = list(image_ids or range(1, len(poses_cv) + 1))
    write_colmap_model(
        root / "sparse" / "0",
        {1: (model, cam_w, cam_h, params)},
        {iid: (c2w, 1, nm) for iid, c2w, nm in zip(ids, poses_cv, names)},
        points,
        binary,
    )
    (root / images_dir).mkdir(parents=True, exist_ok=True)
    K, dist = colmap_calibration(model, params)
    K[:2] *= [[img_w / cam_w], [img_h / cam_h]]
    for i, (nm, c2w) in enumerate(zip(names, poses_cv)):
        fmt = "jpg" if nm.lower().endswith((".jpg", ".jpeg")) else "png"
        if dot_points is not None:
            img = render_dots(img_w, img_h, project_cv(dot_points, c2w, K, dist)[0])
        else:
            img = random_image(img_w, img_h, i)
        (root / images_dir / nm).write_bytes(encode(img, fmt))
    return names


def colmap_calibration(model: str, p: Sequence[float]):
    """``(K, OpenCV dist or None)`` of the COLMAP models used in the fixtures (written independently of the
    package's reader)."""
    if model == "SIMPLE_PINHOLE":
        return K_matrix(p[0], p[0], p[1], p[2]), None
    if model == "PINHOLE":
        return K_matrix(*p[:4]), None
    if model == "SIMPLE_RADIAL":
        return K_matrix(p[0], p[0], p[1], p[2]), [p[3], 0, 0, 0]
    if model == "RADIAL":
        return K_matrix(p[0], p[0], p[1], p[2]), [p[3], p[4], 0, 0]
    if model == "OPENCV":
        return K_matrix(*p[:4]), list(p[4:8])
    raise ValueError(model)


# ---------------------------------------------------------------------------------------------------- RE10K
def re10k_item(key: str, poses_cv: Sequence[np.ndarray], K: np.ndarray, w: int, h: int, seed: int = 0) -> Dict:
    """One pixelSplat/MVSplat scene dict (normalised intrinsics, w2c 3x4 row-major, JPEG byte tensors)."""
    import torch

    n = len(poses_cv)
    cams = np.zeros((n, 18), np.float32)
    cams[:, 0:4] = [K[0, 0] / w, K[1, 1] / h, K[0, 2] / w, K[1, 2] / h]
    for i, c2w in enumerate(poses_cv):
        cams[i, 6:] = np.linalg.inv(c2w)[:3, :4].reshape(12)
    imgs = [
        torch.from_numpy(np.frombuffer(encode(random_image(w, h, seed + i), "jpg"), np.uint8).copy()) for i in range(n)
    ]
    return {
        "key": key,
        "url": f"https://www.youtube.com/watch?v={key}",
        "timestamps": torch.arange(n, dtype=torch.int64) * 33366,
        "cameras": torch.from_numpy(cams),
        "images": imgs,
    }


def write_re10k(root: Path, chunks: Dict[str, List[List[Dict]]], as_zip: bool = False) -> Path:
    """``chunks[split]`` = list of chunks (lists of scene dicts), written as ``re10k/{split}/{i:06d}.torch``."""
    import torch

    root = Path(root)
    files = {}
    for split, chunk_list in chunks.items():
        for i, items in enumerate(chunk_list):
            buf = io.BytesIO()
            torch.save(items, buf)
            files[f"re10k/{split}/{i:06d}.torch"] = buf.getvalue()
    if as_zip:
        root.mkdir(parents=True, exist_ok=True)
        path = root / "re10k.zip"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
            for name, data in files.items():
                zf.writestr(name, data)
        return path
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


# ---------------------------------------------------------------------------------------------------- DL3DV
def write_dl3dv_zip(
    path: Path,
    poses_cv: Sequence[np.ndarray],
    K_full: np.ndarray,
    full_w: int,
    full_h: int,
    factor: int = 4,
    missing: Sequence[int] = (),
    points: Optional[np.ndarray] = None,
) -> Dict:
    """``{hash}.zip`` with ``{hash}/transforms.json`` (full-resolution intrinsics) and ``{hash}/images_{factor}/``."""
    path = Path(path)
    h = path.stem
    names = [f"images/frame_{i + 1:05d}.png" for i in range(len(poses_cv))]
    tf = nerfstudio_transforms(poses_cv, K_full, full_w, full_h, names)
    w, hh = full_w // factor, full_h // factor
    Ks = K_full.copy()
    Ks[:2] /= factor
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{h}/transforms.json", json.dumps(tf))
        for i, (nm, c2w) in enumerate(zip(names, poses_cv)):
            if i in missing:
                continue
            img = render_dots(w, hh, project_cv(points, c2w, Ks)[0]) if points is not None else random_image(w, hh, i)
            zf.writestr(f"{h}/images_{factor}/{Path(nm).name}", encode(img, "png"))
    return tf


# ---------------------------------------------------------------------------------------------------- video
def write_video(path: Path, n: int = 12, w: int = 64, h: int = 48) -> Path:
    import imageio.v3 as iio

    frames = np.stack([np.full((h, w, 3), 10 * i, np.uint8) for i in range(n)])
    frames[:, : h // 2, : w // 2] = 255
    iio.imwrite(path, frames, fps=10, codec="libx264")
    return Path(path)
