"""View samplers: which frames of a scene become context and target views (reference §5.6).

Every sampler is deterministic given a ``numpy.random.Generator`` and returns a :class:`ViewSample` of int64 frame
indices. Context indices come out sorted ascending (the stream shuffles them afterwards in training to pick a random
reference view); targets are sorted too.

- :class:`BoundedSampler` (training; RE10K ``(35, 45, 90)``, DL3DV ``(8, 11, 22)`` as
  ``(min_distance, gap_multiplier, max_consecutive)``):

  * ``N = 1``: one random frame; targets stratified in ``[ctx - min_distance, ctx + min_distance]`` (clipped).
  * ``N >= 2``: ``max_gap = min(gap_multiplier * N, T - 1)``, and for ``N > 2`` also ``<= (N - 1) * max_consecutive``;
    ``min_gap = max(N - 1, min_distance)`` clamped to ``<= max_gap``. Training draws ``gap ~ U{min_gap..max_gap}``,
    ``left ~ U{0..T-gap-1}``, ``right = left + gap``; evaluation uses ``left = 0``, ``right = max_gap``. The ``N - 2``
    interior frames are distinct random frames of ``(left, right)``, rejection-sampled (100 tries) so that no
    consecutive gap exceeds ``max_consecutive``, with evenly spaced frames as the fallback.
  * Targets: ``num_target`` stratified bins over ``[left, right + 1)``, one random frame per bin (targets may
    coincide with context frames).
  * ``min_required_images = min_distance + 1``.

- :class:`RandomSampler`: distinct uniform frames; context and targets are disjoint when the scene has enough frames.
- :class:`IndexSampler`: replays an index file ``{scene: {"context": [...], "target": [...]}}`` (``null`` excludes
  a scene; an optional ``"overlap"`` number is accepted and ignored). :meth:`IndexSampler.validate` and the loader
  raise :class:`IndexFileError` listing every offending entry.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Union

import numpy as np

PathLike = Union[str, os.PathLike]


@dataclass
class ViewSample:
    """Frame indices of one sample: ``context`` (sorted) and ``target`` (sorted), int64 arrays."""

    context: np.ndarray
    target: np.ndarray

    @property
    def all(self) -> np.ndarray:
        return np.concatenate([self.context, self.target])


def _stratified(lo: int, hi_excl: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` frames, one uniform draw in each of ``k`` equal bins of ``[lo, hi_excl)``."""
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    edges = np.linspace(lo, hi_excl, k + 1)
    out = []
    for a, b in zip(edges[:-1], edges[1:]):
        a_i = int(np.floor(a))
        b_i = max(a_i + 1, int(np.floor(b)))
        out.append(int(rng.integers(a_i, b_i)))
    return np.clip(np.sort(np.asarray(out, dtype=np.int64)), lo, hi_excl - 1)


class ViewSampler:
    """Base class: ``sample(num_frames, num_context, num_target, rng, key=None) -> ViewSample``."""

    min_required_images: int = 0

    def sample(
        self, num_frames: int, num_context: int, num_target: int, rng: np.random.Generator, key: Optional[str] = None
    ) -> ViewSample:
        raise NotImplementedError


