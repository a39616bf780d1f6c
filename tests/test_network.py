"""Tests for the ZipSplat network (zipsplat_ns.models): layout vs reference doc §7.3, counts, priors, activations,
RoPE, k-means, inputs, precision modes and state-dict round trips. CPU only, tiny variant where a forward is needed."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from zipsplat_ns.camera import Camera
from zipsplat_ns.models import kmeans as kmeans_lib
from zipsplat_ns.models.kmeans import hard_kmeans, num_selected_tokens, select_tokens
from zipsplat_ns.images import to_square
from zipsplat_ns.models.network import ZipSplat, activate_gaussians, count_gaussians
from zipsplat_ns.models.rope import apply_rope_2d, rope_cos_sin, rope_positions
from zipsplat_ns.pose import Pose

MANIFEST = json.loads((Path(__file__).parent / "data" / "state_dict_manifest.json").read_text())


@pytest.fixture(scope="module")
def tiny() -> ZipSplat:
    torch.manual_seed(0)
    return ZipSplat("tiny").eval()


@pytest.fixture(scope="module")
def images2() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.rand(1, 2, 3, 252, 252, generator=g)


# --------------------------------------------------------------------------------------------------- (1) layout
@pytest.mark.parametrize("variant", ["small", "base", "large", "giant"])
def test_state_dict_matches_reference_manifest(variant: str) -> None:
    with torch.device("meta"):
        model = ZipSplat(variant)
    sd = model.state_dict()
    assert all(t.is_meta for t in sd.values())  # no real allocation (giant would be ~5.8 GB)
    ours = {k: list(v.shape) for k, v in sd.items()}
    ref = MANIFEST[variant]["keys"]
    assert sorted(set(ref) - set(ours)) == []  # missing keys
    assert sorted(set(ours) - set(ref)) == []  # unexpected keys
    mismatched = {k: (ours[k], ref[k]) for k in ref if ours[k] != ref[k]}
    assert mismatched == {}
    doc = MANIFEST[variant]["documented"]
    n_params = sum(math.prod(s) for s in ours.values())
    assert len(ours) == doc["num_tensors"]
    r = doc["params_rounding"]
    assert round(n_params / r) * r == doc["num_params"]
    if variant == "giant":
        assert len(ours) == 907 and n_params == 1_447_701_472
        for prefix, expected in MANIFEST["giant"]["prefix_params"].items():
            got = sum(math.prod(s) for k, s in ours.items() if k.startswith(prefix + "."))
            assert got == expected, prefix


# ------------------------------------------------------------------------------------------------- (2) counts
def test_gaussian_count_arithmetic() -> None:
    # reference doc §2 table
    assert count_gaussians(6, 1.0) == 62_208
    assert count_gaussians(6, 0.25) == 15_552
    assert count_gaussians(2, 0.5) == 10_368
    assert count_gaussians(64, 1.0) == 663_552
    assert count_gaussians(6, 0.05) == 97 * 32
    assert num_selected_tokens(1944, 0.5) == 972


def test_counts_and_kmeans_skipped_at_c1(tiny, images2, monkeypatch) -> None:
    def boom(*a, **k):
        raise AssertionError("k-means must not run at compression=1")

    monkeypatch.setattr(kmeans_lib, "hard_kmeans", boom)
    with torch.inference_mode():
        out = tiny.predict(images2)
    n = 2 * 324 * 32
    assert out.means.shape == (1, n, 3) and out.scales.shape == (1, n, 3)
    assert out.quats.shape == (1, n, 4) and out.opacities.shape == (1, n) and out.sh.shape == (1, n, 4, 3)
    assert torch.equal(out.token_indices[0], torch.arange(648))


def test_counts_with_compression_calls_kmeans(tiny, images2, monkeypatch) -> None:
    calls = []
    real = kmeans_lib.hard_kmeans

    def spy(x, k, *a, **kw):
        calls.append((tuple(x.shape), k))
        return real(x, k, *a, **kw)

    monkeypatch.setattr(kmeans_lib, "hard_kmeans", spy)
    with torch.inference_mode():
        out = tiny.predict(images2, compression=0.25)
    assert calls == [((1, 648, 192), 162)]
    assert out.means.shape == (1, 162 * 32, 3)
    assert out.token_indices.shape == (1, 162)
    assert int(out.token_indices.min()) >= 0 and int(out.token_indices.max()) < 648


def test_counts_six_views() -> None:
    torch.manual_seed(0)
    model = ZipSplat("tiny", depth=4, alt_start=2, out_layers=(1, 2, 3)).eval()
    x = torch.rand(6, 3, 252, 252)  # (V, 3, H, W) -> B = 1
    with torch.inference_mode():
        assert model.predict(x).means.shape == (1, 62_208, 3)
        assert model.predict(x, compression=0.25).means.shape == (1, 15_552, 3)


# ------------------------------------------------------------------------------------------------- (3) priors
def _priors(B: int, V: int):
    cams = Camera.from_focal(torch.full((B, V), 200.0), w=252, h=252)
    R = torch.eye(3).expand(B, V, 3, 3).clone()
    t = torch.zeros(B, V, 3)
    t[..., 0] = torch.arange(V, dtype=torch.float32) * 0.3
    return cams, Pose.from_Rt(R, t)


def test_priors_path(tiny, images2) -> None:
    cams, poses = _priors(1, 2)
    with torch.inference_mode():
        base = tiny.predict(images2)
        pri = tiny.predict(images2, cams, poses, use_priors=True)
    assert pri.means.shape == base.means.shape
    assert torch.isfinite(pri.raw).all()
    assert not torch.allclose(pri.raw, base.raw)  # the camera tokens really change the result


def test_priors_ignored_without_flag(tiny, images2) -> None:
    cams, poses = _priors(1, 2)
    with torch.inference_mode():
        base = tiny.predict(images2)
        with pytest.warns(UserWarning, match="use_priors"):
            ign = tiny.predict(images2, cams, poses)
    assert torch.equal(ign.raw, base.raw)
    with pytest.raises(ValueError, match="use_priors"):
        tiny.predict(images2, use_priors=True)
    with pytest.raises(ValueError, match="batch shape"):
        tiny.predict(images2, *_priors(1, 3), use_priors=True)


def test_pose_encoding_values() -> None:
    from zipsplat_ns.models.backbone import pose_encoding

    # c2w: rotation of 90 deg about z, centre (1, 2, 3); w2c = (R^T, -R^T c)
    Rz = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    pose = Pose.from_Rt(Rz, torch.tensor([1.0, 2.0, 3.0]))
    cam = Camera.from_focal(100.0, 50.0, w=200, h=100)
    enc = pose_encoding(cam, pose)
    t_w2c = -(Rz.T @ torch.tensor([1.0, 2.0, 3.0]))
    s = math.sqrt(0.5)
    quat_xyzw = torch.tensor([0.0, 0.0, -s, s])  # w2c rotation = -90 deg about z, w >= 0
    fov = torch.tensor([2 * math.atan(100 / 100), 2 * math.atan(200 / 200)])  # vfov, hfov
    torch.testing.assert_close(enc, torch.cat([t_w2c, quat_xyzw, fov]), atol=1e-6, rtol=0)


# -------------------------------------------------------------------------------------------- (4) activations
def test_head_template_gives_known_values(images2) -> None:
    torch.manual_seed(0)
    model = ZipSplat("tiny").eval()
    lin = model.gaussian_head.gaussian_head[1]
    w0 = lin.weight.detach().clone()
    # coupled init: all 32 slices identical, documented template bias
    slices = w0.reshape(32, 23, -1)
    assert torch.equal(slices, slices[:1].expand_as(slices))
    assert 0.015 < float(slices[0].std()) < 0.025
    b = lin.bias.detach().reshape(32, 23)
    expected_b = torch.zeros(23)
    expected_b[2], expected_b[3:6], expected_b[10] = 0.5, 0.5, -1.5
    assert torch.equal(b, expected_b.expand(32, 23))
    with torch.no_grad():
        lin.weight.zero_()
    with torch.inference_mode():
        out = model.predict(images2[:, :1])
    n = 324 * 32
    torch.testing.assert_close(out.means, torch.tensor([0.0, 0.0, math.expm1(0.5)]).expand(1, n, 3))
    torch.testing.assert_close(out.scales, torch.full((1, n, 3), math.log1p(math.exp(-3.5))))
    torch.testing.assert_close(out.opacities, torch.full((1, n), 1 / (1 + math.exp(1.5))))
    assert torch.equal(out.sh, torch.zeros(1, n, 4, 3))


def test_activation_functions() -> None:
    raw = torch.zeros(1, 2, 23)
    raw[0, 0, 0:3] = torch.tensor([10.0, -10.0, -1.0])
    raw[0, 0, 3:6] = torch.tensor([100.0, -100.0, 4.0])
    raw[0, 0, 6:10] = torch.tensor([0.0, 3.0, 0.0, 4.0])
    raw[0, 0, 10] = 2.0
    raw[0, 0, 11:23] = torch.arange(12.0)
    act = activate_gaussians(raw)
    torch.testing.assert_close(act["means"][0, 0], torch.tensor([math.expm1(5), -math.expm1(5), -math.expm1(1)]))
    torch.testing.assert_close(act["scales"][0, 0], torch.tensor([15.0, 1e-6, math.log(2.0)]))
    torch.testing.assert_close(act["quats"][0, 0], torch.tensor([0.0, 0.6, 0.0, 0.8]))
    torch.testing.assert_close(act["opacities"][0, 0], torch.sigmoid(torch.tensor(2.0)))
    # coefficient-major: sh[k, c] = raw[11 + 3k + c]
    assert act["sh"][0, 0, 2, 1] == 7.0 and act["sh"][0, 0, 3, 0] == 9.0
    assert act["sh"].shape == (1, 2, 4, 3)


def test_gaussian_index_layout(tiny, images2) -> None:
    # Gaussian g of token t = channels [23 g, 23 g + 23) of token t's head output -> index t * 32 + g
    with torch.inference_mode():
        out = tiny.predict(images2[:, :1])
        head_in_raw = out.raw.reshape(1, 324, 32 * 23)
    t, g = 17, 5
    torch.testing.assert_close(out.raw[0, t * 32 + g], head_in_raw[0, t, 23 * g : 23 * g + 23])


# ------------------------------------------------------------------------------------------------ (5) RoPE
def test_rope_positions() -> None:
    loc = rope_positions(2, 3, global_attn=False)
    assert loc.tolist() == [[0, 0], [1, 1], [1, 2], [1, 3], [2, 1], [2, 2], [2, 3]]
    glob = rope_positions(2, 2, global_attn=True, num_views=2)
    assert glob.tolist() == [[0, 0], [1, 1], [1, 1], [1, 1], [1, 1]] * 2


def test_rope_known_values() -> None:
    # head_dim 8: each axis half has 4 dims, inv_freq = 1 / 100 ** (arange(0, 4, 2) / 4) = [1, 0.1]
    pos = torch.tensor([[2, 3]])
    cos, sin = rope_cos_sin(pos, 8)
    ang = torch.tensor([2.0, 0.2, 2.0, 0.2, 3.0, 0.3, 3.0, 0.3])
    torch.testing.assert_close(cos[0], ang.cos())
    torch.testing.assert_close(sin[0], ang.sin())
    x = torch.arange(1.0, 9.0).reshape(1, 1, 1, 8)
    out = apply_rope_2d(x, cos, sin)[0, 0, 0]

    def rot(a, b, th):  # 2D rotation of the pair (a, b) by th
        return a * math.cos(th) - b * math.sin(th), b * math.cos(th) + a * math.sin(th)

    y0, y2 = rot(1.0, 3.0, 2.0)  # pairs (i, i + 2) inside the y half
    y1, y3 = rot(2.0, 4.0, 0.2)
    x0, x2 = rot(5.0, 7.0, 3.0)
    x1, x3 = rot(6.0, 8.0, 0.3)
    torch.testing.assert_close(out, torch.tensor([y0, y1, y2, y3, x0, x1, x2, x3]))
    # 64-dim head: the documented frequencies 1 / 100 ** (arange(0, 32, 2) / 32)
    c64, _ = rope_cos_sin(torch.tensor([[1, 0]]), 64)
    torch.testing.assert_close(c64[0, :16], torch.cos(1.0 / 100 ** (torch.arange(0, 32, 2) / 32)))
    assert torch.all(c64[0, 32:] == 1)


def test_rope_relative() -> None:
    # <rope(q, p), rope(k, r)> depends only on p - r
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 1, 1, 1, 64, generator=g)
    pos = torch.tensor([[3, 5], [1, 2], [7, 9], [5, 6]])
    c, s = rope_cos_sin(pos, 64)
    rq = apply_rope_2d(q.expand(1, 1, 4, 64), c, s)[0, 0]
    rk = apply_rope_2d(k.expand(1, 1, 4, 64), c, s)[0, 0]
    torch.testing.assert_close((rq[0] * rk[1]).sum(), (rq[2] * rk[3]).sum(), rtol=1e-4, atol=1e-4)
    assert not torch.allclose((rq[0] * rk[1]).sum(), (rq[0] * rk[3]).sum())


# ---------------------------------------------------------------------------------------------- (5) k-means
def test_kmeans_hand_made_clusters() -> None:
    # three 1-D clusters; uniform init (indices 0, 4, 8) picks one point of each
    vals = [-1.0, 0.0, 1.2, 10.0, 10.5, 11.4, 20.0, 21.0, 22.3]
    x = torch.tensor(vals)[None, :, None].expand(1, 9, 2).contiguous()
    res = hard_kmeans(x, 3)
    assert res.assignments.tolist() == [[0, 0, 0, 1, 1, 1, 2, 2, 2]]
    torch.testing.assert_close(res.centroids[0, :, 0], torch.tensor([0.2 / 3, 31.9 / 3, 63.3 / 3]))
    assert res.nearest_idx.tolist() == [[1, 4, 7]]  # real token nearest to each centroid


def test_kmeans_empty_cluster_zero_centroid() -> None:
    # N=4, K=3: init = linspace(0, 3, 3).round() = [0, 2, 3]; tokens 0 and 2 coincide -> cluster 1 ends up empty
    x = torch.tensor([[[1.0, 1.0], [10.0, 10.0], [1.0, 1.0], [10.0, 10.0]]])
    res = hard_kmeans(x, 3)
    assert res.assignments.tolist() == [[0, 2, 0, 2]]
    assert torch.equal(res.centroids[0, 1], torch.zeros(2))
    assert res.nearest_idx.tolist() == [[0, 0, 1]]


def _assert_same_kmeans(res, ref, x) -> None:
    """Same k-means result up to floating-point ties: ``cdist`` takes its matmul path for more than 25 rows, so
    a chunk's shape changes the last bits of its distances, and an (almost) tied nearest token may flip; the
    centroids must agree and every pick must be a nearest token of its reference centroid."""
    assert torch.allclose(res.centroids, ref.centroids, atol=1e-5)
    xd, cd = x.double(), ref.centroids.double()
    pick = xd.gather(1, res.nearest_idx[..., None].expand(-1, -1, x.shape[-1]))
    picked = torch.linalg.vector_norm(pick - cd, dim=-1)
    best = torch.linalg.vector_norm(cd[:, :, None] - xd[:, None], dim=-1).min(-1).values  # no cdist: tests patch it
    assert torch.all(picked - best <= 1e-5 * (1 + best)), (picked - best).max()


def test_kmeans_fp32_under_autocast(monkeypatch) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 300, 16, generator=g)
    ref = hard_kmeans(x, 40)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ac = hard_kmeans(x, 40)
    assert ac.centroids.dtype == torch.float32
    _assert_same_kmeans(ac, ref, x)
    # chunking does not change the result (up to ties): 7-row chunks (no byte budget) and the budget's chunk sizes
    from zipsplat_ns.models import kmeans as kmeans_mod

    calls = []
    real_cdist = torch.cdist
    monkeypatch.setattr(torch, "cdist", lambda a, b: calls.append(a.shape[1]) or real_cdist(a, b))
    monkeypatch.setattr(kmeans_mod, "CHUNK_BYTES", 0)
    _assert_same_kmeans(hard_kmeans(x, 40, chunk_size=7), ref, x)
    assert max(calls) == 7 and len(calls) == 5 * 43 + 6  # 5 iterations x ceil(300 / 7) chunks, then ceil(40 / 7)
    calls.clear()
    monkeypatch.setattr(kmeans_mod, "CHUNK_BYTES", 4 * 2 * 40 * 100)  # 100 rows of the (2, rows, 40) distances
    _assert_same_kmeans(hard_kmeans(x, 40, chunk_size=7), ref, x)
    assert calls[:3] == [100, 100, 100]
    calls.clear()
    monkeypatch.undo()
    monkeypatch.setattr(torch, "cdist", lambda a, b: calls.append(a.shape[1]) or real_cdist(a, b))
    _assert_same_kmeans(hard_kmeans(x, 40), ref, x)
    assert calls == [300] * 5 + [40]  # default budget: one distance matrix per iteration
    assert torch.equal(select_tokens(x, 1.0), torch.arange(300).expand(2, 300))
    assert select_tokens(x, 0.1).shape == (2, 30)


# ---------------------------------------------------------------------------------------------- backbone taps
def test_backbone_taps_local_global_and_final_norm(tiny, images2) -> None:
    vit = tiny.backbone.backbone  # tiny: depth 8, alt_start 2, taps (3, 5, 7) -> each = cat(block i-1, norm(block i))
    outs = {}
    hooks = [b.register_forward_hook(lambda m, a, o, i=i: outs.__setitem__(i, o)) for i, b in enumerate(vit.blocks)]
    try:
        with torch.inference_mode():
            feats = vit(images2)
    finally:
        for h in hooks:
            h.remove()
    D = 192
    assert [f.shape for f in feats] == [(1, 2, 324, 2 * D)] * 3
    local = outs[2].reshape(1, 2, 325, D)  # local block: sequences are per view
    glob = outs[3].reshape(1, 2, 325, D)  # global block: one sequence of 2 * 325
    assert outs[2].shape == (2, 325, D) and outs[3].shape == (1, 650, D)
    torch.testing.assert_close(feats[0][..., :D], local[:, :, 1:])
    with torch.inference_mode():
        torch.testing.assert_close(feats[0][..., D:], vit.norm(glob)[:, :, 1:])
    # camera token bank written into slot 0 at alt_start: ref for view 0, src for view 1
    pre = {}
    h = vit.blocks[2].register_forward_pre_hook(lambda m, a: pre.__setitem__("x", a[0]))
    with torch.inference_mode():
        vit(images2)
    h.remove()
    torch.testing.assert_close(pre["x"][0, 0], vit.camera_token[0, 0])
    torch.testing.assert_close(pre["x"][1, 0], vit.camera_token[0, 1])


def test_pos_embed_uses_scale_factor(tiny) -> None:
    vit = tiny.backbone.backbone
    pe = vit.interpolate_pos_embed(18, 18, torch.float32)
    assert pe.shape == (1, 325, 192)
    torch.testing.assert_close(pe[:, 0], vit.pos_embed[:, 0])
    grid = vit.pos_embed[:, 1:].reshape(1, 37, 37, -1).permute(0, 3, 1, 2)
    by_scale = F.interpolate(grid, scale_factor=18.1 / 37, mode="bicubic", antialias=False)
    by_size = F.interpolate(grid, size=(18, 18), mode="bicubic", antialias=False)
    torch.testing.assert_close(pe[0, 1:], by_scale[0].flatten(1).T)
    assert not torch.allclose(by_scale, by_size)  # the choice matters


# ------------------------------------------------------------------------------------------------ (6) inputs
def test_list_input_mixed_sizes(tiny) -> None:
    g = torch.Generator().manual_seed(2)
    imgs = [torch.rand(3, 300, 400, generator=g), torch.rand(3, 252, 252, generator=g), torch.rand(3, 500, 260, generator=g)]
    with torch.inference_mode():
        out = tiny.predict(imgs)
    assert out.means.shape == (1, 3 * 324 * 32, 3)
    # cameras follow the crop + resize: (400 x 300, f 300, c (200, 150)) -> crop 100 px in x -> scale 252 / 300
    cams = Camera.from_focal(torch.tensor([300.0, 252.0, 400.0]), w=torch.tensor([400.0, 252.0, 260.0]),
                             h=torch.tensor([300.0, 252.0, 500.0]))  # fmt: skip
    _, c2, _ = tiny._prepare_inputs(imgs, cams, Pose.identity((3,)), True, 1.0)
    k = 252 / 300
    torch.testing.assert_close(c2.data[0, 0], torch.tensor([252.0, 252.0, 300 * k, 300 * k, 150 * k, 150 * k]))
    torch.testing.assert_close(c2.data[0, 1], torch.tensor([252.0, 252.0, 252.0, 252.0, 126.0, 126.0]))
    k3 = 252 / 260
    torch.testing.assert_close(c2.data[0, 2], torch.tensor([252.0, 252.0, 400 * k3, 400 * k3, 130 * k3, 130 * k3]))


def test_tensor_input_of_any_size_is_cropped_and_resized_like_a_list(tiny) -> None:
    """(B, V, 3, H, W) tensors of another size go through the same centre crop + resize as lists, intrinsics too."""
    g = torch.Generator().manual_seed(4)
    x = torch.rand(1, 2, 3, 300, 400, generator=g)
    cams = Camera.from_focal(torch.tensor([[300.0, 320.0]]), w=torch.tensor([[400.0, 400.0]]),
                             h=torch.tensor([[300.0, 300.0]]))  # fmt: skip
    poses = Pose.identity((1, 2))
    imgs_t, cams_t, _ = tiny._prepare_inputs(x, cams, poses, True, 1.0)
    imgs_l, cams_l, _ = tiny._prepare_inputs(list(x[0]), cams[0], poses[0], True, 1.0)
    assert imgs_t.shape == (1, 2, 3, 252, 252) and torch.equal(imgs_t, imgs_l)
    torch.testing.assert_close(cams_t.data, cams_l.data)
    k = 252 / 300
    torch.testing.assert_close(cams_t.data[0, 0], torch.tensor([252.0, 252.0, 300 * k, 300 * k, 150 * k, 150 * k]))


def test_to_square_crop_offset_and_quantisation() -> None:
    # 252 x 255 image: side 252, left offset (255 - 252) // 2 = 1; no resize, so the crop comes back unquantised
    img = torch.linspace(0, 1, 255).expand(3, 252, 255).contiguous()
    sq = to_square(img)[0]
    assert sq.shape == (3, 252, 252)
    assert torch.equal(sq, img[:, :, 1:253])
    big = to_square(torch.full((3, 400, 600), 0.5))[0]  # LANCZOS of a constant image stays constant
    # through uint8 by truncation, as the reference: 0.5 * 255 = 127.5 -> 127 (rounding would give 128)
    torch.testing.assert_close(big, torch.full((3, 252, 252), 127 / 255), atol=1e-6, rtol=0)
    # 8-bit sources survive the trip exactly: every level of a constant image comes back
    levels = torch.arange(256, dtype=torch.float32) / 255.0
    out = torch.stack([to_square(torch.full((3, 300, 300), float(v)))[0][0, 0, 0] for v in levels])
    assert torch.equal((out * 255).round(), torch.arange(256, dtype=torch.float32))


def test_input_errors(tiny) -> None:
    with pytest.raises(ValueError, match="too small"):
        tiny.predict(torch.rand(1, 2, 3, 10, 224))
    with pytest.raises(ValueError, match="expected"):
        tiny.predict(torch.rand(3, 252, 252))
    with pytest.raises(ValueError, match="float"):
        tiny.predict(torch.zeros(1, 1, 3, 252, 252, dtype=torch.uint8))
    for c in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="compression"):
            tiny.predict(torch.rand(1, 1, 3, 252, 252), compression=c)
    with pytest.raises(ValueError, match="variant"):
        ZipSplat("huge")
    with pytest.raises(TypeError, match="unknown ZipSplat option"):
        ZipSplat("tiny", precison="bf16")


def test_forward_returns_gaussians(tiny, images2) -> None:
    from zipsplat_ns.gaussians import Gaussians

    with torch.inference_mode():
        g = tiny(images2, compression=0.5)
        p = tiny.predict(images2, compression=0.5)
    assert isinstance(g, Gaussians)
    assert torch.equal(g.means, p.means) and torch.equal(g.opacities, p.opacities)
    assert g.means.shape == (1, 324 * 32, 3)


# ------------------------------------------------------------------------------------------------- (7) bf16
def test_bf16_mode_close_to_fp32(tiny, images2) -> None:
    fast = ZipSplat("tiny", precision="bf16").eval()
    fast.load_state_dict(tiny.state_dict())
    vit = fast.backbone.backbone
    assert vit.blocks[0].attn.qkv.weight.dtype == torch.float16  # fp16_blocks: depth // 4 = 2 leading blocks
    assert vit.blocks[2].attn.qkv.weight.dtype == torch.bfloat16
    assert fast.self_attention[0].mlp.fc1.weight.dtype == torch.bfloat16
    assert fast.gaussian_head.gaussian_head[1].weight.dtype == torch.float32
    assert fast.color_cross_attention.attn.q_proj.weight.dtype == torch.float32
    with torch.inference_mode():
        ref = tiny.predict(images2)
        out = fast.predict(images2)
    assert out.means.dtype == torch.float32
    rel = float((out.means - ref.means).norm() / ref.means.norm())
    assert rel < 3e-3, rel  # measured 1.07e-3 (tiny, V=2; 1.8e-3 when the residual stream was bf16 too)
    assert not torch.equal(out.means, ref.means)  # it really ran in reduced precision


def test_bf16_mode_fp32_stream_and_norms(tiny, images2) -> None:
    """bf16 mode: only matmul weights are bf16 (LayerNorm / LayerScale / tokens stay fp32); same numerics as autocast;
    state-dict keys unchanged; switching back to fp32 restores the exact weights (also after a load in bf16).
    ``fp16_blocks=0``: plain bf16 storage (the fp16 leading blocks have their own test)."""
    import copy

    from torch import nn

    fast = copy.deepcopy(tiny).set_precision("bf16", fp16_blocks=0)
    assert list(fast.state_dict()) == list(tiny.state_dict())
    lowp = set(fast.matmul_parameters())
    assert "downscale.0.weight" in lowp and "backbone.backbone.blocks.0.attn.qkv.weight" in lowp
    assert not any(".patch_embed." in n for n in lowp)  # the patch embedding stays fp32 (see ZipSplatConfig)
    for name, p in fast.named_parameters():
        keep_fp32 = name.startswith(("gaussian_head.", "color_")) or name not in lowp
        assert p.dtype == (torch.float32 if keep_fp32 else torch.bfloat16), name
    for name, mod in fast.named_modules():
        if isinstance(mod, nn.LayerNorm):
            assert mod.weight.dtype == torch.float32 and mod.bias.dtype == torch.float32, name
    vit = fast.backbone.backbone
    assert vit.blocks[-1].attn.q_norm.weight.dtype == torch.float32 and vit.norm.weight.dtype == torch.float32
    assert vit.blocks[0].ls1.gamma.dtype == torch.float32 and vit.cls_token.dtype == torch.float32
    assert vit.blocks[0].mlp.fc2.weight.dtype == torch.bfloat16 and vit.blocks[0].attn.proj.bias.dtype == torch.bfloat16
    assert fast.cross_attention[0].attn.kv_proj.weight.dtype == torch.bfloat16
    # the residual stream between blocks is fp32
    assert vit.patch_embed.proj.weight.dtype == torch.float32
    seen = []
    h = vit.blocks[3].register_forward_hook(lambda m, a, o: seen.append((a[0].dtype, o.dtype)))
    amp = copy.deepcopy(tiny).set_precision("amp-bf16")
    pe_forward = amp.backbone.backbone.patch_embed.forward

    def fp32_patch_embed(x):  # autocast, except the patch embedding: the bf16 mode keeps that one in fp32
        with torch.autocast("cpu", enabled=False):
            return pe_forward(x.float())

    amp.backbone.backbone.patch_embed.forward = fp32_patch_embed
    with torch.inference_mode():
        ref = tiny.predict(images2).means
        out = fast.predict(images2).means
        out_amp = amp.predict(images2).means
    h.remove()
    assert seen == [(torch.float32, torch.float32)]
    # same numerics as autocast with an fp32 patch embedding (CPU: measured bit-identical); both ~1e-3 from fp32
    assert float((out - out_amp).norm() / ref.norm()) < 1e-4
    # the camera-prior encoder (bf16 matmuls, fp32 stream) runs too
    cams, poses = _priors(1, 2)
    with torch.inference_mode():
        pri_ref = tiny.predict(images2, cams, poses, use_priors=True).means
        pri = fast.predict(images2, cams, poses, use_priors=True).means
    assert float((pri - pri_ref).norm() / pri_ref.norm()) < 3e-3
    # exact fp32 restore, also after loading a (fp32) state dict while in bf16
    back = copy.deepcopy(fast).set_precision("fp32")
    for k, v in tiny.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    torch.manual_seed(7)
    other = ZipSplat("tiny", precision="bf16", fp16_blocks=0).eval()
    other.load_state_dict(tiny.state_dict(), strict=True)
    other.set_precision("fp32")
    with torch.inference_mode():
        assert torch.equal(other.predict(images2).means, ref)


def test_tf32_matmuls_scope_restores_the_setting() -> None:
    """The fast modes' TF32 scope (colour branch and head on CUDA) sets "high" inside and restores the caller's
    setting afterwards, also after an error; disabled, it changes nothing."""
    from zipsplat_ns.models.network import _tf32_matmuls

    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        with _tf32_matmuls(True):
            assert torch.get_float32_matmul_precision() == "high"
        assert torch.get_float32_matmul_precision() == "highest"
        with pytest.raises(RuntimeError, match="boom"), _tf32_matmuls(True):
            raise RuntimeError("boom")
        assert torch.get_float32_matmul_precision() == "highest"
        with _tf32_matmuls(False):
            assert torch.get_float32_matmul_precision() == "highest"
    finally:
        torch.set_float32_matmul_precision(before)


def test_fp16_mode_stores_fp16_and_is_closer_to_fp32_than_bf16(tiny, images2) -> None:
    """fp16 mode: the bf16 mode's storage rule with fp16 (10 mantissa bits): a smaller error than bf16, weights cast
    from the fp32 originals (also when switching from bf16), exact fp32 restore, and overflow is an error."""
    import copy

    half = copy.deepcopy(tiny).set_precision("bf16").set_precision("fp16")
    for name, p in half.matmul_parameters().items():
        assert p.dtype == torch.float16, name
        assert torch.equal(p, tiny.state_dict()[name].to(torch.float16)), name  # not via bf16's rounding
    assert half.gaussian_head.gaussian_head[1].weight.dtype == torch.float32
    assert list(half.state_dict()) == list(tiny.state_dict())
    bf = copy.deepcopy(tiny).set_precision("bf16", fp16_blocks=0)
    with torch.inference_mode():
        ref = tiny.predict(images2).means
        e16 = float((half.predict(images2).means - ref).norm() / ref.norm())
        ebf = float((bf.predict(images2).means - ref).norm() / ref.norm())
    assert 0 < e16 < ebf / 3, (e16, ebf)  # measured: 1.1e-4 against 1.1e-3 (tiny, V=2, CPU)
    back = copy.deepcopy(half).set_precision("fp32")
    for k, v in tiny.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    assert ZipSplat("tiny", precision="fp16").downscale[0].weight.dtype == torch.float16
    with torch.no_grad():  # activations beyond fp16's range: a clear error, not silent inf / NaN Gaussians
        half.downscale[0].weight.normal_(0.0, 1000.0)
        half.downscale[0].bias.fill_(65000.0)
    with torch.inference_mode(), pytest.raises(FloatingPointError, match="precision='bf16'"):
        half.predict(images2)
    with pytest.raises(ValueError, match="precision must be one of"):
        tiny.set_precision("fp8")


# ------------------------------------------------------------------------------------------ (8) strict round trip
def test_state_dict_round_trip(tiny, images2) -> None:
    torch.manual_seed(123)
    other = ZipSplat("tiny").eval()
    with torch.inference_mode():
        before = other.predict(images2).raw
        other.load_state_dict(tiny.state_dict(), strict=True)
        after = other.predict(images2).raw
        ref = tiny.predict(images2).raw
    assert not torch.allclose(before, ref)
    assert torch.equal(after, ref)
    sd = dict(tiny.state_dict())
    sd.pop("backbone.backbone.camera_token")
    with pytest.raises(RuntimeError, match="camera_token"):
        other.load_state_dict(sd, strict=True)


def test_grad_checkpointing_same_gradients(images2) -> None:
    torch.manual_seed(0)
    a = ZipSplat("tiny", depth=4, alt_start=2, out_layers=(1, 2, 3))
    torch.manual_seed(0)
    b = ZipSplat("tiny", depth=4, alt_start=2, out_layers=(1, 2, 3), grad_checkpointing=True)
    x = images2[:, :1]
    a.predict(x).means.square().mean().backward()
    b.predict(x).means.square().mean().backward()
    ga = a.backbone.backbone.blocks[0].attn.qkv.weight.grad
    gb = b.backbone.backbone.blocks[0].attn.qkv.weight.grad
    assert ga is not None and ga.abs().sum() > 0
    torch.testing.assert_close(ga, gb)


def test_swiglu_ffn() -> None:
    from zipsplat_ns.models.layers import SwiGLUFFN, swiglu_hidden_dim

    assert swiglu_hidden_dim(1536) == 4096  # giant: w12 (8192, 1536), w3 (1536, 4096)
    ffn = SwiGLUFFN(16, use_xformers=False)
    h = ffn.hidden
    assert h == (int(64 * 2 / 3) + 7) // 8 * 8 == 48
    x = torch.randn(3, 16)
    x12 = x @ ffn.w12.weight.T + ffn.w12.bias
    gate = x12[:, :h] * torch.sigmoid(x12[:, :h])  # silu(x1) * x2
    expected = (gate * x12[:, h:]) @ ffn.w3.weight.T + ffn.w3.bias
    torch.testing.assert_close(ffn(x), expected)
    # a SwiGLU backbone (like giant) runs end to end
    model = ZipSplat("tiny", ffn="swiglu", depth=4, alt_start=2, out_layers=(1, 2, 3)).eval()
    assert "backbone.backbone.blocks.0.mlp.w12.weight" in model.state_dict()
    with torch.inference_mode():
        assert model.predict(torch.rand(1, 1, 3, 252, 252)).means.shape == (1, 324 * 32, 3)


def test_compiled_network_trains_like_the_eager_one() -> None:
    """``ZipSplat.compile(dynamic=None)`` (what ``compile=True`` training uses): the same Gaussians and the same
    gradients as eager, for two batch layouts (the second one compiles with dynamic shapes). Inductor on the CPU."""
    import copy

    torch.manual_seed(0)
    eager = ZipSplat("tiny", image_size=28)
    compiled = copy.deepcopy(eager).compile(dynamic=None)
    for B, V in ((2, 3), (1, 5)):
        x = torch.rand(B, V, 3, 28, 28)
        res = []
        for net in (eager, compiled):
            net.zero_grad(set_to_none=True)
            out = net.predict(x, compression=1.0)  # c = 1: no k-means, whose discrete choices could flip
            (out.means.square().sum() + out.raw.sum()).backward()
            res.append((out.means.detach(), {n: p.grad for n, p in net.named_parameters() if p.grad is not None}))
        (m0, g0), (m1, g1) = res
        assert torch.allclose(m0, m1, atol=1e-5), (m0 - m1).abs().max()
        assert g0.keys() == g1.keys()
        for name in g0:
            if name.endswith("k_norm.bias"):  # its exact gradient is 0 (softmax ignores a per-key bias): noise only
                continue
            scale = g0[name].abs().max().clamp_min(1e-6)
            assert ((g0[name] - g1[name]).abs().max() / scale) < 1e-3, name


def test_precision_switch_after_compile_recompiles() -> None:
    """``set_precision`` on a compiled network gives the eager network's output in every new mode (on the H200 a
    bf16-compiled block reused its graph with fp16 weights and failed; ``_cast_trunk`` now drops compiled graphs)."""
    import copy

    torch.manual_seed(0)
    eager = ZipSplat("tiny", image_size=28, depth=2, alt_start=1, out_layers=(0, 1)).eval().set_precision("bf16")
    compiled = copy.deepcopy(eager).compile(dynamic=False)
    x = torch.rand(1, 2, 3, 28, 28)
    with torch.no_grad():
        assert torch.allclose(compiled.predict(x).means, eager.predict(x).means, rtol=1e-2, atol=1e-3)
        out = compiled.set_precision("fp16").predict(x).means  # the H200 failure: bf16 graphs, fp16 weights
        ref = eager.set_precision("fp16").predict(x).means
    assert torch.allclose(out, ref, rtol=1e-2, atol=1e-3), (out - ref).abs().max()
    assert compiled.downscale[0].weight.dtype == torch.float16


def test_fusion_sdpa_no_cudnn_restricts_only_the_fusion_attention(monkeypatch) -> None:
    """``fusion_sdpa="no-cudnn"`` turns the cuDNN SDPA backend off inside the fusion stage's attention (and only
    there), eager and compiled, and computes the same Gaussians."""
    import copy

    import zipsplat_ns.models.layers as layers_mod

    torch.manual_seed(0)
    ref = ZipSplat("tiny", image_size=28)
    net = copy.deepcopy(ref).set_fusion_sdpa("no-cudnn")
    seen = []
    orig = layers_mod.F.scaled_dot_product_attention

    def spy(q, k, v, *a, **kw):
        seen.append(torch.backends.cuda.cudnn_sdp_enabled())
        return orig(q, k, v, *a, **kw)

    monkeypatch.setattr(layers_mod.F, "scaled_dot_product_attention", spy)
    x = torch.rand(1, 3, 3, 28, 28)
    with torch.no_grad():
        out = net.predict(x, compression=0.5)
    n_backbone = len(net.backbone.backbone.blocks)
    assert seen[:n_backbone] == [True] * n_backbone  # backbone: PyTorch's choice
    assert seen[n_backbone:] == [False] * 7  # 3 cross + 3 self + colour cross-attention: cuDNN off
    assert torch.backends.cuda.cudnn_sdp_enabled()  # restored afterwards
    monkeypatch.setattr(layers_mod.F, "scaled_dot_product_attention", orig)
    with torch.no_grad():
        expected = ref.predict(x, compression=0.5)
        # compiled: at c = 1 (no k-means, whose discrete choices compiled rounding could flip)
        expected_c1 = ref.predict(x, compression=1.0)
        compiled = copy.deepcopy(net).compile(dynamic=None).predict(x, compression=1.0)
    assert torch.equal(out.token_indices, expected.token_indices)
    assert torch.allclose(out.means, expected.means, atol=1e-5)
    assert torch.allclose(compiled.means, expected_c1.means, atol=1e-5)
    with pytest.raises(ValueError, match="fusion_sdpa"):
        net.set_fusion_sdpa("cudnn-only")
    # backbone_sdpa: the same switch for the ViT and the camera encoder, leaving the fusion stage as it was
    both = ZipSplat("tiny", image_size=28, backbone_sdpa="no-cudnn")
    vit_and_cam = (*both.backbone.backbone.blocks, *both.backbone.cam_enc.trunk)
    assert all(b.attn.sdpa_backends == layers_mod.NO_CUDNN_BACKENDS for b in vit_and_cam)
    assert all(b.attn.sdpa_backends is None for b in (*both.cross_attention, *both.self_attention))
    with pytest.raises(ValueError, match="backbone_sdpa"):
        both.set_backbone_sdpa("off")


def test_fp32_blocks_keep_leading_vit_blocks_fp32(tiny, images2) -> None:
    """``fp32_blocks=k`` in the bf16 mode (plain bf16 storage, ``fp16_blocks=0``): the first k ViT blocks keep fp32
    Linear weights (attention in bf16), the rest are bf16; all ViT blocks in fp32 is closer to fp32 than none;
    changing k restores the exact fp32 weights."""
    import copy

    with torch.inference_mode():
        ref = tiny.predict(images2).means
    errs = {}
    for k in (0, 2, tiny.spec.depth):
        fast = copy.deepcopy(tiny).set_precision("bf16", fp32_blocks=k, fp16_blocks=0)
        blocks = fast.backbone.backbone.blocks
        assert fast.num_fp32_blocks() == k
        for i, b in enumerate(blocks):
            assert b.attn.qkv.weight.dtype == (torch.float32 if i < k else torch.bfloat16), (k, i)
            assert b.attn.sdpa_dtype == (torch.bfloat16 if i < k else None), (k, i)
        assert fast.downscale[0].weight.dtype == torch.bfloat16  # only ViT blocks are affected
        with torch.inference_mode():
            errs[k] = float((fast.predict(images2).means - ref).norm() / ref.norm())
    assert 0 < errs[tiny.spec.depth] < errs[0] * 0.8, errs  # measured 3.8e-4 against 6.4e-4
    fast.set_precision("bf16", fp32_blocks=1).set_precision("fp32")
    assert fast.num_fp32_blocks() == 0 and fast.backbone.backbone.blocks[0].attn.sdpa_dtype is None
    for key, v in tiny.state_dict().items():
        assert torch.equal(fast.state_dict()[key], v), key
    with pytest.raises(ValueError, match="fp32_blocks must be an int in"):
        fast.set_precision("bf16", fp32_blocks=tiny.spec.depth + 1)


def test_fp16_blocks_run_leading_vit_blocks_in_fp16(tiny, images2) -> None:
    """bf16 mode's ``fp16_blocks`` (default ``depth // 4``): the first blocks store fp16 weights cast from the fp32
    originals, the rest bf16; fp16 everywhere in the ViT is closer to fp32 than plain bf16; ``fp32_blocks`` wins where
    both apply (its attention then runs in fp16); exact fp32 restore; bad counts and fp16 overflow are clear errors."""
    import copy

    depth = tiny.spec.depth
    sd = tiny.state_dict()

    def block_dtypes(net: ZipSplat) -> list[torch.dtype]:
        return [b.mlp.fc2.weight.dtype for b in net.backbone.backbone.blocks]

    bf, f16, i32 = torch.bfloat16, torch.float16, torch.float32
    default = copy.deepcopy(tiny).set_precision("bf16", fp16_blocks=0).set_precision("bf16", fp16_blocks=None)
    assert default.num_fp16_blocks() == depth // 4 == 2
    assert block_dtypes(default) == [f16, f16] + [bf] * (depth - 2) == default.vit_block_dtypes()
    assert default.downscale[0].weight.dtype == bf and default.backbone.cam_enc.trunk[0].attn.qkv.weight.dtype == bf
    assert all(b.attn.sdpa_dtype is None for b in default.backbone.backbone.blocks)  # each block's own dtype
    w = "backbone.backbone.blocks.1.attn.qkv.weight"  # from the fp32 master, not via bf16's rounding
    assert torch.equal(default.state_dict()[w], sd[w].to(f16))
    assert ZipSplat("tiny", precision="bf16").num_fp16_blocks() == 2  # the config default
    assert ZipSplat("tiny", precision="fp16", fp16_blocks=3).num_fp16_blocks() == 0  # bf16 mode only
    both = copy.deepcopy(tiny).set_precision("bf16", fp32_blocks=1, fp16_blocks=3)
    assert block_dtypes(both) == [i32, f16, f16] + [bf] * (depth - 3)
    assert [b.attn.sdpa_dtype for b in both.backbone.backbone.blocks[:2]] == [f16, None]
    with torch.inference_mode():
        ref = tiny.predict(images2).means
        errs = {}
        for k in (0, depth):
            out = copy.deepcopy(tiny).set_precision("bf16", fp16_blocks=k).predict(images2).means
            errs[k] = float((out - ref).norm() / ref.norm())
    assert 0 < errs[depth] < errs[0] * 0.8, errs
    back = copy.deepcopy(both).set_precision("fp32")
    assert all(b.attn.sdpa_dtype is None for b in back.backbone.backbone.blocks)
    for key, v in sd.items():
        assert torch.equal(back.state_dict()[key], v), key
    for bad in (depth + 1, -1, True, 1.5):
        with pytest.raises(ValueError, match="fp16_blocks must be an int in"):
            copy.deepcopy(tiny).set_precision("bf16", fp16_blocks=bad)
    with pytest.raises(ValueError, match="fp16_blocks must be an int in"):
        ZipSplat("tiny", fp16_blocks=depth + 1)
    # an activation beyond fp16's range inside an fp16 block: a clear error that names the fix, not NaN Gaussians
    with torch.no_grad():
        fc1 = default.backbone.backbone.blocks[0].mlp.fc1
        fc1.weight.normal_(0.0, 1000.0)
        fc1.bias.fill_(60000.0)  # fc1's fp16 output then exceeds fp16's 65504
    with torch.inference_mode(), pytest.raises(FloatingPointError, match="set fp16_blocks=0"):
        default.predict(images2)



def test_network_built_under_inference_mode_predicts() -> None:
    """A network constructed inside ``torch.inference_mode`` (its parameters are inference tensors, which have no
    version counter) predicts, twice, and gives the same Gaussians as one built normally (the resized pos_embed table
    is then not cached, as a weight edit could not be detected)."""
    torch.manual_seed(0)
    ref = ZipSplat("tiny", image_size=28).eval()
    x = torch.rand(1, 2, 3, 28, 28)
    with torch.inference_mode():
        net = ZipSplat("tiny", image_size=28).eval()
        net.load_state_dict(ref.state_dict())
        first, second = net.predict(x).means, net.predict(x).means
        expected = ref.predict(x).means
    assert torch.equal(first, expected) and torch.equal(second, expected)
