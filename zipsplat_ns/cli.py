"""``zipsplat-ns``: the plugin's own command line (data tools; more subcommands join as they land).

    zipsplat-ns shards check DIR            validate every scene, report the bad ones
    zipsplat-ns shards repack SRC DST       re-bucket scenes into shards of another size
    zipsplat-ns shards resize SRC DST       square copies at another resolution
    zipsplat-ns synth --output DIR          procedural training/test scenes with exact depth
    zipsplat-ns convert FORMAT SRC DST      nerfstudio | colmap | media | re10k | dl3dv | mipnerf360 -> shards
    zipsplat-ns download DATASET            re10k | dl3dv | mipnerf360 sources
    zipsplat-ns depth SHARD_DIR             fill depth from SfM points or Depth-Anything-3
    zipsplat-ns eval --benchmark re10k      benchmark evaluation (index files, pose refinement, metrics)
    zipsplat-ns reconstruct INPUT           images / video / nerfstudio data / shard scene -> Gaussians + a run
"""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, make_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

import tyro
from rich.console import Console
from typing_extensions import Annotated

if TYPE_CHECKING:
    from zipsplat_ns.data.shard_tools import CheckReport

console = Console(stderr=True)


# ------------------------------------------------------------------------------------------------------- shards
@dataclass
class ShardsCheck:
    """Validate every scene of a shard directory (members, shapes, poses, decodable images and depth, index.json)."""

    shard_dir: tyro.conf.Positional[Path]
    """Directory holding *.tar shards and index.json."""
    decode: bool = True
    """Decode every image and depth map (slower, catches corrupt payloads)."""
    min_views: int = 1
    """Report scenes with fewer views than this (training needs context + target views, e.g. 6)."""
    fix_index: bool = False
    """Rewrite index.json from the scenes actually found.
    Refused when a shard is truncated or corrupt (a new index would drop its lost scenes): re-create the shard first."""
    json_output: Optional[Path] = None
    """Also write the report as JSON here."""

    def main(self) -> int:
        from zipsplat_ns.data.shard_tools import check_shards, print_check_report
        from zipsplat_ns.utils.atomic import atomic_write

        report = check_shards(self.shard_dir, decode=self.decode, min_views=self.min_views, fix_index=self.fix_index)
        print_check_report(report)
        if self.json_output is not None:
            atomic_write(self.json_output, json.dumps(report.to_dict(), indent=2) + "\n")
        return 0 if report.ok else 1


_Src = Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="SRC", help="Shard directory to read.")]
_Dst = Annotated[Path, tyro.conf.Positional,
                 tyro.conf.arg(metavar="DST", help="Output shard directory (created; must not hold shards unless "
                                                    "--overwrite).")]  # fmt: skip


def _report_rewrite(run: Callable[[], CheckReport], dst: Path) -> int:
    """Run a ``repack`` / ``resize`` call, print its check table and say what was written.

    Exit status 0 when every scene was written, 1 when some were bad (skipped and listed: the output lacks them). A
    run that wrote nothing prints the table of bad scenes and re-raises (``error: ...``, status 2); the output was
    left as it was."""
    from zipsplat_ns.data.shard_tools import NothingWritten, print_check_report

    try:
        report = run()
    except NothingWritten as exc:
        print_check_report(exc.report)
        raise
    print_check_report(report)
    if report.bad:
        console.print(f"[yellow]wrote {len(report.good)} scene(s) to {dst}; {len(report.bad)} bad scene(s) were "
                      "skipped (listed above)[/yellow]")  # fmt: skip
        return 1
    console.print(f"wrote {len(report.good)} scene(s) to {dst}")
    return 0


@dataclass
class ShardsRepack:
    """Copy the valid scenes of SRC into DST with a new shard size (bad scenes are skipped and listed).

    SRC is one shard directory (e.g. train-scenes/). Exit status 1 when bad scenes were skipped; an error, and DST left
    as it was, when SRC holds no shards or no scene could be written."""

    src: _Src
    dst: _Dst
    shard_size_mb: float = 512.0
    """Target shard size in MB."""
    overwrite: bool = False
    """Replace shards already in DST (only once the new ones are complete)."""

    def main(self) -> int:
        from zipsplat_ns.data.shard_tools import repack_shards

        return _report_rewrite(lambda: repack_shards(self.src, self.dst, shard_size_mb=self.shard_size_mb,
                                                     overwrite=self.overwrite), self.dst)  # fmt: skip


@dataclass
class ShardsResize:
    """Write square SIZE x SIZE copies of SRC into DST (resize to cover, centre crop, intrinsics and depth updated).

    SRC is one shard directory (e.g. train-scenes/). Exit status 1 when bad scenes were skipped; an error, and DST left
    as it was, when SRC holds no shards or no scene could be written."""

    src: _Src
    dst: _Dst
    size: int = 252
    """Output side length in pixels: a positive multiple of 14, the network's patch size (252, its native size, by
    default). Checked before anything is read or written."""
    shard_size_mb: float = 512.0
    """Target shard size in MB."""
    overwrite: bool = False
    """Replace shards already in DST (only once the new ones are complete)."""

    def main(self) -> int:
        from zipsplat_ns.data.shard_tools import resize_shards

        return _report_rewrite(lambda: resize_shards(self.src, self.dst, size=self.size, shard_size_mb=self.shard_size_mb,
                                                     overwrite=self.overwrite), self.dst)  # fmt: skip


