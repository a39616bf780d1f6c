"""Converters: every source format from a fixture with known cameras, the real nerfstudio scenes, reprojection of
their sparse points, and bad inputs."""

from __future__ import annotations

import json
import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from fixtures_sources import (
    K_matrix,
    distort_normalized,
    encode,
    orbit_poses,
    project_cv,
    random_image,
    re10k_item,
    write_colmap_model,
    write_colmap_scene,
    write_dl3dv_zip,
    write_nerfstudio_scene,
    write_re10k,
    write_video,
)

from zipsplat_ns.data.converters import (
    CONVERT_CONFIGS,
    ConvertError,
    convert,
    convert_colmap,
    convert_dl3dv,
    convert_media,
    convert_mipnerf360,
    convert_nerfstudio,
    convert_re10k,
    read_model,
    read_points3D,
)
from zipsplat_ns.data.converters.dl3dv import load_test_split
from zipsplat_ns.data.images import decode_image
from zipsplat_ns.data.shards import iter_scenes, list_shards, read_index

SHARED = Path(__file__).resolve().parents[2] / "shared"
SCENES = SHARED / "data" / "scenes"
POINTS = np.array([[0.0, 0.0, 0.0], [0.5, 0.3, -0.4], [-0.5, -0.4, 0.3], [0.4, -0.5, 0.5], [-0.4, 0.5, -0.3]])


def read_all(d: Path):
    out = {}
    for shard in list_shards(d):
        for scene in iter_scenes(shard):
            out[scene.key] = scene
    assert set(out) == set(read_index(d))
    return out


def pose_mats(scene) -> np.ndarray:
    p = scene.poses.astype(np.float64)
    m = np.zeros((len(p), 3, 4))
    m[:, :, :3] = p[:, :9].reshape(-1, 3, 3)
    m[:, :, 3] = p[:, 9:]
    return m


def cam_K(row) -> np.ndarray:
    return K_matrix(*row[2:6])


def dot_errors(img: np.ndarray, uv: np.ndarray, r: int = 3, margin: int = 5, min_sep: float = 9.0) -> np.ndarray:
    """Distance between each expected blob centre ``uv`` (corner convention) and the measured intensity centroid,
    for blobs well inside the image and away from the others."""
    g = img[..., 0].astype(np.float64)
    h, w = g.shape
    errs = []
    for k, (u, v) in enumerate(uv):
        others = np.delete(uv, k, 0)
        if len(others) and np.min(np.linalg.norm(others - [u, v], axis=1)) < min_sep:
            continue
        if not (margin <= u <= w - margin and margin <= v <= h - margin):
            continue
        i0, j0 = int(v), int(u)
        win = g[i0 - r : i0 + r + 1, j0 - r : j0 + r + 1]
        wt = np.clip(win - 80.0, 0, None)
        ii, jj = np.mgrid[i0 - r : i0 + r + 1, j0 - r : j0 + r + 1]
        cu, cv = (wt * (jj + 0.5)).sum() / wt.sum(), (wt * (ii + 0.5)).sum() / wt.sum()
        errs.append(np.hypot(cu - u, cv - v))
    return np.array(errs)


def check_dots(scene, points=POINTS, tol=0.3, min_checked=4):
    """Every view: blobs drawn at the SOURCE projections sit at the projections through the CONVERTED camera."""
    n_checked = 0
    for i, c2w in enumerate(pose_mats(scene)):
        img = decode_image(scene.images[i])
        assert img.shape[:2] == (int(scene.cameras[i, 1]), int(scene.cameras[i, 0]))
        uv, z = project_cv(points, c2w, cam_K(scene.cameras[i]))
        errs = dot_errors(img, uv[z > 0])
        n_checked += len(errs)
        if len(errs):
            assert errs.max() < tol, (i, errs)
    assert n_checked >= min_checked


# ---------------------------------------------------------------------------------------------------- nerfstudio
def test_nerfstudio_roundtrip_pinhole_passthrough(tmp_path):
    poses = orbit_poses(4)
    K = K_matrix(52.0, 50.0, 33.5, 23.25)
    write_nerfstudio_scene(tmp_path / "my.scene", poses, K, 64, 48, fmt="jpg")
    rep = convert_nerfstudio(tmp_path / "my.scene", tmp_path / "out", progress=False)
    assert rep.converted == ["my_scene"] and rep.num_views == 4 and not rep.skipped
    s = read_all(tmp_path / "out")["my_scene"]
    np.testing.assert_allclose(pose_mats(s), np.stack(poses)[:, :3], atol=1e-6)
    np.testing.assert_allclose(s.cameras, np.tile([64, 48, 52.0, 50.0, 33.5, 23.25], (4, 1)), atol=1e-6)
    # the OpenGL flip: y and z camera axes negated relative to transform_matrix, translation unchanged
    tf = json.loads((tmp_path / "my.scene" / "transforms.json").read_text())
    gl = np.array(tf["frames"][0]["transform_matrix"])
    np.testing.assert_allclose(pose_mats(s)[0][:, 1:3], -gl[:3, 1:3], atol=1e-6)
    np.testing.assert_allclose(pose_mats(s)[0][:, [0, 3]], gl[:3, [0, 3]], atol=1e-6)
    for i in range(4):  # JPEGs without pixel changes are passed through
        assert s.images[i] == (tmp_path / "my.scene" / f"images/frame_{i:05d}.jpg").read_bytes()
    assert s.meta["frames"][0] == "images/frame_00000.jpg" and s.meta["posed"] is True
    assert s.meta["source"] == str((tmp_path / "my.scene").resolve())


