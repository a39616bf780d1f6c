"""Tests for zipsplat_ns.models.weights and scripts/convert_da3_weights.py (no network)."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from zipsplat_ns.models import weights as W

REPO_ROOT = Path(__file__).resolve().parents[1]


class TinyNet(nn.Module):
    """A small module with parameters and a buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.norm = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 2)


class CustomConf:
    """Not on torch's weights_only allow-list."""

    def __init__(self) -> None:
        self.lr = 1e-4


@pytest.fixture(autouse=True)
def _no_network_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Never touch the real hub or the user's caches."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_hf_cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv("HF_TOKEN", raising=False)


@pytest.fixture
def state_dict() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    net = TinyNet()
    net.norm.running_mean.normal_()
    return {k: v.clone() for k, v in net.state_dict().items()}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert a[key].shape == b[key].shape, key
        assert torch.equal(a[key], b[key]), key


# ------------------------------------------------------------------------------------------
# local files
# ------------------------------------------------------------------------------------------


def test_load_model_wrapped_tar(tmp_path: Path, state_dict: dict[str, torch.Tensor]) -> None:
    path = tmp_path / "ckpt.tar"
    torch.save({"model": state_dict, "epoch": 3, "eval": {"psnr": 21.5}}, path)
    assert_same(W.load_state_dict_from_source(path), state_dict)
    assert_same(W.load_state_dict_from_source(str(path)), state_dict)


def test_load_state_dict_key_and_module_prefix(tmp_path: Path, state_dict: dict[str, torch.Tensor]) -> None:
    raw = tmp_path / "raw.pth"
    torch.save({f"module.{k}": v for k, v in state_dict.items()}, raw)
    assert_same(W.load_state_dict_from_source(raw), state_dict)

    wrapped = tmp_path / "wrapped.ckpt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state_dict.items()}}, wrapped)
    assert_same(W.load_state_dict_from_source(wrapped), state_dict)


def test_load_safetensors(tmp_path: Path, state_dict: dict[str, torch.Tensor]) -> None:
    path = tmp_path / "w.safetensors"
    save_file(state_dict, str(path))
    loaded = W.load_state_dict_from_source(path)
    assert set(loaded) == set(state_dict)
    assert_same({k: loaded[k] for k in state_dict}, state_dict)


def test_numpy_metrics_load_without_pickle(tmp_path: Path, state_dict: dict[str, torch.Tensor]) -> None:
    np = pytest.importorskip("numpy")
    path = tmp_path / "np.tar"
    torch.save({"model": state_dict, "eval": {"psnr": np.float64(25.0), "n": np.int64(3)}}, path)
    assert_same(W.load_state_dict_from_source(path), state_dict)


def test_unsafe_pickle_refused_then_allowed(tmp_path: Path, state_dict: dict[str, torch.Tensor]) -> None:
    path = tmp_path / "full.tar"
    torch.save({"model": state_dict, "conf": CustomConf()}, path)
    with pytest.raises(W.UnsafeCheckpointError) as info:
        W.load_state_dict_from_source(path)
    msg = str(info.value)
    assert "allow_pickle=True" in msg and "--allow-pickle" in msg
    assert str(path) in msg
    assert "CustomConf" in msg  # names what needs unpickling
    assert_same(W.load_state_dict_from_source(path, allow_pickle=True), state_dict)


def test_missing_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "weights.tar"
    with pytest.raises(FileNotFoundError, match="nope"):
        W.resolve_weights(missing)
    with pytest.raises(FileNotFoundError, match="weights.tar"):
        W.load_state_dict_from_source(str(missing))
    with pytest.raises(FileNotFoundError):
        W.resolve_weights("does_not_exist.safetensors")


def test_unknown_name() -> None:
    with pytest.raises(ValueError, match="zipsplatt") as info:
        W.resolve_weights("zipsplatt")
    assert "'zipsplat'" in str(info.value) and "URL" in str(info.value)
    with pytest.raises(ValueError, match="ftp"):
        W.resolve_weights("ftp://example.com/w.tar")
    with pytest.raises(ValueError):
        W.resolve_weights("")


