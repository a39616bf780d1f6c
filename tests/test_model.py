"""ZipSplatModel on CPU: construction, parameter groups, forward + losses + gradients, non-finite steps, the cached
scene (splatfacto properties in the y-up viewer world) and the state dict."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("nerfstudio")

from nerfstudio.data.scene_box import SceneBox  # noqa: E402

from zipsplat_ns.camera import Camera  # noqa: E402
from zipsplat_ns.gaussians import Gaussians  # noqa: E402
from zipsplat_ns.models.zipsplat_model import (  # noqa: E402
    CompressionScheduleConfig,
    ZipSplatModel,
    ZipSplatModelConfig,
)
from zipsplat_ns.ns_cameras import opengl_to_opencv_c2w, to_nerfstudio  # noqa: E402
from zipsplat_ns.pose import Pose, quat_to_rotmat  # noqa: E402
from zipsplat_ns.rendering import render  # noqa: E402

S = 252


def make_model(**kw) -> ZipSplatModel:
    torch.manual_seed(0)
    args = dict(
        variant="tiny", gaussians_per_token=2, render_downscale=3, renderer="torch", priors_probability=0.0,
        compression_schedule=CompressionScheduleConfig(r_min=0.1, r_max=0.1), total_steps=100,
    )  # fmt: skip
    args.update(kw)
    cfg = ZipSplatModelConfig(**args)
    box = SceneBox(aabb=torch.tensor([[-2.0] * 3, [2.0] * 3]))
    return cfg.setup(scene_box=box, num_train_data=2, metadata={}, device="cpu")


def _pose_rows(R: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return torch.cat([R.reshape(-1), t])


def make_batch(B: int = 1, Vc: int = 2, Vt: int = 1, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    cam = torch.tensor([S, S, 220.0, 220.0, S / 2, S / 2])
    ident = _pose_rows(torch.eye(3), torch.zeros(3))
    side = _pose_rows(torch.eye(3), torch.tensor([0.2, 0.0, 0.0]))
    ctx_pose = torch.stack([ident] + [side] * (Vc - 1))
    inputs = {
        "context_image": torch.rand(B, Vc, 3, S, S, generator=g),
        "context_camera": cam.expand(B, Vc, 6).clone(),
        "context_pose": ctx_pose.expand(B, Vc, 12).clone(),
        "target_camera": cam.expand(B, Vt, 6).clone(),
        "target_pose": _pose_rows(torch.eye(3), torch.tensor([0.1, 0.0, 0.0])).expand(B, Vt, 12).clone(),
    }
    batch = {
        "image": torch.rand(B, Vt, 3, S, S, generator=g),
        "depth": torch.full((B, Vt, S, S), 1.0),
        "context_depth": torch.full((B, Vc, S, S), 1.0),
        "has_depth": torch.ones(B, dtype=torch.bool),
    }
    return inputs, batch


@pytest.fixture(scope="module")
def model():
    return make_model()


def test_construction_and_param_groups(model):
    assert isinstance(model, ZipSplatModel)
    assert not model.device_indicator_param.requires_grad
    groups = model.get_param_groups()
    assert set(groups) == {"backbone", "head"}
    names = {id(p): n for n, p in model.named_parameters()}
    bb = [names[id(p)] for p in groups["backbone"]]
    hd = [names[id(p)] for p in groups["head"]]
    assert bb and hd and all(n.startswith("net.backbone.backbone.") for n in bb)
    assert not any(n.startswith("net.backbone.backbone.") for n in hd)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert "net.backbone.backbone.camera_token" in frozen
    assert any(n.startswith("net.backbone.cam_enc.") for n in frozen)
    grouped = set(bb) | set(hd)
    assert not grouped & frozen
    assert grouped | frozen == {n for n, _ in model.named_parameters()}  # every parameter is somewhere
    assert len(set(bb) & set(hd)) == 0


def test_forward_loss_and_gradients(model):
    model.train()
    model.update_to_step(0)
    inputs, batch = make_batch()
    out = model({**inputs, "has_depth": batch["has_depth"]})
    N = out["means"].shape[1]
    assert N == int(2 * 324 * 0.1) * 2  # V * 324 * compression tokens x 2 Gaussians/token
    assert out["target_render"].shape == (1, 1, 4, S // 3, S // 3)  # RGB + accumulated depth, downscaled
    assert out["activated"].shape == (1, N) and out["activated"].dtype == torch.bool
    metrics = model.get_metrics_dict(out, batch)
    for k in ("psnr", "loss_l1", "loss_lpips", "loss_chamfer", "loss_depth", "num_gaussians", "compression",
              "num_views", "activated_fraction"):  # fmt: skip
        assert k in metrics and torch.isfinite(torch.as_tensor(metrics[k])).all(), k
    assert float(metrics["num_views"]) == 2 and float(metrics["num_gaussians"]) == N
    losses = model.get_loss_dict(out, batch, metrics)
    assert set(losses) == {"l1", "lpips", "scale_penalty", "opacity_penalty", "location_penalty", "chamfer", "depth"}
    assert float(losses["chamfer"]) > 0 and float(losses["depth"]) > 0  # geometry terms on with depth
    model.zero_grad(set_to_none=True)
    sum(losses.values()).backward()
    groups = model.get_param_groups()
    for name in ("backbone", "head"):
        grads = [p.grad for p in groups[name] if p.grad is not None]
        assert grads and any(float(g.abs().sum()) > 0 for g in grads), name
        assert all(torch.isfinite(g).all() for g in grads)
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)


def test_eval_forward_uses_full_resolution_and_no_compression(model):
    model.eval()
    inputs, batch = make_batch()
    with torch.no_grad():
        out = model({**inputs, "has_depth": batch["has_depth"]})
    model.train()
    assert out["target_render"].shape[-2:] == (S, S)
    assert out["means"].shape[1] == 2 * 324 * 2 and float(out["compression"]) == 1.0


def test_nonfinite_loss_skips_the_step():
    m = make_model()
    m.train()
    inputs, batch = make_batch()
    batch["image"][0, 0, 0, 0, 0] = float("nan")
    out = m({**inputs, "has_depth": batch["has_depth"]})
    before = m.nonfinite_skipped
    metrics = m.get_metrics_dict(out, batch)
    losses = m.get_loss_dict(out, batch, metrics)
    assert list(losses) == ["nonfinite_skip"] and m.nonfinite_skipped == before + 1
    assert float(m.get_metrics_dict(out, batch)["nonfinite_skipped"]) == before + 1  # counted once per outputs
    m.zero_grad(set_to_none=True)
    sum(losses.values()).backward()  # works, but reaches no parameter ...
    assert all(p.grad is None for p in m.parameters())
    # ... so nerfstudio's Optimizers skip optimizer.step() for every group
    from nerfstudio.engine.optimizers import Optimizers

    from zipsplat_ns.optim import AdamWOptimizerConfig

    opt = Optimizers({g: {"optimizer": AdamWOptimizerConfig(), "scheduler": None} for g in ("backbone", "head")},
                     m.get_param_groups())  # fmt: skip
    w = m.net.gaussian_head.gaussian_head[1].weight.detach().clone()
    opt.optimizer_step_all()
    assert torch.equal(w, m.net.gaussian_head.gaussian_head[1].weight)
    assert all(len(o.state) == 0 for o in opt.optimizers.values())


def test_gaussian_properties_empty_then_scene(model):
    model.clear_scene()
    k = (model.config.sh_degree + 1) ** 2
    assert model.means.shape == (0, 3) and model.scales.shape == (0, 3) and model.quats.shape == (0, 4)
    assert model.opacities.shape == (0, 1) and model.features_dc.shape == (0, 3)
    assert model.features_rest.shape == (0, k - 1, 3) and model.num_points == 0
    inputs, _ = make_batch()
    g = model.set_scene(inputs, compression=0.25)
    N = g.num_gaussians
    assert N == int(2 * 324 * 0.25) * 2
    assert model.means.shape == (N, 3) and model.scales.shape == (N, 3) and model.quats.shape == (N, 4)
    assert model.opacities.shape == (N, 1) and model.features_dc.shape == (N, 3)
    assert model.features_rest.shape == (N, k - 1, 3)
    assert torch.allclose(model.means, g.means * torch.tensor([1.0, -1.0, -1.0]))
    assert torch.allclose(torch.exp(model.scales), g.scales, rtol=1e-5)
    assert torch.allclose(torch.sigmoid(model.opacities[:, 0]), g.opacities, atol=1e-6)
    # the exported rotation is the world flip applied to the Gaussian's rotation
    F = torch.diag(torch.tensor([1.0, -1.0, -1.0]))
    assert torch.allclose(quat_to_rotmat(model.quats), F @ quat_to_rotmat(g.quats), atol=1e-5)
    assert torch.allclose(model.colors, (g.sh[:, 0] * 0.28209479177387814 + 0.5), atol=1e-6)  # inherited .colors
    assert not any(k.startswith("_scene") for k in model.state_dict())


def test_export_at_sh_degree_zero_keeps_the_colours():
    """At sh_degree 0 splatfacto reads ``features_dc`` as colour logits; ns-export writes ``shs_0`` (f_dc_*) and
    ``colors`` (rgb mode): both must give the scene's own DC colour, not a sigmoid of its SH coefficient."""
    m = make_model(sh_degree=0)
    inputs, _ = make_batch()
    g = m.set_scene(inputs, compression=0.25)
    rgb = g.sh[:, 0] * 0.28209479177387814 + 0.5
    assert m.features_rest.shape == (g.num_gaussians, 0, 3)
    assert torch.allclose(m.shs_0, g.sh[:, 0]) and torch.allclose(m.colors, rgb, atol=1e-6)
    assert torch.allclose(torch.sigmoid(m.features_dc), rgb.clamp(1e-6, 1 - 1e-6), atol=1e-5)
    assert float((rgb - 0.5).abs().max()) > 0.01  # colours that a wrong mapping would change
    m.clear_scene()
    assert m.shs_0.shape == (0, 3) and m.colors.shape == (0, 3)


