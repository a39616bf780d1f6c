"""Tests for zipsplat_ns.data.depth: SfM-point depth, the DA3 plumbing (fake module), shard rewriting, scale mode."""

from __future__ import annotations

import json
import struct
import sys
import tarfile
import types
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest

from zipsplat_ns.data import depth as D
from zipsplat_ns.data.depth_codec import decode_depth
from zipsplat_ns.data.images import encode_image
from zipsplat_ns.data.scene import RawScene
from zipsplat_ns.data.shards import ShardWriter, iter_scenes, list_shards, read_index

W, H = 64, 48


# ------------------------------------------------------------------------------------------------------ fixtures
def look_at_c2w(center: np.ndarray, target: np.ndarray) -> np.ndarray:
    """OpenCV camera-to-world (x right, y down, z forward) looking from ``center`` at ``target``."""
    z = target - center
    z = z / np.linalg.norm(z)
    x = np.cross(np.array([0.0, -1.0, 0.0]), z)
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    c2w = np.eye(4)
    c2w[:3, :3] = np.stack([x, y, z], axis=1)
    c2w[:3, 3] = center
    return c2w


def pose_row(c2w: np.ndarray) -> np.ndarray:
    return np.concatenate([c2w[:3, :3].reshape(-1), c2w[:3, 3]]).astype(np.float32)


def write_ply(path: Path, xyz: np.ndarray) -> None:
    """points3D.ply as in ../shared/data/scenes: xyz float32 + rgb uint8, binary little endian."""
    header = (
        "ply\nformat binary_little_endian 1.0\n"
        f"element vertex {len(xyz)}\n"
        "property float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n"
    ).encode()
    body = b"".join(struct.pack("<fffBBB", *map(float, p), 200, 100, 50) for p in xyz)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + body)


def write_colmap_points_txt(path: Path, xyz: np.ndarray) -> None:
    lines = ["# 3D point list with one line of data per point:", "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[]"]
    for i, p in enumerate(xyz):
        lines.append(f"{i + 1} {float(p[0])!r} {float(p[1])!r} {float(p[2])!r} 10 20 30 0.5 1 {i}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def make_points(rng: np.random.Generator) -> np.ndarray:
    pts = rng.uniform(-1.0, 1.0, size=(60, 3))
    extra = [
        [0.0, 0.0, -20.0],  # behind every camera
        [50.0, 0.0, 0.0],  # outside every image
    ]
    return np.concatenate([pts, np.array(extra)], axis=0)


def make_scene(key: str, rng: np.random.Generator, meta: Dict, n: int = 3) -> RawScene:
    cams, poses, images = [], [], []
    for i in range(n):
        center = np.array([1.5 * (i - (n - 1) / 2), -0.3 * i, -5.0])
        c2w = look_at_c2w(center, np.zeros(3))
        f = 50.0 + 3 * i  # distinct focal lengths identify the views in the DA3 test
        cams.append([W, H, f, f, W / 2 - 0.25 * i, H / 2 + 0.5])
        poses.append(pose_row(c2w))
        img = rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)
        images.append(encode_image(img, "jpg" if i == 0 else "png"))
    return RawScene(key, np.array(cams, np.float32), np.array(poses, np.float32), images, meta=dict(meta))


