"""Analytic checks of the renderer interface (torch backend on CPU)."""

from __future__ import annotations

import math

import pytest
import torch

from zipsplat_ns import Camera, Gaussians, Pose
from zipsplat_ns.gaussians import rgb_to_sh0
from zipsplat_ns.rendering import render

EPS2D = 0.3  # screen-space blur added to every 2D covariance (gsplat "classic" mode)


def one_gaussian(mean, sigma, opacity, rgb):
    return Gaussians(
        means=torch.tensor([mean], dtype=torch.float32),
        scales=torch.full((1, 3), float(sigma)),
        quats=torch.tensor([[1.0, 0.0, 0.0, 0.0]]),
        opacities=torch.tensor([float(opacity)]),
        sh=rgb_to_sh0(torch.tensor([[rgb]], dtype=torch.float32)),
    )


CAM = Camera.from_focal(80.0, w=64, h=48, cx=32.0, cy=24.0)


def test_single_gaussian_lands_at_its_projection():
    mean = (0.123, -0.071, 2.0)
    g = one_gaussian(mean, 0.03, 0.8, (1.0, 0.5, 0.25))
    out = render(g, CAM, Pose.identity(), mode="RGB")
    alpha = out.alphas[0]
    # Sub-pixel centroid of the splat (pixel centres at +0.5).
    ys, xs = torch.meshgrid(torch.arange(48) + 0.5, torch.arange(64) + 0.5, indexing="ij")
    cx = float((alpha * xs).sum() / alpha.sum())
    cy = float((alpha * ys).sum() / alpha.sum())
    u = 80.0 * mean[0] / mean[2] + 32.0
    v = 80.0 * mean[1] / mean[2] + 24.0
    assert abs(cx - u) < 0.5 and abs(cy - v) < 0.5, (cx, cy, u, v)


def test_peak_colour_alpha_and_falloff_are_analytic():
    # Projected centre exactly on the centre of pixel (40, 20): u = 40.5, v = 20.5.
    z, sigma, opacity, rgb = 2.0, 0.025, 0.7, (0.9, 0.3, 0.1)
    x, y = (40.5 - 32.0) * z / 80.0, (20.5 - 24.0) * z / 80.0
    g = one_gaussian((x, y, z), sigma, opacity, rgb)
    out = render(g, CAM, Pose.identity(), mode="RGB")
    assert out.alphas[0, 20, 40] == pytest.approx(opacity, abs=1e-6)
    assert out.images[:, 20, 40].tolist() == pytest.approx([c * opacity for c in rgb], abs=1e-6)
    # One pixel to the right: the 2D variance is (f sigma / z)^2 + eps2d (the Jacobian is exact on the axis here
    # only to first order, so allow a small tolerance).
    var = (80.0 * sigma / z) ** 2 + EPS2D
    expect = opacity * math.exp(-0.5 / var)
    assert out.alphas[0, 20, 41] == pytest.approx(expect, rel=2e-2)
    assert out.alphas[0, 20, 39] == pytest.approx(expect, rel=2e-2)


def test_two_gaussians_composite_front_to_back_in_depth_order():
    z1, z2, o1, o2 = 1.5, 3.0, 0.6, 0.9
    c1, c2 = (1.0, 0.0, 0.0), (0.0, 0.0, 1.0)
    u, v = 32.5, 24.5  # both centred on pixel (32, 24)
    mk = lambda z, o, c: one_gaussian(((u - 32) * z / 80, (v - 24) * z / 80, z), 0.02 * z, o, c)  # noqa: E731
    front, back = mk(z1, o1, c1), mk(z2, o2, c2)
    for order in ([front, back], [back, front]):  # storage order must not matter
        g = Gaussians.cat(order)
        rgb = render(g, CAM, Pose.identity(), mode="RGB")
        d = render(g, CAM, Pose.identity(), mode="D")
        ed = render(g, CAM, Pose.identity(), mode="ED")
        a = o1 + o2 * (1 - o1)
        assert rgb.alphas[0, 24, 32] == pytest.approx(a, abs=1e-5)
        expect = [o1 * c1[i] + o2 * (1 - o1) * c2[i] for i in range(3)]
        assert rgb.images[:, 24, 32].tolist() == pytest.approx(expect, abs=1e-5)
        acc_depth = o1 * z1 + o2 * (1 - o1) * z2  # D: accumulated depth sum_i w_i z_i
        assert d.images[0, 24, 32] == pytest.approx(acc_depth, abs=1e-4)
        assert ed.images[0, 24, 32] == pytest.approx(acc_depth / a, abs=1e-4)  # ED = D / alpha


