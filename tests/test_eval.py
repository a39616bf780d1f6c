"""Benchmark evaluation end to end (`zipsplat-ns eval`): registry, index validation, exact metrics, resume, labels."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import tyro
import yaml

from zipsplat_ns.cli import build_command_type
from zipsplat_ns.data.samplers import IndexFileError
from zipsplat_ns.eval.benchmarks import (
    BENCHMARKS,
    INDICES_DIR,
    check_index,
    index_entry,
    load_index,
    resolve_benchmark,
)
from zipsplat_ns.eval.runner import SceneLog

ROOT = Path(__file__).resolve().parents[1]
MAKE_INDEX = ROOT / "scripts" / "make_index.py"
MISSING = "scene-not-in-the-shards"


def cli(*args: str) -> int:
    """`zipsplat-ns ARGS` in this process (the same parser and dispatch as the console script)."""
    cmd = tyro.cli(build_command_type(), args=list(args), config=(tyro.conf.OmitSubcommandPrefixes,))
    return cmd.main()


# ------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """Synthetic test shards (3 scenes x 12 views, 64 px, exact depth) and an index from scripts/make_index.py
    (3 context + 2 target views), plus one index scene that is not in the shards."""
    from zipsplat_ns.data.synth import synth_main

    root = tmp_path_factory.mktemp("evalbench")
    synth_main(root / "synth", num_scenes=6, views=12, size=64, test_fraction=0.5, progress=False)
    shards = root / "synth" / "test-scenes"
    idx = root / "index.json"
    out = subprocess.run(
        [sys.executable, str(MAKE_INDEX), str(shards), "--views", "3", "--targets", "2", "-o", str(idx)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    entries = json.loads(idx.read_text())
    assert len(entries) == 3 and all(e == {"context": [0, 6, 11], "target": [3, 8]} for e in entries.values())
    with_missing = dict(entries)
    with_missing[MISSING] = {"context": [0, 1, 2], "target": [3]}
    idx_m = root / "index_with_missing.json"
    idx_m.write_text(json.dumps(with_missing, indent=2))
    return {"root": root, "shards": shards, "index": idx_m, "scenes": sorted(entries)}


BASE = ("eval", "--benchmark", "custom", "--weights", "random-tiny", "--gaussians-per-token", "1", "--image-size",
        "56", "--preset", "very_fast", "--refine-steps", "2", "--device", "cpu", "--no-progress")  # fmt: skip


def run_eval(bench, out: Path, *extra: str) -> dict:
    code = cli(*BASE, "--index-file", str(bench["index"]), "--shard-dir", str(bench["shards"]),
               "--output-dir", str(out), *extra)  # fmt: skip
    assert code == 0
    return json.loads((out / "custom_index_with_missing" / "results.json").read_text())


# ------------------------------------------------------------------------------------------------- registry
def test_registry_and_shipped_index_files():
    assert set(BENCHMARKS) == {"re10k", "dl3dv", "mipnerf360"}
    expect = {("re10k", 6): 1600, ("dl3dv", 6): 140, ("dl3dv", 12): 140, ("dl3dv", 24): 140,
              ("mipnerf360", 32): 6, ("mipnerf360", 64): 6, ("mipnerf360", 128): 6}  # fmt: skip
    for (name, views), n in expect.items():
        b = resolve_benchmark(name, views)
        assert b.index_file.is_file() and b.index_file.is_relative_to(INDICES_DIR)
        idx = load_index(b.index_file, expected_context=views)  # every entry: `views` context views
        assert len(idx.scenes) == n
        assert all(len(idx.get(k).target) == 8 for k in idx.scenes)
    assert str(resolve_benchmark("re10k").shard_dir) == "data/re10k/test-scenes"
    assert str(resolve_benchmark("dl3dv", 12).shard_dir) == "data/dl3dv/test-scenes"
    assert str(resolve_benchmark("mipnerf360", 64).shard_dir) == "data/mipnerf360"
    assert resolve_benchmark("dl3dv", 24, shard_dir="x").shard_dir == Path("x")
    assert resolve_benchmark("re10k").views == 6 and resolve_benchmark("mipnerf360").views == 32


def test_unsupported_view_counts_list_the_allowed_ones():
    with pytest.raises(ValueError, match=r"allowed: 6, 12, 24"):
        resolve_benchmark("dl3dv", 8)
    with pytest.raises(ValueError, match=r"allowed: 32, 64, 128"):
        resolve_benchmark("mipnerf360", 6)
    with pytest.raises(ValueError, match=r"allowed: 6$"):
        resolve_benchmark("re10k", 12)
    with pytest.raises(ValueError, match="re10k, dl3dv, mipnerf360, custom"):
        resolve_benchmark("llff")
    with pytest.raises(ValueError, match="--index-file and --shard-dir"):
        resolve_benchmark("custom")


def test_make_index_rule():
    assert index_entry(12, 3, 2) == {"context": [0, 6, 11], "target": [3, 8]}
    assert index_entry(50, 6, 4) == {"context": [0, 10, 20, 29, 39, 49], "target": [5, 15, 34, 44]}
    e = index_entry(30, 6, 8)  # more targets than gaps: distinct, never a context frame
    assert len(set(e["target"])) == 8 and not set(e["target"]) & set(e["context"])
    assert index_entry(8, 6, 4) is None and index_entry(100, 6, 4, span=10) is None


# ----------------------------------------------------------------------------------------- index validation
def _bad(tmp_path, bench, content, name="bad.json", views=None):
    p = tmp_path / name
    p.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(IndexFileError) as exc:
        check_index(p, bench["shards"], expected_context=views)
    return exc.value


def test_bad_index_files_list_the_offending_entries(tmp_path, bench):
    a, b, c = bench["scenes"]
    good = {"context": [0, 6, 11], "target": [3, 8]}
    err = _bad(tmp_path, bench, '{"a": {"context": [0, 1], "target": [2]},\n  "b": [}', name="broken.json")
    assert "broken.json" in str(err) and "malformed JSON" in str(err) and "line 2, column" in str(err)

    err = _bad(tmp_path, bench, {a: {"context": 3, "target": [1]}, b: good, c: {"context": [0, 1]}, "x": [1, 2]})
    msg = str(err)
    assert f"{a}: 'context' must be a non-empty list of integers" in msg and "x: entry must be an object" in msg
    assert len(err.problems) == 2  # c without target is allowed (no targets), b is fine

    err = _bad(tmp_path, bench, {a: {"context": [0, 6, 12], "target": [3, 40]}, b: good,
                                 c: {"context": [0, 5, 99], "target": [1]}})  # fmt: skip
    assert len(err.problems) == 2
    assert f"{a}: frame indices out of range (context [12], target [40]) for a 12-frame scene" in err.problems
    assert f"{c}: frame indices out of range (context [99]) for a 12-frame scene" in err.problems

    err = _bad(tmp_path, bench, {a: good, b: {"context": [0, 6], "target": [3]}, c: {"context": [0, 2, 4, 6],
                                 "target": [1]}}, views=3)  # fmt: skip
    assert sorted(err.problems) == sorted([f"{b}: 2 context views, expected 3", f"{c}: 4 context views, expected 3"])

    # unknown scene keys are missing scenes: reported, not an error
    p = tmp_path / "missing.json"
    p.write_text(json.dumps({a: good, "nope": good}))
    chk = check_index(p, bench["shards"], expected_context=3)
    assert chk.scenes == [a] and chk.missing == ["nope"]


def test_bad_index_through_the_cli_is_one_clear_error(tmp_path, bench):
    p = tmp_path / "count.json"
    p.write_text(json.dumps({bench["scenes"][0]: {"context": [0, 6], "target": [3]}}))
    out = subprocess.run(
        [sys.executable, "-m", "zipsplat_ns.cli", *BASE, "--index-file", str(p), "--shard-dir", str(bench["shards"]),
         "--views", "3", "--output-dir", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert "error:" in out.stderr and "2 context views, expected 3" in out.stderr and "Traceback" not in out.stderr


def test_eval_refuses_an_index_it_cannot_measure(tmp_path, bench):
    """Entries without target views, and an index none of whose scenes is in the shards, are errors that name the
    index (and the scenes / the shard folder) before anything is evaluated or written."""
    a, b = bench["scenes"][:2]
    p = tmp_path / "no_targets.json"
    p.write_text(json.dumps({a: {"context": [0, 6, 11], "target": [3]}, b: {"context": [0, 6, 11]}}))
    with pytest.raises(IndexFileError, match=rf"(?s)no_targets.json.*{b}: no .target. views"):
        cli(*BASE, "--index-file", str(p), "--shard-dir", str(bench["shards"]), "--output-dir", str(tmp_path / "o"))
    p = tmp_path / "elsewhere.json"
    p.write_text(json.dumps({"scene-x": {"context": [0, 6, 11], "target": [3]}}))
    with pytest.raises(FileNotFoundError, match=r"none of the 1 scene\(s\) of .*elsewhere.json is in .*scene-x"):
        cli(*BASE, "--index-file", str(p), "--shard-dir", str(bench["shards"]), "--output-dir", str(tmp_path / "o"))
    assert not (tmp_path / "o").exists()


def test_eval_resume_tells_weights_files_apart_by_content(tmp_path, bench):
    """``--weights FILE``: an output folder resumes only for the same weights, not just the same file name."""
    from safetensors.torch import save_file

    from zipsplat_ns.models.network import ZipSplat

    wfile = tmp_path / "tiny.safetensors"
    args = ("eval", "--benchmark", "custom", "--weights", str(wfile), "--variant", "tiny", "--image-size", "56",
            "--preset", "very_fast", "--refine-steps", "1", "--device", "cpu", "--no-progress", "--max-scenes", "1",
            "--index-file", str(bench["index"]), "--shard-dir", str(bench["shards"]), "--output-dir",
            str(tmp_path / "o"))  # fmt: skip
    for seed in (0, 1):
        torch.manual_seed(seed)
        save_file({k: v.contiguous() for k, v in ZipSplat("tiny", image_size=56).state_dict().items()}, str(wfile))
        if seed == 0:
            assert cli(*args) == 0
            assert cli(*args) == 0  # the same weights: resumes
        else:
            with pytest.raises(ValueError, match=r"different evaluation \(differs in: checkpoint\)"):
                cli(*args)


# ------------------------------------------------------------------------------------------ metrics + resume
def _independent_lpips():
    """The lpips package's LPIPS-VGG with the same (offline) VGG16 trunk, or None."""
    try:
        import lpips as lpips_pkg
        from torchvision.models.vgg import cfgs, make_layers

        from zipsplat_ns import lpips as zl

        feats, _ = zl.resolve_vgg16_features()
    except Exception:  # noqa: BLE001
        return None

    class _Features:
        def __init__(self, *a, **k):
            self.features = make_layers(cfgs["D"])

    orig = lpips_pkg.pretrained_networks.tv.vgg16
    lpips_pkg.pretrained_networks.tv.vgg16 = _Features
    try:
        ref = lpips_pkg.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False)
    finally:
        lpips_pkg.pretrained_networks.tv.vgg16 = orig
    ref.net.load_state_dict({k: feats[f"features.{k.split('.')[1]}.{k.split('.')[2]}"] for k in ref.net.state_dict()})
    return ref.eval()


