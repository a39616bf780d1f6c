"""Base class for small batched value types that pack their fields in the last tensor dimension."""

from __future__ import annotations

from typing import Sequence, Type, TypeVar

import torch
from torch import Tensor

T = TypeVar("T", bound="PackedTensor")


class PackedTensor:
    """Holds ``data`` of shape ``(*batch, WIDTH)``; indexing, stacking and device moves act on the batch dims only.

    Subclasses set ``WIDTH`` and validate in ``__init__(data)``. Operations whose result is valid whenever their
    input is (device moves, indexing, reshapes, stacking) build it with :meth:`wrap`, without re-validating: on a
    GPU every validation is a device -> host read that stalls the host until the queued work has run.
    """

    __slots__ = ("data",)
    WIDTH: int = 0
    data: Tensor

    @property
    def shape(self) -> torch.Size:
        return self.data.shape[:-1]

    @property
    def device(self) -> torch.device:
        return self.data.device

    @property
    def dtype(self) -> torch.dtype:
        return self.data.dtype

    @classmethod
    def wrap(cls: Type[T], data: Tensor) -> T:
        """Wrap ``data`` that is known to be valid (derived from a validated instance) without checking it again."""
        obj = cls.__new__(cls)
        obj.data = data
        return obj

    def to(self: T, *args, **kwargs) -> T:
        return self.wrap(self.data.to(*args, **kwargs))

    def cpu(self: T) -> T:
        return self.to("cpu")

    def cuda(self: T) -> T:
        return self.to("cuda")

    def clone(self: T) -> T:
        return self.wrap(self.data.clone())

    def detach(self: T) -> T:
        return self.wrap(self.data.detach())

    def reshape(self: T, *shape: int) -> T:
        return self.wrap(self.data.reshape(*shape, self.WIDTH))

    def __getitem__(self: T, index) -> T:
        if not isinstance(index, tuple):
            index = (index,)
        return self.wrap(self.data[index + (slice(None),)])

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError(f"len() of an unbatched {type(self).__name__}")
        return self.shape[0]

    @classmethod
    def stack(cls: Type[T], items: Sequence[T], dim: int = 0) -> T:
        """Stack along a new batch dimension ``dim`` (negative dims count batch dims from the end)."""
        return cls.wrap(torch.stack([x.data for x in items], dim if dim >= 0 else dim - 1))

    @classmethod
    def cat(cls: Type[T], items: Sequence[T], dim: int = 0) -> T:
        return cls.wrap(torch.cat([x.data for x in items], dim if dim >= 0 else dim - 1))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={tuple(self.shape)})"
