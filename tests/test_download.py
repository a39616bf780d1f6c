"""Tests for zipsplat_ns.utils.download and zipsplat_ns.data.download (no internet).

Archives are served by a local http.server on 127.0.0.1 in a thread; DL3DV goes through a fake Hugging Face hub
cache (HF_HUB_OFFLINE=1) or a monkeypatched ``huggingface_hub.hf_hub_download``.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

import pytest

from zipsplat_ns.data import download as DD
from zipsplat_ns.utils import download as U

HASHES = [("1K", "a" * 64), ("1K", "b" * 64), ("2K", "c" * 64), ("2K", "d" * 64), ("3K", "e" * 64)]


# ------------------------------------------------------------------------------------------------------ server
@dataclass
class FakeServer:
    base: str
    files: Dict[str, bytes]
    requests: List[Tuple[str, Optional[str]]] = field(default_factory=list)
    honour_range: bool = True
    drop_first: Set[str] = field(default_factory=set)  # these paths stop half-way on their first request
    length_override: Dict[str, int] = field(default_factory=dict)  # a wrong Content-Length
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, path: str) -> int:
        return sum(1 for p, _ in self.requests if p == path)


@pytest.fixture
def server() -> Iterator[FakeServer]:
    state = FakeServer(base="", files={})

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def do_GET(self) -> None:  # noqa: N802
            rng = self.headers.get("Range")
            with state.lock:
                state.requests.append((self.path, rng))
                drop = self.path in state.drop_first
                state.drop_first.discard(self.path)
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
            self.send_header("Content-Length", str(state.length_override.get(self.path, len(body))))
            self.end_headers()
            if drop:
                body = body[: len(body) // 2]
            try:
                self.wfile.write(body)
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):  # pragma: no cover
                pass

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


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Never touch the real hub, the user's caches or token."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_hf_cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)


def payload(n: int = 300_000, seed: int = 0) -> bytes:
    return bytes((i * 131 + seed * 7 + (i >> 9)) % 251 for i in range(n))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------------------- utils.download_url
def test_full_download_verified_and_reused(tmp_path: Path, server: FakeServer) -> None:
    data = payload()
    server.files["/d/file.bin"] = data
    url = server.base + "/d/file.bin"
    path = U.download_url(url, tmp_path / "out", sha256=sha(data), expected_size=len(data), progress=False)
    assert path == tmp_path / "out" / "file.bin" and path.read_bytes() == data
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["file.bin"]  # no .part, no .lock left
    assert U.download_url(url, tmp_path / "out", sha256=sha(data), progress=False) == path
    assert server.count("/d/file.bin") == 1  # reused, no second request


def test_interrupted_download_resumes_in_one_call(tmp_path: Path, server: FakeServer) -> None:
    data = payload()
    server.files["/big.zip"] = data
    server.drop_first.add("/big.zip")
    path = U.download_url(server.base + "/big.zip", tmp_path, retries=2, retry_wait_s=0.0, sha256=sha(data),
                          progress=False)
    assert path.read_bytes() == data
    assert server.requests[0] == ("/big.zip", None)
    assert server.requests[1] == ("/big.zip", f"bytes={len(data) // 2}-")


def test_interrupted_download_resumes_on_rerun(tmp_path: Path, server: FakeServer) -> None:
    data = payload()
    server.files["/big.zip"] = data
    server.drop_first.add("/big.zip")
    with pytest.raises(U.DownloadError, match="resume"):
        U.download_url(server.base + "/big.zip", tmp_path, progress=False)
    assert not (tmp_path / "big.zip").exists()
    assert (tmp_path / "big.zip.part").stat().st_size == len(data) // 2
    path = U.download_url(server.base + "/big.zip", tmp_path, sha256=sha(data), progress=False)
    assert path.read_bytes() == data and server.requests[-1][1] == f"bytes={len(data) // 2}-"
    assert not (tmp_path / "big.zip.part").exists()


def test_resume_when_server_ignores_range(tmp_path: Path, server: FakeServer) -> None:
    data = payload()
    server.files["/f.bin"] = data
    server.honour_range = False
    (tmp_path / "f.bin.part").write_bytes(b"stale")
    path = U.download_url(server.base + "/f.bin", tmp_path, sha256=sha(data), progress=False)
    assert server.requests[-1][1] == "bytes=5-" and path.read_bytes() == data


def test_size_mismatch_errors_and_leaves_no_file(tmp_path: Path, server: FakeServer) -> None:
    data = payload(50_000)
    server.files["/f.bin"] = data
    with pytest.raises(U.IntegrityError, match="Size mismatch") as info:
        U.download_url(server.base + "/f.bin", tmp_path, expected_size=len(data) + 1, progress=False)
    assert str(len(data) + 1) in str(info.value).replace(",", "")
    assert not (tmp_path / "f.bin").exists()
    # the server's Content-Length promises more than it sends: incomplete, kept for resuming, no final file
    server.length_override["/f.bin"] = len(data) + 1000
    with pytest.raises(U.DownloadError):
        U.download_url(server.base + "/f.bin", tmp_path, progress=False)
    assert not (tmp_path / "f.bin").exists()


def test_checksum_mismatch_errors_and_removes_data(tmp_path: Path, server: FakeServer) -> None:
    data = payload(50_000)
    server.files["/f.bin"] = data
    with pytest.raises(U.IntegrityError, match="sha256"):
        U.download_url(server.base + "/f.bin", tmp_path, sha256="0" * 64, progress=False)
    assert not (tmp_path / "f.bin").exists() and not (tmp_path / "f.bin.part").exists()
    with pytest.raises(ValueError, match="sha256"):
        U.download_url(server.base + "/f.bin", tmp_path, sha256="xyz", progress=False)


def test_existing_file_checked(tmp_path: Path, server: FakeServer) -> None:
    (tmp_path / "f.bin").write_bytes(b"not it")
    with pytest.raises(U.IntegrityError, match="Delete it"):
        U.download_url(server.base + "/f.bin", tmp_path, sha256="1" * 64, progress=False)
    assert not server.requests


def test_http_404(tmp_path: Path, server: FakeServer) -> None:
    url = server.base + "/missing.zip"
    with pytest.raises(U.DownloadError, match="404") as info:
        U.download_url(url, tmp_path, retries=3, progress=False)
    assert url in str(info.value)
    assert not (tmp_path / "missing.zip").exists() and not (tmp_path / "missing.zip.part").exists()
    assert server.count("/missing.zip") == 1  # HTTP errors are not retried


def test_weights_download_errors_are_download_errors() -> None:
    """Callers catch one error type for data and weights downloads (the weights' URL path is tested in
    test_weights.py)."""
    from zipsplat_ns.models import weights as W

    assert issubclass(W.WeightsDownloadError, U.DownloadError) and issubclass(W.WeightsDownloadError, RuntimeError)


# ------------------------------------------------------------------------------------------- archive datasets
def make_zip(top: str, files: Dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(f"{top}/{name}", data)
    return buf.getvalue()


def test_re10k_download_and_extract(tmp_path: Path, server: FakeServer) -> None:
    archive = make_zip("re10k", {"train/000000.torch": b"chunk0", "test/000000.torch": b"chunk1"})
    server.files["/mirror/re10k.zip"] = archive
    result = DD.download_dataset("re10k", tmp_path / "raw", url=server.base + "/mirror/re10k.zip",
                                 sha256=sha(archive), extract=True, progress=False)
    assert result.files == [tmp_path / "raw" / "re10k.zip"] and result.files[0].read_bytes() == archive
    assert (tmp_path / "raw" / "re10k" / "train" / "000000.torch").read_bytes() == b"chunk0"
    assert result.extracted == tmp_path / "raw" / "re10k"
    assert not list((tmp_path / "raw").glob(".extract-*"))


def test_mipnerf360_base_url_and_resume(tmp_path: Path, server: FakeServer) -> None:
    archive = make_zip("360_v2", {"bonsai/poses_bounds.npy": payload(200_000)})
    server.files["/m/360_v2.zip"] = archive
    server.drop_first.add("/m/360_v2.zip")
    cfg = DD.MipNerf360DownloadConfig(out_dir=tmp_path, base_url=server.base + "/m/", progress=False, retries=0)
    with pytest.raises(DD.DatasetDownloadError, match="resume"):
        DD.run_download(cfg)
    assert not (tmp_path / "360_v2.zip").exists()
    assert cfg.main() == 0  # resumes
    assert (tmp_path / "360_v2.zip").read_bytes() == archive
    assert server.requests[-1][1] is not None


def test_archive_checksum_and_size_errors(tmp_path: Path, server: FakeServer) -> None:
    archive = make_zip("re10k", {"a": b"1"})
    server.files["/re10k.zip"] = archive
    with pytest.raises(DD.DatasetDownloadError, match="sha256"):
        DD.download_dataset("re10k", tmp_path, url=server.base + "/re10k.zip", sha256="ab" * 32, progress=False)
    with pytest.raises(DD.DatasetDownloadError, match="Size mismatch"):
        DD.download_dataset("re10k", tmp_path, url=server.base + "/re10k.zip", expected_size=3, progress=False)
    assert not (tmp_path / "re10k.zip").exists()
    with pytest.raises(ValueError, match="Unknown dataset"):
        DD.download_dataset("imagenet", tmp_path)


def test_archive_sources_are_the_reference_ones() -> None:
    assert DD.ARCHIVES["re10k"].url == "http://schadenfreude.csail.mit.edu:8000/re10k.zip"
    assert DD.ARCHIVES["mipnerf360"].url == "http://storage.googleapis.com/gresearch/refraw360/360_v2.zip"
    assert DD.DL3DV_REPOS["960P"] == "DL3DV/DL3DV-ALL-960P"


# ---------------------------------------------------------------------------------------------------- DL3DV
def metadata_csv(rows=HASHES) -> bytes:
    lines = ["hash,scene,batch"] + [f"{h},scene{i},{b}" for i, (b, h) in enumerate(rows)]
    return ("\n".join(lines) + "\n").encode()


def test_dl3dv_http_mirror_thread_pool(tmp_path: Path, server: FakeServer) -> None:
    server.files["/meta/DL3DV-valid.csv"] = metadata_csv()
    for i, (b, h) in enumerate(HASHES):
        server.files[f"/dl3dv/{b}/{h}.zip"] = payload(20_000, seed=i)
    server.drop_first.add(f"/dl3dv/1K/{'a' * 64}.zip")
    del server.files[f"/dl3dv/2K/{'d' * 64}.zip"]  # one scene missing on the mirror
    cfg = DD.Dl3dvDownloadConfig(out_dir=tmp_path / "dl3dv", subset="1K,2K", num_workers=4,
                                 base_url=server.base + "/dl3dv", metadata_url=server.base + "/meta/DL3DV-valid.csv",
                                 retries=1, progress=False)
    with pytest.raises(DD.DatasetDownloadError) as info:
        DD.run_download(cfg)
    err = info.value
    assert f"2K/{'d' * 64}.zip" in str(err) and "run the same command again" in str(err)
    assert [p.relative_to(tmp_path / "dl3dv").as_posix() for p in err.result.files] == [
        f"1K/{'a' * 64}.zip", f"1K/{'b' * 64}.zip", f"2K/{'c' * 64}.zip"]
    assert (tmp_path / "dl3dv" / "1K" / f"{'a' * 64}.zip").read_bytes() == payload(20_000, seed=0)
    assert (tmp_path / "dl3dv" / ".cache" / "DL3DV-valid.csv").is_file()
    assert not list((tmp_path / "dl3dv").rglob("*.part"))
    assert server.count(f"/dl3dv/3K/{'e' * 64}.zip") == 0  # not in --subset

    server.files[f"/dl3dv/2K/{'d' * 64}.zip"] = payload(20_000, seed=3)
    n_before = len(server.requests)
    result = DD.run_download(cfg)
    assert len(result.files) == 4
    assert [p for p, _ in server.requests[n_before:]] == [f"/dl3dv/2K/{'d' * 64}.zip"]  # only the missing one


def test_dl3dv_hashes_file_and_dry_run(tmp_path: Path, server: FakeServer) -> None:
    meta = tmp_path / "meta.csv"
    meta.write_bytes(metadata_csv())
    hashes = tmp_path / "split.json"
    hashes.write_text(json.dumps({"test": ["e" * 64, "b" * 64]}))
    cfg = DD.Dl3dvDownloadConfig(out_dir=tmp_path / "o", hashes=hashes, metadata=meta, dry_run=True,
                                 base_url=server.base)
    result = DD.run_download(cfg)
    assert result.planned == [f"3K/{'e' * 64}.zip", f"1K/{'b' * 64}.zip"] and not server.requests
    txt = tmp_path / "h.txt"
    txt.write_text("# my scenes\n" + "f" * 64 + "\n")
    cfg.hashes = txt
    with pytest.raises(DD.DatasetDownloadError, match="not in the DL3DV scene list"):
        DD.run_download(cfg)
    with pytest.raises(DD.DatasetDownloadError, match="not DL3DV batches"):
        DD.run_download(DD.Dl3dvDownloadConfig(out_dir=tmp_path / "o", subset="1K,foo", metadata=meta, dry_run=True))


def test_dl3dv_test_split_shipped() -> None:
    path = DD.DL3DV_TEST_SPLIT
    if not path.is_file():
        path = Path(__file__).resolve().parents[2] / "shared" / "data" / "indices" / "dl3dv" / "test_split.json"
    if not path.is_file():
        pytest.skip("no DL3DV test split here")
    hashes = DD.load_hashes(path)
    assert len(hashes) == 141 and all(len(h) == 64 for h in hashes)


def make_dataset_hub_cache(cache: Path, repo_id: str, files: Dict[str, bytes]) -> Path:
    """The on-disk layout huggingface_hub uses for cached dataset files; returns the snapshot folder."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = cache / ("datasets--" + repo_id.replace("/", "--"))
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    snap = repo_dir / "snapshots" / commit
    for rel, data in files.items():
        blob = repo_dir / "blobs" / sha(data)
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snap / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return snap


