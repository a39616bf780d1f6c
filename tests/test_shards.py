"""Shard format: writer/reader round trips, the depth codec, a spec-built tar, corruption handling, shard tools."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from zipsplat_ns.data.depth_codec import decode_depth, encode_depth, quantize_depth
from zipsplat_ns.data.images import decode_image, encode_image
from zipsplat_ns.data.scene import RawScene, SceneError
from zipsplat_ns.data.shard_tools import check_shards, repack_shards
from zipsplat_ns.data.shards import (
    ShardDamaged,
    ShardWriter,
    iter_scenes,
    list_shards,
    read_index,
    read_scene,
    write_shards,
)


def make_scene(key: str, n: int = 4, depth: bool = True, seed: int = 0, h: int = 24, w: int = 32) -> RawScene:
    rng = np.random.default_rng(seed)
    cams = np.tile(np.array([[w, h, 30.0, 31.0, w / 2, h / 2]], np.float32), (n, 1))
    poses = np.tile(np.array([[1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0]], np.float32), (n, 1))
    poses[:, 9] = np.arange(n) * 0.1
    imgs = [encode_image(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "png") for _ in range(n)]
    if not depth:
        return RawScene(key, cams, poses, imgs, meta={"source": "test"})
    deps = [encode_depth(rng.uniform(0.5, 20.0, (h, w))) for _ in range(n)]
    return RawScene(key, cams, poses, imgs, [d for d, _ in deps], [r for _, r in deps], {"source": "test"})


def assert_same_scene(a: RawScene, b: RawScene) -> None:
    assert a.key == b.key and a.meta_json() == b.meta_json()
    assert a.cameras.tobytes() == b.cameras.tobytes() and a.poses.tobytes() == b.poses.tobytes()
    assert a.images == b.images and a.depths == b.depths
    assert (a.depth_ranges is None) == (b.depth_ranges is None)
    if a.depth_ranges is not None:
        assert np.array_equal(np.asarray(a.depth_ranges), np.asarray(b.depth_ranges))


def test_writer_round_trip_is_bit_identical_with_rotation(tmp_path):
    scenes = [make_scene(f"scene_{i}", depth=i % 2 == 0, seed=i) for i in range(7)]
    index = write_shards(scenes, tmp_path / "out", shard_size_mb=0.01)
    shards = list_shards(tmp_path / "out")
    assert len(shards) > 1 and [p.name for p in shards][0] == "shard-000000.tar"
    assert read_index(tmp_path / "out") == index and set(index) == {s.key for s in scenes}
    back = [s for p in shards for s in iter_scenes(p)]
    assert [s.key for s in back] == [s.key for s in scenes]
    for a, b in zip(scenes, back):
        assert_same_scene(a, b)
    assert_same_scene(read_scene(tmp_path / "out", "scene_5"), scenes[5])
    # nothing but shards and the index is left behind
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted([p.name for p in shards] + ["index.json"])


def test_member_names_and_order_follow_the_format(tmp_path):
    write_shards([make_scene("abc", n=2)], tmp_path)
    with tarfile.open(tmp_path / "shard-000000.tar") as tar:
        names = tar.getnames()
    assert names == ["abc.meta.json", "abc.cameras.npy", "abc.poses.npy", "abc.img0.png", "abc.img1.png",
                     "abc.dep0.webp", "abc.dep1.webp", "abc.depth_ranges.json"]  # fmt: skip


def test_a_shard_built_byte_by_byte_from_the_spec_reads(tmp_path):
    """Build a tar with tarfile only, following the format description, and read it with our reader."""
    n, h, w = 3, 10, 12
    rng = np.random.default_rng(5)
    cams = np.array([[w, h, 9.0, 9.5, 6.0, 5.0]] * n, np.float32)
    poses = np.array([[1, 0, 0, 0, 1, 0, 0, 0, 1, i, 0, 0] for i in range(n)], np.float32)
    imgs = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]
    depth = rng.uniform(1, 3, (h, w))
    path = tmp_path / "shard-000000.tar"

    def npy(a):
        buf = io.BytesIO()
        np.save(buf, a)
        return buf.getvalue()

    def png(a):
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        return buf.getvalue()

    codes, (dmin, dmax) = quantize_depth(depth)
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(codes, mode="L").save(buf, format="WEBP", lossless=True)
    members = [("k1.meta.json", json.dumps({"num_views": n, "has_depth": True}).encode()),
               ("k1.cameras.npy", npy(cams)), ("k1.poses.npy", npy(poses))]  # fmt: skip
    members += [(f"k1.img{i}.png", png(imgs[i])) for i in range(n)]
    members += [(f"k1.dep{i}.webp", buf.getvalue()) for i in range(n)]
    members += [("k1.depth_ranges.json", json.dumps([[dmin, dmax]] * n).encode())]
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (scene,) = list(iter_scenes(path))
    assert scene.key == "k1" and scene.num_views == n and scene.has_depth
    np.testing.assert_array_equal(scene.cameras, cams)
    np.testing.assert_array_equal(scene.poses, poses)
    for i in range(n):
        np.testing.assert_array_equal(decode_image(scene.images[i]), imgs[i])
    d = decode_depth(scene.depths[0], scene.depth_ranges[0])
    valid = d > 0
    assert valid.mean() > 0.95
    assert np.abs(d[valid] - depth[valid]).max() / depth[valid].min() < 0.01


@pytest.mark.parametrize("lo, hi", [(0.1, 1.0), (0.5, 50.0), (0.3, 45.0), (1.0, 250.0)])
def test_depth_codec_relative_error_below_one_percent(lo, hi):
    """Half a log-code: max relative error expm1(ln(d_max / d_min) / 508), below 1 % up to a ~158x depth range."""
    rng = np.random.default_rng(1)
    depth = np.exp(rng.uniform(np.log(lo), np.log(hi), (120, 160)))
    depth[:3, :3] = -1.0
    depth[5, 5] = np.nan
    data, rng_ = encode_depth(depth)
    out = decode_depth(data, rng_)
    assert (out[:3, :3] == -1).all() and out[5, 5] == -1
    valid = out > 0
    assert valid.mean() > 0.99  # only the 0.1 / 99.9 percentile tails become invalid
    rel = np.abs(out[valid] - depth[valid]) / depth[valid]
    assert rel.max() <= np.expm1(np.log(rng_[1] / rng_[0]) / 254 / 2) + 1e-9  # half a code
    assert rel.mean() < 0.006
    if rng_[1] / rng_[0] < 158:
        assert rel.max() < 0.01


def test_depth_codec_flat_and_empty():
    data, r = encode_depth(np.full((8, 8), 2.5))
    assert np.allclose(decode_depth(data, r), 2.5)
    data, r = encode_depth(np.full((8, 8), -1.0))
    assert (decode_depth(data, r) == -1).all()


def test_writer_is_atomic_and_refuses_bad_scenes(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="boom"):
        with ShardWriter(out) as w:
            w.add(make_scene("a"))
            raise RuntimeError("boom")
    assert not out.exists() and not list(tmp_path.iterdir())  # nothing half-written, no staging left
    bad = make_scene("b")
    bad.poses[1, 10] = np.nan
    with pytest.raises(SceneError, match="'b'.*non-finite values in views \\[1\\]"):
        write_shards([bad], out)
    with pytest.raises(SceneError, match="no dots"):
        write_shards([make_scene("has.dot")], out)
    with pytest.raises(SceneError, match="duplicate"):
        write_shards([make_scene("x"), make_scene("x")], out)
    write_shards([make_scene("a")], out)
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_shards([make_scene("b")], out)
    write_shards([make_scene("b")], out, overwrite=True)
    assert read_index(out) == {"b": "shard-000000.tar"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the old set and the staging folder are gone


def test_overwrite_swaps_whole_sets_and_a_failed_swap_keeps_the_old_one(tmp_path, monkeypatch):
    """overwrite=True never leaves a mix of old and new shards: a failure while swapping puts the old set back;
    an interrupted swap (old set renamed aside, new one not in) is reported by the next writer; other files in the
    directory are not silently deleted."""
    import zipsplat_ns.data.shards as shards_mod

    out = tmp_path / "out"
    write_shards([make_scene("a"), make_scene("b")], out, shard_size_mb=1e-4)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert len(before) == 3  # two shards + index
    real, calls = os.rename, []

    def failing_second_rename(a, b):
        calls.append((a, b))
        if len(calls) == 2:  # the staged set moving in
            raise OSError(28, "No space left on device (simulated)")
        return real(a, b)

    monkeypatch.setattr(shards_mod.os, "rename", failing_second_rename)
    with pytest.raises(OSError, match="No space"):
        write_shards([make_scene("c")], out, overwrite=True)
    monkeypatch.setattr(shards_mod.os, "rename", real)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    # an interrupted swap: the next writer names the folder holding the previous shards
    aside = tmp_path / ".out.replaced-1-2"
    os.rename(out, aside)
    with pytest.raises(FileExistsError, match=r"interrupted; its previous shards are in .*\.out\.replaced-1-2"):
        write_shards([make_scene("c")], out, overwrite=True)
    os.rename(aside, out)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="also holds notes.txt"):
        write_shards([make_scene("c")], out, overwrite=True)


def build_corrupt_dir(tmp_path: Path) -> Path:
    """Five bad scenes of the kinds the issue lists, among good ones."""
    d = tmp_path / "corrupt"
    good = [make_scene(f"good_{i}", seed=i) for i in range(3)]
    undecodable = make_scene("bad_image")
    undecodable.images[2] = b"\x89PNG\r\n\x1a\n" + b"garbage" * 10
    nan_pose = make_scene("bad_pose")
    nan_pose.poses[0, 3] = np.nan
    few = make_scene("too_few", n=2)
    with ShardWriter(d, 0.001, validate=False) as w:  # write bad data on purpose
        for s in [good[0], undecodable, nan_pose, good[1], few]:
            w.add(s)
    # missing member: drop img1 of one scene in its own shard
    missing = tmp_path / "tmp_missing"
    write_shards([make_scene("bad_missing")], missing)
    src = missing / "shard-000000.tar"
    with tarfile.open(src) as tin, tarfile.open(d / "shard-000100.tar", "w") as tout:
        for m in tin.getmembers():
            if m.name != "bad_missing.img1.png":
                tout.addfile(m, tin.extractfile(m))
    # truncated tar: a good scene's shard cut in half
    trunc = tmp_path / "tmp_trunc"
    write_shards([make_scene("bad_truncated", n=6)], trunc)
    data = (trunc / "shard-000000.tar").read_bytes()
    (d / "shard-000200.tar").write_bytes(data[: len(data) // 2])
    write_shards([good[2]], tmp_path / "tmp_good")
    (tmp_path / "tmp_good" / "shard-000000.tar").rename(d / "shard-000300.tar")
    index = json.loads((d / "index.json").read_text())
    index.update({"bad_missing": "shard-000100.tar", "bad_truncated": "shard-000200.tar", "good_2": "shard-000300.tar"})
    (d / "index.json").write_text(json.dumps(index))
    return d


def test_check_reports_every_kind_of_corruption(tmp_path):
    d = build_corrupt_dir(tmp_path)
    report = check_shards(d, min_views=3)
    reasons = {k: r for _, k, r in report.bad}
    assert sorted(report.good) == ["good_0", "good_1", "good_2"]
    assert set(reasons) == {"bad_image", "bad_pose", "too_few", "bad_missing", "bad_truncated"}
    assert "cannot decode img2" in reasons["bad_image"]
    assert "non-finite" in reasons["bad_pose"]
    assert "too few frames (2 < 3)" in reasons["too_few"]
    assert "missing image members img1" in reasons["bad_missing"]
    assert "truncated or corrupt tar" in reasons["bad_truncated"]
    assert report.index_problems == [] and not report.ok


def test_shards_cli_check_and_repack(tmp_path):
    d = build_corrupt_dir(tmp_path)
    exe = [sys.executable, "-m", "zipsplat_ns.cli"]
    out = subprocess.run(exe + ["shards", "check", str(d), "--min-views", "3", "--json-output", str(tmp_path / "r.json")],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 1
    assert "bad_truncated" in out.stdout and "problems found" in out.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["num_good"] == 3 and report["num_bad"] == 5
    rep = repack_shards(d, tmp_path / "clean", shard_size_mb=100)
    assert sorted(rep.good) == ["good_0", "good_1", "good_2", "too_few"]  # repack keeps every valid scene
    ok = subprocess.run(exe + ["shards", "check", str(tmp_path / "clean")], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    missing = subprocess.run(exe + ["shards", "check", str(tmp_path / "nope")], capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "shard directory not found" in missing.stderr


def test_resize_writes_square_copies_with_matching_intrinsics_and_depth(tmp_path):
    from zipsplat_ns.data.shard_tools import resize_shards

    src = tmp_path / "src"
    write_shards([make_scene("r0", n=3, h=24, w=40), make_scene("r1", n=3, depth=False, h=30, w=20)], src)
    report = resize_shards(src, tmp_path / "dst", size=28)
    assert sorted(report.good) == ["r0", "r1"] and report.bad == []
    out = {s.key: s for p in list_shards(tmp_path / "dst") for s in iter_scenes(p)}
    # 40x24 -> cover 28: scale 28/24 -> 46.67x28 rounded to even 46x28, centre crop offset (46-28)//2 = 9
    cam = out["r0"].cameras[0]
    assert cam[:2].tolist() == [28, 28]
    assert cam[2] == pytest.approx(30.0 * 46 / 40, rel=1e-5) and cam[4] == pytest.approx(20.0 * 46 / 40 - 9, rel=1e-5)
    assert decode_image(out["r0"].images[0]).shape == (28, 28, 3)
    d = decode_depth(out["r0"].depths[0], out["r0"].depth_ranges[0])
    assert d.shape == (28, 28) and (d > 0).mean() > 0.9
    assert out["r1"].depths is None and decode_image(out["r1"].images[2]).shape == (28, 28, 3)


def _split_root(tmp_path: Path) -> Path:
    """A dataset root as `zipsplat-ns synth` writes it: shards only in train-scenes/ and test-scenes/."""
    root = tmp_path / "data"
    write_shards([make_scene("t0", n=3, seed=0), make_scene("t1", n=3, seed=1)], root / "train-scenes")
    write_shards([make_scene("e0", n=3, seed=2)], root / "test-scenes")
    return root


def _undecodable(key: str) -> RawScene:
    scene = make_scene(key, n=3)
    scene.images[1] = b"\x89PNG\r\n\x1a\n" + b"garbage" * 10
    return scene


@pytest.mark.parametrize("tool", ["repack", "resize"])
def test_repack_and_resize_refuse_an_input_without_shards_before_writing(tmp_path, tool):
    """A split root (shards one level down) or an image folder is refused by name, and nothing is created."""
    from zipsplat_ns.data.shard_tools import resize_shards

    run = repack_shards if tool == "repack" else resize_shards
    root = _split_root(tmp_path)
    with pytest.raises(ValueError, match="holds no \\*.tar shards itself") as err:
        run(root, tmp_path / "out")
    assert f"run it on {root / 'test-scenes'} and {root / 'train-scenes'}" in str(err.value)
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.png").write_bytes(encode_image(np.zeros((8, 8, 3), np.uint8), "png"))
    with pytest.raises(ValueError, match=f"{photos} holds no \\*.tar shards"):
        run(photos, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "photos"]  # no output, no staging folder


@pytest.mark.parametrize("size", [0, -14, 16, 251])
def test_resize_refuses_a_size_the_network_cannot_take_before_writing(tmp_path, size):
    from zipsplat_ns.data.shard_tools import resize_shards

    write_shards([make_scene("r0", n=3)], tmp_path / "src")
    with pytest.raises(ValueError, match=f"positive multiple of 14 .*got {size}"):
        resize_shards(tmp_path / "src", tmp_path / "dst", size=size)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


@pytest.mark.parametrize("tool", ["repack", "resize"])
def test_a_run_that_writes_no_scene_fails_and_leaves_the_output_as_it_was(tmp_path, tool):
    """Every scene bad: an error naming the reasons, no new output, and an --overwrite target keeps its shards."""
    from zipsplat_ns.data.shard_tools import NothingWritten, resize_shards

    run = repack_shards if tool == "repack" else (lambda s, d, **kw: resize_shards(s, d, size=28, **kw))
    with ShardWriter(tmp_path / "src", validate=False) as w:
        w.add(_undecodable("bad_a"))
        w.add(_undecodable("bad_b"))
    with pytest.raises(NothingWritten, match="all 2 scene\\(s\\) are bad \\(bad_a: cannot decode img1") as err:
        run(tmp_path / "src", tmp_path / "dst")
    assert [k for _, k, _ in err.value.report.bad] == ["bad_a", "bad_b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
    write_shards([make_scene("old")], tmp_path / "dst")
    before = {p.name: p.read_bytes() for p in (tmp_path / "dst").iterdir()}
    with pytest.raises(NothingWritten):
        run(tmp_path / "src", tmp_path / "dst", overwrite=True)
    assert {p.name: p.read_bytes() for p in (tmp_path / "dst").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst", "src"]


def test_shards_cli_repack_and_resize_exit_status_says_what_was_written(tmp_path):
    """rc 2 and one `error:` line (no traceback, no output) for a split root, a bad --size or nothing written;
    rc 1 with the count when some scenes were bad; rc 0 when all were written."""
    exe = [sys.executable, "-m", "zipsplat_ns.cli", "shards"]

    def cli(*args: str) -> tuple[int, str, str]:
        """Run in tmp_path (short relative paths); the output with its line wrapping undone."""
        out = subprocess.run(exe + list(args), capture_output=True, text=True, timeout=120, cwd=tmp_path, check=False)
        assert "Traceback" not in out.stderr, out.stderr
        return out.returncode, " ".join(out.stdout.split()), " ".join(out.stderr.split())

    _split_root(tmp_path)
    rc, _, err = cli("repack", "data", "o1")
    assert rc == 2 and err.startswith("error: shards repack: data holds no *.tar shards itself")
    assert "run it on data/test-scenes and data/train-scenes" in err
    rc, _, err = cli("resize", "data/train-scenes", "o2", "--size", "0")
    assert rc == 2 and "error: shards resize: --size must be a positive multiple of 14" in err
    with ShardWriter(tmp_path / "bad", validate=False) as w:
        w.add(_undecodable("bad_a"))
    rc, out, err = cli("resize", "bad", "o3", "--size", "28")
    assert rc == 2 and "bad_a" in out and "error: shards resize: nothing to write from bad" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "data"]  # o1, o2, o3: nothing, no staging
    with ShardWriter(tmp_path / "mixed", validate=False) as w:
        w.add(make_scene("good"))
        w.add(_undecodable("bad_a"))
    rc, _, err = cli("repack", "mixed", "o4")
    assert rc == 1 and "wrote 1 scene(s) to o4; 1 bad scene(s) were skipped" in err
    assert read_index(tmp_path / "o4") == {"good": "shard-000000.tar"}
    rc, out, err = cli("resize", "data/train-scenes", "o5", "--size", "28")
    assert rc == 0 and "wrote 2 scene(s) to o5" in err, out + err


def _replace_member(shard: Path, name: str, data: bytes) -> None:
    """Rewrite ``shard`` with the bytes of member ``name`` replaced (order and other members kept)."""
    with tarfile.open(shard) as tin:
        members = [(m, tin.extractfile(m).read()) for m in tin.getmembers()]
    with tarfile.open(shard, "w", format=tarfile.GNU_FORMAT) as tout:
        for m, old in members:
            new = data if m.name == name else old
            m.size = len(new)
            tout.addfile(m, io.BytesIO(new))


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


@pytest.mark.parametrize(
    "member, data, reason",
    [
        ("cameras.npy", b"", "unreadable member s1.cameras.npy (EOFError"),
        ("cameras.npy", _npy(np.full((4, 6), "ab")), "cameras.npy has dtype <U2, expected real numbers"),
        ("poses.npy", _npy(np.zeros((4, 12), dtype=[("a", "f4")])), "poses.npy has dtype [('a', '<f4')], expected"),
        ("depth_ranges.json", b"[[1.0], [1.0, 2.0], [1.0, 2.0], [1.0, 2.0]]", "depth_ranges.json must be 4 finite"),
        ("meta.json", b'{"num_views": 1e999}', "bad meta.json"),
    ],
    ids=["empty-npy", "string-npy", "record-npy", "ragged-ranges", "infinite-count"],
)
def test_a_malformed_member_fails_only_its_own_scene(tmp_path, member, data, reason):
    """A scene's own bad member is that scene's SceneError: the shard's other scenes, before and after, still read."""
    scenes = [make_scene(f"s{i}", seed=i) for i in range(3)]
    write_shards(scenes, tmp_path)
    shard = tmp_path / "shard-000000.tar"
    _replace_member(shard, f"s1.{member}", data)
    items = list(iter_scenes(shard, errors="yield"))
    assert [type(x) for x in items] == [RawScene, SceneError, RawScene]
    assert_same_scene(items[0], scenes[0])
    assert_same_scene(items[2], scenes[2])
    assert items[1].key == "s1" and items[1].shard == shard.name and reason in items[1].reason
    with pytest.raises(SceneError, match="'s1'"):
        list(iter_scenes(shard))
    report = check_shards(tmp_path)
    assert sorted(report.good) == ["s0", "s2"] and [k for _, k, _ in report.bad] == ["s1"]
    assert report.damaged_shards == []


