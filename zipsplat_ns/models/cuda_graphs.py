"""CUDA-graph replay of fixed-shape parts of the training step (ours, opt-in: ``cuda_graphs``).

Small models are bound by the host, not the GPU: small's training step issued about 15,000 aten ops, and the GPU
waited for the Python side most of the time (benchmarks/bench_train_nn_prune/README.md). Two parts of the step have
shapes fixed by the batch layout (scenes x views x 252 px, targets per scene) and independent of the per-step
compression ratio: the **ViT backbone** and the **LPIPS-VGG** loss network. :class:`GraphCache` captures such a
module's forward and backward once per input signature with :func:`torch.cuda.make_graphed_callables` and replays them
as two graph launches per step. The kernels are eager PyTorch's, so the function and the gradients are the same
(scripts/check_cuda_graphs.py: bitwise-equal losses, gradients within the eager run-to-run noise). The compression-
dependent parts (k-means, fusion, head), the renders (gsplat sizes its buffers on the host) and the other losses
stay eager.

Rules, enforced here or by the callers:

* CUDA tensors, autograd on, not inside another capture, autocast's weight-cast cache off
  (``make_graphed_callables`` needs it; ZipSplat and the LPIPS loss disable it when graphs are on);
* the ViT only in ``training`` mode and without activation checkpointing (its recomputation would run inside the
  backward graph's capture);
* parameters keep their storage: in-place optimizers do; ``model.to(...)``, dtype changes and
  ``load_state_dict`` call :meth:`GraphCache.reset` (ZipSplat does so on those paths);
* gradients are cleared with ``set_to_none`` before each step: the backward graph writes them into fixed buffers that
  autograd adopts as ``.grad``, so a second backward before clearing would overwrite instead of accumulate. This is
  checked and refused with an error.

Each new signature (layout, priors on/off) costs one capture: three warm-up iterations plus the capture, about the
time of a few eager steps, and keeps that layout's activations in GPU memory. At most ``max_signatures`` (8) are
captured; later new layouts (the view schedule draws many in a long run) run eager, with one warning. Each cache keeps
one memory pool for its graphs, safe because a step replays one signature's forward and backward before the next
replay of any graph of that cache.
"""

from __future__ import annotations

import inspect
import logging
from collections import OrderedDict
from typing import Any, Callable, Hashable, Optional

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)


def _run(module: nn.Module, fn: Optional[Callable[..., Any]], args) -> Any:
    """``fn(module, *args)``, or ``module(*args)`` without ``fn``: the function a cache graphs (and runs eager)."""
    return fn(module, *args) if fn is not None else module(*args)


def make_graphed_callables_thread_local(*args: Any, **kwargs: Any) -> Any:
    """``torch.cuda.make_graphed_callables`` with its captures in ``thread_local`` mode.

    Its default, ``global``, lets a CUDA call from *any* host thread invalidate a capture, and training has such
    threads: the DataLoader's pin-memory thread (``cudaHostAlloc`` for every prefetched batch) and the viewer's render
    thread. ``ns-train zipsplat-small --pipeline.model.cuda-graphs True`` failed that way on an H100 at its 17th step,
    in a new layout's capture (``cudaErrorStreamCaptureInvalidated``, benchmarks/bench_train_mask_settings/).
    ``thread_local`` restricts only the capturing thread. Newer torch releases (2.14 here) take ``capture_error_mode``;
    older ones (2.11 on the GPU machine) build their captures with ``torch.cuda.graph(...)``, whose default mode is
    set here for the duration of the call.
    """
    if "capture_error_mode" in inspect.signature(torch.cuda.make_graphed_callables).parameters:
        return torch.cuda.make_graphed_callables(*args, capture_error_mode="thread_local", **kwargs)
    original = torch.cuda.graph

    def graph_thread_local(cuda_graph, pool=None, stream=None, capture_error_mode: str = "thread_local", **kw):
        return original(cuda_graph, pool=pool, stream=stream, capture_error_mode=capture_error_mode, **kw)

    torch.cuda.graph = graph_thread_local
    try:
        return torch.cuda.make_graphed_callables(*args, **kwargs)
    finally:
        torch.cuda.graph = original


