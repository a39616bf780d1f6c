"""Streaming multi-scene dataset over tar shards: whole batches assembled in DataLoader workers.

Use it with ``DataLoader(stream, batch_size=None, num_workers=...)``: every item the stream yields is already a
batch.

Sources and splitting
---------------------
- Each :class:`DatasetSpec` is one shard directory with a mixing weight, a view-sampler config and a name. Weighted
  mixing repeats dataset ``i``'s shard list ``round((w_i / n_i) / min_j (w_j / n_j))`` times (at least once), with
  ``n_i`` its scene count (``index.json``; the shard count when there is no index), so that the effective scene
  counts follow the weights.
- The (repeated) shard list is split by DDP rank, then by worker: ``shards[rank::world][worker::num_workers]``. With
  fewer shards than ``world * num_workers`` every stream reads all shards and keeps the scenes whose global running
  index ``i`` satisfies ``i % (world * num_workers) == global_worker`` (a worker that would own nothing keeps every
  scene), so no worker idles.
- Training shuffles the shard order every epoch with ``random.Random(seed + epoch + global_worker)`` (the shared
  order of the fallback uses ``Random(seed + epoch)`` so that the modulo split stays a partition) and loops forever;
  evaluation reads everything once in a fixed order.

Batches
-------
Training draws one view count per batch, ``vc ~ U{min_views..current_max_views}``, then ``B = max(1, image_budget //
vc)`` scenes with ``vc`` context and ``num_target_views`` target views each. ``current_max_views`` lives in a
``multiprocessing.Value`` shared with the workers (:meth:`ShardStream.set_max_views`); workers read it before every
batch, so a view schedule set from the main process takes effect after the batches already prefetched. The value is
inherited by workers: with the ``fork`` start method directly, with ``spawn``/``forkserver`` because DataLoader passes
the dataset as a process argument (the only way shared ctypes may be pickled). Evaluation uses ``eval_views`` context
views and ``eval_batch_size`` scenes per batch; with an :class:`~zipsplat_ns.data.samplers.IndexSampler` it yields one
scene per batch in the index file's order (run it with at most one worker to keep that order exactly; every batch
names its scene) and reports index scenes missing from the shards.

A batch is a dict (float32 unless stated; ``B`` scenes, ``Vc`` context and ``Vt`` target views, ``S`` image size)::

    context / target: {
        "image":  (B, V, 3, S, S)  RGB in [0, 1]
        "camera": (B, V, 6)        [w, h, fx, fy, cx, cy] of the S x S crop, pixels (pixel centres at +0.5)
        "pose":   (B, V, 12)       camera-to-world, OpenCV axes, [R row-major 9, t 3], relative to context view 0
                                   (which is the identity) and divided by "scale"
        "depth":  (B, V, S, S)     z-depth in the normalised units, -1 = invalid (all -1 when has_depth is False)
        "index":  (B, V) int64     frame indices in the source scene
    }
    "scene":         list[str]     scene keys
    "dataset":       list[str]     dataset names
    "scale":         (B,)          the normalisation scale s (source units per normalised unit)
    "has_depth":     (B,) bool     depth available (geometry losses apply)
    "scale_source":  list[str]     "depth", "baseline" (or "unposed": process_scene(allow_unposed=True))
    "skipped":       dict[str, int]  skipped scenes by reason since the previous batch of this worker
    "skipped_scenes": list[str]    "shard:key: reason (detail)" for those scenes
    "missing_scenes": list[str]    index-replay eval only, first batch: index scenes absent from the shards

Per-scene processing (reference order): view sampling; pose-jump filter (training only: the largest consecutive
camera step among frames ``[min idx .. max idx]`` above ``max_pose_jump_ratio`` x the median step); context order
shuffled in training (random reference view); decode + :func:`~zipsplat_ns.data.preprocess.preprocess_view`; poses
made relative to context view 0 (``pose <- inv(pose_ctx0) @ pose``); the scale ``s`` = median ``||p||`` of all valid
context-depth pixels unprojected into the reference frame, clamped to ``[1e-3, 1e3]``; translations and depths
divided by ``s``. The unprojection uses **integer** pixel coordinates, ``((u - cx) / fx * d, (v - cy) / fy * d, d)``
with ``u, v = 0..S-1``, as the reference does (half a pixel off our pixel-centre convention; it only matters for the
scale through a negligible shift). Without depth (or with no valid depth pixel) the scale is the largest pairwise
distance between the context camera centres ("baseline"), ``has_depth`` is False, and the geometry losses must be off
for that sample.

Skips (counted by reason, logged with the scene name, never fatal): ``bad_scene`` (the reader's
:class:`~zipsplat_ns.data.scene.SceneError`: truncated tar, missing member, NaN pose, ...), ``too_few_frames``,
``pose_jump``, ``decode_error`` (undecodable image or depth), ``non_finite``, ``degenerate_baseline`` (no depth and
coincident context cameras), ``index_mismatch`` (an index entry that does not fit its scene), ``missing_from_shards``
and ``processing_error`` (any other exception).
"""

