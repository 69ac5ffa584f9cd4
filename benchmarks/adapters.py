"""One adapter per eigen-solver compared in ``bench_eigen.py``: hesslib and the published libraries.

An adapter is ``prepare(problem, settings) -> Prepared``: it builds the library's operator over the problem's
batches (timed as setup) and returns ``solve()`` (the timed run) and ``product(v)`` (one uncounted H v, to check
that the library sees hesslib's H). Products are counted by wrapping the operator or function the adapter
hands to the solver, never by patching a library's internals. Libraries are imported inside the adapters, so
this module imports without the ``bench`` extra; ``tests/cross_library`` checks every adapter on a tiny model.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import hesslib

# key -> (module imported by the adapters, distribution on PyPI) of each optional library
LIBRARIES = {
    "pyhessian": ("pyhessian.hessian", "pyhessian"),
    "curvlinops": ("curvlinops", "curvlinops-for-pytorch"),
    "eigenthings": ("hessian_eigenthings", "hessian-eigenthings"),
}


class Problem:
    """A model at w*, its data cut into batches in the fixed order, and hesslib's Objective over them.

    The loss is L = (1/N) Σ_b mean_{i ∈ b} ℓ_i over the N batches (a short last batch counts as much as the others).
    """

    def __init__(self, model: nn.Module, X: torch.Tensor, y: torch.Tensor, batch_size: int) -> None:
        self.model = model.eval()
        self.obj = hesslib.Objective(model, X, y, batch_size=batch_size)
        self.batches = list(zip(X.split(batch_size), y.split(batch_size), strict=True))
        self.num_samples = len(X)
        self.num_batches = len(self.batches)


@dataclass(frozen=True)
class Settings:
    d: int  # number of top eigenpairs
    seed: int
    max_hvps: int  # cap of the Lanczos-type solvers
    power_max_hvps: int  # cap of the power-iteration solvers (power_max_hvps // d per vector)
    block_size: int | None = None  # hesslib's Lanczos block size (None: its default)


@dataclass
class Outcome:
    """What a solver returned: eigenvectors [M, k], eigenvalues [k], whether its own stopping rule was met, and
    the products the adapter counted."""

    vectors: torch.Tensor
    eigenvalues: torch.Tensor
    converged: bool
    hvps: int
    info: str = ""


@dataclass
class Prepared:
    solve: Callable[[], Outcome]
    product: Callable[[torch.Tensor], torch.Tensor]  # flat v [M] -> H v [M], uncounted


Adapter = Callable[[Problem, Settings], Prepared]


# ---- hesslib ---------------------------------------------------------------------------------------------


class CountingOperator:
    """hesslib's Objective with an ``hvp`` that counts the vectors it multiplies."""

    def __init__(self, obj: hesslib.Objective) -> None:
        self.obj = obj
        self.num_params = obj.num_params
        self.dtype = obj.dtype
        self.device = obj.device
        self.preferred_block_size = obj.preferred_block_size  # the solver's default block, as for the Objective
        self.count = 0

    def hvp(self, V: torch.Tensor) -> torch.Tensor:
        self.count += 1 if V.dim() == 1 else V.shape[1]
        return self.obj.hvp(V)


def hesslib_eigen(method: str, tol: float) -> Adapter:
    """``hesslib.top_eigenpairs(op, d, method=method, tol=tol)`` on a counting wrapper of the Objective."""
    power = method == "power"

    def prepare(p: Problem, s: Settings) -> Prepared:
        op = CountingOperator(p.obj)

        def solve() -> Outcome:
            op.count = 0
            extra = {} if power or s.block_size is None else {"block_size": s.block_size}
            r = hesslib.top_eigenpairs(op, s.d, method=method, tol=tol, seed=s.seed,
                                       max_hvps=s.power_max_hvps if power else s.max_hvps, **extra)
            if r.num_hvps != op.count:
                raise RuntimeError(f"hesslib reported {r.num_hvps} HVPs, the adapter counted {op.count}")
            return Outcome(r.eigenvectors, r.eigenvalues, r.converged, op.count)

        return Prepared(solve, p.obj.hvp)

    return prepare


# ---- PyHessian -------------------------------------------------------------------------------------------