def test_viewer_and_export_scene_is_computed_in_fp32_by_default():
    """A model trained with bf16 autocast builds its viewer / export / reconstruct scene in fp32 (the reference's
    inference) unless scene_precision='training' asks for the training precision (CPU autocast stands in for CUDA)."""
    fp32 = make_model(precision="fp32")
    amp = make_model(precision="amp-bf16")
    amp.load_state_dict(fp32.state_dict())
    inputs, _ = make_batch()
    ref = fp32.set_scene(inputs, compression=0.25)
    got = amp.set_scene(inputs, compression=0.25)
    assert amp.net.config.precision == "amp-bf16"  # restored after the run
    assert torch.equal(got.means, ref.means) and torch.equal(amp._scene_tokens, fp32._scene_tokens)
    fast = make_model(precision="amp-bf16", scene_precision="training")
    fast.load_state_dict(fp32.state_dict())
    assert not torch.equal(fast.set_scene(inputs, compression=0.25).means, ref.means)


def test_viewer_render_matches_direct_render(model):
    inputs, _ = make_batch(seed=3)
    g = model.set_scene(inputs, compression=0.25)
    cam = Camera(inputs["context_camera"][0, 0])
    ident = Pose.identity()
    ns_cam = to_nerfstudio(cam[None], ident[None], y_up_world=True)
    assert torch.allclose(ns_cam.camera_to_worlds[0, :, :3], torch.eye(3))  # y-up world, view 0 at the origin
    model.set_background(torch.tensor([0.2, 0.3, 0.4]))
    out = model.get_outputs_for_camera(ns_cam)
    assert out["rgb"].shape == (S, S, 3) and out["depth"].shape == (S, S, 1) and out["accumulation"].shape == (S, S, 1)
    assert out["background"].shape == (S, S, 3)
    ref = render(g, cam, ident, mode="RGB+ED", background=(0.2, 0.3, 0.4), backend="torch")
    assert torch.allclose(out["rgb"], ref.images[:3].permute(1, 2, 0).clamp(0, 1), atol=1e-5)
    assert torch.allclose(out["depth"], ref.images[3:].permute(1, 2, 0), atol=1e-4)
    assert float(out["accumulation"].max()) > 0.05  # the scene is in view


