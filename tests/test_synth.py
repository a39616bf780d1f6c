"""The synthetic scene generator: determinism, exact depth, multi-view consistency, occlusion, trajectories, shards."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from zipsplat_ns.data.synth import (
    Box,
    Cylinder,
    RoomBox,
    Sphere,
    SynthConfig,
    build_scene,
    cast_rays,
    generate_scene,
    render_scene,
    split_indices,
    synth_main,
)

SMALL = SynthConfig(seed=7, views=6, size=40, num_scenes=8)


def _rt(pose: np.ndarray):
    p = np.asarray(pose, dtype=np.float64)
    return p[:9].reshape(3, 3), p[9:12]


def backproject(depth: np.ndarray, cam: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """World points ``(H*W, 3)`` of a z-depth map, pixel centres at +0.5, OpenCV c2w pose."""
    _w, _h, fx, fy, cx, cy = (float(v) for v in cam)
    H, W = depth.shape
    jj, ii = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
    z = depth.astype(np.float64).ravel()
    xc = np.stack([(jj.ravel() - cx) / fx * z, (ii.ravel() - cy) / fy * z, z], axis=1)
    R, t = _rt(pose)
    return xc @ R.T + t


def surface_residual(prim, p: np.ndarray) -> np.ndarray:
    """Distance of points to a primitive's analytic surface (written independently of the generator)."""
    if isinstance(prim, RoomBox):
        return np.minimum(np.abs(p - prim.lo), np.abs(p - prim.hi)).min(axis=1)
    if isinstance(prim, Sphere):
        return np.abs(np.linalg.norm(p - prim.center, axis=1) - prim.radius)
    if isinstance(prim, Box):
        c, s = np.cos(prim.yaw), np.sin(prim.yaw)
        rot = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])  # columns: local axes
        q = np.abs((p - prim.center) @ rot) - prim.half
        return np.abs(np.linalg.norm(np.maximum(q, 0), axis=1) + np.minimum(q.max(axis=1), 0))
    if isinstance(prim, Cylinder):
        dr = np.hypot(p[:, 0] - prim.cx, p[:, 2] - prim.cz) - prim.radius
        dy = np.maximum(prim.y0 - p[:, 1], p[:, 1] - prim.y1)
        q = np.stack([dr, dy], axis=1)
        return np.abs(np.linalg.norm(np.maximum(q, 0), axis=1) + np.minimum(q.max(axis=1), 0))
    raise TypeError(prim)


def signed_distance(prim, p: np.ndarray) -> np.ndarray:
    """Signed distance to a solid object (negative inside)."""
    if isinstance(prim, Sphere):
        return np.linalg.norm(p - prim.center, axis=1) - prim.radius
    if isinstance(prim, Box):
        c, s = np.cos(prim.yaw), np.sin(prim.yaw)
        q = np.abs((p - prim.center) @ np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])) - prim.half
    else:
        q = np.stack(
            [
                np.hypot(p[:, 0] - prim.cx, p[:, 2] - prim.cz) - prim.radius,
                np.maximum(prim.y0 - p[:, 1], p[:, 1] - prim.y1),
            ],
            axis=1,
        )
    return np.linalg.norm(np.maximum(q, 0), axis=1) + np.minimum(q.max(axis=1), 0)


def _render(cfg: SynthConfig, index: int):
    return render_scene(build_scene(cfg, index), cfg.supersample, cfg.shadows)


# ------------------------------------------------------------------------------------------------- determinism
def test_same_seed_same_bytes_and_different_seed_differs():
    a = generate_scene(SMALL, 3)
    b = generate_scene(SMALL, 3)
    assert a.key == b.key and "." not in a.key and a.key.startswith("synth-")
    assert a.images == b.images and a.depths == b.depths and a.depth_ranges == b.depth_ranges
    assert np.array_equal(a.cameras, b.cameras) and np.array_equal(a.poses, b.poses)
    # scene i does not depend on how many scenes are generated
    c = generate_scene(replace(SMALL, num_scenes=1000), 3)
    assert c.images == a.images
    d = generate_scene(replace(SMALL, seed=8), 3)
    assert d.images != a.images and not np.array_equal(d.poses, a.poses)
    e = generate_scene(SMALL, 4)
    assert e.images != a.images


