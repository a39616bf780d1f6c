"""``zipsplat-ns download <dataset>``: fetch the raw benchmark datasets (RE10K, DL3DV, MipNeRF360).

Sources (reference §5.2):

* ``re10k``: the pixelSplat/MVSplat archive ``re10k.zip`` (``.torch`` chunks, about 12 scenes each);
* ``mipnerf360``: the official ``360_v2.zip`` (COLMAP scenes);
* ``dl3dv``: the gated Hugging Face dataset ``DL3DV/DL3DV-ALL-960P`` (other resolutions selectable), one
  ``{batch}/{hash}.zip`` per scene (``batch`` is ``1K``, ``2K``, ...), listed in the metadata CSV
  ``DL3DV-valid.csv`` (columns ``hash`` and ``batch``). You need a Hugging Face account that has accepted the
  dataset's terms on its page, and to be logged in (``huggingface-cli login``, or ``HF_TOKEN``).

Every download is resumable and atomic: data goes to ``<file>.part`` and is renamed when complete and verified
(``Content-Length``, plus ``--expected-size`` / ``--sha256`` when given); running the same command again resumes
or skips what is already there. DL3DV files go through ``huggingface_hub`` (which resumes too) in a thread pool of
``--num-workers``.

The converters (``zipsplat-ns convert re10k|dl3dv|colmap``) read what this writes.
"""

from __future__ import annotations

import concurrent.futures as cf
import csv
import json
import logging
import os
import re
import shutil
import threading
import time
import urllib.parse
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar, Dict, List, Literal, Optional, Tuple, Union

from zipsplat_ns.utils.download import DownloadError, IntegrityError, download_url

__all__ = [
    "ARCHIVES",
    "DL3DV_METADATA_URL",
    "DL3DV_REPOS",
    "DatasetDownloadError",
    "DatasetDownloadResult",
    "Dl3dvDownloadConfig",
    "DOWNLOAD_CONFIGS",
    "MipNerf360DownloadConfig",
    "Re10kDownloadConfig",
    "download_dataset",
    "load_hashes",
    "run_download",
]

logger = logging.getLogger(__name__)


class DatasetDownloadError(DownloadError):
    """A dataset download failed; the message says why and what to do."""

    def __init__(self, message: str, result: Optional["DatasetDownloadResult"] = None):
        super().__init__(message)
        self.result = result


@dataclass(frozen=True)
class ArchiveSource:
    """One archive file: where it is, and what we know about it (``None``: not known, not checked)."""

    url: str
    description: str
    size: Optional[int] = None
    sha256: Optional[str] = None


#: Single-archive datasets. Sizes and checksums are not published by the sources; pass ``--expected-size`` /
#: ``--sha256`` to check them.
ARCHIVES: Dict[str, ArchiveSource] = {
    "re10k": ArchiveSource(
        "http://schadenfreude.csail.mit.edu:8000/re10k.zip",
        "RealEstate10K as prepared by pixelSplat/MVSplat (.torch chunks, 360x640 JPEGs)",
    ),
    "mipnerf360": ArchiveSource(
        "http://storage.googleapis.com/gresearch/refraw360/360_v2.zip",
        "Mip-NeRF 360 (bicycle, bonsai, counter, garden, kitchen, room, stump; COLMAP)",
    ),
}

#: DL3DV resolution -> gated Hugging Face dataset repo.
DL3DV_REPOS: Dict[str, str] = {
    "480P": "DL3DV/DL3DV-ALL-480P",
    "960P": "DL3DV/DL3DV-ALL-960P",
    "2K": "DL3DV/DL3DV-ALL-2K",
    "4K": "DL3DV/DL3DV-ALL-4K",
}
DL3DV_METADATA_URL = "https://raw.githubusercontent.com/DL3DV-10K/Dataset/main/cache/DL3DV-valid.csv"
DL3DV_TEST_SPLIT = Path(__file__).resolve().parent / "converters" / "dl3dv_test_split.json"
_HASH = re.compile(r"^[0-9a-fA-F]{16,128}$")
_BATCH = re.compile(r"^\d+K$")


