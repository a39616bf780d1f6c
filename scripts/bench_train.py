"""Training-step benchmark of the ZipSplat model (GPU): steps/s, context images/s and peak memory.

One step = the nerfstudio model's full training step: network forward (bf16 autocast of backbone + fusion, fp32 head),
gsplat rendering of the target views (and of the context views for the activated mask), every loss term of the
recipe (L1, LPIPS-VGG, penalties, chamfer, depth), backward, gradient clipping at global norm 1.0 and AdamW
(backbone 3e-5, rest 3e-4). TF32 on. Inputs are random tensors created on the GPU (no data loader), 24 context images
per step, 4 target views per scene, 252 px. Warm-up steps are excluded; the median step time is reported, for two
passes over one seeded sequence of per-step compression ratios: "cold" (token counts new to the process, so cuDNN
attention plans are built on the CPU during the step, as in the first thousands of steps of a run) and "warm" (the
same counts again, a long run's steady state; the headline ``images_per_s``).

    python scripts/bench_train.py --output $OUT/bench_train.json [--variants small giant] [--steps 10]
    python scripts/bench_train.py --breakdown --variants small giant --layouts 4x6 --steps 5 --output $OUT/b.json

An out-of-memory (or any other) failure of one configuration is recorded in the JSON and the run goes on.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

REFERENCE = {
    "note": "reference network alone (no rendering/loss), random weights, bf16 autocast, TF32, AdamW, H100",
    "giant": {"ms_per_step": [355, 413], "images_per_s": [58, 68], "peak_memory_gb": 46.7},
    "small": {"ms_per_step": 96, "images_per_s": 250},
}
MASK_RENDER_DEFAULT = (8, 1, 0)  # the model's defaults: mask_render_chunk, mask_render_downscale, mask_context_views
MASK_RENDER_KEYS = ("mask_render_chunk", "mask_render_downscale", "mask_context_views")
TARGETS = {
    "giant": {"images_per_s_min": 70, "peak_memory_gb_max": 46.7},
    "small": {"images_per_s_min": 400},
}
S = 252


def parse_mask_render(spec: str) -> "tuple[int, int, int]":
    """``CHUNK:DOWNSCALE[:VIEWS]`` -> the model's (mask_render_chunk, mask_render_downscale, mask_context_views)."""
    parts = spec.split(":")
    if len(parts) not in (2, 3) or not all(p.isdigit() for p in parts):
        raise SystemExit(f"--mask-render {spec!r}: expected CHUNK:DOWNSCALE or CHUNK:DOWNSCALE:VIEWS (whole numbers)")
    return int(parts[0]), int(parts[1]), int(parts[2]) if len(parts) == 3 else 0


def mask_label(mask: "tuple[int, ...]", sep: str = ":") -> str:
    """``CHUNK:DOWNSCALE[:VIEWS]`` of a mask configuration (VIEWS left out when all views are rendered)."""
    return sep.join(map(str, mask if len(mask) > 2 and mask[2] else mask[:2]))


def make_batch(B: int, V: int, Vt: int, device: torch.device, seed: int):
    g = torch.Generator(device=device).manual_seed(seed)
    cam = torch.tensor([S, S, 230.0, 230.0, S / 2, S / 2], device=device)

    def poses(n: int, offset: float) -> torch.Tensor:
        R = torch.eye(3, device=device).reshape(9)
        t = torch.stack([torch.tensor([offset * i, 0.0, 0.0], device=device) for i in range(n)])
        return torch.cat([R.expand(n, 9), t], -1)

    inputs = {
        "context_image": torch.rand(B, V, 3, S, S, device=device, generator=g),
        "context_camera": cam.expand(B, V, 6).clone(),
        "context_pose": poses(V, 0.05).expand(B, V, 12).clone(),
        "target_camera": cam.expand(B, Vt, 6).clone(),
        "target_pose": poses(Vt, 0.07).expand(B, Vt, 12).clone(),
    }
    depth = 1.0 + torch.rand(B, Vt, S, S, device=device, generator=g)
    batch = {
        "image": torch.rand(B, Vt, 3, S, S, device=device, generator=g),
        "depth": depth,
        "has_depth": torch.ones(B, dtype=torch.bool, device=device),
    }
    inputs["has_depth"] = batch["has_depth"]
    return inputs, batch


