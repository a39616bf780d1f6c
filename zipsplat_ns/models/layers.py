"""Transformer building blocks for the ZipSplat network (reference doc §1.3, §1.7, §1.8).

Parameter names follow the released checkpoint layout (§7.3): ``LayerScale.gamma``, ``Mlp.fc1/fc2``,
``SwiGLUFFN.w12/w3``, ``SelfAttention.qkv/q_norm/k_norm/proj``, ``CrossAttention.q_proj/kv_proj/q_norm/k_norm/proj``.
All attention goes through :func:`torch.nn.functional.scaled_dot_product_attention` (flash / memory-efficient kernels
when available) with the default ``1/sqrt(head_dim)`` scale.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from zipsplat_ns.models.rope import apply_rope_2d_signed

try:  # optional fused SwiGLU kernel (the reference checkpoint was trained with it)
    from xformers.ops import swiglu as _xformers_swiglu  # type: ignore

    XFORMERS_AVAILABLE = True
except Exception:  # pragma: no cover - xformers is optional
    _xformers_swiglu = None
    XFORMERS_AVAILABLE = False

QK_NORM_EPS = 1e-5  # qk-norm is a default nn.LayerNorm(head_dim) in every attention module
_LOW_PRECISION = (torch.bfloat16, torch.float16)

# SDPA backends without cuDNN: PyTorch's cuDNN attention builds an execution plan on the CPU for every new shape, which
# dominates a step whose attention lengths are new (the fusion stage's token count changes with the per-batch
# compression ratio in training). The flash / memory-efficient kernels need no per-shape plan. Same function.
NO_CUDNN_BACKENDS = (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH)


def _sdpa(q: Tensor, k: Tensor, v: Tensor, backends: "tuple[SDPBackend, ...] | None") -> Tensor:
    """``F.scaled_dot_product_attention`` (default scale), restricted to ``backends`` when given."""
    if backends is None:
        return F.scaled_dot_product_attention(q, k, v)
    with sdpa_kernel(list(backends)):
        return F.scaled_dot_product_attention(q, k, v)


def cast_for_weight(x: Tensor, w: Tensor) -> Tensor:
    """The fast modes' input rule: a bf16 / fp16 *stored* weight gets its input cast to its dtype right before the
    matmul (the numerics of autocast, without casting the weight on every call); with an fp32 weight, ``x`` as is."""
    return x.to(w.dtype) if w.dtype in _LOW_PRECISION and x.dtype != w.dtype else x


class Linear(nn.Linear):
    """``nn.Linear`` that also runs with low-precision *stored* weights on a higher-precision input.

    When the weight is bf16/fp16 and the input is not, the input is cast to the weight dtype right before the matmul
    and the output stays in the weight dtype (the numerics of autocast, without casting the weights on every call).
    With fp32 weights it is exactly ``nn.Linear`` (no cast; under autocast, autocast does the casting).
    Same parameters / state-dict keys as ``nn.Linear``.
    """

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(cast_for_weight(x, self.weight), self.weight, self.bias)


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` with the same input-cast rule as :class:`Linear` (used for the patch embedding)."""

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(cast_for_weight(x, self.weight), self.weight, self.bias)


def _qk_norm_rope(t: Tensor, norm: nn.Module, rope: "RopeTables | None") -> Tensor:
    """qk-norm then RoPE on one ``(B, H, L, Dh)`` tensor.

    A low-precision ``t`` (bf16 fast mode) is normalised and rotated in fp32 (LayerNorm weights are fp32 there) and
    cast back once at the end, which is what autocast does; with an fp32 ``t`` every cast is a no-op.
    """
    if isinstance(norm, nn.Identity) and rope is None:
        return t
    dtype = t.dtype
    t = norm(t.to(norm.weight.dtype)) if isinstance(norm, nn.LayerNorm) else t
    if rope is not None:
        t = apply_rope_2d_signed(t, *rope)
    return t.to(dtype)


class LayerScale(nn.Module):
    """Per-channel scaling ``x * gamma`` (gamma initialised to ``init_values``)."""

    def __init__(self, dim: int, init_values: float = 1.0) -> None:
        super().__init__()
        self.init_values = init_values
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def reset_parameters(self) -> None:
        nn.init.constant_(self.gamma, self.init_values)

    def forward(self, x: Float[Tensor, "... D"]) -> Float[Tensor, "... D"]:
        return x * self.gamma


