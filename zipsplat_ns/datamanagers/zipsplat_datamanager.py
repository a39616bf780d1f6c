"""ZipSplat's nerfstudio DataManager: a DataLoader over :class:`~zipsplat_ns.data.dataset.ShardStream` (no DataParser).

``next_train(step)`` returns ``(inputs, batch)``, two dicts of tensors on the datamanager's device (``B`` scenes,
``Vc`` context and ``Vt`` target views, ``S`` the image size; float32 unless stated)::

    inputs = {
        "context_image":  (B, Vc, 3, S, S)  RGB in [0, 1]
        "context_camera": (B, Vc, 6)        [w, h, fx, fy, cx, cy] of the S x S crop
        "context_pose":   (B, Vc, 12)       c2w OpenCV, relative to context view 0 (identity), scale-normalised
        "target_camera":  (B, Vt, 6)
        "target_pose":    (B, Vt, 12)
    }
    batch = {
        "image":          (B, Vt, 3, S, S)  target images
        "depth":          (B, Vt, S, S)     target depth, normalised units, -1 = invalid
        "context_depth":  (B, Vc, S, S)
        "has_depth":      (B,) bool         geometry losses only where True
        "scale":          (B,)              normalisation scale (source units per normalised unit)
        "context_index":  (B, Vc) int64     source frame indices
        "target_index":   (B, Vt) int64
    }

The strings of the last batch (scene keys, dataset names, scale sources) are kept in :attr:`last_batch_info`. Skip
counters from all workers are summed in :attr:`skip_counts` and the scale sources in :attr:`scale_source_counts`.

``train_dataset`` / ``eval_dataset`` are small InputDataset-like views of one *viewer scene* (``viewer_scene``, the
``ZIPSPLAT_VIEWER_SCENE`` environment variable, or by default the first scene of the eval index file or of the test
shards): its context and target views, with nerfstudio ``Cameras`` in the y-up viewer world of
:func:`~zipsplat_ns.ns_cameras.to_nerfstudio` (``y_up_world=True``) relative to its context view 0. They satisfy what
the trainer, the pipeline and the viewer read (``len``, ``[i]["image"]`` float ``(H, W, 3)``, ``.cameras``,
``.scene_box``, ``.metadata``).

DDP: the stream is split by the global rank (``torch.distributed`` when initialised, else ``local_rank``) and
``world_size``. The DataLoader uses the default start method (``fork`` on Linux); the max-view value of
:meth:`ZipSplatDataManager.set_max_views` is a ``multiprocessing.Value`` the workers inherit.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Literal, Optional, Tuple, Type

import numpy as np
import torch
from torch.utils.data import DataLoader

from nerfstudio.data.datamanagers.base_datamanager import DataManager, DataManagerConfig
from nerfstudio.data.scene_box import SceneBox

from zipsplat_ns.camera import Camera
from zipsplat_ns.data.dataset import (
    DatasetSpec,
    SamplerConfig,
    SceneSkip,
    ShardDirectory,
    ShardStream,
    SkipLog,
    collate,
    new_max_views_value,
    process_scene,
)
from zipsplat_ns.data.samplers import BoundedSampler, IndexSampler
from zipsplat_ns.data.scene import SceneError
from zipsplat_ns.data.shards import list_shards
from zipsplat_ns.ns_cameras import to_nerfstudio
from zipsplat_ns.pose import Pose
from zipsplat_ns.schedules import resume_seed

logger = logging.getLogger(__name__)
VIEWER_SCENE_ENV = "ZIPSPLAT_VIEWER_SCENE"
VIEWER_SCENE_TRIES = 8  # scenes tried for an automatically picked viewer scene before giving up


@dataclass
class ZipSplatDataManagerConfig(DataManagerConfig):
    """Sharded multi-scene data for feed-forward training."""

    _target: Type = field(default_factory=lambda: ZipSplatDataManager)
    data: Optional[Path] = None
    """Shard root holding ``train-scenes/`` and ``test-scenes/``, or one shard directory (then used for both). Left out
    (with no ``datasets``): the built-in synthetic dataset, generated on first use into ``$ZIPSPLAT_CACHE`` (default
    ``~/.cache/zipsplat_ns``). Make shards with ``zipsplat-ns convert ...`` or ``zipsplat-ns synth``."""
    datasets: Tuple[Tuple[str, Path, float], ...] = ()
    """Weighted mix ``(name, shard root or directory, weight)``; when given it replaces ``data`` for the streams."""
    sampler: Literal["bounded", "random"] = "bounded"
    """View sampler for training and the in-training evaluation."""
    min_distance: int = 8
    """Bounded sampler: minimum context span (DL3DV values by default; RE10K uses 35, 45, 90)."""
    gap_multiplier: int = 11
    """Bounded sampler: maximum span per context view."""
    max_consecutive: int = 22
    """Bounded sampler: maximum gap between consecutive context views."""
    sampler_overrides: Tuple[Tuple[str, int, int, int], ...] = (("re10k", 35, 45, 90), ("dl3dv", 8, 11, 22))
    """Per dataset name ``(name, min_distance, gap_multiplier, max_consecutive)`` (the reference's values)."""
    num_workers: int = 8
    """DataLoader workers for training (each assembles whole batches)."""
    eval_num_workers: int = 1
    """DataLoader workers for the in-training evaluation stream."""
    prefetch_factor: int = 2
    """Batches prefetched per worker."""
    image_budget: int = 24
    """Context images per batch per GPU: scenes per batch = max(1, image_budget // views)."""
    min_views: int = 2
    """Smallest context view count drawn per batch."""
    max_views: int = 24
    """Largest context view count (the view schedule moves the current maximum up to this, see set_max_views)."""
    num_target_views: int = 4
    """Supervised target views per scene."""
    image_size: int = 252
    """Square crop size S."""
    max_pose_jump_ratio: float = 10.0
    """Training skips samples whose largest camera step exceeds this x the median step (0 = off)."""
    random_reference_view: bool = True
    """Shuffle the context order in training, so the reference (first) view is random."""
    use_depth: bool = True
    """Use stored depth for the scale and the geometry losses (baseline scale without it)."""
    eval_requires_depth: bool = True
    """Benchmark replay (ns-eval, eval_index_file): skip index scenes without valid depth, as the protocol does (its
    scale normalisation needs depth; counted as skipped, reason no_depth). False: normalise them by the camera
    baseline instead (labelled scale_source 'baseline'; not comparable with the reference's numbers)."""
    eval_views: int = 6
    """Context views of the in-training evaluation stream and of scenes without an index entry."""
    eval_batch_size: int = 1
    """Scenes per evaluation batch."""
    eval_index_file: Optional[Path] = None
    """Benchmark index JSON ``{scene: {"context": [...], "target": [...]}}`` replayed by benchmark_items()."""
    viewer_scene: Optional[str] = None
    """Scene shown by the viewer / export (default: the first eval index scene, else the first test scene)."""
    seed: int = 1
    """Base seed of the streams."""


_DATA_HINT = (
    "--data takes a folder of tar shards (or one holding train-scenes/ and test-scenes/): make one with "
    "`zipsplat-ns convert <format> SRC DST` or `zipsplat-ns synth --output DST`, or leave --data out for the built-in "
    "synthetic data"
)


def resolve_split_dirs(path: Path) -> Tuple[Optional[Path], Optional[Path]]:
    """``(train dir, test dir)`` of a shard root (``train-scenes``/``test-scenes``) or of a single shard directory."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"ZipSplat data: {path} is not a directory. {_DATA_HINT}")
    train, test = path / "train-scenes", path / "test-scenes"
    if train.is_dir() or test.is_dir():
        return (train if train.is_dir() else None), (test if test.is_dir() else None)
    if list_shards(path):
        return path, path
    if (path / "transforms.json").is_file():  # a nerfstudio scene, as ns-process-data writes it
        raise FileNotFoundError(
            f"ZipSplat data: {path} is a nerfstudio scene (transforms.json), not shards. Convert it first: "
            f"`zipsplat-ns convert nerfstudio {path} {path}-shards`, then --data {path}-shards"
        )
    raise FileNotFoundError(
        f"ZipSplat data: {path} holds neither train-scenes/ nor test-scenes/ nor *.tar shards. {_DATA_HINT}"
    )


class ViewerSceneDataset:
    """InputDataset-like view of one processed scene's views (what the trainer, pipeline and viewer read)."""

    def __init__(
        self, scene: str, images: torch.Tensor, camera: torch.Tensor, pose: torch.Tensor, indices: torch.Tensor
    ):
        self.scene = scene
        self.images = images  # (V, 3, S, S)
        self.frame_indices = indices
        self.cameras = to_nerfstudio(Camera(camera), Pose(pose), y_up_world=True)
        centres = self.cameras.camera_to_worlds[:, :3, 3]
        radius = float(max(2.0, 1.5 * centres.abs().max().item())) if len(centres) else 2.0
        self.scene_box = SceneBox(aabb=torch.tensor([[-radius] * 3, [radius] * 3], dtype=torch.float32))
        self.metadata: Dict[str, Any] = {"scene": scene}

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, idx: int) -> Dict[str, Any]:
        return {"image": self.images[idx].permute(1, 2, 0).contiguous(), "image_idx": idx}

    def get_image_float32(self, idx: int) -> torch.Tensor:
        return self[idx]["image"]