def test_exported_gaussians_render_the_same_in_the_y_up_world(model):
    """Render the exported (flipped) Gaussians with the same camera expressed in the y-up world: same image. This
    checks the means flip, the quaternion product and the SH parity signs together (off-axis camera: view-dependent
    colour matters)."""
    inputs, _ = make_batch(seed=5)
    g = model.set_scene(inputs, compression=0.25)
    # give the scene strong degree-1 SH so a wrong sign would show
    g.sh[:, 1:] = torch.randn_like(g.sh[:, 1:]) * 0.5
    model._export_cache = None
    cam = Camera(torch.tensor([[160.0, 120.0, 150.0, 150.0, 80.0, 60.0]]))
    R = quat_to_rotmat(torch.nn.functional.normalize(torch.tensor([0.98, 0.05, 0.15, 0.02]), dim=0))
    pose = Pose.from_Rt(R[None], torch.tensor([[0.3, -0.2, -0.4]]))
    ref = render(g, cam, pose, mode="RGB", backend="torch").images
    exp = model._export()
    k = exp["features_rest"].shape[1] + 1
    flipped = Gaussians(
        exp["means"], torch.exp(exp["scales"]), exp["quats"], torch.sigmoid(exp["opacities"][:, 0]),
        torch.cat([exp["features_dc"][:, None], exp["features_rest"]], 1)[:, :k],
    )  # fmt: skip
    ns_cam = to_nerfstudio(cam, pose, y_up_world=True)
    c2w_cv_yup = opengl_to_opencv_c2w(ns_cam.camera_to_worlds, y_up_world=False)
    pose_yup = Pose.from_Rt(c2w_cv_yup[..., :3, :3], c2w_cv_yup[..., :3, 3])
    got = render(flipped, cam, pose_yup, mode="RGB", backend="torch").images
    assert float(ref.abs().max()) > 0.05
    assert torch.allclose(got, ref, atol=2e-4), float((got - ref).abs().max())
    model.clear_scene()


