"""Shard maintenance: ``check`` (validate every scene), ``repack`` (re-bucket) and ``resize`` (square copies)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from zipsplat_ns.data.depth_codec import decode_depth
from zipsplat_ns.data.images import decode_image
from zipsplat_ns.data.scene import RawScene, SceneError
from zipsplat_ns.data.shards import INDEX_NAME, ShardDamaged, ShardWriter, iter_scenes, list_shards
from zipsplat_ns.utils.atomic import atomic_write

console = Console(stderr=True)


@dataclass
class CheckReport:
    """Outcome of :func:`check_shards`."""

    shard_dir: Path
    num_shards: int = 0
    good: List[str] = field(default_factory=list)
    bad: List[Tuple[str, str, str]] = field(default_factory=list)  # (shard, key, reason)
    index_problems: List[str] = field(default_factory=list)
    damaged_shards: List[str] = field(default_factory=list)  # shards whose tar is truncated or corrupt

    @property
    def ok(self) -> bool:
        return not self.bad and not self.index_problems

    def to_dict(self) -> Dict:
        return {
            "shard_dir": str(self.shard_dir),
            "num_shards": self.num_shards,
            "num_good": len(self.good),
            "num_bad": len(self.bad),
            "bad": [{"shard": s, "scene": k, "reason": r} for s, k, r in self.bad],
            "index_problems": self.index_problems,
            "damaged_shards": self.damaged_shards,
        }


def _progress() -> Progress:
    return Progress(
        TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeRemainingColumn(), console=console, transient=True,
    )  # fmt: skip


def check_scene_payload(scene: RawScene, shard: str) -> None:
    """Decode every image and depth map of a scene; raise :class:`SceneError` naming the first bad one."""
    sizes = scene.cameras[:, :2].round().astype(int)
    for i, data in enumerate(scene.images):
        try:
            img = decode_image(data, name=f"img{i}")
        except ValueError as exc:
            raise SceneError(scene.key, str(exc), shard) from exc
        if (img.shape[1], img.shape[0]) != tuple(sizes[i]):
            raise SceneError(scene.key, f"img{i} is {img.shape[1]}x{img.shape[0]} but cameras.npy says {sizes[i][0]}x{sizes[i][1]}", shard)
    if scene.depths is not None:
        for i, data in enumerate(scene.depths):
            try:
                d = decode_depth(data, scene.depth_ranges[i], name=f"dep{i}")
            except ValueError as exc:
                raise SceneError(scene.key, str(exc), shard) from exc
            if (d.shape[1], d.shape[0]) != tuple(sizes[i]):
                raise SceneError(scene.key, f"dep{i} is {d.shape[1]}x{d.shape[0]}, image is {sizes[i][0]}x{sizes[i][1]}", shard)


def iter_good_scenes(
    shard_dir: Path, report: CheckReport, *, decode: bool = True, min_views: int = 1, desc: str = "checking"
) -> Iterator[Tuple[str, RawScene]]:
    """Yield ``(shard name, scene)`` for every valid scene of ``shard_dir``, recording bad ones in ``report``."""
    shards = list_shards(shard_dir)
    report.num_shards = len(shards)
    with _progress() as prog:
        task = prog.add_task(f"{desc} {shard_dir}", total=len(shards))
        for shard in shards:
            for item in iter_scenes(shard, errors="yield"):
                if isinstance(item, SceneError):
                    report.bad.append((shard.name, item.key, item.reason))
                    if isinstance(item, ShardDamaged):
                        report.damaged_shards.append(shard.name)
                    continue
                if item.num_views < min_views:
                    report.bad.append((shard.name, item.key, f"too few frames ({item.num_views} < {min_views})"))
                    continue
                if decode:
                    try:
                        check_scene_payload(item, shard.name)
                    except SceneError as err:
                        report.bad.append((shard.name, err.key, err.reason))
                        continue
                report.good.append(item.key)
                yield shard.name, item
            prog.advance(task)


def check_shards(shard_dir: Path, *, decode: bool = True, min_views: int = 1, fix_index: bool = False) -> CheckReport:
    """Validate every scene (members, shapes, finite values, rotations, decodable images/depth) and ``index.json``.

    ``fix_index`` rewrites ``index.json`` from the scenes found, unless a shard's tar is truncated or corrupt: that is
    refused (an ``index_problems`` entry naming the shard), since the new index would hide the lost scenes."""
    shard_dir = Path(shard_dir)
    report = CheckReport(shard_dir)
    found = {scene.key: shard for shard, scene in iter_good_scenes(shard_dir, report, decode=decode, min_views=min_views)}
    index_path = shard_dir / INDEX_NAME
    if fix_index and report.damaged_shards:
        # an index rebuilt from a cut shard would drop the lost scenes for good, and nothing would report them again
        report.index_problems.append(
            f"{INDEX_NAME} not rebuilt: truncated or corrupt shard(s) {', '.join(report.damaged_shards)} lost scenes "
            "that a new index would drop for good; re-create them (convert again, or restore a copy), then run "
            "--fix-index again"
        )
    elif fix_index:
        atomic_write(index_path, json.dumps(found, indent=2) + "\n")
    elif not index_path.is_file():
        report.index_problems.append(f"{INDEX_NAME} is missing (rebuild it with --fix-index)")
    else:
        try:
            index = json.loads(index_path.read_text())
        except json.JSONDecodeError as exc:
            report.index_problems.append(f"{INDEX_NAME} is malformed JSON ({exc})")
            index = None
        if isinstance(index, dict):
            bad_keys = {k for _, k, _ in report.bad}
            missing = sorted(k for k in index if k not in found and k not in bad_keys)
            unlisted = sorted(k for k in found if k not in index)
            wrong = sorted(k for k in found if k in index and index[k] != found[k])
            if missing:
                report.index_problems.append(f"{len(missing)} indexed scene(s) not found in any shard: {missing[:5]}")
            if unlisted:
                report.index_problems.append(f"{len(unlisted)} scene(s) missing from {INDEX_NAME}: {unlisted[:5]}")
            if wrong:
                report.index_problems.append(f"{len(wrong)} scene(s) indexed under the wrong shard: {wrong[:5]}")
    return report


def print_check_report(report: CheckReport) -> None:
    c = Console()
    c.print(f"[bold]{report.shard_dir}[/bold]: {report.num_shards} shard(s), {len(report.good)} good scene(s), "
            f"{len(report.bad)} bad")  # fmt: skip
    if report.bad:
        t = Table("shard", "scene", "reason", title="bad scenes")
        for s, k, r in report.bad:
            t.add_row(s, k, r)
        c.print(t)
    for p in report.index_problems:
        c.print(f"[yellow]index:[/yellow] {p}")
    c.print("[green]OK[/green]" if report.ok else "[red]problems found[/red]")


class NothingWritten(ValueError):
    """``repack`` / ``resize`` found shards but no scene could be written; nothing was put in the output.

    ``report`` lists every bad scene with its reason, so a caller can show why before the error."""

    def __init__(self, message: str, report: CheckReport):
        super().__init__(message)
        self.report = report


def require_shards(src: Path, what: str) -> None:
    """Raise ``ValueError`` (before any output is created) when ``src`` holds no ``*.tar`` shards.

    Shards one level down (``train-scenes/``, ``test-scenes/`` as ``synth`` and the converters write them) are named,
    since a shard directory is exactly one split: the command has to be run on each of them."""
    src = Path(src)
    if list_shards(src):  # FileNotFoundError naming src when it is not a directory
        return
    nested = sorted(d for d in src.iterdir() if d.is_dir() and any(p.is_file() for p in d.glob("*.tar")))
    if nested:
        runs = " and ".join(str(d) for d in nested)
        raise ValueError(f"shards {what}: {src} holds no *.tar shards itself, but its sub-folder(s) "
                         f"{', '.join(d.name + '/' for d in nested)} do; run it on {runs} (one output each)")  # fmt: skip
    raise ValueError(f"shards {what}: {src} holds no *.tar shards (expected a shard directory with index.json, "
                     "e.g. a train-scenes/ folder written by `zipsplat-ns synth` or `zipsplat-ns convert`)")  # fmt: skip


def _nothing_written(report: CheckReport, what: str, dst: Path) -> NothingWritten:
    """The error for a run that wrote no scene (raised inside the ``with`` block, so the writer drops its staging)."""
    if report.bad:
        reasons = "; ".join(f"{k}: {r}" for _, k, r in report.bad[:3]) + (" ..." if len(report.bad) > 3 else "")
        why = f"all {len(report.bad)} scene(s) are bad ({reasons})"
    else:
        why = f"its {report.num_shards} shard(s) hold no scenes"
    return NothingWritten(f"shards {what}: nothing to write from {report.shard_dir}: {why}; {dst} was left as it was",
                          report)  # fmt: skip


def repack_shards(src: Path, dst: Path, *, shard_size_mb: float = 512.0, overwrite: bool = False) -> CheckReport:
    """Copy every valid scene of ``src`` into ``dst`` with a new shard size; bad scenes are skipped and reported.

    Raises ``ValueError`` before creating anything when ``src`` holds no shards, and :class:`NothingWritten` (leaving
    ``dst`` as it was) when no scene is valid: an empty output would look like a successful repack."""
    require_shards(src, "repack")
    report = CheckReport(Path(src))
    with ShardWriter(dst, shard_size_mb, overwrite=overwrite) as w:
        for _, scene in iter_good_scenes(Path(src), report, desc="repacking"):
            w.add(scene)
        if not w.index:
            raise _nothing_written(report, "repack", Path(dst))
    return report


def resize_scene(scene: RawScene, size: int) -> RawScene:
    """Square ``size`` x ``size`` copy of a scene (resize-to-cover, centre crop, intrinsics and depth updated)."""
    from zipsplat_ns.data.depth_codec import encode_depth
    from zipsplat_ns.data.images import encode_image
    from zipsplat_ns.data.preprocess import preprocess_view

    images, depths, ranges, cams = [], [], [], []
    for i, data in enumerate(scene.images):
        img = decode_image(data, name=f"{scene.key}.img{i}")
        dep = None
        if scene.depths is not None:
            dep = decode_depth(scene.depths[i], scene.depth_ranges[i], name=f"{scene.key}.dep{i}")
        out_img, out_cam, out_dep = preprocess_view(img, scene.cameras[i], size, depth=dep)
        images.append(encode_image((out_img.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy(), "webp"))
        cams.append(np.asarray(out_cam, dtype=np.float32))
        if out_dep is not None:
            b, r = encode_depth(np.asarray(out_dep))
            depths.append(b)
            ranges.append(r)
    has_depth = scene.depths is not None
    return RawScene(
        scene.key, np.stack(cams), scene.poses, images,
        depths if has_depth else None, ranges if has_depth else None, dict(scene.meta),
    )  # fmt: skip


def check_crop_size(size: int) -> None:
    """Raise ``ValueError`` unless ``size`` is a positive multiple of the network's 14 px patch (252 = 18 x 14 is its
    native size): square copies are meant to be fed as they are, and the network refuses any other side."""
    from zipsplat_ns.models.backbone import PATCH_SIZE

    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < PATCH_SIZE or size % PATCH_SIZE:
        raise ValueError(f"shards resize: --size must be a positive multiple of {PATCH_SIZE} (the network's patch size; "
                         f"252 is its native size), got {size!r}")  # fmt: skip


def resize_shards(src: Path, dst: Path, *, size: int = 252, shard_size_mb: float = 512.0, overwrite: bool = False) -> CheckReport:
    """Write square ``size`` copies of every valid scene of ``src`` into ``dst``.

    ``size`` and ``src`` are checked before anything is created (:func:`check_crop_size`, :func:`require_shards`);
    :class:`NothingWritten` (``dst`` left as it was) when no scene could be resized."""
    check_crop_size(size)
    require_shards(src, "resize")
    report = CheckReport(Path(src))
    with ShardWriter(dst, shard_size_mb, overwrite=overwrite) as w:
        for _, scene in iter_good_scenes(Path(src), report, desc=f"resizing to {size}"):
            try:
                w.add(resize_scene(scene, size))
            except (ValueError, SceneError) as exc:
                report.good.remove(scene.key)
                report.bad.append(("-", scene.key, str(exc)))
        if not w.index:
            raise _nothing_written(report, "resize", Path(dst))
    return report


__all__ = [
    "CheckReport", "NothingWritten", "check_crop_size", "check_shards", "print_check_report", "repack_shards",
    "require_shards", "resize_scene", "resize_shards",
]  # fmt: skip
