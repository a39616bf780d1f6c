"""Benchmark registry, shipped index files and index validation (reference §6.1-§6.2).

Registered benchmarks (index files in ``zipsplat_ns/eval/indices/``, from cvg/ZipSplat, Apache-2.0):

============  ==============  ==============================  ===========================
name          context views   index file                      default test-shard directory
============  ==============  ==============================  ===========================
re10k         6               re10k/ctx_6v_tgt_8v.json        data/re10k/test-scenes
dl3dv         6, 12, 24       dl3dv/ctx_{N}v_tgt_8v.json      data/dl3dv/test-scenes
mipnerf360    32, 64, 128     mipnerf360/ctx_{N}v.json        data/mipnerf360
custom        any             --index-file (required)         --shard-dir (required)
============  ==============  ==============================  ===========================

The shard directory of every benchmark can be overridden (``shard_dir=``), and so can the index file.

Index files map ``scene_key -> {"context": [int, ...], "target": [int, ...]}`` (``null`` excludes a scene). They are
parsed by :class:`~zipsplat_ns.data.samplers.IndexSampler` (structure: objects, integer lists, non-empty context, no
negative or duplicate context frames) and checked against the benchmark and the shards by :func:`check_index`:

- malformed JSON: :class:`~zipsplat_ns.data.samplers.IndexFileError` naming the file and the JSON error position;
- an entry that is not an object with ``context``/``target`` integer lists: error listing the entries;
- a context count other than the benchmark's view count: error listing the scenes;
- frame indices out of range for a scene: error listing scene, indices and the scene's frame count;
- index scenes that are not in the shard directory are **missing**: returned (reported and counted in the results),
  not an error.

:func:`make_index` builds index files for any shard directory by a fixed, documented rule (used by
``scripts/make_index.py`` for synthetic benchmarks and the shared development scenes).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from zipsplat_ns.data.samplers import IndexFileError, IndexSampler

PathLike = str | os.PathLike
INDICES_DIR = Path(__file__).resolve().parent / "indices"


@dataclass(frozen=True)
class BenchmarkSpec:
    """A registered benchmark: allowed context-view counts, the index file name pattern, the default shard dir."""

    name: str
    views: tuple[int, ...]
    index_pattern: str
    default_shard_dir: str
    description: str = ""

    def index_file(self, views: int) -> Path:
        return INDICES_DIR / self.index_pattern.format(views=views)


BENCHMARKS: dict[str, BenchmarkSpec] = {
    "re10k": BenchmarkSpec("re10k", (6,), "re10k/ctx_{views}v_tgt_8v.json", "data/re10k/test-scenes",
                           "RealEstate10K test split, 1600 scenes, 6 context / 8 target views"),
    "dl3dv": BenchmarkSpec("dl3dv", (6, 12, 24), "dl3dv/ctx_{views}v_tgt_8v.json", "data/dl3dv/test-scenes",
                           "DL3DV test split, 140 scenes, 6/12/24 context / 8 target views"),
    "mipnerf360": BenchmarkSpec("mipnerf360", (32, 64, 128), "mipnerf360/ctx_{views}v.json", "data/mipnerf360",
                                "Mip-NeRF 360, 6 scenes (no stump), 32/64/128 context / 8 target views"),
}  # fmt: skip
CUSTOM = "custom"
BENCHMARK_NAMES = tuple(BENCHMARKS) + (CUSTOM,)


@dataclass
class ResolvedBenchmark:
    """A benchmark with its concrete view count, index file and shard directory."""

    name: str
    views: int | None
    index_file: Path
    shard_dir: Path

    @property
    def tag(self) -> str:
        """Output folder name, e.g. ``re10k_6v`` (``custom_<index stem>`` for custom benchmarks)."""
        if self.name == CUSTOM:
            return f"custom_{self.index_file.stem}"
        return f"{self.name}_{self.views}v"


def resolve_benchmark(
    name: str,
    views: int | None = None,
    *,
    shard_dir: PathLike | None = None,
    index_file: PathLike | None = None,
) -> ResolvedBenchmark:
    """Pick the index file and shard directory of benchmark ``name`` at ``views`` context views.

    ``views=None`` takes the benchmark's first (smallest) count. ``custom`` needs ``index_file`` and ``shard_dir``; its
    view count is checked only when given. Raises ``ValueError`` for unknown names and unsupported view counts
    (listing the allowed ones).
    """
    key = name.lower().strip()
    if key == CUSTOM:
        if index_file is None or shard_dir is None:
            raise ValueError("benchmark 'custom' needs both --index-file and --shard-dir")
        return ResolvedBenchmark(CUSTOM, views, Path(index_file), Path(shard_dir))
    spec = BENCHMARKS.get(key)
    if spec is None:
        raise ValueError(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARK_NAMES)}")
    if views is None:
        views = spec.views[0]
    if int(views) not in spec.views:
        allowed = ", ".join(str(v) for v in spec.views)
        raise ValueError(f"benchmark {spec.name!r} does not support {views} context views; allowed: {allowed}")
    idx = Path(index_file) if index_file is not None else spec.index_file(int(views))
    return ResolvedBenchmark(spec.name, int(views), idx, Path(shard_dir) if shard_dir else Path(spec.default_shard_dir))


# ------------------------------------------------------------------------------------------------- validation
def load_index(path: PathLike, expected_context: int | None = None) -> IndexSampler:
    """Parse an index file; :class:`IndexFileError` lists every malformed entry (and every context-count mismatch
    when ``expected_context`` is given). Malformed JSON names the file and the error's line / column."""
    return IndexSampler.from_file(path, expected_context=expected_context)