# ====================================================================================================== configs
@dataclass
class _ArchiveDownloadConfig:
    out_dir: Optional[Path] = None
    """Folder for the archive (default: data/raw/<dataset>)."""
    url: Optional[str] = None
    """Download from this URL instead of the official one (a mirror, or a local server in tests)."""
    base_url: Optional[str] = None
    """Download the official file name from this folder URL instead (mirrors): <base-url>/<file name>."""
    sha256: Optional[str] = None
    """Expected sha256 of the archive (hex); checked after downloading, and on an existing file."""
    expected_size: Optional[int] = None
    """Expected size of the archive in bytes (checked against Content-Length before downloading, and after)."""
    extract: bool = False
    """Also unpack the archive into the output folder (atomically: a staging folder renamed when complete)."""
    retries: int = 3
    """Resume a dropped connection this many times before giving up (the .part file is kept for a later run)."""
    progress: bool = True
    """Show a progress bar (on a terminal)."""

    dataset: ClassVar[str] = "re10k"

    def main(self) -> int:
        """Run the download, print a summary; returns the exit code."""
        return main_download(self)


@dataclass
class Re10kDownloadConfig(_ArchiveDownloadConfig):
    """Download RealEstate10K as prepared by pixelSplat/MVSplat (re10k.zip: .torch chunks with 360x640 JPEGs).

    Convert it with `zipsplat-ns convert re10k`.
    """

    dataset: ClassVar[str] = "re10k"


@dataclass
class MipNerf360DownloadConfig(_ArchiveDownloadConfig):
    """Download the Mip-NeRF 360 scenes (360_v2.zip, COLMAP models and images at several scales).

    Convert them with `zipsplat-ns convert colmap` (or `convert mipnerf360`).
    """

    dataset: ClassVar[str] = "mipnerf360"


@dataclass
class Dl3dvDownloadConfig:
    """Download DL3DV scenes ({batch}/{hash}.zip) from the gated Hugging Face dataset DL3DV/DL3DV-ALL-960P.

    Accept the dataset's terms on https://huggingface.co/datasets/DL3DV/DL3DV-ALL-960P with your account, then log
    in with `huggingface-cli login` (or set HF_TOKEN). Select scenes with --subset (batches) and/or --hashes (e.g.
    --test-split for the 141 benchmark scenes); files already present are skipped and interrupted ones resume.
    """

    out_dir: Optional[Path] = None
    """Folder for the scene zips, as <out-dir>/<batch>/<hash>.zip (default: data/raw/dl3dv)."""
    resolution: Literal["480P", "960P", "2K", "4K"] = "960P"
    """Which DL3DV resolution repo to use (the benchmark uses 960P, 540x960)."""
    subset: Optional[str] = None
    """Comma-separated batches to download, e.g. "1K,2K" (default: all batches, or those of --hashes)."""
    hashes: Optional[Path] = None
    """Only these scenes: a JSON file (a list, or an object of lists such as {"test": [...]}) or a text file with one
    hash per line."""
    test_split: bool = False
    """Only the 141 DL3DV benchmark test scenes (shipped with zipsplat_ns)."""
    limit: Optional[int] = None
    """Download at most this many scenes (after the other filters), e.g. for a quick try."""
    num_workers: int = 8
    """Parallel downloads."""
    metadata: Optional[Path] = None
    """Local copy of DL3DV-valid.csv (hash -> batch). Default: <out-dir>/.cache/DL3DV-valid.csv, downloaded from
    --metadata-url when missing; without it the repo's file list is used."""
    metadata_url: str = DL3DV_METADATA_URL
    """Where to fetch DL3DV-valid.csv from."""
    repo_id: Optional[str] = None
    """Override the Hugging Face dataset repo (default: DL3DV/DL3DV-ALL-<resolution>)."""
    endpoint: Optional[str] = None
    """A Hugging Face-compatible endpoint (mirror) instead of https://huggingface.co (also: HF_ENDPOINT)."""
    base_url: Optional[str] = None
    """Plain HTTP mirror instead of the hub: files are fetched from <base-url>/<batch>/<hash>.zip."""
    token: Optional[str] = None
    """Hugging Face token (default: HF_TOKEN, or the one stored by `huggingface-cli login`)."""
    hub_cache: bool = False
    """Keep the files in the Hugging Face cache (HF_HUB_CACHE) and link them into --out-dir, instead of writing them
    into --out-dir directly."""
    retries: int = 3
    """Retries per file on network errors."""
    dry_run: bool = False
    """Only list what would be downloaded."""
    progress: bool = True
    """Show progress bars (on a terminal)."""

    dataset: ClassVar[str] = "dl3dv"

    def main(self) -> int:
        """Run the download, print a summary; returns the exit code."""
        return main_download(self)


