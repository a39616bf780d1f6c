"""The one Gaussians container of zipsplat_ns.

Activated parameters, batched over leading dimensions (typically ``(B, N)``):

- ``means``     ``(..., N, 3)`` positions (the reference camera's OpenCV frame for network output);
- ``scales``    ``(..., N, 3)`` linear standard deviations (not log);
- ``quats``     ``(..., N, 4)`` rotations, wxyz (normalised by the renderers);
- ``opacities`` ``(..., N)`` in [0, 1] (not logits);
- ``sh``        ``(..., N, K, 3)`` spherical-harmonic coefficients, coefficient-major, K = (degree + 1)^2 in {1, 4, 9, 16}.
  DC colour = ``SH_C0 * sh[..., 0, :] + 0.5`` (3DGS convention).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Literal, Optional, Sequence, Union

import torch
from jaxtyping import Float
from torch import Tensor

from zipsplat_ns.tensor_checks import as_float_tensor, check_finite, check_last_dims

if TYPE_CHECKING:
    from zipsplat_ns.camera import Camera
    from zipsplat_ns.pose import Pose
    from zipsplat_ns.rendering import RenderOutput

SH_C0 = 0.28209479177387814  # Y_0^0 = 1 / (2 sqrt(pi))

RenderMode = Literal["RGB", "D", "ED", "RGB+D", "RGB+ED"]


def sh_degree_from_coeffs(num_coeffs: int) -> int:
    degree = int(round(math.sqrt(num_coeffs))) - 1
    if (degree + 1) ** 2 != num_coeffs or not 0 <= degree <= 3:
        raise ValueError(f"SH coefficients: expected K in (1, 4, 9, 16) per channel, got K = {num_coeffs}")
    return degree


def rgb_to_sh0(rgb: Tensor) -> Tensor:
    return (rgb - 0.5) / SH_C0


def sh0_to_rgb(sh0: Tensor) -> Tensor:
    return sh0 * SH_C0 + 0.5


class Gaussians:
    """Batched 3D Gaussians with activated parameters (see the module docstring for shapes and conventions)."""

    __slots__ = ("means", "scales", "quats", "opacities", "sh")

    def __init__(
        self,
        means: Float[Tensor, "*batch N 3"],
        scales: Float[Tensor, "*batch N 3"],
        quats: Float[Tensor, "*batch N 4"],
        opacities: Float[Tensor, "*batch N"],
        sh: Float[Tensor, "*batch N K 3"],
        *,
        validate: bool = True,
    ):
        if validate:
            means = as_float_tensor(means, "Gaussians.means")
            scales = as_float_tensor(scales, "Gaussians.scales")
            quats = as_float_tensor(quats, "Gaussians.quats")
            opacities = as_float_tensor(opacities, "Gaussians.opacities")
            sh = as_float_tensor(sh, "Gaussians.sh")
            check_last_dims(means, (3,), "Gaussians.means")
            check_last_dims(scales, (3,), "Gaussians.scales")
            check_last_dims(quats, (4,), "Gaussians.quats")
            if sh.ndim < 3 or sh.shape[-1] != 3:
                raise ValueError(f"Gaussians.sh: expected shape (..., N, K, 3), got {tuple(sh.shape)}")
            sh_degree_from_coeffs(sh.shape[-2])
            lead = means.shape[:-1]
            for name, t, want in (
                ("scales", scales, lead),
                ("quats", quats, lead),
                ("opacities", opacities, lead),
                ("sh", sh, lead),
            ):
                got = t.shape[: len(lead)] if name != "opacities" else t.shape
                if tuple(got) != tuple(want) or (name == "sh" and sh.ndim != len(lead) + 2):
                    raise ValueError(
                        f"Gaussians.{name}: leading shape {tuple(t.shape)} does not match means {tuple(means.shape)}"
                    )
        self.means = means
        self.scales = scales
        self.quats = quats
        self.opacities = opacities
        self.sh = sh

    # ----------------------------------------------------------------------------------------------- properties
    @property
    def batch_shape(self) -> torch.Size:
        return self.means.shape[:-2]

    @property
    def num_gaussians(self) -> int:
        return self.means.shape[-2]

    @property
    def sh_degree(self) -> int:
        return sh_degree_from_coeffs(self.sh.shape[-2])

    @property
    def sh0(self) -> Float[Tensor, "*batch N 3"]:
        return self.sh[..., 0, :]

    @property
    def shN(self) -> Float[Tensor, "*batch N K-1 3"]:
        return self.sh[..., 1:, :]

    @property
    def rgb(self) -> Float[Tensor, "*batch N 3"]:
        """View-independent (DC) colour, clamped to [0, 1]."""
        return sh0_to_rgb(self.sh0).clamp(0, 1)

    @property
    def device(self) -> torch.device:
        return self.means.device

    @property
    def dtype(self) -> torch.dtype:
        return self.means.dtype

    def __len__(self) -> int:
        if not self.batch_shape:
            raise TypeError("len() of an unbatched Gaussians; use .num_gaussians")
        return self.batch_shape[0]

    def __getitem__(self, index) -> "Gaussians":
        """Index the batch dimensions, e.g. ``gaussians[0]`` is the first scene."""
        if not self.batch_shape:
            raise IndexError("Gaussians has no batch dimension to index; use .subset() to select Gaussians")
        if not isinstance(index, tuple):
            index = (index,)
        return self._map(lambda t, extra: t[index + (slice(None),) * extra])

    def __iter__(self) -> Iterator["Gaussians"]:
        for i in range(len(self)):
            yield self[i]

    def _map(self, fn) -> "Gaussians":
        # `extra` = number of trailing non-batch dims of each field, so batch indexing never touches them.
        return Gaussians(
            fn(self.means, 2), fn(self.scales, 2), fn(self.quats, 2), fn(self.opacities, 1), fn(self.sh, 3),
            validate=False,
        )  # fmt: skip

    def subset(self, index: Union[Tensor, slice]) -> "Gaussians":
        """Select Gaussians along N (same index for every batch item)."""
        return self._map(lambda t, extra: t[(Ellipsis, index) + (slice(None),) * (extra - 1)])

    def to(self, *args, **kwargs) -> "Gaussians":
        return self._map(lambda t, extra: t.to(*args, **kwargs))

    def detach(self) -> "Gaussians":
        return self._map(lambda t, extra: t.detach())

    def float(self) -> "Gaussians":
        return self.to(torch.float32)

    def clone(self) -> "Gaussians":
        return self._map(lambda t, extra: t.clone())

    def add_batch_dim(self) -> "Gaussians":
        """``(N, ...)`` -> ``(1, N, ...)``."""
        return self._map(lambda t, extra: t.unsqueeze(0))

    @staticmethod
    def stack(items: Sequence["Gaussians"]) -> "Gaussians":
        """Stack scenes with equal N into a new leading batch dimension."""
        return Gaussians.cat([g.add_batch_dim() for g in items], dim=0)

    @staticmethod
    def cat(items: Sequence["Gaussians"], dim: int = -1) -> "Gaussians":
        """Concatenate along the Gaussian dimension (``dim=-1``, default) or a batch dimension (``dim >= 0``)."""
        if dim == -1:
            return Gaussians(
                torch.cat([g.means for g in items], -2), torch.cat([g.scales for g in items], -2),
                torch.cat([g.quats for g in items], -2), torch.cat([g.opacities for g in items], -1),
                torch.cat([g.sh for g in items], -3),
            )  # fmt: skip
        return Gaussians(
            torch.cat([g.means for g in items], dim), torch.cat([g.scales for g in items], dim),
            torch.cat([g.quats for g in items], dim), torch.cat([g.opacities for g in items], dim),
            torch.cat([g.sh for g in items], dim),
        )  # fmt: skip

    def validate_finite(self, name: str = "Gaussians") -> None:
        for field in self.__slots__:
            check_finite(getattr(self, field), f"{name}.{field}")

    def __repr__(self) -> str:
        return (
            f"Gaussians(batch_shape={tuple(self.batch_shape)}, num_gaussians={self.num_gaussians}, "
            f"sh_degree={self.sh_degree}, device={self.device}, dtype={self.dtype})"
        )

    # ------------------------------------------------------------------------------------------------ editing
    def scale(self, factor: float) -> "Gaussians":
        """Uniformly rescale the scene: means and scales multiply by ``factor``."""
        return Gaussians(self.means * factor, self.scales * factor, self.quats, self.opacities, self.sh)

    def flip_yz(self) -> "Gaussians":
        """The scene rotated by 180 degrees about x, ``(x, y, z) -> (x, -y, -z)`` (an involution).

        Maps our OpenCV reference frame (y down, z forward) to the y-up world of nerfstudio's viewer and exporter and
        back: means ``F mu``, rotations ``q_F (x) q`` with ``q_F = (0, 1, 0, 0)`` (wxyz), and each SH coefficient times
        the parity of its basis function under the map (degree 1: the y and z coefficients change sign).
        """
        f = torch.tensor([1.0, -1.0, -1.0], dtype=self.dtype, device=self.device)
        w, x, y, z = self.quats.unbind(-1)
        quats = torch.stack([-x, w, -z, y], -1)
        signs = sh_flip_yz_signs(self.sh_degree).to(self.sh)
        return Gaussians(self.means * f, self.scales, quats, self.opacities, self.sh * signs[:, None], validate=False)

    def color_by_group(self, group_size: int, *, seed: int = 0, cmap: str = "tab20") -> "Gaussians":
        """Give each consecutive group of ``group_size`` Gaussians one colour (e.g. 32 = one network token).

        Group ids are shuffled with a fixed ``seed`` so neighbouring tokens get distinct colours. The SH is replaced by
        a DC-only term (view-independent colour).
        """
        if group_size < 1:
            raise ValueError(f"color_by_group: group_size must be >= 1, got {group_size}")
        n = self.num_gaussians
        num_groups = (n + group_size - 1) // group_size
        palette = _palette(cmap).to(self.device)
        g = torch.Generator().manual_seed(seed)
        group_ids = torch.randperm(max(num_groups, 1), generator=g)[:num_groups].to(self.device)
        colors = palette[group_ids % palette.shape[0]]  # (num_groups, 3)
        rgb = colors.repeat_interleave(group_size, 0)[:n].to(self.dtype)
        sh = torch.zeros(*self.batch_shape, n, 1, 3, dtype=self.dtype, device=self.device)
        sh[..., 0, :] = rgb_to_sh0(rgb)
        return Gaussians(self.means, self.scales, self.quats, self.opacities, sh)

    # ---------------------------------------------------------------------------------------------- rendering
    def render(
        self,
        cameras: "Camera",
        poses: "Pose",
        mode: RenderMode = "RGB",
        *,
        background: Union[None, Sequence[float], Tensor] = None,
        sh_degree: Optional[int] = None,
        backend: Optional[Literal["gsplat", "torch"]] = None,
        **kwargs,
    ) -> "RenderOutput":
        """Render with the backend picked by device (gsplat on CUDA, dense torch on CPU) or forced by ``backend``.

        ``cameras``/``poses`` have shape ``(V,)`` for unbatched Gaussians or ``(B, V)`` for a ``(B, N)`` batch (an
        unbatched camera renders a single view). Returns images ``(..., V, C, H, W)``, alphas ``(..., V, 1, H, W)``
        and per-Gaussian info; see :func:`zipsplat_ns.rendering.render`.
        """
        from zipsplat_ns.rendering import render

        return render(self, cameras, poses, mode=mode, background=background, sh_degree=sh_degree, backend=backend, **kwargs)

    # ------------------------------------------------------------------------------------------------- PLY I/O
    def save_ply(self, path: Union[str, Path]) -> Path:
        """Write the standard 3DGS (Inria) PLY; see :mod:`zipsplat_ns.ply`."""
        from zipsplat_ns.ply import save_ply

        return save_ply(self, path)

    @staticmethod
    def load_ply(path: Union[str, Path]) -> "Gaussians":
        from zipsplat_ns.ply import load_ply

        return load_ply(path)


def sh_flip_yz_signs(degree: int) -> Tensor:
    """``s_k = Y_k(x, -y, -z) / Y_k(x, y, z)`` for the real SH basis up to ``degree`` (each is +1 or -1: every basis
    function is even or odd under that rotation)."""
    from zipsplat_ns.rendering.sh import sh_basis

    d = torch.nn.functional.normalize(torch.tensor([[0.31, 0.52, 0.79]], dtype=torch.float64), dim=-1)
    a = sh_basis(d, degree)[0]
    b = sh_basis(d * torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64), degree)[0]
    return torch.sign(b / a).float()


def _palette(name: str) -> Tensor:
    """A categorical colour table; matplotlib's when available, else a fixed HSV wheel."""
    try:
        import matplotlib

        cmap = matplotlib.colormaps[name]
        n = getattr(cmap, "N", 20)
        return torch.tensor([cmap(i)[:3] for i in range(min(n, 256))], dtype=torch.float32)
    except (ImportError, KeyError):
        import colorsys

        return torch.tensor([colorsys.hsv_to_rgb(i / 20, 0.7, 0.9) for i in range(20)], dtype=torch.float32)


__all__ = ["Gaussians", "SH_C0", "RenderMode", "rgb_to_sh0", "sh0_to_rgb", "sh_degree_from_coeffs"]
