"""nerfstudio Pipeline of the ZipSplat methods: multi-scene feed-forward training, evaluation and scene selection.

:class:`ZipSplatPipeline` subclasses ``VanillaPipeline`` (nerfstudio's scripts check for it) without running its
``__init__``: it builds the :class:`~zipsplat_ns.datamanagers.ZipSplatDataManager` and the
:class:`~zipsplat_ns.models.zipsplat_model.ZipSplatModel` itself, calls ``torch.cuda.set_device(local_rank)`` and wraps
the model in ``DDP(find_unused_parameters=False)`` when ``world_size > 1``.

Training step (:meth:`ZipSplatPipeline.get_train_loss_dict`):

1. view schedule: ``datamanager.set_max_views(max_views(step, total_steps))`` (2 -> ``max_views`` over the first half);
2. ``inputs, batch = datamanager.next_train(step)``;
3. ``outputs = self._model(inputs)`` (through DDP), then ``get_metrics_dict`` / ``get_loss_dict`` on ``self.model``;
4. metrics also carry the datamanager's skip counters (``skipped_scenes``), the scenes' scale sources
   (``scale_source/depth``, ``scale_source/baseline``) and the throughput (``images_per_s``:
   context images per second over the previous iteration, all ranks, evaluations in between left out).

Without ``--data`` (datamanager ``data`` and ``datasets`` unset) the built-in synthetic dataset of
:mod:`zipsplat_ns.default_data` is generated on first use and used.

Logging: nerfstudio writes the loss terms ("Train Loss Dict": each term times its weight, as summed into the loss),
the metrics ("Train Metrics Dict": PSNR, the unweighted terms as ``loss_<term>``, Gaussian count, compression (the
fraction of tokens kept), view count, activated fraction, skip counts, throughput) and the learning rates to
TensorBoard; the periodic "Eval Images" grids show the
context views, the target views and the renders. In addition, rank 0 appends one JSON line per step (step, loss,
every metric) to ``<run dir>/zipsplat_metrics.jsonl``, next to ``config.yml``, never inside ``nerfstudio_models/``
(``--load-dir`` parses every file name there as a checkpoint).

Gradient guard: nerfstudio can only clip each parameter group separately (``max_norm`` per optimizer config) and has
no non-finite check, while the reference clips all parameters together at norm 1.0 and skips non-finite steps. The
pipeline registers a step pre-hook on every optimizer that runs once per backward pass, before the first group steps:
it computes the global L2 norm of every trainable gradient (one multi-tensor norm); when it is NaN/Inf all gradients
are dropped (set to None), so no group steps, and the count is logged as ``nonfinite_grad_skipped``; otherwise all
gradients are scaled by ``min(1, grad_clip_norm / (norm + 1e-6))`` (``torch.nn.utils.clip_grad_norm_``'s rule) and the
norm before clipping is logged as ``grad_norm_prev`` in the next step's metrics. Non-finite *losses* are handled by
the model (see :mod:`zipsplat_ns.models.zipsplat_model`).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Literal, Optional, Type

import torch
import torch.distributed as dist
from torch.cuda.amp.grad_scaler import GradScaler
from torch.nn.parallel import DistributedDataParallel as DDP

from nerfstudio.data.datamanagers.base_datamanager import DataManagerConfig
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.models.base_model import ModelConfig
from nerfstudio.pipelines.base_pipeline import Pipeline, VanillaPipeline, VanillaPipelineConfig
from nerfstudio.viewer.viewer_elements import ViewerControl

from zipsplat_ns.datamanagers.zipsplat_datamanager import ZipSplatDataManagerConfig
from zipsplat_ns.eval.runner import run_benchmark_for_pipeline
from zipsplat_ns.models.weights import WEIGHTS_REF_KEY
from zipsplat_ns.models.zipsplat_model import ZipSplatModelConfig
from zipsplat_ns.schedules import max_views, resume_seed

logger = logging.getLogger(__name__)
METRICS_FILENAME = "zipsplat_metrics.jsonl"
VIEWER_MAX_SCENES = 500
"""Scenes listed in the viewer's scene dropdown (the first ones of the test, then train, shards)."""