from __future__ import annotations

import logging
import math
import multiprocessing as mp
import os
import random
import tarfile
import zlib
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from zipsplat_ns.data import shards as _shards
from zipsplat_ns.data.depth_codec import INVALID_DEPTH, dequantize_depth
from zipsplat_ns.data.images import decode_gray_deferred, decode_image_tensor, pil_luma
from zipsplat_ns.data.preprocess import nearest_cover_crop, preprocess_view
from zipsplat_ns.data.samplers import (
    BoundedSampler,
    IndexFileError,
    IndexSampler,
    RandomSampler,
    ViewSample,
    ViewSampler,
)
from zipsplat_ns.data.scene import RawScene, SceneError

logger = logging.getLogger(__name__)
PathLike = Union[str, os.PathLike]
SCALE_MIN, SCALE_MAX = 1e-3, 1e3


# ------------------------------------------------------------------------------------------------ configuration
@dataclass
class SamplerConfig:
    """View-sampler settings: ``kind`` in ``bounded | random | index`` (``index`` needs ``index_file``)."""

    kind: str = "bounded"
    min_distance: int = 8
    gap_multiplier: int = 11
    max_consecutive: int = 22
    index_file: Optional[Path] = None

    def build(self, train: bool) -> ViewSampler:
        if self.kind == "bounded":
            return BoundedSampler(self.min_distance, self.gap_multiplier, self.max_consecutive, train=train)
        if self.kind == "random":
            return RandomSampler()
        if self.kind == "index":
            if self.index_file is None:
                raise ValueError("SamplerConfig(kind='index') needs index_file")
            return IndexSampler.from_file(self.index_file)
        raise ValueError(f"unknown sampler kind {self.kind!r} (bounded, random, index)")


@dataclass
class DatasetSpec:
    """One shard directory in a mix."""

    path: Path
    weight: float = 1.0
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    name: str = ""

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        if not self.name:
            p = self.path
            self.name = p.parent.name if p.name in ("train-scenes", "test-scenes") and p.parent.name else p.name
        if not (self.weight > 0 and math.isfinite(self.weight)):
            raise ValueError(f"dataset {self.name!r}: weight must be positive, got {self.weight}")


def count_scenes(shard_dir: PathLike) -> int:
    """Scenes in ``index.json``; the number of shards when the directory has no index."""
    try:
        return len(_shards.read_index(shard_dir))
    except (FileNotFoundError, ValueError):
        n = len(_shards.list_shards(shard_dir))
        logger.warning("%s has no usable index.json; weighting it by its shard count (%d)", shard_dir, n)
        return n


def weighted_shards(specs: Sequence[DatasetSpec]) -> List[Tuple[int, Path]]:
    """``(spec index, shard path)`` with each dataset's shard list repeated by its weight (reference §5.3)."""
    lists = [_shards.list_shards(s.path) for s in specs]
    for s, lst in zip(specs, lists):
        if not lst:
            raise FileNotFoundError(f"dataset {s.name!r}: no *.tar shards in {s.path}")
    if len(specs) == 1:
        return [(0, p) for p in lists[0]]
    ratios = [s.weight / max(1, count_scenes(s.path)) for s in specs]
    lo = min(ratios)
    out: List[Tuple[int, Path]] = []
    for i, (r, lst) in enumerate(zip(ratios, lists)):
        out += [(i, p) for p in lst] * max(1, int(round(r / lo)))
    return out


def split_shards(n: int, rank: int, world: int, worker: int, num_workers: int) -> Tuple[List[int], bool]:
    """Positions of the shards this stream reads and whether it must filter scenes by running index (fallback)."""
    if n >= world * num_workers:
        return list(range(n))[rank::world][worker::num_workers], False
    return list(range(n)), True