def test_combined_modes_background_and_empty_pixels():
    g = one_gaussian((0.0, 0.0, 2.0), 0.02, 0.5, (0.2, 0.4, 0.6))
    both = render(g, CAM, Pose.identity(), mode="RGB+ED", background=(1.0, 1.0, 1.0))
    assert both.images.shape == (4, 48, 64)
    # Far from the splat: background colour, zero alpha, zero depth.
    assert both.images[:3, 2, 2].tolist() == pytest.approx([1.0, 1.0, 1.0])
    assert float(both.alphas[0, 2, 2]) == 0.0 and float(both.images[3, 2, 2]) == 0.0
    # At the centre: colour * alpha + (1 - alpha) * background; expected depth = z.
    a = float(both.alphas[0, 24, 32])
    assert both.images[:3, 24, 32].tolist() == pytest.approx([c * a + (1 - a) for c in (0.2, 0.4, 0.6)], abs=1e-5)
    assert float(both.images[3, 24, 32]) == pytest.approx(2.0, abs=1e-4)
    assert both.rgb.shape == (3, 48, 64) and both.depth.shape == (1, 48, 64)


def test_backgrounds_per_camera_follow_the_camera_layout():
    """A background is one RGB, one per view ``(V, 3)``, or one per scene and view ``(B, V, 3)``; other shapes are
    an error naming the accepted ones (a ``(V, 3)`` background once lined up with the scene axis instead)."""
    g = one_gaussian((0.0, 0.0, 2.0), 0.02, 0.5, (0.2, 0.4, 0.6))
    cams, poses = Camera(CAM.data.expand(2, 6)), Pose(Pose.identity().data.expand(2, 12))
    per_view = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    out = render(g, cams, poses, background=per_view)  # unbatched Gaussians, 2 views
    assert out.images[:, :, 2, 2].tolist() == per_view.tolist()
    gb = Gaussians.stack([g, g])  # 2 scenes x 2 views
    cams2, poses2 = Camera(CAM.data.expand(2, 2, 6)), Pose(Pose.identity().data.expand(2, 2, 12))
    out = render(gb, cams2, poses2, background=per_view)
    assert out.images[:, :, :, 2, 2].tolist() == [per_view.tolist()] * 2  # per view, the same in both scenes
    per_cam = torch.rand(2, 2, 3)
    out = render(gb, cams2, poses2, background=per_cam)
    assert torch.allclose(out.images[:, :, :, 2, 2], per_cam)
    for bad in (torch.zeros(3, 3), torch.zeros(2, 2, 3), torch.zeros(4)):
        with pytest.raises(ValueError, match=r"background must be \(3,\) RGB, or one RGB per camera"):
            render(g, cams, poses, background=bad)


def test_behind_camera_and_offscreen_are_culled():
    g = Gaussians.cat([one_gaussian((0, 0, -2.0), 0.1, 0.9, (1, 1, 1)), one_gaussian((50.0, 0, 2.0), 0.01, 0.9, (1, 1, 1))])
    out = render(g, CAM, Pose.identity())
    assert float(out.alphas.max()) == 0.0
    assert out.info["radii"].tolist() == [0, 0]