class Mlp(nn.Module):
    """Two-layer GELU MLP ``fc2(gelu(fc1(x)))`` (exact erf GELU)."""

    def __init__(self, in_features: int, hidden_features: int | None = None, out_features: int | None = None) -> None:
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = Linear(hidden_features, out_features)

    def forward(self, x: Float[Tensor, "... Din"]) -> Float[Tensor, "... Dout"]:
        return self.fc2(self.act(self.fc1(x)))


def swiglu_hidden_dim(dim: int, mlp_ratio: float = 4.0) -> int:
    """DINOv2 fused-SwiGLU hidden size: 2/3 of ``dim * mlp_ratio``, rounded up to a multiple of 8 (4096 for 1536)."""
    return (int(int(dim * mlp_ratio) * 2 / 3) + 7) // 8 * 8


class SwiGLUFFN(nn.Module):
    """SwiGLU FFN ``w3(silu(x1) * x2)`` with ``[x1, x2] = w12(x)``.

    Uses xformers' fused kernel on CUDA when importable (numerically closest to how the checkpoint was trained) and a
    plain PyTorch path otherwise; the parameters are the same either way.
    """

    def __init__(self, dim: int, mlp_ratio: float = 4.0, use_xformers: bool | None = None) -> None:
        super().__init__()
        hidden = swiglu_hidden_dim(dim, mlp_ratio)
        self.hidden = hidden
        self.w12 = Linear(dim, 2 * hidden)
        self.w3 = Linear(hidden, dim)
        self.use_xformers = XFORMERS_AVAILABLE if use_xformers is None else (use_xformers and XFORMERS_AVAILABLE)

    def forward(self, x: Float[Tensor, "... D"]) -> Float[Tensor, "... D"]:
        if self.use_xformers and x.is_cuda and _xformers_swiglu is not None:
            x = cast_for_weight(x, self.w12.weight)  # fused kernel needs one dtype (bf16 fast mode: fp32 stream)
            w1, w2 = self.w12.weight.chunk(2, dim=0)
            b1, b2 = self.w12.bias.chunk(2, dim=0)
            try:
                return _xformers_swiglu(x, w1, b1, w2, b2, self.w3.weight, self.w3.bias)
            except Exception as e:  # pragma: no cover - depends on the xformers build
                warnings.warn(f"xformers swiglu failed ({type(e).__name__}: {e}); using the PyTorch SwiGLU instead")
                self.use_xformers = False
        x1, x2 = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(x1) * x2)


