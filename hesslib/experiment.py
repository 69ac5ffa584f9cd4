"""One configured experiment with every expensive step cached, so notebooks share work instead of repeating it.

An :class:`Experiment` trains (or loads) w*, builds the :class:`~hesslib.hessian.Objective` in the fixed batch
order, and memoises eigenpairs, projected curvature and loss matrices under ``cache_dir``, keyed by the full
configuration (training, analysis batch size, directions, σ, samples, seeds, library version).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch

from .cache import DEFAULT_CACHE_DIR, cached, project_root
from .data import load_dataset
from .diagnostics import Slices, activation_switches, quadratic_slices
from .eigen import EigenMethod, EigenResult, top_eigenpairs
from .estimators import (
    EIGENVALUE_TOL,
    DeltaCurve,
    Formula,
    delta_control_variate,
    delta_fourth_order,
    delta_from_curvature,
    delta_from_eigenvalues,
    delta_from_losses,
    gaussian_thetas,
    order_average,
    paper_eigenvalues,
)
from .hessian import (
    Objective,
    ProjectedCurvature,
    default_higher_method,
    projected_hessians,
    projected_higher_derivatives,
)
from .parameters import ParameterError, check_choice, check_int, check_parameters, check_positive
from .stopping import OnlineResult, run_online_stopping
from .subspace import grid_thetas, random_directions, subspace_losses
from .training import train

Directions = Literal["hessian", "random", "random_orthonormal"]
DIRECTIONS: tuple[str, ...] = get_args(Directions)


@dataclass
class Experiment:
    """One configured experiment: data, model, training of w*, and the analysis batch size B, all cached.

    Building one trains w* with :func:`~hesslib.training.train` (or loads it from ``cache_dir``), loads the data
    in its fixed order and builds the :class:`~hesslib.hessian.Objective` over N = ceil(n / B) batches. Every
    method that names a subspace takes ``directions``: ``"hessian"`` (the top-D eigenvectors of H_N(w*)),
    ``"random"`` (the paper's baseline: Gaussian directions filter-normalised to the filters of w*, biases zeroed,
    NOT orthonormalised, so each is about as long as w*) or ``"random_orthonormal"`` (the same, then
    orthonormalised: unit steps, comparable with eigenvectors), drawn with ``direction_seed``; Monte Carlo θ are
    drawn with ``mc_seed``, independently of the directions.

    Everything the methods return lives on the CPU, whatever ``device`` is and whether it was computed or read
    from the cache, except :meth:`eigenpairs` and :meth:`basis`: those are inputs of later products and live on the
    objective's device (move their eigenvalues with ``.cpu()`` before NumPy or matplotlib reads them).

    Args:
        dataset: a name accepted by :func:`~hesslib.data.load_dataset`.
        limit: use the first ``limit`` samples of the fixed order (None: all).
        holdout: test w* on the last ``holdout`` samples of the train split when the dataset has no test split
            (:func:`~hesslib.training.train`; 0: the dataset's test split, if any). They must not overlap the first
            ``limit``, and they never enter the analysis.
        model: ``"linear"``, ``"mlp"`` or ``"cnn"``.
        hidden: the MLP's hidden widths.
        channels: the CNN's conv widths.
        activation: the MLP's and CNN's nonlinearity, ``"relu"`` (the paper's), ``"gelu"`` or ``"tanh"``.
        epochs: training epochs.
        lr: the optimiser's (Adam's) learning rate.
        train_batch_size: the training mini-batch size.
        seed: the training seed.
        batch_size: B, the analysis batch size (k counts batches of B samples).
        device: where everything is computed.
        root: the data folder.
        cache_dir: the cache folder; None recomputes everything.
        progress: show progress bars.

    Attributes:
        net: the trained model at w*, in evaluation mode.
        record: its :class:`~hesslib.training.TrainRecord`.
        data: the :class:`~hesslib.data.Dataset`.
        objective: the :class:`~hesslib.hessian.Objective` L(w) over N batches of B, around w*.

    Raises:
        ParameterError: (a ValueError) for a setting outside its range (an unknown dataset, model or activation,
            ``batch_size`` leaving fewer than 2 batches, ``epochs`` < 1, ...; :func:`~hesslib.check_parameters`),
            before any data is loaded or w* trained; each method checks its own arguments the same way (σ > 0,
            samples ≥ 1, 1 ≤ D < M, ...).
        ValueError: for settings that :func:`~hesslib.training.train`, :func:`~hesslib.data.load_dataset` or
            :class:`~hesslib.hessian.Objective` reject.
        FileNotFoundError: if the dataset's files are missing.
    """

    dataset: str = "mnist5k"
    limit: int | None = None
    holdout: int = 0
    model: str = "mlp"
    hidden: tuple[int, ...] = (256, 256)
    channels: tuple[int, ...] = (8, 16)
    activation: str = "relu"
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
        settings = ("dataset", "model", "hidden", "channels", "activation", "batch_size", "limit", "holdout", "epochs",
                    "lr", "train_batch_size", "seed", "device")
        # before any data is loaded or w* trained
        check_parameters({name: getattr(self, name) for name in settings}, data_root=self.root)
        self.net, self.record = train(
            self.dataset, model=self.model, limit=self.limit, holdout=self.holdout, root=self.root,
            hidden=self.hidden, channels=self.channels, activation=self.activation, lr=self.lr, epochs=self.epochs,
            batch_size=self.train_batch_size, seed=self.seed, device=self.device, cache_dir=self.cache_dir,
            progress=self.progress,
        )
        self.data = load_dataset(self.dataset, root=self.root, limit=self.limit)
        self.objective = Objective(self.net, self.data.X, self.data.y, batch_size=self.batch_size, device=self.device)

    @classmethod
    def from_parameters(cls, params: Mapping[str, Any], *, progress: bool = False, **overrides: Any) -> Experiment:
        """The experiment a notebook's parameters describe.

        Every key of ``params`` that names a field (``dataset``, ``limit``, ``model``, ``hidden``, ``channels``,
        ``activation``, ``epochs``, ``lr``, ``train_batch_size``, ``seed``, ``batch_size``, ``device``, ``root``,
        ``cache_dir``) is used, other keys are ignored (a notebook passes ``globals()``); ``holdout`` is never read
        from ``params`` (a notebook's ``holdout`` belongs to its learning curve) and is given as an override.
        ``cache_dir`` and the data folder ``root`` (default ``data/``) are resolved against the project root, so a
        notebook runs the same from ``notebooks/`` and from the repository root.

        Args:
            params: a mapping of parameter names to values, e.g. a notebook's ``globals()``.
            progress: show progress bars.
            **overrides: field values that replace those of ``params`` (e.g. ``limit=1000, holdout=1000``).

        Returns:
            The built :class:`Experiment` (w* trained or loaded).

        Raises:
            TypeError: if an override does not name a field.
        """
        names = {f.name for f in fields(cls) if f.init} - {"progress"}
        unknown = set(overrides) - names
        if unknown:
            raise TypeError(f"unknown Experiment field(s) {sorted(unknown)}; the fields are {sorted(names)}")
        kwargs = {name: params[name] for name in names - {"holdout"} if name in params} | overrides
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

    @staticmethod
    def _check_draws(sigma: float, samples: int) -> None:
        """σ must be a finite number > 0 and the number of θ an integer ≥ 1 (:class:`ParameterError` otherwise)."""
        check_positive("sigma", sigma)
        check_int("samples", samples, 1)

    def _cached(self, namespace: str, extra: dict, compute, *, on_device: bool = False):
        """``compute()`` memoised under ``namespace``, keyed by :attr:`config` plus ``extra``.

        A value's tensors are returned on the CPU, or with ``on_device`` on the objective's device (eigenvectors:
        inputs of later products), the same whether it was just computed or read back from the cache (stored on
        the CPU).
        """
        value = cached(namespace, {**self.config, **extra}, compute, cache_dir=self.cache_dir)
        return _to_device(value, self.objective.device if on_device else torch.device("cpu"))

    def _subspace_key(self, directions: Directions, D: int, direction_seed: int) -> dict:
        """What identifies P: the family, D, and the seed of random directions (Hessian ones have none)."""
        check_choice("directions", directions, DIRECTIONS)
        M = self.objective.num_params
        high = M - 1 if directions == "hessian" else M
        check_int("D", D, 1, high, f"the {directions} subspace of M = {M:,} parameters")
        if directions == "hessian":
            return dict(directions=directions, D=D, direction_seed=None)
        return dict(directions=directions, D=D, direction_seed=direction_seed,
                    orthonormal=directions == "random_orthonormal")

    # ---- directions ------------------------------------------------------------------------------------
    def eigenpairs(self, d: int, *, tol: float = 1e-4, method: EigenMethod = "lanczos",
                   solver_seed: int = 0) -> EigenResult:
        """Top-d eigenpairs of H = H_N(w*) (:func:`~hesslib.eigen.top_eigenpairs`, cached).

        Args:
            d: the number of eigenpairs, an int in [1, M − 1].
            tol: the relative residual to reach, > 0.
            method: ``"lanczos"``, ``"davidson"`` or ``"power"``.
            solver_seed: seeds the solver's random start.

        Returns:
            An :class:`~hesslib.eigen.EigenResult`: eigenvalues [d] descending, eigenvectors [M, d], on the
            objective's device.

        Raises:
            ValueError: as :func:`~hesslib.eigen.top_eigenpairs`.
        """
        return self._cached("eigen", dict(d=d, tol=tol, method=method, solver_seed=solver_seed),
                            lambda: top_eigenpairs(self.objective, d, tol=tol, method=method, seed=solver_seed,
                                                   progress=self.progress), on_device=True)

    def basis(self, directions: Directions, D: int, *, direction_seed: int = 0) -> torch.Tensor:
        """The subspace basis P [M, D] of w = w* + Pθ.

        Args:
            directions: ``"hessian"`` (the top-D eigenvectors of H, cached), ``"random"`` (filter-normalised
                Gaussian directions at the paper's scale) or ``"random_orthonormal"`` (the same, orthonormalised,
                so σ means the same step length as for eigenvectors).
            D: the subspace dimension (an int in [1, M − 1] for ``"hessian"``, [1, M] for random ones).
            direction_seed: seeds random directions (ignored for ``"hessian"``).

        Returns:
            P [M, D] in the objective's dtype on its device.

        Raises:
            ValueError: if ``directions`` is unknown or ``D`` is out of range.
        """
        self._subspace_key(directions, D, direction_seed)
        if directions == "hessian":
            return self.eigenpairs(D).eigenvectors
        return random_directions(self.objective, D, seed=direction_seed,
                                 orthonormalize=directions == "random_orthonormal")

    # ---- landscapes and estimators ---------------------------------------------------------------------
    def loss_matrix(self, directions: Directions, D: int, *, sigma: float, samples: int, direction_seed: int = 0,
                    mc_seed: int = 0) -> torch.Tensor:
        """The per-batch losses ℓ_i(w* + Pθ_t), θ_t ~ N(0, σ² I_D) for t = 1..T (cached).

        Args:
            directions: ``"hessian"``, ``"random"`` or ``"random_orthonormal"`` (see :meth:`basis`).
            D: the subspace dimension.
            sigma: σ, a finite number > 0.
            samples: T, the number of θ.
            direction_seed: seeds random directions.
            mc_seed: seeds the draw of θ (:func:`~hesslib.estimators.gaussian_thetas`).

        Returns:
            A [T, N] CPU tensor in the objective's dtype.

        Raises:
            ValueError: if ``directions`` is unknown or ``D`` is out of range.
        """
        self._check_draws(sigma, samples)
        key = dict(self._subspace_key(directions, D, direction_seed), sigma=sigma, samples=samples, mc_seed=mc_seed)
        return self._cached("losses", key, lambda: subspace_losses(
            self.objective, self.basis(directions, D, direction_seed=direction_seed),
            gaussian_thetas(D, sigma, samples, seed=mc_seed), progress=self.progress).cpu())

    def monte_carlo(self, directions: Directions, D: int, *, sigma: float, samples: int, direction_seed: int = 0,
                    mc_seed: int = 0, control_variate: bool = False) -> DeltaCurve:
        """Monte Carlo Δ_k = E_θ[(L_{k+1}(w* + Pθ) − L_k(w* + Pθ))²] from the cached loss matrix.

        With ``control_variate`` the same θ and losses are read with
        :func:`~hesslib.estimators.delta_control_variate` and the cached curvature: no new forward passes.

        Args:
            directions: ``"hessian"``, ``"random"`` or ``"random_orthonormal"`` (see :meth:`basis`).
            D: the subspace dimension.
            sigma: σ of θ ~ N(0, σ² I_D).
            samples: T, the number of θ (≥ 2 for a standard error).
            direction_seed: seeds random directions.
            mc_seed: seeds the draw of θ.
            control_variate: subtract the second-order model as a control variate.

        Returns:
            A :class:`~hesslib.estimators.DeltaCurve` (:func:`~hesslib.estimators.delta_from_losses`), k = 1..N−1,
            with ``meta`` holding the directions, D, direction_seed, samples and seed.

        Raises:
            ValueError: if ``directions`` is unknown or ``D`` is out of range.
        """
        losses = self.loss_matrix(directions, D, sigma=sigma, samples=samples, direction_seed=direction_seed,
                                  mc_seed=mc_seed)
        meta = dict(self._subspace_key(directions, D, direction_seed), seed=mc_seed)
        if control_variate:
            return delta_control_variate(losses, gaussian_thetas(D, sigma, samples, seed=mc_seed),
                                         self.curvature(directions, D, direction_seed=direction_seed), sigma=sigma,
                                         meta=meta)
        return delta_from_losses(losses, sigma=sigma, meta=meta)

    def order_average(self, directions: Directions, D: int, *, sigma: float, samples: int, direction_seed: int = 0,
                      mc_seed: int = 0) -> DeltaCurve:
        """E_π[Δ_k] over all batch orders (:func:`~hesslib.estimators.order_average`) from the cached loss matrix.

        Args:
            directions: ``"hessian"``, ``"random"`` or ``"random_orthonormal"`` (see :meth:`basis`).
            D: the subspace dimension.
            sigma: σ of θ ~ N(0, σ² I_D).
            samples: T, the number of θ.
            direction_seed: seeds random directions.
            mc_seed: seeds the draw of θ.

        Returns:
            A :class:`~hesslib.estimators.DeltaCurve`, k = 1..N−1, on the same θ as :meth:`monte_carlo`.

        Raises:
            ValueError: if ``directions`` is unknown or ``D`` is out of range.
        """
        losses = self.loss_matrix(directions, D, sigma=sigma, samples=samples, direction_seed=direction_seed,
                                  mc_seed=mc_seed)
        return order_average(losses, sigma=sigma, meta=dict(self._subspace_key(directions, D, direction_seed),
                                                            seed=mc_seed))

    def curvature(self, directions: Directions, D: int, *, direction_seed: int = 0) -> ProjectedCurvature:
        """Per-batch ℓ_i(w*), Pᵀ∇ℓ_i(w*), Pᵀ∇²ℓ_i(w*)P (:func:`~hesslib.hessian.projected_hessians`, cached).

        Args:
            directions: ``"hessian"``, ``"random"`` or ``"random_orthonormal"`` (see :meth:`basis`).
            D: the subspace dimension.
            direction_seed: seeds random directions.

        Returns:
            A :class:`~hesslib.hessian.ProjectedCurvature` with losses [N], grads [N, D], hessians [N, D, D], on
            the CPU.

        Raises:
            ValueError: if ``directions`` is unknown or ``D`` is out of range.
        """
        return self._cached("curvature", self._subspace_key(directions, D, direction_seed),
                            lambda: projected_hessians(self.objective,
                                                       self.basis(directions, D, direction_seed=direction_seed)))

    def online_stopping(self, *, seed: int, **settings: Any) -> OnlineResult:
        """The online rule (:func:`~hesslib.stopping.run_online_stopping`) on this data and model family, cached.

        The run trains its own model from scratch (initialised with ``seed``) while revealing the batches, so it
        does not use w*; its ``seconds`` are those of the run that computed it.

        Args:
            seed: the online run's seed (initialisation, mini-batches, Monte Carlo θ).
            **settings: the other keyword arguments of :func:`~hesslib.stopping.run_online_stopping` (``D``,
                ``sigma``, ``tol``, ``patience``, ``steps_per_batch``, ``max_batches``, ``monte_carlo_samples``, ...).

        Returns:
            An :class:`~hesslib.stopping.OnlineResult`.
        """
        settings.pop("progress", None)
        return self._cached("online", dict(online_seed=seed, **settings), lambda: run_online_stopping(
            self.data, model=self.model, hidden=self.hidden, channels=self.channels, activation=self.activation,
            batch_size=self.batch_size, device=self.device,
            seed=seed, progress=self.progress, **settings))

    def higher_derivatives(self, directions: Directions, D: int, *, direction_seed: int = 0) -> dict:
        """Per-batch third and fourth derivatives along P (:func:`~hesslib.hessian.projected_higher_derivatives`).

        Args:
            directions: the subspace family (see :meth:`basis`).
            D: the subspace dimension.
            direction_seed: seeds random directions.

        Returns:
            A dict with ``higher`` (a :class:`~hesslib.hessian.HigherDerivatives`, on the CPU) and ``seconds`` (the
            wall time of the pass when it was computed), cached.
        """
        def compute() -> dict:
            start = time.perf_counter()
            higher = projected_higher_derivatives(
                self.objective, self.basis(directions, D, direction_seed=direction_seed), progress=self.progress)
            return dict(higher=higher, seconds=time.perf_counter() - start)

        key = dict(self._subspace_key(directions, D, direction_seed), method=default_higher_method(self.objective))
        return self._cached("higher-derivatives", key, compute)

    def paper_eigenvalues(self, D: int, *, tol: float = EIGENVALUE_TOL) -> dict:
        """The top-D eigenvalues of every H_k (:func:`~hesslib.estimators.paper_eigenvalues`), cached.

        Args:
            D: how many per k, an int in [1, M − 1].
            tol: the relative residual of every solve, > 0 (the default, 1e-3, gives eigenvalues to float32
                accuracy: see :func:`~hesslib.estimators.paper_eigenvalues`).

        Returns:
            A dict with ``eigenvalues`` (float64 [N, D]), ``hvps`` (the cost of the N solves in full-data
            Hessian-vector products) and ``seconds`` (their wall time when they were computed).
        """
        def compute() -> dict:
            start = time.perf_counter()
            eigenvalues, hvps = paper_eigenvalues(self.objective, D, tol=tol, init=self.eigenpairs(D).eigenvectors,
                                                  progress=self.progress)
            return dict(eigenvalues=eigenvalues, hvps=hvps, seconds=time.perf_counter() - start)

        return self._cached("paper-eigenvalues", dict(D=D, tol=tol, solver="running_mean"), compute)

    def theory(self, directions: Directions, D: int, *, sigma: float, formula: Formula = "second_order",
               direction_seed: int = 0) -> DeltaCurve:
        """Closed-form Δ_k from cached curvature or, for the paper's own formula, cached eigenvalues.

        ``"second_order"`` and ``"paper_subspace"``: :func:`~hesslib.estimators.delta_from_curvature` of the
        per-batch curvature in the subspace. ``"paper"``: :func:`~hesslib.estimators.delta_from_eigenvalues` of
        the top-D eigenvalues of every H_k (:meth:`paper_eigenvalues`), which do not depend on the directions.

        Args:
            directions: the subspace family (see :meth:`basis`).
            D: the subspace dimension.
            sigma: σ of θ ~ N(0, σ² I_D), a finite number > 0.
            formula: ``"second_order"``, ``"paper_subspace"``, ``"paper"`` or ``"fourth_order"``.
            direction_seed: seeds random directions.

        Returns:
            A :class:`~hesslib.estimators.DeltaCurve`, k = 1..N−1, with zero ``stderr``.

        Raises:
            ValueError: if ``directions`` or ``formula`` is unknown, ``D`` is out of range, ``sigma`` is not a
                finite number > 0, or there are fewer than 2 batches.
        """
        check_positive("sigma", sigma)
        key = self._subspace_key(directions, D, direction_seed)
        if formula == "paper":
            curve = delta_from_eigenvalues(self.paper_eigenvalues(D)["eigenvalues"], sigma)
        elif formula == "fourth_order":
            curve = delta_fourth_order(self.curvature(directions, D, direction_seed=direction_seed),
                                       self.higher_derivatives(directions, D, direction_seed=direction_seed)["higher"],
                                       sigma)
        else:
            curve = delta_from_curvature(self.curvature(directions, D, direction_seed=direction_seed), sigma,
                                         formula)
        curve.meta.update(key)
        return curve

    def slices(self, directions: Directions, D: int, *, extent: float, points: int, smallest: float = 1e-3,
               direction_seed: int = 0) -> Slices:
        """L_N(w* + t·p_d) along each direction of P against its quadratic (cached).

        :func:`~hesslib.diagnostics.quadratic_slices` on a grid that resolves both small and large steps: t = 0 and
        ±``points`` steps spaced geometrically from ``smallest``·``extent`` to ``extent`` (2·points + 1 in all).

        Args:
            directions: the subspace family (see :meth:`basis`).
            D: the subspace dimension.
            extent: the largest |t|, > 0.
            points: the steps per side, ≥ 2.
            smallest: the smallest |t| as a fraction of ``extent``, in (0, 1).
            direction_seed: seeds random directions.

        Returns:
            A :class:`~hesslib.diagnostics.Slices`.

        Raises:
            ValueError: if ``extent`` ≤ 0, ``points`` < 2, ``smallest`` is outside (0, 1) or ``directions`` is
                unknown.
        """
        check_positive("extent", extent)
        check_int("points", points, 2)
        if not 0 < smallest < 1:
            raise ParameterError("smallest", smallest, "a number in (0, 1)")
        side = extent * np.geomspace(smallest, 1.0, points)
        t = np.concatenate([-side[::-1], [0.0], side])
        key = dict(self._subspace_key(directions, D, direction_seed), extent=extent, points=points, smallest=smallest)
        return self._cached("slices", key, lambda: quadratic_slices(
            self.objective, self.basis(directions, D, direction_seed=direction_seed),
            self.curvature(directions, D, direction_seed=direction_seed), t))

    def activation_switches(self, directions: Directions, D: int, *, sigma: float, samples: int,
                            direction_seed: int = 0, mc_seed: int = 0) -> tuple[list[str], np.ndarray]:
        """Fraction of hidden units changing sides under θ ~ N(0, σ² I_D) (cached).

        :func:`~hesslib.diagnostics.activation_switches` for θ drawn as in :meth:`loss_matrix`
        (:func:`~hesslib.estimators.gaussian_thetas` with ``mc_seed``).

        Args:
            directions: the subspace family (see :meth:`basis`).
            D: the subspace dimension.
            sigma: σ, > 0.
            samples: the number of θ, ≥ 1.
            direction_seed: seeds random directions.
            mc_seed: seeds θ.

        Returns:
            (names, fractions [samples, layers]).

        Raises:
            ValueError: as :func:`~hesslib.estimators.gaussian_thetas` and :meth:`basis`.
        """
        self._check_draws(sigma, samples)
        key = dict(self._subspace_key(directions, D, direction_seed), sigma=sigma, samples=samples, mc_seed=mc_seed)
        thetas = gaussian_thetas(D, sigma, samples, seed=mc_seed)
        return self._cached("switches", key, lambda: activation_switches(
            self.objective, self.basis(directions, D, direction_seed=direction_seed), thetas))

    def surface(self, directions: Directions, *, extent: float, points: int,
                direction_seed: int = 0) -> tuple[np.ndarray, torch.Tensor]:
        """Per-batch losses ℓ_i(w* + Pθ) on a points x points grid of θ over [−extent, extent]² (cached).

        P is the basis of D = 2 directions of the family; read the result with :mod:`hesslib.surfaces`.

        Args:
            directions: ``"hessian"``, ``"random"`` or ``"random_orthonormal"`` (see :meth:`basis`).
            extent: the half-width of the grid, > 0.
            points: the points per axis, ≥ 2.
            direction_seed: seeds random directions.

        Returns:
            (axis, losses): the float64 numpy axis [points] and a CPU tensor [points², N] in the objective's dtype,
            rows in the order of :func:`~hesslib.subspace.grid_thetas`.

        Raises:
            ValueError: if ``points`` < 2, ``extent`` ≤ 0 or ``directions`` is unknown.
        """
        axis, thetas = grid_thetas(extent, points)
        key = dict(self._subspace_key(directions, 2, direction_seed), extent=extent, points=points)
        losses = self._cached("surface", key, lambda: subspace_losses(
            self.objective, self.basis(directions, 2, direction_seed=direction_seed), thetas,
            progress=self.progress).cpu())
        return axis.numpy(), losses


def _to_device(value: Any, device: torch.device) -> Any:
    """``value`` with its tensors and modules (direct, or in a dataclass, dict, list or tuple) moved to ``device``.

    A module is moved in place.
    """
    if isinstance(value, torch.Tensor | torch.nn.Module):
        return value.to(device)
    if is_dataclass(value) and not isinstance(value, type):
        return replace(value, **{f.name: _to_device(getattr(value, f.name), device) for f in fields(value) if f.init})
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a NamedTuple takes its fields one by one
        return type(value)(*(_to_device(v, device) for v in value))
    if isinstance(value, list | tuple):
        return type(value)(_to_device(v, device) for v in value)
    return value