DownloadConfig = Union[Re10kDownloadConfig, Dl3dvDownloadConfig, MipNerf360DownloadConfig]

#: ``zipsplat-ns download <name>`` -> config class (tyro subcommands).
DOWNLOAD_CONFIGS: Dict[str, type] = {
    "re10k": Re10kDownloadConfig,
    "dl3dv": Dl3dvDownloadConfig,
    "mipnerf360": MipNerf360DownloadConfig,
}


@dataclass
class DatasetDownloadResult:
    """What a download produced: the files (in order), those that failed with reasons, and what was planned."""

    dataset: str
    out_dir: Path
    files: List[Path] = field(default_factory=list)
    failed: List[Tuple[str, str]] = field(default_factory=list)
    planned: List[str] = field(default_factory=list)
    extracted: Optional[Path] = None

    def summary(self) -> str:
        lines = [f"{self.dataset}: {len(self.files)} file(s) in {self.out_dir}"]
        if self.extracted is not None:
            lines.append(f"  extracted into {self.extracted}")
        if self.failed:
            lines.append(f"  {len(self.failed)} failed:")
            lines += [f"    {name}: {reason}" for name, reason in self.failed[:20]]
            if len(self.failed) > 20:
                lines.append(f"    ... and {len(self.failed) - 20} more")
        return "\n".join(lines)


# ================================================================================================= entry points
def download_dataset(name: str, out_dir: Optional[Union[str, os.PathLike]] = None, *, num_workers: int = 8,
                     **kwargs) -> DatasetDownloadResult:
    """Download dataset ``name`` (``"re10k"``, ``"dl3dv"`` or ``"mipnerf360"``) into ``out_dir``.

    ``kwargs`` are the fields of the dataset's config class (:data:`DOWNLOAD_CONFIGS`), e.g. ``url=``, ``sha256=``,
    ``subset="1K"``, ``hashes=Path(...)``. Raises :class:`DatasetDownloadError` with an actionable message.
    """
    key = name.strip().lower().replace("-", "").replace("_", "")
    aliases = {"re10k": "re10k", "realestate10k": "re10k", "dl3dv": "dl3dv", "mipnerf360": "mipnerf360",
               "360v2": "mipnerf360", "mip360": "mipnerf360"}
    if key not in aliases:
        raise ValueError(f"Unknown dataset {name!r}; choose one of {', '.join(DOWNLOAD_CONFIGS)}")
    cls = DOWNLOAD_CONFIGS[aliases[key]]
    if cls is Dl3dvDownloadConfig:
        kwargs["num_workers"] = num_workers
    cfg = cls(out_dir=Path(out_dir) if out_dir is not None else None, **kwargs)
    return run_download(cfg)


def run_download(cfg: DownloadConfig) -> DatasetDownloadResult:
    """Run a download described by a config (what ``zipsplat-ns download <dataset>`` calls)."""
    if isinstance(cfg, Dl3dvDownloadConfig):
        return _download_dl3dv(cfg)
    if isinstance(cfg, _ArchiveDownloadConfig):
        return _download_archive(cfg)
    raise TypeError(f"Not a download config: {type(cfg).__name__}")


def _default_out(dataset: str) -> Path:
    return Path("data") / "raw" / dataset