# --------------------------------------------------------------------------------------------- random access
class ShardDirectory:
    """Random access to the scenes of one shard directory (for index replay, the viewer scene, ``scene_context``).

    ``index.json`` maps keys to shards (tar headers are scanned when it is missing); a shard's member table is read
    once (headers only) and kept for a few shards. A shard whose tar is truncated or corrupt (including one cut at a
    member boundary, which tarfile alone reads as a shorter archive) keeps the scenes before the damage loadable; the
    scenes lost to it raise :class:`~zipsplat_ns.data.shards.ShardDamaged` naming the shard and the damage.
    """

    def __init__(self, path: PathLike, cache_shards: int = 4):
        self.path = Path(path)
        self._keys: Optional[Dict[str, Path]] = None
        self._tables: "OrderedDict[Path, Dict[str, List[Tuple[str, int, int]]]]" = OrderedDict()
        self._broken: Dict[Path, str] = {}  # shards whose tar is truncated or corrupt: what is wrong
        self._cache = cache_shards

    def key_map(self) -> Dict[str, Path]:
        if self._keys is None:
            try:
                self._keys = {k: self.path / v for k, v in _shards.read_index(self.path).items()}
            except FileNotFoundError:
                self._keys = {}
                for shard in _shards.list_shards(self.path):
                    try:
                        for k in self._table(shard):
                            self._keys.setdefault(k, shard)
                    except SceneError as err:
                        logger.warning("%s", err)
        return self._keys

    def keys(self) -> List[str]:
        return list(self.key_map())

    def __contains__(self, key: str) -> bool:
        return key in self.key_map()

    def _table(self, shard: Path) -> Dict[str, List[Tuple[str, int, int]]]:
        if shard in self._tables:
            self._tables.move_to_end(shard)
            return self._tables[shard]
        table: Dict[str, List[Tuple[str, int, int]]] = {}
        self._broken.pop(shard, None)  # a re-read shard (evicted from the cache) is judged afresh
        try:
            with tarfile.open(shard, "r:") as tar:
                for info in tar:
                    if not info.isfile() or "." not in info.name:
                        continue
                    k, rest = info.name.split(".", 1)
                    table.setdefault(k, []).append((rest, info.offset_data, info.size))
                end = tar.offset  # where tarfile stopped: an end-of-archive marker must be there
        except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
            if not table:
                raise SceneError("<shard>", f"unreadable tar ({type(exc).__name__}: {exc})", shard.name) from exc
            problem: Optional[str] = f"truncated or corrupt tar ({type(exc).__name__}: {exc})"
        else:
            # tarfile takes a missing or unreadable header for the end: a shard cut at a member boundary reads as a
            # shorter archive, and the scenes after the cut would pass for "not in the shard"
            problem = _shards.tar_end_problem(shard, end)
        if problem is not None:
            # the scenes before the damage stay readable (as in the streaming reader); the last one listed may be
            # incomplete, which loading it reports as damage too
            self._broken[shard] = problem
            logger.warning("%s: %s (%d scene(s) before the damage stay readable)", shard, problem, len(table))
        self._tables[shard] = table
        while len(self._tables) > self._cache:
            self._tables.popitem(last=False)
        return table

    def load(self, key: str) -> RawScene:
        """The scene ``key``; ``KeyError`` when unknown, :class:`SceneError` when broken
        (:class:`~zipsplat_ns.data.shards.ShardDamaged` when lost to, or cut by, damage to its shard's tar)."""
        shard = self.key_map().get(key)
        if shard is None:
            raise KeyError(f"scene {key!r} is not in {self.path}")
        if not shard.is_file():
            raise SceneError(key, "its shard (from index.json) does not exist", shard.name)
        table = self._table(shard)
        entries = table.get(key)
        damage = self._broken.get(shard)
        if not entries:
            if damage is not None:
                raise _shards.ShardDamaged(key, f"lost to the damaged shard ({damage}); re-create the shard "
                                                "(see `zipsplat-ns shards check`)", shard.name)
            raise SceneError(key, "listed in index.json but not found in its shard", shard.name)
        members: Dict[str, bytes] = {}
        with open(shard, "rb") as f:
            for rest, offset, size in entries:
                f.seek(offset)
                data = f.read(size)
                if len(data) != size:
                    raise _shards.ShardDamaged(key, f"truncated or corrupt tar (member {key}.{rest} is cut short)",
                                               shard.name)
                members[rest] = data
        try:
            return _shards.assemble_scene(key, members, shard.name)
        except SceneError as err:
            if damage is None or key != next(reversed(table)):
                raise
            # the scene the damage cut into: its missing members are the damage's doing, not the scene's
            raise _shards.ShardDamaged(key, f"{err.reason}: the shard is damaged right after it ({damage})",
                                       shard.name) from err


# --------------------------------------------------------------------------------------------- per-scene work
class SceneSkip(Exception):
    """A scene skipped by a rule; ``reason`` is the counter key."""

    def __init__(self, reason: str, detail: str):
        self.reason, self.detail = reason, detail
        super().__init__(f"{reason}: {detail}")


def _to44(poses12: np.ndarray) -> np.ndarray:
    p = np.asarray(poses12, dtype=np.float64)
    T = np.zeros((len(p), 4, 4))
    T[:, :3, :3] = p[:, :9].reshape(-1, 3, 3)
    T[:, :3, 3] = p[:, 9:12]
    T[:, 3, 3] = 1.0
    return T


def _inv44(T: np.ndarray) -> np.ndarray:
    R, t = T[:3, :3], T[:3, 3]
    out = np.eye(4)
    out[:3, :3] = R.T
    out[:3, 3] = -R.T @ t
    return out