def test_nerfstudio_per_frame_intrinsics_downscale_dots(tmp_path):
    poses = orbit_poses(4, seed=3)
    K = K_matrix(150.0, 150.0, 81.3, 61.7)
    write_nerfstudio_scene(tmp_path / "s", poses, K, 160, 120, fmt="png", per_frame=True, points=POINTS)
    convert_nerfstudio(tmp_path / "s", tmp_path / "full", progress=False)
    s = read_all(tmp_path / "full")["s"]
    assert s.images[0][:4] == b"RIFF"  # PNG inputs are re-encoded as lossless WebP
    check_dots(s, tol=0.15)
    convert_nerfstudio(tmp_path / "s", tmp_path / "half", downscale=2, progress=False)
    s2 = read_all(tmp_path / "half")["s"]
    np.testing.assert_allclose(s2.cameras[0], [80, 60, 75.0, 75.0, 40.65, 30.85], atol=1e-4)
    check_dots(s2, tol=0.3)
    convert_nerfstudio(tmp_path / "s", tmp_path / "max", max_size=100, progress=False)
    np.testing.assert_allclose(
        read_all(tmp_path / "max")["s"].cameras[0], [100, 75, 93.75, 93.75, 50.8125, 38.5625], atol=1e-4
    )


def test_nerfstudio_opencv_is_undistorted(tmp_path):
    poses = orbit_poses(5, seed=5)
    K = K_matrix(150.0, 148.0, 83.2, 57.9)
    dist = [-0.25, 0.08, 0.002, -0.001]
    write_nerfstudio_scene(tmp_path / "d", poses, K, 160, 120, dist=dist, fmt="png", points=POINTS)
    rep = convert_nerfstudio(tmp_path / "d", tmp_path / "out", progress=False)
    s = read_all(tmp_path / "out")["d"]
    assert rep.num_views == 5
    np.testing.assert_allclose(pose_mats(s), np.stack(poses)[:, :3], atol=1e-6)
    assert not np.allclose(s.cameras[0, 2:], [150.0, 148.0, 83.2, 57.9])  # a new pinhole camera
    check_dots(s, tol=0.3)  # blobs drawn with distortion land on the pinhole projections
    # the check is meaningful: undistortion moved the blobs by pixels away from where the source image had them
    moved = [
        np.abs(project_cv(POINTS, c, K, dist)[0] - project_cv(POINTS, c, cam_K(s.cameras[i]))[0]).max()
        for i, c in enumerate(poses)
    ]
    assert min(moved) > 1.0


def test_nerfstudio_parent_folder_bad_scenes_and_frames(tmp_path):
    root = tmp_path / "scenes"
    poses = orbit_poses(4)
    K = K_matrix(50.0, 50.0, 32.0, 24.0)
    write_nerfstudio_scene(root / "good", poses, K, 64, 48)
    write_nerfstudio_scene(root / "broken", poses, K, 64, 48)
    (root / "broken" / "transforms.json").write_text('{"frames": [ {"file_path": ')
    tf = write_nerfstudio_scene(root / "holes", poses, K, 64, 48)
    tf["frames"][1]["transform_matrix"][0][0] = float("nan")
    tf["frames"][2]["file_path"] = "images/nope.jpg"
    (root / "holes" / "transforms.json").write_text(json.dumps(tf))
    (root / "not_a_scene").mkdir()
    rep = convert_nerfstudio(root, tmp_path / "out", progress=False)
    assert rep.converted == ["good", "holes"]
    assert len(rep.skipped) == 1 and rep.skipped[0][0] == "broken" and "malformed JSON" in rep.skipped[0][1]
    assert "transforms.json" in rep.skipped[0][1]
    reasons = dict(rep.skipped_frames["holes"])
    assert "non-finite" in reasons["images/frame_00001.jpg"] and "missing" in reasons["images/nope.jpg"]
    s = read_all(tmp_path / "out")["holes"]
    assert s.num_views == 2 and s.meta["frames"] == ["images/frame_00000.jpg", "images/frame_00003.jpg"]
    np.testing.assert_allclose(pose_mats(s), np.stack([poses[0], poses[3]])[:, :3], atol=1e-6)
    text = rep.summary()
    assert "SKIPPED scene broken" in text and "images/nope.jpg" in text


def test_nerfstudio_bad_inputs(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConvertError, match="transforms.json is missing"):
        convert_nerfstudio(tmp_path / "empty", tmp_path / "o1", progress=False)
    with pytest.raises(ConvertError, match="does not exist"):
        convert_nerfstudio(tmp_path / "nowhere", tmp_path / "o1", progress=False)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "transforms.json").write_text("{not json")
    with pytest.raises(ConvertError, match=r"bad/transforms.json: malformed JSON"):
        convert_nerfstudio(tmp_path / "bad", tmp_path / "o2", progress=False)
    assert not list((tmp_path / "o2").glob("*.tar"))
    poses = orbit_poses(2)
    tf = write_nerfstudio_scene(tmp_path / "allnan", poses, K_matrix(50, 50, 32, 24), 64, 48)
    for f in tf["frames"]:
        f["transform_matrix"][1][1] = float("nan")
    (tmp_path / "allnan" / "transforms.json").write_text(json.dumps(tf))
    with pytest.raises(ConvertError, match="non-finite"):
        convert_nerfstudio(tmp_path / "allnan", tmp_path / "o3", progress=False)