def reference_depth(xyz: np.ndarray, cam: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """Independent per-point loop: nearest z per pixel (floor of the projected coordinates), -1 elsewhere."""
    w, h, fx, fy, cx, cy = (float(v) for v in cam)
    R = np.asarray(pose[:9], np.float64).reshape(3, 3)
    t = np.asarray(pose[9:12], np.float64)
    out = np.full((int(h), int(w)), -1.0)
    for X in xyz:
        pc = R.T @ (X - t)
        if pc[2] <= 1e-6:
            continue
        u, v = fx * pc[0] / pc[2] + cx, fy * pc[1] / pc[2] + cy
        c, r = int(np.floor(u)), int(np.floor(v))
        if 0 <= c < w and 0 <= r < h and (out[r, c] < 0 or pc[2] < out[r, c]):
            out[r, c] = pc[2]
    return out


@pytest.fixture
def dataset(tmp_path: Path):
    """Two scenes in one shard: ``withpts`` (source folder has points3D.ply) and ``nopts`` (source has nothing)."""
    rng = np.random.default_rng(0)
    xyz = make_points(rng)
    # two points on one ray of view 0: the nearer must win the z-buffer
    c2w0 = look_at_c2w(np.array([-1.5, 0.0, -5.0]), np.zeros(3))
    ray = c2w0[:3, :3] @ np.array([0.1, -0.05, 1.0])
    xyz = np.concatenate([xyz, [c2w0[:3, 3] + 4.5 * ray, c2w0[:3, 3] + 5.0 * ray]])
    src = tmp_path / "src_withpts"
    write_ply(src / "points3D.ply", xyz)
    (tmp_path / "src_nopts").mkdir()
    s1 = make_scene("withpts", rng, {"format": "nerfstudio", "source": str(src), "points3D": "points3D.ply"})
    s2 = make_scene("nopts", rng, {"format": "nerfstudio", "source": str(tmp_path / "src_nopts")})
    shard_dir = tmp_path / "shards"
    with ShardWriter(shard_dir) as w:
        w.add(s1)
        w.add(s2)
    return shard_dir, {"withpts": s1, "nopts": s2}, xyz.astype(np.float32).astype(np.float64)


def read_all(shard_dir: Path) -> Dict[str, RawScene]:
    out = {}
    for shard in list_shards(shard_dir):
        for scene in iter_scenes(shard):
            out[scene.key] = scene
    return out


# ---------------------------------------------------------------------------------------------------- projection
def test_project_points_depth_matches_reference() -> None:
    rng = np.random.default_rng(1)
    xyz = make_points(rng)
    scene = make_scene("s", rng, {})
    for i in range(scene.num_views):
        got = D.project_points_depth(xyz, scene.cameras[i], scene.poses[i])
        ref = reference_depth(xyz, scene.cameras[i], scene.poses[i])
        assert got.shape == (H, W) and got.dtype == np.float32
        np.testing.assert_array_equal(got >= 0, ref >= 0)
        np.testing.assert_allclose(got[ref >= 0], ref[ref >= 0], rtol=1e-5)
        assert (got >= 0).sum() >= 30  # most points are visible


def test_splat_radius_and_zbuffer() -> None:
    cam = np.array([W, H, 50.0, 50.0, 32.0, 24.0])
    pose = pose_row(np.eye(4))
    xyz = np.array([[0.0, 0.0, 4.0], [0.0, 0.0, 5.0], [0.6, 0.0, 6.0]])  # two on the optical axis
    d0 = D.project_points_depth(xyz, cam, pose)
    assert d0[24, 32] == pytest.approx(4.0)  # nearest wins
    assert (d0 >= 0).sum() == 2
    d1 = D.project_points_depth(xyz, cam, pose, radius=1)
    assert (d1 >= 0).sum() == 18  # two disjoint 3x3 squares
    assert np.all(d1[23:26, 31:34] == pytest.approx(4.0))


def test_round_robin_chunks() -> None:
    assert D.round_robin_chunks(5, None) == [[0, 1, 2, 3, 4]]
    assert D.round_robin_chunks(5, 2) == [[0, 3], [1, 4], [2]]
    assert D.round_robin_chunks(4, 4) == [[0, 1, 2, 3]]
    chunks = D.round_robin_chunks(10, 3)
    assert sorted(i for c in chunks for i in c) == list(range(10)) and max(map(len, chunks)) <= 3


def test_load_points_ply_and_colmap(tmp_path: Path) -> None:
    xyz = np.array([[1.0, 2.0, 3.0], [-0.5, 0.25, 8.0]])
    write_ply(tmp_path / "p.ply", xyz)
    np.testing.assert_allclose(D.load_points(tmp_path / "p.ply"), xyz)
    write_colmap_points_txt(tmp_path / "points3D.txt", xyz)
    np.testing.assert_allclose(D.load_points(tmp_path / "points3D.txt"), xyz)


# ------------------------------------------------------------------------------------------------- fill (sfm)
def test_fill_sfm_writes_depth(dataset) -> None:
    shard_dir, scenes, xyz = dataset
    index_before = (shard_dir / "index.json").read_bytes()
    assert D.scene_scale_status(shard_dir) == "baseline"

    report = D.fill_depth(shard_dir, method="sfm", progress=False)
    assert [k for k, _, _ in report.filled] == ["withpts"]
    assert [k for k, _ in report.skipped] == ["nopts"]
    assert "no SfM points" in report.skipped[0][1]
    assert not report.ok and "skipped nopts" in report.summary()
    assert (shard_dir / "index.json").read_bytes() == index_before
    assert read_index(shard_dir) == {"withpts": "shard-000000.tar", "nopts": "shard-000000.tar"}
    assert not list(shard_dir.glob(".*tmp"))

    out = read_all(shard_dir)
    s, orig = out["withpts"], scenes["withpts"]
    assert s.has_depth and s.meta["depth_source"] == "sfm"
    assert s.meta["depth_points"].endswith("points3D.ply") and s.meta["format"] == "nerfstudio"
    assert s.images == orig.images  # bit-identical
    np.testing.assert_array_equal(s.cameras, orig.cameras)
    np.testing.assert_array_equal(s.poses, orig.poses)
    for i in range(s.num_views):
        got = decode_depth(s.depths[i], s.depth_ranges[i])
        ref = reference_depth(xyz, s.cameras[i], s.poses[i])
        proj = ref > 0
        assert proj.sum() >= 30
        assert np.all(got[~proj] == -1.0)  # nothing but projected pixels is valid
        valid = got > 0
        assert np.all(valid <= proj)
        rel = np.abs(got[valid] - ref[valid]) / ref[valid]
        assert rel.max() < 0.01
        # the codec drops values outside its 0.1/99.9 percentile range: at most the nearest and farthest point
        dropped = proj & ~valid
        assert dropped.sum() <= 2
        d_min, d_max = s.depth_ranges[i]
        assert np.all((ref[dropped] < d_min) | (ref[dropped] > d_max))
    # the z-buffer kept the nearer of the two points on one ray of view 0
    two = [xyz[-2], xyz[-1]]
    d0 = decode_depth(s.depths[0], s.depth_ranges[0])
    R = s.poses[0][:9].reshape(3, 3).astype(np.float64)
    pc = R.T @ (two[0] - s.poses[0][9:12])
    u, v = s.cameras[0][2] * pc[0] / pc[2] + s.cameras[0][4], s.cameras[0][3] * pc[1] / pc[2] + s.cameras[0][5]
    assert d0[int(np.floor(v)), int(np.floor(u))] == pytest.approx(pc[2], rel=0.01)

    n = out["nopts"]
    assert not n.has_depth and n.images == scenes["nopts"].images
    status = D.scale_status(shard_dir)
    assert status.mode == "baseline" and status.num_with_depth == 1 and status.without_depth == ["nopts"]
    assert "baseline" in status.message and "nopts" in status.message


def test_rerun_refuses_overwrite_unless_asked(dataset) -> None:
    shard_dir, _, _ = dataset
    D.fill_depth(shard_dir, method="sfm", progress=False)
    shard = list_shards(shard_dir)[0]
    before = shard.read_bytes()
    again = D.fill_depth(shard_dir, method="sfm", progress=False)
    assert again.kept == ["withpts"] and not again.filled and not again.shards_rewritten
    assert shard.read_bytes() == before

    forced = D.fill_depth(shard_dir, method="sfm", overwrite=True, splat_radius=1, progress=False)
    assert [k for k, _, _ in forced.filled] == ["withpts"] and forced.shards_rewritten
    s = read_all(shard_dir)["withpts"]
    n_valid = sum(int((decode_depth(s.depths[i], s.depth_ranges[i]) > 0).sum()) for i in range(s.num_views))
    assert n_valid > 100  # splatted to 3x3
    assert len(s.depths) == s.num_views  # old depth replaced, not appended


def test_points_option_and_colmap_txt(dataset, tmp_path: Path) -> None:
    shard_dir, scenes, xyz = dataset
    pts_dir = tmp_path / "pts"
    write_colmap_points_txt(pts_dir / "nopts" / "sparse" / "0" / "points3D.txt", xyz)
    write_ply(pts_dir / "withpts.ply", xyz)
    report = D.fill_depth(shard_dir, method="sfm", points=pts_dir, progress=False)
    assert sorted(k for k, _, _ in report.filled) == ["nopts", "withpts"] and report.ok
    assert D.scene_scale_status(shard_dir) == "depth"
    assert "depth: all 2 scene(s)" in D.scale_status(shard_dir).message
    # a single points file for a two-scene shard set is ambiguous
    with pytest.raises(D.DepthError, match="one points file"):
        D.fill_depth(shard_dir, method="sfm", points=pts_dir / "withpts.ply", overwrite=True, progress=False)


def test_dataset_root_with_splits(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    xyz = make_points(rng)
    write_ply(tmp_path / "src" / "points3D.ply", xyz)
    for split in ("train-scenes", "test-scenes"):
        with ShardWriter(tmp_path / "data" / split) as w:
            w.add(make_scene(f"s{split[:4]}", rng, {"source": str(tmp_path / "src")}))
    report = D.fill_depth(tmp_path / "data", method="sfm", progress=False)
    assert len(report.filled) == 2
    assert D.scene_scale_status(tmp_path / "data" / "train-scenes", tmp_path / "data" / "test-scenes") == "depth"


def test_corrupt_shard_left_untouched(dataset) -> None:
    shard_dir, _, _ = dataset
    shard = list_shards(shard_dir)[0]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    report = D.fill_depth(shard_dir, method="sfm", progress=False)
    assert report.shard_errors and not report.filled and not report.shards_rewritten
    assert shard.read_bytes() == data[: len(data) // 2]
    assert not list(shard_dir.glob(".*tmp"))


# --------------------------------------------------------------------------------------------------------- DA3
class FakePrediction:
    def __init__(self, depth: np.ndarray):
        self.depth = depth


def install_fake_da3(monkeypatch: pytest.MonkeyPatch) -> List[Dict]:
    calls: List[Dict] = []

    class FakeDA3:
        loaded: List[str] = []

        @classmethod
        def from_pretrained(cls, name: str) -> "FakeDA3":
            cls.loaded.append(name)
            return cls()

        def to(self, device):  # noqa: ANN001
            calls.append({"device": str(device)})
            return self

        def eval(self) -> "FakeDA3":
            return self

        def inference(self, image, intrinsics=None, extrinsics=None, align_to_input_ext_scale=False, **kw):  # noqa: ANN001
            calls.append({"n": len(image), "K": np.array(intrinsics), "E": np.array(extrinsics),
                          "align": align_to_input_ext_scale, "shapes": [im.shape for im in image], **kw})
            # half resolution, a constant per view that identifies it: fx / 10
            h, w = image[0].shape[0] // 2, image[0].shape[1] // 2
            return FakePrediction(np.stack([np.full((h, w), k[0, 0] / 10.0, np.float32) for k in intrinsics]))

    pkg = types.ModuleType("depth_anything_3")
    api = types.ModuleType("depth_anything_3.api")
    api.DepthAnything3 = FakeDA3
    pkg.api = api
    monkeypatch.setitem(sys.modules, "depth_anything_3", pkg)
    monkeypatch.setitem(sys.modules, "depth_anything_3.api", api)
    return calls


def test_da3_plumbing_with_fake_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = install_fake_da3(monkeypatch)
    rng = np.random.default_rng(5)
    scene = make_scene("five", rng, {"source": str(tmp_path / "nowhere")}, n=5)
    with ShardWriter(tmp_path / "shards") as w:
        w.add(scene)
    report = D.fill_depth(tmp_path / "shards", method="da3", max_views=2, device="cpu", progress=False)
    assert [(k, s) for k, s, _ in report.filled] == [("five", "da3")]
    assert sys.modules["depth_anything_3.api"].DepthAnything3.loaded == [D.DA3_MODEL]
    inf = [c for c in calls if "n" in c]
    assert [c["n"] for c in inf] == [2, 2, 1]  # round-robin chunks [0, 3], [1, 4], [2]
    assert all(c["align"] is True and c["shapes"][0] == (H, W, 3) for c in inf)
    expected_chunks = [[0, 3], [1, 4], [2]]
    for c, idx in zip(inf, expected_chunks, strict=True):
        for j, i in enumerate(idx):
            fx, fy, cx, cy = scene.cameras[i][2:6]
            np.testing.assert_allclose(c["K"][j], [[fx, 0, cx], [0, fy, cy], [0, 0, 1]], rtol=1e-6)
            c2w = np.eye(4)
            c2w[:3, :3] = scene.poses[i][:9].reshape(3, 3)
            c2w[:3, 3] = scene.poses[i][9:12]
            np.testing.assert_allclose(c["E"][j] @ c2w, np.eye(4), atol=1e-5)  # world-to-camera
    s = read_all(tmp_path / "shards")["five"]
    assert s.meta["depth_source"] == "da3" and s.meta["depth_model"] == D.DA3_MODEL
    assert s.images == scene.images
    for i in range(5):
        d = decode_depth(s.depths[i], s.depth_ranges[i])
        assert d.shape == (H, W)  # resized to the image
        np.testing.assert_allclose(d, scene.cameras[i][2] / 10.0, rtol=1e-5)


def test_auto_prefers_sfm_then_da3(dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    shard_dir, _, _ = dataset
    install_fake_da3(monkeypatch)
    report = D.fill_depth(shard_dir, method="auto", device="cpu", progress=False)
    assert dict((k, s) for k, s, _ in report.filled) == {"withpts": "sfm", "nopts": "da3"}
    assert D.scene_scale_status(shard_dir) == "depth"


def test_da3_missing_package_message(dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    shard_dir, _, _ = dataset
    monkeypatch.setitem(sys.modules, "depth_anything_3", None)  # import fails
    before = list_shards(shard_dir)[0].read_bytes()
    with pytest.raises(D.DepthError) as info:
        D.fill_depth(shard_dir, method="da3", progress=False)
    msg = str(info.value)
    assert "pip install depth-anything-3" in msg and "--method sfm" in msg
    # auto: the scene with points still gets sfm depth; the other is skipped with both options explained
    report = D.fill_depth(shard_dir, method="auto", progress=False)
    assert [k for k, _, _ in report.filled] == ["withpts"]
    assert report.skipped[0][0] == "nopts" and "depth-anything-3" in report.skipped[0][1]
    assert list_shards(shard_dir)[0].read_bytes() != before


def test_auto_without_points_or_da3_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "depth_anything_3", None)
    rng = np.random.default_rng(7)
    with ShardWriter(tmp_path / "shards") as w:
        w.add(make_scene("a", rng, {}))
    before = list_shards(tmp_path / "shards")[0].read_bytes()
    with pytest.raises(D.DepthError) as info:
        D.fill_depth(tmp_path / "shards", method="auto", progress=False)
    msg = str(info.value)
    assert "--method da3" in msg and "points3D" in msg
    assert list_shards(tmp_path / "shards")[0].read_bytes() == before


def test_depth_config_main(dataset, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    shard_dir, _, _ = dataset
    cfg = D.DepthConfig(shard_dir=shard_dir, method="sfm", progress=False, json_output=tmp_path / "r.json")
    assert cfg.main() == 1  # one scene skipped
    err = capsys.readouterr().err
    assert "filled 1 scene(s)" in err and "baseline" in err
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["filled"][0][0] == "withpts"


def test_real_llff_points_project_into_converted_scene(tmp_path: Path) -> None:
    """If the shared dev scenes are here: a converted llff scene gets SfM depth with plausible coverage."""
    src = Path(__file__).resolve().parents[2] / "shared" / "data" / "scenes" / "llff-kwrous"
    if not (src / "points3D.ply").is_file():
        pytest.skip("shared dev scenes not available")
    try:
        from zipsplat_ns.data.converters.nerfstudio import convert_nerfstudio
    except ImportError:
        pytest.skip("nerfstudio converter not available")
    convert_nerfstudio(src, tmp_path / "shards", progress=False, max_size=128)
    report = D.fill_depth(tmp_path / "shards", method="sfm", progress=False)
    assert len(report.filled) == 1, report.summary()
    _, source, frac = report.filled[0]
    assert source == "sfm" and frac > 0.01  # thousands of points over a 128 px image


def test_a_depth_model_failure_skips_that_scene_only(dataset) -> None:
    """A per-scene error of the depth model (not out-of-memory) is skipped, named and counted; the other scenes of
    the shard still get their depth and the shard is rewritten."""
    shard_dir, _, _ = dataset

    def est(scene):
        if scene.key == "nopts":
            raise RuntimeError("simulated per-scene failure")
        return [np.full((int(c[1]), int(c[0])), 2.0, np.float32) for c in scene.cameras]

    report = D.fill_depth(shard_dir, method="da3", estimator=est, progress=False)
    assert [k for k, _, _ in report.filled] == ["withpts"]
    assert report.skipped == [("nopts", "the depth model failed on this scene: RuntimeError: simulated per-scene failure")]
    out = read_all(shard_dir)
    assert out["withpts"].has_depth and not out["nopts"].has_depth


def _flat_depth(scene: RawScene) -> List[np.ndarray]:
    return [np.full((int(c[1]), int(c[0])), 2.0, np.float32) for c in scene.cameras]


def test_a_shard_with_a_junk_header_mid_file_is_not_rewritten(dataset) -> None:
    """A junk header before a valid end marker reads to tarfile as the end of the archive: rewriting would drop the
    scenes after it, so the shard is left unchanged (no temp file) and its processed scenes are reported skipped."""
    shard_dir, _, _ = dataset
    shard = list_shards(shard_dir)[0]
    with tarfile.open(shard) as tar:
        offset = next(m.offset for m in tar.getmembers() if m.name.startswith("nopts."))
    assert offset > 0 and offset % 512 == 0
    data = bytearray(shard.read_bytes())
    data[offset : offset + 512] = bytes(range(256)) * 2
    shard.write_bytes(bytes(data))
    report = D.fill_depth(shard_dir, method="da3", estimator=_flat_depth, progress=False)
    expected = f"corrupt tar (unreadable member header at byte {offset}"
    assert [(s, expected in r) for s, r in report.shard_errors] == [(str(shard), True)]
    assert not report.filled and not report.kept and not report.shards_rewritten and not report.ok
    assert [k for k, _ in report.skipped] == ["withpts"]  # processed, then not written; nopts is lost to the damage
    assert shard.name in report.skipped[0][1] and expected in report.skipped[0][1]
    assert shard.read_bytes() == bytes(data)
    assert not list(shard_dir.glob(".*tmp"))


def test_a_failed_shard_rewrite_reports_its_scenes_as_skipped(dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    """Scenes counted as filled or kept before their shard's rewrite failed are reported as skipped (citing the
    shard error): the report's counts add up to the shard's scenes."""
    shard_dir, _, _ = dataset
    shard = list_shards(shard_dir)[0]

    def fail_nopts(scene):
        if scene.key == "nopts":
            raise RuntimeError("simulated per-scene failure")
        return _flat_depth(scene)

    first = D.fill_depth(shard_dir, method="da3", estimator=fail_nopts, progress=False)
    assert [k for k, _, _ in first.filled] == ["withpts"] and [k for k, _ in first.skipped] == ["nopts"]
    before = shard.read_bytes()
    real_replace = D.os.replace

    def replace(src, dst):
        if Path(dst) == shard:
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(D.os, "replace", replace)
    report = D.fill_depth(shard_dir, method="da3", estimator=_flat_depth, progress=False)
    assert not report.filled and not report.kept and not report.shards_rewritten
    assert sorted(k for k, _ in report.skipped) == ["nopts", "withpts"]  # nopts was filled, withpts kept
    assert len(report.filled) + len(report.kept) + len(report.skipped) == 2
    assert [s for s, _ in report.shard_errors] == [str(shard)] and "No space left" in report.shard_errors[0][1]
    for _, reason in report.skipped:
        assert f"shard {shard.name} left unchanged" in reason and "No space left on device" in reason
    assert shard.read_bytes() == before
    assert not list(shard_dir.glob(".*tmp"))
