"""Tar shards in the reference's format: a streaming reader and an atomic, size-rotating writer.

A shard is an uncompressed tar. Each scene is a contiguous group of members sharing the prefix ``key`` (everything
before the first ``.``), written in this order::

    {key}.meta.json            {"num_views": N, "has_depth": bool}
    {key}.cameras.npy          (N, 6) float32 [w, h, fx, fy, cx, cy]
    {key}.poses.npy            (N, 12) float32 camera-to-world, OpenCV, [R row-major, t]
    {key}.img{i}.{jpg|png|webp|bin}   i = 0..N-1
    {key}.dep{i}.webp          optional, i = 0..N-1 (log-uint8 depth codec)
    {key}.depth_ranges.json    optional, [[d_min, d_max], ...]

``index.json`` beside the shards maps ``key -> shard file name``.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tarfile
import time
import zlib
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple, Union

import numpy as np

from zipsplat_ns.data.images import detect_image_ext
from zipsplat_ns.data.scene import RawScene, SceneError
from zipsplat_ns.utils.atomic import atomic_write

PathLike = Union[str, os.PathLike]
INDEX_NAME = "index.json"
_MEMBER = re.compile(r"^(?P<key>[^.]+)\.(?P<rest>.+)$")
_IMG = re.compile(r"^img(\d+)\.(jpg|png|webp|bin)$")
_DEP = re.compile(r"^dep(\d+)\.webp$")


# ---------------------------------------------------------------------------------------------------- writing
def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()


def scene_members(scene: RawScene) -> List[Tuple[str, bytes]]:
    """The tar members of a scene, in the format's order."""
    k = scene.key
    out = [
        (f"{k}.meta.json", json.dumps(scene.meta_json()).encode()),
        (f"{k}.cameras.npy", _npy_bytes(scene.cameras)),
        (f"{k}.poses.npy", _npy_bytes(scene.poses)),
    ]
    out += [(f"{k}.img{i}.{detect_image_ext(b)}", b) for i, b in enumerate(scene.images)]
    if scene.depths is not None:
        out += [(f"{k}.dep{i}.webp", b) for i, b in enumerate(scene.depths)]
        ranges = [[float(a), float(b)] for a, b in scene.depth_ranges]
        out.append((f"{k}.depth_ranges.json", json.dumps(ranges).encode()))
    return out


def _add_member(tar: tarfile.TarFile, name: str, data: bytes, mtime: float) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(mtime)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


