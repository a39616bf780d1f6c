"""zipsplat_ns: ZipSplat (feed-forward 3D Gaussian Splatting) for nerfstudio.

User-facing API (imported lazily, so ``import zipsplat_ns`` stays cheap for nerfstudio's plugin discovery)::

    from zipsplat_ns import Camera, Pose, Gaussians, load_image, load_video
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Camera": "zipsplat_ns.camera",
    "Pose": "zipsplat_ns.pose",
    "Gaussians": "zipsplat_ns.gaussians",
    "load_image": "zipsplat_ns.images",
    "load_video": "zipsplat_ns.images",
    "render": "zipsplat_ns.rendering",
    "ZipSplat": "zipsplat_ns.models.network",
}

if TYPE_CHECKING:  # pragma: no cover
    from zipsplat_ns.camera import Camera
    from zipsplat_ns.gaussians import Gaussians
    from zipsplat_ns.images import load_image, load_video
    from zipsplat_ns.models.network import ZipSplat
    from zipsplat_ns.pose import Pose
    from zipsplat_ns.rendering import render


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'zipsplat_ns' has no attribute {name!r}")


def __dir__() -> list:
    return sorted(list(globals()) + list(_EXPORTS))


__all__ = list(_EXPORTS)