# ---------------------------------------------------------------------------------------------------- COLMAP
@pytest.mark.parametrize("binary", [True, False])
def test_colmap_pinhole_sorted_by_name(tmp_path, binary):
    poses = orbit_poses(4, seed=7)
    names = ["c.png", "a.png", "d.jpg", "b.png"]
    write_colmap_scene(
        tmp_path / "sc",
        poses,
        "PINHOLE",
        [70.0, 72.0, 40.5, 29.5],
        80,
        60,
        names=names,
        binary=binary,
        image_ids=[9, 3, 5, 1],
        points=POINTS,
    )
    rep = convert_colmap(tmp_path / "sc", tmp_path / "out", progress=False)
    s = read_all(tmp_path / "out")["sc"]
    order = np.argsort(names)
    assert s.meta["frames"] == sorted(names) and rep.num_views == 4
    np.testing.assert_allclose(pose_mats(s), np.stack(poses)[order, :3], atol=1e-6)
    np.testing.assert_allclose(s.cameras, np.tile([80, 60, 70.0, 72.0, 40.5, 29.5], (4, 1)), atol=1e-5)
    assert s.images[2] == (tmp_path / "sc" / "images" / "c.png").read_bytes() or s.images[2][:4] == b"RIFF"
    assert s.images[3] == (tmp_path / "sc" / "images" / "d.jpg").read_bytes()  # JPEG passed through
    pts = read_points3D(tmp_path / "sc" / "sparse" / "0", with_tracks=True)
    np.testing.assert_allclose(pts.xyz, POINTS, atol=1e-12)
    assert pts.rgb.tolist()[0] == [200, 100, 50] and len(pts.tracks[0]) == 4
    assert s.meta["sparse"].endswith("sparse/0")


def test_colmap_bin_and_txt_readers_agree(tmp_path):
    poses = orbit_poses(3)
    cams = {
        1: ("OPENCV", 80, 60, [70.0, 71.0, 40.0, 30.0, -0.1, 0.01, 0.001, -0.002]),
        2: ("SIMPLE_PINHOLE", 40, 30, [35.0, 20.0, 15.0]),
    }
    imgs = {i + 1: (c2w, 1 + i % 2, f"im{i}.png") for i, c2w in enumerate(poses)}
    write_colmap_model(tmp_path / "b", cams, imgs, POINTS, binary=True)
    write_colmap_model(tmp_path / "t", cams, imgs, POINTS, binary=False)
    cb, ib = read_model(tmp_path / "b", with_points=True)
    ct, it = read_model(tmp_path / "t", with_points=True)
    assert cb.keys() == ct.keys() and ib.keys() == it.keys()
    for k in cb:
        assert cb[k].model == ct[k].model and (cb[k].width, cb[k].height) == (ct[k].width, ct[k].height)
        np.testing.assert_array_equal(cb[k].params, ct[k].params)
    for k in ib:
        assert ib[k].name == it[k].name and ib[k].camera_id == it[k].camera_id
        np.testing.assert_allclose(ib[k].c2w(), poses[k - 1][:3], atol=1e-12)
        np.testing.assert_allclose(it[k].c2w(), poses[k - 1][:3], atol=1e-12)
    assert len(ib[2].xys) == 5 and len(it[2].xys) == 5 and len(it[1].xys) == 0  # txt: empty observation line
    np.testing.assert_allclose(ib[2].xys, it[2].xys, atol=1e-12)
    pb, pt = read_points3D(tmp_path / "b", True), read_points3D(tmp_path / "t", True)
    np.testing.assert_array_equal(pb.xyz, pt.xyz)
    assert [t.tolist() for t in pb.tracks] == [t.tolist() for t in pt.tracks]
    # truncated binary: a clear error naming the file
    data = (tmp_path / "b" / "images.bin").read_bytes()
    (tmp_path / "b" / "images.bin").write_bytes(data[:50])
    with pytest.raises(ValueError, match="images.bin: truncated"):
        read_model(tmp_path / "b")


@pytest.mark.parametrize(
    "model,params",
    [
        ("SIMPLE_RADIAL", [150.0, 81.0, 59.0, -0.2]),
        ("RADIAL", [150.0, 79.0, 61.0, -0.2, 0.05]),
        ("OPENCV", [150.0, 147.0, 82.0, 58.0, -0.2, 0.04, 0.002, -0.001]),
        ("SIMPLE_PINHOLE", [150.0, 80.3, 60.2]),
    ],
)
def test_colmap_models_dots(tmp_path, model, params):
    poses = orbit_poses(4, seed=11)
    write_colmap_scene(tmp_path / "m", poses, model, params, 160, 120, dot_points=POINTS, binary=model != "RADIAL")
    convert_colmap(tmp_path / "m", tmp_path / "out", progress=False)
    s = read_all(tmp_path / "out")["m"]
    np.testing.assert_allclose(pose_mats(s), np.stack(poses)[:, :3], atol=1e-6)
    check_dots(s, tol=0.3)


