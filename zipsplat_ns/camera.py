"""Pinhole camera intrinsics, batched.

A :class:`Camera` packs ``[w, h, fx, fy, cx, cy]`` (pixels) in its last dimension; any leading dimensions are batch
dimensions. Pixel ``(0, 0)`` is the top-left *corner* of the image, so pixel centres sit at ``i + 0.5`` (the
convention of nerfstudio, gsplat and the ZipSplat reference).
"""

from __future__ import annotations

import math
from typing import Sequence, Tuple, Union

import torch
from jaxtyping import Float
from torch import Tensor

from zipsplat_ns.packed import PackedTensor
from zipsplat_ns.tensor_checks import as_float_tensor, check_finite, check_last_dims

Number = Union[int, float]
ScaleLike = Union[Number, Tuple[Number, Number], Sequence[Number], Tensor]


class Camera(PackedTensor):
    """Pinhole intrinsics ``[w, h, fx, fy, cx, cy]`` with arbitrary batch shape."""

    __slots__ = ()
    WIDTH = 6

    def __init__(self, data: Float[Tensor, "*batch 6"]):
        data = as_float_tensor(data, "Camera data")
        check_last_dims(data, (6,), "Camera data ([w, h, fx, fy, cx, cy])")
        if data.device.type != "meta" and data.numel():
            # all three checks in one device -> host read (one synchronisation for a CUDA tensor)
            finite, size_ok, focal_ok = intrinsics_checks(data).tolist()
            if not finite:
                check_finite(data, "Camera data")
            if not size_ok:
                raise ValueError(f"Camera: image size must be positive, got w/h = {data[..., 0:2].flatten()[:8].tolist()}")
            if not focal_ok:
                raise ValueError(
                    f"Camera: focal lengths must be positive, got fx/fy = {data[..., 2:4].flatten()[:8].tolist()}"
                )
        self.data = data

    # ----------------------------------------------------------------------------------------------- constructors
    @classmethod
    def from_K(cls, K: Float[Tensor, "*batch 3 3"], w: Union[Number, Tensor], h: Union[Number, Tensor]) -> "Camera":
        """From a calibration matrix and the image size."""
        K = as_float_tensor(K, "K")
        check_last_dims(K, (3, 3), "K")
        if (K[..., 0, 1].abs() > 1e-6 * K[..., 0, 0].abs()).any():
            raise ValueError("Camera.from_K: skewed calibration matrices (K[0,1] != 0) are not supported")
        batch = K.shape[:-2]
        wt = torch.as_tensor(w, dtype=K.dtype, device=K.device).expand(batch)
        ht = torch.as_tensor(h, dtype=K.dtype, device=K.device).expand(batch)
        return cls(torch.stack([wt, ht, K[..., 0, 0], K[..., 1, 1], K[..., 0, 2], K[..., 1, 2]], -1))

    @classmethod
    def from_focal(
        cls,
        fx: Union[Number, Tensor],
        fy: Union[Number, Tensor, None] = None,
        *,
        w: Union[Number, Tensor],
        h: Union[Number, Tensor],
        cx: Union[Number, Tensor, None] = None,
        cy: Union[Number, Tensor, None] = None,
    ) -> "Camera":
        """From focal lengths in pixels; ``fy`` defaults to ``fx`` and the principal point to the image centre."""
        fx_t = torch.as_tensor(fx, dtype=torch.float32)
        fy_t = fx_t if fy is None else torch.as_tensor(fy, dtype=torch.float32)
        w_t = torch.as_tensor(w, dtype=torch.float32)
        h_t = torch.as_tensor(h, dtype=torch.float32)
        cx_t = w_t / 2 if cx is None else torch.as_tensor(cx, dtype=torch.float32)
        cy_t = h_t / 2 if cy is None else torch.as_tensor(cy, dtype=torch.float32)
        parts = torch.broadcast_tensors(w_t, h_t, fx_t, fy_t, cx_t, cy_t)
        return cls(torch.stack(parts, -1))

    @classmethod
    def from_fov(
        cls,
        fov_x: Union[Number, Tensor],
        fov_y: Union[Number, Tensor, None] = None,
        *,
        w: Union[Number, Tensor],
        h: Union[Number, Tensor],
    ) -> "Camera":
        """From field(s) of view in radians: ``f = size / (2 tan(fov / 2))``; ``fov_y`` defaults to ``fov_x``."""
        fx_fov = torch.as_tensor(fov_x, dtype=torch.float32)
        fy_fov = fx_fov if fov_y is None else torch.as_tensor(fov_y, dtype=torch.float32)
        if ((fx_fov <= 0) | (fx_fov >= math.pi) | (fy_fov <= 0) | (fy_fov >= math.pi)).any():
            raise ValueError(f"Camera.from_fov: field of view must be in (0, pi) radians, got {fov_x}, {fov_y}")
        w_t = torch.as_tensor(w, dtype=torch.float32)
        h_t = torch.as_tensor(h, dtype=torch.float32)
        fx = w_t / (2 * torch.tan(fx_fov / 2))
        fy = h_t / (2 * torch.tan(fy_fov / 2))
        return cls.from_focal(fx, fy, w=w_t, h=h_t)

    # ------------------------------------------------------------------------------------------------ properties
    @property
    def size(self) -> Float[Tensor, "*batch 2"]:
        """Image size ``(w, h)`` in pixels."""
        return self.data[..., 0:2]

    @property
    def f(self) -> Float[Tensor, "*batch 2"]:
        return self.data[..., 2:4]

    @property
    def c(self) -> Float[Tensor, "*batch 2"]:
        return self.data[..., 4:6]

    @property
    def K(self) -> Float[Tensor, "*batch 3 3"]:
        K = self.data.new_zeros(*self.shape, 3, 3)
        K[..., 0, 0] = self.data[..., 2]
        K[..., 1, 1] = self.data[..., 3]
        K[..., 0, 2] = self.data[..., 4]
        K[..., 1, 2] = self.data[..., 5]
        K[..., 2, 2] = 1
        return K

    @property
    def hfov(self) -> Float[Tensor, "*batch"]:
        return 2 * torch.atan(self.data[..., 0] / (2 * self.data[..., 2]))

    @property
    def vfov(self) -> Float[Tensor, "*batch"]:
        return 2 * torch.atan(self.data[..., 1] / (2 * self.data[..., 3]))

    # ---------------------------------------------------------------------------------------------- transforms
    def scale(self, factor: ScaleLike) -> "Camera":
        """Resize the image by ``factor`` (scalar or ``(sx, sy)``): size, focal length and principal point scale."""
        # Python numbers are checked on the host (no device read); tensors on their device
        host = [factor] if isinstance(factor, (int, float)) else factor if isinstance(factor, (tuple, list)) else None
        if host is not None and not all(isinstance(f, (int, float)) for f in host):
            host = None
        if host is not None and not all(0 < f < math.inf for f in host):
            raise ValueError(f"Camera.scale: factors must be positive and finite, got {factor}")
        if host is not None and len(host) in (1, 2):
            # Python numbers multiply in place of a device tensor: building a CUDA tensor from them is a pageable
            # copy that waits for the GPU (7 ms of a training step's host time in a profiled H100 step)
            sx, sy = host * 2 if len(host) == 1 else host
            data = self.data.clone()
            data[..., 0::2] *= sx  # w, fx, cx
            data[..., 1::2] *= sy  # h, fy, cy
            return Camera.wrap(data)
        s = torch.as_tensor(factor, dtype=self.dtype, device=self.device)
        if s.ndim == 0 or s.shape[-1] != 2:
            s = s[..., None].expand(*s.shape, 2)
        if host is None and (s <= 0).any():
            raise ValueError(f"Camera.scale: factors must be positive, got {factor}")
        s6 = torch.cat([s, s, s], -1)
        return Camera.wrap(self.data * s6)  # positive factors keep a valid camera valid (and finite ones finite)

    def crop(self, pad: ScaleLike) -> "Camera":
        """Pad (positive) or crop (negative) symmetrically: size += pad, c += pad / 2."""
        p = torch.as_tensor(pad, dtype=self.dtype, device=self.device)
        if p.ndim == 0 or p.shape[-1] != 2:
            p = p[..., None].expand(*p.shape, 2)
        zeros = torch.zeros_like(p)
        return Camera(self.data + torch.cat([p, zeros, p / 2], -1))

    def crop_box(self, left: Number, top: Number, width: Number, height: Number) -> "Camera":
        """Crop to the pixel box ``[left, left+width) x [top, top+height)``."""
        d = self.data.clone()
        d[..., 0] = width
        d[..., 1] = height
        d[..., 4] -= left
        d[..., 5] -= top
        return Camera(d)