def test_eval_metrics_match_independent_computations_and_resume(tmp_path, bench):
    from skimage.metrics import structural_similarity

    out = tmp_path / "out"
    rep = run_eval(bench, out, "--max-scenes", "2", "--save-renders")
    folder = out / "custom_index_with_missing"
    res = rep["results"]
    assert set(rep) >= {"experiment_name", "method_name", "checkpoint", "results"}
    assert res["num_scenes"] == 2 and res["num_missing"] == 1 and rep["missing_scenes"] == [MISSING]
    assert res["num_gaussians"] == 3 * 16 * 1  # 3 views x (56/14)^2 tokens x 1 Gaussian per token
    assert "RANDOM WEIGHTS" in rep["benchmark"]["model"] and rep["benchmark"]["scale_source"] == "depth"
    rows = [json.loads(line) for line in (folder / "per_scene.jsonl").read_text().splitlines()]
    assert [r["scene"] for r in rows] == bench["scenes"][:2]
    csv_lines = (folder / "per_scene.csv").read_text().splitlines()
    assert csv_lines[0].startswith("scene,status,psnr,ssim,lpips,num_gaussians") and len(csv_lines) == 3
    assert len(json.loads((folder / "per_scene.json").read_text())) == 2

    ref_lpips = _independent_lpips()
    from zipsplat_ns.metrics import lpips as our_lpips

    scene_means = {k: [] for k in ("psnr", "ssim", "lpips")}
    for row in rows:
        z = np.load(folder / "renders" / f"{row['scene']}.npz")
        pred, gt = z["render"].astype(np.float64), z["gt"].astype(np.float64)
        assert pred.shape == gt.shape == (2, 3, 56, 56)
        mse = ((np.clip(pred, 0, 1) - np.clip(gt, 0, 1)) ** 2).mean(axis=(1, 2, 3))
        psnr = -10 * np.log10(mse)
        ssim = np.array([structural_similarity(gt[v], pred[v], gaussian_weights=True, data_range=1.0,
                                               channel_axis=0, win_size=11) for v in range(len(gt))])  # fmt: skip
        pt, gtt = torch.from_numpy(z["render"]), torch.from_numpy(z["gt"])
        with torch.no_grad():
            lp = ref_lpips(gtt, pt, normalize=True).reshape(-1) if ref_lpips is not None else our_lpips(pt, gtt)
        lp = lp.double().numpy()
        for k, v in (("psnr", psnr), ("ssim", ssim), ("lpips", lp)):
            assert np.allclose(row["per_view"][k], v, atol=1e-4, rtol=0), (k, row["per_view"][k], v)
            assert row[k] == pytest.approx(v.mean(), abs=1e-4)
            scene_means[k].append(v.mean())
        assert row["num_targets"] == 2 and row["refine_steps"] == 2 and row["scale_source"] == "depth"
        assert not np.allclose(z["pose_init"], z["pose_refined"])  # the targets were refined
    for k, v in scene_means.items():
        assert res[k] == pytest.approx(np.mean(v), abs=1e-4)
        assert res[f"{k}_std"] == pytest.approx(np.std(v), abs=1e-4)

    # resume: the 2 finished scenes are kept as they are, only the third one is computed
    before = (folder / "per_scene.jsonl").read_bytes()
    mtimes = {p.name: p.stat().st_mtime_ns for p in (folder / "renders").glob("*.npz")}
    rep2 = run_eval(bench, out, "--max-scenes", "10", "--save-renders")
    after = (folder / "per_scene.jsonl").read_bytes()
    assert after.startswith(before) and len(after.splitlines()) == 3
    assert rep2["benchmark"]["resumed_scenes"] == 2 and rep2["results"]["num_scenes"] == 3
    assert {p.name: p.stat().st_mtime_ns for p in (folder / "renders").glob("*.npz") if p.name in mtimes} == mtimes
    assert rep2["results"]["num_missing"] == 1

    # other settings on the same folder are refused (unless --overwrite)
    with pytest.raises(ValueError, match="different evaluation.*align_poses"):
        cli(*BASE, "--index-file", str(bench["index"]), "--shard-dir", str(bench["shards"]),
            "--output-dir", str(out), "--no-align-poses")  # fmt: skip


