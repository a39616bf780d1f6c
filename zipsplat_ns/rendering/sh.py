"""Real spherical harmonics up to degree 3 (the 3DGS basis and sign convention)."""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from zipsplat_ns.gaussians import SH_C0

_C1 = 0.4886025119029199  # sqrt(3 / (4 pi))
_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
_C3 = (
    -0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
    -0.4570457994644658, 1.445305721320277, -0.5900435899266435,
)  # fmt: skip


def sh_basis(dirs: Float[Tensor, "*batch 3"], degree: int) -> Float[Tensor, "*batch K"]:
    """Basis values for unit directions, K = (degree + 1)^2, ordered as the coefficients in a 3DGS PLY."""
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, SH_C0)]
    if degree >= 1:
        out += [-_C1 * y, _C1 * z, -_C1 * x]
    if degree >= 2:
        xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
        out += [
            _C2[0] * xy, _C2[1] * yz, _C2[2] * (2 * zz - xx - yy), _C2[3] * xz, _C2[4] * (xx - yy),
        ]  # fmt: skip
    if degree >= 3:
        out += [
            _C3[0] * y * (3 * xx - yy), _C3[1] * xy * z, _C3[2] * y * (4 * zz - xx - yy),
            _C3[3] * z * (2 * zz - 3 * xx - 3 * yy), _C3[4] * x * (4 * zz - xx - yy), _C3[5] * z * (xx - yy),
            _C3[6] * x * (xx - 3 * yy),
        ]  # fmt: skip
    return torch.stack(out, -1)


def eval_sh(
    sh: Float[Tensor, "*batch K 3"], dirs: Float[Tensor, "*batch 3"], degree: int
) -> Float[Tensor, "*batch 3"]:
    """Colour = max(sum_k basis_k(dir) * sh_k + 0.5, 0), using the first (degree + 1)^2 coefficients."""
    k = (degree + 1) ** 2
    if sh.shape[-2] < k:
        raise ValueError(f"eval_sh: sh_degree {degree} needs {k} coefficients, got {sh.shape[-2]}")
    dirs = torch.nn.functional.normalize(dirs, dim=-1)
    basis = sh_basis(dirs, degree)
    return ((basis[..., None] * sh[..., :k, :]).sum(-2) + 0.5).clamp_min(0.0)
