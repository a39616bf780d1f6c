"""Procedural multi-view scenes with exact depth: the built-in training set and the data-path test fixture.

Two kinds of scene, both closed (every ray hits something, so every pixel has a valid depth):

- ``room``: a textured box room (floor, walls, ceiling) with a few boxes, spheres and cylinders that occlude each
  other, seen along an RE10K-like walk-through: a smooth, mostly forward-moving camera path at eye height with
  gentle yaw, pitch and roll changes.
- ``orbit``: a central object group in a large textured hall, with a few outer objects, seen by a camera circling
  the group and looking at its centre (radius and elevation vary slowly along the orbit).

Images are ray cast on the CPU with numpy, vectorised over all pixels of all views, against analytic primitives
(the room's interior box, yawed boxes, spheres, vertical capped cylinders). Textures are solid (3-D) procedural
textures in each object's local frame: checkers, tiles, stripes, value noise, periodic gradients and plain colours,
all with a little fine noise. Shading is Lambertian with a directional light (cast shadows from the objects), a
hemispherical ambient term and a gamma of 2.2; ``supersample`` > 1 anti-aliases the colours.

Conventions (those of the shard format): pinhole intrinsics ``[w, h, fx, fy, cx, cy]`` in pixels with pixel centres
at ``+0.5`` (the ray of pixel ``(i, j)`` goes through ``(j + 0.5, i + 0.5)``), poses camera-to-world in OpenCV axes
(x right, y down, z forward) as ``[R row-major 9, t 3]``, depth = z-depth along the camera axis. The world frame has
+y up and the floor at ``y = 0``; units are metres.

Everything is determined by ``(cfg.seed, scene index)`` through ``numpy.random.default_rng([seed, index])``, so scene
``i`` is the same whatever the number of scenes, the split or the number of workers.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

KINDS = ("room", "orbit")
_EPS = 1e-6  # smallest accepted ray parameter
_UP = np.array([0.0, 1.0, 0.0])


# ================================================================================================== configuration
@dataclass
class SynthConfig:
    """Options of the synthetic scene generator (all scenes of one config share size and view count)."""

    seed: int = 0
    """Base seed; scene ``i`` uses ``numpy.random.default_rng([seed, i])``."""
    num_scenes: int = 256
    """Total number of scenes (train + test)."""
    views: int = 32
    """Views per scene."""
    size: int = 128
    """Square image size in pixels (``height`` / ``width`` override it)."""
    height: Optional[int] = None
    width: Optional[int] = None
    kinds: Tuple[str, ...] = KINDS
    """Scene kinds to draw from (``room``: walk-through, ``orbit``: object orbit)."""
    kind_weights: Optional[Tuple[float, ...]] = None
    """Relative probability of each kind (``None``: uniform)."""
    fov_deg: Tuple[float, float] = (50.0, 75.0)
    """Range of the horizontal field of view, drawn per scene."""
    num_objects: Tuple[int, int] = (4, 8)
    """Range (inclusive) of the number of free objects (room kind: in the room; orbit kind: outside the orbit)."""
    supersample: int = 1
    """Colour samples per pixel along each axis (depth always comes from the pixel-centre ray). Textures are
    band-limited to the pixel footprint anyway, so 1 is fine; 2 also smooths silhouettes at ~4x the cost."""
    shadows: bool = True
    image_format: str = "png"
    """Encoding of the images in shards: ``png`` (lossless, fast), ``webp`` (lossless, ~20x slower) or ``jpg``."""
    with_depth: bool = True
    """Write the log-uint8 depth maps and ranges into the shards."""
    test_fraction: float = 0.1
    """Fraction of ``num_scenes`` (the last indices) that goes to the test split."""
    shard_size_mb: float = 512.0
    num_workers: int = 0
    """Processes that generate scenes (0: in the writing process). The output does not depend on it."""

    @property
    def hw(self) -> Tuple[int, int]:
        return (int(self.height or self.size), int(self.width or self.size))

    def __post_init__(self) -> None:
        if self.views < 1:
            raise ValueError(f"SynthConfig.views must be >= 1, got {self.views}")
        h, w = self.hw
        if h < 2 or w < 2:
            raise ValueError(f"SynthConfig: image size must be >= 2 pixels, got {h}x{w}")
        bad = [k for k in self.kinds if k not in KINDS]
        if not self.kinds or bad:
            raise ValueError(f"SynthConfig.kinds must be a non-empty subset of {KINDS}, got {self.kinds}")
        if self.kind_weights is not None and len(self.kind_weights) != len(self.kinds):
            raise ValueError("SynthConfig.kind_weights needs one weight per kind")
        if self.num_objects[0] < 0 or self.num_objects[1] < self.num_objects[0]:
            raise ValueError(
                f"SynthConfig.num_objects must be a range (lo, hi) with 0 <= lo <= hi, got {self.num_objects}"
            )
        if self.supersample < 1:
            raise ValueError("SynthConfig.supersample must be >= 1")
        if not 0.0 <= self.test_fraction < 1.0:
            raise ValueError(f"SynthConfig.test_fraction must be in [0, 1), got {self.test_fraction}")


def split_indices(cfg: SynthConfig, split: str) -> range:
    """Scene indices of a split: ``train`` gets the first ones, ``test`` the last ``round(test_fraction * n)``."""
    n = int(cfg.num_scenes)
    n_test = int(round(cfg.test_fraction * n))
    if cfg.test_fraction > 0 and n >= 2:
        n_test = min(max(n_test, 1), n - 1)
    if split == "train":
        return range(n - n_test)
    if split == "test":
        return range(n - n_test, n)
    raise ValueError(f"split must be 'train' or 'test', got {split!r}")


def scene_key(kind: str, index: int) -> str:
    return f"synth-{kind}-{index:06d}"


# ====================================================================================================== textures
def _value_noise(table: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Periodic trilinear value noise in [0, 1] (smoothstep-interpolated lattice ``table (n, n, n)``) at ``p (M, 3)``."""
    n = table.shape[0]
    pf = np.floor(p)
    f = p - pf
    f = f * f * (3.0 - 2.0 * f)
    i0 = pf.astype(np.int32) % n
    i1 = (i0 + 1) % n
    flat = table.reshape(-1)
    x0, y0, z0 = i0[:, 0] * (n * n), i0[:, 1] * n, i0[:, 2]
    x1, y1, z1 = i1[:, 0] * (n * n), i1[:, 1] * n, i1[:, 2]
    fx, fy, fz = f[:, 0], f[:, 1], f[:, 2]
    c00 = flat[x0 + y0 + z0] * (1 - fx) + flat[x1 + y0 + z0] * fx
    c10 = flat[x0 + y1 + z0] * (1 - fx) + flat[x1 + y1 + z0] * fx
    c01 = flat[x0 + y0 + z1] * (1 - fx) + flat[x1 + y0 + z1] * fx
    c11 = flat[x0 + y1 + z1] * (1 - fx) + flat[x1 + y1 + z1] * fx
    c0 = c00 * (1 - fy) + c10 * fy
    c1 = c01 * (1 - fy) + c11 * fy
    return c0 * (1 - fz) + c1 * fz