def _damage_at_scene(shard: Path, key: str, how: str) -> int:
    """Cut ``shard`` at the header of ``key``'s first member, or overwrite that header with junk; its offset."""
    with tarfile.open(shard) as tar:
        offset = next(m.offset for m in tar.getmembers() if m.name.startswith(f"{key}."))
    assert offset % 512 == 0 and offset > 0
    data = bytearray(shard.read_bytes())
    if how == "cut":
        del data[offset:]
    else:
        data[offset : offset + 512] = bytes(range(256)) * 2
    shard.write_bytes(bytes(data))
    return offset


@pytest.mark.parametrize("how", ["cut", "junk-header"])
def test_a_shard_cut_at_a_scene_boundary_is_reported_not_read_as_shorter(tmp_path, how):
    """tarfile alone reads a tar cut at a header as a complete, shorter archive: the reader must say it is damaged."""
    scenes = [make_scene(f"s{i}", seed=i) for i in range(3)]
    write_shards(scenes, tmp_path)
    shard = tmp_path / "shard-000000.tar"
    offset = _damage_at_scene(shard, "s1", how)
    items = list(iter_scenes(shard, errors="yield"))
    assert len(items) == 2
    assert_same_scene(items[0], scenes[0])
    err = items[1]
    assert isinstance(err, ShardDamaged) and err.shard == shard.name
    expected = "truncated tar (it stops at byte" if how == "cut" else "corrupt tar (unreadable member header at byte"
    assert f"{expected} {offset}" in err.reason
    assert shard.name in str(err)
    with pytest.raises(ShardDamaged):
        list(iter_scenes(shard))
    # check: not ok, the damage and the lost indexed scenes are both reported
    report = check_shards(tmp_path)
    assert not report.ok and report.good == ["s0"] and report.damaged_shards == [shard.name]
    assert [(s, k) for s, k, _ in report.bad] == [(shard.name, "<shard>")]
    assert any("2 indexed scene(s) not found" in p for p in report.index_problems)
    # --fix-index refuses to bake the loss into a new index
    index_before = (tmp_path / "index.json").read_text()
    report = check_shards(tmp_path, fix_index=True)
    assert not report.ok and (tmp_path / "index.json").read_text() == index_before
    assert len(report.index_problems) == 1
    assert "not rebuilt" in report.index_problems[0] and shard.name in report.index_problems[0]
    assert "re-create" in report.index_problems[0]
    # a complete shard still re-indexes
    write_shards(scenes, tmp_path / "ok")
    assert check_shards(tmp_path / "ok", fix_index=True).ok


def test_fix_index_help_says_it_refuses_damaged_shards(capsys, monkeypatch):
    """`shards check --help`: --fix-index tells that a truncated or corrupt shard blocks it (re-create the shard)."""
    import tyro

    from zipsplat_ns.cli import ShardsCheck

    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit):
        tyro.cli(ShardsCheck, args=["--help"])
    text = " ".join(capsys.readouterr().out.replace("│", " ").split())
    assert "--fix-index" in text
    assert "Refused when a shard is truncated or corrupt" in text and "re-create the shard first" in text
