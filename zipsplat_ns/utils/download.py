"""Resumable, atomic HTTP(S) downloads with progress, a cross-process lock and integrity checks.

:func:`download_url` fetches one URL into a folder:

* data is written to ``<name>.part`` and renamed to ``<name>`` only once it is complete and verified, so the final
  name never holds a partial or corrupt file;
* an existing ``.part`` is resumed with an HTTP ``Range`` request (restarted from zero when the server ignores the
  range, or answers 416), and with ``retries > 0`` a dropped connection is resumed in the same call;
* the size is checked against ``Content-Length`` (and ``Content-Range``) and, when given, ``expected_size``; a
  ``sha256`` is checked when given (a mismatch deletes the ``.part``: resuming it could never fix it);
* a file lock (``<name>.lock``, removed once the file is complete) keeps two processes from writing the same
  ``.part``;
* an existing final file is reused without touching the network (after checking ``expected_size`` / ``sha256``).

Errors are :class:`DownloadError` (network or HTTP problems; the caller may choose a subclass with ``error_cls``)
and :class:`IntegrityError` (size or checksum mismatch). Nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Optional, Union

__all__ = [
    "DownloadError",
    "IntegrityError",
    "download_url",
    "filename_from_url",
    "file_lock",
    "progress_bar",
    "sha256_file",
]

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

DOWNLOAD_CHUNK = 1 << 20
HTTP_TIMEOUT_S = 60.0
USER_AGENT = "zipsplat_ns/1.0"


class DownloadError(RuntimeError):
    """A download failed (network, HTTP status, interrupted transfer)."""


class IntegrityError(DownloadError):
    """A download finished but its size or sha256 does not match what was expected."""


# --------------------------------------------------------------------------------------------------------- helpers
def file_lock(path: PathLike) -> contextlib.AbstractContextManager[Any]:
    """An inter-process lock on ``path`` (``filelock.FileLock``); a no-op when filelock is missing."""
    try:
        from filelock import FileLock
    except ImportError:  # pragma: no cover - filelock ships with torch and huggingface_hub
        return contextlib.nullcontext()
    return FileLock(str(path))


def progress_bar(total: Optional[int], initial: int, desc: str, enabled: Optional[bool] = None) -> Any:
    """A byte progress bar; ``enabled=None`` shows it on a terminal only (keeps batch-job logs clean)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                disable=None if enabled is None else not enabled)


def sha256_file(path: PathLike, chunk_size: int = DOWNLOAD_CHUNK) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(chunk_size), b""):
            h.update(chunk)
    return h.hexdigest()


def filename_from_url(url: str) -> str:
    """The last path component of ``url`` (percent-decoded); ``ValueError`` if there is none."""
    parsed = urllib.parse.urlparse(url)
    name = os.path.basename(urllib.parse.unquote(parsed.path))
    if not name or name in (".", ".."):
        raise ValueError(f"Cannot derive a file name from URL {url!r}; download it manually and pass the path")
    return name


def _normalise_sha256(value: Optional[str]) -> Optional[str]:
    if value is None:
        return None
    text = value.strip().lower()
    if text.startswith("sha256:"):
        text = text[len("sha256:"):]
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise ValueError(f"Not a sha256 hex digest (64 hex characters): {value!r}")
    return text


def _open_url(url: str, start: int, timeout: float, headers: Optional[dict] = None) -> Any:
    hdrs = {"User-Agent": USER_AGENT, **(headers or {})}
    if start > 0:
        hdrs["Range"] = f"bytes={start}-"
    request = urllib.request.Request(url, headers=hdrs)
    return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - scheme checked by the caller


def _content_range_total(value: str) -> Optional[int]:
    # "bytes 100-199/200" -> 200 ("*" when unknown)
    _, _, total = value.rpartition("/")
    return int(total) if total.isdigit() else None


def _human(n: Optional[int]) -> str:
    return "unknown size" if n is None else f"{n:,} bytes"


