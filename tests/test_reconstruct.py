"""`zipsplat-ns reconstruct` on CPU with a tiny random-weight network: video, image folders of mixed sizes,
nerfstudio data with priors, shard scenes, released-style weight files by reference, training runs; the orbit video;
`ns-export gaussian-splat` on the result; clear errors that leave nothing behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("nerfstudio")

from zipsplat_ns.gaussians import Gaussians  # noqa: E402
from zipsplat_ns.reconstruct import ReconstructCommand, ReconstructError, detect_input, even_frames  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DRONE = SHARED / "videos" / "drone.mp4"
FOX = SHARED / "scenes" / "ngp-fox"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is absent (drone video, real scenes)")
GPT = 2  # Gaussians per token of the random tiny network (32 as released; fewer keep the CPU renders fast)
# ns-export drops Gaussians with opacity < 1/255, i.e. opacity logit < -5.5373 (nerfstudio 1.1.5 exporter)
NS_EXPORT_MIN_LOGIT = -5.5373


def exe(name: str) -> str:
    p = Path(sys.executable).parent / name
    return str(p) if p.exists() else name


def reconstruct(src, out: Path, *extra: str, weights: str = "random-tiny") -> dict:
    import tyro

    args = [str(src), "--weights", weights, "--output-dir", str(out), "--device", "cpu", "--no-progress", *extra]
    if weights.startswith("random-"):
        args += ["--gaussians-per-token", str(GPT)]
    cmd = tyro.cli(ReconstructCommand, args=args)
    return cmd.run()


def ply_vertex_count(path: Path) -> int:
    from plyfile import PlyData

    return int(PlyData.read(str(path))["vertex"].count)


def write_images(folder: Path, sizes) -> Path:
    """Real photos (the fox scene) at the given sizes, or textured noise when ../shared is absent."""
    folder.mkdir(parents=True)
    srcs = sorted((FOX / "images").glob("*.jpg"))[:: 7] if FOX.is_dir() else []
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate(sizes):
        if srcs:
            img = Image.open(srcs[i % len(srcs)]).convert("RGB").resize((w, h), Image.BICUBIC)
        else:
            img = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        img.save(folder / f"view_{i:02d}.{'png' if i % 2 else 'jpg'}")
    return folder


# -------------------------------------------------------------------------------------------- detection
def test_detect_input_kinds_and_errors(tmp_path):
    imgs = write_images(tmp_path / "imgs", [(64, 48), (48, 64)])
    assert detect_input(str(imgs)) == "images" and detect_input(str(imgs / "*.jpg")) == "images"
    assert detect_input(str(imgs / "view_00.jpg")) == "images"
    (tmp_path / "clip.mp4").write_bytes(b"not a video")
    assert detect_input(str(tmp_path / "clip.mp4")) == "video"
    ns = tmp_path / "ns"
    ns.mkdir()
    (ns / "transforms.json").write_text("{}")
    assert detect_input(str(ns)) == "nerfstudio"
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ReconstructError, match="unknown input kind 'notes.txt'"):
        detect_input(str(tmp_path / "notes.txt"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ReconstructError, match="no transforms.json .* no .*shards .* no image files"):
        detect_input(str(empty))
    with pytest.raises(ReconstructError, match="matches no files"):
        detect_input(str(tmp_path / "nothing" / "*.png"))
    with pytest.raises(ReconstructError, match="does not exist"):
        detect_input(str(tmp_path / "missing.mp4"))
    assert even_frames(50, 8) == [0, 7, 14, 21, 28, 35, 42, 49] and even_frames(3, 8) == [0, 1, 2]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: (d / "bad.mp4").write_bytes(b"\x00" * 2048) and d / "bad.mp4", "cannot decode .*bad.mp4 as a video"),
        (lambda d: (d / "imgs").mkdir() or (d / "imgs" / "a.jpg").write_bytes(b"garbage") and d / "imgs",
         "no readable image in .*imgs"),
        (lambda d: (d / "scene.obj").write_text("v 0 0 0") and d / "scene.obj", "unknown input kind"),
    ],
    ids=["unreadable-video", "no-readable-image", "unknown-kind"],
)  # fmt: skip
def test_bad_inputs_fail_clearly_and_leave_nothing(tmp_path, make, message):
    src = make(tmp_path)
    out = tmp_path / "out"
    res = subprocess.run(
        [sys.executable, "-m", "zipsplat_ns.cli", "reconstruct", str(src), "--weights", "random-tiny", "--output-dir",
         str(out), "--device", "cpu", "--no-progress"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert res.returncode == 2, res.stderr[-2000:]
    assert "error:" in res.stderr and "Traceback" not in res.stderr
    import re

    assert re.search(message, " ".join(res.stderr.split())), res.stderr[-2000:]
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_options_are_checked_before_any_work(tmp_path):
    """Out-of-range options are one clear error each, raised before anything is staged or written."""
    imgs = write_images(tmp_path / "imgs", [(64, 48), (48, 64)])
    (tmp_path / "afile").write_text("x")
    cases = [
        (("--fov-deg", "0"), r"--fov-deg must be in \(0, 180\)"),
        (("--video-fps", "-5"), "--video-fps must be >= 1"),
        (("--video-size", "0"), "--video-size must be >= 1"),
        (("--video-frames", "0"), "--video-frames must be >= 1"),
    ]
    for extra, message in cases:
        with pytest.raises(ReconstructError, match=message):
            reconstruct(imgs, tmp_path / "out", *extra)
    import tyro

    def run(*args: str):
        return tyro.cli(ReconstructCommand, args=[str(imgs), "--output-dir", str(tmp_path / "out"), *args]).run()

    with pytest.raises(ReconstructError, match="--gaussians-per-token must be >= 1"):
        run("--weights", "random-tiny", "--gaussians-per-token", "0")
    with pytest.raises(ReconstructError, match="afile is a file"):
        reconstruct(imgs, tmp_path / "afile")
    if not torch.cuda.is_available():
        with pytest.raises(ReconstructError, match="--device cuda, but torch sees no CUDA GPU here; use --device cpu"):
            run("--weights", "random-tiny", "--device", "cuda")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "imgs"]


def test_folders_left_by_a_killed_run_are_removed(tmp_path):
    """A staging folder whose process is gone (SIGKILL) is removed by the next run; one of a live process is kept."""
    imgs = write_images(tmp_path / "imgs", [(64, 48), (48, 64)])
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    gone, live = tmp_path / f".out.partial-{int(dead.stdout)}", tmp_path / f".out.partial-{os.getppid()}"
    for d in (gone, live):
        (d / "data").mkdir(parents=True)
    reconstruct(imgs, tmp_path / "out")
    assert not gone.exists() and live.is_dir() and (tmp_path / "out" / "scene.ply").is_file()


def test_unreadable_and_damaged_images_are_named(tmp_path):
    """An unreadable image in a folder is left out and reported (console, reconstruct.json with the names of the
    views used); one whose header reads but whose data is cut short fails at once, naming the file."""
    imgs = write_images(tmp_path / "imgs", [(64, 48), (48, 64), (64, 64)])
    (imgs / "view_09.jpg").write_bytes(b"garbage")
    rep = reconstruct(imgs, tmp_path / "out")
    assert rep["views"] == [0, 1, 2] and rep["view_names"] == ["view_00.jpg", "view_01.png", "view_02.jpg"]
    assert [x["name"] for x in rep["skipped_inputs"]] == ["view_09.jpg"]
    (imgs / "view_09.jpg").unlink()
    data = (imgs / "view_02.jpg").read_bytes()
    (imgs / "view_02.jpg").write_bytes(data[: len(data) // 2])  # header intact, scan data cut
    with pytest.raises(ReconstructError, match=r"view_02.jpg cannot be decoded .*remove or replace that file"):
        reconstruct(imgs, tmp_path / "out2")
    assert not (tmp_path / "out2").exists()


# ------------------------------------------------------------------------------------------- end to end
@needs_shared
@pytest.mark.slow
def test_video_reconstruction_exports_and_turntable(tmp_path):
    """drone.mp4 -> run dir; scene.ply and `ns-export gaussian-splat` agree; the turntable has the asked frames."""
    out = tmp_path / "drone"
    rep = reconstruct(DRONE, out, "--num-frames", "3", "--video", "turntable", "--video-frames", "9",
                      "--video-size", "96")  # fmt: skip
    n = 3 * 324 * GPT
    assert rep["input_kind"] == "video" and rep["views"] == [0, 1, 2] and rep["num_gaussians"] == n
    for name in ("config.yml", "scene.ply", "turntable.mp4", "reconstruct.json", "nerfstudio_models/step-000000000.ckpt"):
        assert (out / name).is_file(), name
    assert [p.name for p in (out / "nerfstudio_models").iterdir()] == ["step-000000000.ckpt"]
    g = Gaussians.load_ply(out / "scene.ply")
    assert g.num_gaussians == n and torch.isfinite(g.means).all()

    frames = _read_frames(out / "turntable.mp4")
    assert frames.shape == (9, 96, 96, 3)
    assert frames.std() > 1.0  # not a blank video

    res = subprocess.run(
        [exe("ns-export"), "gaussian-splat", "--load-config", str(out / "config.yml"), "--output-dir",
         str(tmp_path / "export")],
        capture_output=True, text=True, timeout=600, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    exported = tmp_path / "export" / "splat.ply"
    from plyfile import PlyData

    v = PlyData.read(str(exported))["vertex"]
    raw = PlyData.read(str(out / "scene.ply"))["vertex"]
    keep = np.asarray(raw["opacity"]) >= NS_EXPORT_MIN_LOGIT
    assert v.count == int(keep.sum()) > 0.5 * n  # the expected count: ns-export drops alpha < 1/255
    assert [p.name for p in v.properties] == [p.name for p in raw.properties]  # the same standard layout
    for k in ("x", "y", "z", "f_dc_0", "f_rest_4", "scale_1", "rot_2"):  # same world (y-up) and values
        assert np.allclose(np.asarray(v[k]), np.asarray(raw[k])[keep], atol=1e-5), k
    back = Gaussians.load_ply(exported)
    assert back.num_gaussians == v.count


def _read_frames(path: Path) -> np.ndarray:
    import imageio.v2 as imageio

    with imageio.get_reader(path) as r:
        return np.stack([np.asarray(f) for f in r])


@pytest.mark.slow
def test_image_folder_of_mixed_sizes(tmp_path):
    imgs = write_images(tmp_path / "imgs", [(320, 180), (180, 320), (256, 256), (500, 300)])
    rep = reconstruct(imgs, tmp_path / "out", "--compression", "0.5")
    assert rep["input_kind"] == "images" and rep["views"] == [0, 1, 2, 3]
    assert rep["num_gaussians"] == int(4 * 324 * 0.5) * GPT
    assert ply_vertex_count(tmp_path / "out" / "scene.ply") == rep["num_gaussians"]
    # the same folder through a glob of the JPEGs only
    rep2 = reconstruct(str(imgs / "*.jpg"), tmp_path / "out2")
    assert rep2["views"] == [0, 1] and rep2["num_gaussians"] == 2 * 324 * GPT
    # an existing output is refused without --overwrite, and replaced whole with it
    with pytest.raises(ReconstructError, match="exists and is not empty"):
        reconstruct(imgs, tmp_path / "out2")
    reconstruct(imgs, tmp_path / "out2", "--overwrite")
    assert json.loads((tmp_path / "out2" / "reconstruct.json").read_text())["views"] == [0, 1, 2, 3]


@needs_shared
@pytest.mark.slow
def test_nerfstudio_data_with_priors_and_a_shard_scene(tmp_path):
    rep = reconstruct(FOX, tmp_path / "fox", "--num-frames", "3", "--use-priors")
    assert rep["input_kind"] == "nerfstudio" and rep["views"] == [0, 24, 49] and rep["use_priors"]
    assert rep["num_gaussians"] == 3 * 324 * GPT
    # its data folder is a shard folder: reconstruct one scene of it by key
    rep2 = reconstruct(tmp_path / "fox" / "data", tmp_path / "shard", "--scene", "ngp-fox", "--num-frames", "2")
    assert rep2["input_kind"] == "shards" and rep2["views"] == [0, 49]
    with pytest.raises(ReconstructError, match="scene 'nope' is not in"):
        reconstruct(tmp_path / "fox" / "data", tmp_path / "x", "--scene", "nope")
    with pytest.raises(ReconstructError, match="--use-priors needs posed input"):
        reconstruct(DRONE, tmp_path / "y", "--use-priors", "--num-frames", "2")
    assert not (tmp_path / "y").exists()


@pytest.mark.slow
def test_weights_file_by_reference_and_training_run(tmp_path):
    """A weights file is referenced (not copied) by the checkpoint and gives the same Gaussians as the network loaded
    directly; a training run folder works as --weights too."""
    from safetensors.torch import save_file

    from zipsplat_ns.models.network import ZipSplat

    torch.manual_seed(3)
    net = ZipSplat("tiny")
    wfile = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(wfile))
    imgs = write_images(tmp_path / "imgs", [(300, 200), (200, 300)])
    rep = reconstruct(imgs, tmp_path / "out", "--variant", "tiny", weights=str(wfile))
    ckpt = torch.load(tmp_path / "out" / "nerfstudio_models" / "step-000000000.ckpt", map_location="cpu")
    assert ckpt["pipeline"] == {"zipsplat_weights_ref": str(wfile.resolve())}
    from zipsplat_ns.models.weights import CheckpointFormatError, load_state_dict_from_source

    with pytest.raises(CheckpointFormatError, match=r"reconstruct run that refers to its weights .*tiny.safetensors"):
        load_state_dict_from_source(tmp_path / "out" / "nerfstudio_models" / "step-000000000.ckpt")
    assert rep["num_gaussians"] == 2 * 324 * 32

    # the same Gaussians as the network itself on the same (cropped, resized) views
    from zipsplat_ns.data.dataset import ShardDirectory, process_scene
    from zipsplat_ns.data.samplers import ViewSample

    raw = ShardDirectory(tmp_path / "out" / "data").load(rep["scene"])
    s = process_scene(raw, ViewSample([0, 1], []), allow_unposed=True)
    with torch.no_grad():
        ref = net.eval()(s["context"]["image"][None])[0]
    got = Gaussians.load_ply(tmp_path / "out" / "scene.ply").flip_yz()
    assert torch.allclose(got.means, ref.means, atol=1e-4) and torch.allclose(got.opacities, ref.opacities, atol=1e-4)

    # ns-viewer / ns-export load the referenced weights themselves (the pipeline is built without them) ...
    from nerfstudio.utils.eval_utils import eval_setup

    _, pipe, _, _ = eval_setup(tmp_path / "out" / "config.yml", test_mode="inference")
    assert pipe.model.scene is not None
    assert torch.allclose(pipe.model.scene.means, ref.means, atol=1e-4)
    # ... and refuse a config whose weights no longer match the checkpoint's reference

    cfg_text = (tmp_path / "out" / "config.yml").read_text().replace(str(wfile.resolve()), str(tmp_path / "other.safetensors"))
    (tmp_path / "out" / "config.yml").write_text(cfg_text)
    (tmp_path / "other.safetensors").write_bytes(wfile.read_bytes())
    with pytest.raises(ValueError, match="refers to network weights"):
        eval_setup(tmp_path / "out" / "config.yml", test_mode="inference")


def test_nerfstudio_checkpoints_are_accepted_as_weights(tmp_path):
    """`ZipSplat(variant, weights=<ns-train checkpoint>)`: the `_model.net.*` part, DDP prefix or not."""
    from zipsplat_ns.models.network import ZipSplat
    from zipsplat_ns.models.weights import CheckpointFormatError, load_state_dict_from_source

    torch.manual_seed(1)
    net = ZipSplat("tiny")
    sd = net.state_dict()
    for prefix in ("_model.net.", "_model.module.net."):
        path = tmp_path / f"step-{len(prefix):09d}.ckpt"
        pipe = {prefix + k: v for k, v in sd.items()}
        pipe["_model.device_indicator_param"] = torch.zeros(0)
        torch.save({"step": 7, "pipeline": pipe, "optimizers": {}, "schedulers": {}, "scalers": {}}, path)
        loaded = load_state_dict_from_source(path)
        assert set(loaded) == set(sd) and all(torch.equal(loaded[k], sd[k]) for k in sd)
        other = ZipSplat("tiny", weights=str(path))
        assert all(torch.equal(a, b) for a, b in zip(other.state_dict().values(), sd.values()))
    bad = tmp_path / "other-method.ckpt"
    torch.save({"step": 1, "pipeline": {"_model.field.x": torch.zeros(1)}}, bad)
    with pytest.raises(CheckpointFormatError, match="without ZipSplat network weights"):
        load_state_dict_from_source(bad)


@pytest.mark.slow
def test_training_run_as_weights(tmp_path):
    import copy

    from zipsplat_ns.config import zipsplat_tiny_method
    from zipsplat_ns.data.synth import synth_main

    synth_main(tmp_path / "synth", num_scenes=2, views=8, size=64, test_fraction=0.5, progress=False)
    cfg = copy.deepcopy(zipsplat_tiny_method.config)
    cfg.output_dir, cfg.timestamp, cfg.machine.device_type = tmp_path / "runs", "t0", "cpu"
    cfg.pipeline.datamanager.data = tmp_path / "synth"
    cfg.pipeline.datamanager.num_workers = 0
    cfg.pipeline.model.gaussians_per_token = 1
    torch.manual_seed(5)
    pipe = cfg.pipeline.setup(device="cpu", test_mode="test")
    cfg.save_config()
    ckpt = cfg.get_checkpoint_dir()
    ckpt.mkdir(parents=True)
    torch.save({"step": 3, "pipeline": pipe.state_dict()}, ckpt / "step-000000003.ckpt")
    imgs = write_images(tmp_path / "imgs", [(128, 96), (96, 128), (100, 100)])
    rep = reconstruct(imgs, tmp_path / "out", weights=str(cfg.get_base_dir()))
    assert rep["variant"] == "tiny" and rep["num_gaussians"] == 3 * 324 * 1 and "step-000000003.ckpt" in rep["weights"]


def test_allow_pickle_is_saved_into_the_run_config(tmp_path):
    """`--allow-pickle` reaches the run's model config, so ns-viewer / ns-export reload the same weights file."""
    from zipsplat_ns.reconstruct import build_run_config, plan_weights

    plan = plan_weights(str(tmp_path / "w.tar"), "tiny", 0, None)
    kw = dict(device="cpu", compression=1.0, use_priors=False)
    off = build_run_config(plan, tmp_path / "run", tmp_path / "run" / "data", "scene", **kw)
    on = build_run_config(plan, tmp_path / "run", tmp_path / "run" / "data", "scene", allow_pickle=True, **kw)
    assert off.pipeline.model.allow_pickle is False and on.pipeline.model.allow_pickle is True
