"""Benchmark: the top-D Hessian eigenpairs of the paper's MLP, hesslib against power iteration and published
libraries, in one run and one table. What it measures and how: ``benchmarks/README.md``; the library adapters:
``benchmarks/adapters.py``. Quick run: ``python benchmarks/bench_eigen.py --dataset digits --hidden 32 --d 4
--power-max-hvps 200``.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import math
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import ModuleType

import adapters
import numpy as np
import torch
from adapters import LIBRARIES, Adapter, Outcome, Prepared, Problem, Settings

import hesslib
from hesslib.parameters import check_device


def optional_import(name: str) -> ModuleType | None:
    """The module, or None when it is not installed (or fails to import)."""
    try:
        return importlib.import_module(name)
    except Exception:  # ImportError, or a broken install of one of its dependencies
        return None


def dist_version(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


@dataclass
class Method:
    key: str
    label: str
    tol: float  # the tolerance passed to the method
    target: float  # the residual the row is judged against (= tol, except where tol means something else)
    library: str  # "hesslib" or a key of LIBRARIES
    prepare: Adapter  # builds the operator (timed as setup)


@dataclass
class Row:
    method: Method
    outcome: Outcome
    seconds: float
    setup_seconds: float
    rayleigh: torch.Tensor  # λ = vᵀHv of each returned (normalised) vector, descending
    residuals: torch.Tensor  # ‖Hv − λv‖/|λ|, same order
    same_h: float  # ‖H_method v − H v‖ / ‖H v‖ for a random v: does the method see hesslib's H?

    @property
    def worst(self) -> float:
        return float(self.residuals.max()) if self.residuals.numel() else math.nan


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def honest_residuals(obj: hesslib.Objective, U: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(λ, ‖Hu − λu‖/|λ|) for the normalised columns u of U, with λ = uᵀHu, sorted by λ descending; one
    batched ``obj.hvp`` (not counted, not timed)."""
    if U.dim() != 2 or U.shape[1] == 0:  # e.g. ARPACK gave up before any pair converged
        return torch.empty(0, dtype=torch.float64), torch.empty(0, dtype=torch.float64)
    U = U.to(obj.device, obj.dtype)
    U = U / U.norm(dim=0).clamp_min(torch.finfo(U.dtype).tiny)
    HU = obj.hvp(U)
    lam = (U * HU).sum(0)
    res = (HU - U * lam).norm(dim=0) / lam.abs().clamp_min(torch.finfo(U.dtype).tiny)
    order = torch.argsort(lam, descending=True)
    return lam[order].double(), res[order].double()


# ---- the methods -----------------------------------------------------------------------------------------


def methods(tol: float, power_tol: float, eigenthings_m: int | None = None) -> list[Method]:
    return [
        Method("lanczos", "hesslib lanczos (default)", tol, tol, "hesslib", adapters.hesslib_eigen("lanczos", tol)),
        Method("power-paper", "hesslib power (paper tol)", power_tol, power_tol, "hesslib",
               adapters.hesslib_eigen("power", power_tol)),
        Method("power", "hesslib power", tol, tol, "hesslib", adapters.hesslib_eigen("power", tol)),
        Method("pyhessian", "PyHessian power", tol, tol, "pyhessian", adapters.pyhessian_power(tol)),
        Method("pyhessian-tight", "PyHessian power (tol²)", tol**2, tol, "pyhessian",
               adapters.pyhessian_power(tol**2)),
        Method("curvlinops", "curvlinops + eigsh", tol, tol, "curvlinops", adapters.curvlinops_eigsh(tol)),
        Method("eigenthings-lanczos", "eigenthings lanczos ladder", tol, tol, "eigenthings",
               adapters.eigenthings_lanczos_ladder(tol)),
        Method("eigenthings-lanczos-m", "eigenthings lanczos fixed m", tol, tol, "eigenthings",
               adapters.eigenthings_lanczos_fixed(tol, eigenthings_m)),
        Method("eigenthings-power", "eigenthings power", tol, tol, "eigenthings", adapters.eigenthings_power(tol)),
    ]