def test_flip_yz_is_rotation_by_pi_about_x_and_an_involution():
    n = 10
    g = Gaussians(torch.randn(n, 3), torch.rand(n, 3) + 0.1, torch.nn.functional.normalize(torch.randn(n, 4), dim=-1),
                  torch.rand(n), torch.randn(n, 4, 3))  # fmt: skip
    f = g.flip_yz()
    F = torch.diag(torch.tensor([1.0, -1.0, -1.0]))
    assert torch.allclose(f.means, g.means @ F, atol=0)
    assert torch.allclose(quat_to_rotmat(f.quats), F @ quat_to_rotmat(g.quats), atol=1e-5)
    # degree-1 real SH basis is (y, z, x) up to a constant: the y and z coefficients flip, DC and x stay
    assert torch.equal(f.sh[:, 0], g.sh[:, 0]) and torch.equal(f.sh[:, 3], g.sh[:, 3])
    assert torch.equal(f.sh[:, 1:3], -g.sh[:, 1:3])
    back = f.flip_yz()
    assert torch.allclose(back.means, g.means) and torch.allclose(back.sh, g.sh)
    assert torch.allclose(quat_to_rotmat(back.quats), quat_to_rotmat(g.quats), atol=1e-5)


def test_state_dict_keys_and_strict_loading(model):
    inputs, _ = make_batch()
    model.set_scene(inputs)
    sd = model.state_dict()
    assert set(sd) - {"device_indicator_param"} and all(k.startswith("net.") for k in set(sd) - {"device_indicator_param"})
    assert set(sd) == {"net." + k for k in model.net.state_dict()} | {"device_indicator_param"}
    other = make_model()
    other.load_state_dict(sd)  # strict, same keys
    bad = dict(sd)
    bad["net.extra"] = torch.zeros(1)
    with pytest.raises(KeyError, match="unexpected"):
        other.load_state_dict(bad, strict=False)  # refused even when nerfstudio retries non-strict
    missing = dict(sd)
    missing.pop("net.gaussian_head.gaussian_head.1.weight")
    with pytest.raises(KeyError, match="missing"):
        other.load_state_dict(missing, strict=False)
    model.clear_scene()


def test_compile_happens_at_the_first_training_step_only(monkeypatch):
    """``compile=True`` compiles the network lazily at the first *training* forward (automatic dynamic shapes);
    viewer / export / eval forwards before that stay eager."""
    import torch._inductor.config as inductor_config

    monkeypatch.setattr(inductor_config, "comprehensive_padding", True)  # restored after the test
    m = make_model(compile=True)
    calls = []
    monkeypatch.setattr(m.net, "compile", lambda **kw: calls.append(kw) or m.net)
    inputs, batch = make_batch()
    m.set_scene(inputs)  # viewer / export path
    m.eval()
    with torch.no_grad():
        m(inputs)
    assert calls == []
    m.train()
    assert inductor_config.comprehensive_padding  # untouched until the network compiles
    m(inputs)
    m(inputs)
    assert calls == [{"dynamic": None}]
    assert inductor_config.comprehensive_padding is False  # the stride-padding workaround (inductor_padding=False)
    m2 = make_model(compile=True, inductor_padding=True)
    monkeypatch.setattr(m2.net, "compile", lambda **kw: m2.net)
    m2.train()
    m2(inputs)
    assert inductor_config.comprehensive_padding is True


