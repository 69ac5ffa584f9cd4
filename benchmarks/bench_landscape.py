"""Landscape benchmark: Monte Carlo / grid losses and the all-k theory curve against their baselines.

(a) ``subspace_losses`` for 1,024 Monte Carlo θ and a 41×41 grid, against the physical limit (the same number of
    plain forward passes of the model over all the data) and against the original code's way (copy the model
    per θ, then loop over batches), at batch size 64 and at batch size 1 (k counting samples). The original
    way is timed on a few θ and extrapolated linearly (stated in the table).
(b) ``delta_theory`` for every k from one ``projected_hessians`` pass, against re-running the top-D eigen-solve
    on L_k and L_{k+1} for each k (timed for a few k, extrapolated by the measured per-sample cost).

Every ratio is against a baseline measured in the same run; the numbers go to
``benchmarks/results/bench_landscape.json``. Run: ``python benchmarks/bench_landscape.py``.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
from torch.nn.utils import vector_to_parameters

import hesslib
from hesslib.estimators import gaussian_thetas

RESULTS = Path(__file__).resolve().parent / "results" / "bench_landscape.json"


def timed(fn, repeat: int = 1) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def forward_limit(model: torch.nn.Module, X: torch.Tensor, count: int, probe: int = 32) -> float:
    """Seconds for ``count`` plain forward passes over all of X (measured on ``probe`` passes)."""
    with torch.no_grad():
        model(X)
        return timed(lambda: model(X), probe) * count


def original_way(model, obj: hesslib.Objective, P: torch.Tensor, thetas: torch.Tensor) -> torch.Tensor:
    """The original code's evaluation: a model copy per θ, then a Python loop over the batches."""
    B = obj.batch_size
    out = torch.empty(len(thetas), obj.num_batches)
    with torch.no_grad():
        for t, theta in enumerate(thetas):
            net = copy.deepcopy(model)
            vector_to_parameters(obj.params + P @ theta.to(P.dtype), net.parameters())
            for i in range(obj.num_batches):
                Xb, yb = obj.X[i * B:(i + 1) * B], obj.y[i * B:(i + 1) * B]
                out[t, i] = torch.nn.functional.cross_entropy(net(Xb), yb)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="mnist5k")
    parser.add_argument("--limit", type=int, default=4992)
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 256])
    parser.add_argument("--d", type=int, default=10)
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--grid", type=int, default=41)
    parser.add_argument("--probe", type=int, default=8, help="θ evaluated the original way before extrapolating")
    parser.add_argument("--probe-k", type=int, nargs="+", default=[8, 32, 64], help="k for per-k eigen-solves")
    args = parser.parse_args()
    torch.manual_seed(0)
    exp = hesslib.Experiment(args.dataset, limit=args.limit, hidden=tuple(args.hidden), progress=False)
    model, data = exp.net, exp.data
    P = exp.eigenpairs(args.d).eigenvectors
    print(f"# {args.dataset} (n={len(data)}), MLP {args.hidden}, M={exp.objective.num_params}, D={args.d}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")

    print("(a) per-batch losses for many θ")
    print(f"{'workload':<26}{'B':>4}{'N':>6}{'θ':>6}{'hesslib s':>11}{'fwd limit s':>13}{'/limit':>8}"
          f"{'original s':>12}{'orig/hesslib':>14}")
    _, grid = hesslib.grid_thetas(1.0, args.grid)
    mc = gaussian_thetas(args.d, 1.0, args.samples, seed=0)
    rows = []
    for B in (64, 1):
        obj = hesslib.Objective(model, data.X, data.y, batch_size=B)
        for name, thetas, PP in (("Monte Carlo", mc, P), (f"{args.grid}x{args.grid} grid", grid, P[:, :2])):
            hesslib.subspace_losses(obj, PP, thetas[:2])  # warm-up
            ours = timed(lambda: hesslib.subspace_losses(obj, PP, thetas))  # noqa: B023
            limit = forward_limit(model, obj.X, len(thetas))
            probe = thetas[: args.probe]
            original_way(model, obj, PP, probe[:1])  # warm-up
            orig = timed(lambda: original_way(model, obj, PP, probe)) * len(thetas) / len(probe)  # noqa: B023
            print(f"{name:<26}{B:>4}{obj.num_batches:>6}{len(thetas):>6}{ours:>11.2f}{limit:>13.2f}"
                  f"{ours / limit:>8.2f}{orig:>11.1f}*{orig / ours:>14.1f}")
            rows.append({"workload": name, "batch_size": B, "batches": obj.num_batches, "thetas": len(thetas),
                         "seconds": ours, "forward_limit_s": limit, "original_s_extrapolated": orig})
    print("  * original way timed on", args.probe, "θ and extrapolated linearly to all θ\n")

    print("(b) theory curve Δ_k for every k")
    obj = exp.objective
    N = obj.num_batches
    start = time.perf_counter()
    hesslib.delta_theory(obj, P, sigma=1.0, formula="second_order")
    all_k = time.perf_counter() - start
    per_sample = []
    for k in args.probe_k:
        sub = hesslib.Objective(model, data.X[: (k + 1) * 64], data.y[: (k + 1) * 64], batch_size=64)
        t = timed(lambda: hesslib.top_eigenpairs(sub, args.d))  # noqa: B023
        per_sample.append(t / (k + 1))
        print(f"  top-{args.d} eigen-solve on L_{k + 1} ({k + 1} batches): {t:.2f} s")
    # each k needs eigen-solves of L_k and L_{k+1}; cost grows with the data size: Σ_k (k + (k+1)) batches
    cost_per_batch = sum(per_sample) / len(per_sample)
    per_k_total = cost_per_batch * sum(2 * k + 1 for k in range(1, N))
    print(f"{'method':<44}{'seconds':>10}{'ratio':>8}")
    print(f"{'delta_theory, all k from prefix sums':<44}{all_k:>10.2f}{1.0:>8.1f}")
    print(f"{'per-k eigen-solves (Lanczos), extrapolated':<44}{per_k_total:>10.1f}{per_k_total / all_k:>8.0f}")
    targets = per_k_total / all_k >= 100
    print(f"\ntarget all-k theory >= 100x faster than per-k eigen-solves: {'met' if targets else 'NOT met'}")
    from hesslib.paper import machine

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": machine(), "rows": rows,
                                   "theory": {"all_k_s": all_k, "per_k_extrapolated_s": per_k_total}}, indent=2) + "\n")
    print(f"written {RESULTS}")


if __name__ == "__main__":
    main()