@dataclass
class BenchmarkEvalConfig:
    """The benchmark that ``ns-eval --load-config RUN/config.yml`` runs (reference §6 protocol).

    Set at training time (``--pipeline.benchmark.name re10k``) or by editing ``config.yml``. With a name, the pipeline
    points the datamanager's ``eval_index_file`` at the benchmark's shipped index file and its test shards at
    ``shard_dir`` (when ``ns-eval`` / ``ns-viewer`` load the run); without one, ``ns-eval`` uses the datamanager's own
    ``eval_index_file``, else a few test-stream batches at GT poses.
    """

    name: Optional[str] = None
    """re10k (6 views) | dl3dv (6/12/24) | mipnerf360 (32/64/128) | custom (eval_index_file + data) | None."""
    views: Optional[int] = None
    """Context views (selects the index file; default: the benchmark's smallest count)."""
    shard_dir: Optional[Path] = None
    """Test shards of the benchmark (default: the benchmark's data/<name>/... directory)."""
    align_poses: bool = True
    """Refine the target poses photometrically before measuring (the protocol's default)."""
    preset: Literal["default", "fast", "very_fast"] = "default"
    """Pose-refinement preset: default (200 steps, lr 5e-3, LPIPS 0.05), fast, very_fast."""
    refine_steps: Optional[int] = None
    """Override the preset's maximum number of refinement steps."""
    use_priors: bool = False
    """Condition the network on the context cameras and poses."""
    max_scenes_in_training: Optional[int] = 16
    """Cap on benchmark scenes when the trainer runs the all-images evaluation (None = all; ns-eval: always all)."""


@dataclass
class ZipSplatPipelineConfig(VanillaPipelineConfig):
    """Pipeline config of the ZipSplat methods."""

    _target: Type = field(default_factory=lambda: ZipSplatPipeline)
    datamanager: DataManagerConfig = field(default_factory=ZipSplatDataManagerConfig)
    """Sharded multi-scene data (no DataParser)."""
    model: ModelConfig = field(default_factory=ZipSplatModelConfig)
    """The feed-forward model."""
    view_schedule_fraction: float = 0.5
    """The maximum context view count ramps from min_views to max_views over this fraction of total_steps."""
    grad_clip_norm: Optional[float] = 1.0
    """Clip the gradients of all trainable parameters together to this global L2 norm, as the reference
    (None: off). nerfstudio's per-group --optimizers.*.optimizer.max-norm, if set, clips each group on top."""
    viewer_refresh_every: int = 100
    """While training with the viewer on: re-predict the viewer scene every N steps."""
    write_metrics_jsonl: bool = True
    """Append every step's loss and metrics to <run dir>/zipsplat_metrics.jsonl (rank 0)."""
    eval_fallback_batches: int = 8
    """Without an eval index file, the all-images evaluation averages this many batches of the test stream."""
    benchmark: BenchmarkEvalConfig = field(default_factory=BenchmarkEvalConfig)
    """The benchmark of ns-eval (index file, view count, pose alignment, priors)."""
    eval_rank0_only: bool = True
    """Under DDP, run the evaluation iterations on rank 0 only (the others return empty results)."""


class ReferenceViewOnConnect(ViewerControl):
    """Viewer control: every browser that connects starts at the reference view (the first context camera: the
    origin of the y-up world, looking down -z, with its field of view), as the reference viewer does, but pulled back
    by ``pull_back`` scene units: at the camera's own centre its frustum image would fill the whole view. Orbiting
    pivots one scene unit ahead of the reference camera (the median scene depth after normalisation).

    nerfstudio calls ``_setup(viewer)`` for every ``ViewerControl`` it finds on the pipeline.
    """

    pull_back = 0.3

    def __init__(self, vfov: Callable[[], Optional[float]]):
        self._vfov = vfov

    def _setup(self, viewer) -> None:
        import threading

        super()._setup(viewer)
        from nerfstudio.viewer.viewer import VISER_NERFSTUDIO_SCALE_RATIO

        ratio = float(VISER_NERFSTUDIO_SCALE_RATIO)

        def place(client) -> None:
            for _ in range(100):  # the client reports its camera shortly after connecting
                try:
                    client.camera.update_timestamp
                    break
                except AssertionError:
                    time.sleep(0.05)
            else:
                return
            fov = self._vfov()
            with client.atomic():
                client.camera.up_direction = (0.0, 1.0, 0.0)
                client.camera.position = (0.0, 0.0, self.pull_back * ratio)
                client.camera.look_at = (0.0, 0.0, -ratio)
                if fov is not None:
                    client.camera.fov = fov

        viewer.viser_server.on_client_connect(lambda client: threading.Thread(target=place, args=(client,), daemon=True).start())


