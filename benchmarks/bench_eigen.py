"""Benchmark: the top-D Hessian eigenpairs of the paper's MLP, hesslib against power iteration and published
libraries, in ONE run and ONE table.

Problem (defaults): ``mnist5k`` (5,000 MNIST images), the MLP 784-256-256-10 trained by
``hesslib.train("mnist5k", model="mlp")`` (cached), D = 10, and the loss L = (1/N) Σ_i ℓ_i over the N
batches of 64 samples in the dataset's fixed order, every batch counting equally (the last, short batch too),
i.e. ``hesslib.Objective(model, X, y, batch_size=64)``.

Rows:

* hesslib ``top_eigenpairs(obj, D, tol=1e-4)`` (block Lanczos, the default);
* hesslib ``method="power"`` at tol 1e-6 (as the original paper) and at tol 1e-4 (accuracy-matched);
* PyHessian (power iteration), curvlinops (``HessianLinearOperator`` + ``scipy.sparse.linalg.eigsh``) and
  hessian-eigenthings (Lanczos and deflated power iteration), when installed (``pip install -e '.[bench]'``).

Every library gets the same batches and the same loss (see the notes the script prints). Timings cover only
the eigen-solve (building a library's operator is timed separately as "setup"); every method is warmed up
once on a tiny problem first. HVPs are counted by the harness for every method. The residual
‖Hv − λv‖/|λ| (λ = vᵀHv, v normalised) is recomputed afterwards for every method in the same way, with
hesslib's ``obj.hvp``, so the comparison is honest.

Then: the cost of one batched ``obj.hvp(V)``, V of shape [M, D], against D single products and one gradient,
and the ratios against power iteration and against each library, with the targets met or not.

Quick run (small and fast): ``python benchmarks/bench_eigen.py --dataset digits --hidden 32 --d 4
--power-max-hvps 200``.
"""

from __future__ import annotations

import argparse
import copy
import gc
import importlib
import math
import random
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from types import ModuleType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import hesslib

# (import name, distribution name) of the compared libraries; each is optional.
LIBRARIES = {
    "pyhessian": ("pyhessian.hessian", "pyhessian"),
    "curvlinops": ("curvlinops", "curvlinops-for-pytorch"),
    "eigenthings": ("hessian_eigenthings", "hessian-eigenthings"),
}


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


# ---- the problem ---------------------------------------------------------------------------------------


class Problem:
    """A model at w*, its data cut into batches in the fixed order, and hesslib's Objective over them."""

    def __init__(self, model: nn.Module, X: torch.Tensor, y: torch.Tensor, batch_size: int) -> None:
        self.model = model.eval()
        self.X, self.y = X, y
        self.batch_size = batch_size
        self.obj = hesslib.Objective(model, X, y, batch_size=batch_size)
        self.batches = list(zip(X.split(batch_size), y.split(batch_size), strict=True))
        self.num_samples = len(X)
        self.num_batches = len(self.batches)


@dataclass
class Settings:
    d: int
    tol: float  # the accuracy-matched tolerance (residual ‖Hv − λv‖/|λ|)
    seed: int
    max_hvps: int  # cap for the Lanczos-type solvers (hesslib's default 1000·d)
    power_max_hvps: int  # cap for the power-iteration solvers (max_hvps // d per vector)
    block_size: int | None = None  # hesslib Lanczos block size (None: its default min(d, 4))
    memo: dict[str, Any] = field(default_factory=dict)  # passes the ladder's max_iter to the fixed-m row


@dataclass
class Outcome:
    """What a method returned: eigenvectors [M, k] and eigenvalues [k] as it reported them, whether its own
    stopping rule was met, and the HVPs the harness counted."""

    vectors: torch.Tensor
    eigenvalues: torch.Tensor
    converged: bool
    hvps: int
    info: str = ""


@dataclass
class Prepared:
    """A method ready to run: ``solve()`` makes the timed run; ``product(v)`` is one uncounted product H v, for a
    flat vector v, by the method's own operator (to check that every library sees the same H)."""

    solve: Callable[[], Outcome]
    product: Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Method:
    key: str
    label: str
    tol: float  # the tolerance passed to the method
    target: float  # the residual the row is judged against (= tol, except where tol means something else)
    library: str  # "hesslib" or a key of LIBRARIES
    prepare: Callable[[Problem, Settings], Prepared]  # builds the operator (timed as setup)


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


# ---- hesslib ---------------------------------------------------------------------------------------------


