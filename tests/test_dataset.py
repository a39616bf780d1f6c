"""Preprocessing, view samplers and the streaming shard dataset (CPU, small synthetic fixtures)."""

from __future__ import annotations

import json
import logging
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from zipsplat_ns.data.dataset import (
    DatasetSpec,
    SamplerConfig,
    SceneSkip,
    ShardDirectory,
    ShardStream,
    process_scene,
    split_shards,
    weighted_shards,
)
from zipsplat_ns.data.depth_codec import encode_depth
from zipsplat_ns.data.images import encode_image
from zipsplat_ns.data.preprocess import cover_size, preprocess_view, resize_depth, transform_camera
from zipsplat_ns.data.samplers import BoundedSampler, IndexFileError, IndexSampler, RandomSampler
from zipsplat_ns.data.scene import RawScene, SceneError
from zipsplat_ns.data.shards import ShardDamaged, ShardWriter, scene_members

S = 28  # small crop size keeps the tests fast; the code paths are the same as at 252


# ------------------------------------------------------------------------------------------------ fixtures
def _yaw(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def make_scene(
    key: str,
    n: int = 14,
    h: int = 24,
    w: int = 32,
    seed: int = 0,
    plane_z: float = 4.0,
    step: float = 0.1,
    depth: bool = True,
    jump_at: int | None = None,
) -> RawScene:
    """A textured plane ``z = plane_z`` seen by ``n`` cameras sliding along x (OpenCV c2w), with its exact z-depth."""
    rng = np.random.default_rng(seed)
    fx = fy = 0.9 * w
    cams = np.tile(np.array([w, h, fx, fy, w / 2 + 0.3, h / 2 - 0.2], np.float32), (n, 1))
    phase = rng.uniform(0, 6, 3)
    u, v = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    poses, images, depths, ranges = [], [], [], []
    for i in range(n):
        R = _yaw(rng.uniform(-0.05, 0.05))
        c = np.array(
            [
                i * step + (5.0 if jump_at is not None and i >= jump_at else 0.0),
                rng.uniform(-0.02, 0.02),
                rng.uniform(-0.1, 0.1),
            ]
        )
        poses.append(np.concatenate([R.reshape(9), c]).astype(np.float32))
        ray = np.stack([(u - cams[i, 4]) / fx, (v - cams[i, 5]) / fy, np.ones_like(u)], -1) @ R.T
        t = (plane_z - c[2]) / ray[..., 2]  # the camera-frame ray has z = 1, so t is the z-depth
        X, Y = c[0] + t * ray[..., 0], c[1] + t * ray[..., 1]
        img = np.stack([np.sin(3 * X + phase[k]) * np.cos(2 * Y + k) for k in range(3)], -1)
        images.append(encode_image(((img * 0.5 + 0.5) * 255).astype(np.uint8), "png"))
        if depth:
            b, r = encode_depth(t.astype(np.float32))
            depths.append(b)
            ranges.append(r)
    return RawScene(key, cams, np.stack(poses), images, depths if depth else None, ranges if depth else None)


def write_dir(path: Path, scenes, per_scene: bool = True, validate: bool = True) -> Path:
    with ShardWriter(path, per_scene=per_scene, validate=validate, prefix="shard") as w:
        for s in scenes:
            w.add(s)
    return path


def stream(specs, **kw) -> ShardStream:
    args = dict(image_size=S, image_budget=8, min_views=2, max_views=6, num_target_views=4, seed=3)
    args.update(kw)
    return ShardStream(specs, **args)


def median_point_distance(batch, b: int) -> float:
    """Median ||p|| of the normalised context depth unprojected (integer pixel coordinates) into view 0's frame."""
    ctx = batch["context"]
    norms = []
    for v in range(ctx["image"].shape[1]):
        d = ctx["depth"][b, v].double().numpy()
        w, h, fx, fy, cx, cy = ctx["camera"][b, v].double().numpy()
        P = ctx["pose"][b, v].double().numpy()
        R, t = P[:9].reshape(3, 3), P[9:]
        vv, uu = np.nonzero(d >= 0)
        z = d[vv, uu]
        pts = np.stack([(uu - cx) / fx * z, (vv - cy) / fy * z, z], -1) @ R.T + t
        norms.append(np.linalg.norm(pts, axis=-1))
    return float(np.median(np.concatenate(norms)))


# ------------------------------------------------------------------------------------------- preprocessing
def test_cover_sizes_match_the_reference():
    assert cover_size(360, 640, 252) == (252, 448)
    assert cover_size(540, 960, 252) == (252, 448)
    assert cover_size(822, 1236, 252) == (252, 378)
    assert cover_size(300, 300, 252) == (252, 252)
    assert cover_size(640, 360, 252) == (448, 252)


@pytest.mark.parametrize("hw,cam_scale", [((360, 640), 1.0), ((822, 1236), 1.0), ((300, 200), 2.0)])
def test_intrinsics_follow_resize_and_crop_exactly(hw, cam_scale):
    h, w = hw
    rng = np.random.default_rng(0)
    fx, fy, cx, cy = 0.8 * w, 0.82 * w, w / 2 + 3.1, h / 2 - 2.7
    cam = np.array([w, h, fx, fy, cx, cy]) * cam_scale  # the camera may be given at another resolution
    X = np.stack([rng.uniform(-1, 1, 20), rng.uniform(-1, 1, 20), rng.uniform(2, 5, 20)], -1)
    u, v = fx * X[:, 0] / X[:, 2] + cx, fy * X[:, 1] / X[:, 2] + cy  # continuous coords, corner convention
    nh, nw = cover_size(h, w, 252)
    top, left = (nh - 252) // 2, (nw - 252) // 2
    expect_u, expect_v = u * nw / w - left, v * nh / h - top  # the same continuous point after resize + crop
    W, H, FX, FY, CX, CY = transform_camera(cam, (h, w), 252)
    assert (W, H) == (252, 252)
    np.testing.assert_allclose(FX * X[:, 0] / X[:, 2] + CX, expect_u, atol=1e-9)
    np.testing.assert_allclose(FY * X[:, 1] / X[:, 2] + CY, expect_v, atol=1e-9)


def test_image_content_lands_where_the_intrinsics_say():
    h, w = 120, 200
    cam = np.array([w, h, 150.0, 150.0, 101.3, 58.9])
    u0, v0 = 131.7, 40.2  # a bright blob centred at this continuous image position
    uu, vv = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    blob = np.exp(-((uu - u0) ** 2 + (vv - v0) ** 2) / (2 * 4.0**2))
    img = np.repeat((blob * 255).round().astype(np.uint8)[..., None], 3, -1)
    out, new_cam, _ = preprocess_view(img, cam, 64)
    assert out.shape == (3, 64, 64) and out.dtype == torch.float32 and 0 <= out.min() and out.max() <= 1
    nh, nw = cover_size(h, w, 64)
    sx, sy = nw / w, nh / h
    left, top = (nw - 64) // 2, (nh - 64) // 2
    g = out[0].double().numpy()
    U, V = np.meshgrid(np.arange(64) + 0.5, np.arange(64) + 0.5)
    cu, cv = (g * U).sum() / g.sum(), (g * V).sum() / g.sum()
    assert abs(cu - (u0 * sx - left)) < 0.1 and abs(cv - (v0 * sy - top)) < 0.1
    # the principal point moved the same way
    assert abs(new_cam[4] - (cam[4] * sx - left)) < 1e-9 and abs(new_cam[5] - (cam[5] * sy - top)) < 1e-9


def test_depth_nearest_keeps_invalid_pixels():
    d = np.arange(24, dtype=np.float32).reshape(4, 6) + 1
    d[1, 2] = -1
    d[3, 5] = np.nan
    up = resize_depth(d, (8, 12))
    assert up.shape == (8, 12) and up.dtype == np.float32
    assert (up[2:4, 4:6] == -1).all() and (up[6:8, 10:12] == -1).all()
    assert set(np.unique(up[up >= 0])) <= set(d[np.isfinite(d) & (d >= 0)].tolist())
    img = np.zeros((24, 32, 3), np.uint8)
    _, _, dep = preprocess_view(img, np.array([32, 24, 30, 30, 16, 12.0]), 16, depth=np.full((24, 32), -1, np.float32))
    assert dep.shape == (16, 16) and (dep == -1).all()


# ------------------------------------------------------------------------------------------------ samplers
@pytest.mark.parametrize("n", [2, 3, 5, 8])
def test_bounded_sampler_train_rules(n):
    smp = BoundedSampler(8, 11, 22, train=True)
    assert smp.min_required_images == 9
    rng = np.random.default_rng(0)
    T = 100
    min_gap, max_gap = smp.gap_bounds(T, n)
    assert max_gap == min(11 * n, T - 1, (n - 1) * 22 if n > 2 else 10**9)
    for _ in range(200):
        vs = smp.sample(T, n, 4, rng)
        c, t = vs.context, vs.target
        assert len(c) == n and len(set(c.tolist())) == n and (np.diff(c) > 0).all()
        assert min_gap <= c[-1] - c[0] <= max_gap and 0 <= c[0] and c[-1] < T
        assert np.diff(c).max() <= 22 + 1  # +1: rounding of the evenly spaced fallback
        assert len(t) == 4 and (t >= c[0]).all() and (t <= c[-1]).all()
        span = c[-1] - c[0] + 1  # stratified: one target per quarter of [left, right + 1)
        edges = c[0] + np.floor(np.linspace(0, span, 5)).astype(int)
        assert all(edges[i] <= t[i] < max(edges[i] + 1, edges[i + 1]) for i in range(4))
    a = smp.sample(T, n, 4, np.random.default_rng(5))
    b = smp.sample(T, n, 4, np.random.default_rng(5))
    assert (a.context == b.context).all() and (a.target == b.target).all()


def test_bounded_sampler_eval_and_single_view():
    smp = BoundedSampler(35, 45, 90, train=False)
    vs = smp.sample(300, 6, 8, np.random.default_rng(1))
    assert vs.context[0] == 0 and vs.context[-1] == min(45 * 6, 299, 5 * 90)
    one = BoundedSampler(8, 11, 22).sample(50, 1, 4, np.random.default_rng(2))
    assert len(one.context) == 1 and (np.abs(one.target - one.context[0]) <= 8).all()
    with pytest.raises(ValueError):
        BoundedSampler().sample(3, 5, 4, np.random.default_rng(0))


def test_random_sampler_disjoint():
    vs = RandomSampler().sample(20, 6, 4, np.random.default_rng(0))
    assert len(set(vs.context.tolist()) | set(vs.target.tolist())) == 10


def test_index_sampler_replays_exactly_and_validates():
    idx = {"a": {"context": [0, 5, 9], "target": [1, 2]}, "b": None, "c": {"context": [2, 3, 4], "target": [7]}}
    smp = IndexSampler(idx, expected_context=3)
    assert smp.scenes == ["a", "c"] and "b" not in smp
    vs = smp.sample(10, key="a")
    assert vs.context.tolist() == [0, 5, 9] and vs.target.tolist() == [1, 2]
    with pytest.raises(IndexFileError, match="out of range"):
        smp.sample(8, key="a")
    bad = {
        "x": {"context": [0, 1], "target": [2], "weird": 1},
        "y": {"context": "0,1", "target": [2]},
        "z": {"context": [0, 1, 2, 3], "target": [1]},
        "ok": {"context": [0, 1, 2], "target": [1]},
    }
    with pytest.raises(IndexFileError) as info:
        IndexSampler(bad, source="bad.json", expected_context=3)
    msg = str(info.value)
    assert "bad.json" in msg and "x: unknown field" in msg and "y: 'context'" in msg and "z: 4 context views" in msg
    assert "ok:" not in msg and len(info.value.problems) == 4  # x has a wrong count too
    with pytest.raises(IndexFileError) as info:
        smp.validate(known_scenes=["a"], num_frames={"a": 6}, expected_context=3)
    msg = str(info.value)
    assert "c: unknown scene" in msg and "a: frame indices [9]" in msg


# ------------------------------------------------------------------------------------------------- streams
@pytest.fixture(scope="module")
def mix(tmp_path_factory):
    root = tmp_path_factory.mktemp("mix")
    a = write_dir(root / "a", [make_scene(f"a{i}", seed=i) for i in range(4)])
    b = write_dir(root / "b", [make_scene(f"b{i}", seed=10 + i, plane_z=7.0, step=0.3) for i in range(2)])
    return a, b


def test_weighted_mixing_repeats_the_smaller_dataset(mix):
    a, b = mix
    shards = weighted_shards([DatasetSpec(a, 0.5), DatasetSpec(b, 0.5)])
    per = Counter(i for i, _ in shards)
    assert per == {0: 4, 1: 4}  # b (2 scenes) is repeated twice to match a (4 scenes)
    shards = weighted_shards([DatasetSpec(a, 0.8), DatasetSpec(b, 0.2)])
    assert Counter(i for i, _ in shards) == {0: 8, 1: 2}


def test_batches_with_two_workers_over_a_weighted_mix(mix):
    a, b = mix
    st = stream([DatasetSpec(a, 0.5, name="A"), DatasetSpec(b, 0.5, name="B")])
    loader = DataLoader(st, batch_size=None, num_workers=2)
    seen, n = set(), 0
    for batch in loader:
        ctx, tgt = batch["context"], batch["target"]
        B, V = ctx["image"].shape[:2]
        assert B == max(1, 8 // V) and 2 <= V <= 6
        assert ctx["image"].shape == (B, V, 3, S, S) and ctx["image"].dtype == torch.float32
        assert tgt["image"].shape == (B, 4, 3, S, S)
        for g, v in ((ctx, V), (tgt, 4)):
            assert g["camera"].shape == (B, v, 6) and g["camera"].dtype == torch.float32
            assert g["pose"].shape == (B, v, 12) and g["pose"].dtype == torch.float32
            assert g["depth"].shape == (B, v, S, S) and g["depth"].dtype == torch.float32
            assert g["index"].shape == (B, v) and g["index"].dtype == torch.int64
            assert (g["camera"][..., :2] == S).all()
        assert batch["scale"].shape == (B,) and batch["has_depth"].dtype == torch.bool and batch["has_depth"].all()
        assert len(batch["scene"]) == len(batch["dataset"]) == len(batch["scale_source"]) == B
        assert batch["skipped"] == {} and batch["skipped_scenes"] == []
        eye = torch.tensor([1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0], dtype=torch.float32)
        assert torch.allclose(ctx["pose"][:, 0], eye.expand(B, 12), atol=1e-6)  # relative to context view 0
        for i in range(B):
            assert abs(median_point_distance(batch, i) - 1.0) < 1e-3
        seen |= set(batch["dataset"])
        n += 1
        if n >= 6 and seen == {"A", "B"}:
            break
    assert seen == {"A", "B"}


def test_scale_matches_the_exact_geometry(mix):
    a, _ = mix
    st = stream([DatasetSpec(a)], train=False, eval_views=3)
    batch = next(iter(st))
    # the plane z = 4 seen from ~4 units away: the median distance of the context points is about 4.1-4.5 in the
    # source units; recompute it from the exact (unquantised) planar depth of the same views
    raw = ShardDirectory(a).load(batch["scene"][0])
    ctx = batch["context"]["index"][0].tolist()
    T0 = np.eye(4)
    T0[:3, :3], T0[:3, 3] = raw.poses[ctx[0], :9].reshape(3, 3), raw.poses[ctx[0], 9:]
    ref = np.linalg.inv(T0)
    norms = []
    for i in ctx:
        w, h, fx, fy, cx, cy = transform_camera(raw.cameras[i], (24, 32), S)
        R, c = raw.poses[i, :9].reshape(3, 3).astype(np.float64), raw.poses[i, 9:].astype(np.float64)
        vv, uu = np.meshgrid(np.arange(S), np.arange(S), indexing="ij")
        ray = np.stack([(uu + 0.5 - cx) / fx, (vv + 0.5 - cy) / fy, np.ones_like(uu, dtype=float)], -1) @ R.T
        z = (4.0 - c[2]) / ray[..., 2]
        pts = np.stack([(uu - cx) / fx * z, (vv - cy) / fy * z, z], -1) @ R.T + c
        norms.append(np.linalg.norm(pts.reshape(-1, 3) @ ref[:3, :3].T + ref[:3, 3], axis=-1))
    exact = float(np.median(np.concatenate(norms)))
    assert abs(batch["scale"][0].item() / exact - 1) < 0.02  # 8-bit log depth codec + nearest resize


def test_view_count_follows_the_shared_max(mix):
    a, _ = mix
    st = stream([DatasetSpec(a)])
    st.set_max_views(3)
    it = iter(st)
    vs = {next(it)["context"]["image"].shape[1] for _ in range(12)}
    assert vs <= {2, 3} and vs == {2, 3}
    st.set_max_views(100)  # clamped to max_views
    assert st.current_max_views() == 6


def _tar_without(src: Path, dst: Path, drop_suffix: str) -> None:
    with tarfile.open(src) as t_in, tarfile.open(dst, "w") as t_out:
        for m in t_in.getmembers():
            if not m.name.endswith(drop_suffix):
                t_out.addfile(m, t_in.extractfile(m))


@pytest.fixture(scope="module")
def corrupt_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("corrupt")
    good = [make_scene(f"good{i}", seed=20 + i) for i in range(3)]
    nan = make_scene("nanpose", seed=31)
    nan.poses[4, 10] = np.nan
    garbage = make_scene("badimage", seed=32)
    garbage.images = [b"this is not an image at all"] * garbage.num_views  # undecodable whatever views are drawn
    few = make_scene("fewframes", n=5, seed=33)
    jump = make_scene("posejump", n=14, seed=34, jump_at=7)
    d = write_dir(root / "scenes", good + [nan, garbage, few, jump], validate=False)
    # a scene with a missing member
    write_dir(root / "tmp", [make_scene("nomember", seed=35)])
    _tar_without(root / "tmp" / "nomember.tar", d / "nomember.tar", ".poses.npy")
    # a truncated tar
    write_dir(root / "tmp2", [make_scene("truncated", seed=36)])
    data = (root / "tmp2" / "truncated.tar").read_bytes()
    (d / "truncated.tar").write_bytes(data[: len(data) * 2 // 3])
    return d


def test_corrupt_scenes_are_skipped_counted_named_and_the_stream_goes_on(corrupt_dir, caplog):
    st = stream([DatasetSpec(corrupt_dir, sampler=SamplerConfig(min_distance=4))], max_views=6, min_views=6)
    counts, names, good = Counter(), [], 0
    with caplog.at_level(logging.WARNING, logger="zipsplat_ns.data.dataset"):
        it = iter(st)
        for _ in range(40):
            batch = next(it)
            counts.update(batch["skipped"])
            names += batch["skipped_scenes"]
            good += len(batch["scene"])
            assert set(batch["scene"]) <= {"good0", "good1", "good2"}
            if good > 12 and counts.get("pose_jump", 0) > 0:
                break
    assert counts["bad_scene"] >= 3 and counts["decode_error"] >= 1 and counts["too_few_frames"] >= 1
    assert counts["pose_jump"] >= 1
    text = "\n".join(names)
    for key, reason in [
        ("nanpose", "bad_scene"), ("nomember", "missing member"), ("truncated", "truncated"),
        ("badimage", "decode_error"), ("fewframes", "too_few_frames"), ("posejump", "pose_jump"),
    ]:  # fmt: skip
        assert any(key in s and reason in s for s in names), (key, reason, text)
    assert "badimage" in caplog.text and "fewframes" in caplog.text


def test_eval_has_no_pose_jump_filter(corrupt_dir):
    st = stream([DatasetSpec(corrupt_dir, sampler=SamplerConfig(min_distance=4))], train=False, eval_views=6)
    scenes = [s for b in st for s in b["scene"]]
    assert "posejump" in scenes and "good0" in scenes and "badimage" not in scenes


def test_scene_without_depth_uses_the_baseline(tmp_path):
    d = write_dir(tmp_path / "nodepth", [make_scene("nd", depth=False)])
    batch = next(iter(stream([DatasetSpec(d)], train=False, eval_views=4)))
    assert batch["scale_source"] == ["baseline"] and not batch["has_depth"][0]
    assert (batch["context"]["depth"] == -1).all() and (batch["target"]["depth"] == -1).all()
    c = batch["context"]["pose"][0, :, 9:]
    assert abs(torch.cdist(c, c).max().item() - 1.0) < 1e-5  # max pairwise context distance normalised to 1


def test_require_depth_skips_scenes_without_valid_depth():
    """``process_scene(require_depth=True)`` (the eval protocol): no depth maps, or no valid context depth pixel, is
    a ``no_depth`` skip instead of the camera-baseline scale."""
    from zipsplat_ns.data.samplers import ViewSample

    views = ViewSample(np.array([0, 6, 11]), np.array([3]))
    assert process_scene(make_scene("nd", depth=False), views, image_size=S)["scale_source"] == "baseline"
    with pytest.raises(SceneSkip, match="no depth maps") as exc:
        process_scene(make_scene("nd", depth=False), views, image_size=S, require_depth=True)
    assert exc.value.reason == "no_depth"
    far = make_scene("far")  # depth maps without a single valid pixel
    blank, rng = encode_depth(np.full((24, 32), np.nan))
    far.depths, far.depth_ranges = [blank] * far.num_views, [list(rng)] * far.num_views
    with pytest.raises(SceneSkip, match="no valid context depth pixel"):
        process_scene(far, views, image_size=S, require_depth=True)
    assert process_scene(far, views, image_size=S)["scale_source"] == "baseline"
    assert process_scene(make_scene("d"), views, image_size=S, require_depth=True)["scale_source"] == "depth"


def test_a_training_stream_of_only_unusable_scenes_fails_clearly(tmp_path):
    """Every scene too short for the view counts: one clear error after a whole pass, not an endless silent loop."""
    d = write_dir(tmp_path / "short", [make_scene(f"s{i}", n=4, seed=i) for i in range(3)])
    with pytest.raises(RuntimeError, match=r"whole pass .* no usable sample \(skipped: \{'too_few_frames': 3\}\)"):
        next(iter(stream([DatasetSpec(d)], train=True)))
    # one usable scene among unusable ones is enough: the stream goes on
    d2 = write_dir(tmp_path / "mixed", [make_scene("short", n=4), make_scene("long", n=14)])
    it = iter(stream([DatasetSpec(d2)], train=True, image_budget=2, max_views=2))
    assert [next(it)["scene"] for _ in range(3)] == [["long"]] * 3


def test_view_counts_beyond_every_scene_are_capped_with_a_warning(tmp_path, caplog):
    """The schedule asks for more views than any scene has (the built-in data has 12 frames, the GPU recipes draw up
    to 24 views): after one fruitless pass the stream caps its context views at frames - targets and says so,
    instead of stopping the run."""
    d = write_dir(tmp_path / "twelve", [make_scene(f"s{i}", n=12, seed=i) for i in range(3)])
    st = stream([DatasetSpec(d)], train=True, min_views=2, max_views=24, image_budget=24)
    st.set_max_views(24)
    with caplog.at_level(logging.WARNING, logger="zipsplat_ns.data.dataset"):
        it = iter(st)
        views = [next(it)["context"]["image"].shape[1] for _ in range(12)]
    assert max(views) <= 12 - 4 and min(views) >= 2
    assert st._views_cap == 8
    assert any("drawing at most 8 context views" in r.getMessage() for r in caplog.records)


def test_a_worker_whose_share_is_unusable_reads_the_other_shards(tmp_path, caplog):
    """Two streams over two shards, one holding only a broken scene: that stream widens to every shard (with a
    warning) instead of killing the DataLoader."""
    scenes = [make_scene("good", n=10, seed=1)]
    d = write_dir(tmp_path / "mix", scenes)
    bad = tmp_path / "mix" / "bad.tar"
    bad.write_bytes(b"not a tar archive at all" * 100)
    st = stream([DatasetSpec(d)], train=True, max_views=4, image_budget=4)
    shard_names = [sh.name for _, sh in st.shards]
    assert sorted(shard_names) == ["bad.tar", "good.tar"]
    with caplog.at_level(logging.WARNING, logger="zipsplat_ns.data.dataset"):
        # the stream whose share is bad.tar: worker id of its position among 2 streams
        wid = shard_names.index("bad.tar")
        st._worker = lambda: (wid, 2)  # as DataLoader worker `wid` of 2
        it = iter(st)
        assert next(it)["scene"] == ["good"]
    assert any("reads every shard from now on" in r.getMessage() for r in caplog.records)


def test_eval_streams_that_own_nothing_read_nothing(tmp_path):
    """More eval streams than scenes: every scene is read exactly once over all streams."""
    d = write_dir(tmp_path / "few", [make_scene(f"s{i}", n=10, seed=i) for i in range(3)], per_scene=False)
    st = stream([DatasetSpec(d)], train=False)
    keys = _collect_keys(st, world=2, workers=3)
    assert sorted(k for v in keys.values() for k in v) == ["s0", "s1", "s2"]


def _collect_keys(st: ShardStream, world: int, workers: int):
    out = {}
    for rank in range(world):
        st.rank, st.world_size = rank, world
        for wid in range(workers):
            gw = rank * workers + wid
            out[gw] = [it.key for _, _, it in st._raw_items(gw, world * workers, wid, workers)]
    return out


@pytest.mark.parametrize("n_scenes,per_shard", [(8, 1), (6, 2)])  # 8 shards / 3 shards for 4 streams (fallback)
def test_ddp_and_worker_split_is_a_partition(tmp_path, n_scenes, per_shard):
    scenes = [make_scene(f"s{i}", n=10, h=8, w=8) for i in range(n_scenes)]
    one = sum(512 + len(b) for _, b in scene_members(scenes[0]))
    d = tmp_path / "ddp"
    with ShardWriter(d, shard_size_mb=(per_shard - 0.5) * one / 2**20) as w:
        for sc in scenes:
            w.add(sc)
    assert len(list(d.glob("*.tar"))) == n_scenes // per_shard
    st = stream([DatasetSpec(d)], train=False)
    keys = _collect_keys(st, world=2, workers=2)
    flat = [k for v in keys.values() for k in v]
    assert sorted(flat) == sorted(f"s{i}" for i in range(n_scenes))  # disjoint and covering
    assert all(len(v) >= 1 for v in keys.values())  # no stream idles
    pos = [split_shards(8, r, 2, w, 2)[0] for r in range(2) for w in range(2)]
    assert sorted(sum(pos, [])) == list(range(8)) and pos[1] == [2, 6]  # shards[rank::world][worker::workers]


def test_eval_index_replay_in_order_and_missing_scenes_reported(mix, tmp_path, caplog):
    a, _ = mix
    index = {
        "a2": {"context": [0, 6, 13], "target": [3, 4]},
        "ghost": {"context": [0, 1, 2], "target": [3]},
        "a0": {"context": [1, 2, 3], "target": [5, 9, 10]},
        "a1": None,
    }
    path = tmp_path / "index.json"
    path.write_text(json.dumps(index))
    st = stream([DatasetSpec(a, sampler=SamplerConfig(kind="index", index_file=path))], train=False)
    assert st.missing_scenes() == ["ghost"]
    with caplog.at_level(logging.WARNING):
        batches = list(st)
    assert [b["scene"] for b in batches] == [["a2"], ["a0"]]
    assert batches[0]["missing_scenes"] == ["ghost"] and batches[0]["skipped"] == {}
    assert batches[1]["skipped"] == {"missing_from_shards": 1} and batches[1]["missing_scenes"] == []
    assert batches[0]["context"]["index"][0].tolist() == [0, 6, 13]  # index order, reference = smallest frame
    assert batches[1]["target"]["index"][0].tolist() == [5, 9, 10]
    assert "ghost" in caplog.text


def test_depth_codes_cropped_before_dequantising_match_the_float_path():
    from zipsplat_ns.data.depth_codec import decode_depth, dequantize_depth
    from zipsplat_ns.data.images import decode_gray
    from zipsplat_ns.data.preprocess import cover_size, nearest_cover_crop

    rng = np.random.default_rng(0)
    d = rng.uniform(1, 9, (36, 64)).astype(np.float32)
    d[5:9, 10:20] = -1
    data, r = encode_depth(d)
    nh, nw = cover_size(36, 64, 28)
    top, left = (nh - 28) // 2, (nw - 28) // 2
    ref = resize_depth(decode_depth(data, r), (nh, nw))[top : top + 28, left : left + 28]
    fast = dequantize_depth(nearest_cover_crop(decode_gray(data), (36, 64), 28), r)
    np.testing.assert_array_equal(ref, fast)


# ------------------------------------------------------------------------------------------- fast loader path
@pytest.mark.parametrize(
    "hw,size",
    [((360, 640), 252), ((540, 960), 252), ((822, 1236), 252), ((640, 360), 64), ((251, 397), 28), ((37, 53), 64),
     ((252, 252), 252), ((253, 300), 252), ((1080, 1920), 224)],
)  # fmt: skip
def test_crop_only_resize_equals_full_resize_then_crop(hw, size):
    from zipsplat_ns.data.preprocess import crop_offsets, resize_crop_image, resize_image

    img = np.random.default_rng(hw[0] * 7 + size).integers(0, 256, (*hw, 3), dtype=np.uint8)
    nh, nw = cover_size(*hw, size)
    top, left = crop_offsets(nh, nw, size)
    full = resize_image(img, (nh, nw))[:, top : top + size, left : left + size]  # torch F.interpolate, antialias
    fast = resize_crop_image(torch.from_numpy(img).permute(2, 0, 1).contiguous(), (nh, nw), top, left, size)
    assert fast.shape == (3, size, size) and fast.dtype == torch.float32 and fast.is_contiguous()
    assert (fast - full).abs().max().item() < 1e-6
    out, _, _ = preprocess_view(
        torch.from_numpy(img).permute(2, 0, 1), np.array([hw[1], hw[0], 50, 50, 20, 20.0]), size
    )
    assert torch.equal(out, preprocess_view(img, np.array([hw[1], hw[0], 50, 50, 20, 20.0]), size)[0])


def _pil(data: bytes, mode: str) -> np.ndarray:
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert(mode))


def test_fast_decoders_give_the_pil_pixels():
    import io

    from PIL import Image

    from zipsplat_ns.data import images as I

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, (37, 53), dtype=np.uint8)
    cases = [encode_image(a, f) for a in (rgb, grey) for f in ("jpg", "png", "webp")]
    for mode, fmt, kw in [("RGBA", "PNG", {}), ("RGBA", "WEBP", {"lossless": True}), ("RGB", "JPEG", {"progressive": True}),
                          ("P", "PNG", {}), ("CMYK", "JPEG", {})]:  # fmt: skip
        buf = io.BytesIO()
        Image.fromarray(rgb).convert(mode).save(buf, fmt, **kw)
        cases.append(buf.getvalue())
    cases.append(encode_depth(rng.uniform(1, 9, (20, 30)).astype(np.float32))[0])
    for data in cases:
        assert np.array_equal(I.decode_image(data), _pil(data, "RGB"))
        assert np.array_equal(I.decode_image_tensor(data).permute(1, 2, 0).numpy(), _pil(data, "RGB"))
        assert np.array_equal(I.decode_gray(data), _pil(data, "L"))
        assert np.array_equal(I.pil_luma(I.decode_gray_deferred(data)), _pil(data, "L"))
    with pytest.raises(ValueError, match="cannot decode"):
        I.decode_image_tensor(b"\xff\xd8\xff not a jpeg")


def test_fast_scale_helpers_match_the_plain_formulas():
    from zipsplat_ns.data.dataset import _median_sqrt, _unproject_sq_norms, unproject_norms

    rng = np.random.default_rng(1)
    d = rng.uniform(0.5, 5, (20, 24)).astype(np.float32)
    d[3, 4] = -1
    cam = np.array([24, 20, 18.0, 19.0, 12.3, 9.8])
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = _yaw(0.3), [0.2, -0.1, 0.4]
    sq = _unproject_sq_norms(d, cam, T)
    assert np.array_equal(np.sqrt(np.maximum(sq, 0)), unproject_norms(d, cam, T))
    for n in (1, 2, 7, 10):
        x = rng.uniform(0, 4, n)
        assert _median_sqrt(x) == float(np.median(np.sqrt(x)))


# --------------------------------------------------------------- synthetic + converted real shards (issue acceptance)
SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.mark.skipif(not (SHARED / "data").is_dir(), reason="../shared/data is absent (real nerfstudio scenes)")
def test_synthetic_and_converted_real_shards_stream_together(tmp_path):
    """Generator output + `convert nerfstudio` output, mixed 50/50, two DataLoader workers, at the real 252 px."""
    from zipsplat_ns.data.converters import convert
    from zipsplat_ns.data.synth import synth_main

    synth_main(tmp_path / "synth", num_scenes=3, views=12, size=64, seed=5, test_fraction=0.0, progress=False)
    convert("nerfstudio", SHARED / "data" / "scenes" / "strecha-castle-p19", tmp_path / "real", max_size=96,
            progress=False)  # fmt: skip
    specs = [DatasetSpec(tmp_path / "synth" / "train-scenes", 0.5, name="synth"),
             DatasetSpec(tmp_path / "real", 0.5, name="real")]  # fmt: skip
    st = ShardStream(specs, image_size=252, image_budget=6, min_views=2, max_views=3, num_target_views=2, seed=1)
    seen = set()
    for n, batch in enumerate(DataLoader(st, batch_size=None, num_workers=2)):
        B, V = batch["context"]["image"].shape[:2]
        assert batch["context"]["image"].shape == (B, V, 3, 252, 252) and batch["context"]["image"].dtype == torch.float32
        assert batch["target"]["pose"].shape == (B, 2, 12) and batch["context"]["depth"].shape == (B, V, 252, 252)
        for i, name in enumerate(batch["dataset"]):
            seen.add(name)
            if name == "synth":  # exact depth: the normalised median context distance is 1
                assert batch["scale_source"][i] == "depth" and bool(batch["has_depth"][i])
                assert abs(median_point_distance(batch, i) - 1.0) < 1e-3
            else:  # the real scene has no depth in its shard: camera-baseline scale, geometry losses off
                assert batch["scale_source"][i] == "baseline" and not bool(batch["has_depth"][i])
                assert (batch["context"]["depth"][i] == -1).all()
        if seen == {"synth", "real"} and n >= 3:
            break
    assert seen == {"synth", "real"}


def test_random_access_keeps_the_scenes_before_a_truncated_tail(tmp_path):
    """A shard cut short: the scenes before the cut load (as the streaming reader yields them); the cut one and
    those after it fail with a SceneError that names them and says why."""
    d = write_dir(tmp_path / "cut", [make_scene(f"s{i}", n=10, seed=i) for i in range(3)], per_scene=False)
    shard = next(d.glob("*.tar"))
    data = shard.read_bytes()
    with tarfile.open(shard) as tar:
        first_of_s2 = next(m for m in tar.getmembers() if m.name.startswith("s2."))
    shard.write_bytes(data[: first_of_s2.offset_data + first_of_s2.size // 2 + 3])  # inside s2's first member
    directory = ShardDirectory(d)
    assert directory.load("s0").key == "s0" and directory.load("s1").num_views == 10
    with pytest.raises(SceneError, match=r"'s2'.*(truncated|cut short)"):
        directory.load("s2")


def _damage_shard_at(shard: Path, member: str, how: str) -> int:
    """Cut ``shard`` at the header of ``member`` or overwrite that header with junk; the header's offset."""
    with tarfile.open(shard) as tar:
        offset = tar.getmember(member).offset
    assert offset % 512 == 0 and offset > 0
    data = bytearray(shard.read_bytes())
    if how == "junk-header":
        data[offset : offset + 512] = bytes(range(256)) * 2
    else:
        del data[offset:]
    shard.write_bytes(bytes(data))
    return offset


@pytest.mark.parametrize("how", ["cut", "junk-header", "cut-inside-a-scene"])
def test_random_access_reports_scenes_lost_to_a_damaged_shard(tmp_path, how, caplog):
    """A shard cut at a member boundary (or with a junk header) reads to tarfile as a shorter archive: the scenes
    before the damage load, the ones lost to it raise ShardDamaged naming the shard and the damage (not a bare
    "not found in its shard"), and index-replay eval skips, counts and names them."""
    d = write_dir(tmp_path / "cut", [make_scene(f"s{i}", n=10, seed=i) for i in range(3)], per_scene=False)
    shard = next(d.glob("*.tar"))
    with tarfile.open(shard) as tar:
        of_s1 = [n for n in tar.getnames() if n.startswith("s1.")]
    # s1's first header (a cut between scenes), or its second (a cut inside s1: its first member is left)
    offset = _damage_shard_at(shard, of_s1[1] if how == "cut-inside-a-scene" else of_s1[0], how)
    expected = "corrupt tar (unreadable member header" if how == "junk-header" else "truncated tar (it stops"
    expected += f" at byte {offset}"
    directory = ShardDirectory(d)
    assert directory.load("s0").num_views == 10
    with pytest.raises(ShardDamaged) as info:
        directory.load("s2")
    assert info.value.key == "s2" and info.value.shard == shard.name and expected in info.value.reason
    assert shard.name in str(info.value) and "lost to the damaged shard" in str(info.value)
    with pytest.raises(ShardDamaged, match=r"'s1'.*" + ("missing member" if how == "cut-inside-a-scene" else "lost")):
        directory.load("s1")  # cut into (its first members are there) or lost
    # index-replay eval: the lost scene is skipped as bad_scene, named with the damage; the stream goes on
    index = tmp_path / "index.json"
    index.write_text(json.dumps({"s2": {"context": [0, 2, 4], "target": [5]}, "s0": {"context": [0, 2, 4],
                                                                                      "target": [5]}}))
    st = stream([DatasetSpec(d, sampler=SamplerConfig(kind="index", index_file=index))], train=False)
    with caplog.at_level(logging.WARNING):
        batches = list(st)
    assert [b["scene"] for b in batches] == [["s0"]]
    assert batches[0]["skipped"] == {"bad_scene": 1}
    assert expected in batches[0]["skipped_scenes"][0] and batches[0]["skipped_scenes"][0].startswith(shard.name)