def test_empty_file(tmp_path: Path) -> None:
    for name in ("empty.tar", "empty.safetensors"):
        path = tmp_path / name
        path.write_bytes(b"")
        with pytest.raises(W.CheckpointFormatError, match=name):
            W.load_state_dict_from_source(path)


def test_garbage_bytes(tmp_path: Path) -> None:
    for name in ("garbage.tar", "garbage.pth", "garbage.safetensors", "garbage.bin"):
        path = tmp_path / name
        path.write_bytes(b"this is not a checkpoint at all \x00\x01\x02" * 10)
        with pytest.raises(W.CheckpointFormatError, match=name):
            W.load_state_dict_from_source(path)


def test_bad_contents(tmp_path: Path) -> None:
    cases = {
        "emptydict.pt": {},
        "emptymodel.pt": {"model": {}},
        "nontensor.pt": {"a": torch.zeros(1), "b": 3},
        "list.pt": [torch.zeros(1)],
    }
    for name, obj in cases.items():
        path = tmp_path / name
        torch.save(obj, path)
        with pytest.raises(W.CheckpointFormatError, match=name):
            W.load_state_dict_from_source(path)
    with pytest.raises(W.CheckpointFormatError, match="'b'"):
        W.load_state_dict_from_source(tmp_path / "nontensor.pt")


# ------------------------------------------------------------------------------------------
# fake Hugging Face hub cache
# ------------------------------------------------------------------------------------------


def make_fake_hub_cache(cache: Path, repo_id: str, filename: str, payload: Path) -> Path:
    """Build the on-disk layout huggingface_hub uses for a cached file; return the snapshot path."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = cache / ("models--" + repo_id.replace("/", "--"))
    blob = repo_dir / "blobs" / ("a" * 64)
    blob.parent.mkdir(parents=True)
    blob.write_bytes(payload.read_bytes())
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    snap = repo_dir / "snapshots" / commit / filename
    snap.parent.mkdir(parents=True)
    try:
        snap.symlink_to(os.path.relpath(blob, snap.parent))
    except OSError:  # pragma: no cover - no symlinks (Windows)
        snap.write_bytes(blob.read_bytes())
    return snap


def test_released_name_from_hub_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, state_dict: dict[str, torch.Tensor]
) -> None:
    repo_id, filename = W.RELEASED_WEIGHTS["zipsplat"]
    assert (repo_id, filename) == ("veichta/zipsplat", "zipsplat-da3g-252p.tar")
    src = tmp_path / "src.tar"
    torch.save({"model": state_dict}, src)
    cache = tmp_path / "hf_cache"
    snap = make_fake_hub_cache(cache, repo_id, filename, src)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))  # read at call time, not at import
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    path = W.resolve_weights("zipsplat")
    assert path.name == filename
    assert path.resolve() == snap.resolve()
    assert_same(W.load_state_dict_from_source("zipsplat"), state_dict)


def test_released_name_reuses_the_reference_packages_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, state_dict: dict[str, torch.Tensor]
) -> None:
    """Weights the reference package already fetched ($TORCH_HOME/hub/zipsplat/<file>) are used as they are, with
    no Hugging Face lookup (5.8 GB not downloaded twice)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a Hugging Face lookup would fail
    ref = tmp_path / "torch_home" / "hub" / "zipsplat" / "zipsplat-da3g-252p.tar"
    assert W.reference_cache_path("zipsplat") == ref
    ref.parent.mkdir(parents=True)
    torch.save({"model": state_dict}, ref)
    assert W.resolve_weights("zipsplat") == ref
    assert_same(W.load_state_dict_from_source("zipsplat"), state_dict)


