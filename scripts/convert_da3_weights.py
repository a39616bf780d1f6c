#!/usr/bin/env python
"""Convert Depth-Anything-3 (DA3) weights into the ZipSplat backbone initialisation.

Get the DA3 weights from Hugging Face (pick the variant you train with):

    huggingface-cli download depth-anything/DA3-GIANT model.safetensors --local-dir weights/DA3-GIANT
    huggingface-cli download depth-anything/DA3-LARGE model.safetensors --local-dir weights/DA3-LARGE
    huggingface-cli download depth-anything/DA3-BASE  model.safetensors --local-dir weights/DA3-BASE
    huggingface-cli download depth-anything/DA3-SMALL model.safetensors --local-dir weights/DA3-SMALL

Then convert, e.g.:

    python scripts/convert_da3_weights.py --input weights/DA3-GIANT/model.safetensors \
        --variant giant --output weights/da3-giant.safetensors

The leading ``model.`` and every ``pretrained`` component are stripped, only ``backbone.*`` and
``cam_enc.*`` are kept, and ``backbone.`` is prepended, so the keys match the model's
``backbone.backbone.*`` / ``backbone.cam_enc.*``. The embed dim is checked against ``--variant``.
The output is written atomically as ``.safetensors`` (recommended) or as a torch ``.pth``/``.pt``.
"""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import tyro
from rich.console import Console
from rich.markup import escape
from rich.table import Table

try:
    from zipsplat_ns.models.weights import convert_da3_state_dict_with_report, load_state_dict_from_source
except ImportError:  # running from a source checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from zipsplat_ns.models.weights import convert_da3_state_dict_with_report, load_state_dict_from_source


@dataclass
class Args:
    """Convert a DA3 model.safetensors into a ZipSplat backbone initialisation file."""

    input: Path
    """DA3 checkpoint (model.safetensors, or a torch .pth/.pt)."""
    variant: Literal["giant", "large", "base", "small"]
    """DA3 backbone variant (giant 1536, large 1024, base 768, small 384 dims)."""
    output: Path
    """Output file: .safetensors (recommended) or .pth/.pt."""
    allow_pickle: bool = False
    """Allow full unpickling of a torch input checkpoint (only for files you trust)."""
    overwrite: bool = False
    """Replace the output file if it already exists."""


def _unshared(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous tensors that do not share storage (required by safetensors)."""
    seen: set[int] = set()
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        value = value.detach().cpu().contiguous()
        ptr = value.untyped_storage().data_ptr()
        if ptr in seen and value.numel() > 0:
            value = value.clone()
        seen.add(value.untyped_storage().data_ptr())
        out[key] = value
    return out


def save_state_dict_atomic(sd: dict[str, torch.Tensor], output: Path) -> None:
    """Write ``sd`` to ``output`` (.safetensors or .pth/.pt) via a temp file and rename."""
    suffix = output.suffix.lower()
    if suffix not in (".safetensors", ".pth", ".pt"):
        raise SystemExit(f"error: output must end in .safetensors, .pth or .pt, got {str(output)!r}")
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=output.name + ".", suffix=".tmp", dir=output.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        if suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(_unshared(sd), str(tmp), metadata={"format": "pt", "source": "convert_da3_weights"})
        else:
            torch.save(sd, tmp)
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)


def main(args: Args) -> int:
    """Run the conversion and print a summary."""
    console = Console()
    errors = Console(stderr=True)
    if args.output.exists() and not args.overwrite:
        errors.print(f"[red]error:[/red] {escape(str(args.output))} exists; pass --overwrite to replace it")
        return 1
    try:
        sd = load_state_dict_from_source(args.input, allow_pickle=args.allow_pickle)
        result = convert_da3_state_dict_with_report(sd, args.variant)
    except (OSError, ValueError, RuntimeError) as err:
        errors.print(f"[red]error:[/red] {escape(str(err))}")
        return 1
    save_state_dict_atomic(result.state_dict, args.output)

    groups: dict[str, list[int]] = {}
    for _, new in result.renamed:
        head = ".".join(new.split(".")[:2])
        groups.setdefault(head, [0, 0])[0] += 1
    for old in result.dropped:
        parts = [p for p in old.split(".") if p != "pretrained"]
        head = ".".join(parts[1:2] if parts[:1] == ["model"] else parts[:1]) or old
        groups.setdefault(f"{head} (dropped)", [0, 0])[1] += 1

    table = Table(title=escape(f"DA3-{args.variant.upper()} -> {args.output}"))
    table.add_column("group")
    table.add_column("kept", justify="right")
    table.add_column("dropped", justify="right")
    for head, (kept, dropped) in sorted(groups.items()):
        table.add_row(escape(head), str(kept), str(dropped))
    n_params = sum(v.numel() for v in result.state_dict.values())
    table.add_section()
    table.add_row("total", str(len(result.state_dict)), str(len(result.dropped)))
    console.print(table)
    console.print(f"embed dim {result.embed_dim}, {n_params:,} parameters kept; wrote {escape(str(args.output))}")
    return 0


if __name__ == "__main__":
    sys.exit(main(tyro.cli(Args)))
