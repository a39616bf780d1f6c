"""nerfstudio entry point: the ZipSplat method specifications.

nerfstudio imports this module for every ``ns-*`` command (``nerfstudio.method_configs`` entry point), and an exception
here breaks all of them, so it stays light: nerfstudio config classes only, nothing optional (no xformers,
no fused-ssim, no weights), and the torch >= 2.6 checkpoint fix of :mod:`zipsplat_ns.compat`.
"""

from __future__ import annotations

from nerfstudio.configs.base_config import ViewerConfig
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.plugins.types import MethodSpecification

from zipsplat_ns.compat import allow_numpy_in_checkpoints
from zipsplat_ns.pipeline import ZipSplatPipelineConfig

allow_numpy_in_checkpoints()


def _trainer(method_name: str) -> TrainerConfig:
    return TrainerConfig(
        method_name=method_name,
        pipeline=ZipSplatPipelineConfig(),
        vis="tensorboard",  # nerfstudio's default is wandb; headless pretraining wants local logs
        viewer=ViewerConfig(websocket_host="127.0.0.1", quit_on_train_completion=True),
    )


zipsplat_method = MethodSpecification(
    config=_trainer("zipsplat"),
    description="ZipSplat: feed-forward 3D Gaussians from a few unposed images (DA3-giant, released recipe).",
)