def scene_num_frames(shards, key: str) -> int:
    """Frame count of scene ``key`` of a :class:`~zipsplat_ns.data.dataset.ShardDirectory`, from its
    ``meta.json`` member alone (the whole scene is read only when that member is unusable)."""
    try:
        shard = shards.key_map()[key]
        entries = {rest: (off, size) for rest, off, size in shards._table(shard).get(key, [])}
        off, size = entries["meta.json"]
        with open(shard, "rb") as f:
            f.seek(off)
            meta = json.loads(f.read(size))
        return int(meta["num_views"])
    except Exception:  # noqa: BLE001 - fall back to the full reader (which raises clear SceneErrors)
        return int(shards.load(key).num_views)


@dataclass
class IndexCheck:
    """Result of :func:`check_index`: the parsed index, the scenes to evaluate and the missing ones."""

    index: IndexSampler
    scenes: list[str]
    missing: list[str]
    num_frames: dict[str, int] = field(default_factory=dict)


def check_index(
    index_file: PathLike,
    shard_dirs: PathLike | Sequence[PathLike],
    expected_context: int | None = None,
) -> IndexCheck:
    """Parse and validate ``index_file`` against the shard directories (see the module docstring).

    Returns the scenes present in the shards (index order) and those missing from them. Raises
    :class:`IndexFileError` listing all offending entries (structure, context count, frame ranges).
    """
    from zipsplat_ns.data.dataset import ShardDirectory
    from zipsplat_ns.data.scene import SceneError

    index = load_index(index_file, expected_context)
    if isinstance(shard_dirs, (str, os.PathLike)):
        shard_dirs = [shard_dirs]
    dirs = []
    for p in shard_dirs:
        p = Path(p)
        if not p.is_dir():
            raise FileNotFoundError(f"shard directory not found: {p}")
        dirs.append(ShardDirectory(p))
    present, missing, frames, problems = [], [], {}, []
    for key in index.scenes:
        d = next((d for d in dirs if key in d), None)
        if d is None:
            missing.append(key)
            continue
        try:
            n = scene_num_frames(d, key)
        except (SceneError, KeyError, OSError) as exc:
            problems.append(f"{key}: scene unreadable in {d.path} ({exc})")
            continue
        frames[key] = n
        e = index.get(key)
        bad_c = sorted({int(i) for i in e.context if i >= n})
        bad_t = sorted({int(i) for i in e.target if i >= n})
        if bad_c or bad_t:
            parts = ([f"context {bad_c}"] if bad_c else []) + ([f"target {bad_t}"] if bad_t else [])
            problems.append(f"{key}: frame indices out of range ({', '.join(parts)}) for a {n}-frame scene")
        present.append(key)
    if problems:
        raise IndexFileError(str(index_file), problems)
    return IndexCheck(index, present, missing, frames)