def _fade(footprint: np.ndarray, period: float) -> np.ndarray:
    """How much of a pattern of ``period`` metres to replace by its mean, for a pixel footprint (metres): 0 while a
    period spans more than ~6 pixels, 1 once it spans 2 or fewer (analytic band-limiting against aliasing)."""
    return np.clip((footprint * (1.0 / period) - 0.15) * (1.0 / 0.35), 0.0, 1.0)


def _fbm(table: np.ndarray, p: np.ndarray, octaves: int, footprint: Optional[np.ndarray] = None, period: float = 1.0):
    """Fractal value noise in [0, 1]; ``p`` is in lattice units (one lattice cell = ``period`` metres for octave 0).
    Octaves finer than the pixel ``footprint`` fade to their mean 0.5."""
    total = np.zeros(len(p), dtype=np.float32)
    amp, norm = 1.0, 0.0
    for o in range(octaves):
        keep = 1.0 if footprint is None else 1.0 - _fade(footprint, period / 2.0**o)
        if footprint is not None and not np.any(keep > 0):
            total += amp * 0.5
        else:
            total += amp * (0.5 + keep * (_value_noise(table, p * np.float32(2.0**o) + np.float32(17.31 * o)) - 0.5))
        norm += amp
        amp *= 0.5
    return total / np.float32(norm)


@dataclass
class Material:
    """A solid procedural texture, evaluated at points in the owning primitive's local frame (metres)."""

    kind: str  # solid | checker | tiles | stripes | noise | gradient
    c1: np.ndarray
    c2: np.ndarray
    scale: float  # pattern period in metres
    axis: np.ndarray  # unit direction of stripes / gradients
    table: np.ndarray  # noise lattice (float32)
    detail: float  # amplitude of the fine multiplicative noise
    detail_freq: float  # its frequency (1/m)
    warp: float  # noise warp of stripes

    def albedo(self, q: np.ndarray, footprint: Optional[np.ndarray] = None) -> np.ndarray:
        """Albedo ``(M, 3)`` at local points ``q (M, 3)``; ``footprint (M,)``: pixel size on the surface (metres),
        used to fade patterns that the pixel grid cannot resolve (``None``: no filtering)."""
        q = np.asarray(q, dtype=np.float32)
        fp = None if footprint is None else np.asarray(footprint, dtype=np.float32)
        k, P = self.kind, self.scale
        c1, c2 = self.c1.astype(np.float32), self.c2.astype(np.float32)
        if k == "tiles":
            u = q * np.float32(1.0 / P)
            cell = np.floor(u)
            frac = u - cell
            grout = ((frac < 0.06) | (frac > 0.94)).any(1).astype(np.float32)
            tint = 0.75 + 0.5 * _value_noise(self.table, cell + np.float32(0.5))  # one random value per tile
            if fp is not None:
                tint = tint + _fade(fp, P) * (1.0 - tint)
                g = _fade(fp, 0.25 * P)
                grout = grout + g * (0.23 - grout)  # the grout covers ~23 % of a tile's area
            col = c1[None] * (tint * (1.0 - grout))[:, None] + c2[None] * grout[:, None]
            return self._detail(col, q, fp)
        if k == "solid":
            w = np.zeros(len(q), dtype=np.float32)
        elif k == "checker":
            w = (np.floor(q * np.float32(1.0 / P)).astype(np.int64).sum(1) % 2).astype(np.float32)
        elif k == "stripes":
            s = q @ self.axis.astype(np.float32) / np.float32(P)
            if self.warp:
                s = s + np.float32(self.warp) * _fbm(self.table, q * np.float32(1.5 / P), 2)
            w = ((s - np.floor(s)) < 0.5).astype(np.float32)
        elif k == "noise":
            w = np.clip((_fbm(self.table, q * np.float32(1.0 / P), 3, fp, P) - 0.5) * 2.2 + 0.5, 0.0, 1.0)
        elif k == "gradient":
            w = 0.5 + 0.5 * np.sin(np.float32(2 * np.pi / P) * (q @ self.axis.astype(np.float32)))
        else:  # pragma: no cover - guarded by the generator
            raise ValueError(f"unknown material kind {k!r}")
        if fp is not None and k in ("checker", "stripes", "gradient"):
            w = w + _fade(fp, P) * (0.5 - w)
        col = c1[None] * (1 - w[:, None]) + c2[None] * w[:, None]
        return self._detail(col, q, fp)

    def _detail(self, col: np.ndarray, q: np.ndarray, fp: Optional[np.ndarray]) -> np.ndarray:
        if self.detail <= 0:
            return col
        f = np.float32(self.detail_freq)
        n = _fbm(self.table, q * f + np.float32(5.7), 2, fp, 1.0 / self.detail_freq)
        return col * (1.0 + np.float32(self.detail) * (2.0 * n - 1.0))[:, None]


_MATERIAL_KINDS = ("solid", "checker", "tiles", "stripes", "noise", "gradient")
_MATERIAL_P = (0.10, 0.2, 0.15, 0.2, 0.2, 0.15)


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    """A random albedo: hue uniform, moderate saturation, value in [0.25, 0.9]."""
    h = rng.random()
    s = rng.uniform(0.1, 0.8)
    v = rng.uniform(0.25, 0.9)
    k = (np.array([5.0, 3.0, 1.0]) + h * 6.0) % 6.0
    return v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def random_material(rng: np.random.Generator, scale_range: Tuple[float, float] = (0.15, 0.8)) -> Material:
    kind = str(rng.choice(_MATERIAL_KINDS, p=_MATERIAL_P))
    c1 = _random_colour(rng)
    c2 = _random_colour(rng) if rng.random() < 0.6 else np.clip(c1 * rng.uniform(0.25, 0.6), 0, 1)
    if kind == "tiles":
        c2 = np.clip(c1 * rng.uniform(0.2, 0.5), 0, 1) if rng.random() < 0.5 else np.full(3, rng.uniform(0.6, 0.9))
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    return Material(
        kind=kind,
        c1=c1,
        c2=c2,
        scale=float(rng.uniform(*scale_range)),
        axis=axis,
        table=rng.random((16, 16, 16)).astype(np.float32),
        detail=float(rng.uniform(0.05, 0.2)),
        detail_freq=float(rng.uniform(4.0, 12.0)),
        warp=float(rng.uniform(0.0, 1.5)) if rng.random() < 0.5 else 0.0,
    )