def pose_jump(poses12: np.ndarray, indices: np.ndarray, ratio: float) -> Optional[str]:
    """A description of the jump when the largest camera step among frames ``[min..max]`` exceeds ``ratio`` x the
    median step, else ``None``."""
    if ratio <= 0 or len(indices) == 0:
        return None
    lo, hi = int(np.min(indices)), int(np.max(indices))
    if hi - lo < 2:
        return None
    t = np.asarray(poses12, dtype=np.float64)[lo : hi + 1, 9:12]
    steps = np.linalg.norm(np.diff(t, axis=0), axis=1)
    med, mx = float(np.median(steps)), float(np.max(steps))
    if mx > ratio * med:
        return f"max camera step {mx:.4g} > {ratio:g} x median step {med:.4g} in frames {lo}..{hi}"
    return None


def unproject_norms(depth: np.ndarray, camera: np.ndarray, pose44: np.ndarray) -> np.ndarray:
    """``||p||`` of every valid pixel of ``depth`` unprojected (integer pixel coordinates, as the reference) and
    mapped by ``pose44`` (camera -> reference frame).

    With ``x = d * r``, ``r = ((u - cx) / fx, (v - cy) / fy, 1)`` and ``p = R x + t``:
    ``||p||^2 = d^2 ||r||^2 + 2 d (r . R^T t) + ||t||^2`` (R is orthonormal), evaluated on the pixel grid.
    """
    return np.sqrt(np.maximum(_unproject_sq_norms(depth, camera, pose44), 0.0))


def _unproject_sq_norms(depth: np.ndarray, camera: np.ndarray, pose44: np.ndarray) -> np.ndarray:
    """``||p||^2`` of the valid pixels, before the clamp at 0 and the square root of :func:`unproject_norms` (the same
    float64 operations in the same order, computed in place)."""
    valid = depth >= 0
    if not valid.any():
        return np.zeros(0)
    h, w = depth.shape
    _, _, fx, fy, cx, cy = np.asarray(camera, dtype=np.float64)
    R, t = pose44[:3, :3], pose44[:3, 3]
    q = R.T @ t
    rx = (np.arange(w) - cx) / fx
    ry = (np.arange(h) - cy) / fy
    d = depth.astype(np.float64)
    r2 = (rx * rx)[None, :] + (ry * ry)[:, None] + 1.0
    rq = (rx * q[0])[None, :] + (ry * q[1])[:, None] + q[2]
    n2 = d * d
    n2 *= r2
    rq *= 2.0 * d  # == (2.0 * d) * rq
    n2 += rq
    n2 += float(t @ t)
    return n2[valid]


def _median_sqrt(sq: np.ndarray) -> float:
    """``np.median(np.sqrt(np.maximum(sq, 0)))`` of finite ``sq``: the square root is monotonic, so only the middle
    element(s) are rooted (the same values and the same mean of the two middle ones as ``np.median``)."""
    n = sq.size
    k = n // 2
    if n % 2:
        return float(np.sqrt(max(np.partition(sq, k)[k], 0.0)))
    part = np.partition(sq, [k - 1, k])
    a, b = np.sqrt(np.maximum(part[k - 1 : k + 1], 0.0))
    return float(np.mean(np.array([a, b])))


def _dequantize_lut(d_range: Tuple[float, float]) -> np.ndarray:
    """float32 depth of each of the 256 codes: :func:`~zipsplat_ns.data.depth_codec.dequantize_depth` of
    ``arange(256)`` (the same float64 arithmetic per code, so indexing it gives identical values)."""
    return dequantize_depth(np.arange(256, dtype=np.uint8), d_range)


