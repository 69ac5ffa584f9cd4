"""Every adapter of ``benchmarks/bench_eigen.py`` sees the same H on a tiny float64 model.

For each adapter: its product H v equals hesslib's ``Objective.hvp`` and the dense ``torch.func.hessian`` of
L = (1/N) Σ_b mean_{i ∈ b} ℓ_i, and its solver's top eigenvalues match ``eigvalsh`` of that dense H. The data
has a short last batch, so a library weighting batches by their size (or any other loss scaling) fails here,
in seconds, instead of in the ten-minute benchmark. A library's cases are skipped when it is not installed.
"""

from __future__ import annotations

from collections.abc import Callable

import adapters
import pytest
import torch
import torch.nn.functional as F
from adapters import Adapter, Problem, Settings
from torch.func import functional_call, hessian

import hesslib

BATCH_SIZE = 8  # 30 samples: batches of 8, 8, 8 and 6
SOLVER_TOL = 1e-10

# (id, library key or None for hesslib, adapter, d, "LA" largest algebraic or "LM" largest magnitude, rtol of
# the eigenvalues). PyHessian normalises v by ‖v‖ + 1e-6, which biases its vᵀHv by about 2e-6 / λ.
# The spectrum starts 1.54, 0.86, 0.62, 0.52 (smallest −0.44): the power methods solve d = 2 to stay fast.
CASES: list[tuple[str, str | None, Adapter, int, str, float]] = [
    ("hesslib-lanczos", None, adapters.hesslib_eigen("lanczos", SOLVER_TOL), 3, "LA", 1e-7),
    ("hesslib-power", None, adapters.hesslib_eigen("power", SOLVER_TOL), 2, "LM", 1e-7),
    ("pyhessian-power", "pyhessian", adapters.pyhessian_power(1e-12), 2, "LM", 1e-5),
    ("curvlinops-eigsh", "curvlinops", adapters.curvlinops_eigsh(SOLVER_TOL), 3, "LA", 1e-7),
    ("eigenthings-lanczos-ladder", "eigenthings", adapters.eigenthings_lanczos_ladder(SOLVER_TOL), 3, "LA", 1e-7),
    ("eigenthings-lanczos-fixed", "eigenthings", adapters.eigenthings_lanczos_fixed(SOLVER_TOL), 3, "LA", 1e-7),
    ("eigenthings-power", "eigenthings", adapters.eigenthings_power(SOLVER_TOL), 2, "LM", 1e-7),
]
PARAMS = [pytest.param(library, adapter, d, which, rtol, id=name) for name, library, adapter, d, which, rtol in CASES]
ARGS = ("library", "adapter", "d", "which", "rtol")


def require(library: str | None) -> None:
    """Skips the test when the library is not installed."""
    if library is not None:
        pytest.importorskip(adapters.LIBRARIES[library][0])


def settings(d: int) -> Settings:
    return Settings(d=d, seed=0, max_hvps=1000 * d, power_max_hvps=2000 * d)


@pytest.fixture(scope="module")
def problem() -> Problem:
    """A tiny MLP (83 parameters, float64) at its initialisation, 30 samples of 3 classes."""
    generator = torch.Generator().manual_seed(0)
    X = 3 * torch.randn(30, 1, 2, 3, dtype=torch.float64, generator=generator)
    y = torch.randint(0, 3, (30,), generator=generator)
    model = hesslib.make_model("mlp", (1, 2, 3), num_classes=3, hidden=(5, 5), seed=0).double()
    return Problem(model, X, y, BATCH_SIZE)