def test_activated_mask_is_the_same_for_any_context_render_chunk():
    """The context views are rendered for the mask in chunks of ``mask_render_chunk`` views (peak memory); the mask is
    an OR over views, so the chunking cannot change it. It also matches the mask of the loss module's own function
    over one render of all views."""
    from zipsplat_ns.losses import activated_mask

    inputs, batch = make_batch(B=2, Vc=3)
    masks = []
    for chunk in (1, 2, 8):
        m = make_model(mask_render_chunk=chunk)
        m.train()
        out = m({**inputs, "has_depth": batch["has_depth"]})
        masks.append(out["activated"])
    assert masks[0].any() and not masks[0].all()  # a real mix of flags, not a trivial mask
    assert torch.equal(masks[0], masks[1]) and torch.equal(masks[0], masks[2])
    # direct: one render of all 3 context views + the target render
    m = make_model()
    m.train()
    out = m({**inputs, "has_depth": batch["has_depth"]})
    g = m._gaussians_of(out).detach()
    cr = render(g, Camera(inputs["context_camera"]).scale(1 / 3), Pose(inputs["context_pose"]), mode="D",
                backend="torch")  # fmt: skip
    direct = activated_mask([cr, m._target_render_of(out)])
    assert torch.equal(direct, out["activated"])
    with pytest.raises(ValueError, match="mask_render_chunk"):
        make_model(mask_render_chunk=0)


def test_mask_context_views_renders_a_drawn_subset_of_the_context_views():
    """``mask_context_views=k`` (opt-in): the mask is the loss module's function of the target render and renders of
    exactly the k drawn context views, so it flags a subset of the full mask's Gaussians. The draw is sorted, k
    distinct views, a function of (seed, step) alone (a resumed run redraws it), and changes between steps."""
    from zipsplat_ns.losses import activated_mask

    inputs, batch = make_batch(B=2, Vc=4)
    shift = torch.tensor([[0.0, 0.0, 0.0], [0.4, 0.0, 0.0], [0.0, 0.4, 0.0], [-0.4, -0.2, 0.3]])
    rows = torch.stack([_pose_rows(torch.eye(3), t) for t in shift])
    inputs["context_pose"] = rows.expand(2, 4, 12).clone()
    m = make_model(mask_context_views=2)
    m.train()
    m.update_to_step(7)
    views = m._mask_context_views(4)
    assert views is not None and len(views) == 2 and views == sorted(set(views))
    out = m({**inputs, "has_depth": batch["has_depth"]})
    g = m._gaussians_of(out).detach()
    idx = torch.tensor(views)
    cam = Camera(inputs["context_camera"][:, idx]).scale(1 / 3)
    cr = render(g, cam, Pose(inputs["context_pose"][:, idx]), mode="D", backend="torch")
    assert torch.equal(activated_mask([cr, m._target_render_of(out)]), out["activated"])
    full = make_model()
    full.train()
    full.update_to_step(7)
    out_full = full({**inputs, "has_depth": batch["has_depth"]})
    assert torch.equal(out_full["means"], out["means"])  # the same Gaussians: only the mask's views differ
    a, b = out["activated"], out_full["activated"]
    assert not (a & ~b).any() and (b & ~a).any()  # a strict subset here
    # the draw: the same for the same seed and step, whatever came before; other steps draw other views
    again = make_model(mask_context_views=2)
    again.update_to_step(7)
    assert again._mask_context_views(4) == views

    def draws(model):
        out = []
        for step in range(20):
            model.update_to_step(step)
            out.append(tuple(model._mask_context_views(4)))
        return out

    assert len(set(draws(m))) > 3
    m.seed_rng(5)  # another rank's seed draws its own views
    assert draws(m) != draws(again)
    assert m._mask_context_views(2) is None and make_model()._mask_context_views(4) is None  # all views
    with pytest.raises(ValueError, match="mask_context_views"):
        make_model(mask_context_views=-1)