def test_scenes_without_depth_are_skipped_as_the_protocol_does(tmp_path):
    """The protocol normalises the scale by depth, so an index scene without depth is skipped (reason no_depth,
    counted) unless --baseline-without-depth evaluates it at its camera-baseline scale (labelled); an index whose
    scenes all lack depth is an error that says how to proceed. The datamanager's benchmark replay (ns-eval) agrees."""
    from test_dataset import make_scene, write_dir

    shards = write_dir(tmp_path / "shards", [make_scene("with-depth", seed=1), make_scene("no-depth", seed=2, depth=False)])
    entry = {"context": [0, 6, 11], "target": [3]}
    index = tmp_path / "index.json"
    index.write_text(json.dumps({"with-depth": entry, "no-depth": entry}))
    args = (*BASE, "--index-file", str(index), "--shard-dir", str(shards), "--views", "3", "--no-align-poses")

    def results(out: Path) -> dict:
        return json.loads((out / "custom_index" / "results.json").read_text())

    assert cli(*args, "--output-dir", str(tmp_path / "a")) == 0
    rep = results(tmp_path / "a")
    assert rep["results"]["num_scenes"] == 1 and rep["results"]["num_skipped"] == 1
    assert rep["skipped_scenes"]["no-depth"].startswith("no_depth") and rep["benchmark"]["scale_source"] == "depth"
    assert cli(*args, "--baseline-without-depth", "--output-dir", str(tmp_path / "b")) == 0
    rep = results(tmp_path / "b")
    assert rep["results"]["num_scenes"] == 2 and rep["results"]["num_baseline_scale_scenes"] == 1
    only = tmp_path / "only.json"
    only.write_text(json.dumps({"no-depth": entry}))
    with pytest.raises(RuntimeError, match=r"none of the 1 scene\(s\) could be evaluated.*no_depth.*--baseline-without-depth"):
        cli(*BASE, "--index-file", str(only), "--shard-dir", str(shards), "--views", "3", "--no-align-poses",
            "--output-dir", str(tmp_path / "c"))  # fmt: skip
    # inside a training run (strict=False) the same index warns and yields empty results instead of stopping it
    from zipsplat_ns.eval.benchmarks import ResolvedBenchmark
    from zipsplat_ns.eval.runner import EvalOptions, evaluate, load_network, net_model_fn

    net, _ = load_network("random-tiny", variant="tiny", image_size=56, gaussians_per_token=1)
    opts = EvalOptions(align_poses=False, image_size=56, progress=False, strict=False)
    rep = evaluate(net_model_fn(net), ResolvedBenchmark("custom", 3, only, shards), options=opts)
    assert rep["results"]["num_scenes"] == 0 and rep["results"]["num_skipped"] == 1
    no_tgt = tmp_path / "no_tgt.json"
    no_tgt.write_text(json.dumps({"with-depth": {"context": [0, 6, 11]}, "no-depth": entry}))
    rep = evaluate(net_model_fn(net), ResolvedBenchmark("custom", 3, no_tgt, shards), options=opts)
    assert rep["results"]["num_scenes"] == 0 and list(rep["skipped_scenes"]) == ["no-depth"]

    from zipsplat_ns.datamanagers import ZipSplatDataManagerConfig

    for required, keys in ((True, ["with-depth"]), (False, ["with-depth", "no-depth"])):
        dm = ZipSplatDataManagerConfig(data=shards, eval_index_file=index, image_size=56, num_workers=0,
                                       eval_requires_depth=required).setup(device="cpu", test_mode="inference")  # fmt: skip
        assert [k for k, _, _ in dm.benchmark_items()] == keys
        assert dm.skip_counts["no_depth"] == int(required)


