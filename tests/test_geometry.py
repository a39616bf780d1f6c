"""Camera, Pose and the nerfstudio camera conversion."""

from __future__ import annotations

import math

import pytest
import torch

from zipsplat_ns import Camera, Pose
from zipsplat_ns.ns_cameras import flip_world_points, from_nerfstudio, to_nerfstudio
from zipsplat_ns.pose import quat_to_rotmat, rotmat_to_quat


def random_rotations(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return quat_to_rotmat(torch.randn(n, 4, generator=g))


# ------------------------------------------------------------------------------------------------------------ Camera
def test_camera_constructors_agree():
    K = torch.tensor([[100.0, 0, 31.0], [0, 110.0, 25.0], [0, 0, 1]])
    cam = Camera.from_K(K, 64, 48)
    assert cam.data.tolist() == [64, 48, 100, 110, 31, 25]
    torch.testing.assert_close(cam.K, K)
    f = Camera.from_focal(100.0, w=64, h=48)
    assert f.data.tolist() == [64, 48, 100, 100, 32, 24]
    fov = Camera.from_fov(math.radians(90.0), w=64, h=48)
    assert fov.f.tolist() == pytest.approx([32.0, 24.0])
    assert float(fov.hfov) == pytest.approx(math.pi / 2) and float(fov.vfov) == pytest.approx(math.pi / 2)


def test_camera_scale_and_crop():
    cam = Camera.from_focal(100.0, 90.0, w=640, h=480, cx=320.5, cy=240.0)
    s = cam.scale(0.5)
    assert s.data.tolist() == pytest.approx([320, 240, 50, 45, 160.25, 120])
    s2 = cam.scale((0.5, 0.25))
    assert s2.data.tolist() == pytest.approx([320, 120, 50, 22.5, 160.25, 60])
    # Centre crop to 480x480 (negative pad), then resize to 252: what the network preprocessing does.
    sq = cam.crop((-160, 0)).scale(252 / 480)
    assert sq.data.tolist() == pytest.approx([252, 252, 100 * 252 / 480, 90 * 252 / 480, 240.5 * 252 / 480, 126])


def test_camera_batched_indexing_and_stack():
    cams = Camera.stack([Camera.from_focal(float(f), w=10, h=10) for f in (5, 6, 7)])
    assert cams.shape == (3,) and cams[1].data[2] == 6
    grid = Camera(cams.data[None].expand(2, 3, 6))
    assert grid.K.shape == (2, 3, 3, 3) and grid[1, 2].data[2] == 7


@pytest.mark.parametrize(
    "data, match",
    [
        ([64, 48, 0, 100, 32, 24], "focal lengths must be positive"),
        ([64, -1, 100, 100, 32, 24], "image size must be positive"),
        ([64, 48, float("nan"), 100, 32, 24], "non-finite"),
        ([64, 48, 100, 32, 24], r"expected shape \(\.\.\., 6\)"),
    ],
)
def test_camera_rejects_bad_intrinsics(data, match):
    with pytest.raises(ValueError, match=match):
        Camera(torch.tensor(data, dtype=torch.float32))


def test_camera_rejects_bad_fov_and_skew():
    with pytest.raises(ValueError, match="field of view"):
        Camera.from_fov(math.pi, w=10, h=10)
    with pytest.raises(ValueError, match="skew"):
        Camera.from_K(torch.tensor([[100.0, 5.0, 32], [0, 100, 24], [0, 0, 1]]), 64, 48)


# -------------------------------------------------------------------------------------------------------------- Pose
def test_pose_inverse_compose_transform():
    R = random_rotations(4)
    t = torch.randn(4, 3)
    P = Pose.from_Rt(R, t)
    ident = P.compose(P.inv())
    torch.testing.assert_close(ident.Rt, torch.eye(4).expand(4, 4, 4), atol=1e-5, rtol=0)
    pts = torch.randn(4, 7, 3)
    torch.testing.assert_close(P.inv().transform(P.transform(pts)), pts, atol=1e-5, rtol=0)
    torch.testing.assert_close(P.transform(pts), pts @ R.transpose(-1, -2) + t[:, None], atol=1e-6, rtol=0)
    torch.testing.assert_close((P @ P).Rt, P.Rt @ P.Rt, atol=1e-5, rtol=0)
    torch.testing.assert_close(P.Rt_inv, torch.linalg.inv(P.Rt), atol=1e-5, rtol=0)
    P2 = Pose.from_4x4mat(P.Rt)
    torch.testing.assert_close(P2.data, P.data)


def test_quaternion_round_trip_is_canonical():
    R = random_rotations(64, seed=3)
    q = rotmat_to_quat(R)
    assert (q[:, 0] >= 0).all()
    torch.testing.assert_close(quat_to_rotmat(q), R, atol=1e-5, rtol=0)
    # 180-degree rotations (trace = -1) take the non-w branches.
    flips = torch.diag_embed(torch.tensor([[1.0, -1, -1], [-1, 1, -1], [-1, -1, 1]]))
    torch.testing.assert_close(quat_to_rotmat(rotmat_to_quat(flips)), flips, atol=1e-6, rtol=0)


def test_orbit_cameras_look_at_the_centre():
    center = torch.tensor([0.5, -0.2, 3.0])
    poses = Pose.orbit(center, 2.0, [0.0, 90.0, 200.0], [0.0, 20.0, -30.0])
    fwd = poses.R[..., :, 2]  # camera z axis in world coordinates
    to_center = torch.nn.functional.normalize(center - poses.t, dim=-1)
    torch.testing.assert_close(fwd, to_center, atol=1e-5, rtol=0)
    torch.testing.assert_close((poses.t - center).norm(dim=-1), torch.full((3,), 2.0), atol=1e-5, rtol=0)
    # az = el = 0: on the -z side of the centre, looking along +z, image up = world -y.
    torch.testing.assert_close(poses[0].R, torch.eye(3), atol=1e-6, rtol=0)
    # Positive elevation raises the camera (towards -y in OpenCV).
    assert float(poses.t[1, 1]) < float(center[1])


def test_pose_rejects_non_rotations_and_bad_shapes():
    with pytest.raises(ValueError, match="not a rotation matrix"):
        Pose.from_Rt(torch.eye(3) * 2, torch.zeros(3))
    with pytest.raises(ValueError, match="reflection"):
        Pose.from_Rt(torch.diag(torch.tensor([1.0, 1.0, -1.0])), torch.zeros(3))
    with pytest.raises(ValueError, match=r"expected shape \(\.\.\., 4, 4\)"):
        Pose.from_4x4mat(torch.eye(3))
    with pytest.raises(ValueError, match="non-finite"):
        Pose.from_Rt(torch.eye(3), torch.tensor([0.0, float("inf"), 0.0]))


# ---------------------------------------------------------------------------------------------- nerfstudio Cameras
def test_nerfstudio_round_trip_is_exact():
    R = random_rotations(5, seed=7)
    poses = Pose.from_Rt(R, torch.randn(5, 3))
    cams = Camera(torch.tensor([[64.0, 48, 70 + i, 72 + i, 31 + i * 0.5, 23] for i in range(5)]))
    for y_up in (False, True):
        ns = to_nerfstudio(cams, poses, y_up_world=y_up)
        assert ns.camera_to_worlds.shape == (5, 3, 4) and ns.fx.shape == (5, 1)
        cams2, poses2 = from_nerfstudio(ns, y_up_world=y_up)
        torch.testing.assert_close(cams2.data, cams.data)
        torch.testing.assert_close(poses2.data, poses.data, atol=1e-6, rtol=0)
        # and nerfstudio -> ours -> nerfstudio
        ns2 = to_nerfstudio(cams2, poses2, y_up_world=y_up)
        torch.testing.assert_close(ns2.camera_to_worlds, ns.camera_to_worlds)


def test_nerfstudio_rays_hit_the_pixels_we_project_to():
    """A point on the ray nerfstudio generates for pixel (i, j) projects back to that pixel with our pose."""
    R = random_rotations(1, seed=11)[0]
    pose = Pose.from_Rt(R, torch.tensor([0.3, -1.0, 2.0]))
    cam = Camera.from_focal(50.0, 55.0, w=40, h=30, cx=19.0, cy=16.0)
    ns = to_nerfstudio(cam[None], pose[None])
    coords = torch.tensor([[3.5, 7.5], [20.5, 12.5], [28.5, 38.5]])  # (y, x) pixel centres
    rays = ns.generate_rays(camera_indices=0, coords=coords)
    pts = rays.origins + 2.5 * rays.directions
    p_cam = pose.inv().transform(pts)
    uv = p_cam[:, :2] / p_cam[:, 2:] * cam.f + cam.c
    assert (p_cam[:, 2] > 0).all()  # in front of the OpenCV camera
    torch.testing.assert_close(uv, coords.flip(-1), atol=1e-4, rtol=0)


def test_y_up_world_puts_the_reference_camera_at_the_origin_looking_down_minus_z():
    ns = to_nerfstudio(Camera.from_focal(50.0, w=32, h=32)[None], Pose.identity((1,)), y_up_world=True)
    torch.testing.assert_close(ns.camera_to_worlds[0], torch.eye(4)[:3])  # OpenGL identity: looks down -z, y up
    # A point 2 units in front of the OpenCV reference camera sits at z = -2 in the y-up world.
    assert flip_world_points(torch.tensor([0.0, 0.0, 2.0])).tolist() == [0.0, 0.0, -2.0]


def test_from_nerfstudio_rejects_distortion_and_fisheye():
    from nerfstudio.cameras.cameras import Cameras, CameraType

    base = dict(camera_to_worlds=torch.eye(4)[None, :3], fx=50.0, fy=50.0, cx=16.0, cy=16.0, width=32, height=32)
    dist = torch.zeros(1, 6)
    dist[0, 0] = 0.1
    with pytest.raises(ValueError, match="lens distortion"):
        from_nerfstudio(Cameras(**base, distortion_params=dist))
    with pytest.raises(ValueError, match="only PERSPECTIVE"):
        from_nerfstudio(Cameras(**base, camera_type=CameraType.FISHEYE))
