"""DA3 (Depth-Anything-3) DINOv2-style ViT with alternating local/global attention, plus the camera-prior encoder.

Implements reference doc §1.3 (backbone) and §1.4 (``CameraEnc``). The wrapper :class:`DA3Encoder` holds both as
``backbone`` and ``cam_enc`` so that, inside :class:`~zipsplat_ns.models.network.ZipSplat` (attribute ``backbone``),
the state-dict keys are ``backbone.backbone.*`` and ``backbone.cam_enc.*`` (§7.3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from zipsplat_ns.models.layers import Conv2d, Mlp, SelfAttentionBlock
from zipsplat_ns.models.rope import RoPE2D

PATCH_SIZE = 14
PRETRAIN_IMG_SIZE = 518  # pos_embed covers a 37x37 grid (+1 CLS slot)
INTERPOLATE_OFFSET = 0.1  # DINOv2 interpolation offset: scale = (grid + 0.1) / 37


@dataclass(frozen=True)
class BackboneSpec:
    """Architecture of one DA3 backbone size."""

    embed_dim: int
    depth: int
    num_heads: int
    alt_start: int  # first global block; also the first block with qk-norm and RoPE, and the camera-token slot
    ffn: str  # "mlp" (GELU) or "swiglu"
    out_layers: tuple[int, ...]  # tapped blocks, ascending (ZipSplat yaml values)


BACKBONE_SPECS: dict[str, BackboneSpec] = {
    # reference variants (§1.3 table; alt_start from the zipsplat factories; out_layers from the ZipSplat yamls)
    "small": BackboneSpec(384, 12, 6, 4, "mlp", (5, 7, 11)),
    "base": BackboneSpec(768, 12, 12, 4, "mlp", (5, 8, 11)),
    "large": BackboneSpec(1024, 24, 16, 8, "mlp", (11, 17, 23)),
    "giant": BackboneSpec(1536, 40, 24, 13, "swiglu", (19, 29, 39)),
    # OUR addition (not in the reference, no weights exist): a small model for CPU demos and unit tests.
    "tiny": BackboneSpec(192, 8, 3, 2, "mlp", (3, 5, 7)),
}


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch x patch`` convolution ``(N, 3, H, W) -> (N, (H/p)(W/p), D)``; parameter ``proj``."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int = PATCH_SIZE) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Float[Tensor, "N C H W"]) -> Float[Tensor, "N P D"]:
        return self.proj(x).flatten(2).transpose(1, 2)


class DA3ViT(nn.Module):
    """DINOv2-style ViT with DA3's alternating attention, camera-token bank and concatenated local/global taps.

    * blocks ``i < alt_start`` attend within each view; from ``alt_start`` on, odd blocks attend over all views
      jointly (global) and even blocks per view (local);
    * qk-norm and 2D RoPE are active in blocks ``i >= alt_start``;
    * at block ``alt_start`` token 0 (the CLS slot) of every view is replaced by a camera token: the learned
      ``camera_token[0]`` ("ref") for view 0 and ``camera_token[1]`` ("src") for the others, or the prior encoder
      output when given;
    * each tap is ``cat([local_x, x])`` where ``local_x`` is the most recent local block's output; the final
      ``norm`` is applied only to the global half; token 0 is dropped.
    """

    def __init__(self, spec: BackboneSpec, *, use_xformers: bool | None = None) -> None:
        super().__init__()
        D = spec.embed_dim
        self.spec = spec
        self.embed_dim = D
        self.alt_start = spec.alt_start
        self.out_layers = tuple(spec.out_layers)
        self.grad_checkpointing = False
        grid = PRETRAIN_IMG_SIZE // PATCH_SIZE
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.camera_token = nn.Parameter(torch.zeros(1, 2, D))  # [ref, src]
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, D))
        self.patch_embed = PatchEmbed(3, D)
        self.blocks = nn.ModuleList(
            SelfAttentionBlock(
                D,
                spec.num_heads,
                4.0,
                qk_norm=i >= spec.alt_start,
                init_values=1.0,
                norm_eps=1e-6,
                ffn=spec.ffn,
                use_xformers=use_xformers,
            )
            for i in range(spec.depth)
        )
        self.norm = nn.LayerNorm(D, eps=1e-6)
        self.rope = RoPE2D()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Random init (ViT-style); only used when no pretrained weights are loaded."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        nn.init.normal_(self.camera_token, std=1e-6)
        for m in self.blocks.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def is_global(self, i: int) -> bool:
        return i >= self.alt_start and i % 2 == 1

    def interpolate_pos_embed(self, grid_h: int, grid_w: int, dtype: torch.dtype) -> Float[Tensor, "1 L D"]:
        """Bicubic resize of the 37x37 patch position grid with DINOv2's ``(grid + 0.1) / 37`` scale factor.

        The scale factor (not an output size) is passed to ``F.interpolate`` on purpose: PyTorch then uses it in the
        source-coordinate mapping, which is what the pretrained weights were used with.
        """
        pos = self.pos_embed
        # Inference: the resized table depends only on the weights and the grid, so it is cached (the bicubic resize of
        # the 37x37 table costs several ms on a GPU). The key includes the parameter's version counter and storage,
        # so loading or editing weights invalidates it; with autograd enabled nothing is cached, nor for a model built
        # under torch.inference_mode (inference tensors have no version counter, so an edit could not be seen).
        cacheable = not torch.is_grad_enabled() and not pos.is_inference()
        cache_key = (grid_h, grid_w, dtype, pos.device, pos._version, pos.data_ptr()) if cacheable else None
        if cacheable and getattr(self, "_pos_cache_key", None) == cache_key:
            return self._pos_cache
        out = self._interpolate_pos_embed(pos, grid_h, grid_w, dtype)
        if cacheable:
            self._pos_cache_key, self._pos_cache = cache_key, out
        return out

    @staticmethod
    def _interpolate_pos_embed(pos: Tensor, grid_h: int, grid_w: int, dtype: torch.dtype) -> Float[Tensor, "1 L D"]:
        M = int(math.sqrt(pos.shape[1] - 1))
        cls_pos, patch_pos = pos[:, :1], pos[:, 1:]
        if grid_h == M and grid_w == M:
            return pos.to(dtype)
        grid = patch_pos.reshape(1, M, M, -1).permute(0, 3, 1, 2).float()
        sy = (grid_h + INTERPOLATE_OFFSET) / M
        sx = (grid_w + INTERPOLATE_OFFSET) / M
        grid = F.interpolate(grid, scale_factor=(sy, sx), mode="bicubic", antialias=False)
        if tuple(grid.shape[-2:]) != (grid_h, grid_w):
            raise RuntimeError(f"pos_embed interpolation gave {tuple(grid.shape[-2:])}, expected {(grid_h, grid_w)}")
        patch_pos = grid.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, -1)
        return torch.cat([cls_pos.float(), patch_pos], 1).to(dtype)

    def _run_block(self, blk: nn.Module, x: Tensor, rope) -> Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(blk, x, rope, use_reentrant=False)
        return blk(x, rope)

    def forward(
        self, images: Float[Tensor, "B S 3 H W"], camera_tokens: Float[Tensor, "B S D"] | None = None
    ) -> list[Float[Tensor, "B S P 2D"]]:
        """Return one ``(B, S, P, 2D)`` feature per entry of ``out_layers`` (ascending), P = patches per view."""
        B, S, _, H, W = images.shape
        if H % PATCH_SIZE or W % PATCH_SIZE:
            raise ValueError(f"image size {H}x{W} must be a multiple of {PATCH_SIZE}")
        gh, gw = H // PATCH_SIZE, W // PATCH_SIZE
        D = self.embed_dim
        # residual-stream dtype = the (never down-cast) token parameters' dtype: fp32 also in the bf16 fast mode,
        # where only the matmul weights are bf16 (their inputs are cast inside Linear / Conv2d)
        dtype = self.cls_token.dtype
        x = self.patch_embed(images.reshape(B * S, 3, H, W).to(dtype)).to(dtype)  # (BS, P, D)
        x = torch.cat([self.cls_token.expand(B * S, -1, -1), x], 1)
        x = x + self.interpolate_pos_embed(gh, gw, dtype)
        L = x.shape[1]
        x = x.reshape(B, S, L, D)

        local_x = x
        taps: list[Tensor] = []
        # RoPE tables: looked up once per forward (cached per grid / views / device / dtype inside RoPE2D)
        head_dim = D // self.spec.num_heads
        rope_kw = dict(num_views=S, device=x.device, dtype=x.dtype)
        rope_local = self.rope.tables(gh, gw, head_dim, global_attn=False, **rope_kw)
        rope_global = self.rope.tables(gh, gw, head_dim, global_attn=True, **rope_kw)
        for i, blk in enumerate(self.blocks):
            if i == self.alt_start:
                if camera_tokens is None:
                    ref = self.camera_token[:, :1].expand(B, 1, D)
                    src = self.camera_token[:, 1:].expand(B, S - 1, D)
                    cam = torch.cat([ref, src], 1)
                else:
                    cam = camera_tokens
                x = torch.cat([cam.to(x.dtype)[:, :, None], x[:, :, 1:]], 2)
            glob = self.is_global(i)
            rope = None
            if i >= self.alt_start:  # rope_start == alt_start
                rope = rope_global if glob else rope_local
            if glob:
                x = self._run_block(blk, x.reshape(B, S * L, D), rope).reshape(B, S, L, D)
            else:
                x = self._run_block(blk, x.reshape(B * S, L, D), rope).reshape(B, S, L, D)
                local_x = x
            if i in self.out_layers:
                taps.append(torch.cat([local_x, x], -1))
        # final norm only on the global half, then drop token 0 (camera / CLS slot)
        return [torch.cat([t[..., :D], self.norm(t[..., D:])], -1)[:, :, 1:] for t in taps]


def pose_encoding(cameras, poses) -> Float[Tensor, "*batch 9"]:
    """9-D camera encoding ``[t_w2c (3), quat_w2c xyzw (4), vfov, hfov]`` (radians) from c2w poses and intrinsics."""
    w2c = poses.inv()
    quat_wxyz = w2c.quat
    quat_xyzw = torch.cat([quat_wxyz[..., 1:], quat_wxyz[..., :1]], -1)
    fov = torch.stack([cameras.vfov, cameras.hfov], -1).to(w2c.t.dtype)
    return torch.cat([w2c.t, quat_xyzw, fov.to(w2c.t.device)], -1)


class CameraEnc(nn.Module):
    """Camera-prior encoder: 9-D pose encoding -> per-view camera tokens that replace the CLS slot (§1.4).

    ``pose_branch`` (Mlp 9 -> D/2 -> D) -> ``token_norm`` -> ``trunk`` (4 self-attention blocks across the views of a
    sample; 16 heads, LayerScale 0.01, no qk-norm, no RoPE) -> ``trunk_norm``.
    """

    def __init__(self, dim: int, num_heads: int = 16, depth: int = 4) -> None:
        super().__init__()
        self.pose_branch = Mlp(9, dim // 2, dim)
        self.token_norm = nn.LayerNorm(dim)
        # Norm eps is not stated in the reference doc; default nn.LayerNorm (1e-5) is assumed here.
        self.trunk = nn.Sequential(
            *[SelfAttentionBlock(dim, num_heads, 4.0, qk_norm=False, init_values=0.01) for _ in range(depth)]
        )
        self.trunk_norm = nn.LayerNorm(dim)

    def forward(self, encoding: Float[Tensor, "B S 9"]) -> Float[Tensor, "B S D"]:
        dtype = self.token_norm.weight.dtype  # stream dtype (fp32 also in the bf16 fast mode)
        x = self.token_norm(self.pose_branch(encoding.to(dtype)).to(dtype))
        return self.trunk_norm(self.trunk(x))


class DA3Encoder(nn.Module):
    """Holds the ViT (``backbone``) and the camera-prior encoder (``cam_enc``)."""

    def __init__(self, spec: BackboneSpec, *, cam_enc_heads: int = 16, use_xformers: bool | None = None) -> None:
        super().__init__()
        self.backbone = DA3ViT(spec, use_xformers=use_xformers)
        self.cam_enc = CameraEnc(spec.embed_dim, num_heads=cam_enc_heads)

    def forward(
        self, images: Float[Tensor, "B S 3 H W"], cameras=None, poses=None
    ) -> list[Float[Tensor, "B S P 2D"]]:
        """Features of the tapped layers (ascending). Priors are used iff both ``cameras`` and ``poses`` are given."""
        return self.backbone(images, self.camera_tokens(cameras, poses, images.device))

    def camera_tokens(self, cameras=None, poses=None, device=None) -> Float[Tensor, "B S D"] | None:
        """The prior encoder's per-view camera tokens, or None without priors (the ViT then uses its own)."""
        if cameras is None or poses is None:
            return None
        enc = pose_encoding(cameras, poses)
        return self.cam_enc(enc.to(device) if device is not None else enc)
