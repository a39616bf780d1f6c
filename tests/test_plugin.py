"""Plugin registration and import safety, through nerfstudio's own CLIs (subprocesses)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from packaging.version import Version

BLOCKER = textwrap.dedent(
    """
    import importlib.abc, sys
    BLOCKED = {"xformers", "fused_ssim"}
    class _Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
            return None
    sys.meta_path.insert(0, _Block())
    """
)


def run(cmd, env_extra=None, timeout=300):
    env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env_extra or {})}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


def ns_cli(name: str) -> str:
    exe = Path(sys.executable).parent / name
    return str(exe) if exe.exists() else name


@pytest.mark.slow
def test_ns_train_help_lists_zipsplat_even_without_optional_dependencies(tmp_path):
    # sitecustomize makes `import xformers` / `import fused_ssim` fail as on a machine without them.
    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    env = {"PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "COLUMNS": "200"}
    check = run([sys.executable, "-c", "import xformers"], env)
    assert "blocked by the test" in check.stderr  # the blocker is active
    out = run([ns_cli("ns-train"), "--help"], env)
    assert out.returncode == 0, out.stderr[-2000:]
    line = next(line for line in out.stdout.splitlines() if "zipsplat " in line)
    assert "ZipSplat: feed-forward 3D Gaussians" in line
    sub = run([ns_cli("ns-train"), "zipsplat", "--help"], env)
    assert sub.returncode == 0, sub.stderr[-2000:]
    assert "--pipeline.model" in sub.stdout or "pipeline.datamanager" in sub.stdout


def test_entry_point_is_registered():
    from importlib.metadata import entry_points

    eps = entry_points(group="nerfstudio.method_configs")
    ep = next(e for e in eps if e.name == "zipsplat")
    spec = ep.load()
    assert spec.config.method_name == "zipsplat"
    assert spec.config.vis == "tensorboard" and spec.config.viewer.websocket_host == "127.0.0.1"


def test_nerfstudio_checkpoints_with_numpy_scalars_load_under_weights_only(tmp_path):
    """nerfstudio's schedulers leave numpy scalars in checkpoints; torch >= 2.6 refuses them unless allow-listed."""
    ckpt = tmp_path / "step-000000001.ckpt"
    torch.save(
        {"step": 1, "schedulers": {"g": {"_last_lr": [np.float64(3e-4)], "base_lrs": [np.float32(1.0)]}},
         "pipeline": {"_model.w": torch.ones(2)}, "dtype": np.dtype("float64")},
        ckpt,
    )  # fmt: skip
    code = "import sys, torch\n{pre}\nstate = torch.load(sys.argv[1], map_location='cpu')\nprint(float(state['schedulers']['g']['_last_lr'][0]))"
    plain = run([sys.executable, "-c", code.format(pre=""), str(ckpt)], {"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "0"})
    if Version(torch.__version__.split("+")[0]) < Version("2.6"):
        pytest.skip("torch < 2.6 does not default to weights_only loading")
    assert plain.returncode != 0 and "numpy" in plain.stderr  # the failure nerfstudio users see
    fixed = run([sys.executable, "-c", code.format(pre="import zipsplat_ns.config"), str(ckpt)], {"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "0"})
    assert fixed.returncode == 0, fixed.stderr[-2000:]
    assert float(fixed.stdout.strip().splitlines()[-1]) == pytest.approx(3e-4)


def test_public_api_imports_lazily():
    out = run([sys.executable, "-c", "import sys, zipsplat_ns; print('zipsplat_ns.rendering' in sys.modules); "
               "from zipsplat_ns import Camera, Pose, Gaussians, load_image, load_video; print(Camera.__module__)"])  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "zipsplat_ns.camera"]


def test_only_the_nerfstudio_adapters_import_nerfstudio():
    """The layering the README's "Where things are" states: network, geometry, rendering, losses, data, evaluation and
    the command-line tools load without nerfstudio; the adapters pull it in."""
    core = [
        "zipsplat_ns.models.network", "zipsplat_ns.models.cuda_graphs", "zipsplat_ns.rendering", "zipsplat_ns.losses",
        "zipsplat_ns.lpips", "zipsplat_ns.metrics", "zipsplat_ns.schedules", "zipsplat_ns.data.dataset",
        "zipsplat_ns.data.converters", "zipsplat_ns.data.depth", "zipsplat_ns.default_data", "zipsplat_ns.eval.runner",
        "zipsplat_ns.reconstruct", "zipsplat_ns.cli", "zipsplat_ns.video", "zipsplat_ns.ply",
    ]  # fmt: skip
    code = (
        "import importlib, sys\n"
        "for m in sys.argv[1:]: importlib.import_module(m)\n"
        "print(sorted({m.split('.')[0] for m in sys.modules if m.startswith('nerfstudio')}))\n"
        "import zipsplat_ns.pipeline\n"
        "print('nerfstudio' in sys.modules)"
    )
    out = run([sys.executable, "-c", code, *core])
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[:2] == ["[]", "True"]
