"""scripts/bench_learning.py: the held-out split, the baselines' inputs and the metrics table are what they claim."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCENES = ROOT.parent / "shared" / "data" / "scenes"


def _load_script():
    spec = importlib.util.spec_from_file_location("bench_learning", ROOT / "scripts" / "bench_learning.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


bench_learning = _load_script()


@pytest.mark.skipif(not SCENES.is_dir(), reason="../shared/data/scenes is absent (real nerfstudio scenes)")
def test_prepare_gives_splatfacto_and_the_mean_baseline_exactly_the_evaluated_crops(tmp_path):
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig
    from PIL import Image

    from zipsplat_ns.data.dataset import ShardDirectory
    from zipsplat_ns.eval.benchmarks import load_index
    from zipsplat_ns.eval.runner import iter_benchmark_items

    src = tmp_path / "scenes"
    src.mkdir()
    for name in ("middlebury-dino-sparse", "strecha-entry-p10"):
        (src / name).symlink_to(SCENES / name)
    out = tmp_path / "learn"
    rc = bench_learning.main(["prepare", "--scenes", str(src), "--heldout", "middlebury-dino-sparse", "--out", str(out)])
    assert rc == 0
    # training scenes are real copies (they travel to the GPU machine), held-out ones are not among them
    assert sorted(p.name for p in (out / "train_scenes").iterdir()) == ["strecha-entry-p10"]
    assert not (out / "train_scenes" / "strecha-entry-p10").is_symlink()
    # the held-out shard keeps exactly the 10 indexed frames; context and targets are disjoint
    index = json.loads((out / "heldout_index.json").read_text())["middlebury-dino-sparse"]
    assert sorted(index["context"] + index["target"]) == list(range(10))
    assert ShardDirectory(out / "heldout_shards").load("middlebury-dino-sparse").num_views == 10
    frames = json.loads((out / "heldout_frames.json").read_text())["middlebury-dino-sparse"]["source_frames"]
    assert frames["context"] == [0, 3, 6, 9, 12, 15]  # round(linspace(0, 15, 6)) of the 16-frame scene

    sampler = load_index(out / "heldout_index.json", expected_context=6)
    ((key, inputs, batch, reason),) = list(
        iter_benchmark_items([out / "heldout_shards"], sampler, ["middlebury-dino-sparse"])
    )
    assert reason is None
    ctx, gt = inputs["context_image"][0], batch["image"][0]

    z = np.load(out / "renders" / "mean" / f"{key}.npz")
    np.testing.assert_allclose(z["gt"], gt.numpy(), atol=0)
    np.testing.assert_allclose(z["render"][2], ctx.mean(0).numpy(), atol=1e-6)

    # nerfstudio reads back the same cameras (no re-orientation/centring/scaling), split 6 train / 4 test
    folder = out / "splatfacto" / key
    dp = NerfstudioDataParserConfig(
        data=folder, orientation_method="none", center_method="none", auto_scale_poses=False
    ).setup()
    for split, cams, poses, imgs in (
        ("train", inputs["context_camera"][0], inputs["context_pose"][0], ctx),
        ("test", inputs["target_camera"][0], inputs["target_pose"][0], gt),
    ):
        o = dp.get_dataparser_outputs(split)
        assert len(o.image_filenames) == imgs.shape[0]
        c2w = o.cameras.camera_to_worlds.double()  # (N, 3, 4), OpenGL axes
        R = poses[:, :9].reshape(-1, 3, 3).double()
        torch.testing.assert_close(c2w[:, :, 3], poses[:, 9:12].double(), atol=1e-5, rtol=0)
        torch.testing.assert_close(c2w[:, :, 0], R[:, :, 0], atol=1e-5, rtol=0)
        torch.testing.assert_close(c2w[:, :, 1:3], -R[:, :, 1:3], atol=1e-5, rtol=0)
        torch.testing.assert_close(o.cameras.fx[:, 0].double(), cams[:, 2].double(), atol=1e-4, rtol=0)
        torch.testing.assert_close(o.cameras.cx[:, 0].double(), cams[:, 4].double(), atol=1e-4, rtol=0)
        for i, path in enumerate(o.image_filenames):
            png = torch.from_numpy(np.asarray(Image.open(path), dtype=np.float32) / 255).permute(2, 0, 1)
            assert (png - imgs[i]).abs().max() <= 0.5 / 255 + 1e-6


def _npz(path: Path, render: np.ndarray, gt: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, render=render.astype(np.float32), gt=gt.astype(np.float32))


def test_report_computes_known_metrics_and_refuses_different_ground_truths(tmp_path, capsys):
    rng = np.random.default_rng(0)
    gt = rng.uniform(0.1, 0.5, size=(2, 3, 48, 48))
    _npz(tmp_path / "mean" / "s1.npz", gt + 0.1, gt)  # MSE 0.01 -> PSNR exactly 20 dB
    _npz(tmp_path / "zip" / "s1.npz", gt.copy(), gt)  # perfect: SSIM 1, LPIPS 0
    rc = bench_learning.main(
        ["report", "--mean", str(tmp_path / "mean"), "--zipsplat", str(tmp_path / "zip"), "--out", str(tmp_path / "r")]
    )
    assert rc == 0
    rep = json.loads((tmp_path / "r" / "heldout_metrics.json").read_text())
    assert rep["per_scene"]["mean"]["s1"]["psnr"] == pytest.approx(20.0, abs=1e-3)
    assert rep["per_scene"]["zipsplat"]["s1"]["ssim"] == pytest.approx(1.0, abs=1e-5)
    assert rep["per_scene"]["zipsplat"]["s1"]["lpips"] == pytest.approx(0.0, abs=1e-6)
    assert (tmp_path / "r" / "heldout_grid.png").is_file()
    assert "| zipsplat |" in (tmp_path / "r" / "heldout_metrics.md").read_text()

    _npz(tmp_path / "zip2" / "s1.npz", gt.copy(), gt * 0.5)  # a method evaluated on other crops
    rc = bench_learning.main(
        ["report", "--mean", str(tmp_path / "mean"), "--zipsplat", str(tmp_path / "zip2"), "--out", str(tmp_path / "r2")]
    )
    assert rc == 1
    assert "ground truth differs" in capsys.readouterr().err