def dense_hessian(p: Problem, batch_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """The dense Hessian of Σ_b batch_loss(out_b, y_b) at the model's parameters, by ``torch.func.hessian``."""
    named = [(name, q.detach()) for name, q in p.model.named_parameters()]
    w0 = torch.cat([q.reshape(-1) for _, q in named])

    def loss(w: torch.Tensor) -> torch.Tensor:
        parts = w.split([q.numel() for _, q in named])
        params = {name: t.view_as(q) for (name, q), t in zip(named, parts, strict=True)}
        return sum(batch_loss(functional_call(p.model, params, (xb,)), yb) for xb, yb in p.batches)

    return hessian(loss)(w0)


@pytest.fixture(scope="module")
def H(problem: Problem) -> torch.Tensor:
    """The Hessian of the benchmark's loss: every batch's mean cross-entropy weighted 1/N."""
    return dense_hessian(problem, lambda out, y: F.cross_entropy(out, y) / problem.num_batches)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_the_problem_tells_the_weightings_apart(problem: Problem, H: torch.Tensor) -> None:
    """The short last batch makes a size-weighted loss (PyHessian's and curvlinops' "mean") differ from the
    benchmark's, so an adapter that gets the weighting wrong fails the product checks below."""
    assert problem.batches[-1][0].shape[0] < BATCH_SIZE
    assert relative(H, H.T) < 1e-12
    size_weighted = dense_hessian(problem, lambda out, y: F.cross_entropy(out, y, reduction="sum") / 30)
    assert relative(size_weighted, H) > 1e-3
    V = torch.randn(problem.obj.num_params, 2, dtype=torch.float64)
    assert relative(problem.obj.hvp(V), H @ V) < 1e-10


@pytest.mark.parametrize(ARGS, PARAMS)
def test_same_product(problem: Problem, H: torch.Tensor, library: str | None, adapter: Adapter, d: int,
                      which: str, rtol: float) -> None:
    require(library)
    product = adapter(problem, settings(d)).product
    for seed in range(2):
        v = torch.randn(problem.obj.num_params, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
        Hv = product(v).to(torch.float64)
        assert Hv.shape == v.shape
        assert relative(Hv, H @ v) < 1e-8
        assert relative(Hv, problem.obj.hvp(v)) < 1e-8


@pytest.mark.parametrize(ARGS, PARAMS)
def test_same_top_eigenpairs(problem: Problem, H: torch.Tensor, library: str | None, adapter: Adapter, d: int,
                             which: str, rtol: float) -> None:
    require(library)
    spectrum = torch.linalg.eigvalsh(H)
    key = spectrum if which == "LA" else spectrum.abs()
    expected = spectrum[torch.argsort(key, descending=True)[:d]].sort(descending=True).values
    outcome = adapter(problem, settings(d)).solve()
    assert outcome.converged, outcome.info
    eigenvalues = outcome.eigenvalues.to(torch.float64).sort(descending=True).values
    assert eigenvalues.shape == (d,)
    assert torch.allclose(eigenvalues, expected, rtol=rtol, atol=0)
    U = outcome.vectors.to(torch.float64)
    U = U / U.norm(dim=0)
    rayleigh = (U * (H @ U)).sum(0)
    assert ((H @ U - U * rayleigh).norm(dim=0) / rayleigh.abs()).max() < 1e-5
    assert outcome.hvps >= d


def test_fixed_m_counts_its_steps(problem: Problem) -> None:
    require("eigenthings")
    outcome = adapters.eigenthings_lanczos_fixed(1e-4, m=12)(problem, settings(3)).solve()
    assert outcome.hvps == 12


def test_pyhessian_runs_replay() -> None:
    """The split of PyHessian's estimates into runs (no library needed): a run stops when the relative change
    is below tol, returning the estimate before; or after max_iter products, returning the last."""
    estimates = [1.0, 2.0, 2.0, 5.0, 6.0, 7.0]
    assert adapters.pyhessian_runs(estimates, [2.0, 7.0], max_iter=3, tol=1e-3) == [(3, True), (3, False)]
    with pytest.raises(RuntimeError):
        adapters.pyhessian_runs(estimates, [2.0, 6.0], max_iter=3, tol=1e-3)
    with pytest.raises(RuntimeError):
        adapters.pyhessian_runs(estimates, [2.0], max_iter=3, tol=1e-3)