def test_no_depth_mode_is_labelled_baseline(tmp_path, bench):
    rep = run_eval(bench, tmp_path / "nd", "--max-scenes", "1", "--no-depth", "--no-align-poses")
    assert rep["benchmark"]["scale_source"] == "baseline" and rep["benchmark"]["use_depth"] is False
    assert rep["results"]["num_baseline_scale_scenes"] == 1
    row = json.loads((tmp_path / "nd" / "custom_index_with_missing" / "per_scene.jsonl").read_text())
    assert row["scale_source"] == "baseline" and "refine_steps" not in row
    assert math.isfinite(row["psnr"])


def test_scene_log_drops_a_torn_last_line(tmp_path):
    log = SceneLog(tmp_path / "x.jsonl")
    log.append({"scene": "a", "psnr": 1.0})
    with open(log.path, "ab") as f:
        f.write(b'{"scene": "b", "ps')  # a write cut short by a kill
    assert list(log.load()) == ["a"]
    log.append({"scene": "c", "psnr": 2.0})
    assert list(log.load()) == ["a", "c"]


# ------------------------------------------------------------------------------------------- pipeline / run dir
def _make_run_dir(root: Path, data: Path, configure=None) -> Path:
    """A nerfstudio run directory (config.yml + checkpoint) of an untrained zipsplat-tiny pipeline."""
    import copy

    from zipsplat_ns.config import zipsplat_tiny_method

    cfg = copy.deepcopy(zipsplat_tiny_method.config)
    cfg.output_dir, cfg.timestamp, cfg.machine.device_type = root, "t0", "cpu"
    cfg.pipeline.datamanager.data = data
    cfg.pipeline.datamanager.num_workers = 0
    cfg.pipeline.model.gaussians_per_token = 1
    if configure is not None:
        configure(cfg)
    torch.manual_seed(0)
    pipe = cfg.pipeline.setup(device="cpu", test_mode="test")
    # nerfstudio's "Train Rays / Sec" counts the supervised pixels: the targets are rendered at render_downscale
    assert pipe.datamanager.target_downscale == cfg.pipeline.model.render_downscale
    cfg.save_config()
    ckpt = cfg.get_checkpoint_dir()
    ckpt.mkdir(parents=True, exist_ok=True)
    torch.save({"step": 5, "pipeline": pipe.state_dict()}, ckpt / "step-000000005.ckpt")
    return cfg.get_base_dir()