def test_released_name_offline_cache_miss(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(W.WeightsDownloadError) as info:
        W.resolve_weights("zipsplat")
    msg = str(info.value)
    for needle in ("veichta/zipsplat", "zipsplat-da3g-252p.tar", "HF_HUB_OFFLINE", "HF_TOKEN", "local file path"):
        assert needle in msg


# ------------------------------------------------------------------------------------------
# URL download from a local HTTP server
# ------------------------------------------------------------------------------------------


@dataclass
class FakeServer:
    base: str
    files: dict[str, bytes]
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    honour_range: bool = True
    truncate_to: int | None = None  # send Content-Length of the full file but only this many bytes


@pytest.fixture
def server() -> Iterator[FakeServer]:
    state = FakeServer(base="", files={})

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            rng = self.headers.get("Range")
            state.requests.append((self.path, rng))
            data = state.files.get(self.path)
            if data is None:
                self.send_error(404, "Not Found")
                return
            start = 0
            if rng and state.honour_range and rng.startswith("bytes=") and rng.endswith("-"):
                start = int(rng[len("bytes="):-1])
                if start >= len(data):
                    self.send_error(416, "Range Not Satisfiable")
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if state.truncate_to is not None:
                body = body[: max(0, state.truncate_to - start)]
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _ckpt_bytes(tmp_path: Path, state_dict: dict[str, torch.Tensor]) -> bytes:
    path = tmp_path / "served.tar"
    torch.save({"model": state_dict}, path)
    return path.read_bytes()


def test_url_download_and_reuse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: FakeServer, state_dict: dict[str, torch.Tensor]
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    server.files["/w/ckpt.tar"] = _ckpt_bytes(tmp_path, state_dict)
    url = server.base + "/w/ckpt.tar"

    path = W.resolve_weights(url)
    assert path == W.url_cache_path(url) and path.name == "ckpt.tar"
    assert path.is_relative_to(tmp_path / "th" / "hub" / "zipsplat" / "urls")
    assert path.read_bytes() == server.files["/w/ckpt.tar"]
    assert not path.with_name("ckpt.tar.part").exists()
    assert len(server.requests) == 1

    assert_same(W.load_state_dict_from_source(url), state_dict)
    assert W.resolve_weights(url) == path
    assert len(server.requests) == 1  # reused, no second request


def test_url_404(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: FakeServer) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    url = server.base + "/missing.tar"
    with pytest.raises(W.WeightsDownloadError, match="404") as info:
        W.resolve_weights(url)
    assert url in str(info.value)
    final = W.url_cache_path(url)
    assert final.is_relative_to(tmp_path / "th")
    assert not final.exists() and not final.with_name("missing.tar.part").exists()


def test_url_truncated_then_resumed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: FakeServer, state_dict: dict[str, torch.Tensor]
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    data = _ckpt_bytes(tmp_path, state_dict)
    server.files["/ckpt.pth"] = data
    server.truncate_to = len(data) // 2
    url = server.base + "/ckpt.pth"
    final = W.url_cache_path(url)

    with pytest.raises(W.WeightsDownloadError, match="resume"):
        W.resolve_weights(url)
    assert not final.exists()
    part = final.with_name("ckpt.pth.part")
    assert 0 < part.stat().st_size < len(data)

    server.truncate_to = None
    assert W.resolve_weights(url) == final
    assert server.requests[-1][1] == f"bytes={len(data) // 2}-"
    assert final.read_bytes() == data
    assert not part.exists()


def test_url_resume_server_ignores_range(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: FakeServer, state_dict: dict[str, torch.Tensor]
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    data = _ckpt_bytes(tmp_path, state_dict)
    server.files["/ckpt.tar"] = data
    server.honour_range = False
    folder = W.url_cache_path(server.base + "/ckpt.tar").parent
    folder.mkdir(parents=True)
    (folder / "ckpt.tar.part").write_bytes(b"stale bytes")

    path = W.resolve_weights(server.base + "/ckpt.tar")
    assert server.requests[-1][1] == "bytes=11-"
    assert path.read_bytes() == data


def test_urls_with_the_same_file_name_are_cached_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: FakeServer, state_dict: dict[str, torch.Tensor]
) -> None:
    """``.../a/model.pth`` and ``.../b/model.pth`` are different weights: each is fetched and cached on its own, and a
    partial download of one is never resumed from the other."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    other = {k: v + 1 for k, v in state_dict.items()}
    server.files["/a/model.pth"] = _ckpt_bytes(tmp_path, state_dict)
    server.files["/b/model.pth"] = _ckpt_bytes(tmp_path, other)
    ua, ub = server.base + "/a/model.pth", server.base + "/b/model.pth"
    W.url_cache_path(ua).parent.mkdir(parents=True)
    W.url_cache_path(ua).with_name("model.pth.part").write_bytes(server.files["/a/model.pth"][:100])  # A, cut short
    assert_same(W.load_state_dict_from_source(ub), other)
    assert server.requests == [("/b/model.pth", None)]  # a fresh transfer, not a resume of A's bytes
    assert_same(W.load_state_dict_from_source(ua), state_dict)
    assert server.requests[-1] == ("/a/model.pth", "bytes=100-")
    assert W.url_cache_path(ua) != W.url_cache_path(ub)


# ------------------------------------------------------------------------------------------
# DA3 conversion
# ------------------------------------------------------------------------------------------


def synthetic_da3(dim: int) -> dict[str, torch.Tensor]:
    """A tiny DA3-style state dict (real key layout, tiny shapes except the embed dim)."""
    return {
        "model.backbone.pretrained.cls_token": torch.randn(1, 1, dim),
        "model.backbone.pretrained.camera_token": torch.randn(1, 2, dim),
        "model.backbone.pretrained.pos_embed": torch.randn(1, 5, dim),
        "model.backbone.pretrained.patch_embed.proj.weight": torch.randn(dim, 3, 2, 2),
        "model.backbone.pretrained.patch_embed.proj.bias": torch.randn(dim),
        "model.backbone.pretrained.blocks.0.norm1.weight": torch.randn(dim),
        "model.backbone.pretrained.blocks.0.attn.qkv.weight": torch.randn(3 * dim, dim),
        "model.backbone.pretrained.norm.weight": torch.randn(dim),
        "model.cam_enc.pose_branch.fc1.weight": torch.randn(dim // 2, 9),
        "model.cam_enc.trunk.0.attn.qkv.weight": torch.randn(3 * dim, dim),
        "model.head.scratch.output_conv.weight": torch.randn(1, 4, 1, 1),
        "model.head.projects.0.bias": torch.randn(4),
        "model.cam_dec.fc.weight": torch.randn(9, dim),
    }


def test_convert_da3_state_dict() -> None:
    sd = synthetic_da3(384)
    out = W.convert_da3_state_dict(sd, "small")
    expected = {
        "backbone.backbone.cls_token": "model.backbone.pretrained.cls_token",
        "backbone.backbone.camera_token": "model.backbone.pretrained.camera_token",
        "backbone.backbone.pos_embed": "model.backbone.pretrained.pos_embed",
        "backbone.backbone.patch_embed.proj.weight": "model.backbone.pretrained.patch_embed.proj.weight",
        "backbone.backbone.patch_embed.proj.bias": "model.backbone.pretrained.patch_embed.proj.bias",
        "backbone.backbone.blocks.0.norm1.weight": "model.backbone.pretrained.blocks.0.norm1.weight",
        "backbone.backbone.blocks.0.attn.qkv.weight": "model.backbone.pretrained.blocks.0.attn.qkv.weight",
        "backbone.backbone.norm.weight": "model.backbone.pretrained.norm.weight",
        "backbone.cam_enc.pose_branch.fc1.weight": "model.cam_enc.pose_branch.fc1.weight",
        "backbone.cam_enc.trunk.0.attn.qkv.weight": "model.cam_enc.trunk.0.attn.qkv.weight",
    }
    assert set(out) == set(expected)
    for new, old in expected.items():
        assert out[new] is sd[old]

    report = W.convert_da3_state_dict_with_report(sd, "vits")
    assert sorted(report.dropped) == sorted(
        ["model.head.scratch.output_conv.weight", "model.head.projects.0.bias", "model.cam_dec.fc.weight"]
    )
    assert report.embed_dim == 384 and len(report.renamed) == len(expected)


def test_convert_da3_variant_mismatch_and_bad_input() -> None:
    sd = synthetic_da3(768)
    with pytest.raises(ValueError, match=r"768.*'base'"):
        W.convert_da3_state_dict(sd, "giant")
    assert len(W.convert_da3_state_dict(sd, "base")) == 10
    with pytest.raises(ValueError, match="variant"):
        W.convert_da3_state_dict(sd, "huge")
    with pytest.raises(ValueError, match="Depth-Anything-3"):
        W.convert_da3_state_dict({"model.head.x": torch.zeros(1)}, "base")


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), COLUMNS="120")
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "convert_da3_weights.py"), *args],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )


def test_convert_cli_end_to_end(tmp_path: Path) -> None:
    sd = synthetic_da3(384)
    src = tmp_path / "model.safetensors"
    save_file(sd, str(src))
    out_st = tmp_path / "out" / "da3-small.safetensors"
    out_pth = tmp_path / "da3-small.pth"

    proc = _run_cli("--input", str(src), "--variant", "small", "--output", str(out_st))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "10" in proc.stdout and "3" in proc.stdout and "total" in proc.stdout
    converted = load_file(str(out_st))
    assert set(converted) == set(W.convert_da3_state_dict(sd, "small"))
    assert torch.equal(converted["backbone.backbone.blocks.0.attn.qkv.weight"],
                       sd["model.backbone.pretrained.blocks.0.attn.qkv.weight"])
    assert [p.name for p in out_st.parent.iterdir()] == ["da3-small.safetensors"]  # no temp leftovers

    proc = _run_cli("--input", str(src), "--variant", "small", "--output", str(out_pth))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_same(W.load_state_dict_from_source(out_pth), load_file(str(out_st)))

    proc = _run_cli("--input", str(src), "--variant", "giant", "--output", str(tmp_path / "g.safetensors"))
    assert proc.returncode != 0
    assert "384" in proc.stdout + proc.stderr
    assert not (tmp_path / "g.safetensors").exists()

    proc = _run_cli("--input", str(src), "--variant", "small", "--output", str(out_st))
    assert proc.returncode != 0 and "--overwrite" in proc.stderr


# ------------------------------------------------------------------------------------------
# the network through the loader: reference-layout checkpoints reproduce the outputs
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_reference() -> tuple:
    """A `small` ZipSplat with random weights, its state dict and its output on fixed inputs."""
    from zipsplat_ns.models.network import ZipSplat

    torch.manual_seed(3)
    model = ZipSplat("small").eval()
    images = torch.rand(1, 2, 3, 252, 252, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        out = model(images)
    return {k: v.clone() for k, v in model.state_dict().items()}, images, out


def _assert_same_output(model, images, ref) -> None:
    with torch.no_grad():
        out = model.eval()(images)
    for name in ("means", "scales", "quats", "opacities", "sh"):
        assert torch.equal(getattr(out, name), getattr(ref, name)), name


def test_reference_layout_checkpoints_load_strictly_and_reproduce(tmp_path: Path, small_reference: tuple) -> None:
    from zipsplat_ns.models.network import ZipSplat

    sd, images, ref = small_reference
    tar = tmp_path / "zipsplat-small.tar"  # splatfactory's checkpoint shape: {"model": sd, ...}
    torch.save({"model": sd, "epoch": 3, "eval": {"psnr": 20.0}}, tar)
    ddp = tmp_path / "ddp.pth"  # a DDP-trained raw state dict
    torch.save({f"module.{k}": v for k, v in sd.items()}, ddp)
    st = tmp_path / "zipsplat-small.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(st))
    for path in (tar, ddp, st):
        _assert_same_output(ZipSplat("small", weights=path), images, ref)
    # A checkpoint of another variant fails loudly (strict) with a short summary and the layout the file has.
    with pytest.raises(ValueError, match=r"zipsplat-small.tar' do not fit this network: the network is 'tiny' with "
                                         r"32 Gaussians per token; \d+ missing keys .*shape mismatches.*looks like "
                                         r"'small' with 32 Gaussians per token: pass --variant small"):
        ZipSplat("tiny", weights=tar)
    # the same variant with another head size (ns-train zipsplat-tiny uses 8 Gaussians per token)
    torch.manual_seed(0)
    eight = tmp_path / "tiny8.safetensors"
    save_file({k: v.contiguous() for k, v in ZipSplat("tiny", gaussians_per_token=8).state_dict().items()}, str(eight))
    with pytest.raises(ValueError, match=r"2 shape mismatches \(e.g. gaussian_head.gaussian_head.1.weight: file "
                                         r"\(184, 320\), network \(736, 320\).*--variant tiny --gaussians-per-token 8"):
        ZipSplat("tiny", weights=eight)
    ZipSplat("tiny", gaussians_per_token=8, weights=eight)  # as the message says


def test_released_name_through_the_network_with_a_fake_hub_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_reference: tuple
) -> None:
    """`weights="zipsplat"` resolves veichta/zipsplat/zipsplat-da3g-252p.tar from the HF cache (no network).

    The cached file holds `small` weights here (the real one is 5.8 GB of giant weights); what is tested is the
    resolution and strict loading path, which is the same for every variant.
    """
    from zipsplat_ns.models.network import ZipSplat

    sd, images, ref = small_reference
    src = tmp_path / "src.tar"
    torch.save({"model": sd}, src)
    cache = tmp_path / "hf_cache"
    make_fake_hub_cache(cache, *W.RELEASED_WEIGHTS["zipsplat"], src)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    _assert_same_output(ZipSplat("small", weights="zipsplat"), images, ref)


def test_converted_da3_weights_initialise_the_backbone(tmp_path: Path) -> None:
    """DA3 checkpoint -> scripts/convert_da3_weights.py -> ZipSplat(backbone_weights=...) loads the backbone only."""
    from zipsplat_ns.models.network import ZipSplat

    torch.manual_seed(7)
    donor = ZipSplat("small")
    # A DA3-style file: 'model.' prefix, '.pretrained' inside the ViT keys, plus a head that must be dropped.
    da3 = {f"model.backbone.pretrained.{k[len('backbone.backbone.'):]}": v for k, v in donor.state_dict().items()
           if k.startswith("backbone.backbone.")}  # fmt: skip
    da3.update({f"model.{k[len('backbone.'):]}": v for k, v in donor.state_dict().items() if k.startswith("backbone.cam_enc.")})
    da3["model.head.proj.weight"] = torch.zeros(3, 3)
    src = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in da3.items()}, str(src))
    out = tmp_path / "da3-small.safetensors"
    res = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "convert_da3_weights.py"), "--input", str(src),
                          "--variant", "small", "--output", str(out)], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert res.returncode == 0, res.stderr
    torch.manual_seed(8)
    model = ZipSplat("small", backbone_weights=str(out))
    for k, v in donor.state_dict().items():
        if k.startswith("backbone."):
            assert torch.equal(model.state_dict()[k], v), k
    assert not torch.equal(model.state_dict()["downscale.0.weight"], donor.state_dict()["downscale.0.weight"])
    with pytest.raises(ValueError, match="expected converted DA3 weights"):
        bad = tmp_path / "full.safetensors"
        save_file({k: v.contiguous() for k, v in donor.state_dict().items()}, str(bad))
        ZipSplat("small", backbone_weights=str(bad))


def test_allow_pickle_reaches_every_loader(tmp_path: Path) -> None:
    """A checkpoint that needs full unpickling (as the released file may): refused by default everywhere, with the
    flags to opt in named; loaded by the eval loader and the nerfstudio model config (ns-train, ns-viewer and
    reconstruct runs) when they opt in."""
    pytest.importorskip("nerfstudio")
    from nerfstudio.data.scene_box import SceneBox

    from zipsplat_ns.eval.runner import load_network
    from zipsplat_ns.models.network import ZipSplat
    from zipsplat_ns.models.zipsplat_model import ZipSplatModelConfig

    torch.manual_seed(1)
    sd = ZipSplat("tiny").state_dict()
    path = tmp_path / "full.tar"
    torch.save({"model": sd, "conf": CustomConf()}, path)
    with pytest.raises(W.UnsafeCheckpointError, match="--pipeline.model.allow-pickle True"):
        load_network(str(path), variant="tiny")
    net, _ = load_network(str(path), variant="tiny", allow_pickle=True)
    assert_same({k: v for k, v in net.state_dict().items() if k in sd}, sd)
    box = SceneBox(aabb=torch.tensor([[-1.0] * 3, [1.0] * 3]))
    kw = dict(variant="tiny", weights=str(path), renderer="torch")
    with pytest.raises(W.UnsafeCheckpointError):
        ZipSplatModelConfig(**kw).setup(scene_box=box, num_train_data=1, metadata={}, device="cpu")
    model = ZipSplatModelConfig(**kw, allow_pickle=True).setup(scene_box=box, num_train_data=1, metadata={}, device="cpu")
    assert torch.equal(model.net.gaussian_head.gaussian_head[1].weight, sd["gaussian_head.gaussian_head.1.weight"])
