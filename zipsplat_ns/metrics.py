"""Evaluation metrics of the ZipSplat protocol (reference §6.4), in torch.

- :func:`psnr`: images clipped to [0, 1]; per image ``-10 log10(mean((pred - gt)^2))`` over (C, H, W). Identical
  images give ``inf`` (as the formula; no epsilon).
- :func:`ssim`: equal to ``skimage.metrics.structural_similarity(gt, pred, win_size=11, gaussian_weights=True,
  channel_axis=0, data_range=1.0)`` per image (pred not clipped):

  * Gaussian window, sigma 1.5, truncated at 3.5 sigma -> radius ``int(3.5 * 1.5 + 0.5) = 5``, 11 taps, normalised;
  * ``K1 = 0.01``, ``K2 = 0.03``, ``C1 = (K1 R)^2``, ``C2 = (K2 R)^2`` with ``R = data_range``;
  * ``use_sample_covariance=True``: variances and covariance are multiplied by ``NP / (NP - 1)``, ``NP = 11^2``;
  * the SSIM map is cropped by ``pad = (11 - 1) // 2 = 5`` on each border and averaged; per-channel values are averaged.
    The crop removes exactly the pixels whose window reaches past the border, so skimage's ``reflect`` padding
    never matters and a *valid* (unpadded) convolution gives the same map.

  Computed in float64 (skimage computes in the input's float precision and averages in float64).
- :func:`lpips`: LPIPS-VGG (:mod:`zipsplat_ns.lpips`), ``normalize=True``, no clipping, as the reference.
- :func:`ssim_loss_map`: a differentiable SSIM for *training* use only: ``fused_ssim`` when it is importable and the
  tensors are on CUDA, else the torch implementation below ("same" padding). Never used by the metrics.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zipsplat_ns import lpips as _lpips

SSIM_WIN_SIZE = 11
SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _check_pair(pred: Tensor, gt: Tensor, name: str) -> None:
    if pred.shape != gt.shape or pred.ndim < 3:
        raise ValueError(
            f"{name}: expected two (..., C, H, W) tensors of one shape, got {tuple(pred.shape)} and {tuple(gt.shape)}"
        )


def psnr(pred: Tensor, gt: Tensor) -> Tensor:
    """Per-image PSNR of ``(..., C, H, W)`` images on clipped [0, 1] values; shape ``(...)``."""
    _check_pair(pred, gt, "psnr")
    p, g = pred.float().clamp(0, 1), gt.float().clamp(0, 1)
    mse = ((p - g) ** 2).mean(dim=(-3, -2, -1))
    return -10.0 * torch.log10(mse)


def gaussian_window_1d(
    sigma: float = SSIM_SIGMA, truncate: float = SSIM_TRUNCATE, dtype=torch.float64, device=None
) -> Tensor:
    """scipy.ndimage's normalised Gaussian taps: radius ``int(truncate * sigma + 0.5)``."""
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    w = torch.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()


def _filter_valid(x: Tensor, w1d: Tensor) -> Tensor:
    """Separable 2D correlation of ``(N, 1, H, W)`` with a symmetric window, no padding."""
    k = w1d.numel()
    x = F.conv2d(x, w1d.view(1, 1, k, 1))
    return F.conv2d(x, w1d.view(1, 1, 1, k))


def ssim(pred: Tensor, gt: Tensor, data_range: float = 1.0) -> Tensor:
    """Per-image SSIM of ``(..., C, H, W)`` images, as skimage (see the module docstring); shape ``(...)``.

    Needs H, W >= 11 (skimage raises for smaller images too).
    """
    _check_pair(pred, gt, "ssim")
    *lead, C, H, W = pred.shape
    if H < SSIM_WIN_SIZE or W < SSIM_WIN_SIZE:
        raise ValueError(f"ssim: images must be at least {SSIM_WIN_SIZE}x{SSIM_WIN_SIZE}, got {H}x{W}")
    x = gt.detach().to(torch.float64).reshape(-1, 1, H, W)
    y = pred.detach().to(torch.float64).reshape(-1, 1, H, W)
    w = gaussian_window_1d(device=x.device)
    np_ = SSIM_WIN_SIZE**2
    cov_norm = np_ / (np_ - 1.0)
    ux, uy = _filter_valid(x, w), _filter_valid(y, w)
    uxx, uyy, uxy = _filter_valid(x * x, w), _filter_valid(y * y, w), _filter_valid(x * y, w)
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    per_channel = s.mean(dim=(-3, -2, -1)).reshape(*lead, C)
    return per_channel.mean(-1).to(pred.dtype if pred.is_floating_point() else torch.float32)


def lpips(pred: Tensor, gt: Tensor, net: Optional[nn.Module] = None) -> Tensor:
    """Per-image LPIPS-VGG of ``(..., 3, H, W)`` images in [0, 1] (no clipping, as the reference); shape ``(...)``."""
    _check_pair(pred, gt, "lpips")
    with torch.no_grad():
        return _lpips.lpips_vgg(gt.float(), pred.float(), normalize=True, net=net)


def compute_metrics(
    pred: Tensor, gt: Tensor, *, with_lpips: bool = True, net: Optional[nn.Module] = None
) -> Dict[str, Tensor]:
    """``{"psnr", "ssim", "lpips"}`` per image, each of shape ``(...)`` for ``(..., 3, H, W)`` inputs."""
    out = {"psnr": psnr(pred, gt), "ssim": ssim(pred, gt)}
    if with_lpips:
        out["lpips"] = lpips(pred, gt, net=net)
    return out


# --------------------------------------------------------------------------------------------- training SSIM
def _fused_ssim_fn():
    try:
        from fused_ssim import fused_ssim  # type: ignore[import-not-found]
    except Exception:  # noqa: BLE001 - optional CUDA extension
        return None
    return fused_ssim


def ssim_loss_map(pred: Tensor, gt: Tensor) -> Tensor:
    """Differentiable mean SSIM of ``(N, C, H, W)`` images with "same" padding (training use only); shape ``()``.

    Uses ``fused_ssim`` when importable and on CUDA, else a torch implementation with zero padding
    (the Gaussian 11x11, sigma 1.5 window, C1 = 0.01^2, C2 = 0.03^2, population covariance), i.e. the
    3DGS-style training SSIM. Not the evaluation metric: use :func:`ssim` for that.
    """
    _check_pair(pred, gt, "ssim_loss_map")
    fn = _fused_ssim_fn() if pred.is_cuda else None
    if fn is not None:
        return fn(pred.contiguous(), gt.contiguous())
    C = pred.shape[-3]
    w = gaussian_window_1d(dtype=pred.dtype, device=pred.device)
    k = w.numel()
    kern = (w[:, None] * w[None, :]).expand(C, 1, k, k).contiguous()
    pad = k // 2

    def filt(t: Tensor) -> Tensor:
        return F.conv2d(t, kern, padding=pad, groups=C)

    mu1, mu2 = filt(pred), filt(gt)
    s11 = filt(pred * pred) - mu1 * mu1
    s22 = filt(gt * gt) - mu2 * mu2
    s12 = filt(pred * gt) - mu1 * mu2
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    m = ((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1 * mu1 + mu2 * mu2 + c1) * (s11 + s22 + c2))
    return m.mean()


__all__ = ["psnr", "ssim", "lpips", "compute_metrics", "ssim_loss_map", "gaussian_window_1d"]