def test_mask_render_downscale_renders_the_context_views_smaller():
    """``mask_render_downscale=2`` (opt-in): the context views' mask renders are at half the (already downscaled)
    size, and the mask is the loss module's function of exactly those renders and the full-size target render."""
    from zipsplat_ns.losses import activated_mask

    inputs, batch = make_batch(B=2, Vc=3)
    m = make_model(mask_render_downscale=2)
    m.train()
    out = m({**inputs, "has_depth": batch["has_depth"]})
    g = m._gaussians_of(out).detach()
    cr = render(g, Camera(inputs["context_camera"]).scale(1 / 6), Pose(inputs["context_pose"]), mode="D",
                backend="torch")  # fmt: skip
    assert cr.images.shape[-2:] == (S // 6, S // 6)
    direct = activated_mask([cr, m._target_render_of(out)])
    assert torch.equal(direct, out["activated"])
    full = make_model()
    full.train()
    out_full = full({**inputs, "has_depth": batch["has_depth"]})
    assert torch.equal(out_full["means"], out["means"])  # the same Gaussians: only the mask's renders differ
    a, b = out["activated"], out_full["activated"]
    assert not torch.equal(a, b)  # a coarser test, not the same one
    assert (a == b).float().mean() > 0.8  # ... that mostly agrees
    with pytest.raises(ValueError, match="mask_render_downscale"):
        make_model(mask_render_downscale=0)
    bad = make_model(mask_render_downscale=5)  # 252 / 3 = 84 px context renders do not divide by 5
    bad.train()
    msg = r"render_downscale x mask_render_downscale=15: the context images \(252x252\)"
    with pytest.raises(ValueError, match=msg):
        bad({**inputs, "has_depth": batch["has_depth"]})


# ---------------------------------------------------------------------------------------- host synchronisations
def test_training_step_checks_its_inputs_once_with_clear_errors(monkeypatch):
    """The step reads its inputs' checks from the device once (``_check_inputs``); renders and camera / pose objects
    built from them are not re-validated. Bad inputs still fail, naming the input."""
    m = make_model()
    m.train()
    m.update_to_step(0)
    inputs, batch = make_batch(B=2, Vc=3, Vt=2)
    inputs["has_depth"] = batch["has_depth"]
    from zipsplat_ns import camera as camera_mod
    from zipsplat_ns import pose as pose_mod
    import zipsplat_ns.rendering as rendering_mod

    counts = {"camera": 0, "pose": 0, "size": 0}
    cam_init, pose_init, size_of = camera_mod.Camera.__init__, pose_mod.Pose.__init__, rendering_mod.camera_image_size

    def count(key, fn):
        def inner(*a, **k):
            counts[key] += 1
            return fn(*a, **k)

        return inner

    monkeypatch.setattr(camera_mod.Camera, "__init__", count("camera", cam_init))
    monkeypatch.setattr(pose_mod.Pose, "__init__", count("pose", pose_init))
    monkeypatch.setattr(rendering_mod, "camera_image_size", count("size", size_of))
    out = m(inputs)
    sum(m.get_loss_dict(out, batch).values()).backward()
    assert counts == {"camera": 0, "pose": 0, "size": 0}
    assert out["activated"] is not None and not out["num_views"].is_cuda  # host scalars
    monkeypatch.undo()

    def fails(key, value, match):
        bad = {k: v.clone() for k, v in inputs.items()}
        bad[key][(0,) * (bad[key].ndim - 1) + (value[0],)] = value[1]
        with pytest.raises(ValueError, match=match):
            m(bad)

    fails("target_pose", (10, float("nan")), "target_pose: contains non-finite")
    fails("context_pose", (9, float("inf")), "context_pose: contains non-finite")
    fails("target_camera", (2, float("nan")), "target_camera: contains non-finite")
    fails("context_camera", (3, -5.0), "context_camera: image sizes and focal lengths must be positive")
    fails("target_camera", (0, S - 2.0), "target_camera: every camera of a batch must have the same whole-pixel")
    fails("context_camera", (1, S + 0.5), "context_camera: every camera of a batch must have the same whole-pixel")


def test_camera_scale_checks_python_factors_on_the_host():
    cam = Camera(torch.tensor([[100.0, 80.0, 90.0, 90.0, 50.0, 40.0]]))
    assert torch.allclose(cam.scale(0.5).data, torch.tensor([[50.0, 40.0, 45.0, 45.0, 25.0, 20.0]]))
    assert torch.allclose(cam.scale((0.5, 0.25)).data, torch.tensor([[50.0, 20.0, 45.0, 22.5, 25.0, 10.0]]))
    for bad in (0.0, -1.0, float("inf"), (1.0, 0.0)):
        with pytest.raises(ValueError, match="Camera.scale: factors must be positive"):
            cam.scale(bad)
    with pytest.raises(ValueError, match="Camera.scale: factors must be positive"):
        cam.scale(torch.tensor(-2.0))
    # Python factors never become a device tensor (on CUDA that is a copy that waits for the GPU), and the result
    # keeps its gradient path
    import zipsplat_ns.camera as camera_mod

    real_as_tensor = torch.as_tensor
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(camera_mod.torch, "as_tensor", lambda *a, **k: pytest.fail("Camera.scale built a tensor"))
        data = cam.data.clone().requires_grad_(True)
        scaled = Camera.wrap(data).scale((0.5, 0.25))
        assert torch.allclose(scaled.data, torch.tensor([[50.0, 20.0, 45.0, 22.5, 25.0, 10.0]]))
        scaled.data.sum().backward()
        assert data.grad.tolist() == [[0.5, 0.25, 0.5, 0.25, 0.5, 0.25]]
        assert torch.equal(cam.scale(2).data, cam.data * 2) and torch.equal(cam.data, cam.scale(1.0).data)
    assert torch.allclose(cam.scale(real_as_tensor([0.5, 0.25])).data, cam.scale((0.5, 0.25)).data)  # tensor path
    # derived objects are wrapped, not re-validated, and keep the data
    sub = cam[0]
    assert isinstance(sub, Camera) and torch.equal(sub.data, cam.data[0])
    assert torch.equal(Camera.stack([cam, cam]).data, torch.stack([cam.data, cam.data]))


# ------------------------------------------------------------------------------------------------ cuda_graphs
def test_cuda_graphs_fall_back_to_eager_on_cpu_and_train_identically():
    """CUDA graphs need CUDA: on a CPU the option changes nothing (same losses and gradients as without it)."""
    from zipsplat_ns.models.cuda_graphs import GraphCache

    inputs, batch = make_batch(B=1, Vc=2, Vt=1)
    inputs["has_depth"] = batch["has_depth"]
    results = []
    for graphs in (False, True):
        m = make_model(cuda_graphs=graphs)
        assert (m.net._graphed_vit is not None) == graphs
        m.train()
        m.update_to_step(0)
        out = m(inputs)
        loss = sum(m.get_loss_dict(out, batch).values())
        loss.backward()
        results.append((float(loss.detach()), {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}))
        if graphs:
            assert not GraphCache.usable(inputs["context_image"])  # CPU tensors
            assert m.net._graphed_vit.captures == 0 and not m._lpips_graphs
    assert results[0][0] == results[1][0]
    assert results[0][1].keys() == results[1][1].keys()
    assert all(torch.equal(results[0][1][k], results[1][1][k]) for k in results[0][1])


def test_graphed_lpips_is_not_built_when_the_lpips_term_is_off(monkeypatch):
    """With ``cuda_graphs`` and ``lpips_weight`` 0 the loss never calls LPIPS, so its graphs (and the VGG16 weights
    they need) are not built: this once failed an ns-train run without the weights
    (benchmarks/bench_train_mask_render/). With the term on, the graphs are built once per device."""
    from types import SimpleNamespace

    import zipsplat_ns.lpips as lpips_mod
    from zipsplat_ns.losses import LossConfig
    from zipsplat_ns.models import cuda_graphs as cuda_graphs_mod

    built = []
    monkeypatch.setattr(lpips_mod, "get_lpips_vgg", lambda device: built.append(device) or torch.nn.Identity())
    monkeypatch.setattr(cuda_graphs_mod, "GraphCache", lambda net, name, **kw: ("graphs", name))
    render_ = SimpleNamespace(is_cuda=True, requires_grad=True, device=torch.device("cpu"))  # a CUDA tensor's flags
    off = make_model(cuda_graphs=True, loss=LossConfig(lpips_weight=0.0))
    assert off._graphed_lpips(render_) is None and not built
    on = make_model(cuda_graphs=True)
    assert on._graphed_lpips(render_) == ("graphs", "LPIPS-VGG") and len(built) == 1
    assert on._graphed_lpips(render_) == ("graphs", "LPIPS-VGG") and len(built) == 1  # cached
    with torch.no_grad():
        assert on._graphed_lpips(render_) is None
    assert make_model()._graphed_lpips(render_) is None  # eager default


def test_cuda_graphs_autocast_cache_reset_and_accumulation_guard():
    from zipsplat_ns.models.network import ZipSplat

    torch.manual_seed(0)
    net = ZipSplat("tiny", precision="amp-bf16", cuda_graphs=True)
    with net._trunk_autocast(torch.device("cpu")):
        assert torch.is_autocast_enabled("cpu") and not torch.is_autocast_cache_enabled()  # capture needs it off
    plain = ZipSplat("tiny", precision="amp-bf16")
    with plain._trunk_autocast(torch.device("cpu")):
        assert torch.is_autocast_cache_enabled()
    graphed = net._graphed_vit
    # captured graphs point at the parameters' storage: moving the network or loading weights drops them
    graphed._graphs["fake"] = object()
    net.to("cpu")
    assert not graphed._graphs
    graphed._graphs["fake"] = object()
    net.load_state_dict(plain.state_dict())
    assert not graphed._graphs
    # a backward graph writes gradients into fixed buffers: accumulating over two backward passes is refused
    p = next(q for q in net.backbone.backbone.parameters() if q.requires_grad)
    p.grad = torch.zeros_like(p)
    with pytest.raises(RuntimeError, match="cuda_graphs: the ViT backbone's parameters still hold gradients"):
        graphed(torch.zeros(1, 2, 3, S, S))
    # signature keys: shapes, dtypes, requires_grad, missing arguments, autocast state, trainable flags, mode
    x = torch.zeros(1, 2, 3, S, S)
    k = graphed._key((x, None))
    assert k == graphed._key((x.clone(), None))
    assert k != graphed._key((torch.zeros(2, 2, 3, S, S), None))
    assert k != graphed._key((x, torch.zeros(1, 2, 192)))
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=True):
        assert k != graphed._key((x, None))
    p.requires_grad_(False)
    assert k != graphed._key((x, None))
    p.requires_grad_(True)
    net.backbone.backbone.eval()
    assert k != graphed._key((x, None))