class ShardWriter:
    """Write scenes into ``shard-NNNNNN.tar`` files of about ``shard_size_mb`` each, plus ``index.json``.

    Everything is written into a staging folder beside ``out_dir`` and moved into place only when the writer closes
    without error (see :meth:`close`), so an interrupted conversion never leaves a half-written shard or an index
    that lists missing scenes. ``per_scene=True`` writes one ``{key}.tar`` per scene (the MipNeRF360 layout).
    """

    def __init__(
        self,
        out_dir: PathLike,
        shard_size_mb: float = 512.0,
        *,
        prefix: str = "shard",
        per_scene: bool = False,
        overwrite: bool = False,
        validate: bool = True,
    ):
        self.out_dir = Path(out_dir)
        self.shard_size = int(shard_size_mb * 1024 * 1024)
        self.prefix, self.per_scene, self.validate = prefix, per_scene, validate
        parent, name = self.out_dir.parent, self.out_dir.name
        interrupted = sorted(parent.glob(f".{name}.replaced-*")) if parent.is_dir() else []
        if interrupted and not self.out_dir.exists():
            raise FileExistsError(
                f"ShardWriter: an earlier overwrite of {self.out_dir} was interrupted; its previous shards are in "
                f"{interrupted[0]}. Rename that folder back to {self.out_dir} (or delete it), then run again"
            )
        existing = sorted(self.out_dir.glob("*.tar")) if self.out_dir.is_dir() else []
        if existing and not overwrite:
            raise FileExistsError(
                f"ShardWriter: {self.out_dir} already holds {len(existing)} shard(s); "
                "choose an empty directory or pass overwrite=True (--overwrite)"
            )
        self._replacing = bool(existing)
        if existing:  # overwrite swaps the whole directory, so it must hold nothing else
            others = sorted(p.name for p in self.out_dir.iterdir()
                            if not (p.suffix == ".tar" or p.name == INDEX_NAME or p.name.startswith(".staging-")))  # fmt: skip
            if others:
                raise FileExistsError(
                    f"ShardWriter: overwrite replaces the whole directory {self.out_dir}, which also holds "
                    f"{', '.join(others[:5])}{' ...' if len(others) > 5 else ''}; move those or choose another directory"
                )
        # staged beside the output (same file system), so that the finished shards move in with one rename
        parent.mkdir(parents=True, exist_ok=True)
        self._staging = parent / f".{name}.staging-{os.getpid()}-{time.time_ns()}"
        self._staging.mkdir()
        self.index: Dict[str, str] = {}
        self._tar: Optional[tarfile.TarFile] = None
        self._name: Optional[str] = None
        self._shard_count = 0
        self._written = 0
        self._closed = False

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _open_next(self, key: str) -> None:
        self._finish_shard()
        self._name = f"{key}.tar" if self.per_scene else f"{self.prefix}-{self._shard_count:06d}.tar"
        self._shard_count += 1
        self._tar = tarfile.open(self._staging / self._name, "w", format=tarfile.GNU_FORMAT)
        self._written = 0

    def _finish_shard(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar = None

    def add(self, scene: RawScene) -> None:
        """Append a scene; starts a new shard first when the current one has reached the size limit."""
        if self._closed:
            raise RuntimeError("ShardWriter: add() after close()")
        if self.validate:
            scene.validate()
        if scene.key in self.index:
            raise SceneError(scene.key, "duplicate scene key in this output")
        if self._tar is None or self.per_scene or self._written >= self.shard_size:
            self._open_next(scene.key)
        now = time.time()
        for name, data in scene_members(scene):
            _add_member(self._tar, name, data, now)
            self._written += 512 + len(data)
        self.index[scene.key] = self._name

    def close(self) -> Dict[str, str]:
        """Put the finished shards and their ``index.json`` in place and return the index.

        A new (or missing) output directory is the staging folder renamed: all or nothing. ``overwrite=True`` over
        existing shards swaps the directories (old one renamed aside, new one renamed in, old one deleted), so a
        reader sees either the old set or the new one, never a mix. An existing directory without shards gets the
        shards moved in and the index written last."""
        if self._closed:
            return self.index
        try:
            self._finish_shard()
            for p in self._staging.glob("*.tar"):  # on disk before any rename makes them visible
                with open(p, "rb") as f:
                    os.fsync(f.fileno())
            atomic_write(self._staging / INDEX_NAME, json.dumps(self.index, indent=2) + "\n")
            if not self.out_dir.exists():
                os.rename(self._staging, self.out_dir)
            elif self._replacing:
                old = self.out_dir.parent / f".{self.out_dir.name}.replaced-{os.getpid()}-{time.time_ns()}"
                os.rename(self.out_dir, old)
                try:
                    os.rename(self._staging, self.out_dir)
                except BaseException:
                    os.rename(old, self.out_dir)  # put the previous shards back
                    raise
                shutil.rmtree(old, ignore_errors=True)
            else:
                for p in sorted(self._staging.glob("*.tar")):
                    os.replace(p, self.out_dir / p.name)
                os.replace(self._staging / INDEX_NAME, self.out_dir / INDEX_NAME)
        finally:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._closed = True
        return self.index

    def abort(self) -> None:
        """Drop everything written by this writer (used when an exception escapes the ``with`` block)."""
        if self._tar is not None:
            self._tar.close()
            self._tar = None
        shutil.rmtree(self._staging, ignore_errors=True)
        self._closed = True


def write_shards(scenes, out_dir: PathLike, shard_size_mb: float = 512.0, **kwargs) -> Dict[str, str]:
    """Write an iterable of :class:`RawScene` with a :class:`ShardWriter`; returns the index."""
    with ShardWriter(out_dir, shard_size_mb, **kwargs) as w:
        for s in scenes:
            w.add(s)
    return w.index


# ---------------------------------------------------------------------------------------------------- reading
def list_shards(shard_dir: PathLike) -> List[Path]:
    """The ``*.tar`` files of a shard directory, sorted by name."""
    d = Path(shard_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"shard directory not found: {d}")
    return sorted(p for p in d.glob("*.tar") if p.is_file())


def read_index(shard_dir: PathLike) -> Dict[str, str]:
    """``index.json`` of a shard directory (``key -> shard name``)."""
    path = Path(shard_dir) / INDEX_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; run `zipsplat-ns shards check {shard_dir} --fix-index` to rebuild it")
    try:
        index = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: malformed JSON ({exc})") from exc
    if not isinstance(index, dict):
        raise ValueError(f"{path}: expected an object mapping scene keys to shard names")
    return index


def assemble_scene(key: str, members: Dict[str, bytes], shard: str) -> RawScene:
    """Build and validate a scene from its tar members (``{member suffix: bytes}``); raises :class:`SceneError`."""

    def need(name: str) -> bytes:
        if name not in members:
            raise SceneError(key, f"missing member {key}.{name}", shard)
        return members[name]

    def npy(name: str) -> np.ndarray:
        data = need(name)
        try:
            return np.load(io.BytesIO(data), allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:  # EOFError: an empty member
            raise SceneError(key, f"unreadable member {key}.{name} ({type(exc).__name__}: {exc})", shard) from exc

    try:
        meta = json.loads(need("meta.json"))
        n = int(meta["num_views"])
    except SceneError:
        raise
    except (ValueError, KeyError, TypeError, OverflowError) as exc:
        raise SceneError(key, f"bad meta.json ({exc})", shard) from exc
    cameras = npy("cameras.npy")
    poses = npy("poses.npy")
    images: Dict[int, bytes] = {}
    depths: Dict[int, bytes] = {}
    for name, data in members.items():
        m = _IMG.match(name)
        if m:
            images[int(m.group(1))] = data
        m = _DEP.match(name)
        if m:
            depths[int(m.group(1))] = data
    missing = [i for i in range(n) if i not in images]
    if missing:
        raise SceneError(key, f"missing image members img{missing[0]}... ({len(missing)} of {n})", shard)
    has_depth = bool(meta.get("has_depth", False)) or bool(depths)
    depth_list = ranges = None
    if has_depth:
        missing = [i for i in range(n) if i not in depths]
        if missing:
            raise SceneError(key, f"missing depth members dep{missing[0]}... ({len(missing)} of {n})", shard)
        try:
            ranges = [tuple(map(float, r)) for r in json.loads(need("depth_ranges.json"))]
        except SceneError:
            raise
        except (ValueError, TypeError) as exc:
            raise SceneError(key, f"bad depth_ranges.json ({exc})", shard) from exc
        depth_list = [depths[i] for i in range(n)]
    extra = {k: v for k, v in meta.items() if k not in ("num_views", "has_depth")}
    scene = RawScene(key, cameras, poses, [images[i] for i in range(n)], depth_list, ranges, extra)
    scene.validate(shard)
    return scene


class ShardDamaged(SceneError):
    """The shard's tar itself is truncated or corrupt: the scenes from that point on cannot be read.

    ``key`` is the scene the reader was in, or ``"<shard>"`` when the damage lies between scenes. Re-indexing such a
    shard would make the loss permanent, so ``shards check --fix-index`` refuses it.
    """


def tar_end_problem(path: PathLike, end: Optional[int] = None) -> Optional[str]:
    """Why ``path`` is not a complete tar, or ``None``.

    tarfile takes a missing, short or unreadable header at a non-zero offset for the end of the archive, so a shard
    cut at a member boundary reads "fine" with every scene after the cut silently gone. A complete tar ends with an
    end-of-archive marker (zero blocks). ``end`` is where a reader stopped (``TarFile.offset`` after its last
    member): a whole zero block must be there. Without ``end``, the file's last two blocks must be zero (a check
    before reading it).
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            if end is None:
                if size < 1024 or size % 512:
                    return f"truncated tar ({size} bytes is not a whole number of 512-byte blocks with an end marker)"
                fh.seek(size - 1024)
                block = fh.read(1024)
            else:
                fh.seek(end)
                block = fh.read(512)
    except OSError as err:
        return f"cannot read it ({err})"
    if end is not None and len(block) < 512:
        return (f"truncated tar (it stops at byte {end} of {size} without an end-of-archive marker; "
                "the scenes after that point are lost)")  # fmt: skip
    if block.count(0) != len(block):
        if end is None:
            return "truncated tar (no end-of-archive marker); see `zipsplat-ns shards check`"
        return f"corrupt tar (unreadable member header at byte {end}; the scenes after that point are lost)"
    return None


def _member_groups(shard: Path, keys: Optional[set]) -> Iterator[Union[Tuple[str, Dict[str, bytes]], ShardDamaged]]:
    """``(key, {member suffix: bytes})`` per contiguous group of members, in file order.

    A damaged tar ends the stream with one :class:`ShardDamaged` (the group it was in is dropped). Only reading
    happens here: assembling a scene is the caller's, so that a scene's own error never passes for tar damage.
    Members of scenes not in ``keys`` are skipped without reading them.
    """
    name = shard.name
    key: Optional[str] = None
    members: Dict[str, bytes] = {}
    try:
        with tarfile.open(shard, "r|") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                m = _MEMBER.match(info.name)
                if m is None:
                    continue
                k, rest = m.group("key"), m.group("rest")
                if k != key:
                    if key is not None:
                        yield key, members
                    key, members = k, {}
                f = tar.extractfile(info)
                skip = keys is not None and k not in keys
                members[rest] = b"" if skip or f is None else f.read()
            end = tar.offset
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        err = ShardDamaged(key or "<shard>", f"truncated or corrupt tar ({type(exc).__name__}: {exc})", name)
        err.__cause__ = exc
        yield err
        return
    if key is not None:
        yield key, members
    problem = tar_end_problem(shard, end)
    if problem is not None:
        yield ShardDamaged("<shard>", problem, name)


def iter_scenes(
    shard: PathLike, *, errors: str = "raise", keys: Optional[set] = None
) -> Iterator[Union[RawScene, SceneError]]:
    """Stream the scenes of one shard.

    ``errors="raise"`` raises the first :class:`SceneError`; ``errors="yield"`` yields it in place of the scene and
    goes on. A truncated or corrupt tar (including one cut at a member boundary, which tarfile alone reads as a
    shorter archive) ends the shard with one :class:`ShardDamaged`. ``keys`` restricts the output to those scene
    keys (others are skipped without decoding).
    """
    if errors not in ("raise", "yield"):
        raise ValueError(f"iter_scenes: errors must be 'raise' or 'yield', got {errors!r}")
    shard = Path(shard)
    name = shard.name
    seen = set()
    for item in _member_groups(shard, keys):
        if isinstance(item, SceneError):
            out: Union[RawScene, SceneError] = item
        else:
            key, members = item
            if key in seen:
                err = SceneError(key, "members are not contiguous (key appears twice)", name)
                if errors == "raise":
                    raise err
                yield err
            seen.add(key)
            if keys is not None and key not in keys:
                continue
            try:
                out = assemble_scene(key, members, name)
            except SceneError as err:
                out = err
        if isinstance(out, SceneError) and errors == "raise":
            raise out
        yield out


def read_scene(shard_dir: PathLike, key: str) -> RawScene:
    """Load one scene by key (uses ``index.json`` to find its shard)."""
    index = read_index(shard_dir)
    if key not in index:
        raise KeyError(f"scene {key!r} is not in {Path(shard_dir) / INDEX_NAME} ({len(index)} scenes)")
    for scene in iter_scenes(Path(shard_dir) / index[key], keys={key}):
        return scene
    raise SceneError(key, "listed in index.json but not found in its shard", index[key])
