"""ZipSplat as a nerfstudio Model: a feed-forward network that predicts the Gaussians of whole scenes.

:class:`ZipSplatModel` subclasses nerfstudio's ``SplatfactoModel`` only so that the viewer, ``ns-render`` and
``ns-export gaussian-splat`` treat it as a Gaussian-splatting model (they check ``isinstance(model, SplatfactoModel)``).
Nothing of splatfacto's ``populate_modules`` / ``load_state_dict`` / densification runs; the learnable parameters are
those of the network (``net.*``) and nothing else: predicted Gaussians never enter the state dict.

Two uses:

* **training** (``get_outputs(inputs)`` through ``pipeline._model(inputs)``, so DDP syncs the gradients): the inputs
  are the datamanager's dict of tensors (see :mod:`zipsplat_ns.datamanagers.zipsplat_datamanager`). The network
  predicts the Gaussians of each scene from its context views (with the camera priors with probability
  ``priors_probability``, at a compression ratio drawn from the schedule), renders the target views (supervised)
  and, when the chamfer term needs the "activated" mask, the context views (without gradient). ``get_loss_dict``
  returns the weighted loss terms of :func:`zipsplat_ns.losses.compute_losses` (nerfstudio sums them).
* **viewing / export**: :meth:`ZipSplatModel.set_scene` runs the network once on one scene and caches its Gaussians;
  ``get_outputs_for_camera`` renders them for a viewer camera, and the six splatfacto properties (``means``,
  ``scales``, ``quats``, ``opacities``, ``features_dc``, ``features_rest``) expose them in splatfacto's
  parametrisation (log scales, logit opacities, SH) in the y-up viewer world. Before a scene is set they are empty.

World convention: the network predicts Gaussians in the OpenCV frame of context view 0 (x right, y down, z forward).
The viewer world is that frame flipped by ``F = diag(1, -1, -1)`` (y up, the reference camera at the origin looking
down -z), see :mod:`zipsplat_ns.ns_cameras`. Rendering always happens in the OpenCV frame (viewer cameras are
converted with ``from_nerfstudio(camera, y_up_world=True)``); only the exported properties are flipped, by
:meth:`zipsplat_ns.gaussians.Gaussians.flip_yz`.

Non-finite losses: a step whose total loss is NaN/Inf is skipped: ``get_loss_dict`` returns a single zero leaf
(``requires_grad=True``, connected to no parameter), so after ``backward`` every parameter's ``.grad`` is still
``None`` and nerfstudio's ``Optimizers`` skips ``optimizer.step()`` for every group (the LR scheduler still steps).
The count is logged as ``nonfinite_skipped``. Under DDP (world size > 1) the loss is left as it is, so that every rank
runs the same backward; the pipeline's gradient guard then drops the non-finite gradients on all ranks (see
:mod:`zipsplat_ns.pipeline`).
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Optional, Tuple, Type

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn import Parameter

from nerfstudio.cameras.cameras import Cameras
from nerfstudio.models.base_model import Model, ModelConfig
from nerfstudio.models.splatfacto import SplatfactoModel

from zipsplat_ns.camera import Camera, intrinsics_checks, size_range
from zipsplat_ns.gaussians import Gaussians, sh0_to_rgb
from zipsplat_ns.losses import LOSS_NAMES, LossConfig, LossTerms, activated_mask, compute_losses
from zipsplat_ns.ns_cameras import flip_world_points, from_nerfstudio
from zipsplat_ns.pose import Pose
from zipsplat_ns.rendering import RenderOutput, render
from zipsplat_ns.schedules import sample_compression, use_priors

FROZEN_PREFIXES = ("net.backbone.cam_enc.",)
FROZEN_NAMES = ("net.backbone.backbone.camera_token",)
BACKBONE_PREFIX = "net.backbone.backbone."


@dataclass
class CompressionScheduleConfig:
    """Per-batch compression ratio in training: ``uniform(lo, r_max)`` with ``lo`` going from ``r_max`` to ``r_min``
    (cosine) over the first ``fraction`` of training and scaled by ``(2 / V) ** view_exponent`` (reference §1.6)."""

    fraction: float = 0.5
    r_min: float = 0.5
    r_max: float = 1.0
    view_exponent: float = 0.5


@dataclass
class ZipSplatModelConfig(ModelConfig):
    """The ZipSplat feed-forward model (network, rendering, losses, training schedules)."""

    _target: Type = field(default_factory=lambda: ZipSplatModel)
    enable_collider: bool = False
    """Unused by a feed-forward model (nerfstudio's collider expects ray bundles)."""
    variant: str = "giant"
    """Network size: giant (released weights), large, base, small, or tiny (ours, for CPUs)."""
    weights: Optional[str] = None
    """Network weights to start from: a released name (e.g. 'zipsplat'), a local file or a URL (strict loading)."""
    backbone_weights: Optional[str] = None
    """Converted DA3 weights (scripts/convert_da3_weights.py) to initialise the ViT when no `weights` are given."""
    allow_pickle: bool = False
    """Accept `weights` / `backbone_weights` files that need full unpickling (torch.load weights_only=False). Only
    for files you trust: unpickling can run arbitrary code."""
    precision: Literal["auto", "fp32", "amp-bf16"] = "auto"
    """'amp-bf16': bf16 autocast of backbone + fusion, fp32 head and rendering; 'auto': amp-bf16 on CUDA, else fp32."""
    grad_checkpointing: bool = False
    """Recompute the transformer blocks in the backward pass (the 24 GB recipe)."""
    use_xformers: Optional[bool] = None
    """Fused SwiGLU from xformers (None: when importable)."""
    fusion_sdpa: Literal["default", "no-cudnn"] = "no-cudnn"
    """Attention kernels of the fusion stage: 'no-cudnn' (flash / memory-efficient only) or 'default' (PyTorch's
    choice, cuDNN on recent GPUs). cuDNN attention builds a plan on the CPU for every new shape, and the fusion stage's
    token count changes with the per-batch compression ratio, so with 'default' the first thousands of steps each pay
    for new plans (H200, giant compiled, 4 x 6 views: 508 ms per step against 267 ms with 'no-cudnn'; the same once
    every count has been seen: benchmarks/bench_train_no_cudnn/). The same function either way."""
    backbone_sdpa: Literal["default", "no-cudnn"] = "default"
    """The same choice for the ViT backbone and the camera encoder."""
    compile: bool = False
    """torch.compile the network's transformer blocks and its Gaussian head at the first training step (speed and
    memory: fused element-wise work, far fewer kernel launches, fewer saved activations; the same function). The first
    steps compile (1-2 minutes on an H200); after the first change of a shape its dimensions become dynamic, so the
    view and compression schedules add few recompiles. Viewer, export and reconstruction without training stay eager.
    Small runs eager by default: compiling it was no faster (benchmarks/bench_train_compile/)."""
    cuda_graphs: bool = False
    """Ours, opt-in: replay the ViT backbone's forward and backward as CUDA graphs in training, captured once per
    batch layout (scenes x views; priors on/off). The kernels are eager PyTorch's, so the function and gradients are
    the same; it removes most of the host time of small models' steps, which are bound by the CPU issuing kernels.
    Needs CUDA and no grad_checkpointing (ignored otherwise); each layout's capture costs a few steps' time and keeps
    the backbone's activations of that layout in a shared graph memory pool. The LPIPS-VGG loss network is graphed
    the same way (per target layout). Gradients must be cleared with set_to_none before each step (nerfstudio's
    default); gradient accumulation is refused."""
    inductor_padding: bool = False
    """With compile: keep inductor's stride padding (``torch._inductor.config.comprehensive_padding``, process-wide).
    Off by default: with it, compiled small failed on an H200 (torch 2.11) in its first backward pass with the stride
    assertion ``expected ... stride 1950==1952`` (a (24, 6, 325, 1) tensor whose stride inductor padded from 1950 to
    1952; benchmarks/bench_train_no_cudnn/); with it off, compiled small and giant ns-train ran on the H200
    (benchmarks/ns_train_compile_smoke/). Padding only aligns strides for speed; the function is the same."""
    sh_degree: int = 1
    """SH degree of the predicted colours (read by ns-export)."""
    gaussians_per_token: int = 32
    """Gaussians predicted per selected token (32 in the reference; fewer makes CPU rendering affordable)."""
    background_color: Literal["black", "white", "random"] = "black"
    """Background of training renders (the reference trains on black). The viewer uses its own picker."""
    renderer: Literal["auto", "gsplat", "torch"] = "auto"
    """Rasterizer: gsplat on CUDA, the pure-torch renderer elsewhere ('auto'), or forced."""
    mask_render_chunk: int = 8
    """Context views rendered per rasterizer call for the activated mask (fewer: lower peak memory, same mask)."""
    mask_render_downscale: int = 1
    """Ours, opt-in: render the context views for the activated mask at 1/N of their size (on top of
    render_downscale). The mask only needs each Gaussian's centre-pixel depth and alpha, and these renders (depth, no
    gradient, every context view) are most of a step's rasterization; at N = 2 they have a quarter of the pixels and
    far fewer tile intersections, and the mask's tests run on N x N-pixel cells. 1 = full size (the definition in
    zipsplat_ns/losses.py). The fastest small step measured: N = 4 with mask_render_chunk 24, one call for all views
    (84-93 ms against 109-156 ms on an H100; benchmarks/bench_train_mask_settings/)."""
    mask_context_views: int = 0
    """Ours, opt-in: render only this many of a batch's context views for the activated mask, drawn per step at
    random without replacement (the same draw for every scene of the batch; deterministic in the seed, rank and
    step, so a resumed run draws the same views). 0 = all of them (the reference: the mask is an OR over every
    context and target view). The mask is an OR over views, so fewer views flag a subset of the Gaussians (the rest get chamfer
    gradients); the renders shrink in proportion. Values >= the view count render all views."""
    render_downscale: int = 1
    """Render and supervise the target views at 1/N of the input size in training (CPU demos; 1 = the recipe)."""
    loss: LossConfig = field(default_factory=LossConfig)
    """Loss weights and constants (reference §4.1)."""
    total_steps: int = 450_000
    """Training length used by the compression and view schedules (keep equal to the LR schedule's max_steps)."""
    compression_schedule: CompressionScheduleConfig = field(default_factory=CompressionScheduleConfig)
    """Compression-ratio schedule in training."""
    eval_compression: float = 1.0
    """Compression ratio outside training (eval batches, benchmarks)."""
    priors_probability: float = 0.2
    """Probability per training step of conditioning on the context cameras and poses."""
    viewer_compression: float = 1.0
    """Compression ratio of the scene shown by the viewer / exported (set_scene)."""
    viewer_use_priors: bool = False
    """Condition the viewer / export scene on its context cameras and poses (posed inputs only)."""
    scene_precision: Literal["fp32", "training"] = "fp32"
    """Precision of the network run that builds the viewer / export / reconstruct scene (set_scene): 'fp32', the
    reference's inference, or 'training', the training precision (bf16 autocast on CUDA: faster, but k-means may
    pick other tokens and the Gaussians differ slightly)."""
    seed: int = 0
    """Seed of the per-step compression / priors draws (offset by the rank)."""


def _lpips_on_unit_images(net: nn.Module, pred: Tensor, gt: Tensor) -> Tensor:
    """LPIPS of ``(N, 3, H, W)`` images in [0, 1], as :func:`zipsplat_ns.losses.lpips_loss` calls it by default."""
    return net(pred.float(), gt.float(), normalize=True)


def _downscaled_size(size: Tuple[int, int], factor: int, what: str, knob: str = "render_downscale") -> Tuple[int, int]:
    """``(w, h) / factor`` for renders at ``render_downscale`` (``knob`` names the setting(s) giving ``factor``);
    the sizes must divide."""
    w, h = size
    if w % factor or h % factor:
        raise ValueError(f"{knob}={factor}: the {what} images ({w}x{h}) must be divisible by it")
    return w // factor, h // factor


def _downscale_images(x: Tensor, factor: int) -> Tensor:
    """Area-average ``(..., C, H, W)`` by an integer factor."""
    if factor == 1:
        return x
    lead = x.shape[:-3]
    y = F.avg_pool2d(x.reshape(-1, *x.shape[-3:]), factor)
    return y.reshape(*lead, *y.shape[-3:])


def _downscale_depth(d: Tensor, factor: int) -> Tensor:
    """Mean of the valid (``>= 0``) depths per ``factor x factor`` block of ``(..., H, W)``; -1 where none is valid."""
    if factor == 1:
        return d
    lead = d.shape[:-2]
    x = d.reshape(-1, 1, *d.shape[-2:])
    valid = (torch.isfinite(x) & (x >= 0)).to(x.dtype)
    s = F.avg_pool2d(torch.where(valid > 0, x, torch.zeros_like(x)), factor)
    n = F.avg_pool2d(valid, factor)
    out = torch.where(n > 0, s / n.clamp_min(1e-12), torch.full_like(s, -1.0))
    return out.reshape(*lead, *out.shape[-2:])


class ZipSplatModel(SplatfactoModel):
    """Feed-forward ZipSplat model (see the module docstring)."""

    config: ZipSplatModelConfig

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # never used in forward: frozen so that DDP(find_unused_parameters=False) works (nerfstudio adds it last)
        self.device_indicator_param.requires_grad_(False)

    # ------------------------------------------------------------------------------------------------- setup
    def populate_modules(self) -> None:
        Model.populate_modules(self)  # NOT SplatfactoModel's (LPIPS download, .cuda(), kNN init, strategies)
        from zipsplat_ns.models.network import ZipSplat

        cfg = self.config
        device = torch.device(self.kwargs.get("device", "cpu") or "cpu")
        self._device_type = device.type
        precision = cfg.precision
        if precision == "auto":
            precision = "amp-bf16" if device.type == "cuda" else "fp32"
        # a pipeline that restores a checkpoint next (ns-eval / ns-viewer / ns-export) defers the starting weights:
        # the checkpoint holds the whole network, so the training run's DA3 or released file need not be read, nor
        # even exist any more; a checkpoint that names its weights by reference loads them then (load_initial_weights)
        self._initial_weights_deferred = bool(self.kwargs.get("defer_initial_weights", False))
        defer = self._initial_weights_deferred
        self.net = ZipSplat(
            cfg.variant,
            weights=None if defer else cfg.weights,
            backbone_weights=None if defer else cfg.backbone_weights,
            allow_pickle=cfg.allow_pickle,
            precision=precision,
            grad_checkpointing=cfg.grad_checkpointing,
            use_xformers=cfg.use_xformers,
            sh_degree=cfg.sh_degree,
            gaussians_per_token=cfg.gaussians_per_token,
            fusion_sdpa=cfg.fusion_sdpa,
            backbone_sdpa=cfg.backbone_sdpa,
            cuda_graphs=cfg.cuda_graphs,
        )
        self._compiled = False
        self._lpips_graphs: Dict[torch.device, Any] = {}  # cuda_graphs: per-device GraphCache of LPIPS-VGG
        if int(cfg.mask_render_chunk) < 1:
            raise ValueError(f"mask_render_chunk must be >= 1 (context views per render call), got {cfg.mask_render_chunk}")
        if int(cfg.mask_render_downscale) < 1:
            raise ValueError(f"mask_render_downscale must be >= 1 (1 = full size), got {cfg.mask_render_downscale}")
        if int(cfg.mask_context_views) < 0:
            raise ValueError(f"mask_context_views must be >= 0 (0 = every context view), got {cfg.mask_context_views}")
        for name, p in self.net.named_parameters():
            full = "net." + name
            if full.startswith(FROZEN_PREFIXES) or full in FROZEN_NAMES:
                p.requires_grad_(False)
        # splatfacto attributes read by inherited methods (set_crop, set_background, the viewer)
        self.crop_box = None
        self.background_color = self._config_background()
        self.step = 0
        self.seed_points = None
        self._seed = int(cfg.seed)
        self._rng = random.Random(self._seed)
        self.nonfinite_skipped = 0
        self.distributed = False  # set by the pipeline under DDP
        self._scene: Optional[Gaussians] = None
        self._scene_tokens: Optional[Tensor] = None
        self._scene_inputs: Optional[Dict[str, Tensor]] = None
        self._export_cache: Optional[Dict[str, Tensor]] = None
        self._color_by_token = False
        self._token_colored: Optional[Gaussians] = None

    def load_initial_weights(self) -> None:
        """Load the configured ``weights`` (else ``backbone_weights``) that the model was built without
        (``defer_initial_weights``); nothing when they were loaded at build time."""
        if not self._initial_weights_deferred:
            return
        cfg = self.config
        if cfg.weights is not None:
            self.net.load_weights(cfg.weights, allow_pickle=cfg.allow_pickle)
        elif cfg.backbone_weights is not None:
            self.net.load_backbone_weights(cfg.backbone_weights, allow_pickle=cfg.allow_pickle)
        self._initial_weights_deferred = False

    def _config_background(self) -> Tensor:
        return torch.ones(3) if self.config.background_color == "white" else torch.zeros(3)

    def seed_rng(self, seed: int) -> None:
        """Reseed the per-step draws (the pipeline offsets the seed by the rank)."""
        self._seed = int(seed)
        self._rng = random.Random(self._seed)

    def update_to_step(self, step: int) -> None:
        self.step = int(step)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):  # type: ignore[override]
        """``nn.Module.load_state_dict``, always with the key sets checked.

        nerfstudio's ``Pipeline.load_state_dict`` silently retries with ``strict=False`` on any error, so missing or
        unexpected keys are refused here whatever ``strict`` says.
        """
        expected = set(nn.Module.state_dict(self).keys())
        got = set(state_dict.keys())
        missing, unexpected = sorted(expected - got), sorted(got - expected)
        if missing or unexpected:
            raise KeyError(
                f"ZipSplatModel.load_state_dict: checkpoint does not match the model ({self.config.variant}): "
                f"{len(missing)} missing key(s) {missing[:5]}, {len(unexpected)} unexpected key(s) {unexpected[:5]}"
            )
        return nn.Module.load_state_dict(self, state_dict, strict=True, assign=assign)

    def get_training_callbacks(self, training_callback_attributes) -> List:
        return []  # no densification

    def get_param_groups(self) -> Dict[str, List[Parameter]]:
        """``backbone``: the DA3 ViT (0.1x LR), ``head``: every other trainable parameter. Frozen ones are left out."""
        groups: Dict[str, List[Parameter]] = {"backbone": [], "head": []}
        for name, p in self.named_parameters():
            if not p.requires_grad or not name.startswith("net."):
                continue
            groups["backbone" if name.startswith(BACKBONE_PREFIX) else "head"].append(p)
        return groups

    # --------------------------------------------------------------------------------------------- helpers
    def _backend(self, device: torch.device) -> str:
        if self.config.renderer != "auto":
            return self.config.renderer
        return "gsplat" if device.type == "cuda" else "torch"

    def _train_background(self, device: torch.device) -> Optional[Tensor]:
        bg = self.config.background_color
        if bg == "black":
            return None
        if bg == "white":
            return torch.ones(3, device=device)
        return torch.rand(3, device=device) if self.training else torch.zeros(3, device=device)

    # -------------------------------------------------------------------------------------------- training
    def get_outputs(self, inputs: Dict[str, Tensor]) -> Dict[str, Any]:  # type: ignore[override]
        """Predict and render a batch (``inputs`` as the datamanager's ``next_train`` returns it).

        Returns a dict of tensors: the Gaussians (``means``, ``scales``, ``quats``, ``opacities``, ``sh``, batched
        ``(B, N, ...)``), the target render ``target_render (B, Vt, 4, h, w)`` (RGB + accumulated depth),
        ``target_alpha``, the render info ``target_radii``/``target_means2d``/``target_depths``, the ``activated``
        mask ``(B, N)`` (or none), the scaled ``target_camera`` and the scalars ``compression``, ``priors``,
        ``render_downscale``.
        """
        if isinstance(inputs, Cameras):
            return self.get_outputs_for_camera(inputs)
        cfg = self.config
        images = inputs["context_image"]
        B, V = images.shape[:2]
        if self.training:
            cs = cfg.compression_schedule
            compression = sample_compression(
                self._rng, self.step, cfg.total_steps, V,
                schedule_fraction=cs.fraction, r_min=cs.r_min, r_max=cs.r_max, view_exponent=cs.view_exponent,
            )  # fmt: skip
            priors = use_priors(self._rng, cfg.priors_probability)
            ds = max(1, int(cfg.render_downscale))
        else:
            compression, priors, ds = float(cfg.eval_compression), False, 1
        chk = self._check_inputs(inputs)  # the step's one device -> host read of its inputs
        ccams, cposes = Camera.wrap(inputs["context_camera"]), Pose.wrap(inputs["context_pose"])
        cams = ccams if priors else None
        poses = cposes if priors else None
        if self.training and cfg.compile and not self._compiled:
            import torch._inductor.config as inductor_config

            inductor_config.comprehensive_padding = bool(cfg.inductor_padding)
            self.net.compile(dynamic=None)  # automatic dynamic shapes: view and token counts vary per batch
            self._compiled = True
        pred = self.net.predict(images, cameras=cams, poses=poses, use_priors=priors, compression=compression)
        g = pred.to_gaussians()

        tcam = Camera.wrap(inputs["target_camera"])
        tsize = _downscaled_size(chk["target_size"], ds, "target")
        if ds > 1:
            tcam = tcam.scale(1.0 / ds)
        tpose = Pose.wrap(inputs["target_pose"])
        device = images.device
        backend = self._backend(device)
        bg = self._train_background(device)
        trender = render(g, tcam, tpose, mode="RGB+D", background=bg, backend=backend, image_size=tsize)

        activated = None
        want_mask = cfg.loss.detach_activated and cfg.loss.chamfer_weight > 0
        if want_mask and chk["any_depth"] is not False:
            with torch.no_grad():
                mask_kw = dict(near=cfg.loss.activated_near, rel_tol=cfg.loss.activated_rel_tol,
                               abs_tol=cfg.loss.activated_abs_tol)  # fmt: skip
                trender_d = RenderOutput(
                    images=trender.images[..., 3:4, :, :].detach(), alphas=trender.alphas.detach(),
                    info={k: v.detach() for k, v in trender.info.items()}, mode="D",
                )  # fmt: skip
                activated = activated_mask([trender_d], **mask_kw)
                # context views in chunks: the mask is an OR over views, and the rasterizer's per-call buffers
                # (tile intersections, their sort) grow with views x Gaussians, so chunks lower the peak memory
                gd = g.detach()
                step = int(cfg.mask_render_chunk)
                mds = ds * int(cfg.mask_render_downscale)
                knob = "render_downscale x mask_render_downscale" if mds > ds else "render_downscale"
                csize = _downscaled_size(chk["context_size"], mds, "context", knob)
                cams_ds = ccams.scale(1.0 / mds) if mds > 1 else ccams
                cposes_m = cposes
                views = self._mask_context_views(V)
                if views is not None:  # opt-in subset: index once, then chunk as usual
                    idx = torch.tensor(views, device=cams_ds.data.device)
                    cams_ds, cposes_m = Camera(cams_ds.data[:, idx]), Pose(cposes.data[:, idx])
                n_views = V if views is None else len(views)
                for v0 in range(0, n_views, step):
                    crender = render(gd, cams_ds[:, v0 : v0 + step], cposes_m[:, v0 : v0 + step], mode="D",
                                     backend=backend, image_size=csize)  # fmt: skip
                    activated |= activated_mask([crender], **mask_kw)

        out: Dict[str, Any] = {
            "means": g.means,
            "scales": g.scales,
            "quats": g.quats,
            "opacities": g.opacities,
            "sh": g.sh,
            "token_indices": pred.token_indices,
            "target_render": trender.images,
            "target_alpha": trender.alphas,
            "target_radii": trender.info["radii"],
            "target_means2d": trender.info["means2d"],
            "target_depths": trender.info["depths"],
            "target_conics": trender.info["conics"],
            "target_camera": tcam.data,
            "target_pose": tpose.data,
            # host scalars: a CUDA tensor built from a Python number is a pageable copy that waits for the GPU
            "num_views": torch.tensor(float(V)),
            "compression": torch.tensor(float(compression)),
            "priors": torch.tensor(float(priors)),
            "render_downscale": torch.tensor(float(ds)),
            "_any_depth": chk["any_depth"],
        }
        if activated is not None:
            out["activated"] = activated
        return out

    def _mask_context_views(self, num_views: int) -> Optional[List[int]]:
        """The sorted context views rendered for the activated mask this step, or None for all of them
        (``mask_context_views``). Drawn from ``(seed, step)`` alone: no state to checkpoint, and the compression and
        priors draws are untouched."""
        k = int(self.config.mask_context_views)
        if k == 0 or k >= num_views:
            return None
        rng = random.Random(f"mask_context_views/{self._seed}/{int(self.step)}")  # str seeds hash with SHA-512
        return sorted(rng.sample(range(num_views), k))

    def _graphed_lpips(self, render: Tensor):
        """With ``cuda_graphs``: the LPIPS-VGG loss network as CUDA graphs (forward + backward per target layout), as
        an ``lpips_fn`` for :func:`compute_losses`; None (the eager default) otherwise, when nothing needs its
        gradient, or when the LPIPS term is off (``lpips_weight`` 0: the loss never calls it, so its weights are not
        needed)."""
        cfg = self.config
        if not (cfg.cuda_graphs and cfg.loss.lpips_weight and render.is_cuda and render.requires_grad
                and torch.is_grad_enabled()):  # fmt: skip
            return None
        graphs = self._lpips_graphs.get(render.device)
        if graphs is None:
            from zipsplat_ns.lpips import get_lpips_vgg
            from zipsplat_ns.models.cuda_graphs import GraphCache

            graphs = GraphCache(get_lpips_vgg(render.device), "LPIPS-VGG", fn=_lpips_on_unit_images, single_output=True)
            self._lpips_graphs[render.device] = graphs
        return graphs

    @staticmethod
    def _check_inputs(inputs: Dict[str, Tensor]) -> Dict[str, Any]:
        """Validate a training batch's cameras and poses in one device -> host read (one GPU synchronisation per
        step instead of one per camera object and render) and return what the host needs from it: the target and
        context image sizes ``(w, h)`` and whether any sample has depth (``None`` without ``has_depth``).

        Raises ``ValueError`` naming the input: non-finite values, non-positive sizes or focal lengths, or cameras
        of one kind whose image sizes differ or are not whole pixels.
        """
        cam_keys, pose_keys = ("context_camera", "target_camera"), ("context_pose", "target_pose")
        parts: Dict[str, Tensor] = {}  # per input, its checks on the device (read together below)
        for key in cam_keys:
            cam = inputs[key]
            if cam.shape[-1] != 6:
                raise ValueError(f"{key}: expected (..., 6) intrinsics [w, h, fx, fy, cx, cy], got {tuple(cam.shape)}")
            parts[key] = torch.cat([intrinsics_checks(cam).float(), size_range(cam)])
        for key in pose_keys:
            pose = inputs[key]
            if pose.shape[-1] != 12:
                raise ValueError(f"{key}: expected (..., 12) packed [R row-major 9, t 3] poses, got {tuple(pose.shape)}")
            parts[key] = torch.isfinite(pose).all().float()[None]
        hd = inputs.get("has_depth")
        if hd is not None:
            parts["has_depth"] = hd.any().float()[None]
        flat = torch.cat(list(parts.values())).tolist()
        read, i = {}, 0
        for key, p in parts.items():
            read[key], i = flat[i : i + p.numel()], i + p.numel()
        out: Dict[str, Any] = {}
        for key in cam_keys:
            finite, size_ok, focal_ok, w_max, w_min, h_max, h_min, frac = read[key]
            if not finite:
                raise ValueError(f"{key}: contains non-finite values (NaN or Inf)")
            if not (size_ok and focal_ok):
                raise ValueError(f"{key}: image sizes and focal lengths must be positive")
            if w_max != w_min or h_max != h_min or frac > 1e-3:
                raise ValueError(f"{key}: every camera of a batch must have the same whole-pixel image size, got "
                                 f"widths {w_min:g}..{w_max:g} and heights {h_min:g}..{h_max:g}")  # fmt: skip
            out[key.replace("camera", "size")] = (int(round(w_max)), int(round(h_max)))
        for key in pose_keys:
            if not read[key][0]:
                raise ValueError(f"{key}: contains non-finite values (NaN or Inf)")
        out["any_depth"] = bool(read["has_depth"][0]) if hd is not None else None  # None: the batch did not say
        return out

    @staticmethod
    def _gaussians_of(outputs: Dict[str, Any]) -> Gaussians:
        return Gaussians(
            outputs["means"], outputs["scales"], outputs["quats"], outputs["opacities"], outputs["sh"], validate=False
        )

    @staticmethod
    def _target_render_of(outputs: Dict[str, Any]) -> RenderOutput:
        radii = outputs["target_radii"]
        info = {"radii": radii, "means2d": outputs["target_means2d"], "depths": outputs["target_depths"],
                "conics": outputs["target_conics"], "opacities": outputs["opacities"][:, None, :].expand(radii.shape)}
        return RenderOutput(images=outputs["target_render"], alphas=outputs["target_alpha"], info=info, mode="RGB+D")

    def _targets(self, outputs: Dict[str, Any], batch: Dict[str, Tensor]) -> Tuple[Tensor, Optional[Tensor]]:
        ds = int(round(float(outputs["render_downscale"])))
        images = _downscale_images(batch["image"], ds)
        depth = batch.get("depth")
        if depth is not None:
            depth = _downscale_depth(depth, ds)
        return images, depth

    def loss_terms(self, outputs: Dict[str, Any], batch: Dict[str, Tensor]) -> LossTerms:
        """All loss terms of a batch, computed once per outputs dict (cached under ``outputs['_loss_terms']``)."""
        cached = outputs.get("_loss_terms")
        if cached is not None:
            return cached
        images, depth = self._targets(outputs, batch)
        has_depth = batch.get("has_depth")
        any_depth = outputs.get("_any_depth")
        if any_depth is None:
            any_depth = has_depth is None or bool(has_depth.any())
        any_depth = bool(any_depth) and depth is not None
        terms = compute_losses(
            self._gaussians_of(outputs),
            self._target_render_of(outputs),
            images,
            target_depths=depth if any_depth else None,
            target_cameras=Camera.wrap(outputs["target_camera"]),  # built (and checked) by get_outputs
            target_poses=Pose.wrap(outputs["target_pose"]),
            has_depth=has_depth,
            any_depth=any_depth,
            activated=outputs.get("activated"),
            config=self.config.loss,
            # the reference computes its loss inside the bf16 autocast region, so its LPIPS-VGG convolutions run in bf16
            lpips_autocast=self.net.config.precision == "amp-bf16",
            lpips_fn=self._graphed_lpips(outputs["target_render"]),
        )
        total = terms.total
        finite = bool(torch.isfinite(total.detach()))
        outputs["_loss_terms"] = terms
        outputs["_finite"] = finite
        if not finite:
            self.nonfinite_skipped += 1
        return terms

    def get_metrics_dict(self, outputs: Dict[str, Any], batch: Dict[str, Tensor]) -> Dict[str, Tensor]:
        from zipsplat_ns.metrics import psnr

        terms = self.loss_terms(outputs, batch)
        images, _ = self._targets(outputs, batch)
        rgb = outputs["target_render"][..., :3, :, :].detach()
        m: Dict[str, Any] = {"psnr": psnr(rgb, images).mean()}
        for k in LOSS_NAMES:
            m[f"loss_{k}"] = terms.raw[k]
        m["activated_fraction"] = terms.raw["activated_fraction"]
        m["geometry_fraction"] = terms.raw["geometry_fraction"]
        B, N = outputs["means"].shape[:2]
        m["num_gaussians"] = torch.tensor(float(N))
        m["num_views"] = outputs["num_views"]
        m["num_scenes"] = torch.tensor(float(B))
        m["compression"] = outputs["compression"]
        m["priors"] = outputs["priors"]
        m["opacity_mean"] = outputs["opacities"].detach().mean()
        m["scale_median"] = outputs["scales"].detach().median()
        m["nonfinite_skipped"] = torch.tensor(float(self.nonfinite_skipped))
        return m

    def get_loss_dict(self, outputs: Dict[str, Any], batch: Dict[str, Tensor], metrics_dict=None) -> Dict[str, Tensor]:
        terms = self.loss_terms(outputs, batch)
        if not outputs.get("_finite", True) and not self.distributed:
            # zero leaf connected to no parameter: every .grad stays None, so nerfstudio skips optimizer.step()
            return {"nonfinite_skip": torch.zeros((), device=outputs["means"].device, requires_grad=True)}
        return dict(terms.weighted)

    # ------------------------------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def get_image_metrics_and_images(
        self, outputs: Dict[str, Any], batch: Dict[str, Tensor]
    ) -> Tuple[Dict[str, float], Dict[str, Tensor]]:
        """PSNR / SSIM / LPIPS of every target view (means), and ``img``: GT targets above renders, ``(H, W, 3)``."""
        from zipsplat_ns.metrics import compute_metrics

        images, _ = self._targets(outputs, batch)
        rgb = outputs["target_render"][..., :3, :, :].clamp(0, 1)
        m = compute_metrics(rgb, images)
        metrics = {k: float(v.float().mean()) for k, v in m.items()}
        gt_row = torch.cat(list(images[0]), -1)
        pr_row = torch.cat(list(rgb[0]), -1)
        grid = torch.cat([gt_row, pr_row], -2).permute(1, 2, 0).clamp(0, 1)
        return metrics, {"img": grid}

    # ----------------------------------------------------------------------------------- viewer and export
    @torch.no_grad()
    def set_scene(
        self, inputs: Dict[str, Tensor], compression: Optional[float] = None, use_priors: bool = False
    ) -> Gaussians:
        """Run the network on the first scene of ``inputs`` (context views; no gradient) and cache its Gaussians for
        the viewer and the exporter. Returns the cached (unbatched, OpenCV-frame) Gaussians."""
        c = float(self.config.viewer_compression if compression is None else compression)
        was_training = self.training
        self.eval()
        try:
            dev = self.device
            images = inputs["context_image"][:1].to(dev)
            cams = Camera(inputs["context_camera"][:1].to(dev)) if use_priors else None
            poses = Pose(inputs["context_pose"][:1].to(dev)) if use_priors else None
            with self.net.fp32_inference() if self.config.scene_precision == "fp32" else contextlib.nullcontext():
                pred = self.net.predict(images, cameras=cams, poses=poses, use_priors=use_priors, compression=c)
            g = pred.to_gaussians()[0].detach().float()
        finally:
            self.train(was_training)
        self._scene = g
        self._scene_tokens = pred.token_indices[0].detach()
        self._scene_inputs = {k: v[:1].detach() for k, v in inputs.items() if isinstance(v, Tensor)}
        self._scene_compression = c
        self._export_cache = None
        self._token_colored = None
        return g

    def clear_scene(self) -> None:
        self._scene = None
        self._scene_tokens = None
        self._scene_inputs = None
        self._export_cache = None
        self._token_colored = None

    def set_color_by_token(self, enabled: bool) -> None:
        """Viewer renders: each token's ``gaussians_per_token`` Gaussians in one colour (export is unaffected)."""
        self._color_by_token = bool(enabled)

    def _viewer_gaussians(self) -> Optional[Gaussians]:
        if self._scene is None or not self._color_by_token:
            return self._scene
        if self._token_colored is None:
            self._token_colored = self._scene.color_by_group(int(self.config.gaussians_per_token))
        return self._token_colored

    @property
    def scene(self) -> Optional[Gaussians]:
        """The cached scene (OpenCV frame of its context view 0), or None."""
        return self._scene

    def _export(self) -> Dict[str, Tensor]:
        if self._export_cache is not None:
            return self._export_cache
        g = self._scene
        dev = self.device_indicator_param.device
        k = (self.config.sh_degree + 1) ** 2
        if g is None:
            z = lambda *s: torch.zeros(*s, device=dev)  # noqa: E731
            return {
                "means": z(0, 3), "scales": z(0, 3), "quats": z(0, 4), "opacities": z(0, 1),
                "features_dc": z(0, 3), "features_rest": z(0, k - 1, 3), "shs_0": z(0, 3),
            }  # fmt: skip
        f = g.flip_yz()
        sh = f.sh[:, :k]
        o = f.opacities.clamp(1e-7, 1 - 1e-7)
        self._export_cache = {
            "means": f.means,
            "scales": torch.log(f.scales.clamp_min(1e-12)),
            "quats": F.normalize(f.quats, dim=-1),
            "opacities": torch.log(o / (1 - o))[:, None],
            "features_dc": sh[:, 0, :],
            "features_rest": sh[:, 1:, :],
            "shs_0": sh[:, 0, :],
        }
        if self.config.sh_degree == 0:
            # splatfacto's contract at degree 0: features_dc holds colour logits (its colors / shs_0 apply a sigmoid)
            rgb = sh0_to_rgb(sh[:, 0, :]).clamp(1e-6, 1 - 1e-6)
            self._export_cache["features_dc"] = torch.log(rgb / (1 - rgb))
        return self._export_cache

    # splatfacto's parametrisation of the selected scene, in the y-up viewer world (empty before set_scene)
    @property
    def means(self) -> Tensor:  # type: ignore[override]
        return self._export()["means"]

    @property
    def scales(self) -> Tensor:  # type: ignore[override]
        return self._export()["scales"]

    @property
    def quats(self) -> Tensor:  # type: ignore[override]
        return self._export()["quats"]

    @property
    def opacities(self) -> Tensor:  # type: ignore[override]
        return self._export()["opacities"]

    @property
    def features_dc(self) -> Tensor:  # type: ignore[override]
        return self._export()["features_dc"]

    @property
    def shs_0(self) -> Tensor:  # type: ignore[override]
        """The DC SH coefficients at every degree (what ns-export writes as f_dc_*; splatfacto derives them from
        ``features_dc``, through a clamping sigmoid at degree 0)."""
        return self._export()["shs_0"]

    @property
    def colors(self) -> Tensor:  # type: ignore[override]
        """RGB of the DC term (ns-export --ply-color-mode rgb clamps it to [0, 1])."""
        return sh0_to_rgb(self.shs_0)

    @property
    def features_rest(self) -> Tensor:  # type: ignore[override]
        return self._export()["features_rest"]

    def _viewer_background(self, device: torch.device) -> Tensor:
        from nerfstudio.model_components import renderers

        override = renderers.BACKGROUND_COLOR_OVERRIDE
        bg = override if override is not None else self.background_color
        return torch.as_tensor(bg, dtype=torch.float32).to(device)

    @torch.no_grad()
    def get_outputs_for_camera(self, camera: Cameras, obb_box=None) -> Dict[str, Tensor]:  # type: ignore[override]
        """Render the cached scene for one nerfstudio camera (y-up viewer world): ``rgb (H, W, 3)``, ``depth
        (H, W, 1)`` (expected z-depth), ``accumulation (H, W, 1)``, ``background (H, W, 3)``."""
        dev = self.device
        cam = camera.to(dev) if camera.camera_to_worlds.device != dev else camera
        if cam.shape != (1,):
            cam = cam.reshape((-1,))[:1]
        H, W = int(cam.height.flatten()[0]), int(cam.width.flatten()[0])
        bg = self._viewer_background(dev)
        g = self._viewer_gaussians()
        if g is None:
            return {
                "rgb": bg.expand(H, W, 3).clone(),
                "depth": torch.full((H, W, 1), 10.0, device=dev),
                "accumulation": torch.zeros(H, W, 1, device=dev),
                "background": bg.expand(H, W, 3).clone(),
            }
        if obb_box is not None:
            keep = obb_box.within(flip_world_points(g.means))
            g = g.subset(keep)
        ours, pose = from_nerfstudio(cam, y_up_world=True, ignore_distortion=True)
        r = render(g.to(dev), ours.to(dev), pose.to(dev), mode="RGB+ED", background=bg, backend=self._backend(dev))
        img = r.images[0]  # (4, H, W)
        return {
            "rgb": img[:3].permute(1, 2, 0).clamp(0, 1),
            "depth": img[3:4].permute(1, 2, 0),
            "accumulation": r.alphas[0].permute(1, 2, 0),
            "background": bg.expand(H, W, 3).clone(),
        }


__all__ = ["ZipSplatModel", "ZipSplatModelConfig", "CompressionScheduleConfig"]