# ---------------------------------------------------------------------------------------------- index creation
def index_entry(num_frames: int, views: int, targets: int, span: int | None = None) -> dict[str, list[int]] | None:
    """The entry of a ``num_frames``-frame scene by the rule of :func:`make_index` (``None`` when too short)."""
    n = int(num_frames) if span is None else min(int(num_frames), int(span))
    if views < 1 or targets < 0:
        raise ValueError(f"views must be >= 1 and targets >= 0, got {views}, {targets}")
    gaps = max(1, views - 1)
    if views == 1 or n < views + targets or (views > 1 and n < 2 * views - 1):
        return None
    ctx = np.round(np.linspace(0, n - 1, views)).astype(int).tolist()
    if len(set(ctx)) != views:
        return None
    # target t sits at the middle of context gap g_t, the gaps chosen evenly over all gaps (cycling when targets >
    # gaps, then offset towards the gap's quarter points so that targets stay distinct)
    tgt: list[int] = []
    order = np.round(np.linspace(0, gaps - 1, targets)).astype(int).tolist() if targets <= gaps else None
    if order is None:
        order = [t % gaps for t in range(targets)]
    fracs = [0.5, 0.25, 0.75, 0.125, 0.375, 0.625, 0.875]
    used = set(ctx)
    for rep, gidx in enumerate(order):
        a, b = ctx[gidx], ctx[gidx + 1]
        for f in fracs[(rep // gaps) :] + fracs[: (rep // gaps)]:
            cand = int(a + round((b - a) * f))
            if a < cand < b and cand not in used:
                tgt.append(cand)
                used.add(cand)
                break
        else:
            return None
    return {"context": ctx, "target": sorted(tgt)}


def make_index(
    shard_dir: PathLike,
    views: int = 6,
    targets: int = 4,
    *,
    span: int | None = None,
    scenes: Sequence[str] | None = None,
) -> tuple[dict[str, dict[str, list[int]]], dict[str, str]]:
    """Index entries for the scenes of ``shard_dir`` and the reasons scenes were left out.

    Rule (deterministic; frame indices are the shard's view order):

    - only the first ``span`` frames are used when ``span`` is given (all frames otherwise); call that ``n``;
    - a scene needs ``n >= views + targets`` and ``n >= 2 * views - 1`` frames (else it is left out);
    - context = ``round(linspace(0, n - 1, views))``: evenly spaced, first and last frame included;
    - targets lie strictly between consecutive context frames and never coincide with one: target ``t`` is the
      middle frame of context gap ``round(linspace(0, views - 2, targets))[t]`` (with more targets than gaps, the
      gaps are cycled and the later targets take the gap's quarter / eighth points).

    Scenes are taken in ``sorted`` key order (or the order of ``scenes``).
    """
    from zipsplat_ns.data.dataset import ShardDirectory

    d = ShardDirectory(shard_dir)
    keys = list(scenes) if scenes is not None else sorted(d.keys())
    out: dict[str, dict[str, list[int]]] = {}
    skipped: dict[str, str] = {}
    for key in keys:
        if key not in d:
            skipped[key] = "not in the shard directory"
            continue
        n = scene_num_frames(d, key)
        e = index_entry(n, views, targets, span)
        if e is None:
            skipped[key] = f"{n} frames are too few for {views} context + {targets} target views"
            continue
        out[key] = e
    return out, skipped


def write_index(entries: dict[str, dict[str, list[int]]], path: PathLike) -> Path:
    """Write an index file (JSON object, indent 2, as the reference's files)."""
    from zipsplat_ns.utils.atomic import atomic_write

    return atomic_write(Path(path), json.dumps(entries, indent=2) + "\n")


__all__ = [
    "BENCHMARKS",
    "BENCHMARK_NAMES",
    "CUSTOM",
    "INDICES_DIR",
    "BenchmarkSpec",
    "IndexCheck",
    "IndexFileError",
    "ResolvedBenchmark",
    "check_index",
    "index_entry",
    "load_index",
    "make_index",
    "resolve_benchmark",
    "scene_num_frames",
    "write_index",
]