def intrinsics_checks(data: Float[Tensor, "*batch 6"]) -> Tensor:
    """``[all finite, all sizes > 0, all focal lengths > 0]`` of packed intrinsics: a ``(3,)`` bool tensor on their
    device, not read yet, so that a caller can fold it into one device -> host read with other checks."""
    return torch.stack([torch.isfinite(data).all(), (data[..., 0:2] > 0).all(), (data[..., 2:4] > 0).all()])


def size_range(data: Float[Tensor, "*batch 6"]) -> Tensor:
    """``[max w, min w, max h, min h, largest distance of a size from whole pixels]`` of packed intrinsics: a
    ``(5,)`` float tensor on their device, not read yet (see :func:`intrinsics_checks`)."""
    size = data[..., 0:2].reshape(-1, 2).float()
    return torch.stack(
        [size[:, 0].amax(), size[:, 0].amin(), size[:, 1].amax(), size[:, 1].amin(), (size - size.round()).abs().amax()]
    )


def ensure_camera(camera: Union[Camera, Tensor], name: str = "camera") -> Camera:
    """Accept a :class:`Camera` or a raw ``(..., 6)`` tensor."""
    if isinstance(camera, Camera):
        return camera
    if isinstance(camera, Tensor):
        return Camera(camera)
    raise TypeError(f"{name}: expected a zipsplat_ns.Camera or a (..., 6) tensor, got {type(camera).__name__}")


__all__ = ["Camera", "ensure_camera", "intrinsics_checks", "size_range"]

