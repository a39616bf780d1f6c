"""DL3DV per-scene ``{hash}.zip`` files (the Hugging Face 960P release) -> ``dst/train-scenes``, ``dst/test-scenes``.

Each zip holds a nerfstudio ``transforms.json`` (intrinsics of the full-resolution capture, OpenGL c2w) and a
downscaled image folder (``images_4/`` etc.) whose file names match the ``frames[].file_path`` names. Intrinsics
are scaled by ``img_w / tf["w"]`` (and ``img_h / tf["h"]``); poses are flipped to OpenCV; frames keep the order of
``frames`` (missing images are skipped). Like the reference converter, each image is cropped to its principal
point and resized back to its size (lossless WebP); lens distortion is dropped unless ``--undistort``.
The test split is the list of hashes in ``dl3dv_test_split.json`` (shipped with the package) or ``--test-split``.
"""

from __future__ import annotations

import json
import re
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Dict, List, Optional, Set

from zipsplat_ns.data.converters.common import (
    BaseConvertConfig,
    ConvertError,
    ConvertReport,
    ImageOps,
    SceneProgress,
    SceneSkipped,
    SceneSource,
    convert_scenes,
    load_json,
    sanitize_key,
    writer_kwargs,
)
from zipsplat_ns.data.converters.nerfstudio import transforms_scene

DEFAULT_TEST_SPLIT = Path(__file__).with_name("dl3dv_test_split.json")


def load_test_split(path: Optional[Path] = None) -> Set[str]:
    """Hashes of the test scenes: a JSON list, or an object with a ``"test"`` list."""
    p = Path(path) if path is not None else DEFAULT_TEST_SPLIT
    if path is None and not p.is_file():
        try:  # installed package data
            from importlib.resources import files

            p = Path(str(files("zipsplat_ns.data.converters") / "dl3dv_test_split.json"))
        except (ImportError, ModuleNotFoundError, TypeError):
            pass
    if not p.is_file():
        raise ConvertError(f"convert dl3dv: test split file {p} not found")
    try:
        data = load_json(p, str(p))
    except ValueError as exc:
        raise ConvertError(f"convert dl3dv: {exc}") from exc
    hashes = data.get("test") if isinstance(data, dict) else data
    if not isinstance(hashes, list) or not all(isinstance(h, str) for h in hashes):
        raise ConvertError(f'convert dl3dv: {p} must be a list of scene hashes or {{"test": [...]}}')
    return set(hashes)


def _read_member(zf: zipfile.ZipFile, name: str) -> bytes:
    """The bytes of one zip member; ``ValueError`` naming the zip and the member when they cannot be read.

    A bad CRC raises ``BadZipFile``, a damaged deflate stream ``zlib.error`` or ``EOFError``: as a ``ValueError`` the
    frame (or, for ``transforms.json``, the scene) is skipped and reported instead of aborting the whole conversion.
    """
    try:
        return zf.read(name)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError) as exc:
        # NotImplementedError: unsupported compression method; RuntimeError: encrypted member
        zip_name = Path(str(zf.filename)).name
        raise ValueError(f"member {name} of {zip_name} is unreadable ({type(exc).__name__}: {exc})") from exc


def _zip_reader(zf: zipfile.ZipFile, tf_dir: PurePosixPath, image_folder: Optional[str]):
    """``read(file_path)``: the member at ``tf_dir/file_path``, else the same file name in a downscaled folder.

    ``None`` when there is no such member; ``ValueError`` (naming the zip and the member) when it cannot be read."""
    members = set(zf.namelist())
    by_folder: Dict[str, Dict[str, str]] = {}
    for m in members:
        pm = PurePosixPath(m)
        if pm.parent.parent == tf_dir and re.fullmatch(r"images(_\d+)?", pm.parent.name):
            by_folder.setdefault(pm.parent.name, {})[pm.name] = m

    def factor(name: str) -> int:
        return int(name.split("_")[1]) if "_" in name else 1

    if image_folder is not None:
        folders = [image_folder] if image_folder in by_folder else []
    else:  # the highest resolution present first
        folders = sorted(by_folder, key=factor)

    def read(file_path: str) -> Optional[bytes]:
        rel = PurePosixPath(file_path.replace("\\", "/"))
        exact = str(tf_dir / rel) if str(tf_dir) != "." else str(rel)
        exact = exact[2:] if exact.startswith("./") else exact
        if image_folder is None and exact in members:
            return _read_member(zf, exact)
        for f in folders:
            m = by_folder[f].get(rel.name)
            if m is not None:
                return _read_member(zf, m)
        return None

    return read