class _Call(nn.Module):
    """Adapter that ``make_graphed_callables`` can take: tensor-only positional inputs (the ``None`` arguments of
    one signature are left out) and a tuple output. Not registered as a submodule, so no state-dict keys."""

    def __init__(self, module: nn.Module, present: tuple, fn: Optional[Callable[..., Any]]) -> None:
        super().__init__()
        self.module = module
        self.present = present
        self.fn = fn

    def forward(self, *tensors: Tensor) -> tuple:
        it = iter(tensors)
        args = [next(it) if p else None for p in self.present]
        out = _run(self.module, self.fn, args)
        return tuple(out) if isinstance(out, (list, tuple)) else (out,)


class GraphCache:
    """Forward + backward CUDA graphs of ``fn(module, *args)`` (default ``module(*args)``), one per input signature.

    ``__call__`` returns a list of the outputs (the tensor itself with ``single_output``); they live in graph memory
    and are overwritten by the next replay of the same signature.
    """

    def __init__(self, module: nn.Module, name: str, *, fn: Optional[Callable[..., Any]] = None,
                 single_output: bool = False, max_signatures: int = 8, num_warmup_iters: int = 3) -> None:  # fmt: skip
        self.module = module
        self.single_output = bool(single_output)
        self.name = name
        self.fn = fn
        self.max_signatures = int(max_signatures)
        self.num_warmup_iters = int(num_warmup_iters)
        self._graphs: "OrderedDict[Hashable, Callable[..., tuple]]" = OrderedDict()
        self._pool = None
        self.captures = 0  # number of captures so far (for tests and logs)
        self.eager_calls = 0  # calls that ran eager because max_signatures layouts were captured already
        self._warned_full = False

    def reset(self) -> None:
        """Drop every captured graph (parameters moved, were re-assigned or changed dtype)."""
        self._graphs.clear()
        self._pool = None

    @staticmethod
    def usable(*tensors: Optional[Tensor]) -> bool:
        """Whether a call on these inputs can replay a graph (see the module docstring)."""
        return (
            all(t is None or t.is_cuda for t in tensors)
            and torch.is_grad_enabled()
            and not (torch.is_autocast_enabled("cuda") and torch.is_autocast_cache_enabled())
            and not torch.cuda.is_current_stream_capturing()
        )

    def _key(self, args: tuple) -> Hashable:
        sig = tuple(None if a is None else (tuple(a.shape), a.dtype, a.device, a.requires_grad) for a in args)
        autocast = (torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"))
        trainable = tuple(p.requires_grad for p in self.module.parameters())  # (un)freezing changes the backward
        return (sig, autocast, trainable, self.module.training)

    def __call__(self, *args: Optional[Tensor]) -> Any:
        if any(p.grad is not None for p in self.module.parameters()):
            raise RuntimeError(
                f"cuda_graphs: the {self.name}'s parameters still hold gradients at the forward pass (gradient "
                "accumulation over several backward passes?). The graphed backward writes gradients into fixed "
                "buffers, so clear them with zero_grad(set_to_none=True) before each step, or set cuda_graphs=False"
            )
        key = self._key(args)
        entry = self._graphs.get(key)
        if entry is None:
            if len(self._graphs) >= self.max_signatures:
                # every signature keeps its graphs' memory (the saved activations of its layout), so the number of
                # captures is bounded; further layouts (e.g. the view schedule's) run eager, as without cuda_graphs
                if not self._warned_full:
                    logger.warning(
                        "cuda_graphs: %d input layouts of the %s are captured; further layouts run eager (each "
                        "capture keeps its layout's activations in GPU memory)", self.max_signatures, self.name)
                    self._warned_full = True
                self.eager_calls += 1
                out = _run(self.module, self.fn, args)
                return out if self.single_output else list(out)
            entry = self._capture(args)
            self._graphs[key] = entry
        out = entry(*(a for a in args if a is not None))
        return out[0] if self.single_output else list(out)

    def _capture(self, args: tuple) -> Callable[..., tuple]:
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        present = tuple(a is not None for a in args)
        call = _Call(self.module, present, self.fn)
        call.train(self.module.training)
        sample = tuple(a.detach().clone().requires_grad_(a.requires_grad) for a in args if a is not None)
        graphed = make_graphed_callables_thread_local(
            call, sample, num_warmup_iters=self.num_warmup_iters, allow_unused_input=True, pool=self._pool
        )
        self.captures += 1
        return graphed


__all__ = ["GraphCache"]