def test_cameras_poses_format_and_kind_mix():
    kinds = set()
    for i in range(24):
        sc = build_scene(replace(SMALL, views=5), i)
        kinds.add(sc.kind)
        assert sc.key == f"synth-{sc.kind}-{i:06d}"
        assert sc.cameras.shape == (5, 6) and sc.cameras.dtype == np.float32
        assert sc.poses.shape == (5, 12) and sc.poses.dtype == np.float32
        w, h, fx, fy, cx, cy = sc.cameras[0]
        assert (w, h, cx, cy) == (40, 40, 20, 20) and fx == fy
        fov = np.degrees(2 * np.arctan(w / (2 * fx)))
        assert 50 - 1e-3 <= fov <= 75 + 1e-3
        R = sc.poses[:, :9].reshape(-1, 3, 3).astype(np.float64)
        assert np.allclose(R @ R.transpose(0, 2, 1), np.eye(3), atol=1e-6)
        assert np.allclose(np.linalg.det(R), 1.0, atol=1e-6)
        lo, hi = sc.primitives[0].lo, sc.primitives[0].hi
        assert ((sc.poses[:, 9:] > lo + 0.2) & (sc.poses[:, 9:] < hi - 0.2)).all()  # cameras inside the room
        for prim in sc.primitives[1:]:  # ... and well outside every object
            assert (signed_distance(prim, sc.poses[:, 9:].astype(np.float64)) > 0.2).all()
    assert kinds == {"room", "orbit"}
    assert list(split_indices(replace(SMALL, num_scenes=20, test_fraction=0.1), "test")) == [18, 19]
    assert list(split_indices(replace(SMALL, num_scenes=20, test_fraction=0.1), "train")) == list(range(18))


# ------------------------------------------------------------------------------------------------- exact depth
def test_empty_room_depth_lies_on_the_room_planes():
    cfg = replace(SMALL, kinds=("room",), num_objects=(0, 0))
    for index in range(3):
        r = _render(cfg, index)
        sc = r.scene
        assert len(sc.primitives) == 1 and (r.prim_id == 0).all()
        assert np.isfinite(r.depth).all() and (r.depth > 0).all()
        for v in range(sc.num_views):
            p = backproject(r.depth[v], sc.cameras[v], sc.poses[v])
            z = r.depth[v].ravel()
            res = surface_residual(sc.primitives[0], p)
            assert (res <= 1e-4 * z).all(), res.max()
            assert ((p > sc.primitives[0].lo - 1e-4 * z[:, None]) & (p < sc.primitives[0].hi + 1e-4 * z[:, None])).all()


@pytest.mark.parametrize("kind", ["room", "orbit"])
def test_depth_lands_on_the_surface_it_hit(kind):
    cfg = replace(SMALL, kinds=(kind,))
    seen = set()
    for index in range(2):
        r = _render(cfg, index)
        sc = r.scene
        for v in range(0, sc.num_views, 2):
            p = backproject(r.depth[v], sc.cameras[v], sc.poses[v])
            z = r.depth[v].ravel().astype(np.float64)
            pid = r.prim_id[v].ravel()
            for k in np.unique(pid):
                sel = pid == k
                res = surface_residual(sc.primitives[k], p[sel])
                assert (res <= 1e-4 * z[sel]).all(), (type(sc.primitives[k]).__name__, res.max())
                seen.add(type(sc.primitives[k]).__name__)
    assert "RoomBox" in seen and len(seen) >= 2


