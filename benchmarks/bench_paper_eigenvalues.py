"""The paper's formula as defined: the top-D eigenvalues of EVERY H_k = (1/k) Σ_{i≤k} h_i, k = 1..N.

Three ways, each started at k = 1 from the top-D eigenvectors of H_N (as ``hesslib.paper_eigenvalues`` is):

* per-k Lanczos (the baseline; ``paper_eigenvalues`` before 0.2.x): ``top_eigenpairs(obj.prefix(k), D)`` for each k,
  warm-started from the eigenvectors of H_{k−1};
* per-k Davidson: the same with ``method="davidson"``, whose basis starts from all D warm-start vectors;
* shared basis: ``running_mean_eigenpairs(obj.batch, obj.prefix, N, D)`` (what ``paper_eigenvalues`` uses), one
  basis for every k whose products are summed batch by batch.

Products are counted in full-data equivalents (a vector times H_k counts k/N, times one batch's h_k 1/N). Every
ratio is against the baseline measured in the same run; eigenvalues are compared with the baseline's. The
numbers go to ``benchmarks/results/bench_paper_eigenvalues.json``.
Run: ``python benchmarks/bench_paper_eigenvalues.py`` (about 7 minutes on 2 cores; ``--batches 20`` for a quick one).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import hesslib
from hesslib.eigen import running_mean_eigenpairs

RESULTS = Path(__file__).resolve().parent / "results" / "bench_paper_eigenvalues.json"
ROWS = ("lanczos per k", "davidson per k", "shared basis")


def per_k(obj: hesslib.Objective, D: int, tol: float, init: torch.Tensor, method: str):
    """Top-D eigenpairs of each H_k in turn, warm-started from H_{k−1}'s; yields (eigenvalues, residual, units)."""
    vectors = init
    for k in range(1, obj.num_batches + 1):
        result = hesslib.top_eigenpairs(obj.prefix(k), D, tol=tol, init=vectors, method=method)
        vectors = result.eigenvectors
        yield result, result.num_hvps * k  # one product with H_k is k one-batch products


def shared_basis(obj: hesslib.Objective, D: int, tol: float, init: torch.Tensor):
    for result in running_mean_eigenpairs(obj.batch, obj.prefix, obj.num_batches, D, tol=tol, init=init):
        yield result, result.num_hvps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="mnist5k")
    parser.add_argument("--limit", type=int, default=4992, help="the first samples (the paper: 78 batches)")
    parser.add_argument("--d", type=int, default=10)
    parser.add_argument("--tol", type=float, default=1e-4)
    parser.add_argument("--batches", type=int, default=None, help="use only the first N batches (default: all)")
    parser.add_argument("--skip", nargs="+", default=[], choices=ROWS[1:], help="rows to leave out")
    args = parser.parse_args()
    exp = hesslib.Experiment(args.dataset, limit=args.limit, progress=False)
    obj = exp.objective if args.batches is None else exp.objective.prefix(args.batches)
    N, D = obj.num_batches, args.d
    init = exp.eigenpairs(D).eigenvectors
    print(f"# {args.dataset}, {exp.model}, M = {obj.num_params:,}, N = {N} batches of {obj.batch_size}, D = {D}, "
          f"tol {args.tol:g}, torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    solvers = {"lanczos per k": lambda: per_k(obj, D, args.tol, init, "lanczos"),
               "davidson per k": lambda: per_k(obj, D, args.tol, init, "davidson"),
               "shared basis": lambda: shared_basis(obj, D, args.tol, init)}
    rows, reference = [], None
    print(f"{'method':<16}{'seconds':>9}{'products':>10}{'worst res':>11}{'all conv':>10}{'max Δλ/λ':>10}"
          f"{'time / baseline':>17}")
    for name in ROWS:
        if name in args.skip:
            continue
        start = time.perf_counter()
        eigenvalues, residuals, units, converged = [], [], 0, True
        for result, cost in solvers[name]():
            eigenvalues.append(result.eigenvalues.double().cpu().numpy())
            residuals.append(result.residuals.max().item())
            units, converged = units + cost, converged and result.converged
        seconds = time.perf_counter() - start
        eigenvalues = np.stack(eigenvalues)
        reference = eigenvalues if reference is None else reference
        difference = float(np.max(np.abs(eigenvalues - reference) / np.abs(reference)))
        row = {"method": name, "seconds": seconds, "full_data_products": units / N,
               "worst_residual": max(residuals), "converged": converged, "max_relative_difference": difference}
        rows.append(row)
        print(f"{name:<16}{seconds:>9.1f}{units / N:>10.0f}{max(residuals):>11.1e}{'yes' if converged else 'NO':>10}"
              f"{difference:>10.1e}{seconds / rows[0]['seconds']:>16.2f}×", flush=True)
    from hesslib.paper import machine

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": machine(), "dataset": args.dataset, "D": D, "tol": args.tol,
                                   "batches": N, "rows": rows}, indent=2) + "\n")
    print(f"\nwritten {RESULTS}")


if __name__ == "__main__":
    main()
