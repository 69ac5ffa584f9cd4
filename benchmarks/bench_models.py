"""Per model family: multiply-adds per sample, and the forward pass, gradient, single and block Hessian-vector
products over the default data, in seconds and in gradients per vector.

Writes ``benchmarks/results/bench_models.json`` (``bench_models_cuda.json`` with ``--device cuda``):
``{"machine": {...}, "rows": [{"model", "params", "macs_per_sample", "forward_s", "gradient_s", "hvp_s",
"block_s", "block_size", "gradients_per_vector_single", "gradients_per_vector_block", "ns_per_mac_gradient",
"hvp_method", "preferred_block_size", and for explicit products "jvp_hvp_s", "jvp_block_s" (the other formulation)}]}``.
Run: ``python benchmarks/bench_models.py [--repeat 3] [--device cuda]`` (on an accelerator each timing ends with a
synchronisation, and the data lie on the device).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import nn

import hesslib
from hesslib.paper import machine
from hesslib.parameters import check_device

RESULTS = Path(__file__).resolve().parent / "results" / "bench_models.json"


def macs_per_sample(model: nn.Module, input_shape) -> int:
    """Multiply-adds of one forward pass of one sample (Linear and Conv2d layers)."""
    total = 0

    def count(module, args, out):
        nonlocal total
        if isinstance(module, nn.Linear):
            total += module.in_features * module.out_features
        elif isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            total += out[0].numel() * module.in_channels // module.groups * kh * kw

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    with torch.no_grad():
        model(torch.zeros(1, *input_shape))
    for hook in hooks:
        hook.remove()
    return total


def best_of(fn, repeat: int, device: torch.device) -> float:
    """The fastest of ``repeat`` calls after a warm-up, each waited for to its end on ``device``."""
    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()  # warm-up
    synchronize()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--block", type=int, default=4)
    parser.add_argument("--device", default="cpu", help="where the data and the models live, e.g. cpu or cuda")
    args = parser.parse_args()
    try:
        device = torch.device(check_device("--device", args.device))
    except ValueError as exc:
        parser.error(str(exc))
    data = hesslib.load_dataset("mnist5k", limit=4992)
    rows = []
    for name in ("linear", "mlp", "cnn"):
        net = hesslib.make_model(name, data.input_shape, seed=0)
        obj = hesslib.Objective(net, data.X, data.y, batch_size=64, device=device)
        generator = torch.Generator().manual_seed(0)
        V = torch.randn(obj.num_params, args.block, generator=generator).to(obj.device)
        forward = best_of(obj.batch_losses, args.repeat, obj.device)
        gradient = best_of(obj.gradient, args.repeat, obj.device)
        single = best_of(lambda obj=obj, V=V: obj.hvp(V[:, 0]), args.repeat, obj.device)
        block = best_of(lambda obj=obj, V=V: obj.hvp(V), args.repeat, obj.device)
        method = obj.hvp_method
        alternative = {}
        if method == "explicit":  # the formulation not chosen, for comparison
            obj.hvp_method = "jvp"
            alternative = {"jvp_hvp_s": best_of(lambda obj=obj, V=V: obj.hvp(V[:, 0]), args.repeat, obj.device),
                           "jvp_block_s": best_of(lambda obj=obj, V=V: obj.hvp(V), args.repeat, obj.device)}
            obj.hvp_method = method
        macs = macs_per_sample(net, data.input_shape)
        rows.append({"model": name, "params": obj.num_params, "macs_per_sample": macs, "forward_s": forward,
                     "hvp_method": method, "preferred_block_size": obj.preferred_block_size, **alternative,
                     "gradient_s": gradient, "hvp_s": single, "block_s": block, "block_size": args.block,
                     "gradients_per_vector_single": single / gradient,
                     "gradients_per_vector_block": block / args.block / gradient,
                     "ns_per_mac_gradient": gradient / (macs * obj.num_samples) * 1e9})
    mlp = next(r for r in rows if r["model"] == "mlp")
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"mnist5k, {len(data)} samples, {where}; block of {args.block} products")
    print(f"{'model':>7} {'params':>9} {'MACs/sample':>12} {'forward':>9} {'gradient':>9} {'HVP':>9} {'block':>9} "
          f"{'grad/vec 1':>11} {'grad/vec b':>11} {'ns/MAC':>8} {'vs MLP':>7} {'products':>9} {'jvp 1, b':>12}")
    for r in rows:
        print(f"{r['model']:>7} {r['params']:>9,} {r['macs_per_sample']:>12,} {r['forward_s']:8.3f}s "
              f"{r['gradient_s']:8.3f}s {r['hvp_s']:8.3f}s {r['block_s']:8.3f}s "
              f"{r['gradients_per_vector_single']:11.2f} {r['gradients_per_vector_block']:11.2f} "
              f"{r['ns_per_mac_gradient']:8.3f} {r['ns_per_mac_gradient'] / mlp['ns_per_mac_gradient']:6.1f}× "
              f"{r['hvp_method']:>9} "
              + (f"{r['jvp_hvp_s']:5.3f}s {r['jvp_block_s']:5.3f}s" if "jvp_hvp_s" in r else ""))
    results = RESULTS if device.type == "cpu" else RESULTS.with_stem(f"{RESULTS.stem}_{device.type}")
    results.parent.mkdir(parents=True, exist_ok=True)
    on = {"device": where if device.type == "cuda" else device.type}
    results.write_text(json.dumps({"machine": {**machine(), **on}, "rows": rows}, indent=2) + "\n")
    print(f"written {results}")


if __name__ == "__main__":
    main()