def process_scene(
    raw: RawScene,
    views: ViewSample,
    *,
    image_size: int = 252,
    rng: Optional[np.random.Generator] = None,
    shuffle_context: bool = False,
    max_pose_jump_ratio: float = 0.0,
    use_depth: bool = True,
    dataset: str = "",
    allow_unposed: bool = False,
    require_depth: bool = False,
) -> Dict[str, Any]:
    """One sample (numpy / torch, no batch dim) from a raw scene and its sampled views; raises :class:`SceneSkip`.

    With ``use_depth``, the scale is the median distance of the context depth points (reference §5.4). A scene
    without a valid context depth pixel is then normalised by its camera baseline instead (``scale_source``
    "baseline"), or, with ``require_depth`` (the eval protocol: depth is mandatory), skipped as ``no_depth``.

    ``allow_unposed`` (inference only): a scene whose ``meta["posed"]`` is False (``convert media``: identity poses)
    keeps scale 1 (``scale_source`` "unposed") instead of being skipped for its zero camera baseline.

    Colours come from 8-bit decoding, so only poses, cameras, depth and the scale are checked for finiteness.
    """
    ctx, tgt = np.asarray(views.context, dtype=np.int64).copy(), np.asarray(views.target, dtype=np.int64)
    jump = pose_jump(raw.poses, np.concatenate([ctx, tgt]), max_pose_jump_ratio)
    if jump:
        raise SceneSkip("pose_jump", jump)
    if shuffle_context:
        (rng if rng is not None else np.random.default_rng()).shuffle(ctx)
    with_depth = use_depth and raw.depths is not None
    if use_depth and require_depth and raw.depths is None:
        raise SceneSkip("no_depth", "the scene has no depth maps (the protocol normalises the scale by depth)")
    cache: Dict[int, Tuple[torch.Tensor, np.ndarray, Optional[np.ndarray]]] = {}

    def view(i: int):
        if i not in cache:
            try:
                img = decode_image_tensor(raw.images[i], name=f"{raw.key}.img{i}")
                codes = decode_gray_deferred(raw.depths[i], name=f"{raw.key}.dep{i}") if with_depth else None
            except ValueError as exc:
                raise SceneSkip("decode_error", str(exc)) from exc
            image, cam, _ = preprocess_view(img, raw.cameras[i], image_size)
            dep = None
            if codes is not None:  # nearest resize + crop of the codes, then grey + dequantise only S x S pixels
                crop = pil_luma(nearest_cover_crop(codes, tuple(img.shape[-2:]), image_size))
                dep = _dequantize_lut(raw.depth_ranges[i]).take(crop)
            cache[i] = (image, cam, dep)
        return cache[i]

    T = _to44(raw.poses)
    ref = _inv44(T[ctx[0]])
    S = image_size
    groups: Dict[str, Dict[str, Any]] = {}
    rel: Dict[str, np.ndarray] = {}
    for name, idx in (("context", ctx), ("target", tgt)):
        out = [view(int(i)) for i in idx]
        poses = np.stack([ref @ T[int(i)] for i in idx]) if len(idx) else np.zeros((0, 4, 4))
        if name == "context":
            poses[0] = np.eye(4)  # exactly the identity
        rel[name] = poses
        groups[name] = {
            "image": torch.stack([o[0] for o in out]) if out else torch.zeros(0, 3, S, S),
            "camera": np.stack([o[1] for o in out]) if out else np.zeros((0, 6)),
            "depth": np.stack([o[2] for o in out])
            if with_depth and out
            else np.full((len(idx), S, S), INVALID_DEPTH, np.float32),
            "index": idx.copy(),
        }
    scale_source = "baseline"
    scale = math.nan
    if with_depth:
        sq = np.concatenate(
            [
                _unproject_sq_norms(d, c, P)
                for d, c, P in zip(groups["context"]["depth"], groups["context"]["camera"], rel["context"])
            ]
        )
        sq = sq[np.isfinite(sq)]
        if sq.size:
            scale, scale_source = _median_sqrt(sq), "depth"
        elif require_depth:
            raise SceneSkip("no_depth", "no valid context depth pixel (the protocol normalises the scale by depth)")
        else:
            logger.warning("scene %s: no valid context depth pixel; using the camera baseline for the scale", raw.key)
            with_depth = False
            for g in groups.values():
                g["depth"][:] = INVALID_DEPTH
    if scale_source == "baseline" and allow_unposed and raw.meta.get("posed", True) is False:
        scale, scale_source = 1.0, "unposed"  # identity poses: nothing to normalise
    elif scale_source == "baseline":
        c = rel["context"][:, :3, 3]
        scale = float(np.max(np.linalg.norm(c[:, None] - c[None], axis=-1))) if len(c) > 1 else 0.0
        if not scale > 1e-9:
            raise SceneSkip("degenerate_baseline", "no depth and the context cameras coincide (zero baseline)")
    if not math.isfinite(scale):
        raise SceneSkip("non_finite", f"scale is {scale}")
    scale = min(max(scale, SCALE_MIN), SCALE_MAX)
    for name, g in groups.items():
        P = rel[name]
        P[:, :3, 3] /= scale
        g["pose"] = np.concatenate([P[:, :3, :3].reshape(-1, 9), P[:, :3, 3]], -1).astype(np.float32)
        g["camera"] = g["camera"].astype(np.float32)
        d = np.asarray(g["depth"], dtype=np.float32)
        invalid = ~(d >= 0)
        d = d / np.float32(scale)  # float32 division, as ``d / scale`` with a Python float (NEP 50)
        d[invalid] = INVALID_DEPTH
        g["depth"] = d
        if not (np.isfinite(g["pose"]).all() and np.isfinite(g["camera"]).all() and np.isfinite(g["depth"]).all()):
            raise SceneSkip("non_finite", f"non-finite {name} pose, camera or depth after processing")
    return {
        **groups,
        "scene": raw.key,
        "dataset": dataset,
        "scale": scale,
        "has_depth": with_depth,
        "scale_source": scale_source,
    }


