"""Converters from source datasets to shards (``zipsplat-ns convert <format> SRC DST``).

Every converter streams scene by scene into a :class:`~zipsplat_ns.data.shards.ShardWriter`, shows a progress bar,
skips (and names, with the reason) scenes and frames it cannot use, and returns a :class:`ConvertReport`. A
:class:`ConvertError` is raised only when the input as a whole is unusable.

=============  ==============================================  =====================================================
format         input                                           output
=============  ==============================================  =====================================================
nerfstudio     scene folder with transforms.json, or a folder  ``DST/shard-*.tar`` (one scene per folder)
               of them
colmap         ``sparse/0`` (.bin or .txt) + ``images/``       ``DST/shard-*.tar``
media          image folder, glob, image or video (unposed)    ``DST/shard-*.tar`` (one scene, ``posed: false``)
re10k          ``train/``, ``test/`` ``.torch`` chunks or zip  ``DST/train-scenes``, ``DST/test-scenes``
dl3dv          ``{hash}.zip`` files                            ``DST/train-scenes``, ``DST/test-scenes``
mipnerf360     extracted ``360_v2`` folder                     ``DST/{scene}.tar``
=============  ==============================================  =====================================================
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Type

from zipsplat_ns.data.converters.colmap import ColmapConvertConfig, convert_colmap, read_model, read_points3D
from zipsplat_ns.data.converters.common import BaseConvertConfig, ConvertError, ConvertReport
from zipsplat_ns.data.converters.dl3dv import Dl3dvConvertConfig, convert_dl3dv
from zipsplat_ns.data.converters.media import MediaConvertConfig, convert_media
from zipsplat_ns.data.converters.mipnerf360 import Mipnerf360ConvertConfig, convert_mipnerf360
from zipsplat_ns.data.converters.nerfstudio import NerfstudioConvertConfig, convert_nerfstudio
from zipsplat_ns.data.converters.re10k import Re10kConvertConfig, convert_re10k

#: format name -> option dataclass (tyro subcommands; each has ``run()``)
CONVERT_CONFIGS: Dict[str, Type[BaseConvertConfig]] = {
    "nerfstudio": NerfstudioConvertConfig,
    "colmap": ColmapConvertConfig,
    "media": MediaConvertConfig,
    "re10k": Re10kConvertConfig,
    "dl3dv": Dl3dvConvertConfig,
    "mipnerf360": Mipnerf360ConvertConfig,
}

CONVERTERS = {
    "nerfstudio": convert_nerfstudio,
    "colmap": convert_colmap,
    "media": convert_media,
    "re10k": convert_re10k,
    "dl3dv": convert_dl3dv,
    "mipnerf360": convert_mipnerf360,
}


def convert(fmt: str, src, dst, **opts) -> ConvertReport:
    """Run the converter for ``fmt`` (one of :data:`CONVERTERS`) with keyword options; returns its report."""
    key = fmt.lower().replace("-", "").replace("_", "")
    aliases = {"ns": "nerfstudio", "video": "media", "images": "media", "mipnerf": "mipnerf360", "360v2": "mipnerf360"}
    key = aliases.get(key, key)
    if key not in CONVERTERS:
        raise ValueError(f"unknown convert format {fmt!r}; choose one of: {', '.join(CONVERTERS)}")
    fields = set(CONVERT_CONFIGS[key].__dataclass_fields__) - {"src", "dst"}
    unknown = sorted(set(opts) - fields)
    if unknown:
        raise TypeError(f"convert {key}: unknown option(s) {unknown}; valid: {sorted(fields)}")
    return CONVERTERS[key](Path(src) if key != "media" else src, Path(dst), **opts)


__all__ = [
    "CONVERT_CONFIGS",
    "CONVERTERS",
    "ConvertError",
    "ConvertReport",
    "convert",
    "convert_colmap",
    "convert_dl3dv",
    "convert_media",
    "convert_mipnerf360",
    "convert_nerfstudio",
    "convert_re10k",
    "read_model",
    "read_points3D",
    "ColmapConvertConfig",
    "Dl3dvConvertConfig",
    "MediaConvertConfig",
    "Mipnerf360ConvertConfig",
    "NerfstudioConvertConfig",
    "Re10kConvertConfig",
]