@dataclass
class Shards:
    """Inspect and rewrite tar shards."""

    command: Union[
        Annotated[ShardsCheck, tyro.conf.subcommand("check")],
        Annotated[ShardsRepack, tyro.conf.subcommand("repack")],
        Annotated[ShardsResize, tyro.conf.subcommand("resize")],
    ]

    def main(self) -> int:
        return self.command.main()


# -------------------------------------------------------------------------------------------------------- synth
@dataclass
class Synth:
    """Generate procedural scenes (textured rooms with objects, exact depth, walk-throughs and orbits) as shards."""

    output: Path = Path("data/synthetic")
    """Root directory; train-scenes/ and test-scenes/ are written inside."""
    num_scenes: int = 256
    """Total number of scenes (train + test)."""
    views: int = 32
    """Views per scene."""
    size: int = 128
    """Image side length in pixels."""
    seed: int = 0
    """Generation is deterministic given the seed."""
    test_fraction: float = 0.1
    """Fraction of scenes written to test-scenes/."""
    num_workers: int = 0
    """Worker processes (the output is identical for any count)."""
    overwrite: bool = False
    """Replace existing shards in OUTPUT (only once the new ones are complete)."""

    def main(self) -> int:
        from zipsplat_ns.data.synth import synth_main

        out = synth_main(self.output, self.num_scenes, self.views, self.size, self.seed, self.test_fraction,
                         num_workers=self.num_workers, overwrite=self.overwrite)  # fmt: skip
        console.print(f"wrote {len(out['train'])} train and {len(out['test'])} test scene(s) under {self.output}")
        return 0


# ------------------------------------------------------------------------------------- convert / download / depth
def _subcommands(configs: dict):
    """A tyro union with one subcommand per ``name -> dataclass`` entry."""
    return Union[tuple(Annotated[cls, tyro.conf.subcommand(name)] for name, cls in configs.items())]  # type: ignore


def _group(name: str, doc: str, configs: dict, run):
    """A dataclass ``name`` whose single field selects one of ``configs`` as a subcommand; ``main`` calls ``run``."""
    cls = make_dataclass(name, [("command", _subcommands(configs))], namespace={"main": lambda self: run(self.command)})
    cls.__doc__ = doc
    return cls


def _convert_command():
    from zipsplat_ns.data.converters import CONVERT_CONFIGS

    return _group(
        "Convert",
        "Convert a dataset or capture into shards: nerfstudio, colmap, media (images/video), re10k, dl3dv, mipnerf360.",
        CONVERT_CONFIGS,
        lambda cfg: 0 if cfg.run().converted else 1,
    )


def _download_command():
    from zipsplat_ns.data.download import DOWNLOAD_CONFIGS

    return _group(
        "Download",
        "Download a benchmark source (re10k, dl3dv, mipnerf360): resumable, atomic, verified.",
        DOWNLOAD_CONFIGS,
        lambda cfg: cfg.main(),
    )


def _eval_command():
    from zipsplat_ns.eval.runner import EvalCommand

    return EvalCommand


def _reconstruct_command():
    from zipsplat_ns.reconstruct import ReconstructCommand

    return ReconstructCommand


def build_command_type():
    """The top-level union of subcommands (built lazily: the data modules import cv2, PIL, ...)."""
    from zipsplat_ns.data.depth import DepthConfig

    return Union[
        Annotated[Shards, tyro.conf.subcommand("shards")],
        Annotated[Synth, tyro.conf.subcommand("synth")],
        Annotated[_convert_command(), tyro.conf.subcommand("convert")],
        Annotated[_download_command(), tyro.conf.subcommand("download")],
        Annotated[DepthConfig, tyro.conf.subcommand("depth")],
        Annotated[_eval_command(), tyro.conf.subcommand("eval")],
        Annotated[_reconstruct_command(), tyro.conf.subcommand("reconstruct")],
    ]


def entrypoint() -> None:
    """Console-script entry point: parse, run, exit with the command's status; errors print one clear line."""
    # nerfstudio 1.1.5 decorates functions with torch.jit.script at import (reconstruct and eval write / read
    # nerfstudio runs); recent torch deprecates that with a FutureWarning the user can do nothing about.
    warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)
    cmd = tyro.cli(build_command_type(), config=(tyro.conf.OmitSubcommandPrefixes,), prog="zipsplat-ns")
    try:
        code = cmd.main()
    except (FileNotFoundError, FileExistsError, ValueError, RuntimeError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        code = 2
    sys.exit(code)


if __name__ == "__main__":
    entrypoint()
