"""nerfstudio DataManagers of the plugin (importing this package imports nerfstudio)."""

from zipsplat_ns.datamanagers.zipsplat_datamanager import (
    ViewerSceneDataset,
    ZipSplatDataManager,
    ZipSplatDataManagerConfig,
)

__all__ = ["ZipSplatDataManager", "ZipSplatDataManagerConfig", "ViewerSceneDataset"]
