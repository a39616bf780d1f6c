"""nerfstudio entry points: the ZipSplat method specifications.

nerfstudio imports this module for every ``ns-*`` command (``nerfstudio.method_configs`` entry points), and an
exception here breaks all of them, so it stays light: config classes only (the network, xformers, weights and data are
touched when a pipeline is set up, never at import), plus the torch >= 2.6 checkpoint fix of :mod:`zipsplat_ns.compat`.

Methods (``ns-train <name>``):

- ``zipsplat``: giant, the released recipe (reference §4.2): AdamW lr 3e-4 (backbone 3e-5), betas (0.9, 0.95),
  weight decay 0.05, clipping at 1.0, 5 % warm-up then cosine, 450k steps, 24 context images per GPU, bf16 autocast.
- ``zipsplat-large`` / ``zipsplat-base`` / ``zipsplat-small``: the 24 GB-GPU recipe (same, with gradient
  checkpointing).
- ``zipsplat`` compiles the network's blocks at the first training step (``--pipeline.model.compile False`` runs
  eager): on an H200 the compiled giant step is 16 % faster and needs 46 instead of 56 GB
  (benchmarks/bench_train_compile/). The smaller variants run eager by default (compiled small was ~10 % slower);
  ``--pipeline.model.compile True`` compiles them too (for small this failed under ns-train on an H200:
  benchmarks/bench_train_no_cudnn/).
- ``zipsplat-tiny``: our CPU-sized network; 4 context images and 2 target views per step, targets supervised at half
  resolution, 300 steps. ``ns-train zipsplat-tiny --machine.device-type cpu`` trains on the built-in synthetic data.

Training length: ``--max-num-iterations``, ``--pipeline.model.total-steps`` (compression and view schedules) and
``--optimizers.{backbone,head}.scheduler.max-steps`` (LR) should be changed together. nerfstudio 1.1.5's
``--load-dir`` runs ``max-num-iterations`` *more* steps after the loaded one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from nerfstudio.configs.base_config import LoggingConfig, ViewerConfig
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.plugins.types import MethodSpecification

from zipsplat_ns.compat import allow_numpy_in_checkpoints
from zipsplat_ns.datamanagers.zipsplat_datamanager import ZipSplatDataManagerConfig
from zipsplat_ns.models.zipsplat_model import CompressionScheduleConfig, ZipSplatModelConfig
from zipsplat_ns.optim import AdamWOptimizerConfig, WarmupCosineSchedulerConfig
from zipsplat_ns.pipeline import ZipSplatPipelineConfig

allow_numpy_in_checkpoints()


@dataclass
class ZipSplatRunConfig(TrainerConfig):
    """A ``TrainerConfig`` whose run directory is given explicitly (``zipsplat-ns reconstruct``).

    nerfstudio derives a run's directory as ``output_dir/experiment_name/method_name/timestamp`` (checkpoints in its
    ``nerfstudio_models/``, the viewer's log and camera paths beside ``config.yml``). A reconstruction lives in the
    folder the user chose, so ``run_dir`` (absolute) replaces that derivation when set.
    """

    run_dir: Optional[Path] = None
    """The run directory (holds config.yml and nerfstudio_models/); None = nerfstudio's layout."""

    def get_base_dir(self) -> Path:
        if self.run_dir is not None:
            return Path(self.run_dir)
        return super().get_base_dir()

RECIPE_STEPS = 450_000
RECIPE_LR = 3e-4
BACKBONE_LR_SCALE = 0.1


def _optimizers(steps: int, lr: float = RECIPE_LR) -> dict:
    """One AdamW per parameter group; the names are the model's ``get_param_groups`` keys."""
    return {
        "backbone": {
            "optimizer": AdamWOptimizerConfig(lr=lr * BACKBONE_LR_SCALE),
            "scheduler": WarmupCosineSchedulerConfig(max_steps=steps),
        },
        "head": {
            "optimizer": AdamWOptimizerConfig(lr=lr),
            "scheduler": WarmupCosineSchedulerConfig(max_steps=steps),
        },
    }


