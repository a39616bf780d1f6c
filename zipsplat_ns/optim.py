"""nerfstudio optimizer and scheduler configs of the ZipSplat recipe (reference §4.2).

- :class:`AdamWOptimizerConfig`: AdamW, lr 3e-4, betas (0.9, 0.95), weight decay 0.05 on every parameter; torch's
  fused kernel on CUDA (one launch per step instead of several per parameter tensor). Gradient clipping at global
  norm 1.0 over all parameter groups together is the pipeline's (``ZipSplatPipelineConfig.grad_clip_norm``), so
  ``max_norm`` (nerfstudio's per-group clipping) is off by default.
- :class:`WarmupCosineSchedulerConfig`: 5 % linear warm-up, then cosine to 0
  (:func:`zipsplat_ns.schedules.warmup_cosine`),
  as a ``LambdaLR`` stepped once per iteration. Its multipliers are plain Python floats, so the scheduler state in a
  nerfstudio checkpoint loads under ``torch.load(weights_only=True)``.

The backbone's 0.1x learning rate is a separate nerfstudio parameter group with its own optimizer config (e.g.
``AdamWOptimizerConfig(lr=3e-5)``); the multiplier follows the same schedule.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Tuple, Type

import torch
from nerfstudio.engine.optimizers import OptimizerConfig
from nerfstudio.engine.schedulers import Scheduler, SchedulerConfig
from torch.optim import Optimizer, lr_scheduler

from zipsplat_ns.schedules import warmup_cosine


@dataclass
class AdamWOptimizerConfig(OptimizerConfig):
    """AdamW with the ZipSplat defaults."""

    _target: Type = torch.optim.AdamW
    lr: float = 3e-4
    """Learning rate of this parameter group (the method configs give the backbone group 0.1x the head's)."""
    eps: float = 1e-8
    betas: Tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.05
    """Decoupled weight decay, applied to all trainable parameters (norms and biases included, as the reference)."""
    max_norm: Optional[float] = None
    """nerfstudio's per-group gradient clipping (L2 norm over this group's parameters only). Off: the recipe's
    clipping is one global norm over all groups, --pipeline.grad-clip-norm."""
    fused: Optional[bool] = None
    """torch's fused (single-kernel) AdamW: None = when every parameter is an fp32 CUDA tensor, else the default
    (multi-tensor) implementation. Same update rule either way."""

    def setup(self, params) -> Optimizer:
        params = list(params)
        fused = self.fused
        if fused is None:
            fused = bool(params) and all(p.is_cuda and p.dtype == torch.float32 for p in params)
        kwargs = dict(lr=self.lr, eps=self.eps, betas=tuple(self.betas), weight_decay=self.weight_decay)
        if fused:
            kwargs["fused"] = True
        return self._target(params, **kwargs)


@dataclass
class WarmupCosineSchedulerConfig(SchedulerConfig):
    """Linear warm-up over ``warmup_fraction * max_steps`` steps from ``lr/W`` to ``lr``, then cosine decay to 0."""

    _target: Type = field(default_factory=lambda: WarmupCosineScheduler)
    max_steps: int = 450_000
    """Total number of optimisation steps (the decay reaches 0 here)."""
    warmup_fraction: float = 0.05
    """Fraction of ``max_steps`` spent in the linear warm-up."""


class WarmupCosineScheduler(Scheduler):
    """``LambdaLR`` with the :func:`~zipsplat_ns.schedules.warmup_cosine` multiplier."""

    config: WarmupCosineSchedulerConfig

    def get_scheduler(self, optimizer: Optimizer, lr_init: float) -> lr_scheduler.LRScheduler:
        max_steps, frac = int(self.config.max_steps), float(self.config.warmup_fraction)

        def multiplier(step: int) -> float:
            return warmup_cosine(step, max_steps, frac)

        return lr_scheduler.LambdaLR(optimizer, lr_lambda=multiplier)


__all__ = ["AdamWOptimizerConfig", "WarmupCosineSchedulerConfig", "WarmupCosineScheduler"]
