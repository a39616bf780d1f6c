#!/usr/bin/env python
"""Generate ``tests/data/state_dict_manifest.json`` from the layout rules of the reference doc §7.3.

The manifest is derived from the *documented* rules (key patterns, shapes, which backbone blocks carry qk-norm,
SwiGLU vs Mlp, per-block tensor counts) and the documented totals; it does NOT import or instantiate our model, so
``tests/test_network.py`` comparing our ``state_dict()`` against it is not circular.

Run: ``python scripts/make_state_dict_manifest.py [--output tests/data/state_dict_manifest.json]``
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

# §1.3 variant table (alt_start from the zipsplat factories) and the ZipSplat tap count (3 out layers).
VARIANTS = {
    "small": dict(D=384, depth=12, heads=6, alt=4, ffn="mlp"),
    "base": dict(D=768, depth=12, heads=12, alt=4, ffn="mlp"),
    "large": dict(D=1024, depth=24, heads=16, alt=8, ffn="mlp"),
    "giant": dict(D=1536, depth=40, heads=24, alt=13, ffn="swiglu"),
}
# §7.3 documented totals (params for non-giant variants are given rounded to 0.1M)
DOCUMENTED = {
    "giant": dict(num_tensors=907, num_params=1_447_701_472, params_rounding=1),
    "large": dict(num_tensors=639, num_params=443_500_000, params_rounding=100_000),
    "base": dict(num_tensors=439, num_params=165_400_000, params_rounding=100_000),
    "small": dict(num_tensors=439, num_params=42_400_000, params_rounding=100_000),
}
# §7.3 documented giant per-module parameter counts
GIANT_PREFIX_PARAMS = {
    "backbone.backbone": 1_136_489_216,
    "backbone.cam_enc": 114_533_376,
    "pre_norm_local": 9_216,
    "pre_norm_global": 9_216,
    "downscale": 14_160_384,
    "cross_attention": 85_013_760,
    "self_attention": 85_004_544,
    "color_embed": 75_392,
    "color_cross_attention": 100_352,
    "gaussian_head": 12_306_016,
}
N_TAPS = 3
COLOR = 128
G, C = 32, 23
QK = 64  # qk-norm LayerNorm(head_dim=64) everywhere it exists


def _ln(keys: dict, prefix: str, dim: int) -> None:
    keys[f"{prefix}.weight"] = [dim]
    keys[f"{prefix}.bias"] = [dim]


def _lin(keys: dict, prefix: str, out_f: int, in_f: int) -> None:
    keys[f"{prefix}.weight"] = [out_f, in_f]
    keys[f"{prefix}.bias"] = [out_f]


def _sa_block(keys: dict, p: str, D: int, *, qk_norm: bool, ffn: str) -> None:
    _ln(keys, f"{p}.norm1", D)
    _lin(keys, f"{p}.attn.qkv", 3 * D, D)
    if qk_norm:
        _ln(keys, f"{p}.attn.q_norm", QK)
        _ln(keys, f"{p}.attn.k_norm", QK)
    _lin(keys, f"{p}.attn.proj", D, D)
    keys[f"{p}.ls1.gamma"] = [D]
    keys[f"{p}.ls2.gamma"] = [D]
    _ln(keys, f"{p}.norm2", D)
    if ffn == "swiglu":
        h = (int(4 * D * 2 / 3) + 7) // 8 * 8
        _lin(keys, f"{p}.mlp.w12", 2 * h, D)
        _lin(keys, f"{p}.mlp.w3", D, h)
    else:
        _lin(keys, f"{p}.mlp.fc1", 4 * D, D)
        _lin(keys, f"{p}.mlp.fc2", D, 4 * D)


def _ca_block(keys: dict, p: str, D: int, mlp_hidden: int) -> None:
    for n in ("norm_q", "norm_kv", "norm2"):
        _ln(keys, f"{p}.{n}", D)
    _lin(keys, f"{p}.attn.q_proj", D, D)
    _lin(keys, f"{p}.attn.kv_proj", 2 * D, D)
    _ln(keys, f"{p}.attn.q_norm", QK)
    _ln(keys, f"{p}.attn.k_norm", QK)
    _lin(keys, f"{p}.attn.proj", D, D)
    keys[f"{p}.ls1.gamma"] = [D]
    keys[f"{p}.ls2.gamma"] = [D]
    _lin(keys, f"{p}.mlp.fc1", mlp_hidden, D)
    _lin(keys, f"{p}.mlp.fc2", D, mlp_hidden)


def layout(D: int, depth: int, heads: int, alt: int, ffn: str) -> dict[str, list[int]]:
    keys: dict[str, list[int]] = {}
    bb = "backbone.backbone"
    keys[f"{bb}.cls_token"] = [1, 1, D]
    keys[f"{bb}.camera_token"] = [1, 2, D]
    keys[f"{bb}.pos_embed"] = [1, 37 * 37 + 1, D]
    keys[f"{bb}.patch_embed.proj.weight"] = [D, 3, 14, 14]
    keys[f"{bb}.patch_embed.proj.bias"] = [D]
    assert D // heads == QK
    for i in range(depth):
        _sa_block(keys, f"{bb}.blocks.{i}", D, qk_norm=i >= alt, ffn=ffn)
    _ln(keys, f"{bb}.norm", D)
    ce = "backbone.cam_enc"
    _lin(keys, f"{ce}.pose_branch.fc1", D // 2, 9)
    _lin(keys, f"{ce}.pose_branch.fc2", D, D // 2)
    _ln(keys, f"{ce}.token_norm", D)
    _ln(keys, f"{ce}.trunk_norm", D)
    for j in range(4):
        _sa_block(keys, f"{ce}.trunk.{j}", D, qk_norm=False, ffn="mlp")
    for l in range(N_TAPS):
        _ln(keys, f"pre_norm_local.{l}", D)
        _ln(keys, f"pre_norm_global.{l}", D)
        _lin(keys, f"downscale.{l}", D, 2 * D)
    for l in range(N_TAPS):
        _ca_block(keys, f"cross_attention.{l}", D, 4 * D)
        _sa_block(keys, f"self_attention.{l}", D, qk_norm=True, ffn="mlp")
    keys["color_embed.proj.weight"] = [COLOR, 3, 14, 14]
    keys["color_embed.proj.bias"] = [COLOR]
    _ca_block(keys, "color_cross_attention", COLOR, COLOR)
    H = D + COLOR
    _lin(keys, "gaussian_head.gaussian_head.0.fc1", 2 * H, H)
    _lin(keys, "gaussian_head.gaussian_head.0.fc2", H, 2 * H)
    _lin(keys, "gaussian_head.gaussian_head.1", G * C, H)
    return keys


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", type=Path, default=Path(__file__).resolve().parents[1] / "tests/data/state_dict_manifest.json")
    args = ap.parse_args()
    out: dict = {"source": "reference doc §7.3 layout rules (generated by scripts/make_state_dict_manifest.py)"}
    for name, v in VARIANTS.items():
        keys = layout(**v)
        n_params = sum(math.prod(s) for s in keys.values())
        doc = DOCUMENTED[name]
        assert len(keys) == doc["num_tensors"], (name, len(keys), doc["num_tensors"])
        r = doc["params_rounding"]
        assert round(n_params / r) * r == doc["num_params"], (name, n_params)
        if name == "giant":
            for prefix, expected in GIANT_PREFIX_PARAMS.items():
                got = sum(math.prod(s) for k, s in keys.items() if k.startswith(prefix + "."))
                assert got == expected, (prefix, got, expected)
            # documented per-block tensor counts
            def count(p: str) -> int:
                return sum(1 for k in keys if k.startswith(p + "."))

            assert all(count(f"backbone.backbone.blocks.{i}") == (14 if i < 13 else 18) for i in range(40))
            assert all(count(f"backbone.cam_enc.trunk.{j}") == 14 for j in range(4))
            assert all(count(f"cross_attention.{l}") == 22 and count(f"self_attention.{l}") == 18 for l in range(3))
        out[name] = {
            "documented": doc,
            "num_tensors": len(keys),
            "num_params": n_params,
            "prefix_params": GIANT_PREFIX_PARAMS if name == "giant" else None,
            "keys": keys,
        }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.output}: " + ", ".join(f"{n} {out[n]['num_tensors']} tensors / {out[n]['num_params']:,}" for n in VARIANTS))


if __name__ == "__main__":
    main()