def install_random_lpips(device: torch.device) -> None:
    """Cache an LPIPS-VGG with a random VGG16 trunk for ``device`` (same compute as the real one; for machines
    without the ImageNet weights: timings and comparisons are unaffected, loss values are not meaningful)."""
    import torchvision

    from zipsplat_ns import lpips as lpips_mod

    feats = {f"features.{k}": v for k, v in torchvision.models.vgg16(weights=None).features.state_dict().items()}
    lins, _ = lpips_mod.resolve_lpips_vgg_lin()
    lpips_mod._CACHE[str(torch.device("cuda", torch.cuda.current_device()))] = lpips_mod.LPIPSVGG(feats, lins).to(device)


PHASES = (
    ("network", "zipsplat_ns.models.network", "ZipSplat.predict"),
    ("render", "zipsplat_ns.models.zipsplat_model", "render"),
    ("activated_mask", "zipsplat_ns.models.zipsplat_model", "activated_mask"),
    ("lpips", "zipsplat_ns.losses", "lpips_loss"),
    ("chamfer", "zipsplat_ns.losses", "chamfer_loss"),
)


class PhaseTimer:
    """``--breakdown``: wraps the forward phases in CUDA-synchronised timers (adds syncs, so the step gets slower);
    backward and optimizer are timed in the step loop."""

    def __init__(self) -> None:
        import importlib

        self.ms: dict = {}
        self._undo = []
        for name, mod_name, attr in PHASES:
            mod = importlib.import_module(mod_name)
            owner, fn_name = (getattr(mod, attr.split(".")[0]), attr.split(".")[1]) if "." in attr else (mod, attr)
            orig = getattr(owner, fn_name)
            setattr(owner, fn_name, self._wrap(name, orig))
            self._undo.append((owner, fn_name, orig))

    def _wrap(self, name: str, fn):
        def inner(*a, **k):
            torch.cuda.synchronize()
            t = time.perf_counter()
            out = fn(*a, **k)
            torch.cuda.synchronize()
            self.add(name, time.perf_counter() - t)
            return out

        return inner

    def add(self, name: str, seconds: float) -> None:
        self.ms.setdefault(name, []).append(1000 * seconds)

    def restore(self) -> None:
        for owner, fn_name, orig in self._undo:
            setattr(owner, fn_name, orig)


class PhaseLabels(PhaseTimer):
    """``--trace-dir``: the forward phases as named ``record_function`` ranges in the profiler trace (no syncs)."""

    def _wrap(self, name: str, fn):
        def inner(*a, **k):
            with torch.profiler.record_function(f"phase:{name}"):
                return fn(*a, **k)

        return inner


