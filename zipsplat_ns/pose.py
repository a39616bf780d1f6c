"""Rigid camera poses, batched: camera-to-world in OpenCV axes (x right, y down, z forward).

This is the only camera convention used inside zipsplat_ns. nerfstudio's OpenGL convention is converted at the
boundary (:mod:`zipsplat_ns.ns_cameras`).
"""

from __future__ import annotations

from typing import Sequence, Union

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from zipsplat_ns.packed import PackedTensor
from zipsplat_ns.tensor_checks import as_float_tensor, check_finite, check_last_dims


class Pose(PackedTensor):
    """SE(3) camera-to-world transform packed as ``[R row-major (9), t (3)]``; ``t`` is the camera centre."""

    __slots__ = ()
    WIDTH = 12

    def __init__(self, data: Float[Tensor, "*batch 12"]):
        data = as_float_tensor(data, "Pose data")
        check_last_dims(data, (12,), "Pose data ([R row-major 9, t 3])")
        check_finite(data, "Pose data")
        self.data = data

    # ----------------------------------------------------------------------------------------------- constructors
    @classmethod
    def from_Rt(cls, R: Float[Tensor, "*batch 3 3"], t: Float[Tensor, "*batch 3"], *, check: bool = True) -> "Pose":
        R = as_float_tensor(R, "R")
        t = as_float_tensor(t, "t").to(R.dtype)
        check_last_dims(R, (3, 3), "R")
        check_last_dims(t, (3,), "t")
        if check and R.device.type != "meta":
            check_finite(R, "R")
            eye = torch.eye(3, dtype=R.dtype, device=R.device)
            err = (R @ R.transpose(-1, -2) - eye).abs().amax() if R.numel() else torch.tensor(0.0)
            tol = 1e-3 if R.dtype in (torch.float32, torch.float64) else 1e-2
            if err > tol:
                raise ValueError(f"Pose.from_Rt: R is not a rotation matrix (|R R^T - I|_max = {float(err):.3g})")
            if R.numel() and (torch.det(R.double()) < 0).any():
                raise ValueError("Pose.from_Rt: R has determinant -1 (a reflection, not a rotation)")
        R, t = torch.broadcast_tensors(R, t[..., None])
        return cls(torch.cat([R.reshape(*R.shape[:-2], 9), t[..., 0]], -1))

    @classmethod
    def from_4x4mat(cls, T: Float[Tensor, "*batch 4 4"], *, check: bool = True) -> "Pose":
        T = as_float_tensor(T, "T")
        if T.ndim >= 2 and tuple(T.shape[-2:]) == (3, 4):
            return cls.from_Rt(T[..., :3, :3], T[..., :3, 3], check=check)
        check_last_dims(T, (4, 4), "T (4x4 camera-to-world)")
        return cls.from_Rt(T[..., :3, :3], T[..., :3, 3], check=check)

    @classmethod
    def identity(cls, batch_shape: Sequence[int] = (), dtype=torch.float32, device=None) -> "Pose":
        d = torch.zeros(*batch_shape, 12, dtype=dtype, device=device)
        d[..., 0] = d[..., 4] = d[..., 8] = 1
        return cls(d)

    @classmethod
    def from_quat_t(cls, quat: Float[Tensor, "*batch 4"], t: Float[Tensor, "*batch 3"]) -> "Pose":
        """From a wxyz quaternion (normalised here) and a translation."""
        return cls.from_Rt(quat_to_rotmat(quat), t, check=False)

    @classmethod
    def orbit(
        cls,
        center: Union[Sequence[float], Tensor],
        radius: float,
        azimuths_deg: Union[Sequence[float], Tensor],
        elevations_deg: Union[Sequence[float], Tensor, float] = 0.0,
    ) -> "Pose":
        """Cameras on a sphere around ``center`` looking at it, with world up = -y (OpenCV: y down).

        Azimuth = elevation = 0 puts the camera on the -z side of the centre looking along +z, i.e. the reference
        view's orientation. Positive elevation moves the camera up (towards -y).
        """
        c = torch.as_tensor(center, dtype=torch.float32)
        az = torch.deg2rad(torch.as_tensor(azimuths_deg, dtype=torch.float32))
        el = torch.deg2rad(torch.as_tensor(elevations_deg, dtype=torch.float32))
        az, el = torch.broadcast_tensors(az, el)
        pos = c + radius * torch.stack(
            [torch.cos(el) * torch.sin(az), -torch.sin(el), -torch.cos(el) * torch.cos(az)], -1
        )
        return cls.look_at(pos, c.expand_as(pos))

    @classmethod
    def look_at(
        cls, eye: Float[Tensor, "*batch 3"], target: Float[Tensor, "*batch 3"], up: Sequence[float] = (0.0, -1.0, 0.0)
    ) -> "Pose":
        """Camera at ``eye`` looking at ``target``; the image's up direction follows ``up`` (default -y)."""
        eye = as_float_tensor(eye, "eye")
        target = as_float_tensor(target, "target").to(eye)
        fwd = F.normalize(target - eye, dim=-1)
        up_t = torch.as_tensor(up, dtype=eye.dtype, device=eye.device).expand_as(fwd)
        right = torch.cross(fwd, up_t, dim=-1)
        degenerate = right.norm(dim=-1, keepdim=True) < 1e-6
        right = torch.where(degenerate, torch.tensor([1.0, 0.0, 0.0], dtype=eye.dtype, device=eye.device), right)
        right = F.normalize(right, dim=-1)
        down = F.normalize(torch.cross(fwd, right, dim=-1), dim=-1)
        R = torch.stack([right, down, fwd], -1)  # columns: camera x, y, z axes in world coordinates
        return cls.from_Rt(R, eye, check=False)

    # ------------------------------------------------------------------------------------------------ properties
    @property
    def R(self) -> Float[Tensor, "*batch 3 3"]:
        return self.data[..., :9].reshape(*self.shape, 3, 3)

    @property
    def t(self) -> Float[Tensor, "*batch 3"]:
        return self.data[..., 9:]

    @property
    def Rt(self) -> Float[Tensor, "*batch 4 4"]:
        """4x4 camera-to-world matrix."""
        T = self.data.new_zeros(*self.shape, 4, 4)
        T[..., :3, :3] = self.R
        T[..., :3, 3] = self.t
        T[..., 3, 3] = 1
        return T

    @property
    def Rt_inv(self) -> Float[Tensor, "*batch 4 4"]:
        """4x4 world-to-camera matrix (OpenCV), the ``viewmat`` that rasterizers take."""
        return self.inv().Rt

    @property
    def quat(self) -> Float[Tensor, "*batch 4"]:
        """Rotation as a unit quaternion ``wxyz`` with ``w >= 0``."""
        return rotmat_to_quat(self.R)

    # ---------------------------------------------------------------------------------------------- operations
    def inv(self) -> "Pose":
        Rinv = self.R.transpose(-1, -2)
        tinv = -(Rinv @ self.t[..., None])[..., 0]
        return Pose.wrap(torch.cat([Rinv.reshape(*self.shape, 9), tinv], -1))  # finite when self is

    def compose(self, other: "Pose") -> "Pose":
        """``self @ other``: apply ``other`` first, then ``self``."""
        R = self.R @ other.R
        t = (self.R @ other.t[..., None])[..., 0] + self.t
        R, t = torch.broadcast_tensors(R, t[..., None])
        return Pose(torch.cat([R.reshape(*R.shape[:-2], 9), t[..., 0]], -1))

    def __matmul__(self, other: "Pose") -> "Pose":
        return self.compose(other)

    def transform(self, points: Float[Tensor, "*batch N 3"]) -> Float[Tensor, "*batch N 3"]:
        """Map points from the camera frame to the world frame (``R p + t``)."""
        points = as_float_tensor(points, "points")
        check_last_dims(points, (3,), "points")
        return points @ self.R.transpose(-1, -2) + self.t[..., None, :]

    def scale_translation(self, s: Union[float, Tensor]) -> "Pose":
        s = torch.as_tensor(s, dtype=self.dtype, device=self.device)
        return Pose(torch.cat([self.data[..., :9], self.data[..., 9:] * s[..., None]], -1))