class CountingOperator:
    """hesslib's Objective with an ``hvp`` that counts the vectors it multiplies."""

    def __init__(self, obj: hesslib.Objective) -> None:
        self.obj = obj
        self.num_params = obj.num_params
        self.dtype = obj.dtype
        self.device = obj.device
        self.count = 0

    def hvp(self, V: torch.Tensor) -> torch.Tensor:
        self.count += 1 if V.dim() == 1 else V.shape[1]
        return self.obj.hvp(V)


def hesslib_method(method: str, tol: float, *, power: bool) -> Callable[[Problem, Settings], Prepared]:
    def prepare(p: Problem, s: Settings) -> Prepared:
        op = CountingOperator(p.obj)

        def solve() -> Outcome:
            op.count = 0
            extra = {} if power or s.block_size is None else {"block_size": s.block_size}
            r = hesslib.top_eigenpairs(op, s.d, method=method, tol=tol, seed=s.seed,
                                       max_hvps=s.power_max_hvps if power else s.max_hvps, **extra)
            if r.num_hvps != op.count:
                raise RuntimeError(f"hesslib reported {r.num_hvps} HVPs, the harness counted {op.count}")
            return Outcome(r.eigenvectors, r.eigenvalues, r.converged, op.count)

        return Prepared(solve, p.obj.hvp)

    return prepare


# ---- PyHessian -------------------------------------------------------------------------------------------