def collate(samples: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """Stack per-scene samples (same view counts) into a batch dict (see the module docstring)."""
    batch: Dict[str, Any] = {}
    for g in ("context", "target"):
        batch[g] = {
            "image": torch.stack([s[g]["image"] for s in samples]).float(),
            "camera": torch.from_numpy(np.stack([s[g]["camera"] for s in samples])).float(),
            "pose": torch.from_numpy(np.stack([s[g]["pose"] for s in samples])).float(),
            "depth": torch.from_numpy(np.stack([s[g]["depth"] for s in samples])).float(),
            "index": torch.from_numpy(np.stack([s[g]["index"] for s in samples]).astype(np.int64)),
        }
    batch["scene"] = [s["scene"] for s in samples]
    batch["dataset"] = [s["dataset"] for s in samples]
    batch["scale"] = torch.tensor([s["scale"] for s in samples], dtype=torch.float32)
    batch["has_depth"] = torch.tensor([bool(s["has_depth"]) for s in samples], dtype=torch.bool)
    batch["scale_source"] = [s["scale_source"] for s in samples]
    return batch


PASS_END = -1
"""Spec index of the marker that ends one pass of a training stream over its scenes."""


class SkipLog:
    """Skip counters and names since the last batch (they travel inside the next batch)."""

    def __init__(self) -> None:
        self.counts: Counter = Counter()
        self.names: List[str] = []
        self.total: Counter = Counter()  # never drained

    def add(self, reason: str, shard: str, key: str, detail: str) -> None:
        self.counts[reason] += 1
        self.total[reason] += 1
        self.names.append(f"{shard}:{key}: {reason} ({detail})")
        logger.warning("skipping scene %s (%s): %s: %s", key, shard, reason, detail)

    def drain(self) -> Tuple[Dict[str, int], List[str]]:
        out = dict(self.counts), list(self.names)
        self.counts.clear()
        self.names.clear()
        return out


def new_max_views_value(n: int):
    """A ``multiprocessing.Value`` holding the current max view count (shared with DataLoader workers)."""
    return mp.Value("i", int(n))


# ------------------------------------------------------------------------------------------------ the stream
class ShardStream(IterableDataset):
    """Whole batches from weighted, rank- and worker-split tar shards (see the module docstring)."""

    def __init__(
        self,
        specs: Sequence[DatasetSpec],
        *,
        train: bool = True,
        image_size: int = 252,
        image_budget: int = 24,
        min_views: int = 2,
        max_views: int = 24,
        num_target_views: int = 4,
        eval_views: int = 6,
        eval_batch_size: int = 1,
        max_pose_jump_ratio: float = 10.0,
        random_reference: bool = True,
        use_depth: bool = True,
        require_depth: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        max_views_value=None,
    ):
        super().__init__()
        if not specs:
            raise ValueError("ShardStream: no datasets given")
        if not 1 <= min_views <= max_views:
            raise ValueError(f"ShardStream: need 1 <= min_views <= max_views, got {min_views}, {max_views}")
        if not 0 <= rank < world_size:
            raise ValueError(f"ShardStream: rank {rank} outside world size {world_size}")
        self.specs = list(specs)
        self.train = train
        self.image_size, self.image_budget = image_size, image_budget
        self.min_views, self.max_views, self.num_target_views = min_views, max_views, num_target_views
        self.eval_views, self.eval_batch_size = eval_views, eval_batch_size
        self.max_pose_jump_ratio = max_pose_jump_ratio if train else 0.0
        self.random_reference, self.use_depth, self.require_depth = random_reference, use_depth, require_depth
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.samplers = [s.sampler.build(train) for s in self.specs]
        self.index_mode = (not train) and any(isinstance(s, IndexSampler) for s in self.samplers)
        if train and any(isinstance(s, IndexSampler) for s in self.samplers):
            raise ValueError("ShardStream: index replay samplers are for evaluation (train=False)")
        self._max_views = max_views_value if max_views_value is not None else new_max_views_value(max_views)
        self.shards = weighted_shards(self.specs)
        # set per stream (worker) when the data cannot serve the schedule's view counts (see __iter__)
        self._views_cap: Optional[int] = None

    # ----------------------------------------------------------------------------------------- view schedule
    def set_max_views(self, n: int) -> None:
        """Set the current max view count (clamped to ``[min_views, max_views]``); workers read it per batch."""
        self._max_views.value = int(min(max(int(n), self.min_views), self.max_views))

    def current_max_views(self) -> int:
        return int(min(max(self._max_views.value, self.min_views), self.max_views))

    # ----------------------------------------------------------------------------------------------- readers
    def _worker(self) -> Tuple[int, int]:
        info = get_worker_info()
        if info is None:
            return 0, 1
        # one intra-op thread per worker (DataLoader's worker loop sets it too; a custom worker_init_fn or another
        # loader might not): the per-image ops are small and N workers x M threads only fight over the cores
        if torch.get_num_threads() != 1:
            torch.set_num_threads(1)
        return info.id, info.num_workers

    def _raw_items(
        self, gw: int, total: int, wid: int, nw: int, state: Optional[Dict[str, bool]] = None
    ) -> Iterator[Tuple[int, str, Union[RawScene, SceneError]]]:
        """``(spec index, shard name, scene or error)`` for this stream, epoch after epoch in training.

        ``state["widen"]`` (set by :meth:`__iter__` when a whole training pass gave no usable sample) makes the stream
        read every shard from the next pass on, instead of its share; ``state["reading_all"]`` says when it does."""
        state = {} if state is None else state
        positions, fallback = split_shards(len(self.shards), self.rank, self.world_size, wid, nw)
        epoch = 0
        while True:
            order = list(positions)
            if self.train:
                random.Random(self.seed + epoch + (0 if fallback else gw)).shuffle(order)
            running, owned = 0, 0
            for pos in order:
                spec_idx, shard = self.shards[pos]
                for item in _shards.iter_scenes(shard, errors="yield"):
                    mine = (not fallback) or state.get("reading_all") or running % total == gw
                    running += 1
                    if mine:
                        owned += 1
                        yield spec_idx, f"{self.specs[spec_idx].name}/{shard.name}", item
            if fallback and owned == 0 and not state.get("reading_all") and running > 0:
                if not self.train:
                    return  # evaluation reads every scene once over all streams: this one has none
                logger.info("stream %d/%d owns no scene of %d; reading them all", gw, total, running)
                state["reading_all"] = True
                continue
            epoch += 1
            if not self.train:
                return
            if owned == 0:
                raise RuntimeError(f"ShardStream: no scenes found in {[str(s.path) for s in self.specs]}")
            yield PASS_END, "", None  # __iter__ checks that the pass gave at least one usable sample
            if state.get("widen") and not state.get("reading_all"):
                logger.warning(
                    "stream %d/%d: a whole pass over its %d scene(s) gave no usable sample; it reads every shard "
                    "from now on (other streams' scenes too) instead of stopping the run", gw, total, owned,
                )  # fmt: skip
                positions, fallback = list(range(len(self.shards))), True
                state["reading_all"] = True

    def _draw_shape(self, rng: np.random.Generator) -> Tuple[int, int]:
        if not self.train:
            return self.eval_views, self.eval_batch_size
        hi = self.current_max_views()
        if self._views_cap is not None:
            hi = max(self.min_views, min(hi, self._views_cap))
        vc = int(rng.integers(self.min_views, hi + 1))
        return vc, max(1, self.image_budget // vc)

    def _scene_rng(self, key: str) -> np.random.Generator:
        return np.random.default_rng([self.seed, zlib.crc32(key.encode())])

    def make_sample(
        self, spec_idx: int, shard: str, raw: RawScene, vc: int, rng: Optional[np.random.Generator], skips: SkipLog
    ) -> Optional[Dict[str, Any]]:
        """Process one raw scene with ``vc`` context views; ``None`` (and a counted skip) when it is unusable."""
        sampler = self.samplers[spec_idx]
        try:
            if rng is None:
                rng = self._scene_rng(raw.key)
            if isinstance(sampler, IndexSampler):
                views = sampler.sample(raw.num_views, key=raw.key)
            else:
                need = max(vc + self.num_target_views, sampler.min_required_images)
                if raw.num_views < need:
                    raise SceneSkip(
                        "too_few_frames",
                        f"{raw.num_views} frames < {need} needed ({vc} context + {self.num_target_views} target views, "
                        f"sampler minimum {sampler.min_required_images})",
                    )
                views = sampler.sample(raw.num_views, vc, self.num_target_views, rng, key=raw.key)
            return process_scene(
                raw,
                views,
                image_size=self.image_size,
                rng=rng,
                shuffle_context=self.train and self.random_reference,
                max_pose_jump_ratio=self.max_pose_jump_ratio,
                use_depth=self.use_depth,
                dataset=self.specs[spec_idx].name,
                require_depth=self.require_depth,
            )
        except SceneSkip as s:
            skips.add(s.reason, shard, raw.key, s.detail)
        except IndexFileError as exc:
            skips.add("index_mismatch", shard, raw.key, str(exc).replace("\n", " "))
        except SceneError as exc:
            skips.add("bad_scene", shard, raw.key, exc.reason)
        except Exception as exc:  # noqa: BLE001 - a long run must survive any bad scene
            skips.add("processing_error", shard, raw.key, f"{type(exc).__name__}: {exc}")
        return None

    def _finish(self, samples, skips: SkipLog, extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        batch = collate(samples)
        batch["skipped"], batch["skipped_scenes"] = skips.drain()
        if extra:
            batch.update(extra)
        return batch

    # --------------------------------------------------------------------------------------------- iteration
    def __iter__(self) -> Iterator[Dict[str, Any]]:
        wid, nw = self._worker()
        gw, total = self.rank * nw + wid, self.world_size * nw
        if self.index_mode:
            yield from self._iter_index(gw, total)
            return
        rng = np.random.default_rng([self.seed, gw, 0x5EED])
        state: Dict[str, bool] = {}
        items = self._raw_items(gw, total, wid, nw, state)
        skips = SkipLog()
        exhausted = False
        usable, skipped_before = 0, Counter()
        largest = 0  # most frames of a scene in this pass that its sampler's minimum allows to use
        while not exhausted:
            vc, bs = self._draw_shape(rng)
            samples: List[Dict[str, Any]] = []
            exhausted = True
            for spec_idx, shard, item in items:
                if spec_idx == PASS_END:  # a training stream would otherwise loop forever over unusable scenes
                    why, fruitless, pass_largest = dict(skips.total - skipped_before), usable == 0, largest
                    usable, skipped_before, largest = 0, Counter(skips.total), 0
                    if fruitless:
                        if self._cap_views(pass_largest, why, gw, total):
                            exhausted = False
                            break  # draw the batch shape again under the new cap
                        if not state.get("reading_all"):
                            state["widen"] = True
                            continue
                        raise RuntimeError(
                            f"ShardStream: a whole pass over this stream's scenes in {[str(s.path) for s in self.specs]}"
                            f" gave no usable sample (skipped: {why}); check the data with `zipsplat-ns shards check` "
                            f"and the view counts (min/max views {self.min_views}/{self.max_views} + "
                            f"{self.num_target_views} targets, sampler spans) against the scenes' frame counts"
                        )
                    continue
                if isinstance(item, SceneError):
                    skips.add("bad_scene", shard, item.key, item.reason)
                    continue
                sampler = self.samplers[spec_idx]
                if not isinstance(sampler, IndexSampler) and item.num_views >= sampler.min_required_images:
                    largest = max(largest, item.num_views)
                s = self.make_sample(spec_idx, shard, item, vc, rng if self.train else None, skips)
                if s is not None:
                    samples.append(s)
                    usable += 1
                if len(samples) >= bs:
                    exhausted = False
                    break
            if samples:
                yield self._finish(samples, skips)

    def _cap_views(self, largest: int, why: Dict[str, int], gw: int, total: int) -> bool:
        """After a training pass without a usable sample that only skipped scenes for too few frames: cap this
        stream's context view count at what its largest scene can serve (``frames - target views``) and say so.
        False when a cap would not help (other skip reasons, no scene with enough frames, or already capped)."""
        cap = largest - self.num_target_views
        if set(why) != {"too_few_frames"} or cap < self.min_views:
            return False
        if self._views_cap is not None and cap >= self._views_cap:
            return False
        self._views_cap = cap
        logger.warning(
            "stream %d/%d: no scene has enough frames for the drawn view count (largest scene: %d frames, %d of them "
            "target views); drawing at most %d context views from now on (the view schedule asks for up to %d; "
            "lower --pipeline.datamanager.max-views to %d to match the data)",
            gw, total, largest, self.num_target_views, cap, self.current_max_views(), cap,
        )  # fmt: skip
        return True

    def directories(self) -> List[ShardDirectory]:
        return [ShardDirectory(s.path) for s in self.specs]

    def missing_scenes(self) -> List[str]:
        """Index scenes (index-replay eval) found in none of the shard directories."""
        dirs = self.directories()
        out = []
        for sampler in self.samplers:
            if isinstance(sampler, IndexSampler):
                out += [k for k in sampler.scenes if not any(k in d for d in dirs)]
        return out

    def _iter_index(self, gw: int, total: int, skips: Optional[SkipLog] = None) -> Iterator[Dict[str, Any]]:
        dirs = self.directories()
        skips = skips if skips is not None else SkipLog()
        jobs: List[Tuple[int, str]] = []
        for spec_idx, sampler in enumerate(self.samplers):
            if isinstance(sampler, IndexSampler):
                jobs += [(spec_idx, k) for k in sampler.scenes]
        missing = [k for _, k in jobs if not any(k in d for d in dirs)]
        if missing:
            logger.warning(
                "%d index scene(s) are missing from the shards: %s%s",
                len(missing), ", ".join(missing[:20]), " ..." if len(missing) > 20 else "",
            )  # fmt: skip
        first = True
        for n, (spec_idx, key) in enumerate(jobs):
            if n % total != gw:
                continue
            d = next((d for d in dirs if key in d), None)
            if d is None:
                skips.add(
                    "missing_from_shards", "-", key, "listed in the index file but in none of the shard directories"
                )
                continue
            try:
                raw = d.load(key)
            except SceneError as exc:
                skips.add("bad_scene", exc.shard or d.path.name, key, exc.reason)
                continue
            s = self.make_sample(spec_idx, d.key_map()[key].name, raw, 0, None, skips)
            if s is None:
                continue
            yield self._finish([s], skips, {"missing_scenes": missing if first and gw == 0 else []})
            first = False

    def iter_index_scenes(self, skips: Optional[SkipLog] = None) -> Iterator[Dict[str, Any]]:
        """Index replay in this process, in index order. Skips after the last yielded scene stay in ``skips``
        (pass your own :class:`SkipLog` to read them); every skip is logged."""
        return self._iter_index(0, 1, skips)


__all__ = [
    "SamplerConfig",
    "DatasetSpec",
    "ShardDirectory",
    "ShardStream",
    "SceneSkip",
    "SkipLog",
    "process_scene",
    "collate",
    "count_scenes",
    "weighted_shards",
    "split_shards",
    "pose_jump",
    "unproject_norms",
    "new_max_views_value",
]
