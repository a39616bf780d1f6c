"""The built-in default dataset: procedural synthetic shards, generated on first use and cached.

``ns-train zipsplat-tiny`` (or any ZipSplat method) without ``--data`` trains on these. They are generated once into
``$ZIPSPLAT_CACHE/synthetic-v1-<params>`` (default cache root ``~/.cache/zipsplat_ns``; ``$XDG_CACHE_HOME`` is honoured)
with a progress bar, and reused afterwards.

The write is atomic: scenes are generated into a temporary sibling directory, a ``COMPLETE`` marker is written last,
and the directory is renamed into place. A killed run leaves only a ``.synthetic-*.tmp-*`` directory (ignored, and
removed by the next run when it is stale); two concurrent runs both generate and the second rename loses harmlessly.

Size: 64 scenes (56 train, 8 test) x 12 views at 128 x 128 px (the datamanager resizes to the network's 252 px), about
10 MB; generation takes ~20 s on one CPU core (in-process).
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

CACHE_ENV = "ZIPSPLAT_CACHE"
MARKER = "COMPLETE"
_STALE_TMP_S = 6 * 3600


@dataclass(frozen=True)
class DefaultSynthSpec:
    """Parameters of the default synthetic dataset (part of the cache directory name)."""

    num_scenes: int = 64
    views: int = 12
    size: int = 128
    seed: int = 0
    test_fraction: float = 0.125
    version: int = 1

    @property
    def dirname(self) -> str:
        return f"synthetic-v{self.version}-n{self.num_scenes}-v{self.views}-s{self.size}-seed{self.seed}"


def cache_root() -> Path:
    """``$ZIPSPLAT_CACHE``, else ``$XDG_CACHE_HOME/zipsplat_ns``, else ``~/.cache/zipsplat_ns``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "zipsplat_ns"


def default_data_dir(spec: Optional[DefaultSynthSpec] = None) -> Path:
    return cache_root() / (spec or DefaultSynthSpec()).dirname


def is_complete(path: Path) -> bool:
    return (path / MARKER).is_file() and (path / "train-scenes").is_dir() and (path / "test-scenes").is_dir()


def _cleanup_stale(root: Path, name: str) -> None:
    now = time.time()
    for tmp in root.glob(f".{name}.tmp-*"):
        try:
            if now - tmp.stat().st_mtime > _STALE_TMP_S:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass


def ensure_default_data(
    spec: Optional[DefaultSynthSpec] = None, *, progress: bool = True, num_workers: Optional[int] = None
) -> Path:
    """Path of the default synthetic shard root (``train-scenes/`` + ``test-scenes/``), generating it if needed."""
    from rich.console import Console

    spec = spec or DefaultSynthSpec()
    final = default_data_dir(spec)
    if is_complete(final):
        return final
    root = final.parent
    root.mkdir(parents=True, exist_ok=True)
    _cleanup_stale(root, final.name)
    if final.exists():  # an incomplete directory under the final name (not written by this module): replace it
        shutil.rmtree(final, ignore_errors=True)
    console = Console(stderr=True)
    console.print(
        f"[bold]zipsplat_ns[/bold]: no --data given; generating the built-in synthetic dataset "
        f"({spec.num_scenes} scenes x {spec.views} views, {spec.size}px) into {final} (once, then reused)",
        soft_wrap=True,  # one line: a path broken at the console width (80 when stderr is not a terminal) is unusable
    )
    from zipsplat_ns.data.synth import synth_main

    # in-process by default: synth's worker pool uses the "spawn" start method, which re-imports __main__ and so
    # breaks callers whose script has no `if __name__ == "__main__"` guard
    workers = int(num_workers or 0)
    tmp = root / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    t0 = time.perf_counter()
    try:
        synth_main(
            tmp,
            num_scenes=spec.num_scenes,
            views=spec.views,
            size=spec.size,
            seed=spec.seed,
            test_fraction=spec.test_fraction,
            num_workers=workers if workers > 1 else 0,
            overwrite=False,
            progress=progress,
        )
        (tmp / MARKER).write_text(f"{spec}\n")
        try:
            os.rename(tmp, final)
        except OSError:
            if not is_complete(final):  # not a concurrent winner: a real error
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    console.print(f"[bold]zipsplat_ns[/bold]: synthetic dataset ready in {time.perf_counter() - t0:.1f} s: {final}",
                  soft_wrap=True)  # fmt: skip
    return final


__all__ = ["DefaultSynthSpec", "CACHE_ENV", "cache_root", "default_data_dir", "ensure_default_data", "is_complete"]