def test_dl3dv_fake_hub_cache_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "hf_cache"
    files = {f"{b}/{h}.zip": payload(5000, seed=i) for i, (b, h) in enumerate(HASHES[:3])}
    make_dataset_hub_cache(cache, "DL3DV/DL3DV-ALL-960P", files)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    meta = tmp_path / "meta.csv"
    meta.write_bytes(metadata_csv())
    hashes = tmp_path / "h.txt"
    hashes.write_text("a" * 64 + "\n" + "c" * 64 + "\n")
    out = tmp_path / "dl3dv"

    result = DD.download_dataset("dl3dv", out, hashes=hashes, metadata=meta, hub_cache=True, progress=False,
                                 num_workers=2)
    assert [p.relative_to(out).as_posix() for p in result.files] == [f"1K/{'a' * 64}.zip", f"2K/{'c' * 64}.zip"]
    assert result.files[1].read_bytes() == files[f"2K/{'c' * 64}.zip"]
    assert result.files[1].resolve().is_relative_to(cache.resolve())  # linked, not copied

    # without the metadata CSV (offline), the scene list comes from the cache itself
    result = DD.download_dataset("dl3dv", tmp_path / "o2", subset="1K", hub_cache=True, progress=False)
    assert len(result.files) == 2

    # a scene that the cache does not hold: a clear error naming HF_HUB_OFFLINE
    hashes.write_text("d" * 64 + "\n")
    with pytest.raises(DD.DatasetDownloadError) as info:
        DD.download_dataset("dl3dv", out, hashes=hashes, metadata=meta, hub_cache=True, progress=False)
    msg = str(info.value)
    assert f"2K/{'d' * 64}.zip" in msg and "HF_HUB_OFFLINE" in msg and "not in the local Hugging Face cache" in msg