class BoundedSampler(ViewSampler):
    """The reference's ``bounded`` sampler (see the module docstring); ``train=False`` is its val/test mode."""

    def __init__(
        self,
        min_distance: int = 8,
        gap_multiplier: int = 11,
        max_consecutive: int = 22,
        *,
        train: bool = True,
        max_tries: int = 100,
    ):
        if min_distance < 0 or gap_multiplier < 1 or max_consecutive < 1:
            raise ValueError(
                "BoundedSampler: need min_distance >= 0, gap_multiplier >= 1, max_consecutive >= 1, got "
                f"({min_distance}, {gap_multiplier}, {max_consecutive})"
            )
        self.min_distance, self.gap_multiplier, self.max_consecutive = min_distance, gap_multiplier, max_consecutive
        self.train, self.max_tries = train, max_tries
        self.min_required_images = min_distance + 1

    def gap_bounds(self, num_frames: int, num_context: int) -> tuple:
        """``(min_gap, max_gap)`` for ``num_context >= 2`` views of a ``num_frames``-frame scene."""
        n, t = num_context, num_frames
        max_gap = min(self.gap_multiplier * n, t - 1)
        if n > 2:
            max_gap = min(max_gap, (n - 1) * self.max_consecutive)
        min_gap = min(max(n - 1, self.min_distance), max_gap)
        return min_gap, max_gap

    def sample(self, num_frames, num_context, num_target, rng, key=None) -> ViewSample:
        t, n = int(num_frames), int(num_context)
        if n < 1:
            raise ValueError(f"BoundedSampler: num_context must be >= 1, got {n}")
        if t < n:
            raise ValueError(f"BoundedSampler: {n} context views requested from a {t}-frame scene")
        if n == 1:
            c = int(rng.integers(0, t)) if self.train else 0
            lo, hi = max(0, c - self.min_distance), min(t - 1, c + self.min_distance)
            return ViewSample(np.array([c], dtype=np.int64), _stratified(lo, hi + 1, num_target, rng))
        min_gap, max_gap = self.gap_bounds(t, n)
        if max_gap < n - 1:
            raise ValueError(f"BoundedSampler: cannot place {n} distinct views in {t} frames")
        if self.train:
            gap = int(rng.integers(min_gap, max_gap + 1))
            left = int(rng.integers(0, t - gap))
        else:
            gap, left = max_gap, 0
        right = left + gap
        ctx = self._interior(left, right, n, rng)
        return ViewSample(ctx, _stratified(left, right + 1, num_target, rng))

    def _interior(self, left: int, right: int, n: int, rng: np.random.Generator) -> np.ndarray:
        if n == 2:
            return np.array([left, right], dtype=np.int64)
        pool = np.arange(left + 1, right, dtype=np.int64)
        for _ in range(self.max_tries):
            mid = np.sort(rng.choice(pool, size=n - 2, replace=False))
            ctx = np.concatenate([[left], mid, [right]]).astype(np.int64)
            if np.diff(ctx).max() <= self.max_consecutive:
                return ctx
        even = np.round(np.linspace(left, right, n)).astype(np.int64)
        return even


class RandomSampler(ViewSampler):
    """Uniform distinct frames; context and targets are disjoint when ``T >= N + K`` (targets repeat otherwise)."""

    min_required_images = 1

    def sample(self, num_frames, num_context, num_target, rng, key=None) -> ViewSample:
        t, n, k = int(num_frames), int(num_context), int(num_target)
        if t < n:
            raise ValueError(f"RandomSampler: {n} context views requested from a {t}-frame scene")
        if t >= n + k:
            pick = rng.choice(t, size=n + k, replace=False).astype(np.int64)
            return ViewSample(np.sort(pick[:n]), np.sort(pick[n:]))
        ctx = np.sort(rng.choice(t, size=n, replace=False).astype(np.int64))
        return ViewSample(ctx, np.sort(rng.choice(t, size=k, replace=t < k).astype(np.int64)))


class IndexFileError(ValueError):
    """An index file with invalid entries; ``problems`` lists ``"scene: what is wrong"`` strings."""

    def __init__(self, source: str, problems: Sequence[str], limit: int = 20):
        self.source, self.problems = source, list(problems)
        shown = "\n  ".join(self.problems[:limit])
        more = f"\n  ... and {len(self.problems) - limit} more" if len(self.problems) > limit else ""
        super().__init__(
            f"{source}: {len(self.problems)} invalid index entr{'y' if len(problems) == 1 else 'ies'}:\n  {shown}{more}"
        )


_ALLOWED_FIELDS = {"context", "target", "overlap"}


def _int_list(v) -> Optional[List[int]]:
    if not isinstance(v, (list, tuple)):
        return None
    out = []
    for x in v:
        if isinstance(x, bool) or not isinstance(x, (int, np.integer)):
            if isinstance(x, float) and x.is_integer():
                out.append(int(x))
                continue
            return None
        out.append(int(x))
    return out


