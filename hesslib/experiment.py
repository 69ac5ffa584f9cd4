"""One configured experiment with every expensive step cached, so notebooks share work instead of repeating it.

An :class:`Experiment` trains (or loads) w*, builds the :class:`~hesslib.hessian.Objective` in the fixed batch
order, and memoises eigenpairs, projected curvature and loss matrices under ``cache_dir``, keyed by the full
configuration (training, analysis batch size, directions, σ, samples, seeds, library version).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .cache import DEFAULT_CACHE_DIR, cached
from .data import load_dataset
from .eigen import EigenResult, top_eigenpairs
from .estimators import DeltaCurve, delta_from_losses, gaussian_thetas, theory_from_curvature
from .hessian import Objective, ProjectedCurvature, projected_hessians
from .subspace import grid_thetas, random_directions, subspace_losses
from .training import train

DIRECTIONS = ("hessian", "random")


def project_root(start: str | Path | None = None) -> Path:
    """The folder holding ``pyproject.toml`` above ``start`` (default: the current directory), so notebooks run
    the same from ``notebooks/`` (JupyterLab) and from the repository root (papermill)."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").exists() and (folder / "hesslib").is_dir():
            return folder
    return here


@dataclass
class Experiment:
    """Data, model and training settings (``train_*`` for the optimiser) and the analysis batch size B."""

    dataset: str = "mnist5k"
    limit: int | None = None
    model: str = "mlp"
    hidden: tuple[int, ...] = (256, 256)
    channels: tuple[int, ...] = (8, 16)
    epochs: int = 10
    lr: float = 1e-3
    train_batch_size: int = 64
    seed: int = 0
    batch_size: int = 64
    device: str = "cpu"
    root: str | Path = "data"
    cache_dir: str | Path | None = DEFAULT_CACHE_DIR
    progress: bool = True
    net: torch.nn.Module = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.hidden, self.channels = tuple(self.hidden), tuple(self.channels)
        self.net, self.record = train(
            self.dataset, model=self.model, limit=self.limit, root=self.root, hidden=self.hidden,
            channels=self.channels, lr=self.lr, epochs=self.epochs, batch_size=self.train_batch_size,
            seed=self.seed, device=self.device, cache_dir=self.cache_dir, progress=self.progress,
        )
        self.data = load_dataset(self.dataset, root=self.root, limit=self.limit)
        self.objective = Objective(self.net, self.data.X, self.data.y, batch_size=self.batch_size, device=self.device)

    @property
    def config(self) -> dict:
        skip = {"net", "root", "cache_dir", "progress"}
        config = {k: v for k, v in asdict(self).items() if k not in skip}
        config["limit"] = len(self.data)
        return config

    def _cached(self, kind: str, extra: dict, compute):
        if "kind" in extra and extra["kind"] not in DIRECTIONS:
            raise ValueError(f"direction kind must be one of {DIRECTIONS}, got {extra['kind']!r}")
        return cached(kind, {**self.config, **extra}, compute, cache_dir=self.cache_dir)

    # ---- directions ------------------------------------------------------------------------------------
    def eigenpairs(self, d: int, *, tol: float = 1e-4, method: str = "lanczos", seed: int = 0) -> EigenResult:
        """Top-d eigenpairs of H_N(w*) (cached)."""
        return self._cached("eigen", dict(d=d, tol=tol, method=method, eig_seed=seed), lambda: top_eigenpairs(
            self.objective, d, tol=tol, method=method, seed=seed, progress=self.progress))

    def directions(self, kind: str, D: int, *, seed: int = 0, orthonormalize: bool = True) -> torch.Tensor:
        """P [M, D]: the top-D Hessian eigenvectors, or filter-normalised random directions (orthonormalised by
        default, so both kinds have unit-norm, orthogonal columns and σ means the same step length)."""
        if kind not in DIRECTIONS:
            raise ValueError(f"direction kind must be one of {DIRECTIONS}, got {kind!r}")
        if kind == "hessian":
            return self.eigenpairs(D).eigenvectors
        return random_directions(self.objective, D, seed=seed, orthonormalize=orthonormalize)

    # ---- landscapes and estimators ---------------------------------------------------------------------
    def loss_matrix(self, kind: str, D: int, *, sigma: float, samples: int, seed: int = 0) -> torch.Tensor:
        """[T, N] per-batch losses ℓ_i(w* + Pθ_t) for T = ``samples`` Gaussian θ (cached)."""
        thetas = gaussian_thetas(D, sigma, samples, seed=seed)
        return self._cached("losses", dict(kind=kind, D=D, sigma=sigma, samples=samples, mc_seed=seed),
                            lambda: subspace_losses(self.objective, self.directions(kind, D, seed=seed), thetas,
                                                    progress=self.progress).cpu())

    def monte_carlo(self, kind: str, D: int, *, sigma: float, samples: int, seed: int = 0) -> DeltaCurve:
        """Monte Carlo Δ_k from the cached loss matrix."""
        delta, stderr = delta_from_losses(self.loss_matrix(kind, D, sigma=sigma, samples=samples, seed=seed))
        k = np.arange(1, self.objective.num_batches)
        meta = {"samples": samples, "seed": seed, "D": D, "directions": kind}
        return DeltaCurve(k, delta, stderr, "Monte Carlo", float(sigma), meta)

    def curvature(self, kind: str, D: int, *, seed: int = 0) -> ProjectedCurvature:
        """Per-batch ℓ_i(w*), Pᵀ∇ℓ_i(w*), Pᵀ∇²ℓ_i(w*)P (cached)."""
        return self._cached("curvature", dict(kind=kind, D=D, dir_seed=seed),
                            lambda: projected_hessians(self.objective, self.directions(kind, D, seed=seed)))

    def theory(self, kind: str, D: int, *, sigma: float, formula: str = "second_order", seed: int = 0) -> DeltaCurve:
        """Closed-form Δ_k (``formula`` "paper" or "second_order") from the cached curvature."""
        delta = theory_from_curvature(self.curvature(kind, D, seed=seed), sigma, formula)
        label = "paper's formula" if formula == "paper" else "second-order estimate"
        k = np.arange(1, self.objective.num_batches)
        return DeltaCurve(k, delta, np.zeros_like(delta), label, float(sigma), {"kind": formula, "D": D})

    def surface(self, kind: str, *, extent: float, points: int, seed: int = 0) -> tuple[np.ndarray, torch.Tensor]:
        """Per-batch losses on a points x points grid over the first two directions: (axis, [points², N])."""
        axis, thetas = grid_thetas(extent, points)
        losses = self._cached("surface", dict(kind=kind, extent=extent, points=points, dir_seed=seed),
                              lambda: subspace_losses(self.objective, self.directions(kind, 2, seed=seed), thetas,
                                                      progress=self.progress).cpu())
        return axis.numpy(), losses