def quat_to_rotmat(quat: Float[Tensor, "*batch 4"]) -> Float[Tensor, "*batch 3 3"]:
    """Unit quaternion (wxyz, normalised here) to a rotation matrix."""
    q = F.normalize(as_float_tensor(quat, "quat"), dim=-1)
    w, x, y, z = q.unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        -1,
    ).reshape(*q.shape[:-1], 3, 3)  # fmt: skip


def rotmat_to_quat(R: Float[Tensor, "*batch 3 3"]) -> Float[Tensor, "*batch 4"]:
    """Rotation matrix to a wxyz unit quaternion with ``w >= 0`` (numerically stable branch selection)."""
    m = R
    diag = torch.stack([m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]], -1)
    trace = diag.sum(-1)
    # Four candidate solutions; each is accurate where its denominator is largest (Shepperd's method).
    cand = torch.stack(
        [
            torch.stack([1 + trace, m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]], -1),
            torch.stack([m[..., 2, 1] - m[..., 1, 2], 1 + 2 * diag[..., 0] - trace, m[..., 0, 1] + m[..., 1, 0], m[..., 0, 2] + m[..., 2, 0]], -1),
            torch.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 0, 1] + m[..., 1, 0], 1 + 2 * diag[..., 1] - trace, m[..., 1, 2] + m[..., 2, 1]], -1),
            torch.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1], 1 + 2 * diag[..., 2] - trace], -1),
        ],
        -2,
    )  # fmt: skip
    score = torch.stack([trace, diag[..., 0], diag[..., 1], diag[..., 2]], -1)
    best = score.argmax(-1)
    q = torch.gather(cand, -2, best[..., None, None].expand(*best.shape, 1, 4))[..., 0, :]
    q = F.normalize(q, dim=-1)
    return torch.where(q[..., :1] < 0, -q, q)


def ensure_pose(pose: Union[Pose, Tensor], name: str = "pose") -> Pose:
    """Accept a :class:`Pose`, a ``(..., 12)`` packed tensor, or ``(..., 4, 4)`` / ``(..., 3, 4)`` c2w matrices."""
    if isinstance(pose, Pose):
        return pose
    if isinstance(pose, Tensor):
        if pose.ndim >= 2 and tuple(pose.shape[-2:]) in ((4, 4), (3, 4)):
            return Pose.from_4x4mat(pose)
        return Pose(pose)
    raise TypeError(f"{name}: expected a zipsplat_ns.Pose or a c2w tensor, got {type(pose).__name__}")


__all__ = ["Pose", "quat_to_rotmat", "rotmat_to_quat", "ensure_pose"]
