"""CUDA-graph replay of the ViT backbone in training (ours, opt-in: ``ZipSplatConfig.cuda_graphs``).

Small models are bound by the host, not the GPU: small's training step issues about 15,000 aten ops, and the GPU
waits for the Python side most of the time (benchmarks/bench_train_nn_prune/README.md). The backbone's shapes are fixed
by the batch layout (scenes x views x 252 px) and do not depend on the per-step compression ratio, so its forward and
backward can be captured once per layout with :func:`torch.cuda.make_graphed_callables` and replayed as two graph
launches per step. The kernels are eager PyTorch's, so the function (and the gradients) are the same; the compression-
dependent parts (k-means, fusion, head), the renders and the losses stay eager.

Constraints, checked by :meth:`GraphedViT.usable`: CUDA, autograd on, ``training`` mode, no activation checkpointing
(its recomputation would run inside the backward graph's capture), the autocast cache off (``make_graphed_callables``
needs it; ZipSplat disables it when ``cuda_graphs`` is on). Each layout (and priors on/off) captures once: warm-up
iterations and the capture take about as long as a few eager steps. All captures share one memory pool, which is safe
because each step replays one layout's forward and backward before any other graph runs. Parameters must keep their
storage (in-place optimizers do; ``model.to(...)``, a dtype change or ``load_state_dict(assign=True)`` need
:meth:`GraphedViT.reset`, which ZipSplat calls on those paths).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Hashable, Optional

import torch
from torch import Tensor, nn


class _TapsCall(nn.Module):
    """Adapter with tensor-only inputs and a tuple output (what ``make_graphed_callables`` takes) around the ViT.

    Not registered as a submodule anywhere, so it adds no state-dict keys; its parameters are the ViT's.
    """

    def __init__(self, vit: nn.Module, with_camera_tokens: bool) -> None:
        super().__init__()
        self.vit = vit
        self.with_camera_tokens = with_camera_tokens

    def forward(self, images: Tensor, camera_tokens: Optional[Tensor] = None) -> tuple:
        return tuple(self.vit(images, camera_tokens if self.with_camera_tokens else None))


class GraphedViT:
    """Per-layout CUDA graphs of ``vit(images, camera_tokens) -> taps`` (forward and backward)."""

    def __init__(self, vit: nn.Module, max_layouts: int = 16, num_warmup_iters: int = 3) -> None:
        self.vit = vit
        self.max_layouts = int(max_layouts)
        self.num_warmup_iters = int(num_warmup_iters)
        self._graphs: "OrderedDict[Hashable, Callable[..., Any]]" = OrderedDict()
        self._pool = None
        self.captures = 0  # number of captures so far (a test / log counter)

    def reset(self) -> None:
        """Drop every captured graph (parameters moved, were re-assigned or changed dtype)."""
        self._graphs.clear()
        self._pool = None

    @staticmethod
    def usable(vit: nn.Module, images: Tensor) -> bool:
        """Whether this call can replay a graph (see the module docstring)."""
        return (
            images.is_cuda
            and torch.is_grad_enabled()
            and vit.training
            and not getattr(vit, "grad_checkpointing", False)
            and not torch.is_autocast_cache_enabled()
            and not torch.cuda.is_current_stream_capturing()
        )

    def _key(self, images: Tensor, camera_tokens: Optional[Tensor]) -> Hashable:
        cam = None if camera_tokens is None else (tuple(camera_tokens.shape), camera_tokens.dtype, camera_tokens.requires_grad)
        autocast = (torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"))
        trainable = tuple(p.requires_grad for p in self.vit.parameters())  # (un)freezing changes the backward graph
        return (tuple(images.shape), images.dtype, images.device, cam, autocast, trainable)

    def __call__(self, images: Tensor, camera_tokens: Optional[Tensor] = None) -> list:
        # The backward graph writes the parameter gradients into fixed buffers that autograd adopts as ``.grad``; a
        # second backward before the gradients are cleared would overwrite the first one's instead of adding to it.
        if any(p.grad is not None for p in self.vit.parameters()):
            raise RuntimeError(
                "cuda_graphs: the backbone's parameters still hold gradients at the forward pass (gradient "
                "accumulation over several backward passes?). The graphed backward writes gradients into fixed "
                "buffers, so clear them with zero_grad(set_to_none=True) before each step, or set cuda_graphs=False"
            )
        key = self._key(images, camera_tokens)
        fn = self._graphs.get(key)
        if fn is None:
            if len(self._graphs) >= self.max_layouts:
                raise RuntimeError(
                    f"cuda_graphs: more than {self.max_layouts} backbone input layouts in one run (each keeps its "
                    "own graphs); use fewer distinct (scenes, views) layouts or set cuda_graphs=False"
                )
            fn = self._capture(images, camera_tokens)
            self._graphs[key] = fn
        args = (images,) if camera_tokens is None else (images, camera_tokens)
        return list(fn(*args))

    def _capture(self, images: Tensor, camera_tokens: Optional[Tensor]) -> Callable[..., Any]:
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        call = _TapsCall(self.vit, camera_tokens is not None)
        call.train(self.vit.training)
        sample = (images.detach().clone(),)
        if camera_tokens is not None:
            sample = sample + (camera_tokens.detach().clone().requires_grad_(camera_tokens.requires_grad),)
        graphed = torch.cuda.make_graphed_callables(
            call, sample, num_warmup_iters=self.num_warmup_iters, allow_unused_input=True, pool=self._pool
        )
        self.captures += 1
        return graphed


__all__ = ["GraphedViT"]