# -------------------------------------------------------------------------------------------------------- download
def download_url(
    url: str,
    dest_dir: PathLike,
    *,
    filename: Optional[str] = None,
    expected_size: Optional[int] = None,
    sha256: Optional[str] = None,
    retries: int = 0,
    retry_wait_s: float = 1.0,
    progress: Optional[bool] = None,
    timeout: float = HTTP_TIMEOUT_S,
    headers: Optional[dict] = None,
    what: str = "file",
    manual_hint: str = "download the file manually",
    error_cls: type = DownloadError,
) -> Path:
    """Download ``url`` to ``dest_dir/filename`` (default: the URL's last path component) and return the path.

    ``expected_size`` (bytes) and ``sha256`` (hex) are verified when given; ``retries`` resumes a dropped transfer
    that many times within this call (``0``: raise, keeping the ``.part`` so that the next call resumes it).
    ``progress``: ``None`` shows a bar on a terminal only. ``what`` and ``manual_hint`` only shape the messages
    (e.g. ``what="weights"``), ``error_cls`` is the :class:`DownloadError` subclass raised for network and HTTP
    errors. Integrity failures raise :class:`IntegrityError`.
    """
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme.lower() not in ("http", "https"):
        raise ValueError(f"Not an http(s) URL: {url!r}")
    if not issubclass(error_cls, DownloadError):
        raise TypeError(f"error_cls must be a DownloadError subclass, got {error_cls!r}")
    name = filename or filename_from_url(url)
    if os.sep in name or (os.altsep and os.altsep in name) or name in (".", ".."):
        raise ValueError(f"Invalid file name {name!r}")
    if expected_size is not None and expected_size < 0:
        raise ValueError(f"expected_size must be >= 0, got {expected_size}")
    digest = _normalise_sha256(sha256)

    folder = Path(dest_dir).expanduser()
    final = folder / name
    if final.is_file():
        _verify_existing(final, expected_size, digest, what)
        logger.info("Using cached %s %s", what, final)
        return final
    folder.mkdir(parents=True, exist_ok=True)
    part = final.with_name(name + ".part")

    lock_path = final.with_name(name + ".lock")
    with file_lock(lock_path):
        if final.is_file():  # another process finished while we waited
            _drop_lock_file(lock_path)
            _verify_existing(final, expected_size, digest, what)
            return final
        attempt = 0
        while True:
            try:
                _transfer(url, part, name, expected_size, digest, progress, timeout, headers, what, manual_hint,
                          error_cls)
                break
            except _Retryable as err:
                if attempt >= retries:
                    raise err.error from err.error.__cause__  # noqa: B904 - keep the network cause
                attempt += 1
                logger.warning("%s; retrying (%d/%d) from byte %d", err.error, attempt, retries,
                               part.stat().st_size if part.is_file() else 0)
                time.sleep(retry_wait_s * attempt)
        os.replace(part, final)
        _drop_lock_file(lock_path)
        logger.info("Downloaded %s to %s", url, final)
        return final


def _drop_lock_file(lock_path: Path) -> None:
    """Remove the lock file once the final file exists. Safe: from then on every caller returns on seeing the final
    file before it takes the lock, and a waiter still holding the old lock file sees it too. (After a failure the
    lock file stays, so that concurrent retries keep excluding each other.)"""
    try:
        lock_path.unlink()
    except OSError:  # already gone, or locked files cannot be removed (Windows)
        pass


class _Retryable(Exception):
    """Internal: wraps a DownloadError after which resuming may succeed."""

    def __init__(self, error: DownloadError, cause: Optional[BaseException] = None):
        super().__init__(str(error))
        error.__cause__ = cause
        self.error = error


def _verify_existing(final: Path, expected_size: Optional[int], digest: Optional[str], what: str) -> None:
    size = final.stat().st_size
    if expected_size is not None and size != expected_size:
        raise IntegrityError(
            f"Existing {what} {final} has {_human(size)}, expected {_human(expected_size)}: it is not the expected "
            f"file (or is corrupt). Delete it and run again."
        )
    if digest is not None:
        actual = sha256_file(final)
        if actual != digest:
            raise IntegrityError(
                f"Existing {what} {final} has sha256 {actual}, expected {digest}. Delete it and run again."
            )


def _finish_checks(url: str, part: Path, written: int, expected_size: Optional[int], hasher: Any,
                   digest: Optional[str], what: str) -> None:
    if expected_size is not None and written != expected_size:
        if written < expected_size:
            raise _Retryable(DownloadError(
                f"Incomplete download of {url}: got {written:,} of {expected_size:,} expected bytes (kept in "
                f"{part}); run again to resume."
            ))
        part.unlink(missing_ok=True)
        raise IntegrityError(
            f"Size mismatch for {what} {url}: got {written:,} bytes, expected {expected_size:,}; the partial file "
            f"was removed. The server may hold a different version: check the URL or the expected size."
        )
    if digest is not None:
        actual = hasher.hexdigest()
        if actual != digest:
            part.unlink(missing_ok=True)
            raise IntegrityError(
                f"Checksum mismatch for {what} {url}: sha256 {actual}, expected {digest}; the downloaded data was "
                f"removed. Run again to re-download; if it persists, the server holds a different file (check the "
                f"URL and the expected sha256)."
            )