# ---------------------------------------------------------------------------------------- multi-view geometry
def test_multiview_reprojection_agrees_with_depth():
    cfg = replace(SMALL, kinds=("room",), views=8, size=48)
    r = _render(cfg, 1)
    sc = r.scene
    for a, b in ((0, 3), (2, 7)):
        X = backproject(r.depth[a], sc.cameras[a], sc.poses[a])
        Rb, tb = _rt(sc.poses[b])
        xc = (X - tb) @ Rb
        w, h, fx, fy, cx, cy = (float(v) for v in sc.cameras[b])
        zb = xc[:, 2]
        front = zb > 0.05
        u = fx * xc[:, 0] / np.where(front, zb, 1) + cx
        v = fy * xc[:, 1] / np.where(front, zb, 1) + cy
        inside = front & (u >= 0) & (u < w) & (v >= 0) & (v < h)
        assert inside.mean() > 0.3
        # exact: the ray from camera b through X hits at X (visible) or before it (occluded), never behind it
        d = (xc[inside] / zb[inside, None]) @ Rb.T  # camera-z component 1: the ray parameter is b's z-depth
        t_hit, _, _ = cast_rays(sc.primitives, tb[None], d)
        z = zb[inside]
        assert (t_hit <= z * (1 + 1e-6) + 1e-6).all()
        visible = np.abs(t_hit - z) <= 1e-5 * z
        assert visible.mean() > 0.5
        # the rendered depth map of view b at the reprojected pixel agrees for visible points
        ii = np.floor(v[inside]).astype(int)
        jj = np.floor(u[inside]).astype(int)
        rel = np.abs(r.depth[b][ii, jj] - z) / z
        assert np.median(rel[visible]) < 0.02


def test_objects_occlude_the_room_and_each_other():
    cfg = replace(SMALL, views=6, size=40)
    wall_hidden = obj_hidden = 0
    for kind in ("room", "orbit"):
        r = _render(replace(cfg, kinds=(kind,)), 0)
        sc = r.scene
        for v in range(sc.num_views):
            R, t = _rt(sc.poses[v])
            w, h, fx, fy, cx, cy = (float(x) for x in sc.cameras[v])
            jj, ii = np.meshgrid(np.arange(int(w)) + 0.5, np.arange(int(h)) + 0.5)
            d = np.stack([(jj - cx) / fx, (ii - cy) / fy, np.ones_like(jj)], -1).reshape(-1, 3) @ R.T
            depth = r.depth[v].ravel()
            pid = r.prim_id[v].ravel()
            on_obj = pid > 0
            # the room behind an object pixel is further away than the object
            t_room, _, _ = cast_rays(sc.primitives[:1], t[None], d[on_obj])
            assert (t_room > depth[on_obj]).all()
            wall_hidden += int(on_obj.sum())
            # another object behind the one that was hit
            for k in np.unique(pid[on_obj]):
                sel = pid == k
                others = [p for j, p in enumerate(sc.primitives) if j not in (0, k)]
                if others:
                    t_o, _, _ = cast_rays(others, t[None], d[sel])
                    obj_hidden += int((np.isfinite(t_o) & (t_o > depth[sel])).sum())
    assert wall_hidden > 0 and obj_hidden > 0


# ------------------------------------------------------------------------------------------------ trajectories
def test_walkthrough_moves_forward_smoothly():
    cfg = replace(SMALL, kinds=("room",), views=32)
    for index in range(8):
        sc = build_scene(cfg, index)
        R = sc.poses[:, :9].reshape(-1, 3, 3).astype(np.float64)
        c = sc.poses[:, 9:].astype(np.float64)
        step = np.diff(c, axis=0)
        dist = np.linalg.norm(step, axis=1)
        assert dist.min() > 0.01
        assert dist.max() < 3 * np.median(dist)  # far from the datamanager's pose-jump rule (10x)
        fwd = np.einsum("ij,ij->i", step / dist[:, None], R[:-1, :, 2])
        assert fwd.mean() > 0.9 and fwd.min() > 0.7, fwd
        # gentle rotation between frames, camera roughly level
        rel = np.einsum("nji,njk->nik", R[:-1], R[1:])
        angle = np.degrees(np.arccos(np.clip((np.trace(rel, axis1=1, axis2=2) - 1) / 2, -1, 1)))
        assert angle.max() < 5.0
        assert (np.abs(R[:, 1, 0]) < 0.1).all()  # the camera x axis stays nearly horizontal (small roll)