NOTES = {
    "lanczos": "block Lanczos, thick restarts, stops on the residual; largest algebraic eigenvalues. Loss: "
               "hesslib.Objective, every batch weighted 1/N (a short last batch too).",
    "power-paper": "power iteration with deflation, one vector at a time, stops on the residual; largest "
                   "magnitude; cap max_hvps // d products per vector (not converged = it hit the cap).",
    "power": "the same at the accuracy-matched tol.",
    "pyhessian": "power iteration, orthonormalising against the found eigenvectors; stops when the eigenvalue "
                 "estimate changes by < tol (NOT the residual), so its residual can be far above tol; largest "
                 "magnitude. Same batches (dataloader=list of batches), double backward per batch; criterion "
                 "scaled by n/(N·|batch|) to undo PyHessian's size weighting (equal batch weights).",
    "pyhessian-tight": "the same with tol² on the eigenvalue change (the change of a Rayleigh quotient is about "
                       "the residual squared), to come near the accuracy-matched residual; judged against tol.",
    "curvlinops": "HessianLinearOperator over the same batches (loss = batch mean CE / N, reduction 'sum' so the "
                  "batches count equally), to_scipy(), scipy eigsh(k=d, which='LA', tol, v0 seeded): ARPACK "
                  "implicitly restarted Lanczos, float64 vectors, float32 products. Setup includes curvlinops' "
                  "determinism check (2 data passes + products), excluded from time and HVPs.",
    "eigenthings-lanczos": "HessianOperator (averages the batches equally, natively hesslib's loss); lanczos() "
                           "is ONE run of max_iter steps, no restarts: run with max_iter = 2d (its default), 4d, "
                           "8d, ... until its residual estimates meet tol; all runs counted. reorthogonalize=True "
                           "forced (its default turns it off above 50 steps).",
    "eigenthings-lanczos-m": "one lanczos() run of m steps (the best case: m known in advance); m from "
                             "--eigenthings-m, or by default the m the ladder ends at, found by running the ladder "
                             "in this row's setup (not timed, not counted; setup time includes it).",
    "eigenthings-power": "deflated power iteration, stops when eigenvalue change AND residual < tol; largest "
                         "magnitude; cap max_hvps // d per vector.",
}


# ---- running ---------------------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (a no-op on the CPU), so that a timing ends when its work does."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_method(method: Method, p: Problem, s: Settings) -> tuple[Outcome, float, float, Prepared]:
    """(outcome, solve seconds, setup seconds, the prepared method) of one seeded run."""
    seed_everything(s.seed)
    gc.collect()
    synchronize(p.obj.device)
    start = time.perf_counter()
    prepared = method.prepare(p, s)
    synchronize(p.obj.device)
    setup = time.perf_counter() - start
    seed_everything(s.seed)
    gc.collect()
    start = time.perf_counter()
    outcome = prepared.solve()
    synchronize(p.obj.device)
    return outcome, time.perf_counter() - start, setup, prepared