def _transfer(url: str, part: Path, name: str, expected_size: Optional[int], digest: Optional[str],
              progress: Optional[bool], timeout: float, headers: Optional[dict], what: str, manual_hint: str,
              error_cls: type) -> None:
    """One HTTP request appending to (or restarting) ``part``; raises, or returns with ``part`` complete."""
    for attempt in range(2):
        start = part.stat().st_size if part.is_file() else 0
        if expected_size is not None and start > expected_size:
            logger.warning("%s is larger than the expected %d bytes; restarting the download", part, expected_size)
            part.unlink()
            start = 0
        if expected_size is not None and start == expected_size and start > 0:
            hasher = _hash_prefix(part, digest, start)
            _finish_checks(url, part, start, expected_size, hasher, digest, what)
            return
        try:
            response = _open_url(url, start, timeout, headers)
        except urllib.error.HTTPError as err:
            if err.code == 416 and start > 0 and attempt == 0:
                logger.warning("Server rejected resuming %s; restarting the download", part)
                part.unlink(missing_ok=True)
                continue
            raise error_cls(
                f"Downloading {what} from {url} failed: HTTP {err.code} {err.reason}. Check the URL, or "
                f"{manual_hint}."
            ) from err
        except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
            raise _Retryable(error_cls(
                f"Downloading {what} from {url} failed: {err}. Check your network connection, or {manual_hint}."
            ), err) from err

        with response:
            status = getattr(response, "status", 200)
            length = response.headers.get("Content-Length")
            length_i = int(length) if length and length.isdigit() else None
            if start > 0 and status == 206:
                content_range = response.headers.get("Content-Range", "")
                if not content_range.startswith(f"bytes {start}-"):
                    part.unlink(missing_ok=True)
                    raise error_cls(
                        f"Unexpected Content-Range {content_range!r} while resuming {url}; the partial file was "
                        f"removed, please retry."
                    )
                mode, offset = "ab", start
                total = _content_range_total(content_range)
                if total is None and length_i is not None:
                    total = offset + length_i
                logger.info("Resuming download of %s at byte %d", url, start)
            else:
                mode, offset = "wb", 0
                total = length_i
            if expected_size is not None and total is not None and total != expected_size:
                raise IntegrityError(
                    f"Size mismatch for {what} {url}: the server reports {total:,} bytes, expected "
                    f"{expected_size:,}. It may hold a different version: check the URL or the expected size."
                )
            hasher = _hash_prefix(part, digest, offset)
            logger.info("Downloading %s to %s (%s)", url, part.with_name(name), _human(total))
            written = offset
            with open(part, mode) as out, progress_bar(total, offset, name, progress) as bar:
                while True:
                    try:
                        chunk = response.read(DOWNLOAD_CHUNK)
                    except (OSError, http.client.HTTPException) as err:
                        out.flush()
                        raise _Retryable(error_cls(
                            f"Connection lost while downloading {url} ({written} bytes kept in {part}); "
                            f"run again to resume: {err}"
                        ), err) from err
                    if not chunk:
                        break
                    out.write(chunk)
                    if hasher is not None:
                        hasher.update(chunk)
                    written += len(chunk)
                    bar.update(len(chunk))
                out.flush()
                os.fsync(out.fileno())
        if total is not None and written != total:
            raise _Retryable(error_cls(
                f"Incomplete download of {url}: got {written} of {total} bytes (kept in {part}); run again to resume."
            ))
        _finish_checks(url, part, written, expected_size, hasher, digest, what)
        return
    raise error_cls(f"Downloading {what} from {url} failed")  # pragma: no cover


def _hash_prefix(part: Path, digest: Optional[str], nbytes: int) -> Any:
    """A sha256 object fed with the first ``nbytes`` of ``part`` (None when no checksum is wanted)."""
    if digest is None:
        return None
    h = hashlib.sha256()
    if nbytes > 0:
        with open(part, "rb") as fh:
            remaining = nbytes
            while remaining > 0:
                chunk = fh.read(min(DOWNLOAD_CHUNK, remaining))
                if not chunk:
                    break
                h.update(chunk)
                remaining -= len(chunk)
    return h