# ==================================================================================================== primitives
class Primitive:
    """Analytic surface. ``intersect`` -> (first ray parameter > eps or inf, int aux); ``surface`` -> normals,
    local texture coordinates and material ids at hit points."""

    kind = "primitive"

    def intersect(self, o: np.ndarray, d: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def surface(self, p: np.ndarray, aux: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        raise NotImplementedError

    def bound(self) -> Optional[Tuple[np.ndarray, float]]:
        """A bounding sphere ``(centre, radius)`` used to cull rays, or ``None`` (test every ray)."""
        return None


def _safe_inv(d: np.ndarray) -> np.ndarray:
    d = np.where(np.abs(d) < 1e-30, np.where(d < 0, -1e-30, 1e-30), d)
    return 1.0 / d


@dataclass
class RoomBox(Primitive):
    """The inside of an axis-aligned box (seen from within). Faces: 0/1 = x lo/hi, 2 = floor, 3 = ceiling, 4/5 = z."""

    lo: np.ndarray
    hi: np.ndarray
    materials: Tuple[int, ...]  # one material id per face
    kind = "room"

    def intersect(self, o, d):
        inv = _safe_inv(d)
        t = np.where(d > 0, (self.hi - o) * inv, (self.lo - o) * inv)  # (R, 3) exit parameter per axis
        axis = np.argmin(t, axis=1)
        tt = np.take_along_axis(t, axis[:, None], 1)[:, 0]
        face = 2 * axis + (np.take_along_axis(d, axis[:, None], 1)[:, 0] > 0)
        return np.where(tt > _EPS, tt, np.inf), face.astype(np.int64)

    def surface(self, p, aux):
        axis = aux // 2
        n = np.zeros_like(p)
        n[np.arange(len(p)), axis] = np.where(aux % 2 == 1, -1.0, 1.0)  # inward normals
        mats = np.asarray(self.materials, dtype=np.int64)[aux]
        return n, p, mats


def _yaw_matrix(yaw: float) -> np.ndarray:
    """Columns = the local axes in world coordinates (rotation about +y)."""
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


@dataclass
class Box(Primitive):
    """A box of half-sizes ``half`` centred at ``center``, rotated by ``yaw`` about +y."""

    center: np.ndarray
    half: np.ndarray
    yaw: float
    material: int
    kind = "box"

    @property
    def rot(self) -> np.ndarray:
        return _yaw_matrix(self.yaw)

    def to_local(self, p: np.ndarray) -> np.ndarray:
        return (p - self.center) @ self.rot

    def intersect(self, o, d):
        rot = self.rot
        ol = (o - self.center) @ rot
        dl = d @ rot
        inv = _safe_inv(dl)
        t1 = (-self.half - ol) * inv
        t2 = (self.half - ol) * inv
        tmin = np.minimum(t1, t2)
        tn = tmin.max(1)
        tf = np.maximum(t1, t2).min(1)
        hit = (tn <= tf) & (tn > _EPS)
        axis = tmin.argmax(1)
        face = 2 * axis + (np.take_along_axis(dl, axis[:, None], 1)[:, 0] < 0)  # odd: the +axis face
        return np.where(hit, tn, np.inf), face.astype(np.int64)

    def bound(self):
        return self.center, float(np.linalg.norm(self.half))

    def surface(self, p, aux):
        q = self.to_local(p)
        axis = aux // 2
        nl = np.zeros_like(p)
        nl[np.arange(len(p)), axis] = np.where(aux % 2 == 1, 1.0, -1.0)
        return nl @ self.rot.T, q, np.full(len(p), self.material, dtype=np.int64)


@dataclass
class Sphere(Primitive):
    center: np.ndarray
    radius: float
    material: int
    kind = "sphere"

    def intersect(self, o, d):
        oc = o - self.center
        a = np.einsum("ij,ij->i", d, d)
        b = np.einsum("ij,ij->i", oc, d)
        c = np.einsum("ij,ij->i", oc, oc) - self.radius**2
        disc = b * b - a * c
        with np.errstate(invalid="ignore"):
            t = (-b - np.sqrt(disc)) / a
        ok = (disc >= 0) & (t > _EPS)
        return np.where(ok, t, np.inf), np.zeros(len(d), dtype=np.int64)

    def bound(self):
        return self.center, float(self.radius)

    def surface(self, p, aux):
        q = p - self.center
        return q / self.radius, q, np.full(len(p), self.material, dtype=np.int64)


@dataclass
class Cylinder(Primitive):
    """A vertical capped cylinder: axis through ``(cx, cz)``, from ``y0`` to ``y1``, radius ``radius``."""

    cx: float
    cz: float
    y0: float
    y1: float
    radius: float
    material: int
    kind = "cylinder"

    def intersect(self, o, d):
        ox, oy, oz = o[:, 0] - self.cx, o[:, 1], o[:, 2] - self.cz
        dx, dy, dz = d[:, 0], d[:, 1], d[:, 2]
        r2 = self.radius**2
        with np.errstate(invalid="ignore", divide="ignore"):
            a = dx * dx + dz * dz
            b = ox * dx + oz * dz
            c = ox * ox + oz * oz - r2
            disc = b * b - a * c
            ts = (-b - np.sqrt(disc)) / a
            ys = oy + ts * dy
            side = (disc >= 0) & (a > 1e-30) & (ts > _EPS) & (ys >= self.y0) & (ys <= self.y1)
            ts = np.where(side, ts, np.inf)
            best, aux = ts, np.zeros(len(d), dtype=np.int64)
            for cap, yc in ((1, self.y1), (2, self.y0)):
                tc = (yc - oy) / dy
                px, pz = ox + tc * dx, oz + tc * dz
                ok = np.isfinite(tc) & (tc > _EPS) & (px * px + pz * pz <= r2)
                tc = np.where(ok, tc, np.inf)
                better = tc < best
                best = np.where(better, tc, best)
                aux = np.where(better, cap, aux)
        return best, aux

    def bound(self):
        c = np.array([self.cx, 0.5 * (self.y0 + self.y1), self.cz])
        return c, float(math.hypot(self.radius, 0.5 * (self.y1 - self.y0)))

    def surface(self, p, aux):
        q = p - np.array([self.cx, 0.0, self.cz])
        n = np.zeros_like(p)
        n[:, 0] = q[:, 0] / self.radius
        n[:, 2] = q[:, 2] / self.radius
        n[aux == 1] = (0.0, 1.0, 0.0)
        n[aux == 2] = (0.0, -1.0, 0.0)
        return n, q, np.full(len(p), self.material, dtype=np.int64)


# ========================================================================================================= scene
@dataclass
class SynthScene:
    """One generated scene before encoding: geometry, lighting, cameras and trajectory."""

    key: str
    kind: str
    index: int
    seed: int
    primitives: List[Primitive]  # primitives[0] is the room
    materials: List[Material]
    light_dir: np.ndarray  # unit vector towards the light
    light_colour: np.ndarray
    ambient: float
    cameras: np.ndarray  # (N, 6) float32
    poses: np.ndarray  # (N, 12) float32, c2w OpenCV
    target: Optional[np.ndarray] = None  # orbit centre (orbit kind)
    info: Dict = field(default_factory=dict)

    @property
    def num_views(self) -> int:
        return len(self.poses)


@dataclass
class RenderedScene:
    scene: SynthScene
    images: np.ndarray  # (N, H, W, 3) uint8
    depth: np.ndarray  # (N, H, W) float32 z-depth
    prim_id: np.ndarray  # (N, H, W) int16: index into scene.primitives hit by the pixel-centre ray


def _look_rotation(forward: np.ndarray, roll: float = 0.0) -> np.ndarray:
    """Camera-to-world rotation (columns x right, y down, z forward) for a forward vector, world +y up."""
    z = forward / np.linalg.norm(forward)
    x = np.cross(z, _UP)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    if roll:
        c, s = math.cos(roll), math.sin(roll)
        x, y = c * x + s * y, -s * x + c * y
    return np.stack([x, y, z], axis=1)


def _pack_poses(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    return np.concatenate([R.reshape(len(R), 9), t.reshape(len(t), 3)], axis=1).astype(np.float32)


def _intrinsics(rng: np.random.Generator, cfg: SynthConfig, n: int) -> np.ndarray:
    h, w = cfg.hw
    fov = math.radians(rng.uniform(*cfg.fov_deg))
    f = w / (2.0 * math.tan(fov / 2.0))
    return np.tile(np.array([w, h, f, f, w / 2.0, h / 2.0], dtype=np.float32), (n, 1))


def _smooth_signal(rng: np.random.Generator, s: np.ndarray, amp: float, freq: Tuple[float, float] = (0.3, 1.2)):
    """A gentle random signal over the normalized path parameter ``s`` in [0, 1] (two sinusoids)."""
    out = np.zeros_like(s)
    for k in range(2):
        f = rng.uniform(*freq) * (1 + k)
        out += (
            (amp / (1 + k))
            * math.copysign(1, rng.random() - 0.5)
            * np.sin(2 * np.pi * f * s + rng.uniform(0, 2 * np.pi))
        )
    return out


def _walk_path(rng: np.random.Generator, lo: np.ndarray, hi: np.ndarray, n: int):
    """A quadratic Bezier path in the floor plane inside ``[lo + margin, hi - margin]``: positions (n, 2), tangents."""
    margin = 0.9
    a = np.array([lo[0] + margin, lo[2] + margin])
    b = np.array([hi[0] - margin, hi[2] - margin])
    span = b - a
    length = rng.uniform(0.04, 0.09) * max(n - 1, 1)
    length = min(length, 0.9 * float(np.linalg.norm(span)))
    long_axis = 0.0 if span[0] >= span[1] else 0.5 * np.pi  # angle of the room's long axis in the (x, z) plane
    p0 = p1 = pc = None
    for _ in range(200):
        q0 = a + rng.random(2) * span
        if rng.random() < 0.7:  # mostly walk along the room's long axis, towards the far end
            th = long_axis + np.pi * rng.integers(2) + math.radians(rng.uniform(-40, 40))
        else:
            th = rng.uniform(0, 2 * np.pi)
        q1 = q0 + length * np.array([math.cos(th), math.sin(th)])
        perp = np.array([-math.sin(th), math.cos(th)])
        qc = 0.5 * (q0 + q1) + perp * rng.uniform(-0.3, 0.3) * length
        end_dir = (q1 - qc) / max(float(np.linalg.norm(q1 - qc)), 1e-9)
        ahead = q1 + end_dir * rng.uniform(2.0, 3.5)  # keep open space in front of the last view
        if (
            all(((q >= a) & (q <= b)).all() for q in (q1, qc))
            and ((ahead >= lo[[0, 2]] + 0.2) & (ahead <= hi[[0, 2]] - 0.2)).all()
        ):
            p0, p1, pc = q0, q1, qc
            break
    if p0 is None:  # fallback: along the long axis, from one end of the walkable area
        k = int(span[1] > span[0])
        ax = np.eye(2)[k]
        length = min(length, max(float(span[k]) - 2.0, 0.3 * float(span[k])))
        p0 = 0.5 * (a + b)
        p0[k] = a[k]
        p1 = p0 + length * ax
        pc = 0.5 * (p0 + p1)
    # slightly varying speed
    speed = 1.0 + _smooth_signal(rng, np.linspace(0, 1, n), 0.15)
    s = np.concatenate([[0.0], np.cumsum(speed[:-1])])
    s = s / s[-1] if s[-1] > 0 else np.linspace(0, 1, n)
    s = s[:, None]
    pos = (1 - s) ** 2 * p0 + 2 * (1 - s) * s * pc + s**2 * p1
    tan = 2 * (1 - s) * (pc - p0) + 2 * s * (p1 - pc)
    if n == 1 or np.linalg.norm(tan, axis=1).min() < 1e-9:
        tan = np.tile(p1 - p0 if np.linalg.norm(p1 - p0) > 0 else np.array([0.0, 1.0]), (n, 1))
    return pos, tan / np.linalg.norm(tan, axis=1, keepdims=True)


def _footprint_clear(xz: np.ndarray, radius: float, path: np.ndarray, clearance: float) -> bool:
    if path is None or len(path) == 0:
        return True
    return bool(np.linalg.norm(path - xz, axis=1).min() > radius + clearance)


def _random_object(rng, materials, xz, floor_y, max_h, size_scale=1.0, allow_float=False):
    """A box, sphere or cylinder standing at ``xz``; returns (primitive, footprint radius, top height)."""
    kind = rng.choice(["box", "sphere", "cylinder"], p=[0.45, 0.25, 0.30])
    mid = len(materials)
    materials.append(random_material(rng, (0.08, 0.5)))
    if kind == "box":
        half = np.array([rng.uniform(0.15, 0.7), rng.uniform(0.15, 1.0), rng.uniform(0.15, 0.7)]) * size_scale
        half[1] = min(half[1], max_h / 2)
        c = np.array([xz[0], floor_y + half[1], xz[1]])
        return Box(c, half, float(rng.uniform(0, np.pi / 2)), mid), float(np.hypot(half[0], half[2])), c[1] + half[1]
    if kind == "sphere":
        r = min(rng.uniform(0.15, 0.6) * size_scale, max_h / 2)
        y = floor_y + r
        if allow_float and rng.random() < 0.3:
            y = rng.uniform(floor_y + r, floor_y + max_h - r)
        return Sphere(np.array([xz[0], y, xz[1]]), float(r), mid), float(r), y + r
    r = rng.uniform(0.1, 0.45) * size_scale
    h = min(rng.uniform(0.3, 2.2) * size_scale, max_h)
    if allow_float and rng.random() < 0.25:
        h = max_h  # a floor-to-ceiling pillar
    return Cylinder(float(xz[0]), float(xz[1]), floor_y, floor_y + h, float(r), mid), float(r), floor_y + h


def _room_materials(rng, materials) -> Tuple[int, ...]:
    base = len(materials)
    floor = random_material(rng, (0.3, 1.0))
    ceiling = random_material(rng, (0.5, 1.5))
    walls = [random_material(rng, (0.2, 1.2))]
    shared = rng.random() < 0.5
    if not shared:
        walls += [random_material(rng, (0.2, 1.2)) for _ in range(3)]
    materials += [floor, ceiling] + walls
    w = [base + 2 + (0 if shared else k) for k in range(4)]
    # faces: x lo, x hi, floor, ceiling, z lo, z hi
    return (w[0], w[1], base, base + 1, w[2], w[3])


def _lighting(rng):
    az = rng.uniform(0, 2 * np.pi)
    el = math.radians(rng.uniform(35, 75))
    light = np.array([math.cos(el) * math.cos(az), math.sin(el), math.cos(el) * math.sin(az)])
    colour = 1.0 + 0.08 * rng.normal(size=3)
    return light, colour, float(rng.uniform(0.25, 0.45))


def build_room_scene(cfg: SynthConfig, index: int, rng: np.random.Generator) -> SynthScene:
    """A textured box room with objects, seen along a smooth forward walk."""
    n = cfg.views
    size = np.array([rng.uniform(5.0, 10.0), rng.uniform(2.4, 3.6), rng.uniform(6.0, 12.0)])
    lo = np.array([-size[0] / 2, 0.0, -size[2] / 2])
    hi = np.array([size[0] / 2, size[1], size[2] / 2])
    materials: List[Material] = []
    room = RoomBox(lo, hi, _room_materials(rng, materials))

    # camera path
    xz, tan = _walk_path(rng, lo, hi, n)
    s = np.linspace(0.0, 1.0, n)
    eye = rng.uniform(1.2, min(1.8, size[1] - 0.5))
    height = eye + _smooth_signal(rng, s, 0.03)
    yaw = _smooth_signal(rng, s, math.radians(rng.uniform(2, 10)))
    pitch = math.radians(rng.uniform(-12, 5)) + _smooth_signal(rng, s, math.radians(rng.uniform(1, 5)))
    roll = math.radians(rng.uniform(-2, 2)) + _smooth_signal(rng, s, math.radians(1.0))
    heading = np.arctan2(tan[:, 0], tan[:, 1]) + yaw  # angle from +z towards +x
    fwd = np.stack([np.cos(pitch) * np.sin(heading), np.sin(pitch), np.cos(pitch) * np.cos(heading)], axis=1)
    R = np.stack([_look_rotation(fwd[k], roll[k]) for k in range(n)])
    t = np.stack([xz[:, 0], height, xz[:, 1]], axis=1)

    # objects, kept clear of the path; half of them placed ahead of the walk so that they show up in the views
    path = xz  # camera positions (in the floor plane) that objects must keep clear of
    end, end_dir = xz[-1], tan[-1]
    prims: List[Primitive] = [room]
    k_obj = int(rng.integers(cfg.num_objects[0], cfg.num_objects[1] + 1))
    for _ in range(k_obj):
        for _try in range(40):
            if rng.random() < 0.5:
                side = np.array([-end_dir[1], end_dir[0]])
                p = end + end_dir * rng.uniform(0.5, 4.0) + side * rng.uniform(-2.0, 2.0)
            else:
                p = np.array([rng.uniform(lo[0], hi[0]), rng.uniform(lo[2], hi[2])])
            obj, rad, _top = _random_object(rng, materials, p, 0.0, size[1], allow_float=True)
            inside = (p - rad > lo[[0, 2]]).all() and (p + rad < hi[[0, 2]]).all()
            if inside and _footprint_clear(p, rad, path, 0.45):
                prims.append(obj)
                break
            materials.pop()
    light, colour, ambient = _lighting(rng)
    return SynthScene(
        key=scene_key("room", index),
        kind="room",
        index=index,
        seed=cfg.seed,
        primitives=prims,
        materials=materials,
        light_dir=light,
        light_colour=colour,
        ambient=ambient,
        cameras=_intrinsics(rng, cfg, n),
        poses=_pack_poses(R, t),
        info={"room_size": size.tolist()},
    )


def build_orbit_scene(cfg: SynthConfig, index: int, rng: np.random.Generator) -> SynthScene:
    """A central object group in a large hall, seen by a camera orbiting it and looking at its centre."""
    n = cfg.views
    materials: List[Material] = []
    room_mats = _room_materials(rng, materials)

    # central object (optionally with something on top) and satellites around it
    centre, r_c, top = _random_object(rng, materials, np.zeros(2), 0.0, 1.4, size_scale=1.3)
    group: List[Primitive] = [centre]
    if isinstance(centre, Box) and rng.random() < 0.5:
        obj, _r2, top = _random_object(rng, materials, rng.uniform(-0.1, 0.1, 2), top, 0.8, size_scale=0.6)
        group.append(obj)
    extent = r_c
    for _ in range(int(rng.integers(1, 5))):
        ang, rad = rng.uniform(0, 2 * np.pi), r_c + rng.uniform(0.1, 0.7)
        obj, r_s, _t2 = _random_object(
            rng, materials, rad * np.array([math.cos(ang), math.sin(ang)]), 0.0, 0.9, size_scale=0.5
        )
        group.append(obj)
        extent = max(extent, rad + r_s)
    target = np.array([0.0, 0.5 * top, 0.0])

    # orbit: radius a few times the group's extent, slowly varying radius and elevation
    s = np.linspace(0.0, 1.0, n)
    r0 = max((extent + 0.5) / 0.9, rng.uniform(1.4, 2.4) * max(extent, 0.6 * top, 0.6))
    radius = r0 * (1.0 + _smooth_signal(rng, s, 0.06))
    span = math.radians(rng.uniform(90, 360))
    if span > math.radians(300):
        span = 2 * np.pi * (n - 1) / max(n, 1)  # a full circle without repeating the first view
    phi = rng.uniform(0, 2 * np.pi) + math.copysign(1, rng.random() - 0.5) * span * s
    el = math.radians(rng.uniform(8, 35)) + _smooth_signal(rng, s, math.radians(4))
    el = np.clip(el, math.radians(3), math.radians(45))
    cam = target + np.stack(
        [radius * np.cos(el) * np.cos(phi), radius * np.sin(el), radius * np.cos(el) * np.sin(phi)], axis=1
    )
    r_max = float(radius.max())

    # the hall around it
    half = max(rng.uniform(5.5, 10.0), r_max + 2.5)
    size = np.array([2 * half * rng.uniform(0.85, 1.0), max(rng.uniform(4.5, 8.0), cam[:, 1].max() + 1.0), 2 * half])
    lo = np.array([-size[0] / 2, 0.0, -size[2] / 2])
    hi = np.array([size[0] / 2, size[1], size[2] / 2])
    prims: List[Primitive] = [RoomBox(lo, hi, room_mats)] + group
    R = np.stack([_look_rotation(target - cam[k]) for k in range(n)])

    # outer objects beyond the orbit
    r_in = r_max + 0.8
    r_out = float(min(size[0], size[2]) / 2 - 0.4)
    k_obj = int(rng.integers(cfg.num_objects[0], cfg.num_objects[1] + 1))
    for _ in range(k_obj):
        for _try in range(40):
            ang = rng.uniform(0, 2 * np.pi)
            p = rng.uniform(r_in, max(r_in, r_out)) * np.array([math.cos(ang), math.sin(ang)])
            obj, rad, _t = _random_object(rng, materials, p, 0.0, size[1], size_scale=1.5, allow_float=True)
            inside = (p - rad > lo[[0, 2]]).all() and (p + rad < hi[[0, 2]]).all()
            if inside and np.linalg.norm(p) - rad > r_max + 0.3:
                prims.append(obj)
                break
            materials.pop()
    light, colour, ambient = _lighting(rng)
    return SynthScene(
        key=scene_key("orbit", index),
        kind="orbit",
        index=index,
        seed=cfg.seed,
        primitives=prims,
        materials=materials,
        light_dir=light,
        light_colour=colour,
        ambient=ambient,
        cameras=_intrinsics(rng, cfg, n),
        poses=_pack_poses(R, cam),
        target=target,
        info={"room_size": size.tolist(), "orbit_radius": float(r0)},
    )


def scene_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(index)])


def build_scene(cfg: SynthConfig, index: int) -> SynthScene:
    """Geometry, lighting and cameras of scene ``index`` (no rendering)."""
    rng = scene_rng(cfg.seed, index)
    p = None if cfg.kind_weights is None else np.asarray(cfg.kind_weights, dtype=np.float64)
    kind = cfg.kinds[int(rng.choice(len(cfg.kinds), p=None if p is None else p / p.sum()))]
    return build_room_scene(cfg, index, rng) if kind == "room" else build_orbit_scene(cfg, index, rng)


# ===================================================================================================== rendering
def _intersect_culled(prim: Primitive, o: np.ndarray, d: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """``prim.intersect`` on the rays that meet its bounding sphere only (same result, less work)."""
    bound = prim.bound()
    if bound is None:
        return prim.intersect(o, d)
    c, r = bound
    r = r * (1 + 1e-6) + 1e-9
    oc = o - c
    a = np.einsum("ij,ij->i", d, d)
    b = np.einsum("ij,ij->i", oc, d)
    cc = np.einsum("ij,ij->i", oc, oc) - r * r
    cand = np.nonzero((b * b - a * cc >= 0) & ((b < 0) | (cc < 0)))[0]  # meets the sphere ahead of the origin
    t = np.full(len(d), np.inf)
    aux = np.zeros(len(d), dtype=np.int64)
    if len(cand):
        t[cand], aux[cand] = prim.intersect(o[cand], d[cand])
    return t, aux


def cast_rays(prims: Sequence[Primitive], o: np.ndarray, d: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest hit of rays ``o + t d`` (``(R, 3)`` each, ``o`` may be ``(1, 3)``): ``t`` (inf = miss), primitive
    index (-1 = miss) and the primitive's aux code (face)."""
    o = np.broadcast_to(np.asarray(o, dtype=np.float64), d.shape)
    best = np.full(len(d), np.inf)
    pid = np.full(len(d), -1, dtype=np.int64)
    aux = np.zeros(len(d), dtype=np.int64)
    for k, prim in enumerate(prims):
        t, a = _intersect_culled(prim, o, d)
        better = t < best
        best = np.where(better, t, best)
        pid[better] = k
        aux[better] = a[better]
    return best, pid, aux


def _occluded(prims: Sequence[Primitive], o: np.ndarray, d: np.ndarray) -> np.ndarray:
    hit = np.zeros(len(o), dtype=bool)
    for prim in prims:
        t, _ = _intersect_culled(prim, o, d)
        hit |= np.isfinite(t)
    return hit


_CUBE = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=np.float64)


def _screen_rect(bound, cam: np.ndarray, R: np.ndarray, t: np.ndarray) -> Optional[Tuple[int, int, int, int]]:
    """Pixel rows/columns ``(i0, i1, j0, j1)`` whose rays may meet a bounding sphere (conservative), or ``None``."""
    w, h, fx, fy, cx, cy = (float(v) for v in cam)
    H, W = int(round(h)), int(round(w))
    if bound is None:
        return 0, H, 0, W
    c, r = bound
    pc = R.T @ (c - t)
    if pc[2] - r < 1e-3:
        return 0, H, 0, W
    corners = pc + r * _CUBE  # the projection of the enclosing cube contains the sphere's
    u = fx * corners[:, 0] / corners[:, 2] + cx
    v = fy * corners[:, 1] / corners[:, 2] + cy
    j0, j1 = max(int(math.floor(u.min())) - 1, 0), min(int(math.floor(u.max())) + 2, W)
    i0, i1 = max(int(math.floor(v.min())) - 1, 0), min(int(math.floor(v.max())) + 2, H)
    if i0 >= i1 or j0 >= j1:
        return None
    return i0, i1, j0, j1


def _cast_image(
    prims: Sequence[Primitive], cam: np.ndarray, R: np.ndarray, t: np.ndarray, o: np.ndarray, d: np.ndarray
):
    """:func:`cast_rays` for an image's rays ``d (H, W, S, 3)``, each primitive tested in its screen rectangle."""
    H, W, S, _ = d.shape
    best = np.full((H, W, S), np.inf)
    pid = np.full((H, W, S), -1, dtype=np.int64)
    aux = np.zeros((H, W, S), dtype=np.int64)
    for k, prim in enumerate(prims):
        rect = _screen_rect(prim.bound(), cam, R, t)
        if rect is None:
            continue
        i0, i1, j0, j1 = rect
        sub = d[i0:i1, j0:j1].reshape(-1, 3)
        tk, ak = prim.intersect(np.broadcast_to(o, sub.shape), sub)
        shape = (i1 - i0, j1 - j0, S)
        tk, ak = tk.reshape(shape), ak.reshape(shape)
        b = best[i0:i1, j0:j1]
        better = tk < b
        b[better] = tk[better]
        pid[i0:i1, j0:j1][better] = k
        aux[i0:i1, j0:j1][better] = ak[better]
    return best.reshape(-1), pid.reshape(-1), aux.reshape(-1)


def _shade(
    scene: SynthScene,
    o: np.ndarray,
    d: np.ndarray,
    t: np.ndarray,
    pid: np.ndarray,
    aux: np.ndarray,
    shadows: bool,
    pixel_focal: float,
):
    """Linear radiance ``(R, 3)`` of hit points."""
    p = o + t[:, None] * d
    normal = np.zeros_like(p)
    albedo = np.zeros_like(p)
    mats = np.zeros(len(p), dtype=np.int64)
    local = np.zeros_like(p)
    for k in np.unique(pid):
        sel = pid == k
        n_k, q_k, m_k = scene.primitives[k].surface(p[sel], aux[sel])
        normal[sel], local[sel], mats[sel] = n_k, q_k, m_k
    facing = np.einsum("ij,ij->i", normal, d)
    normal[facing > 0] *= -1.0
    # pixel footprint on the surface: distance / focal, stretched by the incidence angle, / supersampling
    cos = np.abs(facing) / np.sqrt(np.einsum("ij,ij->i", d, d))
    footprint = t / (pixel_focal * np.maximum(cos, 0.25))  # t is the z-depth: a pixel spans t / f on a frontal plane
    for m in np.unique(mats):
        sel = mats == m
        albedo[sel] = scene.materials[m].albedo(local[sel], footprint[sel])
    ndl = np.clip(normal @ scene.light_dir, 0.0, None)
    if shadows and len(scene.primitives) > 1:
        lit = np.nonzero(ndl > 0)[0]
        if len(lit):
            o_s = p[lit] + 1e-4 * normal[lit]
            d_s = np.broadcast_to(scene.light_dir, o_s.shape)
            ndl[lit[_occluded(scene.primitives[1:], o_s, d_s)]] = 0.0
    sky = 0.5 + 0.5 * normal[:, 1]  # hemispherical ambient: brighter on upward faces
    amb = scene.ambient * (0.6 + 0.4 * sky)
    diffuse = (1.0 - scene.ambient) * ndl
    return albedo * (amb[:, None] + diffuse[:, None] * scene.light_colour[None])


def _camera_rays(cam: np.ndarray, pose: np.ndarray, offsets: np.ndarray):
    """World rays of one view for sub-pixel ``offsets (S, 2)``: origin ``(1, 3)``, directions ``(H, W, S, 3)`` whose
    camera-z component is 1 (so the ray parameter is the z-depth), R and t (float64)."""
    w, h, fx, fy, cx, cy = (float(v) for v in cam)
    H, W = int(round(h)), int(round(w))
    jj, ii = np.meshgrid(np.arange(W, dtype=np.float64), np.arange(H, dtype=np.float64))
    u = (jj[..., None] + offsets[:, 0] - cx) / fx  # (H, W, S)
    v = (ii[..., None] + offsets[:, 1] - cy) / fy
    dc = np.stack([u, v, np.ones_like(u)], axis=-1)
    R = pose[:9].astype(np.float64).reshape(3, 3)
    t = pose[9:12].astype(np.float64)
    return t[None], dc @ R.T, R, t


def render_scene(scene: SynthScene, supersample: int = 1, shadows: bool = True) -> RenderedScene:
    """Render every view: uint8 images (colours averaged over ``supersample``^2 samples), exact pixel-centre z-depth
    and the primitive hit by each pixel-centre ray."""
    images, depths, pids = [], [], []
    s = int(supersample)
    sub = (np.arange(s) + 0.5) / s
    offsets = np.stack(np.meshgrid(sub, sub), -1).reshape(-1, 2)  # (S, 2) (x, y) offsets within the pixel
    centre = np.array([[0.5, 0.5]])
    for cam, pose in zip(scene.cameras, scene.poses):
        o, d, R, t = _camera_rays(cam, pose, centre)
        H, W = d.shape[:2]
        hit_t, pid, aux = _cast_image(scene.primitives, cam, R, t, o, d)
        if not np.isfinite(hit_t).all():  # pragma: no cover - closed scenes
            raise RuntimeError(f"{scene.key}: {int((~np.isfinite(hit_t)).sum())} rays escaped the scene")
        depths.append(hit_t.reshape(H, W).astype(np.float32))
        pids.append(pid.reshape(H, W).astype(np.int16))
        if s > 1:
            o, d, R, t = _camera_rays(cam, pose, offsets)
            hit_t, pid, aux = _cast_image(scene.primitives, cam, R, t, o, d)
            hit_t = np.where(np.isfinite(hit_t), hit_t, 0.0)
        rad = (
            _shade(scene, o, d.reshape(-1, 3), hit_t, pid, aux, shadows, float(cam[2]) * s)
            .reshape(H, W, s * s, 3)
            .mean(axis=2)
        )
        images.append(np.clip(np.clip(rad, 0.0, 1.0) ** (1 / 2.2) * 255.0 + 0.5, 0, 255).astype(np.uint8))
    return RenderedScene(scene, np.stack(images), np.stack(depths), np.stack(pids))


def render_synthetic(cfg: SynthConfig, index: int) -> RenderedScene:
    """Build and render scene ``index``: arrays before encoding."""
    return render_scene(build_scene(cfg, index), cfg.supersample, cfg.shadows)


def to_raw_scene(r: RenderedScene, image_format: str = "png", with_depth: bool = True):
    """Encode a rendered scene as a :class:`~zipsplat_ns.data.scene.RawScene`."""
    from zipsplat_ns.data.depth_codec import encode_depth
    from zipsplat_ns.data.images import encode_image
    from zipsplat_ns.data.scene import RawScene

    sc = r.scene
    images = [encode_image(im, image_format) for im in r.images]
    depths = ranges = None
    if with_depth:
        enc = [encode_depth(d) for d in r.depth]
        depths = [e[0] for e in enc]
        ranges = [(float(e[1][0]), float(e[1][1])) for e in enc]
    meta = {"source": "zipsplat_ns.synth", "kind": sc.kind, "seed": int(sc.seed), "index": int(sc.index)}
    return RawScene(
        key=sc.key,
        cameras=np.ascontiguousarray(sc.cameras, dtype=np.float32),
        poses=np.ascontiguousarray(sc.poses, dtype=np.float32),
        images=images,
        depths=depths,
        depth_ranges=ranges,
        meta=meta,
    )


def generate_scene(cfg: SynthConfig, index: int):
    """Scene ``index`` of ``cfg`` as an encoded :class:`~zipsplat_ns.data.scene.RawScene` (deterministic)."""
    return to_raw_scene(render_synthetic(cfg, index), cfg.image_format, cfg.with_depth)


# ======================================================================================================= writing
def _iter_generated(cfg: SynthConfig, indices: Sequence[int]):
    """Generated scenes in index order; with ``cfg.num_workers`` > 0, from a process pool that works a bounded
    number of scenes ahead (a crashed worker raises ``BrokenProcessPool`` instead of hanging)."""
    if cfg.num_workers <= 0 or len(indices) <= 1:
        for i in indices:
            yield generate_scene(cfg, i)
        return
    import multiprocessing as mp
    from collections import deque
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(cfg.num_workers, mp_context=mp.get_context("spawn")) as ex:
        pending: deque = deque()
        it = iter(indices)
        try:
            for i in it:
                pending.append(ex.submit(generate_scene, cfg, i))
                if len(pending) >= 2 * cfg.num_workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()


def write_synthetic_shards(
    out_dir: Union[str, Path],
    cfg: SynthConfig,
    split: str = "train",
    indices: Optional[Sequence[int]] = None,
    progress: bool = True,
    overwrite: bool = False,
) -> List[str]:
    """Generate the scenes of ``split`` (or the given ``indices``) into the shard directory ``out_dir``.

    Returns the scene keys written. The shard writer stages everything and moves shards and ``index.json`` into
    place only on success; an ``out_dir`` that already holds shards needs ``overwrite=True``.
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from zipsplat_ns.data.shards import ShardWriter

    idx = list(split_indices(cfg, split) if indices is None else indices)
    keys: List[str] = []
    out_dir = Path(out_dir)
    scenes = _iter_generated(cfg, idx)  # a generator: its pool shuts down when it is closed or exhausted
    columns = (
        TextColumn(f"synth {split}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    t0 = time.perf_counter()
    with (
        Progress(*columns, disable=not progress, transient=False) as bar,
        ShardWriter(out_dir, shard_size_mb=cfg.shard_size_mb, overwrite=overwrite) as writer,
    ):
        task = bar.add_task("synth", total=len(idx), rate="")
        for k, scene in enumerate(scenes, 1):
            writer.add(scene)
            keys.append(scene.key)
            rate = k / max(time.perf_counter() - t0, 1e-9)
            bar.update(task, advance=1, rate=f"{rate:.2f} scenes/s")
    return keys


def synth_main(
    output: Path,
    num_scenes: int = 256,
    views: int = 32,
    size: int = 128,
    seed: int = 0,
    test_fraction: float = 0.1,
    num_workers: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    **overrides,
) -> Dict[str, List[str]]:
    """Write ``output/train-scenes/`` and ``output/test-scenes/`` (the entry point of ``zipsplat-ns synth``).

    Extra keyword arguments override :class:`SynthConfig` fields. Returns the keys written per split.
    """
    cfg = SynthConfig(
        seed=seed,
        num_scenes=num_scenes,
        views=views,
        size=size,
        test_fraction=test_fraction,
        num_workers=num_workers,
        **overrides,
    )
    output = Path(output)
    out: Dict[str, List[str]] = {}
    for split in ("train", "test"):
        out[split] = write_synthetic_shards(
            output / f"{split}-scenes", cfg, split, progress=progress, overwrite=overwrite
        )
    return out


__all__ = [
    "Box",
    "Cylinder",
    "Material",
    "RenderedScene",
    "RoomBox",
    "Sphere",
    "SynthConfig",
    "SynthScene",
    "build_scene",
    "cast_rays",
    "generate_scene",
    "render_scene",
    "render_synthetic",
    "scene_key",
    "split_indices",
    "synth_main",
    "to_raw_scene",
    "write_synthetic_shards",
]
