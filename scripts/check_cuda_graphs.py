"""GPU check of ``cuda_graphs``: the graphed backbone and LPIPS give the eager training step's losses and gradients.

Three copies of one randomly initialised model (same seed): two eager (their difference is the run-to-run noise of
the step: gsplat's backward and some attention kernels accumulate with atomics) and one with ``cuda_graphs=True``.
All three take the same batches and the same per-step compression / priors draws, over several batch layouts and
back (graphs are captured per layout and priors on/off, then replayed), with priors on some steps. After each step
the first eager copy takes an AdamW step and its weights are copied *in place* into the other two, so every step
starts from identical weights (the graphs must see the in-place updates) and the differences are one step's noise,
not diverged trajectories. Reported per step: each copy's loss, and the largest gradient difference relative to the
largest gradient, eager vs eager and eager vs graphed. Passes when graphed vs eager stays within 4x the eager noise
(plus a small floor) on every step.

    python scripts/check_cuda_graphs.py --output $OUT/check_cuda_graphs.json [--variant small]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import install_random_lpips, make_batch  # noqa: E402


def build(variant: str, cuda_graphs: bool, device: torch.device):
    from nerfstudio.data.scene_box import SceneBox

    from zipsplat_ns.models.zipsplat_model import ZipSplatModelConfig

    torch.manual_seed(0)
    cfg = ZipSplatModelConfig(variant=variant, precision="amp-bf16", renderer="gsplat", priors_probability=0.5,
                              total_steps=450_000, cuda_graphs=cuda_graphs)  # fmt: skip
    model = cfg.setup(scene_box=SceneBox(aabb=torch.tensor([[-1.0] * 3, [1.0] * 3])), num_train_data=1, metadata={},
                      device=str(device)).to(device)  # fmt: skip
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05, fused=True)
    return model, opt


def step(model, opt, inputs, batch, i: int):
    model.zero_grad(set_to_none=True)
    model.update_to_step(i)
    out = model(inputs)
    metrics = model.get_metrics_dict(out, batch)
    loss = sum(model.get_loss_dict(out, batch, metrics).values())
    loss.backward()
    grads = {n: p.grad.detach().float().clone() for n, p in model.named_parameters() if p.grad is not None}
    if opt is not None:
        opt.step()
    return float(loss.detach()), grads, float(out["priors"]), float(out["compression"])


@torch.no_grad()
def copy_weights(src, dst) -> None:
    """In place (the graphed copy's captures point at its parameters' storage)."""
    for (n, a), (m, b) in zip(src.named_parameters(), dst.named_parameters()):
        assert n == m
        b.copy_(a)


def rel_diff(a: dict, b: dict) -> float:
    if set(a) != set(b):
        return float("inf")
    scale = max(float(g.abs().max()) for g in a.values())
    return max(float((a[n] - b[n]).abs().max()) for n in a) / max(scale, 1e-30)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output", type=Path, default=Path("check_cuda_graphs.json"))
    ap.add_argument("--variant", default="small")
    ap.add_argument("--layouts", nargs="+", default=["4x6", "4x6", "2x6", "4x6", "4x6", "1x24", "4x6"])
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("check_cuda_graphs.py needs a CUDA GPU", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    install_random_lpips(device)  # the comparison needs no ImageNet weights
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    copies = {name: build(args.variant, graphs, device) for name, graphs in
              (("eager_a", False), ("eager_b", False), ("graphed", True))}  # fmt: skip
    copies = {k: (m, o if k == "eager_a" else None) for k, (m, o) in copies.items()}  # one optimizer: eager_a's
    for model, _ in copies.values():
        model.seed_rng(7)
    rows = []
    for i, layout in enumerate(args.layouts):
        B, V = (int(x) for x in layout.split("x"))
        inputs, batch = make_batch(B, V, 4, device, seed=100 + i)
        res = {name: step(m, o, inputs, batch, i) for name, (m, o) in copies.items()}
        for name in ("eager_b", "graphed"):
            copy_weights(copies["eager_a"][0], copies[name][0])
        noise = rel_diff(res["eager_a"][1], res["eager_b"][1])
        diff = rel_diff(res["eager_a"][1], res["graphed"][1])
        rows.append({
            "step": i, "layout": layout, "priors": res["eager_a"][2], "compression": res["eager_a"][3],
            "priors_match": len({r[2] for r in res.values()}) == 1,
            "loss": {k: r[0] for k, r in res.items()},
            "grad_rel_diff_eager_vs_eager": noise, "grad_rel_diff_eager_vs_graphed": diff,
            "ok": diff <= 4 * noise + 1e-4 and len({r[2] for r in res.values()}) == 1,
        })  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    graphed = copies["graphed"][0].net._graphed_vit
    report = {
        "what": "cuda_graphs=True vs eager: losses and gradients of the full training step, same weights and draws",
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "variant": args.variant,
        "captures_vit": graphed.captures,
        "captures_lpips": sum(g.captures for g in copies["graphed"][0]._lpips_graphs.values()),
        "layouts_captured": len(graphed._graphs),
        "steps": rows,
        "ok": all(r["ok"] for r in rows) and graphed.captures >= 2
              and sum(g.captures for g in copies["graphed"][0]._lpips_graphs.values()) >= 2,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k != "steps"}))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