def _http_response(status: int, url: str):
    """A response object for huggingface_hub's HTTP errors (httpx-style in new versions, requests in old ones)."""
    from huggingface_hub import errors

    resp_cls = getattr(errors, "Response", None)
    if resp_cls is not None:
        mod = __import__(resp_cls.__module__.split(".")[0])
        return resp_cls(status, request=mod.Request("GET", url), headers={"X-Error-Code": "GatedRepo"})
    import requests  # pragma: no cover - huggingface_hub < 1.0

    r = requests.Response()
    r.status_code, r.url = status, url
    r.headers["X-Error-Code"] = "GatedRepo"
    return r


def _gated_error(url: str):
    from huggingface_hub.errors import GatedRepoError

    return GatedRepoError(
        "401 Client Error. Cannot access gated repo for url " + url + ". Access to dataset DL3DV/DL3DV-ALL-960P is "
        "restricted. You must have access to it and be authenticated to access it. Please log in.",
        response=_http_response(401, url),
    )


@pytest.mark.parametrize("token", [None, "hf_fake_token"])
def test_dl3dv_gated_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, token: Optional[str]) -> None:
    import huggingface_hub

    calls: List[dict] = []

    def fake_download(**kwargs):
        calls.append(kwargs)
        raise _gated_error(f"https://huggingface.co/datasets/{kwargs['repo_id']}/resolve/main/{kwargs['filename']}")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    if token:
        monkeypatch.setenv("HF_TOKEN", token)
    meta = tmp_path / "meta.csv"
    meta.write_bytes(metadata_csv())
    with pytest.raises(DD.DatasetDownloadError) as info:
        DD.download_dataset("dl3dv", tmp_path / "o", subset="1K,2K", metadata=meta, num_workers=1, progress=False)
    msg = str(info.value)
    assert "https://huggingface.co/datasets/DL3DV/DL3DV-ALL-960P" in msg and "accept" in msg
    if token is None:
        assert "huggingface-cli login" in msg and "HF_TOKEN" in msg and "not logged in" in msg
    else:
        assert "not been granted access" in msg and "not logged in" not in msg
        assert calls[0]["token"] == token
    assert len(calls) == 1  # fatal: the remaining files are not tried
    assert calls[0]["repo_type"] == "dataset" and calls[0]["filename"] == f"1K/{'a' * 64}.zip"
    assert calls[0]["local_dir"] == str(tmp_path / "o")


