"""Conversions between our cameras (OpenCV camera-to-world) and nerfstudio ``Cameras`` (OpenGL camera-to-world).

This is the one place where the two conventions meet.

- Camera axes: OpenCV is x right, y down, z forward; nerfstudio/OpenGL is x right, y up, z back. Converting a c2w
  negates the camera's y and z axes, i.e. right-multiplies the rotation by ``diag(1, -1, -1)``.
- World axes are left alone by default (a dataset's world frame is whatever it is). With ``y_up_world=True`` the world
  is also flipped by ``diag(1, -1, -1)``: our reference-camera frame (y down, z forward) becomes nerfstudio's viewer
  frame, y up, with the reference camera at the origin looking down -z. Gaussians shown in that world must be flipped
  the same way (:func:`flip_world_points`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Tuple

import torch
from torch import Tensor

from zipsplat_ns.camera import Camera
from zipsplat_ns.pose import Pose

if TYPE_CHECKING:  # nerfstudio is only imported by the functions that need it
    from nerfstudio.cameras.cameras import Cameras

_FLIP = (1.0, -1.0, -1.0)


def _flip(dtype, device) -> Tensor:
    return torch.tensor(_FLIP, dtype=dtype, device=device)


def opencv_to_opengl_c2w(c2w: Tensor, *, y_up_world: bool = False) -> Tensor:
    """``(..., 3|4, 4)`` OpenCV camera-to-world -> OpenGL camera-to-world ``(..., 3, 4)``."""
    out = c2w[..., :3, :4].clone()
    f = _flip(c2w.dtype, c2w.device)
    out[..., :3, :3] = out[..., :3, :3] * f  # negate camera y and z axes (columns)
    if y_up_world:
        out = out * f[:, None]  # negate world y and z (rows), rotation and translation alike
    return out


def opengl_to_opencv_c2w(c2w: Tensor, *, y_up_world: bool = False) -> Tensor:
    """Inverse of :func:`opencv_to_opengl_c2w` (the flips are involutions)."""
    return opencv_to_opengl_c2w(c2w, y_up_world=y_up_world)


def flip_world_points(points: Tensor) -> Tensor:
    """Map points between our reference frame (y down, z forward) and the y-up viewer world."""
    return points * _flip(points.dtype, points.device)


def to_nerfstudio(camera: Camera, pose: Pose, *, y_up_world: bool = False) -> "Cameras":
    """Build nerfstudio ``Cameras`` (perspective, no distortion) from our intrinsics and poses of equal shape."""
    from nerfstudio.cameras.cameras import Cameras, CameraType

    if tuple(camera.shape) != tuple(pose.shape):
        raise ValueError(f"to_nerfstudio: camera shape {tuple(camera.shape)} != pose shape {tuple(pose.shape)}")
    d = camera.data.to(pose.dtype)
    return Cameras(
        camera_to_worlds=opencv_to_opengl_c2w(pose.Rt, y_up_world=y_up_world),
        fx=d[..., 2:3], fy=d[..., 3:4], cx=d[..., 4:5], cy=d[..., 5:6],
        width=d[..., 0:1].round().long(), height=d[..., 1:2].round().long(),
        camera_type=CameraType.PERSPECTIVE,
    )  # fmt: skip


def from_nerfstudio(cameras: "Cameras", *, y_up_world: bool = False, ignore_distortion: bool = False) -> Tuple[Camera, Pose]:
    """Our ``(Camera, Pose)`` from nerfstudio ``Cameras``; only pinhole (perspective) cameras are representable."""
    from nerfstudio.cameras.cameras import CameraType

    types = cameras.camera_type.flatten().unique().tolist()
    if any(t != CameraType.PERSPECTIVE.value for t in types):
        names = [CameraType(t).name for t in types]
        raise ValueError(f"from_nerfstudio: only PERSPECTIVE cameras are supported, got {names}")
    if cameras.distortion_params is not None and not ignore_distortion and bool((cameras.distortion_params != 0).any()):
        raise ValueError(
            "from_nerfstudio: cameras have lens distortion; undistort the images first "
            "(or pass ignore_distortion=True to drop the distortion parameters)"
        )
    c2w = opengl_to_opencv_c2w(cameras.camera_to_worlds, y_up_world=y_up_world)
    pose = Pose.from_Rt(c2w[..., :3, :3], c2w[..., :3, 3])
    data = torch.cat(
        [cameras.width.to(c2w.dtype), cameras.height.to(c2w.dtype), cameras.fx, cameras.fy, cameras.cx, cameras.cy], -1
    )
    return Camera(data), pose


__all__ = [
    "opencv_to_opengl_c2w",
    "opengl_to_opencv_c2w",
    "flip_world_points",
    "to_nerfstudio",
    "from_nerfstudio",
]