def median_seconds(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    fn()  # warm-up
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def fmt_seconds(t: float) -> str:
    return f"{t:.3g}" if t < 100 else f"{t:.0f}"


def fmt_ratio(x: float, bound: bool) -> str:
    return ("≥" if bound else "") + f"{x:.1f}x"


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


# ---- main ------------------------------------------------------------------------------------------------


RESULTS = Path(__file__).resolve().parent / "results" / "bench_eigen.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--dataset", default="mnist5k", help="a hesslib.load_dataset name, e.g. mnist5k or digits")
    parser.add_argument("--limit", type=int, default=None, help="keep the first LIMIT samples (default: all)")
    parser.add_argument("--hidden", type=int, default=256, help="width of both hidden layers of the MLP")
    parser.add_argument("--d", type=int, default=10, help="number of top eigenpairs D")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--tol", type=float, default=1e-4, help="accuracy-matched residual tolerance")
    parser.add_argument("--power-tol", type=float, default=1e-6, help="the paper's power-iteration tolerance")
    parser.add_argument("--power-max-hvps", type=int, default=None,
                        help="HVP cap of the power-iteration rows (default: hesslib's 1000·d)")
    parser.add_argument("--block-size", type=int, default=None,
                        help="block size of hesslib's Lanczos (default: min(d, Objective.preferred_block_size))")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the single-product timings")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eigenthings-m", type=int, default=None,
                        help="Lanczos steps of the 'eigenthings lanczos fixed m' row (default: the m its ladder ends "
                             "at, found in the row's untimed setup)")
    parser.add_argument("--device", default="cpu",
                        help="where the data, the model and hesslib's solves live, e.g. cuda (off the CPU only "
                             "hesslib's rows run: the library adapters are checked on the CPU only)")
    parser.add_argument("--skip", nargs="*", default=[], metavar="ROW",
                        help=f"rows to leave out: {' '.join(m.key for m in methods(1e-4, 1e-6))}")
    args = parser.parse_args(argv)
    if args.d < 1 or args.batch_size < 1 or args.repeats < 1 or args.hidden < 1:
        parser.error("--d, --batch-size, --repeats and --hidden must be >= 1")
    if args.power_max_hvps is not None and args.power_max_hvps < args.d:
        parser.error("--power-max-hvps must be >= d")
    if args.eigenthings_m is not None and args.eigenthings_m < args.d:
        parser.error("--eigenthings-m must be >= d")
    try:
        check_device("--device", args.device)
    except ValueError as exc:
        parser.error(str(exc))
    unknown = set(args.skip) - {m.key for m in methods(1e-4, 1e-6)}
    if unknown:
        parser.error(f"unknown --skip rows: {' '.join(sorted(unknown))}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    seed_everything(args.seed)
    d = args.d
    modules = {key: optional_import(name) for key, (name, _) in LIBRARIES.items()}

    device = torch.device(args.device)
    data = hesslib.load_dataset(args.dataset, limit=args.limit)
    model, record = hesslib.train(args.dataset, model="mlp", limit=args.limit, hidden=(args.hidden, args.hidden))
    model, X, y = model.to(device), data.X.to(device), data.y.to(device)
    problem = Problem(model, X, y, args.batch_size)
    obj = problem.obj
    if not 1 <= d < obj.num_params:
        raise SystemExit(f"--d must be in [1, {obj.num_params - 1}]")
    settings = Settings(d=d, seed=args.seed, max_hvps=1000 * d,
                        power_max_hvps=args.power_max_hvps or 1000 * d, block_size=args.block_size)

    last = problem.num_samples - (problem.num_batches - 1) * args.batch_size
    widths = "-".join(map(str, [math.prod(data.input_shape), args.hidden, args.hidden, data.num_classes]))
    print(f"Top-{d} Hessian eigenpairs: {args.dataset}, n = {problem.num_samples} samples in N = "
          f"{problem.num_batches} batches of {args.batch_size} (last {last}), each batch weighted 1/N")
    print(f"model: MLP {widths}, M = {obj.num_params:,} parameters, {obj.dtype}, train loss "
          f"{record.train_loss:.4f}, L(w*) = {obj.value().item():.4f}")
    print(f"torch {torch.__version__} on {obj.device}, {torch.get_num_threads()} threads; "
          + ", ".join(f"{dist} {dist_version(dist) if modules[key] else 'not installed'}"
                      for key, (_, dist) in LIBRARIES.items()))
    print(f"tol {args.tol:g} (power paper tol {args.power_tol:g}); caps: Lanczos {settings.max_hvps} HVPs, power "
          f"{settings.power_max_hvps} HVPs ({settings.power_max_hvps // d} per vector); hesslib Lanczos block size "
          f"{args.block_size or min(d, obj.preferred_block_size)}, products {obj.hvp_method}; seed {args.seed}")

    chosen = [m for m in methods(args.tol, args.power_tol, args.eigenthings_m) if m.key not in args.skip
              and (m.library == "hesslib" or device.type == "cpu")]
    if device.type != "cpu":
        print(f"on {device.type}: hesslib's rows only (the library adapters are checked on the CPU only)")
    available = [m for m in chosen if m.library == "hesslib" or modules[m.library] is not None]
    missing = [m for m in chosen if m not in available]

    # warm-up: every method once on a tiny problem (same model, 2 batches), to exclude first-call overheads
    tiny = Problem(model, X[: 2 * args.batch_size], y[: 2 * args.batch_size], args.batch_size)
    tiny_settings = Settings(d=min(2, d), seed=args.seed, max_hvps=40, power_max_hvps=20)
    for method in available:
        run_method(method, tiny, tiny_settings)

    generator = torch.Generator().manual_seed(args.seed)
    probe = torch.randn(obj.num_params, generator=generator).to(obj.device, obj.dtype)
    H_probe = obj.hvp(probe)
    rows: list[Row] = []
    for method in available:
        print(f"  running {method.label} (tol {method.tol:g}) ...", file=sys.stderr, flush=True)
        outcome, seconds, setup, prepared = run_method(method, problem, settings)
        rayleigh, residuals = honest_residuals(obj, outcome.vectors)
        same_h = float((prepared.product(probe).to(obj.dtype) - H_probe).norm() / H_probe.norm())
        rows.append(Row(method, outcome, seconds, setup, rayleigh, residuals, same_h))
    print_table(rows, missing, d)
    hvp = hvp_costs(obj, d, args.repeats, args.seed)
    print_ratios(rows, missing)
    write_results(rows, hvp, device)


def write_results(rows: list[Row], hvp: dict, device: torch.device) -> None:
    """benchmarks/results/bench_eigen.json: the machine, one row per method, the product's cost.

    Off the CPU the file is ``bench_eigen_<device type>.json``, and the machine names the device.
    """
    from hesslib.paper import machine

    results = RESULTS if device.type == "cpu" else RESULTS.with_stem(f"{RESULTS.stem}_{device.type}")
    results.parent.mkdir(parents=True, exist_ok=True)
    on = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    data = {"machine": {**machine(), "device": on},
            "rows": [{"method": r.method.label, "key": r.method.key, "tol": r.method.tol, "hvps": int(r.outcome.hvps),
                      "seconds": float(r.seconds), "worst_residual": float(r.worst),
                      "converged": bool(r.outcome.converged)} for r in rows],
            "hvp": hvp}
    results.write_text(json.dumps(data, indent=2) + "\n")
    print(f"\nwritten {results}")


def print_table(rows: list[Row], missing: list[Method], d: int) -> None:
    ref = next((r for r in rows if r.method.key == "lanczos"), None)
    print()
    header = (f"{'method':<27} {'tol':>5} {'HVPs':>6} {'time s':>7} {'s/HVP':>7} {'setup s':>7} {'worst res':>9} "
              f"{'conv':>4} {'res ok':>6} {'λ1':>9} {f'λ{d}':>9} {'Δλ/λ':>7} {'ΔH':>7}")
    print(header)
    print("-" * len(header))
    for r in rows:
        lam = r.rayleigh
        agree = "-"
        if ref is not None and len(lam) == len(ref.rayleigh):
            agree = f"{float(((lam - ref.rayleigh).abs() / ref.rayleigh.abs()).max()):.0e}"
        lam_1 = f"{float(lam[0]):9.5g}" if len(lam) else f"{'-':>9}"
        lam_d = f"{float(lam[d - 1]):9.5g}" if len(lam) >= d else f"{'-':>9}"
        print(f"{r.method.label:<27} {r.method.tol:>5.0e} {r.outcome.hvps:>6} {fmt_seconds(r.seconds):>7} "
              f"{r.seconds / max(r.outcome.hvps, 1):>7.2g} {fmt_seconds(r.setup_seconds):>7} {r.worst:>9.1e} "
              f"{'yes' if r.outcome.converged else 'NO':>4} {'yes' if r.worst < r.method.target else 'NO':>6} "
              f"{lam_1} {lam_d} {agree:>7} {r.same_h:>7.0e}")
    for m in missing:
        print(f"{m.label:<27} not installed ({LIBRARIES[m.library][1]}; pip install -e '.[bench]')")
    print()
    print("HVPs: products of H with one vector over the whole data, counted by the harness. time: the solve only "
          "(setup: building the library's operator), after a warm-up of every method on a tiny problem. worst res: "
          "max over the pairs of ‖Hv − λv‖/|λ| with λ = vᵀHv, recomputed with hesslib's obj.hvp for every method. "
          "conv: the method's own stopping rule was met. res ok: worst res < tol (for PyHessian (tol²): < the "
          "accuracy-matched tol). λ: those Rayleigh quotients, descending. Δλ/λ: max relative difference from "
          "hesslib lanczos's. ΔH: ‖H_method v − H v‖/‖H v‖ for a random v, H = hesslib's (same data and loss).")
    for r in rows:
        info = f" [{r.outcome.info}]" if r.outcome.info else ""
        print(f"  * {r.method.label}{info}: {NOTES[r.method.key]}")


def hvp_costs(obj: hesslib.Objective, d: int, repeats: int, seed: int) -> dict:
    """One batched product of d vectors vs d single products vs one gradient."""
    generator = torch.Generator().manual_seed(seed)
    V = torch.randn(obj.num_params, d, generator=generator).to(obj.device, obj.dtype)
    columns = [V[:, j].contiguous() for j in range(d)]
    t_grad = median_seconds(obj.gradient, repeats, obj.device)
    t_batched = median_seconds(lambda: obj.hvp(V), repeats, obj.device)
    t_single = median_seconds(lambda: [obj.hvp(v) for v in columns], repeats, obj.device)
    per_vector = t_batched / d / t_grad
    print()
    print(f"One product vs one gradient (median of {repeats} runs after a warm-up):")
    print(f"  {'obj.gradient()':<30} {t_grad:9.4f} s   1 gradient")
    print(f"  {f'obj.hvp(V), V of shape [M, {d}]':<30} {t_batched:9.4f} s   {per_vector:.2f} gradients per vector"
          f"   (target ≤ 2: {verdict(per_vector <= 2)})")
    print(f"  {f'{d} x obj.hvp(v)':<30} {t_single:9.4f} s   {t_single / d / t_grad:.2f} gradients per vector"
          f"   (batched: {t_single / t_batched:.1f}x faster)")
    return {"gradient_s": t_grad, "block_s": t_batched, "block_size": d, "gradients_per_vector": per_vector,
            "single_s": t_single / d, "hvp_method": obj.hvp_method}


def print_ratios(rows: list[Row], missing: list[Method]) -> None:
    print()
    ref = next((r for r in rows if r.method.key == "lanczos"), None)
    if ref is None:
        print("Ratios: hesslib lanczos was skipped, nothing to compare.")
        return
    print("Ratios X / hesslib lanczos (> 1: hesslib lanczos uses fewer HVPs / less time):")
    for key in ("power-paper", "power"):
        base = next((r for r in rows if r.method.key == key), None)
        if base is None:
            continue
        bound = not base.outcome.converged  # power stopped at its cap: it needs at least this much
        hvp_ratio = base.outcome.hvps / ref.outcome.hvps
        time_ratio = base.seconds / ref.seconds
        line = (f"  {f'{base.method.label} {base.method.tol:.0e}':<34} HVPs {fmt_ratio(hvp_ratio, bound):>8}"
                f"  time {fmt_ratio(time_ratio, bound):>8}")
        if key == "power-paper":
            line += (f"   targets ≥20x fewer HVPs: {verdict(hvp_ratio >= 20)}, "
                     f"≥10x less time: {verdict(time_ratio >= 10)}")
        if bound:
            line += "   (power hit its cap: lower bounds)"
        print(line)
    library_rows = [r for r in rows if r.method.library != "hesslib"]
    for r in library_rows:
        matched = "accuracy matched" if r.worst < r.method.target else f"NOT accuracy matched: res {r.worst:.0e}"
        print(f"  {r.method.label:<34} HVPs {fmt_ratio(r.outcome.hvps / ref.outcome.hvps, False):>8}"
              f"  time {fmt_ratio(r.seconds / ref.seconds, False):>8}   ({matched})")
    if library_rows:
        slower_than = [r.method.label for r in library_rows if r.seconds <= ref.seconds]
        names = sorted({LIBRARIES[r.method.library][1] for r in library_rows})
        print(f"  target faster than every library row ({', '.join(names)}): {verdict(not slower_than)}"
              + (f" (not faster than: {', '.join(slower_than)})" if slower_than else ""))
    if missing:
        print(f"  not measured (not installed): {', '.join(sorted({LIBRARIES[m.library][1] for m in missing}))}")


if __name__ == "__main__":
    main()