def _trainer(
    method_name: str,
    model: ZipSplatModelConfig,
    datamanager: ZipSplatDataManagerConfig,
    *,
    steps: int = RECIPE_STEPS,
    lr: float = RECIPE_LR,
    steps_per_save: int = 2000,
    steps_per_eval_batch: int = 1000,
    steps_per_eval_image: int = 2000,
    steps_per_log: int = 10,
    viewer_refresh_every: int = 100,
) -> TrainerConfig:
    model.total_steps = steps
    return TrainerConfig(
        method_name=method_name,
        max_num_iterations=steps,
        steps_per_save=steps_per_save,
        steps_per_eval_batch=steps_per_eval_batch,
        steps_per_eval_image=steps_per_eval_image,
        steps_per_eval_all_images=1_000_000_000,  # the benchmark is run by ns-eval, not inside training
        save_only_latest_checkpoint=True,
        mixed_precision=False,  # nerfstudio's AMP is fp16; the model runs its own bf16 autocast
        pipeline=ZipSplatPipelineConfig(
            datamanager=datamanager, model=model, viewer_refresh_every=viewer_refresh_every
        ),
        optimizers=_optimizers(steps, lr),
        vis="tensorboard",  # nerfstudio's default is wandb; headless pretraining wants local logs
        viewer=ViewerConfig(websocket_host="127.0.0.1", quit_on_train_completion=True),
        logging=LoggingConfig(steps_per_log=steps_per_log),
    )


def _recipe_data(**kw) -> ZipSplatDataManagerConfig:
    args = dict(image_budget=24, max_views=24, num_target_views=4, num_workers=8)
    args.update(kw)
    return ZipSplatDataManagerConfig(**args)


zipsplat_method = MethodSpecification(
    config=_trainer("zipsplat", ZipSplatModelConfig(variant="giant", compile=True), _recipe_data()),
    description="ZipSplat: feed-forward 3D Gaussians from a few unposed images (DA3-giant, released recipe).",
)

zipsplat_large_method = MethodSpecification(
    config=_trainer("zipsplat-large", ZipSplatModelConfig(variant="large", grad_checkpointing=True), _recipe_data()),
    description="ZipSplat with a DA3-large backbone (24 GB-GPU recipe, gradient checkpointing).",
)

zipsplat_base_method = MethodSpecification(
    config=_trainer("zipsplat-base", ZipSplatModelConfig(variant="base", grad_checkpointing=True), _recipe_data()),
    description="ZipSplat with a DA3-base backbone (24 GB-GPU recipe, gradient checkpointing).",
)

zipsplat_small_method = MethodSpecification(
    config=_trainer("zipsplat-small", ZipSplatModelConfig(variant="small", grad_checkpointing=True), _recipe_data()),
    description="ZipSplat with a DA3-small backbone (24 GB-GPU recipe, gradient checkpointing).",
)

zipsplat_tiny_method = MethodSpecification(
    config=_trainer(
        "zipsplat-tiny",
        ZipSplatModelConfig(
            variant="tiny",
            gaussians_per_token=8,
            render_downscale=2,
            compression_schedule=CompressionScheduleConfig(r_min=0.25, r_max=0.5),
        ),
        ZipSplatDataManagerConfig(
            image_budget=4, max_views=4, num_target_views=2, num_workers=1, eval_views=2, prefetch_factor=2
        ),
        steps=300,
        lr=1e-3,
        steps_per_save=100,
        steps_per_eval_batch=100,
        steps_per_eval_image=100,
        viewer_refresh_every=20,
    ),
    description="ZipSplat tiny (CPU-sized network): the built-in demo on synthetic data, 300 steps.",
)

_METHODS = {
    "giant": zipsplat_method, "large": zipsplat_large_method, "base": zipsplat_base_method,
    "small": zipsplat_small_method, "tiny": zipsplat_tiny_method,
}  # fmt: skip
METHODS_BY_VARIANT = {variant: spec.config.method_name for variant, spec in _METHODS.items()}
"""The registered method of each network variant (``zipsplat-ns reconstruct`` writes its configs)."""


def method_config(variant: str) -> TrainerConfig:
    """A copy of the registered method config of network ``variant``."""
    import copy

    if variant not in _METHODS:
        raise ValueError(f"unknown network variant {variant!r}; choose from {', '.join(_METHODS)}")
    return copy.deepcopy(_METHODS[variant].config)


def find_run_config(path: Path) -> Path:
    """The ``config.yml`` of a run: ``path`` itself, ``path/config.yml``, or the newest one below ``path``."""
    p = Path(path)
    if p.is_file():
        return p
    if (p / "config.yml").is_file():
        return p / "config.yml"
    found = sorted(p.rglob("config.yml"), key=lambda q: q.stat().st_mtime) if p.is_dir() else []
    if not found:
        raise FileNotFoundError(f"no config.yml in {p} (not a nerfstudio run folder)")
    return found[-1]


__all__ = [
    "METHODS_BY_VARIANT",
    "ZipSplatRunConfig",
    "find_run_config",
    "method_config",
    "zipsplat_method",
    "zipsplat_large_method",
    "zipsplat_base_method",
    "zipsplat_small_method",
    "zipsplat_tiny_method",
]
