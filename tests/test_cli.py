"""`zipsplat-ns` end to end through subprocesses: synth, convert, shards check, and clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
CLI = [sys.executable, "-m", "zipsplat_ns.cli"]


def run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


def test_help_lists_every_subcommand():
    out = run("--help")
    assert out.returncode == 0
    for name in ("shards", "synth", "convert", "download", "depth"):
        assert name in out.stdout


def test_synth_then_check(tmp_path):
    out = run("synth", "--output", str(tmp_path / "synth"), "--num-scenes", "3", "--views", "6", "--size", "32",
              "--test-fraction", "0.34")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "wrote 2 train and 1 test scene(s)" in out.stderr
    check = run("shards", "check", str(tmp_path / "synth" / "train-scenes"), "--min-views", "6")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "2 good scene(s), 0 bad" in check.stdout
    again = run("synth", "--output", str(tmp_path / "synth"), "--num-scenes", "3", "--views", "6", "--size", "32")
    assert again.returncode == 2 and "--overwrite" in again.stderr


@pytest.mark.skipif(not (SHARED / "data").is_dir(), reason="../shared/data is absent (real nerfstudio scenes)")
def test_convert_a_real_nerfstudio_scene_then_check(tmp_path):
    src = SHARED / "data" / "scenes" / "strecha-entry-p10"
    out = run("convert", "nerfstudio", str(src), str(tmp_path / "entry"), "--max-size", "64", "--no-progress")
    assert out.returncode == 0, out.stderr
    check = run("shards", "check", str(tmp_path / "entry"))
    assert check.returncode == 0 and "1 good scene(s), 0 bad" in check.stdout


def test_bad_inputs_give_one_clear_line(tmp_path):
    out = run("convert", "nerfstudio", str(tmp_path / "missing"), str(tmp_path / "out"), "--no-progress")
    assert out.returncode == 2 and "missing" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").glob("*.tar"))


def test_reconstruct_prints_no_third_party_deprecation_noise(tmp_path):
    """`zipsplat-ns reconstruct` imports nerfstudio (it writes a nerfstudio run), whose `torch.jit.script` decorators
    make recent torch warn at import: the CLI's output is only ours."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    (tmp_path / "photos").mkdir()
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(tmp_path / "photos" / f"{i}.png")
    out = run("reconstruct", str(tmp_path / "photos"), "--weights", "random-tiny", "--device", "cpu",
              "--output-dir", str(tmp_path / "rec"))  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "rec" / "scene.ply").is_file()
    assert "Warning" not in out.stderr, out.stderr[-3000:]