def pyhessian_method(tol: float) -> Callable[[Problem, Settings], Prepared]:
    """PyHessian's ``hessian(model, criterion, dataloader=batches).eigenvalues(maxIter, tol, top_n=d)``.

    PyHessian weights each batch's Hessian by its size (a full-data mean); the criterion is scaled by
    n / (N·|batch|) so that every batch counts 1/N, as in hesslib's loss. Its stopping rule is the relative
    change of the eigenvalue estimate between two iterations (< tol), not the residual.
    """

    def prepare(p: Problem, s: Settings) -> Prepared:
        module = importlib.import_module("pyhessian.hessian")
        n, N = p.num_samples, p.num_batches

        def criterion(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(out, y) * (n / (N * out.shape[0]))

        h = module.hessian(copy.deepcopy(p.model), criterion, dataloader=p.batches, cuda=False)
        max_iter = max(1, s.power_max_hvps // s.d)
        # estimates[j]: the eigenvalue estimate of every product made for the j-th eigenvalue. The index j is
        # read from the one call to ``orthnormal(v, eigenvectors)`` that PyHessian makes per iteration.
        estimates: list[list[float]] = []
        current = [0]
        original_orthnormal = module.orthnormal
        product = h.dataloader_hv_product  # one product over all batches

        def orthnormal(v: list[torch.Tensor], eigenvectors: list[Any]) -> list[torch.Tensor]:
            current[0] = len(eigenvectors)
            return original_orthnormal(v, eigenvectors)

        def counted_product(v: list[torch.Tensor]) -> tuple[float, list[torch.Tensor]]:
            eigenvalue, Hv = product(v)
            while len(estimates) <= current[0]:
                estimates.append([])
            estimates[current[0]].append(eigenvalue)
            return eigenvalue, Hv

        h.dataloader_hv_product = counted_product
        sizes = [q.numel() for q in h.params]

        def flat_product(v: torch.Tensor) -> torch.Tensor:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*create_graph=True.*")
                Hv = product([t.view_as(q) for t, q in zip(v.split(sizes), h.params, strict=True)])[1]
            return torch.cat([t.reshape(-1) for t in Hv])

        def solve() -> Outcome:
            estimates.clear()
            module.orthnormal = orthnormal
            try:
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message=".*create_graph=True.*")
                    values, vectors = h.eigenvalues(maxIter=max_iter, tol=tol, top_n=s.d)
            finally:
                module.orthnormal = original_orthnormal
            stopped = [any(abs(e[i] - e[i - 1]) / (abs(e[i - 1]) + 1e-6) < tol for i in range(1, len(e)))
                       for e in estimates]
            U = torch.stack([torch.cat([t.reshape(-1) for t in vec]) for vec in vectors], 1)
            hvps = sum(len(e) for e in estimates)
            return Outcome(U, torch.tensor(values), all(stopped), hvps,
                           f"max {max(len(e) for e in estimates)} of maxIter={max_iter} per eigenvalue")

        return Prepared(solve, flat_product)

    return prepare


# ---- curvlinops ------------------------------------------------------------------------------------------


class EqualBatchCrossEntropy(nn.Module):
    """The batch's mean cross-entropy divided by the number of batches N, declared ``reduction="sum"`` so that
    curvlinops adds the batch terms unscaled: Σ_i ℓ_i / N, hesslib's loss (curvlinops' own "mean" would
    weight each batch by its size)."""

    reduction = "sum"

    def __init__(self, num_batches: int) -> None:
        super().__init__()
        self.num_batches = num_batches

    def forward(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out, y) / self.num_batches


def curvlinops_method(tol: float) -> Callable[[Problem, Settings], Prepared]:
    """curvlinops' ``HessianLinearOperator`` as a SciPy operator, ``eigsh(op, k=d, which="LA", tol=tol)``
    (ARPACK's implicitly restarted Lanczos; its tol is the same relative residual ‖Hv − λv‖ ≤ tol·|λ|)."""

    def prepare(p: Problem, s: Settings) -> Prepared:
        curvlinops = importlib.import_module("curvlinops")
        from scipy.sparse.linalg import ArpackNoConvergence, eigsh

        model = copy.deepcopy(p.model)
        params = [q for q in model.parameters() if q.requires_grad]
        op = curvlinops.HessianLinearOperator(model, EqualBatchCrossEntropy(p.num_batches), params, p.batches)
        count = [0]
        matmat = op._matmat  # one product over all batches for each column

        def counted_matmat(M: list[torch.Tensor]) -> list[torch.Tensor]:
            count[0] += M[0].shape[-1]
            return matmat(M)

        op._matmat = counted_matmat
        A = op.to_scipy()  # float64 for ARPACK; the products run in the model's float32
        v0 = np.random.default_rng(s.seed).standard_normal(A.shape[0])

        def solve() -> Outcome:
            count[0] = 0
            try:
                values, vectors = eigsh(A, k=s.d, which="LA", tol=tol, v0=v0)
                converged = True
            except ArpackNoConvergence as err:
                values, vectors, converged = err.eigenvalues, err.eigenvectors, False
            return Outcome(torch.from_numpy(vectors.copy()).to(p.obj.dtype), torch.from_numpy(values.copy()),
                           converged, count[0], f"ncv={min(A.shape[0], max(2 * s.d + 1, 20))}")

        sizes = [q.numel() for q in params]

        def flat_product(v: torch.Tensor) -> torch.Tensor:
            blocks = [t.reshape(*q.shape, 1) for t, q in zip(v.split(sizes), params, strict=True)]
            return torch.cat([t.reshape(-1) for t in matmat(blocks)])

        return Prepared(solve, flat_product)

    return prepare


# ---- hessian-eigenthings ---------------------------------------------------------------------------------


def eigenthings_operator(p: Problem) -> tuple[Any, list[int], Callable[[torch.Tensor], torch.Tensor]]:
    """hessian-eigenthings' ``HessianOperator`` over the batches (it averages the batches equally, like
    hesslib), with ``matvec`` counting its products."""
    he = importlib.import_module("hessian_eigenthings")
    op = he.HessianOperator(copy.deepcopy(p.model), p.batches, he.supervised_loss(F.cross_entropy))
    count = [0]
    matvec = op.matvec  # one product over all batches

    def counted_matvec(v: torch.Tensor) -> torch.Tensor:
        count[0] += 1
        return matvec(v)

    op.matvec = counted_matvec
    return op, count, matvec


def eigenthings_lanczos(tol: float, *, ladder: bool) -> Callable[[Problem, Settings], Prepared]:
    """``lanczos(op, k=d, max_iter=m, which="LA", tol=tol, reorthogonalize=True)``: one Lanczos run of m steps,
    no restarts. ``ladder``: m = 2d (its default), 4d, 8d, ... until its residual estimates all meet tol (what
    a user who does not know m pays; all runs counted); else one run with the m the ladder ended at."""

    def prepare(p: Problem, s: Settings) -> Prepared:
        he = importlib.import_module("hessian_eigenthings")
        op, count, matvec = eigenthings_operator(p)
        M = op.size

        def run(m: int) -> Any:
            return he.lanczos(op, k=s.d, max_iter=m, tol=tol, which="LA", reorthogonalize=True, seed=s.seed)

        def solve() -> Outcome:
            count[0] = 0
            if not ladder:
                m = s.memo.get("eigenthings_m", min(2 * s.d, M - 1))
                r = run(m)
                return Outcome(r.eigenvectors.T, r.eigenvalues, bool(r.converged.all()), count[0], f"max_iter={m}")
            m, steps = min(2 * s.d, M - 1), []
            while True:
                r = run(m)
                steps.append(m)
                if bool(r.converged.all()) or m >= M - 1 or count[0] + min(2 * m, M - 1) > s.max_hvps:
                    break
                m = min(2 * m, M - 1)
            s.memo["eigenthings_m"] = m
            return Outcome(r.eigenvectors.T, r.eigenvalues, bool(r.converged.all()), count[0],
                           "max_iter " + "+".join(map(str, steps)))

        return Prepared(solve, matvec)

    return prepare


def eigenthings_power(tol: float) -> Callable[[Problem, Settings], Prepared]:
    """``deflated_power_iteration(op, k=d, max_iter=power_max_hvps // d, tol=tol)``: stops when both the relative
    eigenvalue change and the relative residual are below tol."""

    def prepare(p: Problem, s: Settings) -> Prepared:
        he = importlib.import_module("hessian_eigenthings")
        op, count, matvec = eigenthings_operator(p)
        max_iter = max(1, s.power_max_hvps // s.d)

        def solve() -> Outcome:
            count[0] = 0
            r = he.deflated_power_iteration(op, k=s.d, max_iter=max_iter, tol=tol, seed=s.seed)
            return Outcome(r.eigenvectors.T, r.eigenvalues, bool(r.converged.all()), count[0],
                           f"max_iter={max_iter} per eigenvalue")

        return Prepared(solve, matvec)

    return prepare


# ---- the methods -----------------------------------------------------------------------------------------


def methods(tol: float, power_tol: float) -> list[Method]:
    return [
        Method("lanczos", "hesslib lanczos (default)", tol, tol, "hesslib",
               hesslib_method("lanczos", tol, power=False)),
        Method("power-paper", "hesslib power (paper tol)", power_tol, power_tol, "hesslib",
               hesslib_method("power", power_tol, power=True)),
        Method("power", "hesslib power", tol, tol, "hesslib", hesslib_method("power", tol, power=True)),
        Method("pyhessian", "PyHessian power", tol, tol, "pyhessian", pyhessian_method(tol)),
        Method("pyhessian-tight", "PyHessian power (tol²)", tol**2, tol, "pyhessian", pyhessian_method(tol**2)),
        Method("curvlinops", "curvlinops + eigsh", tol, tol, "curvlinops", curvlinops_method(tol)),
        Method("eigenthings-lanczos", "eigenthings lanczos ladder", tol, tol, "eigenthings",
               eigenthings_lanczos(tol, ladder=True)),
        Method("eigenthings-lanczos-m", "eigenthings lanczos fixed m", tol, tol, "eigenthings",
               eigenthings_lanczos(tol, ladder=False)),
        Method("eigenthings-power", "eigenthings power", tol, tol, "eigenthings", eigenthings_power(tol)),
    ]


NOTES = {
    "lanczos": "block Lanczos, thick restarts, stops on the residual; largest algebraic eigenvalues. Loss: "
               "hesslib.Objective, every batch weighted 1/N (a short last batch too).",
    "power-paper": "power iteration with deflation, one vector at a time, stops on the residual; largest "
                   "magnitude; cap max_hvps // d products per vector (not converged = it hit the cap).",
    "power": "the same at the accuracy-matched tol.",
    "pyhessian": "power iteration, orthonormalising against the found eigenvectors; stops when the eigenvalue "
                 "estimate changes by < tol (NOT the residual), so its residual can be far above tol; largest "
                 "magnitude. Same 64-sample batches (dataloader=list of batches), double backward per batch; "
                 "criterion scaled by n/(N·|batch|) to undo PyHessian's size weighting (equal batch weights).",
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
    "eigenthings-lanczos-m": "one lanczos() run with the max_iter the ladder ended at (the best case: m known in "
                             "advance).",
    "eigenthings-power": "deflated power iteration, stops when eigenvalue change AND residual < tol; largest "
                         "magnitude; cap max_hvps // d per vector.",
}


# ---- running ---------------------------------------------------------------------------------------------


def run_method(method: Method, p: Problem, s: Settings) -> tuple[Outcome, float, float, Prepared]:
    """(outcome, solve seconds, setup seconds, the prepared method) of one seeded run."""
    seed_everything(s.seed)
    gc.collect()
    start = time.perf_counter()
    prepared = method.prepare(p, s)
    setup = time.perf_counter() - start
    seed_everything(s.seed)
    gc.collect()
    start = time.perf_counter()
    outcome = prepared.solve()
    return outcome, time.perf_counter() - start, setup, prepared


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def fmt_seconds(t: float) -> str:
    return f"{t:.3g}" if t < 100 else f"{t:.0f}"


def fmt_ratio(x: float, bound: bool) -> str:
    return ("≥" if bound else "") + f"{x:.1f}x"


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


# ---- main ------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--dataset", default="mnist5k", choices=hesslib.DATASETS)
    parser.add_argument("--limit", type=int, default=None, help="keep the first LIMIT samples (default: all)")
    parser.add_argument("--hidden", type=int, default=256, help="width of both hidden layers of the MLP")
    parser.add_argument("--d", type=int, default=10, help="number of top eigenpairs D")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--tol", type=float, default=1e-4, help="accuracy-matched residual tolerance")
    parser.add_argument("--power-tol", type=float, default=1e-6, help="the paper's power-iteration tolerance")
    parser.add_argument("--power-max-hvps", type=int, default=None,
                        help="HVP cap of the power-iteration rows (default: hesslib's 1000·d)")
    parser.add_argument("--block-size", type=int, default=None,
                        help="block size of hesslib's Lanczos (default: the library's, min(d, 4))")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the single-product timings")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip", nargs="*", default=[], metavar="ROW",
                        help=f"rows to leave out: {' '.join(m.key for m in methods(1e-4, 1e-6))}")
    args = parser.parse_args(argv)
    if args.d < 1 or args.batch_size < 1 or args.repeats < 1 or args.hidden < 1:
        parser.error("--d, --batch-size, --repeats and --hidden must be >= 1")
    if args.power_max_hvps is not None and args.power_max_hvps < args.d:
        parser.error("--power-max-hvps must be >= d")
    unknown = set(args.skip) - {m.key for m in methods(1e-4, 1e-6)}
    if unknown:
        parser.error(f"unknown --skip rows: {' '.join(sorted(unknown))}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    seed_everything(args.seed)
    d = args.d
    modules = {key: optional_import(name) for key, (name, _) in LIBRARIES.items()}

    data = hesslib.load_dataset(args.dataset, limit=args.limit)
    model, record = hesslib.train(args.dataset, model="mlp", limit=args.limit, hidden=(args.hidden, args.hidden))
    problem = Problem(model, data.X, data.y, args.batch_size)
    obj = problem.obj
    if not 1 <= d < obj.num_params:
        raise SystemExit(f"--d must be in [1, {obj.num_params - 1}]")
    settings = Settings(d=d, tol=args.tol, seed=args.seed, max_hvps=1000 * d,
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
          f"{args.block_size or min(d, 4)}; seed {args.seed}")

    chosen = [m for m in methods(args.tol, args.power_tol) if m.key not in args.skip]
    available = [m for m in chosen if m.library == "hesslib" or modules[m.library] is not None]
    missing = [m for m in chosen if m not in available]

    # warm-up: every method once on a tiny problem (same model, 2 batches), to exclude first-call overheads
    tiny = Problem(model, data.X[: 2 * args.batch_size], data.y[: 2 * args.batch_size], args.batch_size)
    tiny_settings = Settings(d=min(2, d), tol=1e-2, seed=args.seed, max_hvps=40, power_max_hvps=20)
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
    hvp_costs(obj, d, args.repeats, args.seed)
    print_ratios(rows, missing)


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


def hvp_costs(obj: hesslib.Objective, d: int, repeats: int, seed: int) -> None:
    """One batched product of d vectors vs d single products vs one gradient."""
    generator = torch.Generator().manual_seed(seed)
    V = torch.randn(obj.num_params, d, generator=generator).to(obj.device, obj.dtype)
    columns = [V[:, j].contiguous() for j in range(d)]
    t_grad = median_seconds(obj.gradient, repeats)
    t_batched = median_seconds(lambda: obj.hvp(V), repeats)
    t_single = median_seconds(lambda: [obj.hvp(v) for v in columns], repeats)
    per_vector = t_batched / d / t_grad
    print()
    print(f"One product vs one gradient (median of {repeats} runs after a warm-up):")
    print(f"  {'obj.gradient()':<30} {t_grad:9.4f} s   1 gradient")
    print(f"  {f'obj.hvp(V), V of shape [M, {d}]':<30} {t_batched:9.4f} s   {per_vector:.2f} gradients per vector"
          f"   (target ≤ 2: {verdict(per_vector <= 2)})")
    print(f"  {f'{d} x obj.hvp(v)':<30} {t_single:9.4f} s   {t_single / d / t_grad:.2f} gradients per vector"
          f"   (batched: {t_single / t_batched:.1f}x faster)")


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