def test_run_dir_and_pipeline_paths_agree_with_the_weights_path(tmp_path, bench):
    pytest.importorskip("nerfstudio")
    from nerfstudio.utils.eval_utils import eval_setup

    from zipsplat_ns.eval.benchmarks import ResolvedBenchmark
    from zipsplat_ns.eval.pose_refine import preset
    from zipsplat_ns.eval.runner import EvalOptions, evaluate, net_model_fn, run_benchmark_for_pipeline

    run = _make_run_dir(tmp_path / "runs", bench["shards"].parent)
    # a benchmark named in config.yml (for ns-eval) must not override the one given on the command line: re10k's
    # shards are not here, so the run would fail if config.yml's re10k were applied
    original = (run / "config.yml").read_text()
    saved = yaml.load(original, Loader=yaml.Loader)
    saved.pipeline.benchmark.name = "re10k"
    (run / "config.yml").write_text(yaml.dump(saved))
    args = ("eval", "--benchmark", "custom", "--run-dir", str(run), "--index-file", str(bench["index"]), "--shard-dir",
            str(bench["shards"]), "--views", "3", "--preset", "fast", "--refine-steps", "1", "--max-scenes", "1",
            "--device", "cpu", "--no-progress", "--output-dir", str(tmp_path / "o"))  # fmt: skip
    assert cli(*args) == 0
    rep = json.loads((tmp_path / "o" / "custom_index_with_missing" / "results.json").read_text())
    assert rep["results"]["num_scenes"] == 1 and rep["results"]["num_missing"] == 1
    assert rep["checkpoint"].endswith("step-000000005.ckpt") and rep["results"]["num_gaussians"] == 3 * 324
    (run / "config.yml").write_text(original)

    # the pipeline helper (datamanager.benchmark_items + model.net) == the weights path on the same network
    def set_index(c):
        c.pipeline.datamanager.eval_index_file = bench["index"]
        return c

    _, pipe, _, _ = eval_setup(run / "config.yml", test_mode="test", update_config_callback=set_index)
    ref = preset("fast", num_steps=1)
    flat = run_benchmark_for_pipeline(pipe, None, views=3, refine=ref, max_scenes=1, progress=False)
    assert flat["num_scenes"] == 1 and flat["num_missing"] == 1 and all(isinstance(v, float) for v in flat.values())
    direct = evaluate(
        net_model_fn(pipe.model.net), ResolvedBenchmark("custom", 3, bench["index"], bench["shards"]),
        options=EvalOptions(refine=ref, max_scenes=1, progress=False),
    )  # fmt: skip
    for k in ("psnr", "ssim", "lpips", "num_gaussians"):
        assert flat[k] == pytest.approx(direct["results"][k], abs=1e-4)
        assert flat[k] == pytest.approx(rep["results"][k], abs=1e-4)

    # a results folder resumes only for the same weights (ns-eval --render-output-path): others are refused
    folder = tmp_path / "resume"
    run_benchmark_for_pipeline(pipe, folder, views=3, refine=ref, max_scenes=1, progress=False)
    again = run_benchmark_for_pipeline(pipe, folder, views=3, refine=ref, max_scenes=1, progress=False, full_report=True)
    assert again["benchmark"]["resumed_scenes"] == 1 and again["checkpoint"].startswith("weights ")
    with torch.no_grad():
        pipe.model.net.gaussian_head.gaussian_head[1].bias.add_(0.01)  # another checkpoint
    with pytest.raises(ValueError, match=r"different evaluation \(differs in: checkpoint\)"):
        run_benchmark_for_pipeline(pipe, folder, views=3, refine=ref, max_scenes=1, progress=False)