RopeTables = tuple[Tensor, Tensor]  # (cos, signed sin) from RoPE2D.tables; see rope.apply_rope_2d_signed


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection, optional qk-norm and optional 2D RoPE.

    Order inside: ``qkv`` -> split heads -> qk-norm -> RoPE (q and k) -> SDPA -> ``proj``.
    """

    def __init__(self, dim: int, num_heads: int, qk_norm: bool = False, bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim {dim} not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = Linear(dim, 3 * dim, bias=bias)
        self.q_norm = nn.LayerNorm(self.head_dim, eps=QK_NORM_EPS) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim, eps=QK_NORM_EPS) if qk_norm else nn.Identity()
        self.proj = Linear(dim, dim, bias=bias)
        self.sdpa_backends: tuple[SDPBackend, ...] | None = None  # None: PyTorch's choice
        # dtype q, k, v are cast to for SDPA (None: their own). Set by ZipSplat's fast modes on the fp32 ViT blocks
        # (``ZipSplatConfig.fp32_blocks``) so that their attention still uses the bf16 / fp16 flash kernels.
        self.sdpa_dtype: torch.dtype | None = None

    def forward(self, x: Float[Tensor, "B L D"], rope: RopeTables | None = None) -> Float[Tensor, "B L D"]:
        B, L, D = x.shape
        qkv = self.qkv(x).reshape(B, L, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, H, L, Dh) strided views of the qkv output (no copy)
        q = _qk_norm_rope(q, self.q_norm, rope)
        k = _qk_norm_rope(k, self.k_norm, rope)
        dtype = q.dtype
        if self.sdpa_dtype is not None and dtype != self.sdpa_dtype:
            q, k, v = (t.to(self.sdpa_dtype) for t in (q, k, v))
        # flash / cpu-flash SDPA take the strided (B, L, H, Dh)-major views directly; the output comes back as a
        # (B, H, L, Dh) view of a (B, L, H, Dh) tensor, so transpose + reshape below is free
        out = _sdpa(q, k, v, self.sdpa_backends).to(dtype)
        return self.proj(out.transpose(1, 2).reshape(B, L, D))


class CrossAttention(nn.Module):
    """Multi-head cross-attention: queries from ``x``, keys/values from ``context`` (``kv_proj`` packs [k, v])."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool = True, bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim {dim} not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q_proj = Linear(dim, dim, bias=bias)
        self.kv_proj = Linear(dim, 2 * dim, bias=bias)
        self.q_norm = nn.LayerNorm(self.head_dim, eps=QK_NORM_EPS) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim, eps=QK_NORM_EPS) if qk_norm else nn.Identity()
        self.proj = Linear(dim, dim, bias=bias)
        self.sdpa_backends: tuple[SDPBackend, ...] | None = None  # None: PyTorch's choice

    def forward(self, x: Float[Tensor, "B Lq D"], context: Float[Tensor, "B Lk D"]) -> Float[Tensor, "B Lq D"]:
        B, Lq, D = x.shape
        Lk = context.shape[1]
        q = self.q_proj(x).reshape(B, Lq, self.num_heads, self.head_dim).transpose(1, 2)
        kv = self.kv_proj(context).reshape(B, Lk, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        k, v = kv.unbind(0)
        q = _qk_norm_rope(q, self.q_norm, None)
        k = _qk_norm_rope(k, self.k_norm, None)
        out = _sdpa(q, k, v, self.sdpa_backends)
        return self.proj(out.transpose(1, 2).reshape(B, Lq, D))


def _add_scaled(x: Tensor, branch: Tensor, ls: LayerScale) -> Tensor:
    """``x + ls(branch)``. A low-precision branch on a higher-precision stream (bf16 fast mode) uses one fused
    ``addcmul`` (math in the stream dtype); equal-dtype inputs (fp32 path) keep the exact ``x + branch * gamma``."""
    if branch.dtype != x.dtype:
        return torch.addcmul(x, branch, ls.gamma)
    return x + ls(branch)


def _make_ffn(dim: int, mlp_ratio: float, ffn: str, use_xformers: bool | None) -> nn.Module:
    if ffn == "mlp":
        return Mlp(dim, int(dim * mlp_ratio))
    if ffn == "swiglu":
        return SwiGLUFFN(dim, mlp_ratio, use_xformers=use_xformers)
    raise ValueError(f"unknown ffn type {ffn!r} (expected 'mlp' or 'swiglu')")


class SelfAttentionBlock(nn.Module):
    """Pre-LN transformer block: ``x += ls1(attn(norm1(x))); x += ls2(ffn(norm2(x)))``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        *,
        qk_norm: bool = False,
        init_values: float = 1.0,
        norm_eps: float = 1e-5,
        ffn: str = "mlp",
        use_xformers: bool | None = None,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = SelfAttention(dim, num_heads, qk_norm=qk_norm)
        self.ls1 = LayerScale(dim, init_values)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = _make_ffn(dim, mlp_ratio, ffn, use_xformers)
        self.ls2 = LayerScale(dim, init_values)

    def forward(self, x: Float[Tensor, "B L D"], rope: RopeTables | None = None) -> Float[Tensor, "B L D"]:
        x = _add_scaled(x, self.attn(self.norm1(x), rope), self.ls1)
        return _add_scaled(x, self.mlp(self.norm2(x)), self.ls2)


class CrossAttentionBlock(nn.Module):
    """Pre-LN cross-attention block.

    ``a = ls1(attn(norm_q(q), norm_kv(ctx)))``, ``m = ls2(mlp(norm2(q + a)))``; returns ``a + m`` in *delta* mode
    (the caller adds it to its own residual stream, §1.7) and ``q + a + m`` otherwise (colour branch, §1.8).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        *,
        qk_norm: bool = True,
        init_values: float = 0.01,
        norm_eps: float = 1e-5,
        delta: bool = False,
    ) -> None:
        super().__init__()
        self.delta = delta
        self.norm_q = nn.LayerNorm(dim, eps=norm_eps)
        self.norm_kv = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = CrossAttention(dim, num_heads, qk_norm=qk_norm)
        self.ls1 = LayerScale(dim, init_values)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, init_values)

    def forward(self, q: Float[Tensor, "B Lq D"], context: Float[Tensor, "B Lk D"]) -> Float[Tensor, "B Lq D"]:
        a = self.ls1(self.attn(self.norm_q(q), self.norm_kv(context)))
        m = self.ls2(self.mlp(self.norm2(q + a)))
        return a + m if self.delta else q + a + m