def test_dl3dv_repo_and_entry_not_found_messages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub
    from huggingface_hub import errors

    def repo_missing(**kwargs):
        raise errors.RepositoryNotFoundError("404 Repository Not Found", response=_http_response(404, "https://x"))

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", repo_missing)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_TOKEN", "hf_fake")
    meta = tmp_path / "meta.csv"
    meta.write_bytes(metadata_csv())
    with pytest.raises(DD.DatasetDownloadError, match="does not exist or your token cannot see it"):
        DD.download_dataset("dl3dv", tmp_path / "o", subset="1K", metadata=meta, repo_id="DL3DV/nope",
                            progress=False)

    entry_cls = getattr(errors, "RemoteEntryNotFoundError", None) or errors.EntryNotFoundError

    def entry_missing(**kwargs):
        if kwargs["filename"].startswith("1K/a"):
            if entry_cls is errors.EntryNotFoundError:  # pragma: no cover - old huggingface_hub
                raise entry_cls("404 Entry Not Found")
            raise entry_cls("404 Entry Not Found", response=_http_response(404, "https://x"))
        path = Path(kwargs["local_dir"]) / kwargs["filename"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"zip")
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", entry_missing)
    with pytest.raises(DD.DatasetDownloadError) as info:
        DD.download_dataset("dl3dv", tmp_path / "o", subset="1K", metadata=meta, progress=False, num_workers=2)
    assert "does not exist in DL3DV/DL3DV-ALL-960P" in str(info.value)
    assert [p.name for p in info.value.result.files] == [f"{'b' * 64}.zip"]  # the other file still came
