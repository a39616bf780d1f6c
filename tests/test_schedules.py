"""Schedules of the ZipSplat recipe (reference §1.6, §4.2) and the nerfstudio optimizer/scheduler configs."""

from __future__ import annotations

import io
import math
import random
import subprocess
import sys

import pytest
import torch

from zipsplat_ns.schedules import (
    compression_ratio_min,
    effective_compression_min,
    max_views,
    sample_compression,
    sample_num_views,
    scenes_per_batch,
    use_priors,
    warmup_cosine,
    warmup_steps_for,
)


def test_warmup_cosine_key_steps():
    total = 450_000
    W = warmup_steps_for(total)
    assert W == 22_500
    assert warmup_cosine(0, total) == pytest.approx(1 / W)
    assert warmup_cosine(W - 1, total) == pytest.approx(1 / W + (1 - 1 / W) * (W - 1) / W)
    assert warmup_cosine(W, total) == 1.0
    assert warmup_cosine(W + (total - W) // 2, total) == pytest.approx(0.5, abs=1e-9)
    assert warmup_cosine(total, total) == 0.0
    assert warmup_cosine(total + 10, total) == 0.0
    assert warmup_cosine(total - 1, total) == pytest.approx(0.0, abs=1e-9)
    for s in (0, W, total // 2, total):
        assert type(warmup_cosine(s, total)) is float


def test_warmup_cosine_equals_torch_sequential_lr():
    total, frac = 200, 0.05
    W = warmup_steps_for(total, frac)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = torch.optim.lr_scheduler.SequentialLR(
        opt,
        [
            torch.optim.lr_scheduler.LinearLR(opt, start_factor=1 / W, end_factor=1.0, total_iters=W),
            torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total - W, eta_min=0),
        ],
        milestones=[W],
    )
    for step in range(total + 1):
        assert warmup_cosine(step, total, frac) == pytest.approx(opt.param_groups[0]["lr"], abs=1e-7), step
        opt.step()
        sched.step()


def test_compression_schedule():
    total = 1000
    assert compression_ratio_min(0, total) == 1.0
    assert compression_ratio_min(125, total) == pytest.approx(0.5 + 0.25 * (1 + math.cos(math.pi / 4)))
    assert compression_ratio_min(250, total) == pytest.approx(0.75)
    assert compression_ratio_min(500, total) == pytest.approx(0.5)
    assert compression_ratio_min(900, total) == 0.5
    assert effective_compression_min(0.5, 2) == 0.5
    assert effective_compression_min(0.5, 1) == 0.5  # never above the unscaled minimum
    assert effective_compression_min(0.5, 8) == pytest.approx(0.25)
    assert effective_compression_min(1.0, 24) == pytest.approx(math.sqrt(2 / 24))
    rng = random.Random(0)
    draws = [sample_compression(rng, 900, total, 8) for _ in range(2000)]
    assert all(0.25 <= d <= 1.0 for d in draws) and min(draws) < 0.3 and max(draws) > 0.95
    assert all(type(d) is float for d in draws[:5])
    assert sample_compression(random.Random(1), 0, total, 2) == 1.0  # uniform(1, 1) at step 0 with 2 views


def test_view_schedule():
    total = 450_000
    assert max_views(0, total) == 2
    assert max_views(225_000, total) == 24
    assert max_views(400_000, total) == 24
    assert max_views(112_500, total) == 13  # round(2 + 22 * 0.5)
    assert max_views(10_000, total) == round(2 + 22 * 10_000 / 225_000)
    assert max_views(0, total, min_views=1, max_views_cap=8) == 1
    assert max_views(total, total, min_views=1, max_views_cap=8) == 8
    rng = random.Random(0)
    assert {sample_num_views(rng, 0, total) for _ in range(50)} == {2}
    seen = {sample_num_views(rng, total, total) for _ in range(3000)}
    assert seen == set(range(2, 25))
    assert [scenes_per_batch(v) for v in (2, 5, 24, 30)] == [12, 4, 1, 1]


def test_use_priors_probability():
    rng = random.Random(0)
    hits = sum(use_priors(rng) for _ in range(20_000))
    assert abs(hits / 20_000 - 0.2) < 0.015
    assert use_priors(rng, 0.0) is False and use_priors(rng, 1.0) is True


def test_schedules_module_does_not_import_nerfstudio():
    code = "import sys, zipsplat_ns.schedules; print('nerfstudio' in sys.modules, 'numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "False"


# ---------------------------------------------------------------------------------------------- nerfstudio
def test_nerfstudio_adamw_and_warmup_cosine_scheduler():
    pytest.importorskip("nerfstudio")
    from zipsplat_ns.optim import AdamWOptimizerConfig, WarmupCosineSchedulerConfig

    p = torch.nn.Parameter(torch.ones(3))
    cfg = AdamWOptimizerConfig()
    assert (cfg.lr, cfg.betas, cfg.weight_decay, cfg.max_norm) == (3e-4, (0.9, 0.95), 0.05, None)
    opt = cfg.setup([p])
    assert isinstance(opt, torch.optim.AdamW)
    g = opt.param_groups[0]
    assert g["lr"] == 3e-4 and g["betas"] == (0.9, 0.95) and g["weight_decay"] == 0.05

    total = 100
    sched = WarmupCosineSchedulerConfig(max_steps=total).setup().get_scheduler(opt, lr_init=cfg.lr)
    assert isinstance(sched, torch.optim.lr_scheduler.LambdaLR)
    lrs = []
    for step in range(total + 1):
        lrs.append(opt.param_groups[0]["lr"])
        assert lrs[-1] == pytest.approx(3e-4 * warmup_cosine(step, total))
        opt.step()
        sched.step()
        if step == 40:
            state = sched.state_dict()
            buf = io.BytesIO()
            torch.save({"scheduler": state, "optimizer": opt.state_dict()}, buf)
    assert lrs[0] == pytest.approx(3e-4 / 5) and lrs[5] == pytest.approx(3e-4) and lrs[-1] == 0.0
    # resume: the checkpointed state loads with weights_only=True and continues on the same LR
    buf.seek(0)
    ck = torch.load(buf, weights_only=True)
    p2 = torch.nn.Parameter(torch.ones(3))
    opt2 = cfg.setup([p2])  # nerfstudio's order: build optimizer and scheduler, then load both states
    sched2 = WarmupCosineSchedulerConfig(max_steps=total).setup().get_scheduler(opt2, lr_init=cfg.lr)
    opt2.load_state_dict(ck["optimizer"])
    sched2.load_state_dict(ck["scheduler"])
    assert sched2.last_epoch == 41 and opt2.param_groups[0]["lr"] == pytest.approx(lrs[41])
    opt2.step()
    sched2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(lrs[42])
    assert all(type(v) is float for v in sched.get_last_lr())


def test_adamw_fused_only_when_asked_or_on_cuda_and_the_same_update():
    """``fused=None`` (the default) picks torch's fused kernel only for fp32 CUDA parameters; forced ``fused=True``
    (supported on the CPU too) takes the same steps as the multi-tensor AdamW."""
    pytest.importorskip("nerfstudio")
    from zipsplat_ns.optim import AdamWOptimizerConfig

    g = torch.Generator().manual_seed(0)
    init = [torch.randn(5, 3, generator=g), torch.randn(7, generator=g)]
    grads = [[torch.randn(t.shape, generator=g) for t in init] for _ in range(5)]  # seeded: independent of test order
    results = {}
    for fused in (None, True):
        params = [torch.nn.Parameter(t.clone()) for t in init]
        opt = AdamWOptimizerConfig(lr=1e-2, fused=fused).setup(params)
        assert bool(opt.defaults.get("fused")) == (fused is True)  # CPU parameters: not fused unless forced
        for step_grads in grads:
            for p, gr in zip(params, step_grads):
                p.grad = gr.clone()
            opt.step()
        results[fused] = [p.detach() for p in params]
    for a, b, t0 in zip(results[None], results[True], init):
        assert torch.allclose(a, b, atol=1e-6)
        assert (a - t0).abs().min() > 1e-3  # the five steps did move every value


def test_gradients_are_clipped_by_one_global_norm_and_nonfinite_steps_skipped():
    """The reference clips all trainable parameters together at norm 1.0 (not each nerfstudio group on its own) and
    skips steps with a NaN/Inf gradient: head gradient norm 3 and backbone 0.5 give 3/n and 0.5/n, n = sqrt(9.25)."""
    pytest.importorskip("nerfstudio")
    from types import SimpleNamespace

    from nerfstudio.engine.optimizers import Optimizers

    from zipsplat_ns.optim import AdamWOptimizerConfig
    from zipsplat_ns.pipeline import ZipSplatPipeline, ZipSplatPipelineConfig

    assert ZipSplatPipelineConfig().grad_clip_norm == 1.0
    model = torch.nn.Module()
    model.backbone = torch.nn.Parameter(torch.zeros(4))
    model.head = torch.nn.Parameter(torch.zeros(9))
    pipe = ZipSplatPipeline.__new__(ZipSplatPipeline)  # only what the gradient guard uses
    torch.nn.Module.__init__(pipe)
    pipe._model = model
    pipe.__dict__.update(config=SimpleNamespace(grad_clip_norm=1.0), _grad_guard_installed=False, _train_calls=0,
                         nonfinite_grad_skipped=0, last_grad_norm=None)  # fmt: skip
    opts = Optimizers({g: {"optimizer": AdamWOptimizerConfig(lr=1e-3), "scheduler": None} for g in ("backbone", "head")},
                      {"backbone": [model.backbone], "head": [model.head]})  # fmt: skip
    pipe._install_grad_guard(opts)

    def set_grads(b: float, h: float):
        pipe._train_calls += 1
        model.backbone.grad = torch.full((4,), b / 2.0)  # norm b
        model.head.grad = torch.full((9,), h / 3.0)  # norm h

    set_grads(0.5, 3.0)
    opts.optimizer_step_all()
    n = 9.25**0.5
    assert model.backbone.grad.norm().item() == pytest.approx(0.5 / n, rel=1e-5)
    assert model.head.grad.norm().item() == pytest.approx(3.0 / n, rel=1e-5)
    assert pipe.last_grad_norm.item() == pytest.approx(n, rel=1e-6)
    set_grads(0.3, 0.4)  # below the limit: untouched
    opts.optimizer_step_all()
    assert model.head.grad.norm().item() == pytest.approx(0.4, rel=1e-6)
    before = [model.backbone.detach().clone(), model.head.detach().clone()]
    set_grads(0.5, float("nan"))
    opts.optimizer_step_all()
    assert pipe.nonfinite_grad_skipped == 1 and model.backbone.grad is None and model.head.grad is None
    assert torch.equal(model.backbone, before[0]) and torch.equal(model.head, before[1])


def test_training_length_warnings_cover_resume_and_from_scratch(caplog):
    """nerfstudio runs --max-num-iterations more steps from a checkpoint: a resume that would pass total_steps is
    warned about with the count that stops there; a fresh run of the right length is not; no weights: one warning
    that the ViT trains from scratch with the camera encoder frozen at random."""
    pytest.importorskip("nerfstudio")
    import logging
    from types import SimpleNamespace

    from zipsplat_ns.pipeline import ZipSplatPipeline

    pipe = ZipSplatPipeline.__new__(ZipSplatPipeline)
    torch.nn.Module.__init__(pipe)
    pipe._model = torch.nn.Module()
    pipe._model.config = SimpleNamespace(total_steps=300, weights=None, backbone_weights=None)
    pipe.local_rank = 0

    def messages(start: int, n: int, weights=None):
        pipe._model.config.weights = weights
        trainer = SimpleNamespace(_start_step=start, config=SimpleNamespace(
            max_num_iterations=n, load_dir=None, load_checkpoint=None, optimizers={}))  # fmt: skip
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="zipsplat_ns.pipeline"):
            pipe._check_lengths(trainer)
        return [r.getMessage() for r in caplog.records]

    assert [m for m in messages(0, 300, weights="w.tar") if "training length" in m] == []
    assert [m for m in messages(200, 100, weights="w.tar") if "training length" in m] == []
    (resume,) = messages(200, 300, weights="w.tar")
    assert "resuming at step 200" in resume and "--max-num-iterations 100 to stop" in resume
    assert any("training length" in m for m in messages(0, 50, weights="w.tar"))
    assert any("training from scratch" in m and "cam_enc" in m for m in messages(0, 300))
    assert not any("training from scratch" in m for m in messages(200, 100))  # resumed: it has its weights
    (done,) = messages(300, 10, weights="w.tar")  # a checkpoint at the end: never "--max-num-iterations 0"
    assert "the end of total_steps 300" in done and "raise --pipeline.model.total-steps" in done
    assert "--max-num-iterations 0" not in done
