"""The ZipSplat network: DA3 backbone -> layer-token preparation -> k-means token selection -> scene-token fusion ->
colour skip -> Gaussian head (reference doc §1.3-§1.9).

The module tree (and so the state-dict keys) matches the released checkpoint (§7.3), so
``ZipSplat("giant").load_state_dict(released_state_dict, strict=True)`` works.
"""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any, Iterator, Literal, Mapping, Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from zipsplat_ns.models import kmeans as kmeans_lib
from zipsplat_ns.models.backbone import BACKBONE_SPECS, PATCH_SIZE, BackboneSpec, DA3Encoder, PatchEmbed
from zipsplat_ns.images import square_camera, to_square
from zipsplat_ns.models.layers import NO_CUDNN_BACKENDS, CrossAttentionBlock, Linear, Mlp, SelfAttentionBlock

if TYPE_CHECKING:  # pragma: no cover
    from zipsplat_ns.camera import Camera
    from zipsplat_ns.gaussians import Gaussians
    from zipsplat_ns.pose import Pose

IMAGE_SIZE = 252  # native resolution: 18 x 18 patches of 14 px
TOKENS_PER_VIEW = (IMAGE_SIZE // PATCH_SIZE) ** 2  # 324

Precision = Literal["fp32", "bf16", "fp16", "amp-bf16"]
PRECISIONS = ("fp32", "bf16", "fp16", "amp-bf16")
# storage dtype of the trunk's matmul weights per precision mode (every other mode keeps them in fp32)
_TRUNK_DTYPE = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _check_lead_blocks(name: str, k: int | None, depth: int, *, allow_none: bool = False) -> None:
    """``fp32_blocks`` / ``fp16_blocks`` count leading ViT blocks: ``0 <= k <= depth`` (or None where allowed)."""
    if k is None and allow_none:
        return
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= depth:
        raise ValueError(f"{name} must be an int in [0, {depth}] (the ViT depth), got {k!r}")


@contextmanager
def _tf32_matmuls(enabled: bool) -> Iterator[None]:
    """Within the block, fp32 matmuls may use TF32 tensor cores (``torch.set_float32_matmul_precision("high")``);
    the previous setting is restored afterwards. Used by the fast modes for the fp32 colour branch and head."""
    if not enabled:
        yield
        return
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def _guess_layout(sd: Mapping[str, Tensor], params_per_gaussian: int) -> tuple[str, int] | None:
    """``(variant, Gaussians per token)`` that a ZipSplat state dict was saved from, when its ViT width, depth and
    head size say so; None otherwise."""
    pe, head = sd.get("backbone.backbone.patch_embed.proj.weight"), sd.get("gaussian_head.gaussian_head.1.weight")
    if pe is None or head is None:
        return None
    prefix = "backbone.backbone.blocks."
    depth = 1 + max((int(k[len(prefix):].split(".")[0]) for k in sd if k.startswith(prefix)), default=-1)
    variants = [v for v, spec in BACKBONE_SPECS.items() if spec.embed_dim == pe.shape[0] and spec.depth == depth]
    if len(variants) != 1 or head.shape[0] % params_per_gaussian:
        return None
    return variants[0], head.shape[0] // params_per_gaussian


# ---------------------------------------------------------------------------------------------------------- config
@dataclass
class ZipSplatConfig:
    """Network configuration. ``None`` architecture fields are filled from :data:`BACKBONE_SPECS` for ``variant``.

    ``precision``:
      * ``"fp32"``: exact (the reference runs inference in fp32);
      * ``"bf16"``: fast inference; the Linear weights of backbone, camera encoder, token preparation and fusion are
        *stored* in bf16 and their inputs are cast to bf16 right before each matmul (the numerics of autocast, without
        per-call weight casts); the residual streams, every LayerNorm (incl. qk-norm), LayerScale, RoPE, the patch
        embedding, the colour branch, the Gaussian head and the activations stay fp32 (on CUDA the colour branch and
        head run their fp32 matmuls on TF32 tensor cores). Two departures from plain autocast, both measured on an H200
        (giant, random weights; benchmarks/bench_bf16_recipes.json, bench_profile_inference.json): the patch
        embedding stays fp32 because its rounding is amplified by every block after it (it is about a third of bf16's
        means error) while it costs < 1 ms; the head's fp32 matmuls were 7 % of a 24-view forward without TF32.
        Not for training.
      * ``"fp16"``: the same with fp16 storage (10 mantissa bits against bf16's 7): about 7x smaller error at about
        the same speed (H200, giant: 4 % slower than bf16 compiled at 24 views; benchmarks/bench_inference_h200*.json),
        but a 65504 range: weights whose activations overflow it give non-finite outputs, which raise an error that
        says to use ``"bf16"``. Opt-in.
      * ``"amp-bf16"``: fp32 weights, bf16 autocast around backbone + fusion (for mixed-precision training).

    ``fp16_blocks`` (bf16 mode only; ``None``, the default, means ``depth // 4``: 10 of giant's 40 blocks): the first
    ``fp16_blocks`` ViT blocks store fp16 Linear weights and run their matmuls and attention in fp16, the deeper ones
    bf16. The early blocks' rounding is amplified by every block after them (benchmarks/bench_bf16_sensitivity.json),
    and fp16's 10 mantissa bits round 8x finer than bf16's 7 on the same tensor cores, so this costs no time; the deep
    blocks keep bf16's range, where ViTs grow their large-norm outlier activations. Ours, not the reference's (whose
    inference is fp32): ``fp16_blocks=0`` is plain bf16 storage. If the weights overflow fp16 in those blocks the
    output is non-finite, which raises an error that says to set ``fp16_blocks=0``; never a silent NaN.

    ``fp32_blocks`` (bf16 / fp16 modes; opt-in, default 0): the first ``fp32_blocks`` ViT blocks keep fp32 Linear
    weights (their matmuls run on TF32 tensor cores on CUDA, in fp32 on the CPU; their attention runs in the fast
    dtype, fp16 inside the ``fp16_blocks``). Slower: TF32 runs at half the bf16 rate (H200, giant, random weights, five
    weight draws, ``fp16_blocks=0``: 6 blocks bring bf16's worst means error from 1.27e-2 to 0.82e-2 at 2 and 6 views,
    benchmarks/bench_fp32_blocks.json; 0.85e-2 at worst over V = 2..64 and 71.3 ms against 65.7 ms for a compiled
    24-view forward, bench_inference_h200_fp32_blocks.json against bench_inference_h200.json). Where both counts apply,
    fp32 wins.
    """

    variant: str = "giant"
    # backbone architecture overrides
    embed_dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    alt_start: int | None = None
    ffn: str | None = None
    out_layers: tuple[int, ...] | None = None
    cam_enc_heads: int = 16
    # ZipSplat head / fusion
    gaussians_per_token: int = 32
    sh_degree: int = 1
    color_dim: int = 128
    fuse_layer_scale: float = 0.01
    fuse_mlp_ratio: float = 4.0
    fuse_head_dim: int = 64  # fusion heads = D // 64
    head_hidden_ratio: float = 2.0  # head Mlp: (D + 128) -> 2 (D + 128) -> (D + 128)
    coupled_init: bool = True  # apply init_head() when no weights are loaded
    backbone_weights: str | None = None  # converted DA3 weights (scripts/convert_da3_weights.py) to initialise the backbone
    image_size: int = IMAGE_SIZE
    # speed / memory
    precision: Precision = "fp32"
    fp16_blocks: int | None = None  # bf16 mode: leading ViT blocks in fp16 (None: depth // 4; see above)
    fp32_blocks: int = 0  # fast modes: leading ViT blocks kept in fp32 / TF32 (see above)
    grad_checkpointing: bool = False
    compile: bool = False
    # ours: replay the ViT backbone's forward and backward in training as CUDA graphs, one capture per batch layout
    # (zipsplat_ns/models/cuda_graphs.py; the model graphs its LPIPS-VGG loss the same way); eager kernels, the
    # same function, far less host time per step
    cuda_graphs: bool = False
    use_xformers: bool | None = None  # None: use the fused SwiGLU kernel iff xformers is importable
    # attention kernels of the fusion stage (cross/self-attention over the selected tokens, colour cross-attention):
    # "default" = PyTorch's choice; "no-cudnn" = flash / memory-efficient / math only, which need no per-shape plan
    # (training: the token count changes with the per-batch compression ratio). The same function either way.
    fusion_sdpa: Literal["default", "no-cudnn"] = "default"
    # the same choice for the ViT backbone and the camera encoder (their shapes only change with the batch layout)
    backbone_sdpa: Literal["default", "no-cudnn"] = "default"

    def leading_fp16_blocks(self) -> int:
        """``fp16_blocks`` resolved: ``None`` -> a quarter of the ViT depth (what the bf16 mode runs in fp16)."""
        return self.backbone_spec().depth // 4 if self.fp16_blocks is None else self.fp16_blocks

    def backbone_spec(self) -> BackboneSpec:
        if self.variant not in BACKBONE_SPECS:
            raise ValueError(f"unknown ZipSplat variant {self.variant!r}; choose from {sorted(BACKBONE_SPECS)}")
        base = BACKBONE_SPECS[self.variant]
        over = {
            k: getattr(self, k)
            for k in ("embed_dim", "depth", "num_heads", "alt_start", "ffn", "out_layers")
            if getattr(self, k) is not None
        }
        if "out_layers" in over:
            over["out_layers"] = tuple(sorted(over["out_layers"]))
        spec = replace(base, **over)
        if any(not 0 <= i < spec.depth for i in spec.out_layers):
            raise ValueError(f"out_layers {spec.out_layers} out of range for depth {spec.depth}")
        return spec

    @property
    def params_per_gaussian(self) -> int:
        """3 mean + 3 scale + 4 quat + 1 opacity + 3 (sh_degree+1)^2 SH = 23 at degree 1."""
        return 11 + 3 * (self.sh_degree + 1) ** 2


# ------------------------------------------------------------------------------------------------------ outputs
@dataclass
class ZipSplatOutput:
    """Per-Gaussian tensors (activated), the raw head output and the selected token indices.

    Gaussian ``n`` comes from selected token ``n // 32`` (index into ``token_indices``), slot ``n % 32``.
    """

    means: Float[Tensor, "B N 3"]
    scales: Float[Tensor, "B N 3"]
    quats: Float[Tensor, "B N 4"]  # wxyz, unit norm
    opacities: Float[Tensor, "B N"]
    sh: Float[Tensor, "B N K 3"]  # coefficient-major raw SH (3DGS convention)
    raw: Float[Tensor, "B N C"]  # pre-activation head output, C = 23
    token_indices: Int[Tensor, "B T"]  # selected tokens, indices into the V*324 flattened (view-major) tokens
    num_views: int = 0

    def to_gaussians(self) -> "Gaussians":
        from zipsplat_ns.gaussians import Gaussians

        return Gaussians(means=self.means, scales=self.scales, quats=self.quats, opacities=self.opacities, sh=self.sh)


def activate_gaussians(raw: Float[Tensor, "B N C"], sh_degree: int = 1) -> dict[str, Tensor]:
    """Map raw head channels to Gaussian parameters (§1.9).

    * means ``0:3``: clamp to [-5, 5] then ``sign(y) (exp|y| - 1)`` (signed log-space, range ±147.4);
    * scales ``3:6``: ``softplus(x - 4)`` clamped to [1e-6, 15] (linear sigma);
    * quats ``6:10``: L2-normalised, wxyz;
    * opacity ``10``: sigmoid;
    * SH ``11:``: raw, coefficient-major ``(K, 3)``.
    """
    raw = raw.float()
    y = raw[..., 0:3].clamp(-5.0, 5.0)
    means = torch.sign(y) * torch.expm1(y.abs())
    scales = F.softplus(raw[..., 3:6] - 4.0).clamp(1e-6, 15.0)
    quats = F.normalize(raw[..., 6:10], dim=-1)
    opacities = torch.sigmoid(raw[..., 10])
    k = (sh_degree + 1) ** 2
    sh = raw[..., 11 : 11 + 3 * k].reshape(*raw.shape[:-1], k, 3)
    return dict(means=means, scales=scales, quats=quats, opacities=opacities, sh=sh)


# ------------------------------------------------------------------------------------------------- sub-modules
class GaussianHead(nn.Module):
    """``gaussian_head = Sequential(Mlp(H -> 2H -> H), Linear(H -> G*C))``; always evaluated in fp32."""

    def __init__(self, in_dim: int, gaussians_per_token: int, params_per_gaussian: int, hidden_ratio: float = 2.0):
        super().__init__()
        self.G = gaussians_per_token
        self.C = params_per_gaussian
        self.gaussian_head = nn.Sequential(
            Mlp(in_dim, int(in_dim * hidden_ratio), in_dim), nn.Linear(in_dim, gaussians_per_token * params_per_gaussian)
        )

    @torch.no_grad()
    def coupled_init(self, std: float = 0.02) -> None:
        """All G per-Gaussian slices of the last Linear share one template (``randn * std`` weights; bias zeros except
        z-mean 0.5 -> expm1(0.5)=0.649, scales 0.5 -> softplus(-3.5)=0.0297, opacity -1.5 -> sigmoid=0.182)."""
        lin: nn.Linear = self.gaussian_head[1]
        w = torch.randn(self.C, lin.in_features, device=lin.weight.device, dtype=lin.weight.dtype) * std
        b = torch.zeros(self.C, device=lin.bias.device, dtype=lin.bias.dtype)
        b[2] = 0.5
        b[3:6] = 0.5
        b[10] = -1.5
        lin.weight.copy_(w.repeat(self.G, 1))  # rows [C g, C g + C) = template, for every g
        lin.bias.copy_(b.repeat(self.G))

    def forward(self, tokens: Float[Tensor, "B T H"]) -> Float[Tensor, "B TG C"]:
        with torch.autocast(device_type=tokens.device.type, enabled=False):
            out = self.gaussian_head(tokens.float())
        B, T, _ = out.shape
        # "B T (G C) -> B (T G) C": Gaussian g of token t uses channels [C g, C g + C)
        return out.reshape(B, T * self.G, self.C)


def _gather_tokens(x: Float[Tensor, "B N D"], idx: Int[Tensor, "B K"]) -> Float[Tensor, "B K D"]:
    return torch.gather(x, 1, idx[..., None].expand(*idx.shape, x.shape[-1]))


# ------------------------------------------------------------------------------------------ image preprocessing
# --------------------------------------------------------------------------------------------------- the network
class ZipSplat(nn.Module):
    """Feed-forward 3D Gaussian splatting from V square views (reference doc §1).

    Args:
        variant: ``"giant"`` (released weights), ``"large"``, ``"base"``, ``"small"``, or our CPU-sized ``"tiny"``.
        weights: optional checkpoint source (path / registry name), loaded with ``strict=True``.
        allow_pickle: allow non-weights-only pickle checkpoints (only for trusted files).
        config: a full :class:`ZipSplatConfig` (``variant`` and ``overrides`` are applied on top of it).
        **overrides: any :class:`ZipSplatConfig` field, e.g. ``precision="bf16"``.
    """

    def __init__(
        self,
        variant: str = "giant",
        weights: str | os.PathLike | None = None,
        *,
        allow_pickle: bool = False,
        config: ZipSplatConfig | None = None,
        **overrides: Any,
    ) -> None:
        super().__init__()
        # fp32 originals of the weights down-cast by the bf16 mode (CPU, not in the state dict), see set_precision
        self._fp32_master: dict[str, Tensor] = {}
        self._is_compiled = False  # set by compile(); a later dtype change must drop the compiled graphs
        self._register_load_state_dict_pre_hook(self._refresh_fp32_master)
        self._register_load_state_dict_pre_hook(self._reset_cuda_graphs_on_load)
        valid = {f.name for f in fields(ZipSplatConfig)}
        bad = set(overrides) - valid
        if bad:
            raise TypeError(f"unknown ZipSplat option(s) {sorted(bad)}; valid: {sorted(valid)}")
        cfg = replace(config or ZipSplatConfig(), variant=variant, **overrides)
        if cfg.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {cfg.precision!r}")
        spec = cfg.backbone_spec()
        _check_lead_blocks("fp32_blocks", cfg.fp32_blocks, spec.depth)
        _check_lead_blocks("fp16_blocks", cfg.fp16_blocks, spec.depth, allow_none=True)
        self.config = cfg
        self.spec = spec
        D = spec.embed_dim
        n_taps = len(spec.out_layers)
        heads = max(1, D // cfg.fuse_head_dim)

        self.backbone = DA3Encoder(spec, cam_enc_heads=cfg.cam_enc_heads, use_xformers=cfg.use_xformers)
        self.pre_norm_local = nn.ModuleList(nn.LayerNorm(D) for _ in range(n_taps))
        self.pre_norm_global = nn.ModuleList(nn.LayerNorm(D) for _ in range(n_taps))
        self.downscale = nn.ModuleList(Linear(2 * D, D) for _ in range(n_taps))
        self.cross_attention = nn.ModuleList(
            CrossAttentionBlock(D, heads, cfg.fuse_mlp_ratio, qk_norm=True, init_values=cfg.fuse_layer_scale, delta=True)
            for _ in range(n_taps)
        )
        self.self_attention = nn.ModuleList(
            SelfAttentionBlock(D, heads, cfg.fuse_mlp_ratio, qk_norm=True, init_values=cfg.fuse_layer_scale)
            for _ in range(n_taps)
        )
        C = cfg.color_dim
        self.color_embed = PatchEmbed(3, C)
        self.color_cross_attention = CrossAttentionBlock(
            C, max(1, C // cfg.fuse_head_dim), 1.0, qk_norm=True, init_values=cfg.fuse_layer_scale, delta=False
        )
        self.gaussian_head = GaussianHead(D + C, cfg.gaussians_per_token, cfg.params_per_gaussian, cfg.head_hidden_ratio)
        self.set_fusion_sdpa(cfg.fusion_sdpa)
        self.set_backbone_sdpa(cfg.backbone_sdpa)

        if weights is not None:
            self.load_weights(weights, allow_pickle=allow_pickle)
        else:
            if cfg.coupled_init:
                self.init_head()
            if cfg.backbone_weights is not None:
                self.load_backbone_weights(cfg.backbone_weights, allow_pickle=allow_pickle)
        self._graphed_vit = None
        if cfg.cuda_graphs:
            from zipsplat_ns.models.cuda_graphs import GraphCache

            self._graphed_vit = GraphCache(self.backbone.backbone, "ViT backbone")
        self.set_grad_checkpointing(cfg.grad_checkpointing)
        if cfg.precision in _TRUNK_DTYPE:
            self._cast_trunk()
        if cfg.compile:
            self.compile()

    # ------------------------------------------------------------------------------------------------ setup
    def init_head(self) -> None:
        """Coupled initialisation of the Gaussian head (training from scratch, §1.9)."""
        self.gaussian_head.coupled_init()

    def load_weights(self, source: str | os.PathLike, *, allow_pickle: bool = False) -> None:
        """Load a checkpoint with ``strict=True`` (via :mod:`zipsplat_ns.models.weights`)."""
        from zipsplat_ns.models.weights import load_state_dict_from_source

        sd = load_state_dict_from_source(source, allow_pickle=allow_pickle)
        problem = self.layout_mismatch(sd)
        if problem is not None:
            raise ValueError(f"weights {str(source)!r} do not fit this network: {problem}")
        self.load_state_dict(sd, strict=True)

    def layout_mismatch(self, sd: Mapping[str, Tensor]) -> str | None:
        """Why the state dict ``sd`` cannot load into this network (a short summary, and the variant and Gaussians
        per token the file looks like), or None when its keys and shapes fit."""
        own = self.state_dict()
        missing = [k for k in own if k not in sd]
        unexpected = [k for k in sd if k not in own]
        shapes = [f"{k}: file {tuple(sd[k].shape)}, network {tuple(v.shape)}"
                  for k, v in own.items() if k in sd and tuple(sd[k].shape) != tuple(v.shape)]  # fmt: skip
        if not (missing or unexpected or shapes):
            return None
        parts = [f"{len(x)} {what} (e.g. {', '.join(x[:2])})"
                 for what, x in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes))
                 if x]  # fmt: skip
        cfg = self.config
        msg = f"the network is {cfg.variant!r} with {cfg.gaussians_per_token} Gaussians per token; " + "; ".join(parts)
        guess = _guess_layout(sd, cfg.params_per_gaussian)
        if guess is not None:
            variant, gpt = guess
            msg += (f". The file looks like {variant!r} with {gpt} Gaussians per token: pass --variant {variant} "
                    f"--gaussians-per-token {gpt} (Python: ZipSplat({variant!r}, gaussians_per_token={gpt}))")  # fmt: skip
        return msg

    def load_backbone_weights(self, source: str | os.PathLike, *, allow_pickle: bool = False) -> None:
        """Initialise ``backbone.*`` (DA3 ViT + camera encoder) from converted DA3 weights; the rest keeps its init.

        Every ``backbone.*`` parameter must be present with the right shape (strict for the backbone); keys outside
        it are an error too, so a wrong file or variant never loads silently.
        """
        from zipsplat_ns.models.weights import load_state_dict_from_source

        sd = load_state_dict_from_source(source, allow_pickle=allow_pickle)
        outside = sorted(k for k in sd if not k.startswith("backbone."))
        if outside:
            raise ValueError(
                f"{source}: expected converted DA3 weights (keys 'backbone.backbone.*' / 'backbone.cam_enc.*'), found "
                f"{len(outside)} other key(s) such as {outside[:3]}; convert with scripts/convert_da3_weights.py"
            )
        self.backbone.load_state_dict({k[len("backbone."):]: v for k, v in sd.items()}, strict=True)

    def trunk_modules(self) -> list[nn.Module]:
        """Modules that run in bf16 in the fast mode (everything except colour branch and Gaussian head)."""
        return [
            self.backbone,
            self.pre_norm_local,
            self.pre_norm_global,
            self.downscale,
            self.cross_attention,
            self.self_attention,
        ]

    def trunk_linear_parameters(self) -> dict[str, nn.Parameter]:
        """Weights and biases of every ``nn.Linear`` inside :meth:`trunk_modules`: the parameters whose storage dtype
        the fast modes set (LayerNorm, LayerScale, tokens, pos_embed and the patch-embedding conv always stay fp32)."""
        trunk = {id(m) for t in self.trunk_modules() for m in t.modules()}
        return {
            f"{name}.{pname}": p
            for name, mod in self.named_modules()
            if id(mod) in trunk and isinstance(mod, nn.Linear)
            for pname, p in mod.named_parameters(recurse=False)
        }

    def storage_dtypes(self) -> dict[str, torch.dtype]:
        """Storage dtype of every :meth:`trunk_linear_parameters` entry under the current precision mode: the fast
        dtype, except inside the ViT blocks that ``fp32_blocks`` / ``fp16_blocks`` cover (see ``ZipSplatConfig``)."""
        fast = _TRUNK_DTYPE.get(self.config.precision, torch.float32)
        per_block = self.vit_block_dtypes()
        prefix = "backbone.backbone.blocks."
        return {
            name: per_block[int(name[len(prefix):].split(".", 1)[0])] if name.startswith(prefix) else fast
            for name in self.trunk_linear_parameters()
        }

    def vit_block_dtypes(self) -> list[torch.dtype]:
        """Storage dtype of each ViT block's Linear weights under the current precision mode.

        fp32 / amp-bf16: all fp32. fp16: the first ``fp32_blocks`` fp32, the rest fp16. bf16: the first
        ``fp32_blocks`` fp32, then fp16 up to block ``fp16_blocks``, the rest bf16. Each count is "the first k blocks
        are at least this precise", so fp32 wins where both apply.
        """
        fast = _TRUNK_DTYPE.get(self.config.precision)
        if fast is None:
            return [torch.float32] * self.spec.depth
        k32, n16 = self.num_fp32_blocks(), self.num_fp16_blocks()
        return [torch.float32 if i < k32 else torch.float16 if i < n16 else fast for i in range(self.spec.depth)]

    def num_fp16_blocks(self) -> int:
        """The bf16 mode's ``fp16_blocks`` count, resolved (:meth:`ZipSplatConfig.leading_fp16_blocks`); 0 in every
        other mode."""
        return self.config.leading_fp16_blocks() if self.config.precision == "bf16" else 0

    def matmul_parameters(self) -> dict[str, nn.Parameter]:
        """The trunk Linear parameters that the current mode stores below fp32 (bf16 / fp16)."""
        dtypes = self.storage_dtypes()
        return {n: p for n, p in self.trunk_linear_parameters().items() if dtypes[n] != torch.float32}

    @torch.no_grad()
    def _cast_trunk(self, *, keep_master: bool = True) -> None:
        """Cast every trunk Linear parameter in place to its :meth:`storage_dtypes` entry. Going below fp32, the fp32
        original is kept on the CPU (outside the state dict) and every later cast starts from it (bf16 -> fp16 must not
        keep bf16's rounding), so casting back to fp32 restores it bit for bit."""
        dtypes = self.storage_dtypes()
        fast = _TRUNK_DTYPE.get(self.config.precision)
        n16 = self.num_fp16_blocks()
        # an fp32 ViT block's attention runs in the flash kernels of the dtype it would otherwise have (fp16 inside
        # fp16_blocks, else the fast dtype); None: every other block's attention runs in its own dtype
        for i, (block, dt) in enumerate(zip(self.backbone.backbone.blocks, self.vit_block_dtypes())):
            lowp = torch.float16 if i < n16 else fast
            block.attn.sdpa_dtype = lowp if dt == torch.float32 and fast is not None else None
        changed = False
        for name, p in self.trunk_linear_parameters().items():
            dtype = dtypes[name]
            if p.dtype == dtype:
                continue
            changed = True
            master = self._fp32_master.get(name)
            if master is None and keep_master and p.dtype == torch.float32:
                self._fp32_master[name] = p.detach().to("cpu", copy=True)
            p.data = (master if master is not None else p.data).to(device=p.device, dtype=dtype)
            if dtype == torch.float32:
                self._fp32_master.pop(name, None)
        if changed:
            self._reset_cuda_graphs()
        if changed and self._is_compiled:
            # Graphs traced for the old dtype can be reused after ``.data`` swaps (seen on the H200 with CUDA:
            # a bf16-compiled block called with fp16 weights failed with "mat1 and mat2 must have the same dtype"),
            # so drop them all (process-wide); the blocks recompile for the new dtype on their next call.
            from torch import _dynamo

            _dynamo.reset()

    def _reset_cuda_graphs(self) -> None:
        """Drop the backbone's captured CUDA graphs (parameters moved, were replaced or changed dtype)."""
        graphed = getattr(self, "_graphed_vit", None)
        if graphed is not None:
            graphed.reset()

    def _apply(self, fn, *args, **kwargs):  # .to() / .cuda() / .half() may give parameters new storage
        out = super()._apply(fn, *args, **kwargs)
        self._reset_cuda_graphs()
        return out

    def _reset_cuda_graphs_on_load(self, *args) -> None:
        """load_state_dict pre-hook: ``assign=True`` loading replaces the parameters the captured graphs point to."""
        self._reset_cuda_graphs()

    def _refresh_fp32_master(self, state_dict, prefix, *args) -> None:
        """load_state_dict pre-hook: in the bf16 mode, remember the loaded fp32 values (bf16 params only keep the
        rounded ones) so that ``set_precision("fp32")`` afterwards still gives the exact checkpoint."""
        for name in list(self._fp32_master):
            v = state_dict.get(prefix + name)
            if isinstance(v, Tensor):
                self._fp32_master[name] = v.detach().to("cpu", torch.float32, copy=True)

    @contextmanager
    def fp32_inference(self) -> Iterator[None]:
        """Run an ``amp-bf16`` network without autocast for the duration: the reference's inference is fp32, and the
        weights of that mode are fp32 already. Networks in other modes are left as they are."""
        if self.config.precision != "amp-bf16":
            yield
            return
        previous = self.config
        self.config = replace(previous, precision="fp32")
        try:
            yield
        finally:
            self.config = previous

    def set_precision(
        self,
        precision: Precision,
        *,
        fp32_blocks: int | None = None,
        fp16_blocks: int | None | Literal["keep"] = "keep",
        keep_fp32_master: bool = True,
    ) -> "ZipSplat":
        """Switch precision mode in place: re-cast the stored trunk Linear weights to the mode's
        :meth:`storage_dtypes` (bf16 / fp16 for the fast modes, fp32 otherwise). ``fp32_blocks`` (when not None) and
        ``fp16_blocks`` (unless ``"keep"``; None = ``depth // 4``) set those config fields too.

        Going to ``"bf16"`` / ``"fp16"`` keeps a CPU copy of the fp32 originals (``keep_fp32_master``, not in the
        state dict), so that switching back (or between bf16 and fp16) starts from the exact fp32 weights; without it
        (or if weights were written in place while in bf16 other than through ``load_state_dict``) switching only
        re-casts the rounded values. On a compiled network a dtype change drops the compiled graphs (process-wide).
        """
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        k32 = self.config.fp32_blocks if fp32_blocks is None else fp32_blocks
        k16 = self.config.fp16_blocks if fp16_blocks == "keep" else fp16_blocks
        _check_lead_blocks("fp32_blocks", k32, self.spec.depth)
        _check_lead_blocks("fp16_blocks", k16, self.spec.depth, allow_none=True)
        self.config.fp32_blocks, self.config.fp16_blocks, self.config.precision = k32, k16, precision
        self._cast_trunk(keep_master=keep_fp32_master)
        return self

    def num_fp32_blocks(self) -> int:
        """How many leading ViT blocks the current precision mode keeps in fp32 (``ZipSplatConfig.fp32_blocks``)."""
        return self.config.fp32_blocks if self.config.precision in _TRUNK_DTYPE else 0

    def set_fusion_sdpa(self, mode: str) -> "ZipSplat":
        """Attention kernels of the fusion stage: ``"default"`` (PyTorch's choice) or ``"no-cudnn"`` (see the config)."""
        blocks = (*self.cross_attention, *self.self_attention, self.color_cross_attention)
        return self._set_sdpa("fusion_sdpa", mode, blocks)

    def set_backbone_sdpa(self, mode: str) -> "ZipSplat":
        """Attention kernels of the ViT backbone and the camera encoder: ``"default"`` or ``"no-cudnn"``."""
        return self._set_sdpa("backbone_sdpa", mode, (*self.backbone.backbone.blocks, *self.backbone.cam_enc.trunk))

    def _set_sdpa(self, field: str, mode: str, blocks: Sequence[nn.Module]) -> "ZipSplat":
        """Set config ``field`` to ``mode`` and restrict the SDPA backends of ``blocks``' attention accordingly."""
        if mode not in ("default", "no-cudnn"):
            raise ValueError(f"{field} must be 'default' or 'no-cudnn', got {mode!r}")
        setattr(self.config, field, mode)
        backends = NO_CUDNN_BACKENDS if mode == "no-cudnn" else None
        for block in blocks:
            block.attn.sdpa_backends = backends
        return self

    def set_grad_checkpointing(self, enabled: bool = True) -> "ZipSplat":
        """Recompute every transformer block in the backward pass (``torch.utils.checkpoint``) to save memory."""
        self.config.grad_checkpointing = enabled
        self.backbone.backbone.grad_checkpointing = enabled
        return self

    def compile(  # type: ignore[override]
        self, mode: str | None = None, *, dynamic: bool | None = False, **kwargs: Any
    ) -> "ZipSplat":
        """``torch.compile`` every transformer block in place (the data-dependent k-means stays eager).

        ``mode`` is passed to ``torch.compile`` (e.g. ``"max-autotune-no-cudagraphs"``; ``None`` = default);
        ``dynamic=False`` (default) specialises on shapes. In-place ``nn.Module.compile`` keeps the state-dict keys.
        Blocks of the same structure share compiled graphs (parameters are graph inputs), but local/global, RoPE on/off,
        dtype and every new view count add graphs, so dynamo's recompile limit is raised. The first call per shape is
        slow (compilation); later calls fuse the element-wise work (casts, LayerNorm, LayerScale, residuals, RoPE,
        SwiGLU gate).
        """
        if mode is not None:
            kwargs["mode"] = mode
        kwargs["dynamic"] = dynamic
        import torch._dynamo

        for name in ("cache_size_limit", "recompile_limit", "accumulated_cache_size_limit", "accumulated_recompile_limit"):
            if hasattr(torch._dynamo.config, name):
                setattr(torch._dynamo.config, name, max(int(getattr(torch._dynamo.config, name)), 256))
        blocks: list[nn.Module] = [
            *self.backbone.backbone.blocks,
            *self.backbone.cam_enc.trunk,
            *self.cross_attention,
            *self.self_attention,
            self.color_cross_attention,
            self.gaussian_head.gaussian_head,
        ]
        for b in blocks:
            b.compile(**kwargs)
        self._is_compiled = True
        return self

    @property
    def device(self) -> torch.device:
        return self.gaussian_head.gaussian_head[1].weight.device

    @property
    def embed_dim(self) -> int:
        return self.spec.embed_dim

    # ------------------------------------------------------------------------------------------------ inputs
    def _prepare_inputs(
        self, images, cameras, poses, use_priors: bool, compression: float
    ) -> tuple[Tensor, Any, Any]:
        if not isinstance(compression, (int, float)) or not (0.0 < float(compression) <= 1.0):
            raise ValueError(f"compression must be in (0, 1], got {compression!r}")
        if (cameras is not None or poses is not None) and not use_priors:
            warnings.warn(
                "ZipSplat: cameras/poses were given but use_priors=False; they are ignored (pose-free inference). "
                "Pass use_priors=True to condition on them.",
                stacklevel=3,
            )
            cameras = poses = None
        if use_priors and (cameras is None or poses is None):
            raise ValueError("use_priors=True needs both cameras and poses (c2w, view 0 = reference frame)")
        if use_priors:
            from zipsplat_ns.camera import ensure_camera
            from zipsplat_ns.pose import ensure_pose

            cameras, poses = ensure_camera(cameras, "cameras"), ensure_pose(poses, "poses")

        S = self.config.image_size
        device = self.device
        if isinstance(images, (list, tuple)):
            if len(images) == 0:
                raise ValueError("images: empty list")
            sizes = []
            for i, im in enumerate(images):
                if not isinstance(im, Tensor) or im.ndim != 3 or im.shape[0] != 3:
                    raise ValueError(f"images[{i}]: expected a (3, H, W) tensor, got {getattr(im, 'shape', type(im))}")
                if min(im.shape[1:]) < PATCH_SIZE:
                    raise ValueError(f"images[{i}]: image too small {tuple(im.shape)}")
                sizes.append((im.shape[2], im.shape[1]))  # (w, h)
            batch = torch.stack([to_square(im, S)[0] for im in images])[None].to(device)
            if cameras is not None:  # intrinsics follow each image's centre crop and resize
                cameras = square_camera(cameras.to(torch.float32), sizes, S)
            images = batch
        elif isinstance(images, Tensor):
            if images.ndim == 4:
                images = images[None]
            if images.ndim != 5 or images.shape[2] != 3:
                raise ValueError(
                    f"images: expected (B, V, 3, H, W) or (V, 3, H, W) tensor or a list of (3, H, W), got "
                    f"{tuple(images.shape)}"
                )
            if not images.is_floating_point():
                raise ValueError(f"images: expected float values in [0, 1], got dtype {images.dtype}")
            h, w = images.shape[-2:]
            if (h, w) != (S, S):  # centre crop + resize as for lists (the reference's to_square on any tensor)
                if min(h, w) < PATCH_SIZE:
                    raise ValueError(f"images: image too small {tuple(images.shape)}")
                flat = images.reshape(-1, 3, h, w)
                images = torch.stack([to_square(im, S)[0] for im in flat]).reshape(*images.shape[:2], 3, S, S)
                if cameras is not None:
                    cameras = square_camera(cameras.to(torch.float32), (w, h), S)
            images = images.to(device=device, dtype=torch.float32)
        else:
            raise TypeError(f"images: expected a tensor or a list of tensors, got {type(images).__name__}")

        B, V = images.shape[:2]
        if use_priors:
            cameras, poses = cameras.to(device), poses.to(device)
            for name, obj in (("cameras", cameras), ("poses", poses)):
                shp = tuple(obj.shape)
                if shp == (V,):
                    obj = obj[None].reshape(1, V) if B == 1 else None
                elif shp == (1, V) and B > 1:
                    obj = None
                if obj is None or tuple(obj.shape) != (B, V):
                    raise ValueError(f"{name}: batch shape must be (B, V) = {(B, V)} (or (V,) when B = 1), got {shp}")
                if name == "cameras":
                    cameras = obj
                else:
                    poses = obj
        return images, cameras, poses

    # --------------------------------------------------------------------------------------------- pipeline
    def _trunk_autocast(self, device: torch.device):
        # CUDA-graph capture needs autocast's weight-cast cache off (each weight is cast once per forward anyway)
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=self.config.precision == "amp-bf16",
                              cache_enabled=not self.config.cuda_graphs)  # fmt: skip

    def _run_backbone(self, images: Tensor, cameras, poses) -> list[Tensor]:
        """The backbone's taps: replayed from CUDA graphs in training when ``cuda_graphs`` is on, else eager."""
        graphed, vit = self._graphed_vit, self.backbone.backbone
        if graphed is not None and vit.training and not vit.grad_checkpointing and graphed.usable(images):
            return graphed(images, self.backbone.camera_tokens(cameras, poses, images.device))
        return self.backbone(images, cameras, poses)

    def _prepare(self, l: int, feat: Float[Tensor, "B V P 2D"]) -> Float[Tensor, "B VP D"]:
        """LayerNorm both halves, project 2D -> D and add the mean of the halves (fuse-skip residual)."""
        D = self.embed_dim
        local = self.pre_norm_local[l](feat[..., :D])
        glob = self.pre_norm_global[l](feat[..., D:])
        tok = self.downscale[l](torch.cat([local, glob], -1)) + (local + glob) / 2
        return tok.flatten(1, 2)

    def _maybe_ckpt(self, fn, *args):
        if self.config.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def predict(
        self,
        images: Float[Tensor, "B V 3 H W"] | Float[Tensor, "V 3 H W"] | Sequence[Float[Tensor, "3 h w"]],
        cameras: "Camera | None" = None,
        poses: "Pose | None" = None,
        use_priors: bool = False,
        compression: float = 1.0,
    ) -> ZipSplatOutput:
        """Full forward pass returning per-Gaussian tensors, the raw head output and the selected token indices."""
        images, cameras, poses = self._prepare_inputs(images, cameras, poses, use_priors, compression)
        B, V = images.shape[:2]
        fast_cuda = self.config.precision in _TRUNK_DTYPE and images.is_cuda
        with self._trunk_autocast(images.device):
            with _tf32_matmuls(fast_cuda and self.num_fp32_blocks() > 0):  # only the fp32 blocks' matmuls are fp32
                feats = self._run_backbone(images, cameras, poses)[::-1]  # deepest tap first (index 0 = last out_layer)
            layer_tokens = [self._prepare(l, f) for l, f in enumerate(feats)]  # each (B, V*P, D)
            N = layer_tokens[0].shape[1]
            K = kmeans_lib.num_selected_tokens(N, compression)
            if K >= N:  # no compression: every token, in order (gather would be an identity copy)
                idx = torch.arange(N, device=images.device).expand(B, N)
                gather = lambda x: x  # noqa: E731
            else:
                idx = kmeans_lib.select_tokens(layer_tokens[0], compression)
                gather = lambda x: _gather_tokens(x, idx)  # noqa: E731
            scene = gather(layer_tokens[0])
            for l, keys in enumerate(layer_tokens):
                scene = scene + self._maybe_ckpt(self.cross_attention[l], gather(keys), keys)
                scene = self._maybe_ckpt(self.self_attention[l], scene)
        # colour skip branch (fp32): 14x14 patch embedding of the raw RGB, then standard cross-attention
        with _tf32_matmuls(fast_cuda):
            color_tokens = self.color_embed(images.flatten(0, 1).float()).reshape(B, -1, self.config.color_dim)
            color_feats = self.color_cross_attention(gather(color_tokens), color_tokens)
            raw = self.gaussian_head(torch.cat([scene.float(), color_feats.float()], -1))
        n16 = self.num_fp16_blocks()
        if (self.config.precision == "fp16" or n16 > 0) and not bool(torch.isfinite(raw).all()):
            if self.config.precision == "fp16":
                fix = "use precision='bf16' (about the same speed, bf16's range) or 'fp32'"
            else:
                fix = (f"the bf16 mode runs its first {n16} ViT blocks in fp16 (fp16_blocks); set fp16_blocks=0 "
                       "(plain bf16, a little less accurate) or use precision='fp32'")
            raise FloatingPointError(
                f"precision={self.config.precision!r}: the network's output is not finite (an activation exceeded "
                f"fp16's range of 65504 with these weights, or the input is not finite); {fix}"
            )
        act = activate_gaussians(raw, self.config.sh_degree)
        return ZipSplatOutput(**act, raw=raw, token_indices=idx, num_views=V)

    def forward(
        self,
        images: Float[Tensor, "B V 3 H W"] | Float[Tensor, "V 3 H W"] | Sequence[Float[Tensor, "3 h w"]],
        cameras: "Camera | None" = None,
        poses: "Pose | None" = None,
        use_priors: bool = False,
        compression: float = 1.0,
    ) -> "Gaussians":
        """Predict ``int(V * 324 * compression) * 32`` Gaussians per sample, in view 0's OpenCV camera frame.

        ``images`` are floats in [0, 1] (no normalisation): a ``(B, V, 3, 252, 252)`` / ``(V, 3, 252, 252)`` tensor,
        or a list of ``(3, H, W)`` tensors of any size (centre-cropped and resized, see :func:`zipsplat_ns.images.to_square`).
        ``cameras``/``poses`` (batch ``(B, V)``, c2w OpenCV) are only used with ``use_priors=True``. Gradients flow
        (for training); wrap inference in ``torch.inference_mode()``.
        """
        return self.predict(images, cameras, poses, use_priors, compression).to_gaussians()


def count_gaussians(num_views: int, compression: float = 1.0, gaussians_per_token: int = 32) -> int:
    """``int(V * 324 * compression) * 32`` (at least one token)."""
    return max(1, int(num_views * TOKENS_PER_VIEW * compression)) * gaussians_per_token


__all__ = [
    "ZipSplat",
    "ZipSplatConfig",
    "ZipSplatOutput",
    "activate_gaussians",
    "count_gaussians",
    "IMAGE_SIZE",
    "TOKENS_PER_VIEW",
]