def test_colmap_bad_inputs(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(ConvertError, match="no sparse model"):
        convert_colmap(tmp_path / "x", tmp_path / "o", progress=False)
    write_colmap_scene(tmp_path / "y", orbit_poses(2), "PINHOLE", [50, 50, 32, 24], 64, 48)
    (tmp_path / "y" / "images" / "img_001.png").unlink()
    rep = convert_colmap(tmp_path / "y", tmp_path / "o", progress=False)
    assert rep.num_views == 1 and rep.skipped_frames["y"] == [("img_001.png", "image file missing")]
    # a scene that cannot be converted: alone, an error naming it and why, and no output; among others, skipped
    root = tmp_path / "many"
    write_colmap_scene(root / "good", orbit_poses(2), "PINHOLE", [50, 50, 32, 24], 64, 48)
    write_colmap_scene(root / "noimages", orbit_poses(2), "PINHOLE", [50, 50, 32, 24], 64, 48)
    shutil.rmtree(root / "noimages" / "images")
    with pytest.raises(ConvertError, match=r"nothing converted .*noimages: image folder .*noimages/images is missing"):
        convert_colmap(root / "noimages", tmp_path / "o2", progress=False)
    assert not (tmp_path / "o2").exists()
    rep = convert_colmap(root, tmp_path / "o3", progress=False)
    assert rep.converted == ["good"] and rep.skipped[0][0] == "noimages" and "is missing" in rep.skipped[0][1]


# ---------------------------------------------------------------------------------------------------- MipNeRF360
def test_mipnerf360_layout_images4_per_scene_tars(tmp_path):
    root = tmp_path / "360_v2"
    poses = orbit_poses(4, seed=2)
    names = ["_DSC8003.JPG", "_DSC8001.JPG", "_DSC8002.JPG", "_DSC8000.JPG"]
    # full-size COLMAP camera 640x480 with an off-centre principal point; images_4 stored at 160x120
    write_colmap_scene(
        root / "bonsai",
        poses,
        "PINHOLE",
        [600.0, 600.0, 330.0, 228.0],
        640,
        480,
        img_w=160,
        img_h=120,
        images_dir="images_4",
        names=names,
        dot_points=POINTS,
    )
    write_colmap_scene(
        root / "room",
        poses[:2],
        "SIMPLE_PINHOLE",
        [600.0, 320.0, 240.0],
        640,
        480,
        img_w=160,
        img_h=120,
        images_dir="images_4",
    )
    (root / "kitchen").mkdir()  # no model: skipped with a reason
    rep = convert_mipnerf360(root, tmp_path / "out")  # with the progress bar
    assert sorted(p.name for p in list_shards(tmp_path / "out")) == ["bonsai.tar", "room.tar"]
    assert read_index(tmp_path / "out") == {"bonsai": "bonsai.tar", "room": "room.tar"}
    assert rep.skipped == [("kitchen", f"no COLMAP model in {root / 'kitchen'}/sparse/0")]
    assert any("bicycle" in n for n in rep.notes)
    s = read_all(tmp_path / "out")["bonsai"]
    assert s.meta["frames"] == sorted(names)
    np.testing.assert_allclose(pose_mats(s), np.stack(poses)[np.argsort(names), :3], atol=1e-6)
    # cropped to the principal point and resized back to the images_4 size: centred principal point, 1/4 focal x crop
    assert (s.cameras[:, :2] == [160, 120]).all()
    np.testing.assert_allclose(s.cameras[:, 4:6], [[80, 60]] * 4, atol=0.51 * 160 / 150)
    check_dots(s, tol=0.35)
    r = read_all(tmp_path / "out")["room"]
    np.testing.assert_allclose(r.cameras[0], [160, 120, 150, 150, 80, 60], atol=1e-4)


# ---------------------------------------------------------------------------------------------------- media
def test_media_folder_glob_and_sizes(tmp_path):
    d = tmp_path / "pics"
    d.mkdir()
    (d / "b.png").write_bytes(encode(random_image(64, 48, 1), "png"))
    (d / "a.jpg").write_bytes(encode(random_image(40, 60, 2), "jpg"))
    (d / "notes.txt").write_text("hi")
    rep = convert_media(d, tmp_path / "o1", progress=False)
    s = read_all(tmp_path / "o1")["pics"]
    assert rep.num_views == 2 and s.meta["posed"] is False and s.meta["frames"] == ["a.jpg", "b.png"]
    f = 0.5 / np.tan(np.radians(30))
    np.testing.assert_allclose(
        s.cameras, [[40, 60, 40 * f, 40 * f, 20, 30], [64, 48, 64 * f, 64 * f, 32, 24]], rtol=1e-6
    )
    np.testing.assert_allclose(pose_mats(s), np.tile(np.eye(4)[:3], (2, 1, 1)), atol=0)
    convert_media(d, tmp_path / "o2", square=True, key="sq", progress=False)
    s = read_all(tmp_path / "o2")["sq"]
    assert (s.cameras[:, :2] == 40).all()  # common square size = the smallest side
    assert [decode_image(b).shape for b in s.images] == [(40, 40, 3)] * 2
    convert_media(str(d / "*.png"), tmp_path / "o3", fov_deg=90, progress=False)
    s = read_all(tmp_path / "o3")["pics"]
    assert s.num_views == 1 and abs(s.cameras[0, 2] - 32.0) < 1e-4


def _jpeg_with_orientation(pixels: np.ndarray, orientation: int | None) -> bytes:
    """A JPEG of ``pixels`` (as stored, before any EXIF rotation), with EXIF Orientation ``orientation`` if given."""
    import io

    from PIL import Image

    im, buf = Image.fromarray(pixels), io.BytesIO()
    if orientation is None:
        im.save(buf, format="JPEG", quality=95)
    else:
        exif = im.getexif()
        exif[0x0112] = orientation
        im.save(buf, format="JPEG", quality=95, exif=exif)
    return buf.getvalue()


def test_media_photos_are_turned_upright_by_their_exif_orientation(tmp_path, capsys):
    """A phone photo stored sideways (64x48 pixels, Orientation 6 = rotate 90 degrees clockwise to view) is stored
    upright as 48x64 with a camera for that size; photos without the tag or with Orientation 1 keep their bytes
    (so does an invalid value, which is reported)."""
    d = tmp_path / "phone"
    d.mkdir()
    stored = random_image(64, 48, 3)
    stored[:12, :16] = (255, 0, 0)  # a red block in the stored top-left corner: the top-right once upright
    sideways = _jpeg_with_orientation(stored, 6)
    (d / "a_sideways.jpg").write_bytes(sideways)
    (d / "b_plain.jpg").write_bytes(plain := _jpeg_with_orientation(random_image(40, 30, 4), None))
    (d / "c_upright.jpg").write_bytes(upright := _jpeg_with_orientation(random_image(40, 30, 5), 1))
    (d / "d_odd.jpg").write_bytes(odd := _jpeg_with_orientation(random_image(40, 30, 6), 9))  # not a valid value
    capsys.readouterr()
    convert_media(d, tmp_path / "o", progress=False)
    log = " ".join(capsys.readouterr().err.split())
    assert "convert media: phone: 1 of 4 image(s) rotated upright by their EXIF orientation" in log
    assert "1 with an invalid Orientation value, stored as they are: d_odd.jpg (9)" in log
    s = read_all(tmp_path / "o")["phone"]
    assert s.meta["frames"] == ["a_sideways.jpg", "b_plain.jpg", "c_upright.jpg", "d_odd.jpg"]
    img = decode_image(s.images[0])
    assert img.shape == (64, 48, 3) and s.cameras[0, :2].tolist() == [48, 64]
    np.testing.assert_allclose(s.cameras[0, 4:], [24, 32])
    np.testing.assert_array_equal(img, np.rot90(decode_image(sideways), -1))  # clockwise, lossless re-encoding
    assert img[2:10, -10:-2, 0].min() > 200 and img[2:10, -10:-2, 1:].max() < 60  # the red block is top-right
    assert s.images[1] == plain and s.images[2] == upright and s.images[3] == odd  # the files' own bytes
    assert s.cameras[1, :2].tolist() == [40, 30] and s.cameras[2, :2].tolist() == [40, 30]


def test_media_video(tmp_path):
    v = write_video(tmp_path / "clip.mp4", n=12)
    rep = convert_media(v, tmp_path / "o", num_frames=4, progress=False)
    s = read_all(tmp_path / "o")["clip"]
    assert rep.num_views == 4 and s.meta["frames"] == ["frame 0", "frame 4", "frame 7", "frame 11"]
    assert decode_image(s.images[0]).shape == (48, 64, 3)


def test_media_bad_inputs(tmp_path):
    (tmp_path / "e").mkdir()
    with pytest.raises(ConvertError, match="holds no image files"):
        convert_media(tmp_path / "e", tmp_path / "o", progress=False)
    (tmp_path / "e" / "x.jpg").write_bytes(b"garbage")
    (tmp_path / "e" / "y.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    with pytest.raises(ConvertError, match="no readable image"):
        convert_media(tmp_path / "e", tmp_path / "o", progress=False)
    (tmp_path / "bad.mp4").write_bytes(b"\x00" * 1000)
    with pytest.raises(ConvertError, match="cannot decode .*bad.mp4 as a video"):
        convert_media(tmp_path / "bad.mp4", tmp_path / "o", progress=False)
    (tmp_path / "what.xyz").write_text("?")
    with pytest.raises(ConvertError, match="cannot tell what"):
        convert_media(tmp_path / "what.xyz", tmp_path / "o", progress=False)
    with pytest.raises(ConvertError, match="matches no files"):
        convert_media(str(tmp_path / "*.webp"), tmp_path / "o", progress=False)
    assert not list((tmp_path / "o").glob("*.tar")) if (tmp_path / "o").exists() else True


# ---------------------------------------------------------------------------------------------------- RE10K
@pytest.mark.parametrize("as_zip", [False, True])
def test_re10k_chunks(tmp_path, as_zip):
    K = K_matrix(58.0, 57.5, 31.0, 24.5)
    p1, p2, p3 = orbit_poses(3, seed=1), orbit_poses(4, seed=2), orbit_poses(3, seed=3)
    bad = re10k_item("badscene", p3, K, 64, 48)
    bad["cameras"][1, 8] = float("nan")
    src = write_re10k(
        tmp_path / "src",
        {"train": [[re10k_item("aaa111", p1, K, 64, 48), bad]], "test": [[re10k_item("bbb222", p2, K, 64, 48, 9)]]},
        as_zip=as_zip,
    )
    rep = convert_re10k(src, tmp_path / "out", progress=False)
    assert rep.splits == {"train": ["aaa111"], "test": ["bbb222"]}
    assert rep.skipped[0][0] == "badscene" and "non-finite" in rep.skipped[0][1]
    tr = read_all(tmp_path / "out" / "train-scenes")["aaa111"]
    te = read_all(tmp_path / "out" / "test-scenes")["bbb222"]
    np.testing.assert_allclose(pose_mats(tr), np.stack(p1)[:, :3], atol=1e-5)
    np.testing.assert_allclose(pose_mats(te), np.stack(p2)[:, :3], atol=1e-5)
    np.testing.assert_allclose(tr.cameras, np.tile([64, 48, 58.0, 57.5, 31.0, 24.5], (3, 1)), rtol=1e-6)
    item = re10k_item("aaa111", p1, K, 64, 48)
    assert tr.images == [bytes(t.numpy()) for t in item["images"]]  # JPEGs passed through
    assert tr.meta["timestamps"] == [0, 33366, 66732] and tr.meta["url"].endswith("aaa111")
    rep = convert_re10k(src, tmp_path / "sq", target_size=32, progress=False)
    sq = read_all(tmp_path / "sq" / "test-scenes")["bbb222"]
    assert (sq.cameras[:, :2] == 32).all() and decode_image(sq.images[0]).shape == (32, 32, 3)


def test_re10k_bad_inputs(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConvertError, match="no .torch chunks"):
        convert_re10k(tmp_path / "empty", tmp_path / "o", progress=False)
    (tmp_path / "r" / "train").mkdir(parents=True)
    (tmp_path / "r" / "train" / "000000.torch").write_bytes(b"not a torch file")
    K = K_matrix(50, 50, 32, 24)
    write_re10k(tmp_path / "r2", {"train": [[re10k_item("ok", orbit_poses(2), K, 64, 48)]]})
    (tmp_path / "r2" / "re10k" / "train" / "000001.torch").write_bytes(b"junk")
    rep = convert_re10k(tmp_path / "r2", tmp_path / "o2", progress=False)
    assert rep.converted == ["ok"] and "whole chunk" in rep.skipped[0][0]
    with pytest.raises(ConvertError, match="nothing converted"):
        convert_re10k(tmp_path / "r", tmp_path / "o3", progress=False)


# ---------------------------------------------------------------------------------------------------- DL3DV
def test_dl3dv_zips(tmp_path):
    K_full = K_matrix(600.0, 600.0, 330.0, 236.0)
    poses = orbit_poses(5, seed=4)
    h_train, h_test = "a" * 64, "b" * 64
    write_dl3dv_zip(tmp_path / "src" / "1K" / f"{h_train}.zip", poses, K_full, 640, 480, missing=[2], points=POINTS)
    write_dl3dv_zip(tmp_path / "src" / "1K" / f"{h_test}.zip", poses[:3], K_full, 640, 480)
    (tmp_path / "src" / "1K" / ("c" * 64 + ".zip")).write_bytes(b"not a zip")
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"test": [h_test]}))
    rep = convert_dl3dv(tmp_path / "src", tmp_path / "out", test_split=split, progress=False)
    assert rep.splits == {"train": [h_train], "test": [h_test]}
    assert rep.skipped[0][0] == "c" * 64 and "not a readable zip" in rep.skipped[0][1]
    assert rep.skipped_frames[h_train] == [("images/frame_00003.png", "image file missing")]
    s = read_all(tmp_path / "out" / "train-scenes")[h_train]
    keep = [0, 1, 3, 4]
    np.testing.assert_allclose(pose_mats(s), np.stack(poses)[keep, :3], atol=1e-6)
    assert s.meta["frames"] == [f"images/frame_{i + 1:05d}.png" for i in keep]
    assert (s.cameras[:, :2] == [160, 120]).all()  # images_4 size kept
    check_dots(s, tol=0.35)  # intrinsics /4, crop to principal point, resize back: consistent with the pixels
    # without the crop: exactly the transforms.json intrinsics scaled by img_w / w
    convert_dl3dv(
        tmp_path / "src" / "1K" / f"{h_test}.zip",
        tmp_path / "o2",
        test_split=split,
        crop_principal_point=False,
        progress=False,
    )
    t = read_all(tmp_path / "o2" / "test-scenes")[h_test]
    np.testing.assert_allclose(t.cameras, np.tile([160, 120, 150.0, 150.0, 82.5, 59.0], (3, 1)), atol=1e-5)
    assert len(load_test_split()) == 141