def _find_zips(src: Path) -> List[Path]:
    if src.is_file():
        if src.suffix.lower() != ".zip":
            raise ConvertError(f"convert dl3dv: {src} is not a .zip file")
        return [src]
    if not src.is_dir():
        raise ConvertError(f"convert dl3dv: {src} does not exist")
    zips = sorted(src.rglob("*.zip"), key=lambda p: (p.stem, str(p)))
    if not zips:
        raise ConvertError(f"convert dl3dv: no {{hash}}.zip files under {src}")
    return zips


def convert_dl3dv(
    src: Path,
    dst: Path,
    *,
    test_split: Optional[Path] = None,
    image_folder: Optional[str] = None,
    crop_principal_point: bool = True,
    undistort: bool = False,
    max_size: Optional[int] = None,
    min_views: int = 1,
    shard_size_mb: float = 512.0,
    overwrite: bool = False,
    progress: bool = True,
) -> ConvertReport:
    """Convert every ``{hash}.zip`` under ``src`` (or one zip); scenes in the test split go to ``test-scenes``."""
    src = Path(src)
    zips = _find_zips(src)
    test = load_test_split(test_split)
    ops = ImageOps(
        undistort=undistort,
        crop_principal_point=crop_principal_point,
        keep_size=True,
        max_size=max_size,
        passthrough=not crop_principal_point,
    )

    def one(source: SceneSource, progress: SceneProgress):
        zp = source.item
        try:
            zf = zipfile.ZipFile(zp)
        except (zipfile.BadZipFile, OSError) as exc:
            raise SceneSkipped(f"not a readable zip ({exc})") from exc
        with zf:
            tfs = [n for n in zf.namelist() if PurePosixPath(n).name == "transforms.json"]
            if not tfs:
                raise SceneSkipped("no transforms.json in the zip")
            tf_name = min(tfs, key=lambda n: (len(PurePosixPath(n).parts), n))
            try:
                data = _read_member(zf, tf_name)
            except ValueError as exc:
                raise SceneSkipped(str(exc)) from exc
            try:
                tf = json.loads(data)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise SceneSkipped(f"{tf_name}: malformed JSON ({exc})") from exc
            if isinstance(tf, dict) and isinstance(tf.get("frames"), list):
                progress.set_total(len(tf["frames"]))
            return transforms_scene(
                source.key,
                tf,
                read_image=_zip_reader(zf, PurePosixPath(tf_name).parent, image_folder),
                ops=ops,
                meta={"format": "dl3dv", "source": str(zp.resolve()), "posed": True},
                tick=progress.tick,
                min_views=min_views,
            )

    sources = [
        SceneSource(sanitize_key(zp.stem), zp, "test" if zp.stem in test else "train", label=zp.name) for zp in zips
    ]
    report = convert_scenes(
        ConvertReport("dl3dv", str(src)),
        {"train": Path(dst) / "train-scenes", "test": Path(dst) / "test-scenes"},
        sources,
        one,
        what=str(src),
        writer=writer_kwargs(shard_size_mb, overwrite),
        progress=progress,
    )
    missing = sorted(test - set(report.splits.get("test", [])))
    if missing and len(missing) < len(test):
        report.notes.append(f"{len(missing)} of the {len(test)} test-split scenes were not converted")
    return report


@dataclass
class Dl3dvConvertConfig(BaseConvertConfig):
    """Convert DL3DV per-scene {hash}.zip files (transforms.json + images_X/) into DST/train-scenes and DST/test-scenes.

    Frames keep the transforms.json order; images are cropped to the principal point and resized back (WebP).
    """

    test_split: Optional[Path] = None
    """JSON list of test-scene hashes (default: the packaged 141-scene benchmark split)."""
    image_folder: Optional[str] = None
    """Image folder inside the zips (default: the highest-resolution images* folder present)."""
    crop_principal_point: bool = True
    """Crop each image around its principal point and resize back to its size (the reference's processing)."""
    undistort: bool = False
    """Undistort OPENCV images (the reference converter does not)."""
    max_size: Optional[int] = None
    """Shrink images so that the longest side is at most this many pixels."""
    min_views: int = 1
    """Skip scenes with fewer usable frames than this."""

    def run(self) -> ConvertReport:
        return self._run(convert_dl3dv)
