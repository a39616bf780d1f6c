"""ZipSplatDataManager on CPU: construction in every test mode, next_train batches, the viewer contract."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

pytest.importorskip("nerfstudio")

from nerfstudio.cameras.cameras import Cameras  # noqa: E402

from zipsplat_ns.datamanagers import ZipSplatDataManager, ZipSplatDataManagerConfig  # noqa: E402

from test_dataset import make_scene, write_dir  # noqa: E402  (tests/ is on sys.path under pytest)

S = 28


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("dm")
    synth = base / "synth"
    write_dir(synth / "train-scenes", [make_scene(f"tr{i}", seed=i) for i in range(4)])
    write_dir(synth / "test-scenes", [make_scene(f"te{i}", seed=50 + i) for i in range(2)])
    other = write_dir(base / "other", [make_scene(f"o{i}", seed=80 + i, plane_z=6.0) for i in range(2)])
    return synth, other


def _config(root: Path, **kw) -> ZipSplatDataManagerConfig:
    args = dict(data=root, num_workers=2, image_size=S, image_budget=8, min_views=2, max_views=6, eval_views=3)
    args.update(kw)
    return ZipSplatDataManagerConfig(**args)


def test_next_train_on_cpu_with_documented_shapes(roots):
    synth, other = roots
    cfg = _config(synth, datasets=(("synth", synth, 0.5), ("other", other, 0.5)))
    dm = cfg.setup(device="cpu", test_mode="val", world_size=1, local_rank=0)
    assert isinstance(dm, ZipSplatDataManager)
    assert dm.get_train_rays_per_batch() == 1 * 4 * S * S  # before the first batch: budget 8 // max 6 views
    seen = set()
    for step in range(4):
        inputs, batch = dm.next_train(step)
        B, V = inputs["context_image"].shape[:2]
        assert B == max(1, 8 // V)
        shapes = {
            "context_image": (B, V, 3, S, S), "context_camera": (B, V, 6), "context_pose": (B, V, 12),
            "target_camera": (B, 4, 6), "target_pose": (B, 4, 12),
        }  # fmt: skip
        assert {k: tuple(v.shape) for k, v in inputs.items()} == shapes
        assert all(v.dtype == torch.float32 and v.device.type == "cpu" for v in inputs.values())
        assert tuple(batch["image"].shape) == (B, 4, 3, S, S) and tuple(batch["depth"].shape) == (B, 4, S, S)
        assert tuple(batch["context_depth"].shape) == (B, V, S, S)
        assert batch["has_depth"].dtype == torch.bool and batch["scale"].shape == (B,)
        assert batch["context_index"].dtype == torch.int64 and batch["target_index"].shape == (B, 4)
        assert all(isinstance(v, torch.Tensor) for v in batch.values())
        assert dm.get_train_rays_per_batch() == B * 4 * S * S
        dm.target_downscale = 2  # targets rendered at half size (the model's render_downscale): a quarter the pixels
        assert dm.get_train_rays_per_batch() == B * 4 * (S // 2) ** 2
        dm.target_downscale = 1
        seen |= set(dm.last_batch_info["dataset"])
    assert seen <= {"synth", "other"} and sum(dm.scale_source_counts.values()) >= 4
    assert dm.set_max_views(100) == 6 and dm.set_max_views(1) == 2
    inputs, batch = dm.next_eval(0)
    assert inputs["context_image"].shape[:2] == (1, 3)
    assert dm.get_datapath() == synth


def test_viewer_contract(roots):
    synth, _ = roots
    dm = _config(synth, num_workers=0).setup(device="cpu", test_mode="test")
    ds = dm.train_dataset
    assert ds and len(ds) == 3 and dm.viewer_scene_key == "te0"  # first test scene, eval_views context views
    item = ds[1]
    assert item["image"].shape == (S, S, 3) and item["image"].dtype == torch.float32
    assert 0 <= float(item["image"].min()) and float(item["image"].max()) <= 1
    assert isinstance(ds.cameras, Cameras) and ds.cameras.camera_to_worlds.shape == (3, 3, 4)
    c0 = ds.cameras.camera_to_worlds[0]  # context view 0 at the origin looking down -z of the y-up world
    assert torch.allclose(c0[:, :3], torch.eye(3), atol=1e-6) and torch.allclose(c0[:, 3], torch.zeros(3), atol=1e-6)
    assert int(ds.cameras.width[0]) == S and float(ds.cameras.fx[1]) > 0
    assert ds.scene_box.aabb.shape == (2, 3) and isinstance(ds.metadata, dict)
    assert len(dm.eval_dataset) == 4
    from nerfstudio.viewer.utils import parse_object
    from nerfstudio.viewer.viewer_elements import ViewerElement

    assert parse_object(dm, ViewerElement, "datamanager") == []  # no property of ours does work


def test_inference_mode_scene_context_and_benchmark(roots, tmp_path):
    synth, _ = roots
    index = {"te1": {"context": [0, 5, 9], "target": [2, 7]}, "missing": {"context": [0, 1, 2], "target": [3]}}
    (tmp_path / "idx.json").write_text(json.dumps(index))
    cfg = _config(synth, eval_index_file=tmp_path / "idx.json", viewer_scene=None)
    dm = cfg.setup(device="cpu", test_mode="inference")
    assert dm._train_loader is None  # DataManager skips setup_* in inference mode
    assert dm.viewer_scene_key == "te1" and dm.train_dataset.frame_indices.tolist() == [0, 5, 9]
    inputs = dm.scene_context("tr2")
    assert inputs["context_image"].shape == (1, 3, 3, S, S) and inputs["target_pose"].shape == (1, 4, 12)
    items = list(dm.benchmark_items())
    assert [k for k, _, _ in items] == ["te1"] and dm.benchmark_missing == ["missing"]
    assert items[0][1]["context_image"].shape == (1, 3, 3, S, S) and items[0][2]["target_index"].tolist() == [[2, 7]]
    assert dm.skip_counts["missing_from_shards"] == 1
    with pytest.raises(RuntimeError, match="viewer scene"):
        _config(synth, viewer_scene="nope").setup(device="cpu", test_mode="inference")
    # ns-eval / ns-viewer on benchmark shards (test mode): a viewer scene of the training data gives way, with a warning
    dm = _config(synth, viewer_scene="not-in-this-data").setup(device="cpu", test_mode="test")
    assert dm.viewer_scene_key == "te0"


def test_a_bad_first_scene_is_skipped_for_the_viewer(tmp_path, caplog):
    """An automatically picked viewer scene that cannot be loaded (here non-finite poses) is skipped, logged and
    counted, and the next scene shown; a scene chosen by name must load; when none loads, one error says why."""
    import logging

    import numpy as np

    def broken(key: str, seed: int):
        sc = make_scene(key, seed=seed)
        sc.poses = sc.poses.copy()
        sc.poses[2, 3] = np.nan
        return sc

    root = tmp_path / "data"
    write_dir(root / "train-scenes", [make_scene("tr0", seed=1)])
    write_dir(root / "test-scenes", [broken("te0", 50), make_scene("te1", seed=51)], validate=False)
    with caplog.at_level(logging.WARNING):
        dm = _config(root, num_workers=0).setup(device="cpu", test_mode="test")
    assert dm.viewer_scene_key == "te1" and dm.viewer_scenes_skipped == ["te0"]
    assert any("te0" in r.getMessage() and "non-finite" in r.getMessage() for r in caplog.records)
    with pytest.raises(RuntimeError, match=r"cannot load the viewer scene 'te0'.*non-finite"):
        _config(root, num_workers=0, viewer_scene="te0").setup(device="cpu", test_mode="test")
    bad = tmp_path / "bad"
    write_dir(bad / "test-scenes", [broken("b0", 60), broken("b1", 61)], validate=False)
    write_dir(bad / "train-scenes", [broken("b2", 62)], validate=False)
    with pytest.raises(RuntimeError, match=r"none of the first 3 scene\(s\) can be loaded.*b0: .*non-finite.*shards check"):
        _config(bad, num_workers=0).setup(device="cpu", test_mode="test")


def test_every_rank_evaluates_the_whole_test_set(tmp_path):
    """In-training evaluation is not split by rank (rank 0 evaluates alone by default): with 3 test shards and 4
    ranks, rank 0's eval stream still visits every test scene."""
    root = tmp_path / "data"
    write_dir(root / "train-scenes", [make_scene(f"tr{i}", seed=i) for i in range(4)])
    write_dir(root / "test-scenes", [make_scene(f"te{i}", seed=50 + i) for i in range(3)])
    dm = _config(root, num_workers=0).setup(device="cpu", test_mode="val", world_size=4, local_rank=0)
    seen = set()
    for step in range(6):
        dm.next_eval(step)
        seen |= set(dm.last_batch_info["scene"])
    assert seen == {"te0", "te1", "te2"}