@contextmanager
def quiet() -> Iterator[None]:
    """Silences PyHessian's ``backward(create_graph=True)`` warning (one per product)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*create_graph=True.*")
        yield


def pyhessian_runs(estimates: list[float], values: list[float], max_iter: int, tol: float) -> list[tuple[int, bool]]:
    """Split PyHessian's eigenvalue estimates (one per product, in call order) into its runs, one per returned
    eigenvalue, by replaying its documented stopping rule (relative change of the estimate < tol, or maxIter
    products): (products, rule met) per run. Raises if the replay does not give back the returned eigenvalues."""
    runs: list[tuple[int, bool]] = []
    i = 0
    for value in values:
        start, stopped = i, False
        while i < len(estimates) and i - start < max_iter:
            i += 1
            if i - start >= 2:
                previous, current = estimates[i - 2], estimates[i - 1]
                if abs(previous - current) / (abs(previous) + 1e-6) < tol:
                    stopped = True
                    break
        if i == start or value != estimates[i - 2 if stopped else i - 1]:
            raise RuntimeError("PyHessian's power iteration no longer follows the stopping rule this adapter replays")
        runs.append((i - start, stopped))
    if i != len(estimates):
        raise RuntimeError(f"PyHessian made {len(estimates)} products, the replay of its runs accounts for {i}")
    return runs


def pyhessian_power(tol: float) -> Adapter:
    """``pyhessian.hessian(model, criterion, dataloader=batches).eigenvalues(maxIter, tol, top_n=d)``.

    PyHessian weights each batch by its size; the criterion is scaled by n / (N·|batch|) so that every batch
    counts 1/N. Products are counted by wrapping ``dataloader_hv_product`` (a public method) on the instance.
    """

    def prepare(p: Problem, s: Settings) -> Prepared:
        from pyhessian.hessian import hessian

        n, N = p.num_samples, p.num_batches

        def criterion(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(out, y) * (n / (N * out.shape[0]))

        h = hessian(copy.deepcopy(p.model), criterion, dataloader=p.batches, cuda=False)
        product = h.dataloader_hv_product  # one product over all batches: (vᵀHv, Hv), lists of tensors
        estimates: list[float] = []

        def counted_product(v: list[torch.Tensor]) -> tuple[float, list[torch.Tensor]]:
            eigenvalue, Hv = product(v)
            estimates.append(eigenvalue)
            return eigenvalue, Hv

        h.dataloader_hv_product = counted_product
        max_iter = max(1, s.power_max_hvps // s.d)
        sizes = [q.numel() for q in h.params]

        def flat_product(v: torch.Tensor) -> torch.Tensor:
            with quiet():
                Hv = product([t.view_as(q) for t, q in zip(v.split(sizes), h.params, strict=True)])[1]
            return torch.cat([t.reshape(-1) for t in Hv])

        def solve() -> Outcome:
            estimates.clear()
            with quiet():
                values, vectors = h.eigenvalues(maxIter=max_iter, tol=tol, top_n=s.d)
            runs = pyhessian_runs(estimates, values, max_iter, tol)
            U = torch.stack([torch.cat([t.reshape(-1) for t in vec]) for vec in vectors], 1)
            return Outcome(U, torch.tensor(values, dtype=torch.float64), all(ok for _, ok in runs), len(estimates),
                           f"max {max(k for k, _ in runs)} of maxIter={max_iter} per eigenvalue")

        return Prepared(solve, flat_product)

    return prepare


# ---- curvlinops ------------------------------------------------------------------------------------------


class EqualBatchCrossEntropy(nn.Module):
    """The batch's mean cross-entropy divided by the number of batches N, declared ``reduction="sum"`` so that
    curvlinops adds the batch terms unscaled: Σ_b mean_b ℓ / N, hesslib's loss (curvlinops' own "mean" would
    weight each batch by its size)."""

    reduction = "sum"

    def __init__(self, num_batches: int) -> None:
        super().__init__()
        self.num_batches = num_batches

    def forward(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out, y) / self.num_batches


def counting_linear_operator(A: Any) -> tuple[Any, list[int]]:
    """A SciPy LinearOperator that forwards to A and counts the vectors it multiplies: (operator, [count])."""
    from scipy.sparse.linalg import LinearOperator

    count = [0]

    def matvec(x: np.ndarray) -> np.ndarray:
        count[0] += 1
        return A.matvec(x)

    def matmat(X: np.ndarray) -> np.ndarray:
        count[0] += X.shape[1]
        return A.matmat(X)

    return LinearOperator(A.shape, matvec=matvec, rmatvec=matvec, matmat=matmat, dtype=A.dtype), count


def curvlinops_eigsh(tol: float) -> Adapter:
    """curvlinops' ``HessianLinearOperator(...).to_scipy()`` and ``scipy.sparse.linalg.eigsh(k=d, which="LA",
    tol=tol)`` (ARPACK; its tol is the relative residual). Products are counted by a SciPy operator wrapped
    around ``to_scipy()``'s, the one handed to eigsh."""

    def prepare(p: Problem, s: Settings) -> Prepared:
        from curvlinops import HessianLinearOperator
        from scipy.sparse.linalg import ArpackNoConvergence, eigsh

        model = copy.deepcopy(p.model)
        params = [q for q in model.parameters() if q.requires_grad]
        A = HessianLinearOperator(model, EqualBatchCrossEntropy(p.num_batches), params, p.batches).to_scipy()
        counted, count = counting_linear_operator(A)  # float64 for ARPACK; products in the model's dtype
        v0 = np.random.default_rng(s.seed).standard_normal(A.shape[0])

        def solve() -> Outcome:
            count[0] = 0
            try:
                values, vectors = eigsh(counted, k=s.d, which="LA", tol=tol, v0=v0)
                converged = True
            except ArpackNoConvergence as err:
                values, vectors, converged = err.eigenvalues, err.eigenvectors, False
            return Outcome(torch.from_numpy(vectors.copy()), torch.from_numpy(values.copy()), converged, count[0],
                           f"ncv={min(A.shape[0], max(2 * s.d + 1, 20))}")

        def flat_product(v: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(A.matvec(v.detach().cpu().double().numpy()))

        return Prepared(solve, flat_product)

    return prepare


# ---- hessian-eigenthings ---------------------------------------------------------------------------------


def eigenthings_operators(p: Problem) -> tuple[Any, Any, list[int]]:
    """hessian-eigenthings' ``HessianOperator`` over the batches (it averages them equally, like hesslib) and a
    ``LambdaOperator`` around it that counts its products: (operator, counting operator, [count])."""
    import hessian_eigenthings as he

    op = he.HessianOperator(copy.deepcopy(p.model), p.batches, he.supervised_loss(F.cross_entropy))
    count = [0]

    def matvec(v: torch.Tensor) -> torch.Tensor:
        count[0] += 1
        return op.matvec(v)

    return op, he.LambdaOperator(matvec, size=op.size, device=op.device, dtype=op.dtype), count


def eigenthings_ladder(counted: Any, count: list[int], tol: float, s: Settings) -> tuple[Any, list[int]]:
    """``lanczos(op, k=d, max_iter=m, which="LA", tol=tol, reorthogonalize=True)`` with m = 2d (its default), 4d,
    8d, ... until its residual estimates all meet tol, m reaches M - 1, or the next run would pass max_hvps:
    (the last result, the m of every run)."""
    import hessian_eigenthings as he

    M, start = counted.size, count[0]
    m, steps = min(2 * s.d, M - 1), []
    while True:
        r = he.lanczos(counted, k=s.d, max_iter=m, tol=tol, which="LA", reorthogonalize=True, seed=s.seed)
        steps.append(m)
        if bool(r.converged.all()) or m >= M - 1 or count[0] - start + min(2 * m, M - 1) > s.max_hvps:
            return r, steps
        m = min(2 * m, M - 1)


def eigenthings_lanczos_ladder(tol: float) -> Adapter:
    """The ladder of ``lanczos`` runs (what a user who does not know m pays; every run counted)."""

    def prepare(p: Problem, s: Settings) -> Prepared:
        op, counted, count = eigenthings_operators(p)

        def solve() -> Outcome:
            count[0] = 0
            r, steps = eigenthings_ladder(counted, count, tol, s)
            return Outcome(r.eigenvectors.T, r.eigenvalues, bool(r.converged.all()), count[0],
                           "max_iter " + "+".join(map(str, steps)))

        return Prepared(solve, op.matvec)

    return prepare


def eigenthings_lanczos_fixed(tol: float, m: int | None = None) -> Adapter:
    """One ``lanczos`` run of m steps (the best case: m known in advance). m = None: the m the ladder ends at,
    found during setup by running the ladder (not timed, not counted)."""

    def prepare(p: Problem, s: Settings) -> Prepared:
        import hessian_eigenthings as he

        op, counted, count = eigenthings_operators(p)
        if m is None:
            steps = eigenthings_ladder(counted, count, tol, s)[1][-1]
        else:
            steps = min(max(m, s.d), counted.size - 1)

        def solve() -> Outcome:
            count[0] = 0
            r = he.lanczos(counted, k=s.d, max_iter=steps, tol=tol, which="LA", reorthogonalize=True, seed=s.seed)
            return Outcome(r.eigenvectors.T, r.eigenvalues, bool(r.converged.all()), count[0],
                           f"max_iter={steps}" + (" (from the setup's ladder)" if m is None else ""))

        return Prepared(solve, op.matvec)

    return prepare


def eigenthings_power(tol: float) -> Adapter:
    """``deflated_power_iteration(op, k=d, max_iter=power_max_hvps // d, tol=tol)``: stops when both the relative
    eigenvalue change and the relative residual are below tol."""

    def prepare(p: Problem, s: Settings) -> Prepared:
        import hessian_eigenthings as he

        op, counted, count = eigenthings_operators(p)
        max_iter = max(1, s.power_max_hvps // s.d)

        def solve() -> Outcome:
            count[0] = 0
            r = he.deflated_power_iteration(counted, k=s.d, max_iter=max_iter, tol=tol, seed=s.seed)
            return Outcome(r.eigenvectors.T, r.eigenvalues, bool(r.converged.all()), count[0],
                           f"max_iter={max_iter} per eigenvalue")

        return Prepared(solve, op.matvec)

    return prepare