class ZipSplatDataManager(DataManager):
    """Streams train/test shard directories (see the module docstring for the batch format)."""

    config: ZipSplatDataManagerConfig

    def __init__(
        self,
        config: ZipSplatDataManagerConfig,
        device: torch.device | str = "cpu",
        test_mode: Literal["test", "val", "inference"] = "val",
        world_size: int = 1,
        local_rank: int = 0,
        **kwargs,
    ):
        # plain attributes only before nn.Module.__init__ (v1.1.5 DataManager is an nn.Module)
        self.config = config
        self.device = torch.device(device)
        self.test_mode = test_mode
        self.world_size = max(1, int(world_size))
        self.local_rank = int(local_rank)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            self.rank = torch.distributed.get_rank()
        else:
            self.rank = self.local_rank % self.world_size
        self.train_specs, self.eval_specs = self._build_specs()
        self.skip_counts: Counter = Counter()
        self.viewer_scenes_skipped: List[str] = []  # scenes picked for the viewer that could not be loaded
        self.target_downscale = 1  # the model's render_downscale (the pipeline sets it): supervised pixels per view
        self.scale_source_counts: Counter = Counter()
        self.benchmark_missing: List[str] = []
        self.last_batch_info: Dict[str, List[str]] = {}
        self._max_views = new_max_views_value(config.max_views)
        self._train_stream: Optional[ShardStream] = None
        self._train_loader: Optional[DataLoader] = None
        self._train_iter: Optional[Iterator] = None
        self._eval_stream: Optional[ShardStream] = None
        self._eval_loader: Optional[DataLoader] = None
        self._eval_iter: Optional[Iterator] = None
        self._last_shape: Optional[Tuple[int, int]] = None
        self._index: Optional[IndexSampler] = (
            IndexSampler.from_file(config.eval_index_file) if config.eval_index_file is not None else None
        )
        self.viewer_scene_key, (ctx, tgt) = self._load_viewer_scene()
        self.train_dataset = ctx
        self.eval_dataset = tgt
        super().__init__()

    # ------------------------------------------------------------------------------------------------ setup
    def _sampler_for(self, name: str) -> SamplerConfig:
        c = self.config
        for key, md, gm, mc in c.sampler_overrides:
            if key.lower() in name.lower():
                return SamplerConfig(c.sampler, md, gm, mc)
        return SamplerConfig(c.sampler, c.min_distance, c.gap_multiplier, c.max_consecutive)

    def _build_specs(self) -> Tuple[List[DatasetSpec], List[DatasetSpec]]:
        c = self.config
        sources: List[Tuple[str, Path, float]] = [(n, Path(p), float(w)) for n, p, w in c.datasets]
        if not sources:
            if c.data is None:
                raise ValueError(
                    "ZipSplatDataManager: no data; set --pipeline.datamanager.data to a shard root "
                    "(train-scenes/ and test-scenes/) or a shard directory, or give --pipeline.datamanager.datasets"
                )
            root = Path(c.data)
            name = root.parent.name if root.name in ("train-scenes", "test-scenes") else root.name
            sources = [(name, root, 1.0)]
        train, evals = [], []
        for name, path, weight in sources:
            tr, te = resolve_split_dirs(path)
            if tr is None:
                logger.warning("dataset %s: no train-scenes/ in %s; training on its test scenes", name, path)
                tr = te
            if te is None:
                logger.warning("dataset %s: no test-scenes/ in %s; evaluating on its train scenes", name, path)
                te = tr
            sampler = self._sampler_for(name)
            train.append(DatasetSpec(tr, weight, sampler, name))
            evals.append(DatasetSpec(te, weight, sampler, name))
        return train, evals

    def _stream(self, specs: List[DatasetSpec], train: bool, rank: int, world: int,
                require_depth: bool = False) -> ShardStream:  # fmt: skip
        c = self.config
        return ShardStream(
            specs,
            train=train,
            image_size=c.image_size,
            image_budget=c.image_budget,
            min_views=c.min_views,
            max_views=c.max_views,
            num_target_views=c.num_target_views,
            eval_views=c.eval_views,
            eval_batch_size=c.eval_batch_size,
            max_pose_jump_ratio=c.max_pose_jump_ratio,
            random_reference=c.random_reference_view,
            use_depth=c.use_depth,
            require_depth=require_depth,
            seed=c.seed,
            rank=rank,
            world_size=world,
            max_views_value=self._max_views if train else None,
        )

    def _loader(self, stream: ShardStream, workers: int) -> DataLoader:
        kw: Dict[str, Any] = {}
        if workers > 0:
            kw["prefetch_factor"] = self.config.prefetch_factor
        return DataLoader(stream, batch_size=None, num_workers=workers, pin_memory=self.device.type == "cuda", **kw)

    def setup_train(self) -> None:
        """Build the training stream and loader (the worker processes start at the first next_train)."""
        self._train_stream = self._stream(self.train_specs, True, self.rank, self.world_size)
        self._train_loader = self._loader(self._train_stream, self.config.num_workers)

    def setup_eval(self) -> None:
        """Build the in-training evaluation stream (test shards, bounded eval mode, fixed view count).

        Not split by rank: every rank that evaluates (rank 0 alone with the pipeline's ``eval_rank0_only``, the
        default) sees the whole test set; split, rank 0 would see 1/world of it, and a single scene when there are
        fewer test shards than ranks."""
        self._eval_stream = self._stream(self.eval_specs, False, 0, 1)
        self._eval_loader = self._loader(self._eval_stream, self.config.eval_num_workers)

    # ---------------------------------------------------------------------------------------- batch plumbing
    def _absorb(self, raw: Dict[str, Any]) -> None:
        skipped = raw.get("skipped") or {}
        if skipped:
            self.skip_counts.update(skipped)
            total = sum(self.skip_counts.values())
            logger.info(
                "skipped %d scene(s) (%s); %d in total so far %s",
                sum(skipped.values()), "; ".join(raw.get("skipped_scenes", [])[:5]), total, dict(self.skip_counts),
            )  # fmt: skip
        sources = list(raw.get("scale_source", []))
        if "baseline" in sources and not self.scale_source_counts.get("baseline"):
            scene = list(raw.get("scene", []))[sources.index("baseline")] if raw.get("scene") else "?"
            logger.warning(
                "scene %s has no depth: its scale is normalised by the largest distance between its context cameras "
                "instead of the reference's median depth, and its geometry losses are off; run `zipsplat-ns depth` "
                "on the shards to add depth (counted as scale_source/baseline in the metrics)", scene,
            )  # fmt: skip
        self.scale_source_counts.update(sources)
        self.last_batch_info = {
            "scene": list(raw.get("scene", [])),
            "dataset": list(raw.get("dataset", [])),
            "scale_source": list(raw.get("scale_source", [])),
        }

    def _split(self, raw: Dict[str, Any]) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
        ctx, tgt = raw["context"], raw["target"]
        nb = self.device.type == "cuda"

        def mv(x: torch.Tensor) -> torch.Tensor:
            return x.to(self.device, non_blocking=nb)

        inputs = {
            "context_image": mv(ctx["image"]),
            "context_camera": mv(ctx["camera"]),
            "context_pose": mv(ctx["pose"]),
            "target_camera": mv(tgt["camera"]),
            "target_pose": mv(tgt["pose"]),
        }
        batch = {
            "image": mv(tgt["image"]),
            "depth": mv(tgt["depth"]),
            "context_depth": mv(ctx["depth"]),
            "has_depth": mv(raw["has_depth"]),
            "scale": mv(raw["scale"]),
            "context_index": mv(ctx["index"]),
            "target_index": mv(tgt["index"]),
        }
        return inputs, batch

    def resume_at(self, step: int) -> None:
        """A run resumed at ``step``: shuffle shards and draw views / batch shapes from a seed of that step, so the
        continuation does not replay the data order of the run's start. Before the first batch only."""
        if step <= 0:
            return
        if self._train_iter is not None:
            raise RuntimeError("ZipSplatDataManager.resume_at: the training stream has started already")
        if self._train_stream is None:
            self.setup_train()
        self._train_stream.seed = resume_seed(self.config.seed, step)

    def next_train(self, step: int) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
        """The next training batch as ``(inputs, batch)`` on the device (see the module docstring)."""
        self.train_count += 1
        if self._train_loader is None:
            self.setup_train()
        if self._train_iter is None:
            self._train_iter = iter(self._train_loader)
        raw = next(self._train_iter)
        self._absorb(raw)
        self._last_shape = (int(raw["target"]["image"].shape[0]), int(raw["target"]["image"].shape[1]))
        return self._split(raw)

    def next_eval(self, step: int) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
        """The next in-training evaluation batch (test shards; restarts when the split is exhausted)."""
        self.eval_count += 1
        if self._eval_loader is None:
            self.setup_eval()
        for _ in range(2):
            if self._eval_iter is None:
                self._eval_iter = iter(self._eval_loader)
            try:
                raw = next(self._eval_iter)
                break
            except StopIteration:
                self._eval_iter = None
        else:
            dirs = [str(s.path) for s in self.eval_specs]
            raise RuntimeError(f"ZipSplatDataManager: the eval stream over {dirs} yields no usable scene")
        self._absorb(raw)
        return self._split(raw)

    def next_eval_image(self, step: int) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
        """Same as :meth:`next_eval` (one batch of ``eval_batch_size`` scenes); the ZipSplat pipeline consumes it."""
        return self.next_eval(step)

    def set_max_views(self, n: int) -> int:
        """Set the current maximum context view count (view schedule); returns the value in effect (clamped to
        ``[min_views, max_views]``). Workers pick it up at their next batch."""
        v = int(min(max(int(n), self.config.min_views), self.config.max_views))
        self._max_views.value = v
        return v

    def current_max_views(self) -> int:
        return int(self._max_views.value)

    def get_train_rays_per_batch(self) -> int:
        """Pixels of the supervised (target) renders per step: ``B * Vt * (S / d)^2`` of the last batch (an estimate
        at the current max view count before the first batch), ``d`` the model's ``render_downscale``
        (:attr:`target_downscale`, set by the pipeline): what nerfstudio's "Train Rays / Sec" counts."""
        c = self.config
        if self._last_shape is not None:
            b, vt = self._last_shape
        else:
            b, vt = max(1, c.image_budget // max(1, self.current_max_views())), c.num_target_views
        side = c.image_size // max(1, int(self.target_downscale))
        return int(b * vt * side * side)

    def get_eval_rays_per_batch(self) -> int:
        c = self.config
        return int(c.eval_batch_size * c.num_target_views * c.image_size * c.image_size)

    def get_datapath(self) -> Path:
        if self.config.data is not None:
            return Path(self.config.data)
        return Path(self.config.datasets[0][1])

    def get_param_groups(self) -> Dict[str, List]:
        return {}

    # ------------------------------------------------------------------------------------- single scenes
    def _directories(self) -> List[Tuple[str, ShardDirectory]]:
        out, seen = [], set()
        for spec in self.eval_specs + self.train_specs:
            if spec.path not in seen:
                seen.add(spec.path)
                out.append((spec.name, ShardDirectory(spec.path)))
        return out

    def scene_keys(self, limit: Optional[int] = None) -> List[str]:
        """Scene keys of the test shards, then of the train shards (no duplicates; at most ``limit``)."""
        out: List[str] = []
        seen = set()
        for _, d in self._directories():
            for k in d.keys():
                if k not in seen:
                    seen.add(k)
                    out.append(k)
                    if limit is not None and len(out) >= limit:
                        return out
        return out

    def _viewer_scene_candidates(self) -> Tuple[bool, List[str]]:
        """Whether the viewer scene was chosen explicitly, and the scene keys to try in order: the chosen one, else the
        first few of the eval index (those in the data), then of the shard directories."""
        explicit = self.config.viewer_scene or os.environ.get(VIEWER_SCENE_ENV) or None
        dirs = self._directories()
        if explicit:
            if self.test_mode != "test" or any(explicit in d for _, d in dirs):
                return True, [explicit]
            # ns-eval / ns-viewer of a run with pipeline.benchmark: the benchmark's shards replaced the run's data,
            # so a viewer scene of the training data is not there (and ns-eval does not need one)
            logger.warning(
                "viewer scene %r is not in the evaluation data %s; showing that data's first scene instead",
                explicit, [str(d.path) for _, d in dirs],
            )  # fmt: skip
        limit = VIEWER_SCENE_TRIES
        keys: List[str] = []
        if self._index is not None:
            keys += [k for k in self._index.scenes if any(k in d for _, d in dirs)][:limit]
        for _, d in dirs:
            keys += [k for k in d.keys()[:limit] if k not in keys]
        if not keys:
            raise FileNotFoundError(f"ZipSplatDataManager: no scenes in {[str(d.path) for _, d in dirs]}")
        return False, keys[:limit]

    def _load_viewer_scene(self) -> Tuple[str, Tuple[ViewerSceneDataset, ViewerSceneDataset]]:
        """The viewer scene and its context / target views. A scene picked automatically that cannot be loaded is
        skipped, logged and counted (``viewer_scenes_skipped``), and the next one tried; a chosen one must load."""
        explicit, keys = self._viewer_scene_candidates()
        problems: List[str] = []
        for key in keys:
            try:
                return key, self._viewer_views(key)
            except (SceneError, SceneSkip, KeyError, ValueError) as exc:
                if explicit:
                    raise RuntimeError(
                        f"ZipSplatDataManager: cannot load the viewer scene {key!r} ({exc}); choose another with "
                        f"--pipeline.datamanager.viewer-scene or {VIEWER_SCENE_ENV}"
                    ) from exc
                problems.append(f"{key}: {exc}")
                self.viewer_scenes_skipped.append(key)
                logger.warning("viewer scene %r cannot be loaded, trying the next scene: %s", key, exc)
        raise RuntimeError(
            f"ZipSplatDataManager: none of the first {len(keys)} scene(s) can be loaded as the viewer scene ("
            + "; ".join(problems[:3])
            + (" ..." if len(problems) > 3 else "")
            + f"); check the data with 'zipsplat-ns shards check', or choose a scene with "
            f"--pipeline.datamanager.viewer-scene or {VIEWER_SCENE_ENV}"
        )

    def _scene_sample(self, key: str) -> Dict[str, Any]:
        """Process scene ``key`` for display / inference: its index entry when the eval index has one, else a
        deterministic bounded eval sample with ``eval_views`` context views."""
        c = self.config
        for name, d in self._directories():
            if key not in d:
                continue
            raw = d.load(key)
            rng = np.random.default_rng([c.seed, 0xF1E])
            if self._index is not None and key in self._index:
                views = self._index.sample(raw.num_views, key=key)
            else:
                nt = min(c.num_target_views, max(0, raw.num_views - 1))
                vc = max(1, min(c.eval_views, raw.num_views))
                views = BoundedSampler(**self._bounded_args(name), train=False).sample(raw.num_views, vc, nt, rng, key)
            return process_scene(
                raw, views, image_size=c.image_size, use_depth=c.use_depth, dataset=name, allow_unposed=True
            )
        raise KeyError(f"scene {key!r} is in none of {[str(d.path) for _, d in self._directories()]}")

    def _bounded_args(self, name: str) -> Dict[str, int]:
        s = self._sampler_for(name)
        return {
            "min_distance": s.min_distance,
            "gap_multiplier": s.gap_multiplier,
            "max_consecutive": s.max_consecutive,
        }

    def _viewer_views(self, key: str) -> Tuple[ViewerSceneDataset, ViewerSceneDataset]:
        b = collate([self._scene_sample(key)])
        out = []
        for g in ("context", "target"):
            v = b[g]
            if v["image"].shape[1] == 0:  # a scene without target views: show the context views
                v = b["context"]
            out.append(ViewerSceneDataset(key, v["image"][0], v["camera"][0], v["pose"][0], v["index"][0]))
        return out[0], out[1]

    def scene_batch(self, key: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
        """``(inputs, batch)`` with ``B = 1`` for scene ``key`` on the device."""
        raw = collate([self._scene_sample(key)])
        return self._split(raw)

    def scene_context(self, key: str) -> Dict[str, torch.Tensor]:
        """The model inputs (context views and target cameras) of scene ``key``, ``B = 1``, on the device."""
        return self.scene_batch(key)[0]

    def benchmark_items(self) -> Iterator[Tuple[str, Dict[str, torch.Tensor], Dict[str, torch.Tensor]]]:
        """``(scene, inputs, batch)`` for every scene of ``eval_index_file`` in index order (this process, no
        workers). Index scenes missing from the shards end up in :attr:`benchmark_missing`; skipped scenes are
        counted in :attr:`skip_counts` and logged."""
        if self.config.eval_index_file is None:
            raise ValueError("benchmark_items() needs --pipeline.datamanager.eval-index-file")
        specs = [DatasetSpec(s.path, s.weight, s.sampler, s.name) for s in self.eval_specs]
        specs[0].sampler = SamplerConfig(kind="index", index_file=Path(self.config.eval_index_file))
        stream = self._stream(specs, False, 0, 1, require_depth=self.config.eval_requires_depth)
        self.benchmark_missing = stream.missing_scenes()
        skips = SkipLog()
        for raw in stream.iter_index_scenes(skips):
            self._absorb(raw)
            inputs, batch = self._split(raw)
            yield raw["scene"][0], inputs, batch
        counts, _ = skips.drain()
        self.skip_counts.update(counts)


__all__ = ["ZipSplatDataManagerConfig", "ZipSplatDataManager", "ViewerSceneDataset", "resolve_split_dirs"]