def _zip_member_data_offset(path: Path, name: str) -> int:
    """Where the (stored or compressed) data of member ``name`` starts in the zip file."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(name)
    raw = path.read_bytes()
    h = info.header_offset
    name_len, extra_len = struct.unpack("<HH", raw[h + 26 : h + 30])
    return h + 30 + name_len + extra_len


def test_dl3dv_a_corrupt_zip_member_skips_that_frame_or_scene_not_the_run(tmp_path):
    """A bad CRC (stored image) drops that frame, a broken deflate stream (transforms.json) that scene; the rest
    converts and both reasons name the zip and the member."""
    K_full = K_matrix(600.0, 600.0, 330.0, 236.0)
    poses = orbit_poses(4, seed=4)
    h_ok, h_img, h_tf = "a" * 64, "b" * 64, "c" * 64
    src = tmp_path / "src"
    for h in (h_ok, h_img, h_tf):
        write_dl3dv_zip(src / f"{h}.zip", poses, K_full, 640, 480)
    # one byte flipped inside a stored image: the member's CRC no longer matches (zipfile.BadZipFile)
    img_member = f"{h_img}/images_4/frame_00002.png"
    pos = _zip_member_data_offset(src / f"{h_img}.zip", img_member) + 200
    data = bytearray((src / f"{h_img}.zip").read_bytes())
    data[pos] ^= 0xFF
    (src / f"{h_img}.zip").write_bytes(bytes(data))
    # transforms.json deflated, its first block type set to the invalid 0b11 (zlib.error)
    tf_member = f"{h_tf}/transforms.json"
    with zipfile.ZipFile(src / f"{h_tf}.zip") as zf:
        members = [(n, zf.read(n)) for n in zf.namelist()]
    with zipfile.ZipFile(src / f"{h_tf}.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        for n, b in members:
            zf.writestr(n, b)
    pos = _zip_member_data_offset(src / f"{h_tf}.zip", tf_member)
    data = bytearray((src / f"{h_tf}.zip").read_bytes())
    data[pos] |= 0b110
    (src / f"{h_tf}.zip").write_bytes(bytes(data))
    split = tmp_path / "split.json"
    split.write_text("[]")

    rep = convert_dl3dv(src, tmp_path / "out", test_split=split, progress=False)
    assert rep.converted == [h_ok, h_img]
    [(frame, why)] = rep.skipped_frames[h_img]
    assert frame == "images/frame_00002.png"
    assert f"member {img_member} of {h_img}.zip is unreadable (BadZipFile" in why
    [(key, why)] = rep.skipped
    assert key == h_tf and f"member {tf_member} of {h_tf}.zip is unreadable (error: " in why
    scenes = read_all(tmp_path / "out" / "train-scenes")
    assert scenes[h_ok].num_views == 4 and scenes[h_img].num_views == 3
    # when every frame is needed, the scene with the bad image is skipped, naming it; the others still convert
    rep = convert_dl3dv(src, tmp_path / "out2", test_split=split, min_views=4, progress=False)
    assert rep.converted == [h_ok] and [k for k, _ in rep.skipped] == [h_img, h_tf]
    assert f"member {img_member} of {h_img}.zip is unreadable" in rep.skipped[0][1]


# ---------------------------------------------------------------------------------------------------- dispatcher
def test_dispatcher_and_configs(tmp_path):
    with pytest.raises(ValueError, match="unknown convert format 'blender'"):
        convert("blender", tmp_path, tmp_path / "o")
    with pytest.raises(TypeError, match="unknown option"):
        convert("nerfstudio", tmp_path, tmp_path / "o", bogus=1)
    write_nerfstudio_scene(tmp_path / "s", orbit_poses(2), K_matrix(50, 50, 32, 24), 64, 48)
    rep = convert("nerfstudio", tmp_path / "s", tmp_path / "o", max_size=32, progress=False)
    assert rep.num_views == 2
    import tyro

    cfg = tyro.cli(
        CONVERT_CONFIGS["nerfstudio"],
        args=[str(tmp_path / "s"), str(tmp_path / "o2"), "--max-size", "32", "--no-progress"],
    )
    assert cfg.max_size == 32 and cfg.src == tmp_path / "s"
    assert cfg.run().num_views == 2
    sub = tyro.extras.subcommand_cli_from_dict(
        CONVERT_CONFIGS, args=["re10k", str(tmp_path / "r"), str(tmp_path / "o3"), "--target-size", "64"]
    )
    assert type(sub).__name__ == "Re10kConvertConfig" and sub.target_size == 64 and sub.dst == tmp_path / "o3"
    for name, cls in CONVERT_CONFIGS.items():  # every config builds a CLI with --help
        with pytest.raises(SystemExit):
            tyro.cli(cls, args=["--help"])


# ---------------------------------------------------------------------------------------------------- real scenes
def _read_ply_xyz(path: Path) -> np.ndarray:
    from plyfile import PlyData

    v = PlyData.read(str(path))["vertex"]
    return np.stack([v["x"], v["y"], v["z"]], 1).astype(np.float64)


def _project_gl(points, tf_frame):
    """Source-side projection done from the nerfstudio conventions directly: OpenGL camera (x right, y up, looks
    along -z), pixel u = fx * x / (-z) + cx, v = -fy * y / (-z) + cy."""
    M = np.array(tf_frame["transform_matrix"], np.float64)
    R, t = M[:3, :3], M[:3, 3]
    pc = (points - t) @ R  # camera coordinates, GL axes
    depth = -pc[:, 2]
    u = tf_frame["fl_x"] * pc[:, 0] / depth + tf_frame["cx"]
    v = -tf_frame["fl_y"] * pc[:, 1] / depth + tf_frame["cy"]
    return np.stack([u, v], 1), depth


@pytest.fixture(scope="module")
def real_converted(tmp_path_factory):
    if not SCENES.is_dir():
        pytest.skip(f"shared real scenes not found at {SCENES}")
    out = tmp_path_factory.mktemp("real") / "shards"
    rep = convert("nerfstudio", SCENES, out, max_size=128, progress=False)
    return rep, read_all(out)


def test_real_scenes_all_convert(real_converted):
    rep, scenes = real_converted
    dirs = sorted(p.name for p in SCENES.iterdir() if (p / "transforms.json").is_file())
    assert sorted(rep.converted) == dirs and not rep.skipped and not rep.skipped_frames
    total = sum(len(json.loads((SCENES / d / "transforms.json").read_text())["frames"]) for d in dirs)
    assert rep.num_views == total
    for d in dirs:
        tf = json.loads((SCENES / d / "transforms.json").read_text())
        s = scenes[d]
        assert s.num_views == len(tf["frames"]) and s.cameras[:, :2].max() <= 128
        gl = np.array([f["transform_matrix"] for f in tf["frames"]])[:, :3]
        np.testing.assert_allclose(
            pose_mats(s)[:, :, :3], gl[:, :, :3] * [1, -1, -1], atol=2e-6 * max(1, np.abs(gl).max())
        )
        np.testing.assert_allclose(pose_mats(s)[:, :, 3], gl[:, :, 3], rtol=1e-6, atol=1e-6)
        if (SCENES / d / "points3D.ply").is_file():
            assert s.meta["points3D"] == "points3D.ply" and Path(s.meta["source"]) == (SCENES / d).resolve()


@pytest.mark.parametrize("name", ["llff-beer", "llff-scodive", "llff-kwrous"])
def test_real_scenes_reproject_points(real_converted, name):
    _, scenes = real_converted
    if not (SCENES / name / "points3D.ply").is_file():
        pytest.skip(f"{name}/points3D.ply not present")
    import cv2

    tf = json.loads((SCENES / name / "transforms.json").read_text())
    pts = _read_ply_xyz(SCENES / name / "points3D.ply")
    s = scenes[name]
    checked = 0
    colour_err, colour_ctrl = [], []
    for i, fr in enumerate(tf["frames"]):
        fr = {**{k: v for k, v in tf.items() if k != "frames"}, **fr}
        src_uv, src_depth = _project_gl(pts, fr)
        c2w = pose_mats(s)[i]
        K = cam_K(s.cameras[i])
        uv, depth = project_cv(pts, c2w, K)
        front_src, front = src_depth > 1e-6, depth > 1e-6
        assert front_src.mean() == pytest.approx(front.mean(), abs=1e-9)
        sx, sy = s.cameras[i, 0] / fr["w"], s.cameras[i, 1] / fr["h"]
        if fr.get("camera_model") == "OPENCV":
            dist = np.array([fr.get(k, 0.0) for k in ("k1", "k2", "p1", "p2")])
            # source side: cv2.projectPoints with the lens distortion, in source pixels
            M = np.array(fr["transform_matrix"])[:3]
            c2w_cv = M.copy()
            c2w_cv[:, 1:3] *= -1
            w2c = np.linalg.inv(np.vstack([c2w_cv, [0, 0, 0, 1]]))
            rvec, _ = cv2.Rodrigues(w2c[:3, :3])
            Ksrc = K_matrix(fr["fl_x"], fr["fl_y"], fr["cx"], fr["cy"])
            p = pts[front_src]
            src_px = cv2.projectPoints(p, rvec, w2c[:3, 3], Ksrc, dist)[0][:, 0]
            # ours: undistorted pinhole pixel -> normalised ray -> the source lens model -> source pixels
            ours = uv[front_src]
            xy = (ours - K[[0, 1], [2, 2]]) / [K[0, 0], K[1, 1]]
            back = distort_normalized(xy, dist) * [fr["fl_x"], fr["fl_y"]] + [fr["cx"], fr["cy"]]
            inside = (
                (ours[:, 0] > 2)
                & (ours[:, 0] < s.cameras[i, 0] - 2)
                & (ours[:, 1] > 2)
                & (ours[:, 1] < s.cameras[i, 1] - 2)
            )
            err = np.linalg.norm(back - src_px, axis=1)[inside]
            assert len(err) == 0 or err.max() < 1.0
            checked += len(err)
            # image content: the converted pixels at our projections match the source pixels at the distorted ones
            src_img = decode_image((SCENES / name / fr["file_path"]).read_bytes()).astype(np.float64)
            our_img = decode_image(s.images[i]).astype(np.float64)
            for uvo, uvs, lst in ((ours, src_px, colour_err), (ours + [3, 0], src_px, colour_ctrl)):
                a = our_img[
                    np.clip((uvo[inside, 1]).astype(int), 0, our_img.shape[0] - 1),
                    np.clip((uvo[inside, 0]).astype(int), 0, our_img.shape[1] - 1),
                ]
                b = src_img[
                    np.clip((uvs[inside, 1]).astype(int), 0, src_img.shape[0] - 1),
                    np.clip((uvs[inside, 0]).astype(int), 0, src_img.shape[1] - 1),
                ]
                lst.append(np.abs(a - b).mean(1))
        else:
            # points in view (inside the image, not grazing the camera plane): same pixels after the resize scaling
            inside = front_src & (src_depth > 0.05 * np.median(src_depth[front_src]))
            inside &= (src_uv[:, 0] >= 0) & (src_uv[:, 0] <= fr["w"]) & (src_uv[:, 1] >= 0) & (src_uv[:, 1] <= fr["h"])
            diff = np.abs(uv[inside] - src_uv[inside] * [sx, sy])
            assert len(diff) == 0 or diff.max() < 0.5 * min(sx, sy), (i, diff.max())
            checked += int(inside.sum())
    assert checked > 100
    if colour_err:
        e, c = np.median(np.concatenate(colour_err)), np.median(np.concatenate(colour_ctrl))
        assert e < 0.7 * c, (e, c)


def test_calibration_for_another_aspect_ratio_is_an_error_not_a_distortion():
    """A downscaled image (sizes rounded to whole pixels) scales K; one whose aspect ratio differs from the size the
    calibration was made for (rotated, cropped, wrong file) is refused with both sizes named."""
    from zipsplat_ns.data.converters.common import ImageOps, process_view

    K = np.array([[600.0, 0, 618.0], [0, 600.0, 411.0], [0, 0, 1]])
    small = np.zeros((206, 309, 3), np.uint8)  # 1236x822 downscaled 4x, height rounded up
    _, cam = process_view(small, K, None, ImageOps(), declared_size=(1236, 822), name="images_4/a.jpg")
    np.testing.assert_allclose(cam, [309, 206, 150.0, 600 * 206 / 822, 154.5, 411 * 206 / 822])
    rotated = np.zeros((309, 206, 3), np.uint8)
    with pytest.raises(ValueError, match=r"images_4/b.jpg: the image is 206x309 but its calibration is for 1236x822"):
        process_view(rotated, K, None, ImageOps(), declared_size=(1236, 822), name="images_4/b.jpg")


def test_mipnerf360_scene_with_a_dropped_frame_is_skipped_whole(tmp_path):
    """Benchmark index files count positions in the name-sorted frame list: a missing image would shift every later
    view, so the scene is skipped with the frame named instead of converted with shifted positions."""
    root = tmp_path / "360_v2"
    write_colmap_scene(root / "bonsai", orbit_poses(4, seed=2), "PINHOLE", [600.0, 600.0, 320.0, 240.0], 640, 480,
                       img_w=160, img_h=120, images_dir="images_4")  # fmt: skip
    victim = sorted((root / "bonsai" / "images_4").iterdir())[1]
    victim.unlink()
    with pytest.raises(ConvertError) as err:  # no scene left to convert
        convert_mipnerf360(root, tmp_path / "out", progress=False)
    assert f"1 unusable frame(s) ({victim.name}: image file missing)" in str(err.value)
    assert "index files refer to frame positions" in str(err.value)
