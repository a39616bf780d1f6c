"""``zipsplat-ns reconstruct``: any capture -> Gaussians, as a nerfstudio run for ``ns-viewer`` and ``ns-export``.

Inputs (told apart by :func:`detect_input`):

=============  ==========================================================  ============================================
kind           INPUT                                                       views
=============  ==========================================================  ============================================
images         a folder of images, a glob (``"photos/*.jpg"``), one image  all images (sorted by name); unposed
video          ``.mp4 .mov .avi .mkv .webm ...``                           ``--num-frames`` evenly spaced frames; unposed
nerfstudio     a folder with ``transforms.json`` (``ns-process-data``)      ``--num-frames`` evenly spaced frames, posed
shards         a shard folder (``*.tar`` + ``index.json``)                 scene ``--scene`` (default: the first),
                                                                           ``--num-frames`` evenly spaced frames, posed
=============  ==========================================================  ============================================

Views of any size are centre-cropped and resized to the network's 252 px (the datamanager's preprocessing).
Unposed inputs get identity poses and a guessed field of view (``--fov-deg``); they cannot be used as priors.

Weights (``--weights``): a released name (``zipsplat``), a local checkpoint or a URL, a training run directory (its
latest ``nerfstudio_models/step-*.ckpt``, variant from its ``config.yml``), or ``random-<variant>`` (an untrained,
seeded network, for tests and demos).

Output folder ``D`` (written into a staging folder and moved into place only when complete)::

    D/config.yml              nerfstudio config (ZipSplatRunConfig, run_dir = D): ns-viewer / ns-export / ns-eval
    D/nerfstudio_models/      step-000000000.ckpt: the network (random weights), or a reference to --weights
    D/data/                   the input as one shard scene + index.json + reconstruct_index.json (its views)
    D/scene.ply               the Gaussians, standard 3DGS layout, in the y-up world of ns-export
    D/turntable.mp4           with --video turntable (or wiggle.mp4)
    D/reconstruct.json        what was done: input kind, views, weights, Gaussian count, timings

The run directory records absolute paths (``run_dir``, ``data``): move it and ``ns-viewer`` no longer finds it
(reconstruct again, or edit those two fields of ``config.yml``).
"""

from __future__ import annotations

import copy
import glob as globlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Tuple

import numpy as np
import torch
import tyro

from zipsplat_ns.images import IMAGE_SUFFIXES, VIDEO_SUFFIXES

logger = logging.getLogger(__name__)
InputKind = Literal["images", "video", "nerfstudio", "shards"]
_GLOB_CHARS = set("*?[")
CHECKPOINT_NAME = "step-000000000.ckpt"
INDEX_NAME = "reconstruct_index.json"


class ReconstructError(ValueError):
    """The input or the options cannot be reconstructed (the message says what and how to fix it)."""


# ------------------------------------------------------------------------------------------------------ inputs
def detect_input(source: str) -> InputKind:
    """Tell an image folder / glob / image, a video, a nerfstudio dataset and a shard folder apart."""
    from zipsplat_ns.data.shards import list_shards

    text = str(source)
    p = Path(text).expanduser()
    if not p.exists():
        if any(c in text for c in _GLOB_CHARS):
            if not globlib.glob(os.path.expanduser(text), recursive=True):
                raise ReconstructError(f"reconstruct: the pattern {text!r} matches no files")
            return "images"
        raise ReconstructError(f"reconstruct: {p} does not exist")
    if p.is_dir():
        if (p / "transforms.json").is_file():
            return "nerfstudio"
        if list_shards(p):
            return "shards"
        if any(q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES for q in p.iterdir()):
            return "images"
        raise ReconstructError(
            f"reconstruct: cannot tell what {p} is: it holds no transforms.json (nerfstudio data), no *.tar shards "
            f"and no image files ({', '.join(IMAGE_SUFFIXES)})"
        )
    suffix = p.suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        return "video"
    if suffix in IMAGE_SUFFIXES:
        return "images"
    raise ReconstructError(
        f"reconstruct: unknown input kind {p.name!r}: expected an image folder, a glob pattern, an image "
        f"({', '.join(IMAGE_SUFFIXES)}), a video ({', '.join(VIDEO_SUFFIXES)}), a nerfstudio data folder "
        "(transforms.json) or a shard folder (*.tar)"
    )


