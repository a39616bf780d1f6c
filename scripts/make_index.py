#!/usr/bin/env python
"""Write a benchmark index file (``{scene: {"context": [...], "target": [...]}}``) for any shard directory.

Usage::

    python scripts/make_index.py SHARD_DIR --views 6 --targets 4 --output index.json [--span N] [--min-frames N]

Rule (deterministic, implemented by :func:`zipsplat_ns.eval.benchmarks.make_index`; frame indices are the view order
inside each scene's shard):

- only the first ``--span`` frames of a scene are used when given (all frames otherwise); call that ``n``;
- a scene needs ``n >= views + targets``, ``n >= 2 * views - 1`` and ``n >= --min-frames`` frames, else it is left out
  (and listed on stderr);
- context = ``round(linspace(0, n - 1, views))``: evenly spaced, first and last frame included, ascending;
- targets lie strictly between consecutive context frames and never coincide with one: target ``t`` is the middle
  frame of context gap ``round(linspace(0, views - 2, targets))[t]`` (with more targets than gaps, the gaps are cycled
  and later targets use the gap's quarter points);
- scenes are written in sorted key order, pretty-printed with indent 2 (as the reference's index files).

The result is used with ``zipsplat-ns eval --benchmark custom --index-file FILE --shard-dir SHARD_DIR`` (or with
``--pipeline.datamanager.eval-index-file FILE`` for ``ns-eval``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("shard_dir", type=Path, help="directory with *.tar shards and index.json")
    ap.add_argument("--views", type=int, default=6, help="context views per scene (default 6)")
    ap.add_argument("--targets", type=int, default=4, help="target views per scene (default 4)")
    ap.add_argument("--span", type=int, default=None, help="use only the first N frames of each scene")
    ap.add_argument("--min-frames", type=int, default=0, help="leave out scenes with fewer frames")
    ap.add_argument("--max-scenes", type=int, default=None, help="keep at most this many scenes (sorted key order)")
    ap.add_argument("--output", "-o", type=Path, required=True, help="index JSON to write")
    args = ap.parse_args(argv)

    from zipsplat_ns.data.dataset import ShardDirectory
    from zipsplat_ns.eval.benchmarks import make_index, scene_num_frames, write_index

    entries, skipped = make_index(args.shard_dir, args.views, args.targets, span=args.span)
    if args.min_frames:
        d = ShardDirectory(args.shard_dir)
        for key in list(entries):
            n = scene_num_frames(d, key)
            if n < args.min_frames:
                skipped[key] = f"{n} frames < --min-frames {args.min_frames}"
                del entries[key]
    if args.max_scenes is not None:
        entries = dict(list(entries.items())[: args.max_scenes])
    for key, why in skipped.items():
        print(f"left out {key}: {why}", file=sys.stderr)
    if not entries:
        print(
            f"error: no scene of {args.shard_dir} fits {args.views} context + {args.targets} target views",
            file=sys.stderr,
        )
        return 1
    write_index(entries, args.output)
    print(f"wrote {len(entries)} scene(s) to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