# ====================================================================================================== archives
def _download_archive(cfg: _ArchiveDownloadConfig) -> DatasetDownloadResult:
    source = ARCHIVES[cfg.dataset]
    official_name = source.url.rsplit("/", 1)[-1]
    if cfg.url:
        url = cfg.url
    elif cfg.base_url:
        url = cfg.base_url.rstrip("/") + "/" + official_name
    else:
        url = source.url
    scheme = urllib.parse.urlparse(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise DatasetDownloadError(f"--url must be an http:// or https:// URL, got {url!r}")
    out_dir = Path(cfg.out_dir) if cfg.out_dir is not None else _default_out(cfg.dataset)
    official = url == source.url
    size = cfg.expected_size if cfg.expected_size is not None else (source.size if official else None)
    digest = cfg.sha256 if cfg.sha256 is not None else (source.sha256 if official else None)
    logger.info("Downloading %s (%s) from %s into %s", cfg.dataset, source.description, url, out_dir)
    try:
        path = download_url(url, out_dir, expected_size=size, sha256=digest, retries=cfg.retries,
                            progress=None if cfg.progress else False, what=f"{cfg.dataset} archive",
                            manual_hint=f"download {url} by hand into {out_dir}")
    except IntegrityError as err:
        raise DatasetDownloadError(str(err)) from err
    except DownloadError as err:
        raise DatasetDownloadError(
            f"{err}\nRun the same command again to resume; use --url or --base-url for a mirror."
        ) from err
    result = DatasetDownloadResult(cfg.dataset, out_dir, files=[path], planned=[path.name])
    if cfg.extract:
        result.extracted = extract_zip(path, out_dir)
    return result


def extract_zip(archive: Path, out_dir: Path) -> Path:
    """Unpack ``archive`` into ``out_dir/<stem>`` atomically (staging folder, then rename); returns that folder.

    A single top-level folder named like the archive is not repeated (``re10k.zip:re10k/...`` -> ``out/re10k/...``).
    Members that would escape the folder are refused. An existing target folder is kept as is.
    """
    target = out_dir / archive.stem
    if target.is_dir():
        logger.info("%s already extracted in %s", archive.name, target)
        return target
    staging = out_dir / f".extract-{archive.stem}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with zipfile.ZipFile(archive) as zf:
            names = [n for n in zf.namelist() if n and not n.startswith("__MACOSX/")]
            tops = {n.split("/", 1)[0] for n in names}
            strip = archive.stem + "/" if tops == {archive.stem} else ""
            root = staging.resolve()
            for info in zf.infolist():
                name = info.filename
                if not name or name.startswith("__MACOSX/"):
                    continue
                rel = name[len(strip):] if strip and name.startswith(strip) else name
                if not rel:
                    continue
                dest = (staging / rel).resolve()
                if root not in dest.parents and dest != root:
                    raise DatasetDownloadError(f"{archive}: member {name!r} would be written outside {target}")
                if info.is_dir():
                    dest.mkdir(parents=True, exist_ok=True)
                    continue
                dest.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(dest, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
    except zipfile.BadZipFile as err:
        shutil.rmtree(staging, ignore_errors=True)
        raise DatasetDownloadError(f"{archive} is not a valid zip file ({err}); delete it and download again") from err
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    os.replace(staging, target)
    return target


# ========================================================================================================= DL3DV
def load_hashes(path: Union[str, os.PathLike]) -> List[str]:
    """Scene hashes from a JSON file (a list, or an object whose values are lists) or a text file (one per line,
    ``#`` comments). Order kept, duplicates dropped; each entry must look like a hex hash."""
    path = Path(path)
    if not path.is_file():
        raise DatasetDownloadError(f"--hashes file not found: {path}")
    text = path.read_text()
    items: List[str] = []
    if path.suffix.lower() == ".json" or text.lstrip().startswith(("[", "{")):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise DatasetDownloadError(f"{path}: malformed JSON ({err})") from err
        if isinstance(data, dict):
            for value in data.values():
                if isinstance(value, list):
                    items += [str(v) for v in value]
                elif isinstance(value, dict):  # {hash: ...} index files
                    items += [str(v) for v in value]
            if not items:
                items = [str(k) for k in data]
        elif isinstance(data, list):
            items = [str(v) for v in data]
        else:
            raise DatasetDownloadError(f"{path}: expected a JSON list of hashes or an object of lists")
    else:
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                items.append(line.split()[0].split(",")[0])
    out: List[str] = []
    seen = set()
    for h in items:
        h = h.strip()
        if "/" in h:  # "1K/<hash>.zip" or "<batch>/<hash>"
            h = h.rsplit("/", 1)[-1]
        h = h[:-4] if h.endswith(".zip") else h
        if not _HASH.match(h):
            raise DatasetDownloadError(f"{path}: {h!r} does not look like a DL3DV scene hash")
        if h not in seen:
            seen.add(h)
            out.append(h)
    if not out:
        raise DatasetDownloadError(f"{path} lists no scene hashes")
    return out


def _parse_subset(subset: Optional[str]) -> Optional[List[str]]:
    if subset is None or not subset.strip():
        return None
    items = [s.strip().upper() for s in re.split(r"[,\s]+", subset) if s.strip()]
    bad = [s for s in items if not _BATCH.match(s)]
    if bad:
        raise DatasetDownloadError(f"--subset: {', '.join(bad)} are not DL3DV batches (like 1K, 2K, ..., 11K)")
    return items


def _read_metadata_csv(path: Path) -> Dict[str, str]:
    """``hash -> batch`` from DL3DV-valid.csv."""
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            fields = {(f or "").strip().lower(): f for f in reader.fieldnames or []}
            if "hash" not in fields or "batch" not in fields:
                raise DatasetDownloadError(
                    f"{path}: expected a CSV with 'hash' and 'batch' columns (DL3DV-valid.csv), got {reader.fieldnames}"
                )
            out: Dict[str, str] = {}
            for row in reader:
                h = (row.get(fields["hash"]) or "").strip()
                b = (row.get(fields["batch"]) or "").strip()
                if h and b:
                    out[h] = b
            return out
    except (OSError, csv.Error, UnicodeDecodeError) as err:
        raise DatasetDownloadError(f"Cannot read the DL3DV metadata {path}: {err}") from err


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on", "y", "t"}


def _hf_offline() -> bool:
    """HF_HUB_OFFLINE as set now (huggingface_hub only reads it at import)."""
    if "HF_HUB_OFFLINE" in os.environ:
        return _env_flag("HF_HUB_OFFLINE")
    try:
        from huggingface_hub import constants

        return bool(getattr(constants, "HF_HUB_OFFLINE", False))
    except ImportError:  # pragma: no cover
        return False


def _hf_cache_dir() -> Optional[str]:
    """Hub cache from the environment at call time (huggingface_hub reads it at import)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        value = os.environ.get(var)
        if value:
            return os.path.expanduser(value)
    hf_home = os.environ.get("HF_HOME")
    if hf_home:
        return os.path.join(os.path.expanduser(hf_home), "hub")
    return None


def _hf_token(explicit: Optional[str]) -> Optional[str]:
    if explicit:
        return explicit
    env = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if env:
        return env
    try:
        from huggingface_hub import get_token

        return get_token()
    except Exception:  # noqa: BLE001 - no token store, old huggingface_hub
        return None


def _dataset_page(repo_id: str, endpoint: Optional[str]) -> str:
    base = (endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
    return f"{base}/datasets/{repo_id}"


class _FatalHubError(DatasetDownloadError):
    """An error that every other file would hit too (authentication, access, missing repo)."""


def hub_error_message(err: BaseException, repo_id: str, filename: Optional[str], *, has_token: bool,
                      offline: bool, endpoint: Optional[str] = None) -> Tuple[str, bool]:
    """A clear message for a huggingface_hub error, and whether it is fatal for the whole download."""
    try:
        from huggingface_hub import errors as hf_errors
    except ImportError:  # pragma: no cover - huggingface_hub < 0.23
        from huggingface_hub import utils as hf_errors  # type: ignore[no-redef]

    def cls(name: str) -> tuple:
        c = getattr(hf_errors, name, None)
        return (c,) if isinstance(c, type) else ()

    page = _dataset_page(repo_id, endpoint)
    what = f"{repo_id}/{filename}" if filename else repo_id
    login = ("you are not logged in to Hugging Face: run `huggingface-cli login` (or `hf auth login`), or set the "
             "HF_TOKEN environment variable to a token of your account")
    accept = (f"your account has not been granted access to the gated dataset {repo_id}: open {page} while logged in, "
              "accept the terms of use (the access request may need to be approved), and check that your token "
              "(HF_TOKEN or `huggingface-cli login`) belongs to that account")
    status = getattr(getattr(err, "response", None), "status_code", None)
    detail = f"{type(err).__name__}: {err}".strip()
    if cls("GatedRepoError") and isinstance(err, cls("GatedRepoError")):
        if not has_token:
            return (f"Cannot download {what}: the dataset is gated and {login}. You also need to accept the "
                    f"dataset's terms on {page}. ({detail})"), True
        return f"Cannot download {what}: {accept}. ({detail})", True
    if cls("LocalEntryNotFoundError") and isinstance(err, cls("LocalEntryNotFoundError")):
        if offline:
            return (f"{what} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set, so nothing was "
                    f"downloaded: unset HF_HUB_OFFLINE to download it, or point HF_HUB_CACHE at a cache that holds "
                    f"it. ({detail})"), False
        return (f"Cannot download {what}: the Hugging Face hub could not be reached (check your network, "
                f"HF_ENDPOINT or --endpoint). ({detail})"), False
    if cls("RepositoryNotFoundError") and isinstance(err, cls("RepositoryNotFoundError")):
        if not has_token:
            return (f"Dataset repo {repo_id} was not found, or it needs authentication and {login}; gated datasets "
                    f"also need their terms accepted on {page}. ({detail})"), True
        return (f"Dataset repo {repo_id} does not exist or your token cannot see it: check --resolution / "
                f"--repo-id, and that you accepted the terms on {page}. ({detail})"), True
    if cls("RevisionNotFoundError") and isinstance(err, cls("RevisionNotFoundError")):
        return f"Revision not found in {repo_id}. ({detail})", True
    if (cls("RemoteEntryNotFoundError") and isinstance(err, cls("RemoteEntryNotFoundError"))) or (
        cls("EntryNotFoundError") and isinstance(err, cls("EntryNotFoundError"))
    ):
        return (f"{filename or 'the file'} does not exist in {repo_id}: check the hash, --subset and --resolution. "
                f"({detail})"), False
    if status in (401, 403):
        if not has_token:
            return f"Cannot download {what} (HTTP {status}): {login}; then accept the terms on {page}. ({detail})", True
        return f"Cannot download {what} (HTTP {status}): {accept}. ({detail})", True
    if status == 404:
        return f"{what} was not found (HTTP 404): check the hash, --subset and --resolution. ({detail})", False
    return f"Downloading {what} failed: {detail}", False


def _list_cached_repo_files(repo_id: str, cache_dir: Optional[str]) -> List[str]:
    """Files of ``repo_id`` (a dataset) present in the hub cache (any snapshot)."""
    if cache_dir is None:
        try:
            from huggingface_hub import constants

            cache_dir = str(constants.HF_HUB_CACHE)
        except (ImportError, AttributeError):  # pragma: no cover
            return []
    snaps = Path(cache_dir) / ("datasets--" + repo_id.replace("/", "--")) / "snapshots"
    out = set()
    if snaps.is_dir():
        for snap in snaps.iterdir():
            for p in snap.rglob("*.zip"):
                out.add(p.relative_to(snap).as_posix())
    return sorted(out)


def _scene_index(cfg: Dl3dvDownloadConfig, out_dir: Path, repo_id: str, token: Optional[str], offline: bool,
                 has_token: bool) -> Dict[str, str]:
    """``hash -> batch`` for every known scene: the metadata CSV, or the repo's file list as a fallback."""
    meta_path = Path(cfg.metadata) if cfg.metadata is not None else out_dir / ".cache" / "DL3DV-valid.csv"
    if cfg.metadata is not None and not meta_path.is_file():
        raise DatasetDownloadError(f"--metadata file not found: {meta_path}")
    problems: List[str] = []
    if not meta_path.is_file() and not offline:
        try:
            download_url(cfg.metadata_url, meta_path.parent, filename=meta_path.name, retries=cfg.retries,
                         progress=False, what="DL3DV metadata")
        except (DownloadError, ValueError) as err:
            problems.append(f"the metadata CSV could not be downloaded from {cfg.metadata_url} ({err})")
    if meta_path.is_file():
        index = _read_metadata_csv(meta_path)
        if index:
            return index
        problems.append(f"{meta_path} lists no scenes")

    if cfg.base_url is None:  # fall back to the repo's file list (online) or the hub cache (offline)
        files: List[str] = []
        if offline:
            files = _list_cached_repo_files(repo_id, _hf_cache_dir())
            if not files and (out_dir).is_dir():
                files = sorted(p.relative_to(out_dir).as_posix() for p in out_dir.glob("*/*.zip"))
        else:
            try:
                from huggingface_hub import HfApi

                files = HfApi(endpoint=cfg.endpoint).list_repo_files(repo_id, repo_type="dataset", token=token)
            except Exception as err:  # noqa: BLE001 - mapped to a clear message
                msg, fatal = hub_error_message(err, repo_id, None, has_token=has_token, offline=offline,
                                               endpoint=cfg.endpoint)
                if fatal:
                    raise _FatalHubError(msg) from err
                problems.append(f"the file list of {repo_id} could not be read ({msg})")
        index = {}
        for f in files:
            parts = f.split("/")
            if len(parts) == 2 and parts[1].endswith(".zip") and _BATCH.match(parts[0]):
                index[parts[1][:-4]] = parts[0]
        if index:
            return index
        problems.append(f"no {{batch}}/{{hash}}.zip files were found for {repo_id}"
                        + (" in the local cache (HF_HUB_OFFLINE is set)" if offline else ""))
    raise DatasetDownloadError(
        "Cannot tell which DL3DV scenes exist (hash -> batch): " + "; ".join(problems)
        + f". Pass --metadata with a copy of DL3DV-valid.csv ({DL3DV_METADATA_URL})."
    )


def _select(cfg: Dl3dvDownloadConfig, index: Dict[str, str]) -> List[str]:
    """Repo paths ``{batch}/{hash}.zip`` to fetch, in a stable order."""
    batches = _parse_subset(cfg.subset)
    hashes: Optional[List[str]] = None
    if cfg.hashes is not None:
        hashes = load_hashes(cfg.hashes)
    if cfg.test_split:
        if not DL3DV_TEST_SPLIT.is_file():
            raise DatasetDownloadError(f"The DL3DV test split is not shipped with this install ({DL3DV_TEST_SPLIT})")
        test = load_hashes(DL3DV_TEST_SPLIT)
        hashes = test if hashes is None else [h for h in hashes if h in set(test)]
    if hashes is not None:
        missing = [h for h in hashes if h not in index]
        if missing:
            shown = ", ".join(missing[:5]) + (f", ... ({len(missing)} in total)" if len(missing) > 5 else "")
            raise DatasetDownloadError(
                f"{len(missing)} of the {len(hashes)} requested scene hashes are not in the DL3DV scene list: {shown}"
            )
        chosen = [(index[h], h) for h in hashes]
        if batches is not None:
            chosen = [(b, h) for b, h in chosen if b in batches]
    else:
        def batch_num(b: str) -> int:
            return int(b[:-1]) if _BATCH.match(b) else 1 << 30

        chosen = sorted(((b, h) for h, b in index.items() if batches is None or b in batches),
                        key=lambda bh: (batch_num(bh[0]), bh[0], bh[1]))
        if batches is not None:
            empty = [b for b in batches if not any(c[0] == b for c in chosen)]
            if empty:
                raise DatasetDownloadError(f"--subset: no scenes in batch(es) {', '.join(empty)}")
    if cfg.limit is not None:
        chosen = chosen[: max(0, cfg.limit)]
    return [f"{b}/{h}.zip" for b, h in chosen]


def _download_dl3dv(cfg: Dl3dvDownloadConfig) -> DatasetDownloadResult:
    if cfg.num_workers < 1:
        raise DatasetDownloadError(f"--num-workers must be >= 1, got {cfg.num_workers}")
    out_dir = Path(cfg.out_dir) if cfg.out_dir is not None else _default_out("dl3dv")
    repo_id = cfg.repo_id or DL3DV_REPOS[cfg.resolution]
    offline = _hf_offline() and cfg.base_url is None
    token = _hf_token(cfg.token)
    has_token = bool(token)
    index = _scene_index(cfg, out_dir, repo_id, token, offline, has_token)
    paths = _select(cfg, index)
    result = DatasetDownloadResult("dl3dv", out_dir, planned=list(paths))
    if not paths:
        raise DatasetDownloadError("No DL3DV scenes selected (check --subset, --hashes and --limit)", result)
    logger.info("DL3DV: %d scene(s) from %s into %s", len(paths), cfg.base_url or repo_id, out_dir)
    if cfg.dry_run:
        return result
    out_dir.mkdir(parents=True, exist_ok=True)

    if cfg.base_url is not None:
        fetch = _http_fetcher(cfg, out_dir)
    else:
        fetch = _hub_fetcher(cfg, out_dir, repo_id, token, offline, has_token)

    done: Dict[str, Path] = {}
    abort = threading.Event()
    fatal: List[BaseException] = []

    def work(rel: str) -> Tuple[str, Optional[Path], Optional[str]]:
        if abort.is_set():
            return rel, None, "cancelled"
        final = out_dir / rel
        if final.is_file():  # complete (downloads are renamed into place); follows links into the hub cache
            return rel, final, None
        try:
            return rel, fetch(rel), None
        except _FatalHubError as err:
            abort.set()
            fatal.append(err)
            return rel, None, str(err)
        except (DatasetDownloadError, DownloadError, OSError, ValueError) as err:
            return rel, None, str(err)

    from tqdm.auto import tqdm

    with tqdm(total=len(paths), unit="scene", desc="DL3DV", disable=None if cfg.progress else True) as bar:
        with cf.ThreadPoolExecutor(max_workers=min(cfg.num_workers, len(paths))) as pool:
            futures = [pool.submit(work, rel) for rel in paths]
            for fut in cf.as_completed(futures):
                rel, path, reason = fut.result()
                if path is not None:
                    done[rel] = path
                elif reason != "cancelled":
                    result.failed.append((rel, reason or "unknown error"))
                bar.update(1)
    result.files = [done[rel] for rel in paths if rel in done]
    if fatal:
        raise DatasetDownloadError(str(fatal[0]), result) from fatal[0]
    if result.failed:
        result.failed.sort()
        raise DatasetDownloadError(
            f"{len(result.failed)} of {len(paths)} DL3DV file(s) failed ({len(result.files)} done); run the same "
            f"command again to retry them:\n" + "\n".join(f"  {n}: {r}" for n, r in result.failed[:20])
            + (f"\n  ... and {len(result.failed) - 20} more" if len(result.failed) > 20 else ""),
            result,
        )
    return result


def _http_fetcher(cfg: Dl3dvDownloadConfig, out_dir: Path) -> Callable[[str], Path]:
    base = cfg.base_url.rstrip("/")
    show = None if (cfg.progress and cfg.num_workers == 1) else False

    def fetch(rel: str) -> Path:
        batch, name = rel.split("/")
        url = f"{base}/{urllib.parse.quote(batch)}/{urllib.parse.quote(name)}"
        return download_url(url, out_dir / batch, retries=cfg.retries, progress=show, what="DL3DV scene")

    return fetch


def _hub_fetcher(cfg: Dl3dvDownloadConfig, out_dir: Path, repo_id: str, token: Optional[str], offline: bool,
                 has_token: bool) -> Callable[[str], Path]:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as err:  # pragma: no cover - a dependency
        raise DatasetDownloadError("DL3DV downloads need huggingface_hub: pip install huggingface_hub") from err
    # Looked up at call time so that tests (and users) can swap it.
    import huggingface_hub

    cache_dir = _hf_cache_dir()

    def fetch(rel: str) -> Path:
        download = getattr(huggingface_hub, "hf_hub_download", hf_hub_download)
        kwargs = dict(repo_id=repo_id, filename=rel, repo_type="dataset", token=token or None,
                      local_files_only=offline, endpoint=cfg.endpoint)
        if cfg.hub_cache:
            kwargs["cache_dir"] = cache_dir
        else:
            kwargs["local_dir"] = str(out_dir)
        last: Optional[BaseException] = None
        for attempt in range(max(0, cfg.retries) + 1):
            try:
                path = Path(download(**kwargs))
                break
            except Exception as err:  # noqa: BLE001 - classified below
                msg, fatal = hub_error_message(err, repo_id, rel, has_token=has_token, offline=offline,
                                               endpoint=cfg.endpoint)
                if fatal:
                    raise _FatalHubError(msg) from err
                not_found = type(err).__name__ in ("EntryNotFoundError", "RemoteEntryNotFoundError",
                                                   "LocalEntryNotFoundError")
                if offline or not_found or attempt >= cfg.retries:
                    raise DatasetDownloadError(msg) from err
                last = err
                logger.warning("%s; retrying (%d/%d)", msg, attempt + 1, cfg.retries)
                time.sleep(min(30.0, 2.0 ** attempt))
        else:  # pragma: no cover - loop always breaks or raises
            raise DatasetDownloadError(f"Downloading {rel} failed: {last}")
        if not cfg.hub_cache:
            return path
        link = out_dir / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        try:
            link.symlink_to(path.resolve())
        except OSError:  # no symlinks: copy
            tmp = link.with_name(link.name + ".part")
            shutil.copyfile(path, tmp)
            os.replace(tmp, link)
        return link

    return fetch


def main_download(cfg: DownloadConfig) -> int:
    """CLI helper: run, print a summary (stderr), return an exit code; errors are printed, not raised."""
    import sys

    try:
        result = run_download(cfg)
    except DatasetDownloadError as err:
        print(f"error: {err}", file=sys.stderr)
        if err.result is not None and err.result.files:
            print(err.result.summary(), file=sys.stderr)
        return 1
    if isinstance(cfg, Dl3dvDownloadConfig) and cfg.dry_run:
        print("\n".join(result.planned))
        print(f"{len(result.planned)} file(s) would be downloaded into {result.out_dir}", file=sys.stderr)
        return 0
    print(result.summary(), file=sys.stderr)
    return 0