def test_sh_degree_one_is_view_dependent():
    # sh_1 multiplies -C1 * y of the view direction; seen from above vs below the colour must differ by sign.
    g = one_gaussian((0.0, 0.0, 0.0), 0.05, 0.9, (0.5, 0.5, 0.5))
    sh = torch.zeros(1, 4, 3)
    sh[0, 1] = 0.5
    g = Gaussians(g.means, g.scales, g.quats, g.opacities, sh)
    cam = Camera.from_focal(50.0, w=32, h=32)
    above = Pose.look_at(torch.tensor([0.0, -2.0, 0.001]), torch.zeros(3))  # camera at y=-2 (up in OpenCV)
    below = Pose.look_at(torch.tensor([0.0, 2.0, 0.001]), torch.zeros(3))
    c_above = render(g, cam, above).images[:, 16, 16] / render(g, cam, above).alphas[0, 16, 16]
    c_below = render(g, cam, below).images[:, 16, 16] / render(g, cam, below).alphas[0, 16, 16]
    c1 = 0.4886025119029199
    # view dir = mean - camera centre: (0, +2, -eps) from above -> y = +1 -> -C1 * 1 * 0.5 + 0.5
    assert c_above.tolist() == pytest.approx([0.5 - c1 * 0.5] * 3, abs=2e-3)
    assert c_below.tolist() == pytest.approx([0.5 + c1 * 0.5] * 3, abs=2e-3)
    # sh_degree=0 ignores the higher-order coefficients.
    flat = render(g, cam, above, sh_degree=0)
    assert (flat.images[:, 16, 16] / flat.alphas[0, 16, 16]).tolist() == pytest.approx([0.5] * 3, abs=1e-4)


def test_batched_scenes_and_cameras_shapes_match_per_scene_renders():
    torch.manual_seed(0)
    B, N, V = 2, 200, 3
    g = Gaussians(
        means=torch.randn(B, N, 3) * 0.3 + torch.tensor([0, 0, 2.5]),
        scales=torch.rand(B, N, 3) * 0.05 + 0.01,
        quats=torch.randn(B, N, 4),
        opacities=torch.rand(B, N),
        sh=torch.randn(B, N, 4, 3) * 0.3,
    )
    cams = Camera(Camera.from_focal(40.0, w=24, h=20).data.expand(B, V, 6))
    poses = Pose.stack([Pose.orbit([0, 0, 2.5], 2.5, [-10.0, 0.0, 10.0]) for _ in range(B)])
    out = g.render(cams, poses, mode="RGB+D")
    assert out.images.shape == (B, V, 4, 20, 24) and out.alphas.shape == (B, V, 1, 20, 24)
    assert out.info["radii"].shape == (B, V, N) and out.info["means2d"].shape == (B, V, N, 2)
    one = g[1].render(cams[1], poses[1], mode="RGB+D")
    torch.testing.assert_close(out.images[1], one.images)
    single = g[1].render(cams[1, 2], poses[1, 2], mode="RGB+D")
    assert single.images.shape == (4, 20, 24)
    torch.testing.assert_close(single.images, one.images[2])


def test_torch_backend_is_differentiable():
    g = one_gaussian((0.05, 0.0, 2.0), 0.05, 0.5, (0.5, 0.5, 0.5))
    means = g.means.clone().requires_grad_(True)
    g2 = Gaussians(means, g.scales, g.quats, g.opacities, g.sh)
    out = render(g2, CAM, Pose.identity(), mode="RGB")
    # Moving the splat right increases brightness right of its centre.
    out.images[:, 24, 36].sum().backward()
    assert means.grad is not None and float(means.grad[0, 0]) > 0


