"""MipNeRF360 (the ``360_v2`` layout: ``{scene}/images_4/*.JPG`` + ``{scene}/sparse/0/*.bin``) -> one tar per scene.

Intrinsics come from the COLMAP camera (full resolution) scaled to the actual size of the ``images_4`` files;
non-pinhole models are undistorted (``getOptimalNewCameraMatrix(alpha=0)``), then each image is cropped to its
principal point and resized back to its size, as in the reference converter. Images are sorted by file name (the
order the benchmark index files refer to). Output: ``dst/{scene}.tar`` + ``dst/index.json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

from zipsplat_ns.data.converters.colmap import colmap_scene, find_model_dir
from zipsplat_ns.data.converters.common import (
    BaseConvertConfig,
    ConvertError,
    ConvertReport,
    ImageOps,
    SceneProgress,
    SceneSkipped,
    SceneSource,
    convert_scenes,
    sanitize_key,
    writer_kwargs,
)

SCENES = ("bicycle", "bonsai", "counter", "garden", "kitchen", "room", "stump")


def convert_mipnerf360(
    src: Path,
    dst: Path,
    *,
    scenes: Tuple[str, ...] = SCENES,
    images: str = "images_4",
    crop_principal_point: bool = True,
    max_size: Optional[int] = None,
    shard_size_mb: float = 512.0,
    overwrite: bool = False,
    progress: bool = True,
) -> ConvertReport:
    """Convert the listed scenes that exist under ``src`` (the extracted ``360_v2`` folder)."""
    src = Path(src)
    if not src.is_dir():
        raise ConvertError(f"convert mipnerf360: {src} is not a folder (extract 360_v2.zip first)")
    if (src / "360_v2").is_dir() and not any((src / s).is_dir() for s in scenes):
        src = src / "360_v2"
    present = [s for s in scenes if (src / s).is_dir()]
    absent = [s for s in scenes if s not in present]
    if not present:
        raise ConvertError(f"convert mipnerf360: none of the scenes {', '.join(scenes)} is a folder in {src}")
    ops = ImageOps(undistort=True, crop_principal_point=crop_principal_point, keep_size=True, max_size=max_size)
    report = ConvertReport("mipnerf360", str(src))
    if absent:
        report.notes.append(f"scenes not in {src}: {', '.join(absent)}")

    def one(source: SceneSource, progress: SceneProgress):
        d = source.item
        model = find_model_dir(d)
        if model is None:
            raise SceneSkipped(f"no COLMAP model in {d}/sparse/0")
        scene, skipped = colmap_scene(
            source.key,
            d,
            model,
            d / images,
            ops,
            fmt="mipnerf360",
            tick_total=progress.set_total,
            tick=progress.tick,
        )
        if skipped:  # the benchmark's index files count positions in the name-sorted list
            bad = "; ".join(f"{n}: {why}" for n, why in skipped[:3]) + (" ..." if len(skipped) > 3 else "")
            raise SceneSkipped(
                f"{len(skipped)} unusable frame(s) ({bad}); the MipNeRF360 index files refer to frame "
                f"positions, so a scene with a dropped frame would evaluate the wrong views: restore them"
            )
        return scene, skipped

    return convert_scenes(
        report,
        {"all": Path(dst)},
        [SceneSource(sanitize_key(name), src / name) for name in present],
        one,
        what=str(src),
        writer=writer_kwargs(shard_size_mb, overwrite, per_scene=True),
        progress=progress,
    )


@dataclass
class Mipnerf360ConvertConfig(BaseConvertConfig):
    """Convert MipNeRF360 (the extracted 360_v2 folder) into one {scene}.tar per scene plus index.json.

    Uses images_4 with COLMAP intrinsics scaled to the actual image size; images sorted by file name.
    """

    scenes: Tuple[str, ...] = SCENES
    """Scenes to convert (those present in SRC)."""
    images: str = "images_4"
    """Image folder inside each scene."""
    crop_principal_point: bool = True
    """Crop each image around its principal point and resize back to its size (the reference's processing)."""
    max_size: Optional[int] = None
    """Shrink images so that the longest side is at most this many pixels."""

    def run(self) -> ConvertReport:
        return self._run(convert_mipnerf360)
