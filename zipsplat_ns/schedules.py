"""Training schedules of the ZipSplat recipe (reference §1.6 and §4.2), in plain Python floats.

Everything here returns built-in ``float``/``int``/``bool`` (never numpy scalars: nerfstudio checkpoints are loaded with
``weights_only=True`` under torch >= 2.6, which rejects numpy scalars in optimizer/scheduler state). No nerfstudio and
no numpy import; the nerfstudio optimizer/scheduler configs that use these live in :mod:`zipsplat_ns.optim`.

- :func:`warmup_cosine`: LR multiplier = torch ``SequentialLR(LinearLR(1/W -> 1 over W steps),
  CosineAnnealingLR(T_max = max_steps - W, eta_min = 0))`` with ``W = int(warmup_fraction * max_steps)``;
  0 from ``max_steps`` on.
- :func:`compression_ratio_min`: cosine from ``r_max`` (1.0) to ``r_min`` (0.5) over the first half of training,
  then constant; :func:`effective_compression_min` scales it with the view count; :func:`sample_compression` draws
  the per-batch ratio.
- :func:`max_views`: linear ramp from 2 to 24 over the first half of training; :func:`sample_num_views` draws
  the per-batch view count, :func:`scenes_per_batch` the scenes per GPU.
- :func:`use_priors`: camera priors with probability 0.2.
- :func:`resume_seed`: the seed of a resumed run's draws.
"""

from __future__ import annotations

import math
import random
from typing import Optional, Protocol


class _Rng(Protocol):  # random.Random (or anything with the same methods)
    def random(self) -> float: ...

    def uniform(self, a: float, b: float) -> float: ...

    def randint(self, a: int, b: int) -> int: ...


def _progress(step: int, total: int, fraction: float) -> float:
    """``min(step / T, 1)`` with ``T = fraction * total`` (1.0 when T <= 0)."""
    horizon = float(fraction) * float(total)
    if horizon <= 0:
        return 1.0
    return min(max(float(step), 0.0) / horizon, 1.0)


# --------------------------------------------------------------------------------------------------------- LR
def warmup_steps_for(max_steps: int, warmup_fraction: float = 0.05) -> int:
    """``int(warmup_fraction * max_steps)`` (the reference: 0.05 * 450k = 22,500)."""
    return int(float(warmup_fraction) * int(max_steps))


def warmup_cosine(step: int, max_steps: int, warmup_fraction: float = 0.05) -> float:
    """LR multiplier at ``step`` (0-based: the number of scheduler steps taken so far).

    ``step < W``: ``1/W + (1 - 1/W) * step / W`` (LinearLR from 1/W to 1);
    ``W <= step < max_steps``: ``0.5 * (1 + cos(pi * (step - W) / (max_steps - W)))``;
    ``step >= max_steps``: 0.0 (torch's CosineAnnealingLR would climb again; we stay at eta_min = 0).
    """
    step, max_steps = int(step), int(max_steps)
    warmup = warmup_steps_for(max_steps, warmup_fraction)
    step = max(step, 0)
    if step < warmup:
        start = 1.0 / warmup
        return float(start + (1.0 - start) * step / warmup)
    decay = max_steps - warmup
    if decay <= 0 or step >= max_steps:
        return 0.0 if step >= max_steps else 1.0
    return float(0.5 * (1.0 + math.cos(math.pi * (step - warmup) / decay)))


# ------------------------------------------------------------------------------------------------ compression
def compression_ratio_min(
    step: int, total: int, *, schedule_fraction: float = 0.5, r_min: float = 0.5, r_max: float = 1.0
) -> float:
    """``r_min + (r_max - r_min) * 0.5 * (1 + cos(pi t / T))``, ``T = schedule_fraction * total``; ``r_min`` after.

    Reference defaults: ``0.5 + 0.5 * 0.5 * (1 + cos(pi t / T))``: 1.0 at step 0, 0.5 from the middle of training on.
    """
    t = _progress(step, total, schedule_fraction)
    return float(r_min + (r_max - r_min) * 0.5 * (1.0 + math.cos(math.pi * t)))


def effective_compression_min(ratio_min: float, num_views: int, *, view_exponent: float = 0.5) -> float:
    """``min(r, r * (2 / V) ** view_exponent)``: more views, lower minimum (same as r for V <= 2)."""
    r = float(ratio_min)
    return float(min(r, r * (2.0 / max(int(num_views), 1)) ** float(view_exponent)))


def sample_compression(
    rng: _Rng,
    step: int,
    total: int,
    num_views: int,
    *,
    schedule_fraction: float = 0.5,
    r_min: float = 0.5,
    r_max: float = 1.0,
    view_exponent: float = 0.5,
) -> float:
    """The compression ratio of one batch: ``uniform(effective minimum, r_max)`` (``r_max`` = 1.0)."""
    lo = effective_compression_min(
        compression_ratio_min(step, total, schedule_fraction=schedule_fraction, r_min=r_min, r_max=r_max),
        num_views,
        view_exponent=view_exponent,
    )
    return float(rng.uniform(lo, float(r_max)))


# ------------------------------------------------------------------------------------------------------ views
def max_views(
    step: int, total: int, *, min_views: int = 2, max_views_cap: int = 24, schedule_fraction: float = 0.5
) -> int:
    """``round(min_views + (cap - min_views) * t / T)``, ``T = schedule_fraction * total``, capped at ``cap``.

    Reference: ``round(2 + 22 * t / 225k)`` for 450k steps, i.e. 2 at step 0 and 24 from the middle on. Python's
    ``round`` (half to even), as the reference.
    """
    t = _progress(step, total, schedule_fraction)
    return int(min(round(min_views + (max_views_cap - min_views) * t), max_views_cap))


def sample_num_views(
    rng: _Rng, step: int, total: int, *, min_views: int = 2, max_views_cap: int = 24, schedule_fraction: float = 0.5
) -> int:
    """The batch's context-view count: ``randint(min_views, max_views(step))``, both ends included."""
    hi = max_views(step, total, min_views=min_views, max_views_cap=max_views_cap, schedule_fraction=schedule_fraction)
    return int(rng.randint(int(min_views), max(int(min_views), hi)))


def scenes_per_batch(num_views: int, images_per_batch: int = 24) -> int:
    """Scenes per GPU batch for a view count: ``max(1, images_per_batch // num_views)`` (24 context images/GPU)."""
    return int(max(1, int(images_per_batch) // max(int(num_views), 1)))


# ----------------------------------------------------------------------------------------------------- priors
def use_priors(rng: _Rng, p: float = 0.2) -> bool:
    """Feed camera priors (poses/intrinsics) this step, with probability ``p`` (reference 0.2)."""
    return bool(rng.random() < float(p))


def resume_seed(seed: int, start_step: int) -> int:
    """Seed of a run's draws (model and data stream) when it resumes at ``start_step`` (``seed`` itself at 0), so a
    continuation does not replay the draws of the run's first steps."""
    return int(seed) + 7919 * int(start_step)


def make_rng(seed: Optional[int] = None) -> random.Random:
    """A private ``random.Random`` (do not share the global one with data workers)."""
    return random.Random(seed)


__all__ = [
    "warmup_cosine",
    "warmup_steps_for",
    "compression_ratio_min",
    "effective_compression_min",
    "sample_compression",
    "max_views",
    "sample_num_views",
    "scenes_per_batch",
    "use_priors",
    "resume_seed",
    "make_rng",
]
