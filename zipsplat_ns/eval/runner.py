"""The benchmark runner (reference §6.2-§6.5): predict, refine target poses, render, measure; resumable.

Two ways in:

- :func:`evaluate` with a ``model_fn(inputs) -> Gaussians`` (``inputs`` as the datamanager's, ``B = 1``): raw weights
  through :func:`net_model_fn` (``zipsplat-ns eval --weights ...``), or anything else that predicts Gaussians;
- :func:`run_benchmark_for_pipeline` for a nerfstudio ``ZipSplatPipeline`` (``ns-eval`` and ``zipsplat-ns eval
  --run-dir``): scenes from ``pipeline.datamanager.benchmark_items()``, Gaussians from ``pipeline.model.net`` through
  :func:`gaussians_from_inputs`.

Per scene: the context views go through the network (compression 1.0, fp32, priors only with ``use_priors``); every
target pose starts at its GT pose (reference-relative, scale-normalised) and is refined
(:mod:`zipsplat_ns.eval.pose_refine`) unless ``align_poses`` is off; the targets are rendered at the refined poses
with GT intrinsics on black, in batches of 10; PSNR (clipped), SSIM (skimage-equal) and LPIPS-VGG
(:mod:`zipsplat_ns.metrics`) are averaged over the targets. A scene's row also holds its Gaussian count, the scale and
its source (``depth``, or ``baseline`` without depth), and the refinement diagnostics.

Outputs in ``output_dir`` (one folder per benchmark, e.g. ``re10k_6v/``):

- ``per_scene.jsonl``: one JSON line per finished scene, appended atomically (single ``write`` + ``fsync``); a
  restarted run skips the scenes already there (a torn last line is dropped). ``run.json`` records the settings;
  resuming with other settings is refused unless ``overwrite``;
- ``results.json``: nerfstudio's eval schema ``{"experiment_name", "method_name", "checkpoint", "results": {...}}``
  with NaN-ignoring means and population stds over scenes, ``num_scenes``, ``num_missing``, ``num_skipped``, plus
  ``benchmark`` (settings, ``scale_source``), ``missing_scenes`` and ``skipped_scenes``;
- ``per_scene.csv`` and ``per_scene.json``: the per-scene table;
- ``renders/<scene>.npz`` (with ``save_renders``): float32 ``render`` and ``gt`` ``(V, 3, H, W)``, the initial and
  refined target poses, and PNGs beside it.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from zipsplat_ns.camera import Camera
from zipsplat_ns.data.samplers import IndexFileError
from zipsplat_ns.eval.benchmarks import (
    BENCHMARK_NAMES,
    BENCHMARKS,
    CUSTOM,
    ResolvedBenchmark,
    check_index,
    resolve_benchmark,
)
from zipsplat_ns.eval.pose_refine import PRESETS, PoseRefineConfig, refine_poses
from zipsplat_ns.eval.pose_refine import preset as make_preset
from zipsplat_ns.gaussians import Gaussians
from zipsplat_ns.pose import Pose

logger = logging.getLogger(__name__)
PathLike = str | os.PathLike
ModelFn = Callable[[dict[str, torch.Tensor]], Gaussians]
METRICS = ("psnr", "ssim", "lpips")
RENDER_BATCH = 10
JSONL_NAME = "per_scene.jsonl"


# --------------------------------------------------------------------------------------------------- options
@dataclass
class EvalOptions:
    """Protocol switches of one evaluation (defaults = the reference protocol)."""

    align_poses: bool = True
    """Refine the target poses before rendering (reference default)."""
    preset: str = "default"
    """Pose-refinement preset: default | fast | very_fast."""
    refine: PoseRefineConfig | None = None
    """Explicit refinement settings (replaces the preset)."""
    use_priors: bool = False
    """Condition the network on the context cameras and poses."""
    use_depth: bool = True
    """Scale normalisation from depth; False = the camera-baseline scale for every scene (labelled 'baseline')."""
    require_depth: bool = True
    """With use_depth: skip scenes without valid depth (the protocol); False = their camera-baseline scale."""
    strict: bool = True
    """Raise when the index cannot be measured (entries without targets, no scene in the shards, no scene
    evaluated); False (the evaluation inside a training run) logs a warning instead, so the run goes on."""
    image_size: int = 252
    """Square crop size (the protocol uses 252)."""
    compression: float = 1.0
    """Compression ratio of the network (the protocol uses 1.0)."""
    device: str = "cpu"
    backend: str | None = None
    """Renderer: gsplat on CUDA, torch elsewhere (None = by device)."""
    max_scenes: int | None = None
    """Evaluate at most this many index scenes in total (finished ones included; None = all)."""
    save_renders: bool = False
    """Write renders and GT (float32 npz + PNG) per scene."""
    overwrite: bool = False
    """Discard earlier per-scene results in the output folder instead of resuming."""
    progress: bool = True

    def refine_config(self) -> PoseRefineConfig:
        return self.refine if self.refine is not None else make_preset(self.preset)


# ---------------------------------------------------------------------------------------------- model access
@contextmanager
def _fp32(net: torch.nn.Module):
    """Run ``net`` in fp32 (the protocol): an ``amp-bf16`` ZipSplat is switched to plain fp32 for the duration."""
    prec = getattr(getattr(net, "config", None), "precision", "fp32")
    if prec in ("bf16", "fp16"):
        logger.warning(f"the network stores {prec} weights: the evaluation is not fp32 as the protocol asks")
    if hasattr(net, "fp32_inference"):
        with net.fp32_inference():
            yield
    else:
        yield


def gaussians_from_inputs(
    net: torch.nn.Module, inputs: dict[str, torch.Tensor], *, use_priors: bool = False, compression: float = 1.0
) -> Gaussians:
    """The protocol's prediction: ``net`` (a :class:`~zipsplat_ns.models.network.ZipSplat`) on the context views of
    ``inputs`` (the datamanager's dict, ``B = 1``) in fp32, eval mode, no gradients; batch shape ``(B,)``.

    Works with ``pipeline.model.net``. With ``use_priors`` the context cameras and poses condition the network.
    """
    images = inputs["context_image"].float()
    cams = Camera(inputs["context_camera"].float()) if use_priors else None
    poses = Pose(inputs["context_pose"].float()) if use_priors else None
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad(), _fp32(net):
            g = net(images, cameras=cams, poses=poses, use_priors=use_priors, compression=compression)
    finally:
        net.train(was_training)
    return g


def net_model_fn(net: torch.nn.Module, *, use_priors: bool = False, compression: float = 1.0) -> ModelFn:
    """A ``model_fn`` for :func:`evaluate` from a ZipSplat network."""

    def fn(inputs: dict[str, torch.Tensor]) -> Gaussians:
        return gaussians_from_inputs(net, inputs, use_priors=use_priors, compression=compression)

    return fn


# ------------------------------------------------------------------------------------------------- data items
def iter_benchmark_items(
    shard_dirs: Sequence[PathLike],
    index,
    scenes: Sequence[str],
    *,
    image_size: int = 252,
    use_depth: bool = True,
    device: str | torch.device = "cpu",
    dataset: str = "",
    require_depth: bool = False,
) -> Iterator[tuple[str, dict[str, torch.Tensor] | None, dict[str, torch.Tensor] | None, str | None]]:
    """``(scene, inputs, batch, skip_reason)`` for ``scenes`` of an :class:`IndexSampler`, processed as the
    datamanager's ``benchmark_items()`` (same keys; ``skip_reason`` set and ``inputs`` None for unusable scenes)."""
    from zipsplat_ns.data.dataset import SceneSkip, ShardDirectory, collate, process_scene
    from zipsplat_ns.data.scene import SceneError

    dirs = [ShardDirectory(p) for p in shard_dirs]
    dev = torch.device(device)
    for key in scenes:
        d = next((d for d in dirs if key in d), None)
        if d is None:
            yield key, None, None, "missing_from_shards"
            continue
        try:
            raw = d.load(key)
            views = index.sample(raw.num_views, key=key)
            s = process_scene(raw, views, image_size=image_size, use_depth=use_depth, dataset=dataset,
                              require_depth=require_depth)  # fmt: skip
        except SceneSkip as exc:
            yield key, None, None, f"{exc.reason}: {exc.detail}"
            continue
        except SceneError as exc:
            yield key, None, None, f"bad_scene: {exc.reason}"
            continue
        b = collate([s])
        ctx, tgt = b["context"], b["target"]
        inputs = {
            "context_image": ctx["image"].to(dev),
            "context_camera": ctx["camera"].to(dev),
            "context_pose": ctx["pose"].to(dev),
            "target_camera": tgt["camera"].to(dev),
            "target_pose": tgt["pose"].to(dev),
        }
        batch = {
            "image": tgt["image"].to(dev),
            "has_depth": b["has_depth"].to(dev),
            "scale": b["scale"].to(dev),
            "context_index": ctx["index"].to(dev),
            "target_index": tgt["index"].to(dev),
            "scale_source": list(b.get("scale_source", [])),
        }
        yield key, inputs, batch, None


# --------------------------------------------------------------------------------------------- one scene
def _scalar(x) -> Any:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        return x.item() if x.numel() == 1 else x.tolist()
    return x


def render_targets(
    g: Gaussians, cams: Camera, poses: Pose, *, backend: str | None = None, batch: int = RENDER_BATCH
) -> torch.Tensor:
    """RGB renders ``(V, 3, H, W)`` of unbatched Gaussians on a black background, ``batch`` views per call."""
    from zipsplat_ns.rendering import render

    out = []
    with torch.no_grad():
        for s in range(0, cams.shape[0], batch):
            out.append(render(g, cams[s : s + batch], poses[s : s + batch], mode="RGB", backend=backend).images)
    return torch.cat(out, 0)


def evaluate_scene(
    model_fn: ModelFn,
    scene: str,
    inputs: dict[str, torch.Tensor],
    batch: dict[str, Any],
    opts: EvalOptions,
    *,
    lpips_net: torch.nn.Module | None = None,
    render_dir: Path | None = None,
) -> dict[str, Any]:
    """Metrics row of one scene (see the module docstring)."""
    from zipsplat_ns.metrics import compute_metrics

    t0 = time.perf_counter()
    g = model_fn(inputs)
    if len(g.batch_shape) == 1:
        if g.batch_shape[0] != 1:
            raise ValueError(f"model_fn must return one scene's Gaussians, got batch shape {tuple(g.batch_shape)}")
        g = g[0]
    g = g.detach().float()
    t_pred = time.perf_counter() - t0
    cams = Camera(inputs["target_camera"][0].float())
    init = Pose(inputs["target_pose"][0].float())
    gt = batch["image"][0].float()
    row: dict[str, Any] = {"scene": scene, "status": "ok"}
    if opts.align_poses:
        cfg = opts.refine_config()
        res = refine_poses(g, cams, init, gt, cfg, backend=opts.backend, lpips_net=lpips_net)
        poses = res.poses
        from zipsplat_ns.eval.pose_refine import rotation_error_deg, translation_error

        row["refine_steps"] = int(sum(res.steps))
        row["refine_loss_initial"] = float(np.mean(res.initial_loss)) if res.initial_loss else float("nan")
        row["refine_loss_final"] = float(np.mean(res.final_loss)) if res.final_loss else float("nan")
        row["pose_update_rot_deg"] = float(rotation_error_deg(init, poses).mean())
        row["pose_update_trans"] = float(translation_error(init, poses).mean())
    else:
        poses = init
    t_ref = time.perf_counter() - t0 - t_pred
    rgb = render_targets(g, cams, poses, backend=opts.backend)
    m = compute_metrics(rgb, gt, net=lpips_net)
    per_view = {k: [float(x) for x in v.detach().double().cpu().reshape(-1)] for k, v in m.items()}
    for k in METRICS:
        row[k] = float(np.mean(per_view[k]))  # per-scene mean over the target views
    row["num_gaussians"] = int(g.num_gaussians)
    row["num_context"] = int(inputs["context_image"].shape[1])
    row["num_targets"] = int(gt.shape[0])
    scale = batch.get("scale")
    row["scale"] = float(_scalar(scale[0])) if isinstance(scale, torch.Tensor) else float("nan")
    src = batch.get("scale_source")
    if not src:
        hd = batch.get("has_depth")
        src = ["depth" if bool(_scalar(hd[0])) else "baseline"] if isinstance(hd, torch.Tensor) else ["unknown"]
    row["scale_source"] = str(src[0])
    for name in ("context_index", "target_index"):
        if isinstance(batch.get(name), torch.Tensor):
            row[name] = [int(i) for i in batch[name][0].reshape(-1).tolist()]
    row["per_view"] = per_view
    row["time_predict_s"] = round(t_pred, 4)
    row["time_refine_s"] = round(t_ref, 4)
    row["time_total_s"] = round(time.perf_counter() - t0, 4)
    if render_dir is not None:
        save_scene_renders(render_dir, scene, rgb, gt, init, poses)
    return row


def save_scene_renders(root: Path, scene: str, rgb: torch.Tensor, gt: torch.Tensor, init: Pose, refined: Pose) -> Path:
    """``root/<scene>.npz`` (float32 render, gt, poses) plus ``root/<scene>/{render,gt}_NN.png``."""
    from zipsplat_ns.images import safe_filename, save_png
    from zipsplat_ns.utils.atomic import atomic_open

    root.mkdir(parents=True, exist_ok=True)
    name = safe_filename(scene)
    path = root / f"{name}.npz"
    with atomic_open(path, "wb") as f:
        np.savez(
            f,
            render=rgb.detach().float().cpu().numpy(),
            gt=gt.detach().float().cpu().numpy(),
            pose_init=init.data.detach().cpu().numpy(),
            pose_refined=refined.data.detach().cpu().numpy(),
        )
    png = root / name
    png.mkdir(exist_ok=True)
    for v in range(rgb.shape[0]):
        for tag, img in (("render", rgb[v]), ("gt", gt[v])):
            save_png(img, png / f"{tag}_{v:02d}.png")
    return path


# ------------------------------------------------------------------------------------------------ JSONL store
class SceneLog:
    """Append-only per-scene results (one JSON object per line); atomic line appends with fsync."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def load(self) -> dict[str, dict[str, Any]]:
        """Rows by scene (a torn last line from a killed run is removed from the file)."""
        if not self.path.is_file():
            return {}
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):  # torn write: drop the partial line
            cut = data.rfind(b"\n") + 1
            with open(self.path, "r+b") as f:
                f.truncate(cut)
                f.flush()
                os.fsync(f.fileno())
            logger.warning("%s: dropped a partial last line (interrupted write)", self.path)
            data = data[:cut]
        rows: dict[str, dict[str, Any]] = {}
        for n, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                rows[str(row["scene"])] = row
            except (json.JSONDecodeError, KeyError, TypeError):
                logger.warning("%s:%d: unreadable line ignored", self.path, n)
        return rows

    def append(self, row: dict[str, Any]) -> None:
        line = (json.dumps(row, allow_nan=True, sort_keys=False) + "\n").encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            view = memoryview(line)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)


# ------------------------------------------------------------------------------------------------ summaries
def _nan(x) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return float("nan")
    return v


def summarize(rows: Sequence[dict[str, Any]], missing: Sequence[str], skipped: dict[str, str]) -> dict[str, Any]:
    """nerfstudio-style ``results``: NaN-ignoring means, population stds, counts (floats only)."""
    ok = [r for r in rows if r.get("status") == "ok"]
    out: dict[str, Any] = {}
    for k in METRICS + ("num_gaussians",):
        vals = np.array([_nan(r.get(k)) for r in ok], dtype=np.float64)
        finite = vals[~np.isnan(vals)]
        out[k] = float(np.mean(finite)) if finite.size else float("nan")
        out[f"{k}_std"] = float(np.std(finite)) if finite.size else float("nan")
    out["num_scenes"] = float(len(ok))
    out["num_missing"] = float(len(missing))
    out["num_skipped"] = float(len(skipped))
    out["num_views"] = float(sum(int(r.get("num_targets", 0)) for r in ok))
    out["num_baseline_scale_scenes"] = float(sum(1 for r in ok if r.get("scale_source") == "baseline"))
    return out


def scale_source_label(rows: Sequence[dict[str, Any]]) -> str:
    srcs = sorted({str(r.get("scale_source")) for r in rows if r.get("status") == "ok"})
    if not srcs:
        return "none"
    return srcs[0] if len(srcs) == 1 else "mixed (" + ", ".join(srcs) + ")"


TABLE_COLUMNS = (
    "scene", "status", "psnr", "ssim", "lpips", "num_gaussians", "num_context", "num_targets", "scale",
    "scale_source", "refine_steps", "refine_loss_initial", "refine_loss_final", "pose_update_rot_deg",
    "pose_update_trans", "time_total_s", "reason",
)  # fmt: skip


def write_tables(folder: Path, rows: Sequence[dict[str, Any]]) -> tuple[Path, Path]:
    """``per_scene.csv`` (the columns of :data:`TABLE_COLUMNS`) and ``per_scene.json`` (full rows)."""
    import io

    from zipsplat_ns.utils.atomic import atomic_write

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(TABLE_COLUMNS), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k, "") for k in TABLE_COLUMNS})
    p_csv = atomic_write(folder / "per_scene.csv", buf.getvalue())
    p_json = atomic_write(folder / "per_scene.json", json.dumps(list(rows), indent=2) + "\n")
    return p_csv, p_json


def _file_sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def _prepare_folder(folder: Path, signature: dict[str, Any], overwrite: bool) -> SceneLog:
    from zipsplat_ns.utils.atomic import atomic_write

    folder.mkdir(parents=True, exist_ok=True)
    log = SceneLog(folder / JSONL_NAME)
    meta = folder / "run.json"
    if overwrite:
        for p in (log.path, meta):
            if p.exists():
                p.unlink()
    elif meta.is_file() and log.path.is_file():
        old = json.loads(meta.read_text())
        diff = sorted(k for k in set(old) | set(signature) if old.get(k) != signature.get(k))
        if diff:
            raise ValueError(
                f"{folder} holds results of a different evaluation (differs in: {', '.join(diff)}); "
                "pass --overwrite (zipsplat-ns eval) to discard them, or choose another folder (--output-dir; "
                "ns-eval: --render-output-path)"
            )
    atomic_write(meta, json.dumps(signature, indent=2, default=str) + "\n")
    return log


# --------------------------------------------------------------------------------------------------- runner
ItemIter = Iterable[tuple[str, dict[str, torch.Tensor], dict[str, Any]]]


def _progress(enabled: bool):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[last]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        disable=not enabled,
        transient=False,
    )


def evaluate(
    model_fn: ModelFn,
    benchmark: str | ResolvedBenchmark,
    shard_dir: PathLike | None = None,
    index_file: PathLike | None = None,
    *,
    views: int | None = None,
    output_dir: PathLike | None = None,
    options: EvalOptions | None = None,
    items: Callable[[list[str]], ItemIter] | None = None,
    missing: Callable[[], list[str]] | None = None,
    experiment_name: str = "zipsplat-eval",
    method_name: str = "zipsplat",
    checkpoint: str = "",
    model_label: str = "",
) -> dict[str, Any]:
    """Evaluate ``model_fn`` on one benchmark; returns the full report (``results.json``'s content).

    ``benchmark`` is a registered name (``re10k``, ``dl3dv``, ``mipnerf360``, ``custom``) resolved with ``views``,
    ``shard_dir`` and ``index_file``, or a :class:`ResolvedBenchmark`. The index is validated against the shards
    first (:func:`~zipsplat_ns.eval.benchmarks.check_index`). ``items(todo_scenes)`` may supply the
    ``(scene, inputs, batch)`` stream (the pipeline's datamanager); by default the shards are read here.
    ``output_dir=None`` keeps everything in memory (no resume, no files).
    """
    opts = options or EvalOptions()
    bench = (
        benchmark
        if isinstance(benchmark, ResolvedBenchmark)
        else resolve_benchmark(benchmark, views, shard_dir=shard_dir, index_file=index_file)
    )
    check = check_index(bench.index_file, [bench.shard_dir], expected_context=bench.views)
    scenes = list(check.scenes)
    missing_list = list(check.missing)
    no_targets = [k for k in check.index.scenes if len(check.index.get(k).target) == 0]
    if no_targets:
        problems = [f"{k}: no 'target' views (evaluation measures the target views)" for k in no_targets]
        _refuse(opts, IndexFileError(str(bench.index_file), problems), "those scenes are skipped")
        dropped = set(no_targets)
        scenes = [k for k in scenes if k not in dropped]
    if not check.scenes:
        _refuse(opts, FileNotFoundError(
            f"{bench.tag}: none of the {len(missing_list)} scene(s) of {bench.index_file} is in {bench.shard_dir} "
            f"(index keys such as {', '.join(missing_list[:3])}); point --shard-dir at the benchmark's converted test "
            "shards (zipsplat-ns convert ...), whose scene keys the index names"
        ))  # fmt: skip
    if opts.max_scenes is not None:
        scenes = scenes[: max(0, int(opts.max_scenes))]
    refine_cfg = opts.refine_config() if opts.align_poses else None
    signature = {
        "benchmark": bench.name,
        "views": bench.views,
        "index_file": str(bench.index_file),
        "index_sha256": _file_sha(bench.index_file),
        "shard_dir": str(bench.shard_dir),
        "model": model_label,
        "checkpoint": str(checkpoint),
        "align_poses": opts.align_poses,
        "refine": refine_cfg.to_dict() if refine_cfg else None,
        "use_priors": opts.use_priors,
        "use_depth": opts.use_depth,
        "require_depth": opts.require_depth,
        "image_size": opts.image_size,
        "compression": opts.compression,
    }
    folder = Path(output_dir) / bench.tag if output_dir is not None else None
    log = _prepare_folder(folder, signature, opts.overwrite) if folder is not None else None
    done = log.load() if log is not None else {}
    done = {k: v for k, v in done.items() if k in set(scenes)}
    todo = [k for k in scenes if k not in done]
    if done:
        logger.info("%s: resuming, %d of %d scene(s) already done", bench.tag, len(done), len(scenes))
    render_dir = folder / "renders" if (folder is not None and opts.save_renders) else None
    lpips_net = None
    from zipsplat_ns.lpips import get_lpips_vgg

    lpips_net = get_lpips_vgg(opts.device)
    new_rows: dict[str, dict[str, Any]] = {}
    if items is None:

        def items(todo_keys: list[str]):
            return iter_benchmark_items(
                [bench.shard_dir], check.index, todo_keys, image_size=opts.image_size, use_depth=opts.use_depth,
                device=opts.device, dataset=bench.name, require_depth=opts.require_depth,
            )  # fmt: skip

    todo_set = set(todo)
    t_start = time.perf_counter()
    with _progress(opts.progress) as prog:
        task = prog.add_task(bench.tag, total=len(scenes), completed=len(done), last="")
        for item in items(todo):
            if len(item) == 4:
                scene, inputs, batch, reason = item
            else:
                (scene, inputs, batch), reason = item, None
            if scene not in todo_set or scene in new_rows:
                continue
            if reason == "missing_from_shards":
                continue
            if reason is not None or inputs is None:
                row = {"scene": scene, "status": "skipped", "reason": reason or "unusable scene"}
            else:
                row = evaluate_scene(model_fn, scene, inputs, batch, opts, lpips_net=lpips_net, render_dir=render_dir)
            if log is not None:
                log.append(row)
            new_rows[scene] = row
            last = f"{scene[:16]} psnr {row['psnr']:.2f}" if row["status"] == "ok" else f"{scene[:16]} skipped"
            prog.update(task, advance=1, last=last)
            if len(new_rows) >= len(todo):
                break
    elapsed = time.perf_counter() - t_start
    extra_missing = missing() if missing is not None else []
    for k in extra_missing:
        if k not in missing_list:
            missing_list.append(k)
    all_rows = {**done, **new_rows}
    not_done = [k for k in scenes if k not in all_rows]
    rows = [all_rows[k] for k in scenes if k in all_rows]
    skipped = {r["scene"]: r.get("reason", "") for r in rows if r.get("status") != "ok"}
    for k in not_done:  # the item stream dropped them (e.g. the datamanager skipped them): count as skipped
        skipped[k] = "not produced by the data stream (skipped while loading; see the log)"
    results = summarize(rows, missing_list, skipped)
    report = {
        "experiment_name": experiment_name,
        "method_name": method_name,
        "checkpoint": str(checkpoint),
        "results": results,
        "benchmark": {
            **{k: v for k, v in signature.items() if k != "index_sha256"},
            "tag": bench.tag,
            "scale_source": scale_source_label(rows),
            "num_index_scenes": len(check.index.scenes),
            "max_scenes": opts.max_scenes,
            "device": str(opts.device),
            "elapsed_s": round(elapsed, 2),
            "resumed_scenes": len(done),
        },
        "missing_scenes": missing_list,
        "skipped_scenes": skipped,
    }
    if folder is not None:
        from zipsplat_ns.utils.atomic import atomic_write

        write_tables(folder, rows)
        atomic_write(folder / "results.json", json.dumps(report, indent=2) + "\n")
    if missing_list:
        logger.warning(
            "%s: %d index scene(s) missing from %s: %s%s", bench.tag, len(missing_list), bench.shard_dir,
            ", ".join(missing_list[:10]), " ..." if len(missing_list) > 10 else "",
        )  # fmt: skip
    if skipped and not any(r.get("status") == "ok" for r in rows):
        reasons = Counter(str(r).split(":")[0] for r in skipped.values())
        hint = (" Scenes without depth: add it ('zipsplat-ns depth'), or evaluate them at the camera-baseline scale "
                "(--baseline-without-depth; not the protocol)." if reasons.get("no_depth") else "")  # fmt: skip
        _refuse(opts, RuntimeError(
            f"{bench.tag}: none of the {len(skipped)} scene(s) could be evaluated (skipped: {dict(reasons)}); "
            f"see {folder / 'results.json' if folder is not None else 'the log'}.{hint}"
        ))  # fmt: skip
    return report


def _refuse(opts: EvalOptions, err: Exception, then: str = "") -> None:
    """An index that cannot be measured: raise ``err`` (``opts.strict``), else log it as a warning and go on."""
    if opts.strict:
        raise err
    logger.warning("%s%s", err, f"; {then}" if then else "")


# ------------------------------------------------------------------------------------------------- pipeline
def weights_fingerprint(net: torch.nn.Module) -> str:
    """A short fingerprint of ``net``'s weights (names, shapes, float64 sums and absolute sums of every tensor,
    hashed): two different checkpoints differ in it, so a resumed evaluation folder cannot mix their results. Computed
    on the weights' device, read back once."""
    sd = net.state_dict()
    h = hashlib.sha256()
    stats = []
    for name, t in sd.items():
        h.update(f"{name}{tuple(t.shape)}{t.dtype};".encode())
        t64 = t.detach().double()
        stats.append(torch.stack([t64.sum(), t64.abs().sum()]))
    if stats:
        h.update(torch.stack(stats).cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def run_benchmark_for_pipeline(
    pipeline,
    output_path: PathLike | None = None,
    *,
    views: int | None = None,
    align_poses: bool = True,
    preset: str = "default",
    refine: PoseRefineConfig | None = None,
    use_priors: bool = False,
    max_scenes: int | None = None,
    save_renders: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    benchmark_name: str = CUSTOM,
    experiment_name: str = "zipsplat-eval",
    checkpoint: str = "",
    full_report: bool = False,
    strict: bool = True,
) -> dict[str, Any]:
    """Run the benchmark of ``pipeline.datamanager.config.eval_index_file`` with ``pipeline.model.net``.

    Scenes come from ``pipeline.datamanager.benchmark_items()`` (its test shards, crop size and depth setting); the
    index is validated against ``datamanager.eval_specs`` first (``views``: the expected context count, unchecked
    when None). ``output_path`` (a folder) enables resuming, the tables and the renders (``save_renders``).

    Returns nerfstudio's flat results dict (floats: ``psnr``, ``psnr_std``, ..., ``num_scenes``, ``num_missing``,
    ``num_skipped``), i.e. what ``get_average_eval_image_metrics`` returns; ``full_report=True`` returns the whole
    report (settings, scale source, missing and skipped scenes) instead. ``strict=False`` (the trainer's evaluation)
    logs a warning where an index cannot be measured instead of raising (:attr:`EvalOptions.strict`).
    """
    dm = pipeline.datamanager
    index_file = getattr(dm.config, "eval_index_file", None)
    if index_file is None:
        raise ValueError("run_benchmark_for_pipeline: set --pipeline.datamanager.eval-index-file")
    shard_dirs = [s.path for s in dm.eval_specs]
    model = pipeline.model
    net = model.net
    if not checkpoint:  # which weights these are: part of the resume signature (another checkpoint: another folder)
        checkpoint = f"weights {weights_fingerprint(net)}"
    device = next(net.parameters()).device
    compression = float(getattr(model.config, "eval_compression", 1.0))
    if views is None and benchmark_name in BENCHMARKS:
        views = BENCHMARKS[benchmark_name].views[0]
    bench = ResolvedBenchmark(benchmark_name, views, Path(index_file), Path(shard_dirs[0]))
    opts = EvalOptions(
        align_poses=align_poses,
        preset=preset,
        refine=refine,
        use_priors=use_priors,
        use_depth=bool(getattr(dm.config, "use_depth", True)),
        require_depth=bool(getattr(dm.config, "eval_requires_depth", True)),
        image_size=int(getattr(dm.config, "image_size", 252)),
        compression=compression,
        device=str(device),
        backend=getattr(model, "_backend", lambda d: None)(device) if hasattr(model, "_backend") else None,
        max_scenes=max_scenes,
        save_renders=save_renders,
        overwrite=overwrite,
        progress=progress,
        strict=strict,
    )
    for extra in shard_dirs[1:]:
        logger.warning("run_benchmark_for_pipeline: only the first eval shard directory is validated (%s)", extra)

    def items(todo: list[str]):
        want = set(todo)
        for scene, inputs, batch in dm.benchmark_items():
            if scene in want:
                b = dict(batch)
                info = getattr(dm, "last_batch_info", {}) or {}
                if info.get("scale_source"):
                    b["scale_source"] = info["scale_source"]
                yield scene, inputs, b

    report = evaluate(
        net_model_fn(net, use_priors=use_priors, compression=compression),
        bench,
        output_dir=output_path,
        options=opts,
        items=items,
        missing=lambda: list(getattr(dm, "benchmark_missing", []) or []),
        experiment_name=experiment_name,
        method_name="zipsplat",
        checkpoint=checkpoint,
        model_label="pipeline",
    )
    return report if full_report else dict(report["results"])


__all__ = [
    "weights_fingerprint",
    "BENCHMARK_NAMES",
    "PRESETS",
    "EvalOptions",
    "ModelFn",
    "SceneLog",
    "evaluate",
    "evaluate_scene",
    "gaussians_from_inputs",
    "iter_benchmark_items",
    "net_model_fn",
    "render_targets",
    "run_benchmark_for_pipeline",
    "summarize",
    "write_tables",
]


# ------------------------------------------------------------------------------------------------------- CLI
def _auto_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load_network(
    weights: str,
    *,
    variant: str = "giant",
    image_size: int = 252,
    gaussians_per_token: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    allow_pickle: bool = False,
) -> tuple[torch.nn.Module, str]:
    """A ZipSplat network and its label: ``random-<variant>`` (seeded random init, clearly labelled), a released name
    (``zipsplat``), a local file or a URL (strict loading, variant ``variant``)."""
    from zipsplat_ns.models.network import ZipSplat

    over: dict[str, Any] = {"precision": "fp32"}
    if image_size != 252:
        over["image_size"] = int(image_size)
    if weights.startswith("random-"):
        var = weights[len("random-") :]
        if gaussians_per_token is not None:
            over["gaussians_per_token"] = int(gaussians_per_token)
        torch.manual_seed(seed)
        net = ZipSplat(var, **over)
        label = f"RANDOM WEIGHTS ({var}, seed {seed}" + (
            f", {gaussians_per_token} Gaussians/token)" if gaussians_per_token else ")"
        )
    else:
        if gaussians_per_token is not None:
            raise ValueError("--gaussians-per-token only applies to random weights (checkpoints fix it)")
        net = ZipSplat(variant, weights=weights, allow_pickle=allow_pickle, **over)
        label = f"{weights} ({variant})"
    return net.to(device).eval(), label


@dataclass
class EvalCommand:
    """Evaluate released / local / random weights (--weights) or a training run (--run-dir) on benchmarks.

    Writes, per benchmark, OUTPUT_DIR/<benchmark>_<N>v/{results.json (nerfstudio's eval schema), per_scene.csv,
    per_scene.json, per_scene.jsonl (resume log)}. A killed run resumes where it stopped when restarted with the same
    settings.
    """

    benchmark: tuple[str, ...] = ("re10k",)
    """Benchmarks to run: re10k (6 views), dl3dv (6/12/24), mipnerf360 (32/64/128), custom (--index-file + --shard-dir)."""
    views: int | None = None
    """Context views (selects the index file); default: the benchmark's smallest allowed count."""
    weights: str | None = None
    """Network weights: 'zipsplat' (released), a local file, a URL, or random-<variant> (random init, e.g. random-tiny)."""
    run_dir: Path | None = None
    """A nerfstudio run directory (with config.yml), or the config.yml itself, instead of --weights."""
    variant: str = "giant"
    """Network variant for --weights files (giant for the released weights)."""
    allow_pickle: bool = False
    """Accept a --weights file that needs full unpickling (torch.load weights_only=False); only for files you trust."""
    shard_dir: Path | None = None
    """Test shards (overrides the benchmark's default directory)."""
    index_file: Path | None = None
    """Index JSON (overrides the benchmark's shipped file; required for custom)."""
    output_dir: Path = Path("outputs/eval")
    """Results folder (one sub-folder per benchmark)."""
    align_poses: bool = True
    """Refine the target poses photometrically before measuring (the protocol's default)."""
    preset: Literal["default", "fast", "very_fast"] = "default"
    """Pose refinement: default (200 steps, lr 5e-3, LPIPS 0.05), fast (50, 3e-3, no LPIPS), very_fast (30, 3e-3,
    no LPIPS)."""
    refine_steps: int | None = None
    """Override the preset's maximum refinement steps."""
    use_priors: bool = False
    """Condition the network on the context cameras and poses."""
    no_depth: bool = False
    """Ignore stored depth: camera-baseline scale for every scene (results labelled scale_source 'baseline')."""
    baseline_without_depth: bool = False
    """Evaluate scenes that have no valid depth with their camera-baseline scale (labelled 'baseline') instead of
    skipping them. The protocol skips them (its scale normalisation needs depth), so numbers with this are not
    comparable with the reference's; add depth with 'zipsplat-ns depth' where you can."""
    device: str = "auto"
    """Torch device (auto: cuda when available, else cpu)."""
    max_scenes: int | None = None
    """Evaluate at most this many index scenes (in index order, finished ones included)."""
    save_renders: bool = False
    """Save renders and GT per scene (float32 npz + PNGs) under <benchmark>/renders/."""
    overwrite: bool = False
    """Discard earlier results in the output folder instead of resuming."""
    image_size: int = 252
    """Crop size (the protocol's 252; other sizes are for quick CPU checks with random weights and are recorded)."""
    gaussians_per_token: int | None = None
    """Random weights only: Gaussians per token (32 as the released model; fewer make CPU rendering affordable)."""
    seed: int = 0
    """Seed of random weights."""
    experiment_name: str = "zipsplat-eval"
    """experiment_name field of results.json."""
    progress: bool = True
    """Show a progress bar with an ETA."""

    def benchmarks(self) -> list[ResolvedBenchmark]:
        out = []
        for name in self.benchmark:
            out.append(resolve_benchmark(name, self.views, shard_dir=self.shard_dir, index_file=self.index_file))
        return out

    def options(self, device: str) -> EvalOptions:
        ref = make_preset(self.preset, num_steps=self.refine_steps)
        return EvalOptions(
            align_poses=self.align_poses, preset=self.preset, refine=ref, use_priors=self.use_priors,
            use_depth=not self.no_depth, require_depth=not self.baseline_without_depth, image_size=self.image_size,
            device=device, max_scenes=self.max_scenes,
            save_renders=self.save_renders, overwrite=self.overwrite, progress=self.progress,
        )  # fmt: skip

    def main(self) -> int:
        from rich.console import Console

        console = Console(stderr=True)
        if (self.weights is None) == (self.run_dir is None):
            raise ValueError("give exactly one of --weights (zipsplat | PATH | URL | random-<variant>) or --run-dir")
        benches = self.benchmarks()
        device = _auto_device(self.device)
        reports = []
        if self.weights is not None:
            net, label = load_network(
                self.weights, variant=self.variant, image_size=self.image_size,
                gaussians_per_token=self.gaussians_per_token, seed=self.seed, device=device,
                allow_pickle=self.allow_pickle,
            )  # fmt: skip
            if self.weights.startswith("random-"):
                console.print(f"[yellow]evaluating {label}: numbers are NOT those of a trained model[/yellow]")
            fn = net_model_fn(net, use_priors=self.use_priors)
            # the weights' fingerprint, not just their name: a file or URL whose content changed must not resume
            # (and mix with) an evaluation of the old weights
            checkpoint = f"{self.weights} (weights {weights_fingerprint(net)})"
            for b in benches:
                reports.append(
                    evaluate(
                        fn, b, output_dir=self.output_dir, options=self.options(device),
                        experiment_name=self.experiment_name, method_name="zipsplat", checkpoint=checkpoint,
                        model_label=label,
                    )
                )  # fmt: skip
        else:
            for b in benches:
                reports.append(self._run_dir_eval(b, device))
        for rep in reports:
            self._print(console, rep)
        return 0

    def _run_dir_eval(self, bench: ResolvedBenchmark, device: str) -> dict[str, Any]:
        from nerfstudio.utils.eval_utils import eval_setup

        from zipsplat_ns.config import find_run_config

        cfg_path = find_run_config(self.run_dir)

        def update(config):
            # the command line's benchmark wins: a benchmark named in config.yml (pipeline.benchmark, for ns-eval)
            # would otherwise re-point the datamanager at its own index file and shards when the pipeline is built
            if hasattr(config.pipeline, "benchmark"):
                config.pipeline.benchmark.name = None
            dm = config.pipeline.datamanager
            dm.eval_index_file = bench.index_file
            if self.shard_dir is not None or bench.name != CUSTOM:
                dm.data = bench.shard_dir
                if hasattr(dm, "datasets"):
                    dm.datasets = ()
            if hasattr(dm, "use_depth"):
                dm.use_depth = not self.no_depth
            if hasattr(dm, "eval_requires_depth"):
                dm.eval_requires_depth = not self.baseline_without_depth
            if hasattr(dm, "image_size"):
                dm.image_size = self.image_size
            if hasattr(dm, "num_workers"):
                dm.num_workers = 0
            config.machine.device_type = torch.device(device).type
            return config

        config, pipeline, ckpt, _ = eval_setup(cfg_path, test_mode="test", update_config_callback=update)
        report = run_benchmark_for_pipeline(
            pipeline, self.output_dir, views=bench.views, align_poses=self.align_poses,
            preset=self.preset, refine=make_preset(self.preset, num_steps=self.refine_steps),
            use_priors=self.use_priors, max_scenes=self.max_scenes,
            save_renders=self.save_renders, overwrite=self.overwrite, progress=self.progress,
            benchmark_name=bench.name, experiment_name=config.experiment_name or self.experiment_name,
            checkpoint=str(ckpt), full_report=True,
        )  # fmt: skip
        return report

    @staticmethod
    def _print(console, rep: dict[str, Any]) -> None:
        r, b = rep["results"], rep["benchmark"]
        console.print(
            f"[bold]{b['tag']}[/bold] ({b['model'] or rep['checkpoint']}; scale: {b['scale_source']}): "
            f"PSNR {r['psnr']:.3f}  SSIM {r['ssim']:.4f}  LPIPS {r['lpips']:.4f}  Gaussians {r['num_gaussians']:.0f}  "
            f"scenes {int(r['num_scenes'])}  missing {int(r['num_missing'])}  skipped {int(r['num_skipped'])}"
        )