def test_throughput_leaves_out_evaluations_between_steps(tmp_path, bench, monkeypatch):
    """images_per_s is context images over the time between two training steps minus the evaluation run between
    them (a fake clock: 12 s between the steps, 7 of them evaluating)."""
    pytest.importorskip("nerfstudio")
    import copy

    import zipsplat_ns.pipeline as P
    from zipsplat_ns.config import zipsplat_tiny_method

    cfg = copy.deepcopy(zipsplat_tiny_method.config)
    cfg.pipeline.datamanager.data = bench["shards"].parent
    cfg.pipeline.datamanager.num_workers = 0
    cfg.pipeline.datamanager.eval_num_workers = 0
    cfg.pipeline.model.gaussians_per_token = 1
    pipe = cfg.pipeline.setup(device="cpu", test_mode="val")
    clock = type("Clock", (), {"t": 0.0})()
    monkeypatch.setattr(P.time, "perf_counter", lambda: clock.t)
    pipe.get_train_loss_dict(0)
    images = pipe._last_images
    clock.t = 5.0
    next_eval = pipe.datamanager.next_eval

    def slow_eval(step):
        clock.t += 7.0
        return next_eval(step)

    monkeypatch.setattr(pipe.datamanager, "next_eval", slow_eval)
    pipe.get_eval_loss_dict(1)
    clock.t = 12.0
    _, _, metrics = pipe.get_train_loss_dict(1)
    assert float(metrics["images_per_s"]) == pytest.approx(images / 5.0)


