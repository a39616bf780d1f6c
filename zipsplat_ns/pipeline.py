"""nerfstudio Pipeline for ZipSplat.

The multi-scene training pipeline (streamed shards, feed-forward model, benchmark evaluation) is built on top of this
module. In this release only the configuration is registered, so that ``ns-train --help`` lists the methods; running
one stops with a clear message instead of failing somewhere inside nerfstudio.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Type

from nerfstudio.pipelines.base_pipeline import VanillaPipeline, VanillaPipelineConfig


@dataclass
class ZipSplatPipelineConfig(VanillaPipelineConfig):
    """Pipeline config of the ZipSplat methods."""

    _target: Type = field(default_factory=lambda: ZipSplatPipeline)


class ZipSplatPipeline(VanillaPipeline):
    """Placeholder until feed-forward training lands: refuses to start, saying why."""

    def __init__(self, config: ZipSplatPipelineConfig, *args, **kwargs):  # noqa: D401
        raise RuntimeError(
            "zipsplat_ns 0.1.0 registers the ZipSplat methods but cannot train them yet: multi-scene training "
            "(the sharded datamanager and the feed-forward model) is not part of this release. "
            "Use the Python API (zipsplat_ns.Gaussians, zipsplat_ns.ZipSplat) meanwhile."
        )