def test_config_errors_and_cli(roots, tmp_path):
    with pytest.raises(ValueError, match="no data"):
        ZipSplatDataManagerConfig().setup(device="cpu", test_mode="val")
    # --data that is not a shard folder: the path, what is wrong and how to make one
    (tmp_path / "empty").mkdir()
    for bad, what in ((tmp_path / "nowhere", "is not a directory"), (tmp_path / "empty", "holds neither")):
        with pytest.raises(FileNotFoundError, match=f"{re.escape(str(bad))} {what}") as err:
            ZipSplatDataManagerConfig(data=bad).setup(device="cpu", test_mode="val")
        assert "zipsplat-ns convert" in str(err.value) and "leave --data out" in str(err.value)
    (tmp_path / "empty" / "transforms.json").write_text("{}")  # a nerfstudio scene: the exact command to convert it
    with pytest.raises(FileNotFoundError, match=re.escape(f"zipsplat-ns convert nerfstudio {tmp_path / 'empty'} ")):
        ZipSplatDataManagerConfig(data=tmp_path / "empty").setup(device="cpu", test_mode="val")
    import tyro

    synth, other = roots
    cfg = tyro.cli(
        ZipSplatDataManagerConfig,
        args=["--datasets", "a", str(synth), "0.3", "b", str(other), "0.7", "--max-views", "12"],
    )
    assert cfg.datasets == (("a", synth, 0.3), ("b", other, 0.7)) and cfg.max_views == 12


