"""Uncertainty benchmark: variance-reduced Monte Carlo and K over batch orders, on the default MLP.

(a) At σ ∈ {0.01, 0.1, 1}: plain Monte Carlo, antithetic pairs, the second-order control variate and both
    together, each with the same number of forward passes (``--samples``); the variance-reduction factor is
    plain s.e.² / new s.e.² (median over k, and its 5–95 % range), i.e. how many times fewer forward passes reach
    the same error. Agreement with plain Monte Carlo is reported as the largest |difference| / combined s.e.
(b) The cost of each estimate: the second-order closed form (one ``projected_hessians`` pass), the estimate exact
    to σ⁴ (that pass plus one ``projected_higher_derivatives`` pass), plain Monte Carlo (``subspace_losses`` for
    the θ), the control variate (both), against one full-data gradient.
(c) The time to compute K for 1,000 random batch orders from the cached [T, N] loss matrix.

Every ratio is against a baseline measured in the same run. Run: ``python benchmarks/bench_uncertainty.py``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import hesslib
from hesslib.estimators import (
    delta_control_variate,
    delta_fourth_order,
    delta_from_curvature,
    delta_from_losses,
    gaussian_thetas,
)
from hesslib.hessian import projected_hessians, projected_higher_derivatives
from hesslib.subspace import subspace_losses


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="mnist5k")
    parser.add_argument("--limit", type=int, default=4992)
    parser.add_argument("--D", type=int, default=10)
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.01, 0.1, 1.0])
    parser.add_argument("--orders", type=int, default=1000)
    parser.add_argument("--tol", type=float, default=0.025)
    args = parser.parse_args()

    exp = hesslib.Experiment(args.dataset, limit=args.limit, model="mlp", progress=False)
    obj, P = exp.objective, exp.basis("hessian", args.D)
    _, grad_s = timed(obj.gradient)
    _, grad_s = timed(obj.gradient)  # warm
    projected_hessians(obj, P)  # warm-up (first vmapped products)
    curvature, curv_s = timed(lambda: projected_hessians(obj, P))
    print(f"{args.dataset}: N = {obj.num_batches}, M = {obj.num_params:,}, D = {args.D}, T = {args.samples}; "
          f"one gradient {grad_s:.3f} s")
    print(f"\n(a) variance-reduction factor (plain s.e.² / new s.e.², same {args.samples} forward passes)")
    print(f"{'sigma':>6} | {'antithetic':>22} | {'control variate':>22} | {'both':>22} | {'max |z| vs plain':>16}")
    costs = {}
    for sigma in args.sigmas:
        thetas = gaussian_thetas(args.D, sigma, args.samples, seed=1)
        losses, mc_s = timed(lambda th=thetas: subspace_losses(obj, P, th))
        plain = delta_from_losses(losses, sigma=sigma)
        anti_thetas = gaussian_thetas(args.D, sigma, args.samples, seed=2, antithetic=True)
        anti_losses = subspace_losses(obj, P, anti_thetas)
        anti = delta_from_losses(anti_losses, sigma=sigma, antithetic=True)
        cv, cv_s = timed(lambda th=thetas, ls=losses, s=sigma: delta_control_variate(ls, th, curvature, sigma=s))
        both = delta_control_variate(anti_losses, anti_thetas, curvature, sigma=sigma, antithetic=True)
        cells, zmax = [], 0.0
        for other in (anti, cv, both):
            factor = plain.stderr**2 / other.stderr**2
            lo, hi = np.quantile(factor, [0.05, 0.95])
            cells.append(f"{np.median(factor):8.3g} ({lo:.2g}–{hi:.2g})")
            zmax = max(zmax, float(np.max(np.abs(other.delta - plain.delta) / np.sqrt(plain.stderr**2
                                                                                     + other.stderr**2))))
        print(f"{sigma:6g} | {cells[0]:>22} | {cells[1]:>22} | {cells[2]:>22} | {zmax:16.2f}")
        costs[sigma] = (mc_s, cv_s)
    _, so_s = timed(lambda: delta_from_curvature(curvature, 1.0, "second_order"))
    higher, higher_s = timed(lambda: projected_higher_derivatives(obj, P))
    _, fo_s = timed(lambda: delta_fourth_order(curvature, higher, 1.0))
    mc_s, cv_s = costs[args.sigmas[-1]]
    print("\n(b) cost, in seconds and in gradients")
    print(f"  second-order estimate: curvature pass {curv_s:.2f} s ({curv_s / grad_s:.1f} gradients) + all-k formula "
          f"{so_s * 1e3:.1f} ms")
    print(f"  estimate exact to σ⁴: the curvature pass + higher-derivative pass {higher_s:.2f} s "
          f"({higher_s / grad_s:.1f} gradients, {higher_s / curv_s:.1f}× the curvature pass) + all-k formula "
          f"{fo_s * 1e3:.1f} ms")
    print(f"  plain Monte Carlo, {args.samples} θ: {mc_s:.2f} s ({mc_s / grad_s:.1f} gradients)")
    print(f"  control variate: the same forward passes + the curvature pass + {cv_s * 1e3:.1f} ms "
          f"({(mc_s + curv_s) / mc_s:.2f}× plain Monte Carlo's time)")

    losses = exp.loss_matrix("hessian", args.D, sigma=1.0, samples=args.samples)
    dist, orders_s = timed(lambda: hesslib.sample_size_distribution(losses, args.tol, orders=args.orders))
    lo, hi = dist.interval(0.9)
    print(f"\n(c) K over {args.orders} batch orders at Δ = {args.tol:g}, σ = 1 from the cached [{args.samples}, "
          f"{obj.num_batches}] matrix: {orders_s:.2f} s ({orders_s / mc_s:.3f}× one Monte Carlo pass); median K "
          f"{dist.median:g}, 90 % {lo:g}–{hi:g}, never settles {dist.never_settles:.0%}")


if __name__ == "__main__":
    main()
