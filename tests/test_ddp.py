"""Two-process DDP on CPU (gloo) with nerfstudio's own Trainer and ``zipsplat-tiny``.

nerfstudio's launcher refuses ``--machine.num-devices > 1`` without CUDA, so the test spawns the two workers itself
(what ``nerfstudio.scripts.train._distributed_worker`` does: init the process group, then ``Trainer.setup`` and
``train``). Checked: every rank reads other shards (disjoint scenes), the ranks' losses differ (different data) while
their gradients are identical after the backward pass (DDP averaged them) and so are the weights after each step;
only rank 0 writes checkpoints and the metrics log, and evaluation runs on rank 0 only.
"""

from __future__ import annotations

import copy
import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

pytest.importorskip("nerfstudio")
STEPS = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, data: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackLocation

        from zipsplat_ns.config import zipsplat_tiny_method

        cfg = copy.deepcopy(zipsplat_tiny_method.config)
        cfg.output_dir, cfg.timestamp, cfg.vis = Path(out), "ddp", "tensorboard"
        cfg.machine.device_type, cfg.machine.num_devices = "cpu", world
        cfg.max_num_iterations, cfg.steps_per_save = STEPS, 2
        cfg.steps_per_eval_batch = 1  # every step after the first: must run on rank 0 only
        cfg.steps_per_eval_image = cfg.steps_per_eval_all_images = 0
        dm = cfg.pipeline.datamanager
        dm.data, dm.num_workers, dm.eval_num_workers = Path(data), 0, 0
        dm.min_views = dm.max_views = dm.image_budget = 2
        cfg.pipeline.model.render_downscale = 4
        cfg.pipeline.model.gaussians_per_token = 1
        if rank == 0:
            cfg.save_config()
        dist.barrier()
        trainer = cfg.setup(local_rank=rank, world_size=world)
        trainer.setup()
        pipe = trainer.pipeline
        assert pipe.world_size == world and isinstance(pipe._model, torch.nn.parallel.DistributedDataParallel)
        rec = {"rank": rank, "scenes": [], "loss": [], "grad": [], "param": [], "eval": []}
        params = [p for p in pipe.model.parameters() if p.requires_grad]

        def after_step(step: int) -> None:
            rec["scenes"] += pipe.datamanager.last_batch_info.get("scene", [])
            rec["loss"].append(pipe._last_record.get("loss"))
            g = torch.cat([p.grad.reshape(-1) for p in params if p.grad is not None])
            rec["grad"].append([float(g.double().sum()), float(g.double().abs().sum()), int(g.numel())])
            rec["param"].append(float(sum(p.detach().double().sum() for p in params)))

        orig_eval = pipe.get_eval_loss_dict

        def eval_spy(step: int):
            out = orig_eval(step)
            rec["eval"].append([step, "eval_skipped" in out[1]])
            return out

        pipe.get_eval_loss_dict = eval_spy
        trainer.callbacks.append(TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], after_step))
        trainer.train()
        from zipsplat_ns.data.dataset import split_shards

        st = pipe.datamanager._train_stream
        positions, fallback = split_shards(len(st.shards), st.rank, st.world_size, 0, 1)
        assert not fallback
        rec["shards"] = sorted({st.shards[p][1].name for p in positions})
        Path(out, f"rank{rank}.json").write_text(json.dumps(rec))
    finally:
        dist.barrier()
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_gloo_ddp_synchronises_gradients(tmp_path):
    from zipsplat_ns.data.synth import synth_main

    # 8 train scenes in 4 shards: the two ranks get disjoint shards (shards[rank::2])
    synth_main(tmp_path / "data", num_scenes=9, views=12, size=64, test_fraction=0.12, progress=False,
               shard_size_mb=0.15)  # fmt: skip
    shards = sorted((tmp_path / "data" / "train-scenes").glob("*.tar"))
    assert len(shards) >= 2, shards
    out = tmp_path / "out"
    env_before = dict(os.environ)
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        mp.spawn(_worker, args=(2, _free_port(), str(tmp_path / "data"), str(out)), nprocs=2, join=True)
    finally:
        os.environ.clear()
        os.environ.update(env_before)
    r0, r1 = (json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1))

    # disjoint data: shards and scenes
    assert r0["shards"] and r1["shards"] and not set(r0["shards"]) & set(r1["shards"])
    assert len(r0["scenes"]) == len(r1["scenes"]) == STEPS and not set(r0["scenes"]) & set(r1["scenes"])
    assert r0["loss"] != r1["loss"]  # different batches ...
    for g0, g1 in zip(r0["grad"], r1["grad"]):  # ... yet the same (averaged) gradients after every backward
        assert g0[2] == g1[2] and g0[0] == pytest.approx(g1[0], rel=1e-6, abs=1e-9)
        assert g0[1] == pytest.approx(g1[1], rel=1e-6) and g0[1] > 0
    assert r0["param"] == pytest.approx(r1["param"], rel=1e-9)  # and the same weights after every step

    # rank 0 alone writes checkpoints and the metrics log; evaluation runs on rank 0 only
    run = out / "data" / "zipsplat-tiny" / "ddp"  # experiment name = the data folder name
    assert sorted(p.name for p in (run / "nerfstudio_models").iterdir()) == [f"step-{STEPS - 1:09d}.ckpt"]
    rows = [json.loads(line) for line in (run / "zipsplat_metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(STEPS))  # one line per step, not one per rank
    assert r0["eval"] and all(not skipped for _, skipped in r0["eval"])
    assert r1["eval"] and all(skipped for _, skipped in r1["eval"])
    state = torch.load(run / "nerfstudio_models" / f"step-{STEPS - 1:09d}.ckpt", map_location="cpu")
    assert all(k.startswith("_model.module.net.") or k == "_model.module.device_indicator_param" for k in state["pipeline"])

    # the DDP checkpoint (keys "_model.module.*") loads into a single-process pipeline (ns-viewer / ns-export / resume)
    from nerfstudio.utils.eval_utils import eval_setup

    _, pipe, ckpt, _ = eval_setup(run / "config.yml", test_mode="inference")
    params = [p for p in pipe.model.parameters() if p.requires_grad]
    assert float(sum(p.detach().double().sum() for p in params)) == pytest.approx(r0["param"][-1], rel=1e-9)