def test_a_run_loads_without_its_starting_weights_file(tmp_path, bench):
    """ns-eval / ns-viewer / ns-export restore the whole network from the run's checkpoint, so the DA3 file that
    training started from (``backbone_weights``) is not read and may be gone; training itself still needs it."""
    pytest.importorskip("nerfstudio")
    from nerfstudio.utils.eval_utils import eval_setup

    gone = tmp_path / "da3-tiny.safetensors"  # never written
    run = _make_run_dir(tmp_path / "runs", bench["shards"].parent,
                        lambda c: setattr(c.pipeline.model, "backbone_weights", str(gone)))  # fmt: skip
    saved = torch.load(next((run / "nerfstudio_models").glob("*.ckpt")), map_location="cpu")["pipeline"]
    for mode in ("test", "inference"):
        config, pipe, _, _ = eval_setup(run / "config.yml", test_mode=mode)
        assert config.pipeline.model.backbone_weights == str(gone)
        for k, v in pipe.state_dict().items():
            assert torch.equal(v, saved[k]), k
    with pytest.raises(FileNotFoundError, match="da3-tiny.safetensors"):
        config.pipeline.setup(device="cpu", test_mode="val")


@pytest.mark.slow
def test_ns_eval_runs_the_benchmark_named_in_config_yml(tmp_path, bench):
    """`ns-eval --load-config` runs the protocol of `pipeline.benchmark` (refined poses, exact metrics, missing scenes
    counted); its numbers equal `zipsplat-ns eval --run-dir` and independent computations on the saved renders."""
    pytest.importorskip("nerfstudio")
    from skimage.metrics import structural_similarity

    def configure(cfg):
        cfg.pipeline.datamanager.eval_index_file = bench["index"]
        cfg.pipeline.benchmark.name = "custom"
        cfg.pipeline.benchmark.views = 3
        cfg.pipeline.benchmark.preset = "very_fast"
        cfg.pipeline.benchmark.refine_steps = 2

    run = _make_run_dir(tmp_path / "runs", bench["shards"], configure)
    out_json, renders = tmp_path / "ns_eval.json", tmp_path / "ns_eval_renders"
    exe = Path(sys.executable).parent / "ns-eval"
    res = subprocess.run(
        [str(exe) if exe.exists() else "ns-eval", "--load-config", str(run / "config.yml"), "--output-path",
         str(out_json), "--render-output-path", str(renders)],
        capture_output=True, text=True, timeout=600, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-4000:]
    rep = json.loads(out_json.read_text())
    r = rep["results"]
    assert rep["method_name"] == "zipsplat-tiny" and rep["checkpoint"].endswith("step-000000005.ckpt")
    assert r["num_scenes"] == 3 and r["num_missing"] == 1 and r["num_gaussians"] == 3 * 324
    folder = renders / "custom_index_with_missing"
    rows = [json.loads(line) for line in (folder / "per_scene.jsonl").read_text().splitlines()]
    assert sorted(row["scene"] for row in rows) == bench["scenes"]
    psnrs, ssims = [], []
    for row in rows:
        assert row["refine_steps"] == 2  # both targets in one batch of views, 2 steps (no early stop that soon)
        z = np.load(folder / "renders" / f"{row['scene']}.npz")
        pred, gt = z["render"].astype(np.float64), z["gt"].astype(np.float64)
        psnrs.append(np.mean(-10 * np.log10(((np.clip(pred, 0, 1) - np.clip(gt, 0, 1)) ** 2).mean(axis=(1, 2, 3)))))
        ssims.append(np.mean([structural_similarity(gt[v], pred[v], gaussian_weights=True, data_range=1.0,
                                                    channel_axis=0, win_size=11) for v in range(len(gt))]))  # fmt: skip
    assert r["psnr"] == pytest.approx(np.mean(psnrs), abs=1e-4) and r["psnr_std"] == pytest.approx(np.std(psnrs), abs=1e-4)
    assert r["ssim"] == pytest.approx(np.mean(ssims), abs=1e-4)

    # the same run through `zipsplat-ns eval --run-dir` gives the same numbers
    assert cli("eval", "--benchmark", "custom", "--run-dir", str(run), "--index-file", str(bench["index"]),
               "--shard-dir", str(bench["shards"]), "--views", "3", "--preset", "very_fast", "--refine-steps", "2",
               "--device", "cpu", "--no-progress", "--output-dir", str(tmp_path / "z")) == 0  # fmt: skip
    z = json.loads((tmp_path / "z" / "custom_index_with_missing" / "results.json").read_text())["results"]
    for k in ("psnr", "ssim", "lpips", "num_gaussians", "num_scenes", "num_missing"):
        assert z[k] == pytest.approx(r[k], abs=1e-4), k
