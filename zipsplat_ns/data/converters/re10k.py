"""RealEstate10K as pixelSplat/MVSplat ``.torch`` chunks -> ``dst/train-scenes`` and ``dst/test-scenes``.

Each chunk is a ``torch.save``-d list of scene dicts: ``key`` (str), ``url`` (str), ``timestamps`` ``(N,)`` int,
``cameras`` ``(N, 18)`` float = ``[fx, fy, cx, cy`` (normalised by the image width/height), 2 unused,
world-to-camera ``3x4`` row-major ``]``, and ``images``: N uint8 tensors holding JPEG bytes.
K = ``(fx*w, fy*h, cx*w, cy*h)`` with ``w, h`` from each JPEG header; pose = ``inv(w2c)``; the JPEGs are stored
unchanged (unless ``--target-size``) and frames keep the chunk order, which the benchmark index files refer to.
Input: a folder with ``train/`` and ``test/`` (directly or under ``re10k/``), or ``re10k.zip`` of that.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Dict, List, Optional, Tuple

import numpy as np

from zipsplat_ns.data.converters.common import (
    BaseConvertConfig,
    ConvertError,
    ConvertReport,
    ImageOps,
    SceneSkipped,
    SplitWriters,
    build_scene,
    check_rotation,
    finish,
    image_size,
    make_K,
    pose_row,
    process_view,
    progress_bar,
    sanitize_key,
    w2c_to_c2w,
    writer_kwargs,
)
from zipsplat_ns.data.scene import RawScene

SPLITS = ("train", "test")


def _chunk_sources(src: Path, splits) -> List[Tuple[str, str, object]]:
    """``[(split, name, opener)]`` for every ``.torch`` chunk, sorted by split then name."""
    out: List[Tuple[str, str, object]] = []
    if src.is_file():
        if not zipfile.is_zipfile(src):
            raise ConvertError(f"convert re10k: {src} is not a zip archive (expected re10k.zip or a folder)")
        with zipfile.ZipFile(src) as zf:
            names = [n for n in zf.namelist() if n.endswith(".torch")]
        for n in sorted(names):
            parts = PurePosixPath(n).parts
            split = next((p for p in reversed(parts[:-1]) if p in splits), None)
            if split is not None:
                out.append((split, n, ("zip", src, n)))
        if not out:
            raise ConvertError(f"convert re10k: {src} holds no .torch files under {'/ or '.join(splits)}/")
        return out
    if not src.is_dir():
        raise ConvertError(f"convert re10k: {src} does not exist")
    roots = [src, src / "re10k"]
    for split in splits:
        for r in roots:
            d = r / split
            if d.is_dir():
                out += [(split, str(p.relative_to(src)), ("file", p)) for p in sorted(d.glob("*.torch"))]
                break
    if not out:
        zips = sorted(src.glob("*.zip"))
        if len(zips) == 1:
            return _chunk_sources(zips[0], splits)
        raise ConvertError(
            f"convert re10k: no .torch chunks in {src}/{{{','.join(splits)}}} or {src}/re10k/{{{','.join(splits)}}}"
        )
    return out


def _load_chunk(opener) -> list:
    import torch

    if opener[0] == "zip":
        with zipfile.ZipFile(opener[1]) as zf, zf.open(opener[2]) as f:
            buf = io.BytesIO(f.read())  # one chunk at a time; torch.load needs a seekable file
    else:
        buf = io.BytesIO(Path(opener[1]).read_bytes())
    data = torch.load(buf, map_location="cpu", weights_only=True)
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise ValueError(f"expected a list of scene dicts, got {type(data).__name__}")
    return data


def _as_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def re10k_scene(item: Dict, ops: ImageOps) -> RawScene:
    """One chunk entry -> a scene; any bad frame skips the whole scene (index files refer to frame positions)."""
    if not isinstance(item, dict):
        raise SceneSkipped(f"entry is a {type(item).__name__}, not a dict")
    for k in ("key", "cameras", "images"):
        if k not in item:
            raise SceneSkipped(f"entry has no {k!r}")
    key = str(item["key"])
    cams_raw = _as_numpy(item["cameras"]).astype(np.float64)
    imgs = item["images"]
    n = len(imgs)
    if cams_raw.ndim != 2 or cams_raw.shape != (n, 18):
        raise SceneSkipped(f"cameras has shape {tuple(cams_raw.shape)}, expected ({n}, 18) for {n} images")
    if not np.isfinite(cams_raw).all():
        raise SceneSkipped("cameras has non-finite values")
    cams, poses, images = [], [], []
    for i in range(n):
        data = _as_numpy(imgs[i]).astype(np.uint8).tobytes()
        try:
            w, h = image_size(data, f"image {i}")
            fx, fy, cx, cy = cams_raw[i, :4]
            K = make_K(fx * w, fy * h, cx * w, cy * h)
            w2c = cams_raw[i, 6:18].reshape(3, 4)
            reason = check_rotation(w2c[:, :3])
            if reason:
                raise ValueError(f"frame {i}: {reason}")
            img, row = process_view(data, K, None, ops, name=f"image {i}")
        except ValueError as exc:
            raise SceneSkipped(f"frame {i}: {exc}") from exc
        cams.append(row)
        poses.append(pose_row(w2c_to_c2w(w2c[:, :3], w2c[:, 3])))
        images.append(img)
    meta = {"format": "re10k", "source_key": key, "posed": True}
    if "url" in item:
        meta["url"] = str(item["url"])
    if "timestamps" in item:
        meta["timestamps"] = [int(t) for t in _as_numpy(item["timestamps"]).reshape(-1).tolist()]
    return build_scene(sanitize_key(key), cams, poses, images, meta)


def convert_re10k(
    src: Path,
    dst: Path,
    *,
    target_size: Optional[int] = None,
    splits: Tuple[str, ...] = SPLITS,
    min_views: int = 1,
    shard_size_mb: float = 512.0,
    overwrite: bool = False,
    progress: bool = True,
) -> ConvertReport:
    """Convert the chunks; ``target_size``: crop to the principal point, then to a centred square, then resize."""
    src = Path(src)
    chunks = _chunk_sources(src, tuple(splits))
    if target_size:
        ops = ImageOps(undistort=False, crop_principal_point=True, square=True, square_size=int(target_size))
    else:
        ops = ImageOps(undistort=False)
    report = ConvertReport("re10k", str(src))
    dirs = {s: Path(dst) / f"{s}-scenes" for s in splits}
    with progress_bar(progress) as prog, SplitWriters(dirs, report, **writer_kwargs(shard_size_mb, overwrite)) as out:
        t_chunks = prog.add_task("chunks", total=len(chunks))
        for split, name, opener in chunks:
            try:
                items = _load_chunk(opener)
            except Exception as exc:  # noqa: BLE001 - unreadable chunk: every scene in it is lost, name the file
                report.skip(f"{name} (whole chunk)", f"cannot load: {type(exc).__name__}: {exc}")
                prog.advance(t_chunks)
                continue
            for j, item in enumerate(items):
                label = str(item.get("key", f"{name}[{j}]")) if isinstance(item, dict) else f"{name}[{j}]"
                try:
                    scene = re10k_scene(item, ops)
                    if scene.num_views < min_views:
                        raise SceneSkipped(f"{scene.num_views} frames, need {min_views}")
                except SceneSkipped as exc:
                    report.skip(label, f"{name}: {exc.reason}")
                    continue
                out.add(split, scene)
            del items
            prog.advance(t_chunks)
        if report.num_converted == 0:
            finish(report, str(src))
    return report


@dataclass
class Re10kConvertConfig(BaseConvertConfig):
    """Convert RealEstate10K pixelSplat/MVSplat .torch chunks (a folder with train/ and test/, or re10k.zip).

    Writes DST/train-scenes and DST/test-scenes. JPEGs are passed through; frames keep the chunk order.
    """

    target_size: Optional[int] = None
    """Optional: crop to the principal point, then to a centred square, then resize to this side."""
    splits: Tuple[str, ...] = SPLITS
    """Splits to convert (sub-folder names)."""
    min_views: int = 1
    """Skip scenes with fewer frames than this."""

    def run(self) -> ConvertReport:
        return self._run(convert_re10k)
