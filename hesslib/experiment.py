"""One configured experiment with every expensive step cached, so notebooks share work instead of repeating it.

An :class:`Experiment` trains (or loads) w*, builds the :class:`~hesslib.hessian.Objective` in the fixed batch
order, and memoises eigenpairs, projected curvature and loss matrices under ``cache_dir``, keyed by the full
configuration (training, analysis batch size, directions, σ, samples, seeds, library version).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch

from .cache import DEFAULT_CACHE_DIR, cached, project_root
from .data import load_dataset
from .eigen import EigenMethod, EigenResult, top_eigenpairs
from .estimators import DeltaCurve, Formula, delta_from_curvature, delta_from_losses, gaussian_thetas
from .hessian import Objective, ProjectedCurvature, projected_hessians
from .subspace import grid_thetas, random_directions, subspace_losses
from .training import train

Directions = Literal["hessian", "random"]
DIRECTIONS: tuple[str, ...] = get_args(Directions)


@dataclass
class Experiment:
    """Data, model and training settings (``seed`` is the training seed, ``train_*`` the optimiser's) and the
    analysis batch size B. Building one trains (or loads) w* and the :class:`~hesslib.hessian.Objective`.

    Every method that names a subspace takes ``directions``: ``"hessian"`` (the top-D eigenvectors of H_N(w*))
    or ``"random"`` (filter-normalised Gaussian directions drawn with ``direction_seed``); Monte Carlo θ are
    drawn with ``mc_seed``, independently of the directions.
    """

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

    @classmethod
    def from_parameters(cls, params: Mapping[str, Any], *, progress: bool = False) -> Experiment:
        """The experiment a notebook's parameters describe: every key of ``params`` that names a field
        (``dataset``, ``limit``, ``model``, ``hidden``, ``channels``, ``epochs``, ``lr``, ``train_batch_size``,
        ``seed``, ``batch_size``, ``device``, ``cache_dir``) is used, other keys are ignored (a notebook passes
        ``globals()``). ``cache_dir`` and the data folder ``root`` (default ``data/``) are resolved against the
        project root, so a notebook runs the same from ``notebooks/`` and from the repository root.
        """
        names = {f.name for f in fields(cls) if f.init} - {"progress"}
        kwargs = {name: params[name] for name in names if name in params}
        base = project_root()
        kwargs["root"] = base / kwargs.get("root", "data")
        if kwargs.get("cache_dir", DEFAULT_CACHE_DIR) is not None:
            kwargs["cache_dir"] = base / kwargs.get("cache_dir", DEFAULT_CACHE_DIR)
        return cls(**kwargs, progress=progress)

    @property
    def config(self) -> dict:
        """The settings that determine every result (the cache key's common part)."""
        skip = {"net", "root", "cache_dir", "progress"}
        config = {k: v for k, v in asdict(self).items() if k not in skip}
        config["limit"] = len(self.data)
        return config

    def _cached(self, namespace: str, extra: dict, compute):
        return cached(namespace, {**self.config, **extra}, compute, cache_dir=self.cache_dir)

    def _subspace_key(self, directions: Directions, D: int, direction_seed: int) -> dict:
        """What identifies P: the family, D, and the seed of random directions (Hessian ones have none)."""
        if directions not in DIRECTIONS:
            raise ValueError(f"directions must be one of {DIRECTIONS}, got {directions!r}")
        return dict(directions=directions, D=D, direction_seed=direction_seed if directions == "random" else None)

    # ---- directions ------------------------------------------------------------------------------------
    def eigenpairs(self, d: int, *, tol: float = 1e-4, method: EigenMethod = "lanczos",
                   solver_seed: int = 0) -> EigenResult:
        """Top-d eigenpairs of H_N(w*) (:func:`~hesslib.eigen.top_eigenpairs`, cached); ``solver_seed`` seeds
        the solver's random start."""
        return self._cached("eigen", dict(d=d, tol=tol, method=method, solver_seed=solver_seed),
                            lambda: top_eigenpairs(self.objective, d, tol=tol, method=method, seed=solver_seed,
                                                   progress=self.progress))

    def basis(self, directions: Directions, D: int, *, direction_seed: int = 0,
              orthonormalize: bool = True) -> torch.Tensor:
        """P [M, D]: the top-D Hessian eigenvectors, or filter-normalised random directions (orthonormalised by
        default, so both families have unit-norm, orthogonal columns and σ means the same step length)."""
        self._subspace_key(directions, D, direction_seed)
        if directions == "hessian":
            return self.eigenpairs(D).eigenvectors
        return random_directions(self.objective, D, seed=direction_seed, orthonormalize=orthonormalize)

    # ---- landscapes and estimators ---------------------------------------------------------------------
    def loss_matrix(self, directions: Directions, D: int, *, sigma: float, samples: int, direction_seed: int = 0,
                    mc_seed: int = 0) -> torch.Tensor:
        """[T, N] per-batch losses ℓ_i(w* + Pθ_t) for T = ``samples`` Gaussian θ drawn with ``mc_seed`` (cached)."""
        key = dict(self._subspace_key(directions, D, direction_seed), sigma=sigma, samples=samples, mc_seed=mc_seed)
        return self._cached("losses", key, lambda: subspace_losses(
            self.objective, self.basis(directions, D, direction_seed=direction_seed),
            gaussian_thetas(D, sigma, samples, seed=mc_seed), progress=self.progress).cpu())

    def monte_carlo(self, directions: Directions, D: int, *, sigma: float, samples: int, direction_seed: int = 0,
                    mc_seed: int = 0) -> DeltaCurve:
        """Monte Carlo Δ_k (:func:`~hesslib.estimators.delta_from_losses`) from the cached loss matrix."""
        losses = self.loss_matrix(directions, D, sigma=sigma, samples=samples, direction_seed=direction_seed,
                                  mc_seed=mc_seed)
        return delta_from_losses(losses, sigma=sigma, meta=dict(
            self._subspace_key(directions, D, direction_seed), seed=mc_seed))

    def curvature(self, directions: Directions, D: int, *, direction_seed: int = 0) -> ProjectedCurvature:
        """Per-batch ℓ_i(w*), Pᵀ∇ℓ_i(w*), Pᵀ∇²ℓ_i(w*)P (:func:`~hesslib.hessian.projected_hessians`, cached)."""
        return self._cached("curvature", self._subspace_key(directions, D, direction_seed),
                            lambda: projected_hessians(self.objective,
                                                       self.basis(directions, D, direction_seed=direction_seed)))

    def theory(self, directions: Directions, D: int, *, sigma: float, formula: Formula = "second_order",
               direction_seed: int = 0) -> DeltaCurve:
        """Closed-form Δ_k (:func:`~hesslib.estimators.delta_from_curvature`) from the cached curvature."""
        curve = delta_from_curvature(self.curvature(directions, D, direction_seed=direction_seed), sigma, formula)
        curve.meta.update(self._subspace_key(directions, D, direction_seed))
        return curve

    def surface(self, directions: Directions, *, extent: float, points: int,
                direction_seed: int = 0) -> tuple[np.ndarray, torch.Tensor]:
        """Per-batch losses on a points x points grid over [−extent, extent]² in the first two directions:
        (axis [points], losses [points², N]) (cached); read them with :mod:`hesslib.surfaces`."""
        axis, thetas = grid_thetas(extent, points)
        key = dict(self._subspace_key(directions, 2, direction_seed), extent=extent, points=points)
        losses = self._cached("surface", key, lambda: subspace_losses(
            self.objective, self.basis(directions, 2, direction_seed=direction_seed), thetas,
            progress=self.progress).cpu())
        return axis.numpy(), losses
