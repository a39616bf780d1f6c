"""Small input validators shared by the geometry and rendering code: each error names the offending input."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def as_float_tensor(x, name: str) -> Tensor:
    """Convert array-likes to a floating tensor (float32 unless already floating)."""
    if not isinstance(x, Tensor):
        try:
            x = torch.as_tensor(x)
        except Exception as exc:  # noqa: BLE001 - re-raised with context
            raise TypeError(f"{name}: cannot convert {type(x).__name__} to a tensor ({exc})") from exc
    if not x.is_floating_point():
        x = x.float()
    return x


def check_last_dims(x: Tensor, dims: Sequence[int], name: str) -> None:
    """Require the trailing dimensions of ``x`` to equal ``dims``."""
    n = len(dims)
    if x.ndim < n or tuple(x.shape[x.ndim - n :]) != tuple(dims):
        want = "(..., " + ", ".join(str(d) for d in dims) + ")"
        raise ValueError(f"{name}: expected shape {want}, got {tuple(x.shape)}")


def check_finite(x: Tensor, name: str) -> None:
    """Reject NaN/Inf with a count of bad entries."""
    if x.device.type != "meta" and not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name}: contains {bad} non-finite value(s) (NaN or Inf)")