def _floats(d: Dict[str, Any]) -> Dict[str, float]:
    out = {}
    for k, v in d.items():
        if isinstance(v, torch.Tensor):
            if v.numel() != 1:
                continue
            v = v.detach().float().item()
        if isinstance(v, (int, float)):
            out[k] = float(v)
    return out


def _eval_time(fn):
    """Count a pipeline method's time as evaluation between training steps, left out of ``images_per_s``."""

    @functools.wraps(fn)
    def timed(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(self, *args, **kwargs)
        finally:
            self._eval_seconds += time.perf_counter() - t0

    return timed


class ZipSplatPipeline(VanillaPipeline):
    """Multi-scene feed-forward training pipeline (see the module docstring)."""

    config: ZipSplatPipelineConfig

    def __init__(
        self,
        config: ZipSplatPipelineConfig,
        device: str,
        test_mode: Literal["test", "val", "inference"] = "val",
        world_size: int = 1,
        local_rank: int = 0,
        grad_scaler: Optional[GradScaler] = None,
    ):
        Pipeline.__init__(self)  # not VanillaPipeline.__init__ (single-scene assumptions, find_unused_parameters=True)
        # nerfstudio's trainer logs the loss dict it has just back-propagated with float(); recent torch warns about
        # that ("Converting a tensor with requires_grad=True to a scalar") on every run. Nothing to act on: silence it
        # for nerfstudio's writer only.
        warnings.filterwarnings(
            "ignore", message="Converting a tensor with requires_grad=True", module=r"nerfstudio\.utils\.writer"
        )
        self.config = config
        self.test_mode = test_mode
        self.world_size = int(world_size)
        self.local_rank = int(local_rank)
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():  # before any data generation or model building
            raise RuntimeError(
                f"ZipSplat: the device is {device!r} (nerfstudio's default --machine.device-type cuda), but torch "
                f"{torch.__version__} finds no CUDA GPU. On a CPU, add --machine.device-type cpu (zipsplat-tiny is "
                "sized for it); on a GPU machine, check the NVIDIA driver and that torch is a CUDA build."
            )
        if self.world_size > 1 and dev.type == "cuda":
            torch.cuda.set_device(self.local_rank)
        dm_cfg = config.datamanager
        if isinstance(dm_cfg, ZipSplatDataManagerConfig) and dm_cfg.data is None and not dm_cfg.datasets:
            from zipsplat_ns.default_data import ensure_default_data

            dm_cfg.data = ensure_default_data(progress=self.local_rank == 0)
        if test_mode == "test" and config.benchmark.name is not None:
            self._apply_benchmark(dm_cfg)
        self.datamanager = dm_cfg.setup(device=device, test_mode=test_mode, world_size=world_size, local_rank=local_rank)
        self.datamanager.to(device)  # v1.1.5: the DataManager is an nn.Module
        train_ds = self.datamanager.train_dataset
        assert train_ds is not None, "ZipSplatDataManager has no viewer scene"
        self._model = config.model.setup(
            scene_box=train_ds.scene_box,
            num_train_data=len(train_ds),
            metadata=train_ds.metadata,
            device=device,
            grad_scaler=grad_scaler,
            # a checkpoint is loaded next (ns-eval / ns-viewer / ns-export): the starting weights wait for it
            defer_initial_weights=test_mode in ("test", "inference"),
        )
        self.model.to(device)
        self.model.seed_rng(self._model_seed())
        self.datamanager.target_downscale = max(1, int(getattr(config.model, "render_downscale", 1)))
        if self.world_size > 1:
            self.model.distributed = True
            self._model = typing.cast(
                Any,
                DDP(
                    self._model,
                    device_ids=[self.local_rank] if dev.type == "cuda" else None,
                    find_unused_parameters=False,
                ),
            )
            if dev.type == "cuda":
                dist.barrier(device_ids=[self.local_rank])
            else:
                dist.barrier()
        self._scene_key: Optional[str] = None
        self._setup_viewer_controls()
        self._last_call: Optional[float] = None
        self._eval_seconds = 0.0  # evaluation time since the last training step, left out of images_per_s
        self._last_images = 0
        self._last_record: Dict[str, float] = {}
        self._grad_guard_installed = False
        self._train_calls = 0
        self.nonfinite_grad_skipped = 0
        self.last_grad_norm: Optional[torch.Tensor] = None  # global gradient norm of the last step, before clipping
        self._metrics_path: Optional[Path] = None

    def _apply_benchmark(self, dm_cfg: DataManagerConfig) -> None:
        """Point the datamanager at the configured benchmark's index file and test shards (ns-eval / ns-viewer)."""
        from zipsplat_ns.eval.benchmarks import CUSTOM, resolve_benchmark

        b = self.config.benchmark
        if b.name == CUSTOM:
            if getattr(dm_cfg, "eval_index_file", None) is None:
                raise ValueError("benchmark 'custom' needs --pipeline.datamanager.eval-index-file")
            if b.shard_dir is not None:
                dm_cfg.data, dm_cfg.datasets = Path(b.shard_dir), ()
            return
        res = resolve_benchmark(b.name, b.views, shard_dir=b.shard_dir)
        if not res.shard_dir.is_dir():
            raise FileNotFoundError(
                f"benchmark {res.tag}: test shards not found at {res.shard_dir}; convert them first (README: "
                f"'zipsplat-ns download {res.name}' then 'zipsplat-ns convert {res.name} ...') or set "
                "pipeline.benchmark.shard_dir in config.yml"
            )
        dm_cfg.eval_index_file = res.index_file
        dm_cfg.data, dm_cfg.datasets = res.shard_dir, ()

    # ----------------------------------------------------------------------------------------------- utils
    def _global_rank(self) -> int:
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank()
        return self.local_rank

    def _model_seed(self, start_step: int = 0) -> int:
        """Seed of the model's per-step draws: the config's, offset by rank and (for a resumed run) its start step."""
        return resume_seed(int(getattr(self.model.config, "seed", 0)) + 1000 * self._global_rank(), start_step)

    def _is_main(self) -> bool:
        return self._global_rank() == 0

    def total_steps(self) -> int:
        return int(getattr(self.model.config, "total_steps", 1))

    # -------------------------------------------------------------------------------------------- training
    def get_train_loss_dict(self, step: int):
        dm = self.datamanager
        c = dm.config
        now = time.perf_counter()
        throughput = None
        busy = (now - self._last_call - self._eval_seconds) if self._last_call is not None else 0.0
        if busy > 0:
            throughput = self._last_images * self.world_size / busy
        self._last_call, self._eval_seconds = now, 0.0
        self._train_calls += 1
        current_max = dm.set_max_views(
            max_views(
                step, self.total_steps(), min_views=c.min_views, max_views_cap=c.max_views,
                schedule_fraction=self.config.view_schedule_fraction,
            )
        )  # fmt: skip
        t0 = time.perf_counter()
        inputs, batch = dm.next_train(step)
        data_s = time.perf_counter() - t0
        self.model.update_to_step(step)
        model_inputs = dict(inputs)
        model_inputs["has_depth"] = batch["has_depth"]
        outputs = self._model(model_inputs)
        metrics = self.model.get_metrics_dict(outputs, batch)
        loss_dict = self.model.get_loss_dict(outputs, batch, metrics)
        B, V = inputs["context_image"].shape[:2]
        self._last_images = int(B * V)
        metrics["max_views"] = torch.tensor(float(current_max))
        metrics["data_time_s"] = torch.tensor(float(data_s))
        metrics["skipped_scenes"] = torch.tensor(float(sum(dm.skip_counts.values())))
        for reason, n in dm.skip_counts.items():
            metrics[f"skipped/{reason}"] = torch.tensor(float(n))
        for source, n in dm.scale_source_counts.items():  # "depth" (the reference's rule) or "baseline" (no depth)
            metrics[f"scale_source/{source}"] = torch.tensor(float(n))
        metrics["nonfinite_grad_skipped"] = torch.tensor(float(self.nonfinite_grad_skipped))
        if self.last_grad_norm is not None:
            metrics["grad_norm_prev"] = self.last_grad_norm  # the previous step's (metrics precede backward)
        if throughput is not None:
            metrics["images_per_s"] = torch.tensor(float(throughput))
        self._last_record = {"step": float(step), **_floats(loss_dict), **_floats(metrics)}
        if loss_dict:
            self._last_record["loss"] = float(sum(float(v.detach()) for v in loss_dict.values()))
        return outputs, loss_dict, metrics

    # ------------------------------------------------------------------------------------------ evaluation
    def _skip_eval(self) -> bool:
        return self.world_size > 1 and self.config.eval_rank0_only and not self._is_main()

    @_eval_time
    @torch.no_grad()
    def get_eval_loss_dict(self, step: int):
        if self._skip_eval():
            return {}, {"eval_skipped": torch.tensor(0.0)}, {}
        self.eval()
        try:
            inputs, batch = self.datamanager.next_eval(step)
            outputs = self.model({**inputs, "has_depth": batch["has_depth"]})
            metrics = self.model.get_metrics_dict(outputs, batch)
            loss_dict = self.model.get_loss_dict(outputs, batch, metrics)
        finally:
            self.train()
        return outputs, loss_dict, metrics

    @staticmethod
    def image_grid(context: torch.Tensor, target: torch.Tensor, render: torch.Tensor) -> torch.Tensor:
        """``(H, W, 3)`` grid of one scene: context views | target views | renders (rows), each ``(V, 3, h, w)``."""
        h = max(target.shape[-2], context.shape[-2])

        def row(x: torch.Tensor) -> torch.Tensor:
            if x.shape[-2] != h:
                x = torch.nn.functional.interpolate(x, size=(h, round(x.shape[-1] * h / x.shape[-2])), mode="area")
            return torch.cat(list(x), -1)

        rows = [row(context), row(target), row(render)]
        width = max(r.shape[-1] for r in rows)
        rows = [torch.nn.functional.pad(r, (0, width - r.shape[-1])) for r in rows]
        return torch.cat(rows, -2).permute(1, 2, 0).clamp(0, 1).float().cpu()

    @_eval_time
    @torch.no_grad()
    def get_eval_image_metrics_and_images(self, step: int):
        if self._skip_eval():
            return {"num_rays": 1}, {}
        self.eval()
        try:
            inputs, batch = self.datamanager.next_eval_image(step)
            outputs = self.model({**inputs, "has_depth": batch["has_depth"]})
            metrics, _ = self.model.get_image_metrics_and_images(outputs, batch)
        finally:
            self.train()
        render = outputs["target_render"][0, :, :3]
        images = {"context|target|render": self.image_grid(inputs["context_image"][0], batch["image"][0], render)}
        B, Vt = batch["image"].shape[:2]
        metrics["num_rays"] = int(B * Vt * render.shape[-1] * render.shape[-2])
        metrics["num_gaussians"] = float(outputs["means"].shape[1])
        return metrics, images

    @_eval_time
    @torch.no_grad()
    def get_average_eval_image_metrics(
        self, step: Optional[int] = None, output_path: Optional[Path] = None, get_std: bool = False
    ) -> Dict[str, float]:
        """The benchmark (``ns-eval``; the trainer's all-images evaluation when ``step`` is given).

        With an eval index file (``pipeline.benchmark`` or ``datamanager.eval_index_file``) this is the reference
        protocol of :func:`zipsplat_ns.eval.runner.run_benchmark_for_pipeline`: compression 1.0, fp32, target poses
        refined per ``pipeline.benchmark``, per-scene means then means (and population stds) over scenes, plus
        ``num_scenes``, ``num_missing`` and ``num_skipped``. ``output_path`` (``ns-eval --render-output-path``) is a
        folder for the per-scene tables, the resume log and the renders. During training at most
        ``benchmark.max_scenes_in_training`` scenes are used. Without an index file: a few test-stream batches,
        rendered at their GT poses.
        """
        if self._skip_eval():
            return {}
        b = self.config.benchmark
        if getattr(self.datamanager.config, "eval_index_file", None) is not None:
            from zipsplat_ns.eval.pose_refine import preset

            out = run_benchmark_for_pipeline(
                self, output_path, views=b.views, align_poses=b.align_poses, refine=preset(b.preset, num_steps=b.refine_steps),
                use_priors=b.use_priors, max_scenes=b.max_scenes_in_training if step is not None else None,
                save_renders=output_path is not None, progress=step is None, benchmark_name=b.name or "custom",
                strict=step is None,  # inside a training run an index that cannot be measured warns, never stops it
            )  # fmt: skip
            if not get_std:
                out = {k: v for k, v in out.items() if not k.endswith("_std")}
            return out
        return self._stream_eval(output_path, get_std)

    def _stream_eval(self, output_path: Optional[Path], get_std: bool) -> Dict[str, float]:
        from zipsplat_ns.metrics import compute_metrics

        dm = self.datamanager
        n = self.config.eval_fallback_batches
        logger.warning("no eval index file: evaluating %d test-stream batches at their GT poses", n)
        per_scene: Dict[str, Dict[str, float]] = {}
        self.eval()
        try:
            for i in range(n):
                inputs, batch = dm.next_eval(i)
                scene = ",".join(dm.last_batch_info.get("scene") or [f"batch{i}"])
                outputs = self.model({**inputs, "has_depth": batch["has_depth"]})
                rgb = outputs["target_render"][:, :, :3].clamp(0, 1)
                m = compute_metrics(rgb, batch["image"])
                per_scene[scene] = {k: float(v.float().mean()) for k, v in m.items()}
                if output_path is not None:
                    self._save_renders(Path(output_path), scene, rgb, batch["image"])
        finally:
            self.train()
        out: Dict[str, float] = {}
        if per_scene:
            for k in next(iter(per_scene.values())):
                vals = torch.tensor([s[k] for s in per_scene.values()], dtype=torch.float64)
                out[k] = float(vals.mean())
                if get_std:
                    out[f"{k}_std"] = float(vals.std(unbiased=False))
        out["num_scenes"] = float(len(per_scene))
        out["num_skipped"] = float(sum(dm.skip_counts.values()))
        return out

    @staticmethod
    def _save_renders(root: Path, scene: str, rgb: torch.Tensor, gt: torch.Tensor) -> None:
        from zipsplat_ns.images import safe_filename, save_png

        root.mkdir(parents=True, exist_ok=True)
        safe = safe_filename(scene)
        for b in range(rgb.shape[0]):
            for v in range(rgb.shape[1]):
                for name, img in (("render", rgb[b, v]), ("gt", gt[b, v])):
                    save_png(img, root / f"{safe}_{b:02d}_{v:02d}_{name}.png")

    # ---------------------------------------------------------------------------------- loading and scenes
    def load_pipeline(self, loaded_state: Dict[str, Any], step: int) -> None:
        """nerfstudio's loading, plus checkpoints that hold the network weights *by reference*.

        ``zipsplat-ns reconstruct`` with released / file / URL weights writes ``{WEIGHTS_REF_KEY: source}`` instead
        of a copy of the network (5.8 GB for giant); the network is then loaded from ``pipeline.model.weights``, and
        the two must name the same source (in test and inference mode the model is built without its starting
        weights, which a full checkpoint replaces anyway). In test and inference mode (ns-viewer,
        ns-eval, ns-export) the configured scene is predicted afterwards.
        """
        ref = loaded_state.get(WEIGHTS_REF_KEY)
        if ref is not None:
            want = getattr(self.model.config, "weights", None)
            if str(ref) != str(want):
                raise ValueError(
                    f"the checkpoint refers to network weights {ref!r} but config.yml has pipeline.model.weights = "
                    f"{want!r}; restore that field or run zipsplat-ns reconstruct again"
                )
            self.model.load_initial_weights()
            self.model.update_to_step(step)
        else:
            super().load_pipeline(loaded_state, step)
        if self.test_mode in ("test", "inference"):
            self.select_scene(self.datamanager.viewer_scene_key)

    def select_scene(self, key: Optional[str] = None, compression: Optional[float] = None) -> None:
        """Predict scene ``key`` (default: the one shown now, else the datamanager's viewer scene) at ``compression``
        (default: the viewer slider's value) and cache it on the model for the viewer and the exporter."""
        key = key or self._scene_key or self.datamanager.viewer_scene_key
        c = float(self.viewer_compression.value if compression is None else compression)
        use_priors = bool(getattr(self.model.config, "viewer_use_priors", False))
        self.model.set_scene(self.datamanager.scene_context(key), compression=c, use_priors=use_priors)
        self._scene_key = key
        self.viewer_num_gaussians.value = int(self.model.scene.num_gaussians) if self.model.scene is not None else 0

    # ---------------------------------------------------------------------------------------- viewer controls
    def _setup_viewer_controls(self) -> None:
        """Controls that nerfstudio's viewer finds on the pipeline ("Custom Elements"); see the README's viewer part.

        Compression re-runs the network on the shown scene; "Color by token" gives each token's Gaussians one colour;
        "Gaussians" shows the count; "Scene" switches between the scenes of the data (the input-camera frustums stay
        those of the scene the viewer started with).
        """
        from nerfstudio.viewer.viewer_elements import ViewerCheckbox, ViewerDropdown, ViewerNumber, ViewerSlider

        cfg = self.model.config
        self.viewer_compression = ViewerSlider(
            "Compression", float(getattr(cfg, "viewer_compression", 1.0)), 0.05, 1.0, 0.05,
            cb_hook=self._on_compression, hint="Fraction of patch tokens kept as scene tokens (re-runs the network)",
        )  # fmt: skip
        self.viewer_color_by_token = ViewerCheckbox(
            "Color by token", False, cb_hook=self._on_color_by_token,
            hint="Each scene token's Gaussians in one colour",
        )  # fmt: skip
        self.viewer_num_gaussians = ViewerNumber("Gaussians", 0, disabled=True, hint="Gaussians in the shown scene")
        key = self.datamanager.viewer_scene_key
        scenes = self.datamanager.scene_keys(limit=VIEWER_MAX_SCENES)
        if key not in scenes:
            scenes = [key] + scenes
        self.viewer_scene = ViewerDropdown("Scene", key, scenes, cb_hook=self._on_scene, hint="Scene to reconstruct")
        self.viewer_start_view = ReferenceViewOnConnect(self._reference_vfov)

    def _reference_vfov(self) -> Optional[float]:
        """Vertical field of view (radians) of the shown scene's first context camera."""
        cams = getattr(self.datamanager.train_dataset, "cameras", None)
        if cams is None or len(cams) == 0:
            return None
        return float(2 * torch.atan(0.5 * cams.height[0, 0].float() / cams.fy[0, 0].float()))

    def _on_compression(self, element) -> None:
        self.select_scene(compression=float(element.value))

    def _on_color_by_token(self, element) -> None:
        self.model.set_color_by_token(bool(element.value))

    def _on_scene(self, element) -> None:
        self.select_scene(key=str(element.value))

    # ------------------------------------------------------------------------------------------ callbacks
    def _install_grad_guard(self, optimizers) -> None:
        if self._grad_guard_installed or optimizers is None:
            return
        params = [p for p in self.model.parameters() if p.requires_grad]
        state = {"checked_for": -1}

        def pre_hook(optimizer, args, kwargs):
            # one global check per backward pass: the first optimizer stepping after a backward does it
            if state["checked_for"] == self._train_calls:
                return None
            state["checked_for"] = self._train_calls
            with_grad = [p for p in params if p.grad is not None]
            if not with_grad:
                return None
            grads = [p.grad for p in with_grad]
            # one multi-tensor norm over all gradients (a NaN/Inf anywhere makes it non-finite); a per-tensor
            # isfinite loop costs two launches per tensor (~1,800 for giant)
            total = torch.nn.utils.get_total_norm(grads, error_if_nonfinite=False)
            if not bool(torch.isfinite(total)):
                self.nonfinite_grad_skipped += 1
                logger.warning("non-finite gradient: skipping the optimizer step (%d so far)", self.nonfinite_grad_skipped)
                for p in params:
                    p.grad = None
                return None
            self.last_grad_norm = total.detach()
            clip = self.config.grad_clip_norm
            if clip is not None:  # one global norm over all groups, before any of them steps
                torch.nn.utils.clip_grads_with_norm_(with_grad, float(clip), total, foreach=True)  # scales .grad
            return None

        for opt in optimizers.optimizers.values():
            opt.register_step_pre_hook(pre_hook)
        self._grad_guard_installed = True

    def get_training_callbacks(self, training_callback_attributes: TrainingCallbackAttributes) -> List[TrainingCallback]:
        attrs = training_callback_attributes
        self._install_grad_guard(attrs.optimizers)
        trainer = attrs.trainer
        callbacks = list(self.datamanager.get_training_callbacks(attrs)) + list(self.model.get_training_callbacks(attrs))
        if trainer is not None:
            self._check_lengths(trainer)
            start = int(getattr(trainer, "_start_step", 0) or 0)
            if start > 0:  # resumed: new draws and data order from here, not a replay of the run's first steps
                self.model.seed_rng(self._model_seed(start))
                if hasattr(self.datamanager, "resume_at"):
                    self.datamanager.resume_at(start)
            if self.config.write_metrics_jsonl and self._is_main():
                self._metrics_path = Path(trainer.base_dir) / METRICS_FILENAME
                callbacks.append(
                    TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], self._write_metrics)
                )
            if getattr(trainer, "viewer_state", None) is not None:
                callbacks.append(
                    TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], self._refresh_viewer_scene)
                )
        return callbacks

    def _check_lengths(self, trainer) -> None:
        """Warn when the run's length and the schedules disagree, and when a resumed run would pass total_steps
        (nerfstudio runs --max-num-iterations *more* steps from the checkpoint's); warn once that a run without DA3
        or ZipSplat weights trains the ViT from scratch with the camera encoder frozen at its random init."""
        total = self.total_steps()
        n = int(trainer.config.max_num_iterations)
        start = int(getattr(trainer, "_start_step", 0) or 0)  # set by nerfstudio's checkpoint loading (step + 1)
        sched = []
        for group, spec in (trainer.config.optimizers or {}).items():
            s = spec.get("scheduler")
            if s is not None and hasattr(s, "max_steps"):
                sched.append((group, int(s.max_steps)))
        mismatch = [g for g, m in sched if m != total]
        if mismatch or (start == 0 and n != total):
            logger.warning(
                "training length: --max-num-iterations %d, model total_steps %d, scheduler max_steps %s; the LR, "
                "compression and view schedules assume total_steps (set --pipeline.model.total-steps and "
                "--optimizers.{backbone,head}.scheduler.max-steps together with --max-num-iterations)",
                n, total, dict(sched),
            )  # fmt: skip
        elif start > 0 and start >= total:
            logger.warning(
                "training length: resuming at step %d, the end of total_steps %d: the schedules are over "
                "(the learning rate is 0 from there on). To train on, raise --pipeline.model.total-steps and "
                "--optimizers.{backbone,head}.scheduler.max-steps together",
                start, total,
            )  # fmt: skip
        elif start > 0 and start + n > total:
            logger.warning(
                "training length: resuming at step %d, --max-num-iterations %d runs to step %d, past total_steps %d "
                "(the learning rate is 0 from there on); pass --max-num-iterations %d to stop at total_steps",
                start, n, start + n, total, total - start,
            )  # fmt: skip
        m = self.model.config
        no_weights = getattr(m, "weights", None) is None and getattr(m, "backbone_weights", None) is None
        if self._is_main() and start == 0 and no_weights:  # a resumed run continues from its checkpoint
            logger.warning(
                "training from scratch: no --pipeline.model.backbone-weights (converted DA3 weights, "
                "scripts/convert_da3_weights.py) or --pipeline.model.weights, so the ViT starts from random weights "
                "and cam_enc and the camera token, frozen as in the recipe, stay at their random initialisation "
                "(the released recipe freezes DA3's pretrained ones)"
            )

    def _write_metrics(self, step: int) -> None:
        if self._metrics_path is None or not self._last_record:
            return
        rec = dict(self._last_record)
        rec["step"] = int(step)
        rec["time"] = time.time()
        try:
            with open(self._metrics_path, "a") as f:
                f.write(json.dumps({k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in rec.items()}) + "\n")
        except OSError as exc:  # logging must never stop training
            logger.warning("could not append to %s: %s", self._metrics_path, exc)
            self._metrics_path = None

    def _refresh_viewer_scene(self, step: int) -> None:
        k = max(1, int(self.config.viewer_refresh_every))
        if self.model.scene is None or step % k == 0:
            self.select_scene()


__all__ = ["BenchmarkEvalConfig", "ZipSplatPipeline", "ZipSplatPipelineConfig", "METRICS_FILENAME", "WEIGHTS_REF_KEY"]
