"""`ns-train zipsplat-tiny` end to end on CPU (subprocesses): the loss falls, checkpoints resume exactly, --help works.

The per-step L1 comes from ``<run dir>/zipsplat_metrics.jsonl``, one JSON line per step written by the pipeline
(rank 0) next to ``config.yml``, outside ``nerfstudio_models/``. The built-in synthetic dataset is generated into a
temporary ``$ZIPSPLAT_CACHE`` by the first run and reused by the others.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

pytest.importorskip("nerfstudio")

STEPS = 40
FAST = [
    # the tiny recipe, shortened: 40 steps, targets supervised at 1/6 resolution (42 px; the CPU renderer's cost
    # grows with the pixel count: about half the step time of 1/3)
    "--max-num-iterations", str(STEPS),
    "--pipeline.model.total-steps", str(STEPS),
    "--optimizers.backbone.scheduler.max-steps", str(STEPS),
    "--optimizers.head.scheduler.max-steps", str(STEPS),
    "--pipeline.model.render-downscale", "6",
    "--steps-per-eval-batch", "0", "--steps-per-eval-image", "0",
]  # fmt: skip


def ns_cli(name: str) -> str:
    exe = Path(sys.executable).parent / name
    return str(exe) if exe.exists() else name


def run(cmd, env, timeout=900):
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    cache = tmp_path_factory.mktemp("zcache")
    return {**os.environ, "ZIPSPLAT_CACHE": str(cache), "PYTHONWARNINGS": "ignore", "COLUMNS": "200",
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}  # fmt: skip


def run_dir(output: Path) -> Path:
    dirs = sorted(output.glob("*/zipsplat-tiny/*/config.yml"))
    assert len(dirs) == 1, dirs
    return dirs[0].parent


def read_metrics(path: Path) -> list:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, env):
    out = tmp_path_factory.mktemp("train")
    res = run([ns_cli("ns-train"), "zipsplat-tiny", "--machine.device-type", "cpu", "--output-dir", str(out),
               "--steps-per-save", "20", *FAST], env)  # fmt: skip
    assert res.returncode == 0, (res.stdout[-3000:], res.stderr[-5000:])
    return run_dir(out), res


@pytest.mark.slow
def test_train_tiny_loss_falls_and_writes_a_run(trained, env):
    rd, res = trained
    assert "synthetic dataset ready" in res.stderr + res.stdout  # generated on first use, with a progress display
    cache = Path(env["ZIPSPLAT_CACHE"])
    (data,) = [p for p in cache.iterdir() if not p.name.startswith(".")]
    assert (data / "COMPLETE").is_file() and (data / "train-scenes").is_dir() and (data / "test-scenes").is_dir()
    ckpts = sorted((rd / "nerfstudio_models").iterdir())
    assert [p.name for p in ckpts] == [f"step-{STEPS - 1:09d}.ckpt"]  # only checkpoints in nerfstudio_models/
    assert list(rd.glob("events.out.tfevents.*"))  # TensorBoard
    rows = read_metrics(rd / "zipsplat_metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(STEPS))
    l1 = [r["loss_l1"] for r in rows]
    first, last = sum(l1[:20]) / 20, sum(l1[-20:]) / 20
    assert last < 0.8 * first, (first, last, l1)
    for key in ("psnr", "num_gaussians", "compression", "num_views", "activated_fraction", "max_views",
                "skipped_scenes"):  # fmt: skip
        assert key in rows[-1], key
    assert rows[-1]["scale_source/depth"] > 0 and "scale_source/baseline" not in rows[-1]  # synthetic depth is exact
    assert any("images_per_s" in r for r in rows)
    state = torch.load(ckpts[0], map_location="cpu")  # weights_only, numpy-free scheduler state
    assert state["step"] == STEPS - 1
    assert set(state["optimizers"]) == {"backbone", "head"}
    keys = set(state["pipeline"])
    assert all(k.startswith("_model.net.") or k == "_model.device_indicator_param" for k in keys), sorted(keys)[:5]


@pytest.mark.slow
def test_resume_restores_step_lr_and_optimizer_state(trained, env, tmp_path):
    import yaml

    rd, _ = trained
    ckpt_dir = rd / "nerfstudio_models"
    ckpt = torch.load(ckpt_dir / f"step-{STEPS - 1:09d}.ckpt", map_location="cpu")

    # in process: nerfstudio's own Trainer.setup + _load_checkpoint, then compare with the checkpoint
    os.environ["ZIPSPLAT_CACHE"] = env["ZIPSPLAT_CACHE"]
    config = yaml.load((rd / "config.yml").read_text(), Loader=yaml.Loader)
    config.load_dir = ckpt_dir
    config.vis = "tensorboard"
    config.output_dir = tmp_path / "inproc"
    config.pipeline.datamanager.num_workers = 0
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    assert trainer._start_step == ckpt["step"] + 1
    # the continuation draws its own data order and schedules' samples (not a replay of steps 0, 1, ...)
    dm = trainer.pipeline.datamanager
    assert dm._train_stream.seed == dm.config.seed + 7919 * trainer._start_step
    fresh = random.Random(int(config.pipeline.model.seed))
    assert trainer.pipeline.model._rng.random() != fresh.random()
    for group in ("backbone", "head"):
        opt = trainer.optimizers.optimizers[group]
        want = ckpt["optimizers"][group]
        got = opt.state_dict()
        assert [g["lr"] for g in got["param_groups"]] == [g["lr"] for g in want["param_groups"]]
        assert set(got["state"]) == set(want["state"]) and got["state"]
        for idx, st in want["state"].items():
            for name, value in st.items():
                assert torch.equal(torch.as_tensor(got["state"][idx][name]), torch.as_tensor(value)), (group, idx, name)
        sched = trainer.optimizers.schedulers[group]
        assert sched.get_last_lr() == ckpt["schedulers"][group]["_last_lr"]
        assert sched.last_epoch == ckpt["schedulers"][group]["last_epoch"]
        assert all(isinstance(v, float) for v in sched.get_last_lr())  # plain floats (weights_only loading)
    model_sd = trainer.pipeline.model.state_dict()
    for k, v in ckpt["pipeline"].items():
        assert torch.equal(model_sd[k[len("_model."):]], v), k

    # subprocess: --load-dir continues at the next step (nerfstudio 1.1.5 runs max-num-iterations more steps)
    out = tmp_path / "resumed"
    res = run([ns_cli("ns-train"), "zipsplat-tiny", "--machine.device-type", "cpu", "--output-dir", str(out),
               *FAST, "--max-num-iterations", "2", "--load-dir", str(ckpt_dir)], env)  # fmt: skip
    assert res.returncode == 0, (res.stdout[-3000:], res.stderr[-5000:])
    rd2 = run_dir(out)
    rows = read_metrics(rd2 / "zipsplat_metrics.jsonl")
    assert [r["step"] for r in rows] == [STEPS, STEPS + 1]
    assert [p.name for p in (rd2 / "nerfstudio_models").iterdir()] == [f"step-{STEPS + 1:09d}.ckpt"]


@pytest.mark.slow
def test_ns_train_tiny_help(env):
    res = run([ns_cli("ns-train"), "zipsplat-tiny", "--help"], env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "--pipeline.model.variant" in res.stdout and "--pipeline.datamanager.data" in res.stdout
    top = run([ns_cli("ns-train"), "--help"], env, timeout=300)
    assert top.returncode == 0
    for name in ("zipsplat-tiny", "zipsplat-small", "zipsplat-base", "zipsplat-large"):
        assert name in top.stdout, name


@pytest.mark.slow
def test_viewer_during_training_shows_the_current_scene(env, tmp_path):
    """`ns-train ... --vis viewer+tensorboard`: the viewer gets the ZipSplat controls and the viewer scene is
    re-predicted with the current weights while training (in process, nerfstudio's own Trainer)."""
    import copy
    import socket

    from zipsplat_ns.config import zipsplat_tiny_method

    os.environ["ZIPSPLAT_CACHE"] = env["ZIPSPLAT_CACHE"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = copy.deepcopy(zipsplat_tiny_method.config)
    cfg.output_dir, cfg.vis, cfg.max_num_iterations = tmp_path, "viewer+tensorboard", 3
    cfg.viewer.websocket_port, cfg.viewer.quit_on_train_completion = port, True
    cfg.machine.device_type = "cpu"
    cfg.pipeline.datamanager.num_workers = 0
    cfg.pipeline.model.render_downscale = 3
    cfg.pipeline.viewer_refresh_every = 2
    cfg.steps_per_eval_batch = cfg.steps_per_eval_image = 0
    cfg.set_timestamp()
    cfg.save_config()  # as ns-train does: creates the run directory (the viewer logs into it)
    trainer = cfg.setup(local_rank=0, world_size=1)
    trainer.setup()
    names = {e.name for _, e in trainer.viewer_state.viewer_elements}
    assert {"Compression", "Color by token", "Gaussians", "Scene"} <= names
    pipe = trainer.pipeline
    seen = []
    orig = pipe.select_scene

    def spy(*a, **k):
        orig(*a, **k)
        seen.append((trainer.pipeline.model.step, pipe.model.scene.means.clone()))

    pipe.select_scene = spy
    with warnings.catch_warnings(record=True) as caught:
        trainer.train()
    # nerfstudio logs the back-propagated loss dict with float(): the pipeline silences torch's warning about it
    assert not [w for w in caught if "requires_grad=True to a scalar" in str(w.message)]
    assert [s for s, _ in seen] == [0, 2]  # before the first step (no scene yet), then every 2 steps
    assert not torch.equal(seen[0][1], seen[1][1])  # the weights changed in between: a new prediction
    assert pipe.viewer_num_gaussians.value == pipe.model.scene.num_gaussians
    trainer.viewer_state.viser_server.stop()


@pytest.mark.slow
def test_ns_train_with_compiled_network(env, tmp_path):
    """`--pipeline.model.compile True` (the GPU recipes' default) through nerfstudio's own trainer: the network is
    compiled at the first step (inductor on the CPU here), the view schedule changes the batch layout between steps
    (dynamic shapes after the first change), and the run finishes with finite losses and a loadable checkpoint."""
    steps = 4
    out = tmp_path / "out"
    res = run([ns_cli("ns-train"), "zipsplat-tiny", "--machine.device-type", "cpu", "--output-dir", str(out),
               "--pipeline.model.compile", "True", "--max-num-iterations", str(steps),
               "--pipeline.model.total-steps", str(steps), "--optimizers.backbone.scheduler.max-steps", str(steps),
               "--optimizers.head.scheduler.max-steps", str(steps), "--pipeline.model.render-downscale", "3",
               "--steps-per-eval-batch", "0", "--steps-per-eval-image", "0", "--steps-per-save", "100"],
              env, timeout=900)  # fmt: skip
    assert res.returncode == 0, (res.stdout[-3000:], res.stderr[-5000:])
    rd = run_dir(out)
    rows = read_metrics(rd / "zipsplat_metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(steps))
    assert all(r["loss_l1"] is not None and 0 < r["loss_l1"] < 1 for r in rows)  # finite L1 of [0, 1] images
    assert len({r["num_views"] for r in rows}) > 1  # the layout changed while compiled
    (ckpt,) = (rd / "nerfstudio_models").iterdir()
    sd = torch.load(ckpt, map_location="cpu", weights_only=True)["pipeline"]
    assert any(k.startswith("_model.net.backbone.backbone.blocks.0.") for k in sd)  # compiling kept the keys
    assert not any("_orig_mod" in k for k in sd)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a CUDA GPU")
def test_the_default_cuda_device_without_a_gpu_is_a_clear_error(tmp_path, monkeypatch):
    """nerfstudio's default `--machine.device-type cuda` on a CPU machine: one error that names the flag to add, before
    the built-in data is generated or the network built (torch's own error comes from deep inside `.to()`)."""
    import copy

    from zipsplat_ns.config import zipsplat_tiny_method

    monkeypatch.setenv("ZIPSPLAT_CACHE", str(tmp_path / "cache"))
    cfg = copy.deepcopy(zipsplat_tiny_method.config.pipeline)
    with pytest.raises(RuntimeError, match="finds no CUDA GPU. On a CPU, add --machine.device-type cpu"):
        cfg.setup(device="cuda:0", test_mode="val", world_size=1, local_rank=0)
    assert not (tmp_path / "cache").exists()  # nothing generated