def test_tile_size_changes_only_the_tails_beyond_the_three_sigma_box():
    """A Gaussian reaches the pixels of the tiles that its 3-sigma box overlaps (as gsplat's tile rasterizer): with
    32-pixel tiles the covered tiles are larger, so faint tails appear beyond the box (alpha < 0.011 x opacity, the
    1/255 cut above 3 sigma); every pixel that 16-pixel tiles reach keeps its exact value."""
    opacity = 0.99
    # centre at pixel (35, 24) with a 2D sigma of 3.96 px: its 3-sigma box (radius 12) ends at x = 47.5, the edge of
    # 16-pixel tile 2 (32-47) but inside 32-pixel tile 1 (32-63), so pixel 48 (13 px away, alpha 0.0045) is a tail
    z = 2.0
    sigma = math.sqrt(3.96**2 - EPS2D) * z / 80.0
    g = one_gaussian(((35.5 - 32.0) * z / 80.0, (24.5 - 24.0) * z / 80.0, z), sigma, opacity, (1.0, 1.0, 1.0))
    a16 = render(g, CAM, Pose.identity(), mode="RGB").alphas[0]
    a32 = render(g, CAM, Pose.identity(), mode="RGB", tile_size=32).alphas[0]
    reached = a16 > 0
    assert torch.equal(a32[reached], a16[reached])
    tails = (a32 > 0) & ~reached
    assert tails.any()  # the larger tiles do let tails through ...
    assert float(a32[tails].max()) < 0.011 * opacity  # ... and only faint ones
    assert float(a32[tails].min()) >= 1.0 / 255.0
    for bad in (0, 33, 16.5):
        with pytest.raises(ValueError, match="tile_size must be a whole number of pixels in \\[1, 32\\]"):
            render(g, CAM, Pose.identity(), tile_size=bad)


def test_render_errors_are_clear():
    g = one_gaussian((0, 0, 2.0), 0.05, 0.5, (0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="unknown mode"):
        render(g, CAM, Pose.identity(), mode="RGBD")
    with pytest.raises(RuntimeError, match="gsplat backend needs CUDA"):
        render(g, CAM, Pose.identity(), backend="gsplat")
    with pytest.raises(ValueError, match="share the same image size"):
        cams = Camera(torch.stack([CAM.data, Camera.from_focal(80.0, w=32, h=48).data]))
        render(g, cams, Pose.identity((2,)))
    with pytest.raises(ValueError, match="sh_degree 2"):
        render(g, CAM, Pose.identity(), sh_degree=2)
    with pytest.raises(ValueError, match="poses shape"):
        render(g, Camera(CAM.data.expand(2, 6)), Pose.identity((3,)))


def test_torch_backend_recomputes_large_blocks_in_backward_with_identical_gradients(monkeypatch):
    """Activation checkpointing of the dense blocks: same images and gradients, a fraction of the saved memory."""
    from zipsplat_ns.rendering import torch_backend

    gen = torch.Generator().manual_seed(0)
    n = 400
    base = Gaussians(
        means=torch.cat([torch.rand(n, 2, generator=gen) * 1.2 - 0.6, 1.5 + torch.rand(n, 1, generator=gen)], -1),
        scales=0.02 + 0.08 * torch.rand(n, 3, generator=gen),
        quats=torch.nn.functional.normalize(torch.randn(n, 4, generator=gen), dim=-1),
        opacities=0.2 + 0.7 * torch.rand(n, generator=gen),
        sh=rgb_to_sh0(torch.rand(n, 1, 3, generator=gen)),
    )
    pose = Pose.identity()

    def run(min_entries: int):
        monkeypatch.setattr(torch_backend, "CHECKPOINT_MIN_ENTRIES", min_entries)
        leaves = [t.clone().requires_grad_(True) for t in (base.means, base.scales, base.opacities, base.sh)]
        g = Gaussians(leaves[0], leaves[1], base.quats, leaves[2], leaves[3])
        saved = [0]

        def pack(t):
            saved[0] += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            img = render(g, CAM, pose, mode="RGB").images
        (img * torch.linspace(0, 1, img.numel()).reshape(img.shape)).sum().backward()
        return img.detach(), [t.grad for t in leaves], saved[0]

    img_plain, grads_plain, saved_plain = run(1 << 62)  # never checkpoint
    img_ckpt, grads_ckpt, saved_ckpt = run(0)  # always checkpoint
    assert float(img_plain.amax()) > 0.2  # the Gaussians are in view
    torch.testing.assert_close(img_ckpt, img_plain, rtol=0, atol=0)
    for a, b in zip(grads_ckpt, grads_plain):
        assert a is not None and float(a.abs().sum()) > 0
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert saved_ckpt < 0.2 * saved_plain, (saved_ckpt, saved_plain)