def profile_summary(prof, steps: int, top: int = 25) -> dict:
    """The ``top`` CUDA kernels by device time and the ``top`` CPU ops by self host time, per step (ms)."""
    ev = prof.key_averages()

    def dev_ms(e) -> float:
        return getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0.0)) / 1e3 / steps

    kernels = sorted((e for e in ev if dev_ms(e) > 0), key=dev_ms, reverse=True)
    cpu = sorted(ev, key=lambda e: e.self_cpu_time_total, reverse=True)
    return {
        "device_ms_per_step_total": round(sum(dev_ms(e) for e in ev), 2),
        "cpu_self_ms_per_step_total": round(sum(e.self_cpu_time_total for e in ev) / 1e3 / steps, 2),
        "aten_ops_per_step": round(sum(e.count for e in ev if e.key.startswith("aten::")) / steps),
        "top_device": [[e.key[:90], round(dev_ms(e), 3), e.count // steps] for e in kernels[:top]],
        "top_cpu_self": [[e.key[:90], round(e.self_cpu_time_total / 1e3 / steps, 3), e.count // steps] for e in cpu[:top]],
    }


def bench_one(variant: str, B: int, V: int, steps: int, warmup: int, grad_ckpt: bool, device: torch.device,
              breakdown: bool = False, compile_net: bool = False, profile_steps: int = 0,
              config_index: int = 0, fusion_sdpa: str = "default", backbone_sdpa: str = "default",
              trace_dir: "Path | None" = None, cuda_graphs: bool = False,
              mask_render: "tuple[int, int, int]" = MASK_RENDER_DEFAULT) -> dict:  # fmt: skip
    from nerfstudio.data.scene_box import SceneBox

    from zipsplat_ns.models.zipsplat_model import ZipSplatModelConfig
    from zipsplat_ns.optim import AdamWOptimizerConfig

    rec = {"variant": variant, "scenes": B, "views": V, "context_images": B * V, "target_views_per_scene": 4,
           "grad_checkpointing": grad_ckpt, "compile": compile_net, "fusion_sdpa": fusion_sdpa,
           "backbone_sdpa": backbone_sdpa, "cuda_graphs": cuda_graphs, **dict(zip(MASK_RENDER_KEYS, mask_render)),
           "precision": "amp-bf16"}  # fmt: skip
    model = None
    try:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        torch.manual_seed(0)  # the same random weights (hence Gaussians, hence rasterization work) for every config
        cfg = ZipSplatModelConfig(variant=variant, precision="amp-bf16", grad_checkpointing=grad_ckpt, renderer="gsplat",
                                  priors_probability=0.0, total_steps=450_000, compile=compile_net,
                                  fusion_sdpa=fusion_sdpa, backbone_sdpa=backbone_sdpa,
                                  cuda_graphs=cuda_graphs, **dict(zip(MASK_RENDER_KEYS, mask_render)))  # fmt: skip
        model = cfg.setup(scene_box=SceneBox(aabb=torch.tensor([[-1.0] * 3, [1.0] * 3])), num_train_data=1,
                          metadata={}, device=str(device)).to(device)  # fmt: skip
        model.train()
        groups = model.get_param_groups()
        # the recipe's optimizer configs (fused AdamW on CUDA), one per nerfstudio parameter group
        opts = {"backbone": AdamWOptimizerConfig(lr=3e-5).setup(groups["backbone"]),
                "head": AdamWOptimizerConfig(lr=3e-4).setup(groups["head"])}  # fmt: skip
        rec["adamw_fused"] = all(bool(o.defaults.get("fused")) for o in opts.values())
        rec["trainable_params"] = sum(p.numel() for g in groups.values() for p in g)
        inputs, batch = make_batch(B, V, 4, device, seed=0)
        times, gaussians = [], []
        timer = PhaseTimer() if breakdown else None

        def step(i: int):
            for o in opts.values():
                o.zero_grad(set_to_none=True)
            model.update_to_step(i)
            out = model(inputs)
            with torch.profiler.record_function("phase:losses"):
                metrics = model.get_metrics_dict(out, batch)
                loss = sum(model.get_loss_dict(out, batch, metrics).values())
            if timer is not None:
                torch.cuda.synchronize()
                timer.add("forward_total", time.perf_counter() - t0)
                tb = time.perf_counter()
            with torch.profiler.record_function("phase:backward"):  # a named range in --trace-dir traces
                loss.backward()
            if timer is not None:
                torch.cuda.synchronize()
                timer.add("backward", time.perf_counter() - tb)
                tb = time.perf_counter()
            with torch.profiler.record_function("phase:clip_and_adamw"):
                # the recipe's clipping: one global norm over every group (the pipeline's gradient guard)
                torch.nn.utils.clip_grad_norm_([p for g in groups.values() for p in g], 1.0, foreach=True)
                for o in opts.values():
                    o.step()
            if timer is not None:
                torch.cuda.synchronize()
                timer.add("clip_and_adamw", time.perf_counter() - tb)
            return out, loss

        # Compression ratios (hence token counts K) are drawn per step. cuDNN attention builds an execution plan on
        # the CPU for every new shape (~3 ms each, several per step), so a step whose K is new in the process is far
        # slower than one whose K was seen before. Timed twice over one seeded sequence of K: "cold" (new counts, as
        # in the first thousands of steps of a run) and "warm" (the same counts again: a long run's steady state).
        compile_s = 0.0
        model.seed_rng(1000 + config_index)
        for i in range(warmup):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            step(i)
            torch.cuda.synchronize()
            compile_s += time.perf_counter() - t0
        if timer is not None:
            timer.ms.clear()
        times_by_pass = {}
        for pass_name in ("cold", "warm"):
            model.seed_rng(2000 + config_index)
            times_by_pass[pass_name] = []
            for i in range(warmup, warmup + steps):
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                out, loss = step(i)
                torch.cuda.synchronize()
                times_by_pass[pass_name].append(time.perf_counter() - t0)
                gaussians.append(int(out["means"].shape[1]) * B)
        times = times_by_pass["warm"]
        rec["warmup_s_total"] = round(compile_s, 1)
        if profile_steps > 0 and timer is None:
            from torch.profiler import ProfilerActivity, profile

            labels = PhaseLabels() if trace_dir is not None else None
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], with_stack=trace_dir is not None,
                         record_shapes=False) as prof:  # fmt: skip
                for i in range(profile_steps):
                    with torch.profiler.record_function(f"step{i}"):
                        step(warmup + steps + i)
                torch.cuda.synchronize()
            if labels is not None:
                labels.restore()
            rec["profile"] = profile_summary(prof, profile_steps)
            if trace_dir is not None:
                trace_dir.mkdir(parents=True, exist_ok=True)
                mask = tuple(mask_render)
                mask_tag = "_mask" + mask_label(mask, "x") if mask != MASK_RENDER_DEFAULT else ""
                name = (f"{variant}_{B}x{V}_{'compile' if compile_net else 'eager'}_ckpt{int(grad_ckpt)}"
                        f"{'_graphs' if cuda_graphs else ''}{mask_tag}.json")  # fmt: skip
                prof.export_chrome_trace(str(trace_dir / name))
                rec["trace"] = name
        if timer is not None:
            timer.restore()
            n = 2 * steps  # both passes
            rec["breakdown_ms_per_step"] = {k: round(sum(v) / n, 1) for k, v in timer.ms.items()}
            rec["breakdown_calls_per_step"] = {k: len(v) / n for k, v in timer.ms.items()}
            rec["breakdown_note"] = ("forward phases with CUDA syncs around each call (network = ZipSplat.predict; "
                                     "render = every gsplat call of the step; chamfer/lpips = forward only); "
                                     "backward of the whole step; the syncs make the step slower than without")
        med = statistics.median(times)
        med_cold = statistics.median(times_by_pass["cold"])
        rec.update(
            ok=True,
            steps=steps,
            warmup=warmup,
            ms_per_step_median=1000 * med,
            ms_per_step_all=[round(1000 * t, 2) for t in times],
            ms_per_step_median_cold=1000 * med_cold,
            ms_per_step_all_cold=[round(1000 * t, 2) for t in times_by_pass["cold"]],
            images_per_s_cold=B * V / med_cold,
            steps_per_s=1.0 / med,
            images_per_s=B * V / med,
            gaussians_per_step_mean=statistics.mean(gaussians),
            peak_memory_gb=torch.cuda.max_memory_allocated() / 1e9,
            peak_reserved_gb=torch.cuda.max_memory_reserved() / 1e9,
            last_loss=float(loss.detach()),
        )
    except torch.cuda.OutOfMemoryError as exc:
        rec.update(ok=False, error="OOM", detail=str(exc)[:500], peak_memory_gb=torch.cuda.max_memory_allocated() / 1e9)
    except Exception as exc:  # noqa: BLE001 - recorded, not fatal
        rec.update(ok=False, error=type(exc).__name__, detail=traceback.format_exc()[-2000:])
    finally:
        # a compiled module references itself through its compiled forward: collect the cycle, or the next
        # configuration's peak memory includes this one's parameters and gradients
        del model
        gc.collect()
        torch.cuda.empty_cache()
    return rec


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output", type=Path, default=Path("bench_train.json"))
    ap.add_argument("--variants", nargs="+", default=["small", "giant"])
    ap.add_argument("--layouts", nargs="+", default=["4x6", "1x24"], help="scenes x views, 24 context images each")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--same-draws", action="store_true",
                    help="every configuration gets the same per-step compression draws (hence the same Gaussian "
                         "counts: an A/B of the rest; list a configuration twice to interleave). Only the first "
                         "configuration's 'cold' pass is then cold; compare the warm medians")  # fmt: skip
    ap.add_argument("--time-budget-s", type=float, default=420.0, help="skip remaining configurations after this")
    ap.add_argument("--breakdown", action="store_true",
                    help="also time the step's phases (network, renders, activated mask, LPIPS, chamfer, backward, "
                         "optimizer) with CUDA syncs around each; the step time then includes the syncs")  # fmt: skip
    ap.add_argument("--lpips-weights", choices=["auto", "random"], default="auto",
                    help="'random': LPIPS-VGG with random VGG16 weights (same compute, for machines without the "
                         "ImageNet weights; timings are unaffected, loss values are not meaningful)")  # fmt: skip
    ap.add_argument("--compile", nargs="+", choices=["eager", "compile"], default=["eager"],
                    help="network execution: eager, and/or torch.compile'd blocks and head (the model's compile=True; "
                         "compilation happens in the warm-up steps)")  # fmt: skip
    ap.add_argument("--grad-ckpt", nargs="+", choices=["recipe", "on", "off"], default=["recipe"],
                    help="activation checkpointing: the recipe's (on for small/base/large, the 24 GB recipe; off for "
                         "giant), or forced on / off")  # fmt: skip
    ap.add_argument("--fusion-sdpa", nargs="+", choices=["default", "no-cudnn"], default=["no-cudnn"],
                    help="attention kernels of the fusion stage (the model's fusion_sdpa), one configuration each")
    ap.add_argument("--backbone-sdpa", choices=["default", "no-cudnn"], default="default",
                    help="attention kernels of the ViT backbone and camera encoder (the model's backbone_sdpa)")
    ap.add_argument("--cuda-graphs", nargs="+", choices=["off", "on"], default=["off"],
                    help="the model's cuda_graphs (the ViT backbone's forward and backward replayed as CUDA graphs; "
                         "captured in the warm-up steps), one configuration each")  # fmt: skip
    ap.add_argument("--mask-render", nargs="+", default=["%d:%d" % MASK_RENDER_DEFAULT[:2]],
                    metavar="CHUNK:DOWNSCALE[:VIEWS]",
                    help="the activated mask's context renders: views per rasterizer call (the model's "
                         "mask_render_chunk), downscale (mask_render_downscale) and, optionally, how many context "
                         "views are drawn for it (mask_context_views; 0 or left out = all), one configuration each")
    ap.add_argument("--profile-steps", type=int, default=0,
                    help="after the timed steps, profile this many steps (torch.profiler): top CUDA kernels and CPU ops")
    ap.add_argument("--trace-dir", type=Path, default=None,
                    help="with --profile-steps: also write a Chrome trace per configuration here (Python stacks and "
                         "the forward phases as named ranges), for GPU idle time and host-side attribution")  # fmt: skip
    ap.add_argument("--nn-autotune", action="store_true",
                    help="let triton.autotune pick the chamfer nearest-neighbour kernel's tile (ZIPSPLAT_NN_AUTOTUNE=1; "
                         "the tuning runs on the first step, a warm-up step)")  # fmt: skip
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_train.py needs a CUDA GPU", file=sys.stderr)
        return 2
    if args.nn_autotune:
        os.environ["ZIPSPLAT_NN_AUTOTUNE"] = "1"  # read when the kernel is first built (first chamfer call)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.set_float32_matmul_precision("high")
    device = torch.device("cuda")
    # build gsplat's CUDA extension and the LPIPS net outside the timings
    t0 = time.perf_counter()
    from zipsplat_ns.gaussians import Gaussians
    from zipsplat_ns.nn_search import kernel_tile
    from zipsplat_ns.camera import Camera
    from zipsplat_ns.lpips import get_lpips_vgg
    from zipsplat_ns.pose import Pose
    from zipsplat_ns.rendering import render

    g = Gaussians(torch.zeros(4, 3, device=device) + torch.tensor([0, 0, 2.0], device=device),
                  torch.full((4, 3), 0.1, device=device), torch.tensor([[1.0, 0, 0, 0]] * 4, device=device),
                  torch.full((4,), 0.5, device=device), torch.zeros(4, 4, 3, device=device))  # fmt: skip
    render(g, Camera(torch.tensor([[32.0, 32, 30, 30, 16, 16]], device=device)), Pose.identity((1,), device=device),
           backend="gsplat")  # fmt: skip
    if args.lpips_weights == "random":
        install_random_lpips(device)
    get_lpips_vgg(device)
    setup_s = time.perf_counter() - t0

    def write_report() -> dict:
        """Summary + report, written after every configuration (a killed run keeps what it measured)."""
        summary = {}
        for variant in args.variants:
            ok = [r for r in results if r.get("variant") == variant and r.get("ok")]
            if not ok:
                continue
            tgt = TARGETS.get(variant, {})
            per_cfg = {}
            for r in ok:  # one entry per (compile, checkpointing) configuration: its best layout, its peak over layouts
                mode = "compile" if r["compile"] else "eager"
                key = f'{mode}, grad_ckpt={"on" if r["grad_checkpointing"] else "off"}'
                if r.get("fusion_sdpa", "default") != "default":
                    key += f', fusion_sdpa={r["fusion_sdpa"]}'
                if r.get("backbone_sdpa", "default") != "default":
                    key += f', backbone_sdpa={r["backbone_sdpa"]}'
                if r.get("cuda_graphs"):
                    key += ", cuda_graphs"
                mask = tuple(r.get(k, d) for k, d in zip(MASK_RENDER_KEYS, MASK_RENDER_DEFAULT))
                if mask != MASK_RENDER_DEFAULT:
                    key += ", mask_render=" + mask_label(mask)
                e = per_cfg.setdefault(key, {"best_layout": None, "images_per_s": 0.0,
                                             "peak_memory_gb_max_over_layouts": 0.0,
                                             "grad_checkpointing_is_recipe": r.get("grad_checkpointing_is_recipe")})
                if r["images_per_s"] > e["images_per_s"]:
                    e.update(best_layout=f'{r["scenes"]}x{r["views"]}', images_per_s=r["images_per_s"],
                             images_per_s_cold=r.get("images_per_s_cold"))
                e["peak_memory_gb_max_over_layouts"] = max(e["peak_memory_gb_max_over_layouts"], r["peak_memory_gb"])
            for e in per_cfg.values():
                e["meets_images_per_s_target"] = e["images_per_s"] >= tgt["images_per_s_min"] if tgt else None
                e["meets_memory_target"] = (e["peak_memory_gb_max_over_layouts"] <= tgt["peak_memory_gb_max"]
                                            if "peak_memory_gb_max" in tgt else None)  # fmt: skip
            summary[variant] = per_cfg
        report = {
            "what": "full ZipSplat training step (forward + gsplat render + all losses + backward + AdamW), "
                    "bf16 autocast, TF32",
            "device": torch.cuda.get_device_name(0),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "setup_s_gsplat_build_and_lpips": setup_s,
            "lpips_weights": args.lpips_weights,
            "nn_search_tile": kernel_tile(),
            "reference_anchor": REFERENCE,
            "targets": TARGETS,
            "results": results,
            "summary": summary,
        }
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2))
        return summary

    recipe_ckpt = {"giant": False, "large": True, "base": True, "small": True, "tiny": False}
    results, start = [], time.perf_counter()
    for variant in args.variants:
        for layout in args.layouts:
            for mode, ck, fusion_sdpa, graphs, mask in itertools.product(
                args.compile, args.grad_ckpt, args.fusion_sdpa, args.cuda_graphs, args.mask_render
            ):  # fmt: skip
                mask_render = parse_mask_render(mask)
                B, V = (int(x) for x in layout.split("x"))
                grad_ckpt = recipe_ckpt.get(variant, False) if ck == "recipe" else ck == "on"
                if time.perf_counter() - start > args.time_budget_s:
                    results.append({"variant": variant, "scenes": B, "views": V, "compile": mode == "compile",
                                    "grad_checkpointing": grad_ckpt, "fusion_sdpa": fusion_sdpa,
                                    **dict(zip(MASK_RENDER_KEYS, mask_render)),
                                    "ok": False,
                                    "error": "skipped (time budget)"})
                    continue
                rec = bench_one(variant, B, V, args.steps, args.warmup, grad_ckpt, device, breakdown=args.breakdown,
                                compile_net=mode == "compile", profile_steps=args.profile_steps,
                                config_index=0 if args.same_draws else len(results), fusion_sdpa=fusion_sdpa,
                                backbone_sdpa=args.backbone_sdpa, trace_dir=args.trace_dir,
                                cuda_graphs=graphs == "on", mask_render=mask_render)  # fmt: skip
                rec["grad_checkpointing_is_recipe"] = grad_ckpt == recipe_ckpt.get(variant, False)
                rec["same_draws"] = bool(args.same_draws)
                print(json.dumps({k: v for k, v in rec.items() if k not in ("ms_per_step_all", "detail", "profile")}),
                      flush=True)  # fmt: skip
                if "profile" in rec:
                    pr = rec["profile"]
                    print(f"  profile: device {pr['device_ms_per_step_total']} ms/step, cpu self "
                          f"{pr['cpu_self_ms_per_step_total']} ms/step, {pr['aten_ops_per_step']} aten ops/step")
                    for name, ms, n in pr["top_device"][:12]:
                        print(f"    {ms:8.2f} ms x{n:<4d} {name}")
                if not rec.get("ok"):
                    print(rec.get("detail", "")[-1500:], flush=True)
                results.append(rec)
                write_report()
    summary = write_report()

    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