def test_orbit_cameras_look_at_the_centre():
    cfg = replace(SMALL, kinds=("orbit",), views=12)
    for index in range(6):
        sc = build_scene(cfg, index)
        T = sc.target
        R = sc.poses[:, :9].reshape(-1, 3, 3).astype(np.float64)
        c = sc.poses[:, 9:].astype(np.float64)
        to_t = T - c
        along = np.einsum("ij,ij->i", to_t, R[:, :, 2])
        assert (along > 0).all()
        off_axis = np.linalg.norm(to_t - along[:, None] * R[:, :, 2], axis=1)
        assert (off_axis < 1e-4 * np.linalg.norm(to_t, axis=1)).all()
        # the target projects to the principal point; the camera circles it
        xc = np.einsum("nji,nj->ni", R, to_t)
        u = sc.cameras[:, 2] * xc[:, 0] / xc[:, 2] + sc.cameras[:, 4]
        assert np.allclose(u, sc.cameras[:, 4], atol=1e-2)
        ang = np.unwrap(np.arctan2(c[:, 2] - T[2], c[:, 0] - T[0]))
        assert np.degrees(abs(ang[-1] - ang[0])) > 60
        r = np.linalg.norm((c - T)[:, [0, 2]], axis=1)
        assert r.max() / r.min() < 1.3


# ------------------------------------------------------------------------------------------------------ shards
def test_synth_main_writes_readable_train_and_test_shards(tmp_path):
    from zipsplat_ns.data.depth_codec import decode_depth
    from zipsplat_ns.data.images import decode_image
    from zipsplat_ns.data.shards import iter_scenes, list_shards

    out = synth_main(tmp_path, num_scenes=4, views=3, size=24, seed=5, test_fraction=0.25, progress=False)
    assert len(out["train"]) == 3 and len(out["test"]) == 1
    for split in ("train", "test"):
        d = tmp_path / f"{split}-scenes"
        index = json.loads((d / "index.json").read_text())
        assert sorted(index) == sorted(out[split])
        scenes = [s for shard in list_shards(d) for s in iter_scenes(shard)]
        assert [s.key for s in scenes] == out[split]
        for s in scenes:
            cfg = SynthConfig(seed=5, views=3, size=24, num_scenes=4)
            ref = _render(cfg, int(s.key.rsplit("-", 1)[1]))
            assert s.meta.get("kind") == ref.scene.kind and s.num_views == 3 and s.has_depth
            np.testing.assert_array_equal(s.poses, ref.scene.poses)
            np.testing.assert_array_equal(s.cameras, ref.scene.cameras)
            for i in range(3):
                np.testing.assert_array_equal(decode_image(s.images[i]), ref.images[i])  # PNG: lossless
                dep = decode_depth(s.depths[i], s.depth_ranges[i])
                ok = dep > 0
                assert ok.mean() > 0.98
                assert (np.abs(dep[ok] - ref.depth[i][ok]) / ref.depth[i][ok]).max() < 0.01


def test_worker_processes_do_not_change_the_output(tmp_path):
    from zipsplat_ns.data.shards import iter_scenes, list_shards
    from zipsplat_ns.data.synth import write_synthetic_shards

    cfg = SynthConfig(seed=2, views=2, size=16, num_scenes=3, test_fraction=0.0)
    out = {}
    for nw in (0, 2):
        keys = write_synthetic_shards(tmp_path / f"w{nw}", replace(cfg, num_workers=nw), "train", progress=False)
        assert keys == [build_scene(cfg, i).key for i in range(3)]
        out[nw] = [(s.key, s.images, s.depths) for sh in list_shards(tmp_path / f"w{nw}") for s in iter_scenes(sh)]
    assert out[0] == out[2]
