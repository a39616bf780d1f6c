"""A raw (still encoded) multi-view scene as stored in a shard, and its validation."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

KEY_PATTERN = re.compile(r"^[A-Za-z0-9_\-]+$")


class SceneError(ValueError):
    """A scene that cannot be used, with the scene key, the shard it came from and the reason."""

    def __init__(self, key: str, reason: str, shard: Optional[str] = None):
        self.key, self.reason, self.shard = key, reason, shard
        where = f" in {shard}" if shard else ""
        super().__init__(f"scene {key!r}{where}: {reason}")


@dataclass
class RawScene:
    """One scene: intrinsics and OpenCV camera-to-world poses per view, encoded images and optional encoded depth.

    ``cameras``: ``(N, 6)`` float32 ``[w, h, fx, fy, cx, cy]`` in pixels of the stored images;
    ``poses``: ``(N, 12)`` float32 ``[R row-major 9, t 3]``, camera-to-world, OpenCV axes, the dataset's units;
    ``images``: N encoded images (JPEG, PNG or WebP bytes);
    ``depths`` / ``depth_ranges``: N log-uint8 WebP depth maps and their ``(d_min, d_max)``, or ``None``.
    """

    key: str
    cameras: np.ndarray
    poses: np.ndarray
    images: List[bytes]
    depths: Optional[List[bytes]] = None
    depth_ranges: Optional[List[Tuple[float, float]]] = None
    meta: Dict = field(default_factory=dict)

    @property
    def num_views(self) -> int:
        return len(self.images)

    @property
    def has_depth(self) -> bool:
        return self.depths is not None

    def meta_json(self) -> Dict:
        """The ``meta.json`` member: ``num_views`` and ``has_depth`` first, then any extra fields."""
        extra = {k: v for k, v in self.meta.items() if k not in ("num_views", "has_depth")}
        return {"num_views": self.num_views, "has_depth": self.has_depth, **extra}

    def validate(self, shard: Optional[str] = None) -> None:
        """Raise :class:`SceneError` naming what is wrong (shapes, counts, non-finite values, bad rotations)."""
        key = self.key

        def fail(reason: str) -> None:
            raise SceneError(key, reason, shard)

        if not isinstance(key, str) or not KEY_PATTERN.match(key):
            fail("scene keys may only contain letters, digits, '_' and '-' (no dots: they separate tar members)")
        n = self.num_views
        if n == 0:
            fail("no views")
        cams = np.asarray(self.cameras)
        poses = np.asarray(self.poses)
        if cams.shape != (n, 6):
            fail(f"cameras.npy has shape {cams.shape}, expected ({n}, 6) for {n} images")
        if poses.shape != (n, 12):
            fail(f"poses.npy has shape {poses.shape}, expected ({n}, 12) for {n} images")
        for name, arr in (("cameras.npy", cams), ("poses.npy", poses)):
            if arr.dtype.kind not in "iuf":  # strings, bools, records, complex: np.isfinite and the checks below fail
                fail(f"{name} has dtype {arr.dtype}, expected real numbers")
        if not np.isfinite(cams).all():
            fail(f"cameras.npy has non-finite values in views {np.nonzero(~np.isfinite(cams).all(1))[0].tolist()[:10]}")
        if not np.isfinite(poses).all():
            fail(f"poses.npy has non-finite values in views {np.nonzero(~np.isfinite(poses).all(1))[0].tolist()[:10]}")
        if (cams[:, :4] <= 0).any():
            fail("cameras.npy has non-positive image sizes or focal lengths")
        R = poses[:, :9].reshape(n, 3, 3).astype(np.float64)
        err = np.abs(R @ R.transpose(0, 2, 1) - np.eye(3)).max(axis=(1, 2))
        if (err > 1e-2).any():
            fail(f"poses.npy rotation of views {np.nonzero(err > 1e-2)[0].tolist()[:10]} is not orthonormal")
        if self.depths is not None:
            if len(self.depths) != n:
                fail(f"{len(self.depths)} depth maps for {n} images")
            if self.depth_ranges is None or len(self.depth_ranges) != n:
                fail("depth maps without one depth_ranges entry per view")
            bad_ranges = f"depth_ranges.json must be {n} finite [d_min, d_max] pairs"
            try:
                rng = np.asarray(self.depth_ranges, dtype=np.float64)
            except (ValueError, TypeError) as exc:  # ragged or non-numeric entries
                raise SceneError(key, f"{bad_ranges} ({exc})", shard) from exc
            if rng.shape != (n, 2) or not np.isfinite(rng).all():
                fail(bad_ranges)


def median_baseline(poses: np.ndarray) -> float:
    """Median distance between consecutive camera centres (used by the pose-jump rule)."""
    t = np.asarray(poses)[:, 9:12]
    if len(t) < 2:
        return math.nan
    return float(np.median(np.linalg.norm(np.diff(t, axis=0), axis=1)))