def even_frames(num_views: int, count: int) -> List[int]:
    """``count`` evenly spaced frame indices of ``num_views`` (all of them when ``count >= num_views``)."""
    if num_views < 1:
        raise ReconstructError("reconstruct: the scene has no views")
    if count >= num_views:
        return list(range(num_views))
    return sorted(set(np.round(np.linspace(0, num_views - 1, max(1, count))).astype(int).tolist()))


@dataclass
class StagedInput:
    """The input as one shard scene: its key, the context frames (indices into the staged scene), whether it has
    real poses, the source name of each context frame, and the input frames left out (``(name, reason)``)."""

    key: str
    frames: List[int]
    posed: bool
    view_names: List[str]
    skipped: List[Tuple[str, str]]


def stage_input(
    source: str, kind: InputKind, data_dir: Path, *, num_frames: int, fov_deg: float, scene: Optional[str],
    progress: bool,
) -> StagedInput:  # fmt: skip
    """Write the input as one shard scene into ``data_dir``. Input frames that cannot be read are left out and
    reported; every context image is decoded here, so a damaged one fails now, by name."""
    from zipsplat_ns.data.converters import ConvertError, convert_media, convert_nerfstudio
    from zipsplat_ns.data.dataset import ShardDirectory
    from zipsplat_ns.data.images import decode_image
    from zipsplat_ns.data.scene import SceneError
    from zipsplat_ns.data.shards import ShardWriter

    if scene is not None and kind != "shards":
        raise ReconstructError("reconstruct: --scene only applies to a shard folder")
    report = None  # the converter's report (shard input is copied as it is)
    try:
        if kind in ("images", "video"):
            report = convert_media(os.path.expanduser(source), data_dir, num_frames=num_frames, fov_deg=fov_deg,
                                   progress=progress)  # fmt: skip
        elif kind == "nerfstudio":
            report = convert_nerfstudio(Path(source).expanduser(), data_dir, progress=progress)
            if report.num_converted != 1:
                raise ReconstructError(f"reconstruct: {source} could not be converted ({report.skipped})")
        else:
            src = ShardDirectory(Path(source).expanduser())
            keys = src.keys()
            if not keys:
                raise ReconstructError(f"reconstruct: the shard folder {source} holds no scenes")
            key = scene or keys[0]
            if key not in src:
                shown = ", ".join(keys[:10]) + (" ..." if len(keys) > 10 else "")
                raise ReconstructError(f"reconstruct: scene {key!r} is not in {source}; its scenes: {shown}")
            raw = src.load(key)
            with ShardWriter(data_dir) as w:
                w.add(raw)
    except ConvertError as exc:
        raise ReconstructError(str(exc)) from exc
    except SceneError as exc:
        raise ReconstructError(f"reconstruct: {source}: {exc}") from exc
    d = ShardDirectory(data_dir)
    (key,) = d.keys()
    raw = d.load(key)
    posed = raw.meta.get("posed", True) is not False
    frames = list(range(raw.num_views)) if kind in ("images", "video") else even_frames(raw.num_views, num_frames)
    names = raw.meta.get("frames")
    if not (isinstance(names, list) and len(names) == raw.num_views):
        names = [f"view {i}" for i in range(raw.num_views)]
    view_names = [str(names[i]) for i in frames]
    for i, name in zip(frames, view_names, strict=True):
        try:
            decode_image(raw.images[i], name=name)
        except ValueError as exc:
            raise ReconstructError(
                f"reconstruct: {source}: {name} cannot be decoded ({exc}); remove or replace that file"
            ) from exc
    skipped = [f for fs in report.skipped_frames.values() for f in fs] if report is not None else []
    return StagedInput(key, frames, posed, view_names, skipped)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (another user's), or we cannot tell: keep its folder
    return True


def _remove_abandoned(final: Path) -> None:
    """Delete the staging / old-copy folders of ``final`` that a killed reconstruct left behind (their process is
    gone; a running one keeps its own). A clean exit or Ctrl-C removes them itself, a SIGKILL cannot."""
    for p in final.parent.glob(f".{final.name}.*-*"):
        kind, _, pid = p.name[len(final.name) + 2 :].rpartition("-")
        if kind in ("partial", "old") and pid.isdigit() and p.is_dir() and not _pid_alive(int(pid)):
            logger.info("reconstruct: removing %s, left by an interrupted run", p)
            shutil.rmtree(p, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------- weights
@dataclass
class WeightsPlan:
    """Where the network comes from: ``variant``, the ``pipeline.model.weights`` source (None = random init, saved
    into the checkpoint), the base method config, and a label for the report."""

    variant: str
    source: Optional[str]
    base_config: Any
    label: str
    random_seed: Optional[int] = None


def _run_config(run: Path) -> Tuple[Path, Any]:
    import yaml

    from zipsplat_ns.config import find_run_config

    try:
        cfg_path = find_run_config(run)
    except FileNotFoundError as exc:
        raise ReconstructError(f"reconstruct: {exc}") from exc
    return cfg_path, yaml.load(cfg_path.read_text(), Loader=yaml.Loader)


def plan_weights(weights: str, variant: str, seed: int, gaussians_per_token: Optional[int]) -> WeightsPlan:
    """Resolve ``--weights`` into a :class:`WeightsPlan` (see the module docstring)."""
    from zipsplat_ns.config import METHODS_BY_VARIANT, method_config
    from zipsplat_ns.models.zipsplat_model import ZipSplatModelConfig

    if weights.startswith("random-"):
        var = weights[len("random-"):]
        if var not in METHODS_BY_VARIANT:
            raise ReconstructError(f"reconstruct: unknown variant in {weights!r}; use random-<{'|'.join(METHODS_BY_VARIANT)}>")
        cfg = method_config(var)
        if gaussians_per_token is not None:
            cfg.pipeline.model.gaussians_per_token = int(gaussians_per_token)
        return WeightsPlan(var, None, cfg, f"RANDOM WEIGHTS ({var}, seed {seed})", random_seed=seed)
    p = Path(weights).expanduser()
    if p.is_dir() or (p.is_file() and p.name.endswith((".yml", ".yaml"))):
        cfg_path, run_cfg = _run_config(p)
        ckpt_dir = run_cfg.get_checkpoint_dir()
        if not ckpt_dir.is_absolute():  # nerfstudio resolves relative output_dir against the working directory
            ckpt_dir = Path.cwd() / ckpt_dir
        ckpts = sorted(ckpt_dir.glob("step-*.ckpt")) if ckpt_dir.is_dir() else []
        if not ckpts:
            raise ReconstructError(
                f"reconstruct: the run {cfg_path.parent} has no checkpoint in {ckpt_dir} (run from the folder "
                "where it was trained, or train it first)"
            )
        if gaussians_per_token is not None:
            raise ReconstructError("reconstruct: --gaussians-per-token does not apply to a training run (its config has it)")
        model_cfg = run_cfg.pipeline.model
        cfg = method_config(model_cfg.variant)
        cfg.pipeline.model = copy.deepcopy(model_cfg)
        return WeightsPlan(model_cfg.variant, str(ckpts[-1].resolve()), cfg, f"run {cfg_path.parent} ({ckpts[-1].name})")
    source = str(p.resolve()) if p.is_file() else weights
    cfg = method_config(variant)
    # the released layout (32 Gaussians per token), not the method's training choice (tiny trains with fewer)
    gpt = ZipSplatModelConfig.gaussians_per_token if gaussians_per_token is None else int(gaussians_per_token)
    cfg.pipeline.model.gaussians_per_token = gpt
    return WeightsPlan(variant, source, cfg, f"{weights} ({variant})")


# ------------------------------------------------------------------------------------------------------ config
def build_run_config(plan: WeightsPlan, run_dir: Path, data_dir: Path, key: str, *, device: str,
                     compression: float, use_priors: bool, allow_pickle: bool = False):  # fmt: skip
    """The ``ZipSplatRunConfig`` of a reconstruction in ``run_dir`` (absolute) with its data in ``data_dir``."""
    from zipsplat_ns.config import ZipSplatRunConfig

    base = copy.deepcopy(plan.base_config)  # each call its own config (the staged and the final one differ)
    cfg = ZipSplatRunConfig(**{f: getattr(base, f) for f in base.__dataclass_fields__})
    cfg.run_dir = run_dir
    cfg.output_dir = run_dir.parent
    cfg.experiment_name = run_dir.name
    cfg.timestamp = ""
    cfg.machine.device_type = torch.device(device).type
    cfg.vis = "viewer"
    cfg.viewer.websocket_host = "127.0.0.1"
    dm = cfg.pipeline.datamanager
    dm.data = data_dir
    dm.datasets = ()
    dm.eval_index_file = data_dir / INDEX_NAME
    dm.viewer_scene = key
    dm.num_workers = 0
    dm.eval_num_workers = 0
    m = cfg.pipeline.model
    m.weights = plan.source
    m.backbone_weights = None
    m.allow_pickle = bool(allow_pickle)  # saved in config.yml: ns-viewer / ns-export reload the same file
    m.viewer_compression = float(compression)
    m.eval_compression = float(compression)
    m.viewer_use_priors = bool(use_priors)
    return cfg


# ------------------------------------------------------------------------------------------------------ command
@dataclass
class ReconstructCommand:
    """Reconstruct a capture into Gaussians and a nerfstudio run: `ns-viewer --load-config D/config.yml`,
    `ns-export gaussian-splat --load-config D/config.yml --output-dir D/export`.

    INPUT is an image folder, a glob ("photos/*.jpg"), a video, a nerfstudio data folder (transforms.json) or a shard
    folder. Writes D/config.yml, D/nerfstudio_models/, D/data/, D/scene.ply and (--video) an orbit video.
    """

    input: tyro.conf.Positional[str]
    """Image folder, glob pattern, image, video, nerfstudio data folder, or shard folder."""
    weights: str = "zipsplat"
    """'zipsplat' (released, CC BY-NC 4.0), a checkpoint file or URL, a training run folder, or random-<variant>."""
    output_dir: Path = Path("outputs/reconstruct")
    """The run folder D (config.yml, checkpoint, data, scene.ply, video)."""
    variant: str = "giant"
    """Network variant of a weights file / URL (the released weights are giant)."""
    allow_pickle: bool = False
    """Accept a weights file that needs full unpickling (torch.load weights_only=False); only for files you trust."""
    num_frames: int = 8
    """Views taken evenly from a video, a nerfstudio dataset or a shard scene (image folders use every image)."""
    scene: Optional[str] = None
    """Shard folder input: the scene key (default: the first scene)."""
    compression: float = 1.0
    """Fraction of patch tokens kept as scene tokens (0.05 to 1; Gaussians = int(V*324*c)*32)."""
    use_priors: bool = False
    """Condition the network on the input cameras and poses (nerfstudio data and shards only)."""
    fov_deg: float = 60.0
    """Unposed images / video: guessed horizontal field of view of the cameras (frustums, priors are off)."""
    video: Literal["none", "turntable", "wiggle"] = "none"
    """Also render an orbit video (D/turntable.mp4 or D/wiggle.mp4)."""
    video_frames: int = 180
    """Frames of the video."""
    video_size: int = 512
    """Side of the square video frames in pixels."""
    video_fps: int = 30
    """Frames per second of the video."""
    device: str = "auto"
    """Torch device (auto: cuda when available, else cpu)."""
    gaussians_per_token: Optional[int] = None
    """Gaussians per token of random-<variant> or of a weights file (default 32, the released layout)."""
    seed: int = 0
    """Seed of random-<variant> weights."""
    overwrite: bool = False
    """Replace an existing output folder (only once the new one is complete)."""
    progress: bool = True
    """Show progress bars."""

    def main(self) -> int:
        from rich.console import Console

        console = Console(stderr=True)
        report = self.run()
        d = report["run_dir"]
        console.print(
            f"[bold green]reconstructed[/bold green] {report['input']} ({report['input_kind']}, "
            f"{len(report['views'])} views) -> {report['num_gaussians']:,} Gaussians with {report['weights']}"
        )
        if report.get("skipped_inputs"):
            left = report["skipped_inputs"]
            console.print(f"[yellow]left out {len(left)} input frame(s) that could not be read:[/yellow] "
                          + "; ".join(f"{x['name']} ({x['reason']})" for x in left[:5]) + (" ..." if len(left) > 5 else ""))  # fmt: skip
        console.print(f"  view:   ns-viewer --load-config {d}/config.yml")
        console.print(f"  export: ns-export gaussian-splat --load-config {d}/config.yml --output-dir {d}/export")
        console.print(f"  ply:    {d}/scene.ply" + (f"   video: {report['video']}" if report.get("video") else ""))
        return 0

    def run(self) -> Dict[str, Any]:
        """Do the reconstruction (see the module docstring); returns the report written to reconstruct.json."""
        from zipsplat_ns.utils.atomic import atomic_write

        if not 0.0 < self.compression <= 1.0:
            raise ReconstructError(f"reconstruct: --compression must be in (0, 1], got {self.compression}")
        if self.num_frames < 1:
            raise ReconstructError(f"reconstruct: --num-frames must be >= 1, got {self.num_frames}")
        if not 0.0 < self.fov_deg < 180.0:
            raise ReconstructError(f"reconstruct: --fov-deg must be in (0, 180) degrees, got {self.fov_deg}")
        for flag, value in (("--video-frames", self.video_frames), ("--video-size", self.video_size),
                            ("--video-fps", self.video_fps), ("--gaussians-per-token", self.gaussians_per_token)):  # fmt: skip
            if value is not None and value < 1:
                raise ReconstructError(f"reconstruct: {flag} must be >= 1, got {value}")
        final = self.output_dir.expanduser().resolve()
        if final.exists() and not final.is_dir():
            raise ReconstructError(f"reconstruct: --output-dir {final} is a file; give a folder (new or empty)")
        if final.exists() and any(final.iterdir()) and not self.overwrite:
            raise ReconstructError(f"reconstruct: {final} exists and is not empty; pass --overwrite or choose another")
        kind = detect_input(self.input)
        device = ("cuda" if torch.cuda.is_available() else "cpu") if self.device == "auto" else self.device
        if torch.device(device).type == "cuda" and not torch.cuda.is_available():
            raise ReconstructError(f"reconstruct: --device {self.device}, but torch sees no CUDA GPU here; use "
                                   "--device cpu (or auto)")  # fmt: skip
        plan = plan_weights(self.weights, self.variant, self.seed, self.gaussians_per_token)
        final.parent.mkdir(parents=True, exist_ok=True)
        _remove_abandoned(final)
        stage = final.parent / f".{final.name}.partial-{os.getpid()}"
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir()
        try:
            t0 = time.perf_counter()
            staged = stage_input(self.input, kind, stage / "data", num_frames=self.num_frames, fov_deg=self.fov_deg,
                                 scene=self.scene, progress=self.progress)  # fmt: skip
            key, frames, posed = staged.key, staged.frames, staged.posed
            for name, why in staged.skipped:
                logger.warning("reconstruct: %s left out: %s", name, why)
            if self.use_priors and not posed:
                raise ReconstructError(
                    f"reconstruct: --use-priors needs posed input; {self.input} is {kind} (identity poses, guessed "
                    "field of view). Use a nerfstudio data folder or a shard folder, or drop --use-priors"
                )
            atomic_write(stage / "data" / INDEX_NAME, json.dumps({key: {"context": frames, "target": []}}, indent=2))
            report = self._predict(plan, kind, key, frames, stage, final, device)
            report["view_names"] = staged.view_names
            report["skipped_inputs"] = [{"name": n, "reason": r} for n, r in staged.skipped]
            report["time_total_s"] = round(time.perf_counter() - t0, 3)
            atomic_write(stage / "reconstruct.json", json.dumps(report, indent=2) + "\n")
            if final.exists():
                old = final.parent / f".{final.name}.old-{os.getpid()}"
                os.replace(final, old)
                os.replace(stage, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(stage, final)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        return report

    def _predict(self, plan: WeightsPlan, kind: str, key: str, frames: List[int], stage: Path, final: Path,
                 device: str) -> Dict[str, Any]:  # fmt: skip
        from zipsplat_ns.pipeline import WEIGHTS_REF_KEY
        from zipsplat_ns.utils.atomic import atomic_open

        # build from the staged data; the saved config.yml names the final paths
        cfg = build_run_config(plan, stage, stage / "data", key, device=device, compression=self.compression,
                               use_priors=self.use_priors, allow_pickle=self.allow_pickle)  # fmt: skip
        if plan.random_seed is not None:
            torch.manual_seed(plan.random_seed)
        t0 = time.perf_counter()
        pipeline = cfg.pipeline.setup(device=device, test_mode="inference")
        pipeline.model.load_initial_weights()  # no checkpoint to restore here: the weights themselves
        pipeline.eval()
        t_load = time.perf_counter() - t0
        t0 = time.perf_counter()
        pipeline.select_scene(key, compression=self.compression)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t_pred = time.perf_counter() - t0
        g = pipeline.model.scene
        assert g is not None
        if not bool(torch.isfinite(g.means).all()):
            raise ReconstructError("reconstruct: the network produced non-finite Gaussian means (check the weights)")

        ckpt_dir = stage / "nerfstudio_models"
        ckpt_dir.mkdir()
        state = {WEIGHTS_REF_KEY: plan.source} if plan.source is not None else pipeline.state_dict()
        with atomic_open(ckpt_dir / CHECKPOINT_NAME, "wb") as f:
            torch.save({"step": 0, "pipeline": state, "optimizers": {}, "schedulers": {}, "scalers": {}}, f)
        final_cfg = build_run_config(plan, final, final / "data", key, device=device, compression=self.compression,
                                     use_priors=self.use_priors, allow_pickle=self.allow_pickle)  # fmt: skip
        self._save_config(final_cfg, stage / "config.yml")
        g.flip_yz().save_ply(stage / "scene.ply")
        report: Dict[str, Any] = {
            "input": str(self.input),
            "input_kind": kind,
            "scene": key,
            "views": frames,
            "weights": plan.label,
            "variant": plan.variant,
            "compression": float(self.compression),
            "use_priors": bool(self.use_priors),
            "num_gaussians": int(g.num_gaussians),
            "device": device,
            "time_load_s": round(t_load, 3),
            "time_predict_s": round(t_pred, 3),
            "run_dir": str(final),
            "ply": str(final / "scene.ply"),
            "world": "y-up: the first view's camera at the origin looking down -z (as ns-export writes it)",
        }
        if self.video != "none":
            from zipsplat_ns.video import render_video

            name = f"{self.video}.mp4"
            render_video(g.to(device), stage / name, self.video, num_frames=self.video_frames, size=self.video_size,
                         fps=self.video_fps, progress=self.progress)  # fmt: skip
            report["video"] = str(final / name)
        return report

    @staticmethod
    def _save_config(cfg, path: Path) -> None:
        import yaml

        from zipsplat_ns.utils.atomic import atomic_write

        atomic_write(path, yaml.dump(cfg))


__all__ = [
    "ReconstructCommand", "ReconstructError", "StagedInput", "detect_input", "even_frames", "plan_weights", "stage_input",
]  # fmt: skip