def test_cuda_graphs_run_eager_beyond_max_signatures(caplog):
    """Captured layouts keep their memory, so their number is bounded: a new layout beyond it runs eager, warned once."""
    from zipsplat_ns.models.cuda_graphs import GraphCache

    lin = torch.nn.Linear(4, 3)
    cache = GraphCache(lin, "test linear", single_output=True, max_signatures=2)
    cache._graphs.update({"a": None, "b": None})  # two captured layouts (placeholders: never replayed here)
    x = torch.randn(5, 4)
    with caplog.at_level("WARNING"):
        y1 = cache(x)
        y2 = cache(2 * x)
    assert torch.equal(y1, lin(x)) and torch.equal(y2, lin(2 * x))
    assert cache.eager_calls == 2 and cache.captures == 0
    assert sum("further layouts run eager" in r.message for r in caplog.records) == 1


def test_cuda_graph_captures_are_thread_local(monkeypatch):
    """Captures run in ``thread_local`` mode, so the DataLoader's pin-memory thread (and the viewer's render thread)
    cannot invalidate them (the ``global`` default failed ``ns-train`` with cuda_graphs on an H100). With a torch that
    takes ``capture_error_mode`` it is passed; with one that does not, ``torch.cuda.graph`` defaults to it during the
    call and is restored afterwards."""
    import inspect

    from zipsplat_ns.models import cuda_graphs

    original_graph = torch.cuda.graph
    seen = {}

    def new_api(callables, sample_args, num_warmup_iters=3, allow_unused_input=False, pool=None,
                capture_error_mode="global"):  # fmt: skip
        seen["new"] = capture_error_mode
        return "graphed"

    monkeypatch.setattr(torch.cuda, "make_graphed_callables", new_api)
    assert cuda_graphs.make_graphed_callables_thread_local(None, ()) == "graphed"
    assert seen["new"] == "thread_local"

    def old_api(callables, sample_args, num_warmup_iters=3, allow_unused_input=False, pool=None):
        seen["old_graph_mode"] = inspect.signature(torch.cuda.graph).parameters["capture_error_mode"].default
        seen["old_graph_swapped"] = torch.cuda.graph is not original_graph
        raise RuntimeError("capture failed")  # the original torch.cuda.graph is restored on errors too

    monkeypatch.setattr(torch.cuda, "make_graphed_callables", old_api)
    with pytest.raises(RuntimeError, match="capture failed"):
        cuda_graphs.make_graphed_callables_thread_local(None, ())
    assert seen["old_graph_mode"] == "thread_local" and seen["old_graph_swapped"]
    assert torch.cuda.graph is original_graph