def surfaces_at(losses: torch.Tensor, k: int, points: int) -> tuple[np.ndarray, np.ndarray]:
    """From a [points², N] grid loss matrix: L_k(θ) and (L_{k+1}(θ) − L_k(θ))², each [points, points]."""
    N = losses.shape[1]
    if not 1 <= k < N:
        raise ValueError(f"k must be in [1, {N - 1}] (N - 1 = num_batches - 1), got {k}")
    losses = losses.double()
    L_k = losses[:, :k].mean(1)
    L_next = losses[:, : k + 1].mean(1)
    return L_k.reshape(points, points).numpy(), ((L_next - L_k) ** 2).reshape(points, points).numpy()


@dataclass
class SurfaceLimits:
    """Common z-limits (low, high) of L_k (``loss``) and of (L_{k+1} − L_k)² (``change``) over several k, so that
    surfaces at different k are drawn on one scale."""

    loss: tuple[float, float]
    change: tuple[float, float]


def surface_limits(losses: torch.Tensor, ks: Sequence[int]) -> SurfaceLimits:
    """The min and max of L_k(θ) and of (L_{k+1}(θ) − L_k(θ))² over every grid point of a [points², N] grid loss
    matrix (:meth:`Experiment.surface`) and every k in ``ks``. The change's lower limit is 0."""
    if not len(ks):
        raise ValueError("ks must name at least one k")
    points = round(losses.shape[0] ** 0.5)
    if points * points != losses.shape[0]:
        raise ValueError(f"losses must have points² rows (a square grid), got {losses.shape[0]}")
    surfaces = [surfaces_at(losses, int(k), points) for k in ks]
    loss = (min(float(L.min()) for L, _ in surfaces), max(float(L.max()) for L, _ in surfaces))
    return SurfaceLimits(loss, (0.0, max(float(C.max()) for _, C in surfaces)))


def surface_change_curves(losses: torch.Tensor, label: str = "") -> tuple[DeltaCurve, DeltaCurve]:
    """(mean, max) over the grid points of (L_{k+1}(θ) − L_k(θ))², for every k = 1..N−1 at once, from a grid loss
    matrix [points², N]: how much one more batch moves the surface, on average and at worst. Both are
    :class:`~hesslib.estimators.DeltaCurve` (no standard error: the grid is fixed, not sampled)."""
    if losses.dim() != 2 or losses.shape[1] < 2:
        raise ValueError(f"losses must be [grid points, N] with N >= 2, got {list(losses.shape)}")
    losses = losses.double().cpu()
    N = losses.shape[1]
    k = torch.arange(1, N, dtype=torch.float64)
    prefix = losses.cumsum(1)[:, :-1] / k  # L_k, k = 1..N-1
    squared = ((losses[:, 1:] - prefix) / (k + 1)) ** 2  # (L_{k+1} - L_k)²
    ks = np.arange(1, N)
    zeros = np.zeros(N - 1)
    meta = {"grid_points": losses.shape[0]}
    return (DeltaCurve(ks, squared.mean(0).numpy(), zeros, f"{label} mean over the grid".strip(), float("nan"), meta),
            DeltaCurve(ks, squared.amax(0).numpy(), zeros, f"{label} max over the grid".strip(), float("nan"), meta))