def test_scenes_without_depth_are_announced_once_and_counted(tmp_path, caplog):
    """A scene without depth falls back to the camera-baseline scale (not the reference's median depth): the first
    one is named in a warning that says how to add depth, and every one is counted."""
    import logging

    root = write_dir(tmp_path / "nodepth", [make_scene(f"n{i}", seed=i, depth=False) for i in range(3)])
    dm = _config(root, num_workers=0).setup(device="cpu", test_mode="val", world_size=1, local_rank=0)
    with caplog.at_level(logging.WARNING):
        for step in range(3):
            dm.next_train(step)
    warnings = [r.getMessage() for r in caplog.records if "has no depth" in r.getMessage()]
    assert len(warnings) == 1 and "zipsplat-ns depth" in warnings[0]
    assert dm.scale_source_counts["baseline"] >= 3 and not dm.scale_source_counts.get("depth")


def test_resume_reseeds_the_training_stream_before_it_starts(roots):
    """A run resumed at step S streams from a seed of S (not the start's data order again); once batches flow the
    order can no longer change."""
    synth, _ = roots
    fresh = _config(synth, num_workers=0).setup(device="cpu", test_mode="val", world_size=1, local_rank=0)
    resumed = _config(synth, num_workers=0).setup(device="cpu", test_mode="val", world_size=1, local_rank=0)
    resumed.resume_at(30)
    assert resumed._train_stream.seed == fresh.config.seed + 7919 * 30
    a = [fresh.next_train(i)[0]["context_image"] for i in range(3)]
    b = [resumed.next_train(i)[0]["context_image"] for i in range(3)]
    assert any(x.shape != y.shape or not torch.equal(x, y) for x, y in zip(a, b))
    with pytest.raises(RuntimeError, match="started already"):
        resumed.resume_at(31)