class IndexSampler(ViewSampler):
    """Replay a benchmark index (``{scene: {"context": [...], "target": [...]}}``; ``null`` = excluded).

    ``entries`` keeps the file's order; :attr:`scenes` lists the non-excluded scenes in that order. The structure is
    checked at load time; :meth:`validate` additionally checks context counts and frame ranges against the data.
    """

    min_required_images = 0

    def __init__(self, index: Mapping, *, source: str = "<index>", expected_context: Optional[int] = None):
        self.source = source
        if not isinstance(index, Mapping):
            raise IndexFileError(
                source, [f"top level must be an object mapping scene keys to entries, got {type(index).__name__}"]
            )
        problems: List[str] = []
        self.entries: Dict[str, Optional[ViewSample]] = {}
        for key, entry in index.items():
            if entry is None:
                self.entries[key] = None
                continue
            if not isinstance(entry, Mapping):
                problems.append(f"{key}: entry must be an object or null, got {type(entry).__name__}")
                continue
            unknown = sorted(set(entry) - _ALLOWED_FIELDS)
            if unknown:
                problems.append(f"{key}: unknown field(s) {unknown} (allowed: context, target, overlap)")
            ctx, tgt = _int_list(entry.get("context")), _int_list(entry.get("target", []))
            if ctx is None or not ctx:
                problems.append(f"{key}: 'context' must be a non-empty list of integers, got {entry.get('context')!r}")
            if tgt is None:
                problems.append(f"{key}: 'target' must be a list of integers, got {entry.get('target')!r}")
            if ctx and any(i < 0 for i in ctx) or tgt and any(i < 0 for i in tgt):
                problems.append(f"{key}: negative frame index in {entry!r}")
            if ctx and len(set(ctx)) != len(ctx):
                problems.append(f"{key}: duplicate context frames {ctx}")
            if expected_context is not None and ctx is not None and len(ctx) != expected_context:
                problems.append(f"{key}: {len(ctx)} context views, expected {expected_context}")
            if ctx and tgt is not None:
                self.entries[key] = ViewSample(np.asarray(ctx, dtype=np.int64), np.asarray(tgt, dtype=np.int64))
        if problems:
            raise IndexFileError(source, problems)
        self.expected_context = expected_context

    @classmethod
    def from_file(cls, path: PathLike, *, expected_context: Optional[int] = None) -> "IndexSampler":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"index file not found: {path}")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise IndexFileError(
                str(path), [f"malformed JSON: {exc.msg} at line {exc.lineno}, column {exc.colno} (char {exc.pos})"]
            ) from exc
        except UnicodeDecodeError as exc:
            raise IndexFileError(str(path), [f"not UTF-8 text ({exc})"]) from exc
        return cls(data, source=str(path), expected_context=expected_context)

    @property
    def scenes(self) -> List[str]:
        """Non-excluded scene keys, in file order."""
        return [k for k, v in self.entries.items() if v is not None]

    def __contains__(self, key: str) -> bool:
        return self.entries.get(key) is not None

    def get(self, key: str) -> Optional[ViewSample]:
        return self.entries.get(key)

    def num_context(self, key: str) -> int:
        return len(self.entries[key].context)

    def check_scene(self, key: str, num_frames: int) -> List[str]:
        """Problems of ``key``'s entry against a ``num_frames``-frame scene (empty when fine)."""
        e = self.entries.get(key)
        if e is None:
            return [f"{key}: not in the index (or excluded with null)"]
        bad = sorted({int(i) for i in e.all if i >= num_frames})
        return [f"{key}: frame indices {bad} out of range for a {num_frames}-frame scene"] if bad else []

    def validate(
        self,
        known_scenes: Optional[Iterable[str]] = None,
        num_frames: Optional[Mapping[str, int]] = None,
        expected_context: Optional[int] = None,
    ) -> None:
        """Raise :class:`IndexFileError` listing entries that name unknown scenes, have out-of-range frames, or a
        context count other than ``expected_context``."""
        problems: List[str] = []
        known = set(known_scenes) if known_scenes is not None else None
        for key in self.scenes:
            if known is not None and key not in known:
                problems.append(f"{key}: unknown scene (not in the data)")
            if num_frames is not None and key in num_frames:
                problems += self.check_scene(key, num_frames[key])
            if expected_context is not None and self.num_context(key) != expected_context:
                problems.append(f"{key}: {self.num_context(key)} context views, expected {expected_context}")
        if problems:
            raise IndexFileError(self.source, problems)

    def sample(self, num_frames, num_context=None, num_target=None, rng=None, key=None) -> ViewSample:
        """The stored entry of ``key`` (``num_context``/``num_target``/``rng`` are ignored); raises
        :class:`IndexFileError` when the entry does not fit the scene."""
        if key is None or self.entries.get(key) is None:
            raise KeyError(f"{self.source}: scene {key!r} is not in the index (or is excluded)")
        problems = self.check_scene(key, int(num_frames))
        if problems:
            raise IndexFileError(self.source, problems)
        e = self.entries[key]
        return ViewSample(e.context.copy(), e.target.copy())


__all__ = ["ViewSample", "ViewSampler", "BoundedSampler", "RandomSampler", "IndexSampler", "IndexFileError"]
