"""The paper's Algorithm 1 as an online stopping rule, with its test fixed to Δ_k < tol.

Drive :class:`OnlineStopping` from any training loop: ``add_batch`` the next batch, train, ``update(model)``;
it re-estimates the top-D subspace at the current weights (block Davidson warm-started from the previous
subspace), computes Δ_k for the newest pair (L_k, L_{k+1}) with the second-order estimate (or the paper's
formula: ``formula=``) from one pass of :func:`~hesslib.hessian.projected_hessians`, and reports whether Δ has
stayed below ``tol`` for ``patience`` consecutive k. K is the first k of that run (the last-exceedance rule of
:func:`~hesslib.estimators.sufficient_sample_size` on the history). :func:`run_online_stopping` is such a loop.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .data import Dataset
from .eigen import top_eigenpairs
from .estimators import (
    FORMULAS,
    DeltaCurve,
    Formula,
    delta_from_curvature,
    delta_from_eigenvalues,
    gaussian_thetas,
    loss_changes,
    sufficient_sample_size,
)
from .hessian import Objective, projected_hessians
from .losses import Loss, check_loss, per_sample_loss
from .models import make_model
from .parameters import check_device
from .progress import progress_bar
from .subspace import subspace_losses
from .training import training_threads


class OnlineStopping:
    """Online Δ-sufficient sample size: stop once Δ_k < ``tol`` for ``patience`` consecutive k (in batches).

    Each :meth:`update` estimates Δ_k for the newest pair (L_k, L_{k+1}) over the batches added so far, at the
    model's current weights w, in the top-D subspace of H_{k+1}(w), with θ ~ N(0, σ² I_D).

    Args:
        D: the subspace dimension, an int ≥ 1 (capped at M − 1).
        sigma: σ, > 0.
        tol: the tolerance Δ, > 0.
        patience: how many consecutive estimates must be below ``tol``, an int ≥ 1.
        loss: ``"cross_entropy"`` or ``"mse"``.
        formula: ``"second_order"``, ``"paper_subspace"`` (see :func:`~hesslib.estimators.delta_from_curvature`)
            or ``"paper"`` (:func:`~hesslib.estimators.delta_from_eigenvalues`; one more eigen-solve per update).
        eig_tol: the relative residual of the eigen-solve, > 0.
        monte_carlo_samples: T ≥ 0; with T > 0 every update also measures Δ_k by Monte Carlo at the same weights
            and in the same subspace (T forward passes over the k + 1 batches), the ground truth for the closed form.
        mc_seed: seeds those θ (update j uses ``mc_seed + j``).

    Attributes:
        basis: P [M, D] at the latest update (None before the first).
        ks: the k of each estimate so far.
        deltas: the Δ_k estimates so far.
        losses: L_k at the weights of each update (the mean loss of the first k batches).
        mc_deltas, mc_stderr: the Monte Carlo Δ_k and its standard error at each update (empty without
            ``monte_carlo_samples``).
        hvps: the Hessian-vector products spent on eigen-solves so far.

    Raises:
        ValueError: if ``loss`` or ``formula`` is unknown, ``sigma``, ``tol`` or ``eig_tol`` is not > 0, or ``D``
            or ``patience`` is not an int ≥ 1.

    Example:
        >>> from hesslib import make_model
        >>> model = make_model("linear", (1, 2, 2), num_classes=2, seed=0)
        >>> monitor = OnlineStopping(D=2, sigma=0.1, tol=1.0, patience=2)
        >>> for _ in range(3):
        ...     monitor.add_batch(torch.randn(4, 1, 2, 2), torch.randint(0, 2, (4,)))
        ...     if monitor.num_batches >= 2:
        ...         delta = monitor.update(model)
        >>> monitor.ks, monitor.settled, monitor.K
        ([1, 2], True, 1)
    """

    def __init__(
        self,
        *,
        D: int = 10,
        sigma: float = 1.0,
        tol: float = 0.025,
        patience: int = 5,
        loss: Loss = "cross_entropy",
        formula: Formula = "second_order",
        eig_tol: float = 1e-3,
        monte_carlo_samples: int = 0,
        mc_seed: int = 0,
    ) -> None:
        check_loss(loss)
        if formula not in FORMULAS:
            raise ValueError(f"formula must be one of {FORMULAS}, got {formula!r}")
        if not (sigma > 0 and tol > 0 and eig_tol > 0):
            raise ValueError(f"sigma, tol and eig_tol must be > 0, got {sigma}, {tol}, {eig_tol}")
        if not isinstance(D, int) or D < 1 or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"D and patience must be integers >= 1, got D={D!r}, patience={patience!r}")
        if not isinstance(monte_carlo_samples, int) or monte_carlo_samples < 0:
            raise ValueError(f"monte_carlo_samples must be an integer >= 0, got {monte_carlo_samples!r}")
        self.monte_carlo_samples, self.mc_seed = monte_carlo_samples, mc_seed
        self.D, self.sigma, self.tol, self.patience = D, sigma, tol, patience
        self.loss, self.formula, self.eig_tol = loss, formula, eig_tol
        self._X: list[torch.Tensor] = []
        self._y: list[torch.Tensor] = []
        self.basis: torch.Tensor | None = None  # P at the latest update
        self.ks: list[int] = []
        self.deltas: list[float] = []
        self.losses: list[float] = []
        self.mc_deltas: list[float] = []
        self.mc_stderr: list[float] = []
        self.hvps = 0

    @property
    def num_batches(self) -> int:
        """The number of batches added so far, k + 1 after the latest batch."""
        return len(self._X)

    def add_batch(self, X: torch.Tensor, y: torch.Tensor) -> None:
        """Append the next batch (batch k + 1 after k).

        Args:
            X: inputs [B, ...]; every batch must have the first batch's size B.
            y: targets [B].

        Raises:
            ValueError: if ``X`` does not have B samples.
        """
        if self._X and len(X) != len(self._X[0]):
            raise ValueError(f"every batch must have {len(self._X[0])} samples (the first batch's size), got {len(X)}")
        self._X.append(X)
        self._y.append(y)

    def update(self, model: nn.Module) -> float:
        """Estimate Δ_k for the newest pair (L_k, L_{k+1}), k = batches − 1, at the model's current weights.

        Re-solves the top-D eigenvectors of H_{k+1} (block Davidson from the previous basis; Lanczos the first
        time), then evaluates the closed form from one pass of :func:`~hesslib.hessian.projected_hessians`; the
        estimate is appended to :attr:`ks` and :attr:`deltas`. The model is switched to evaluation mode (in place).

        Args:
            model: the network being trained; its current parameters are the w of this estimate.

        Returns:
            Δ_k as a float.

        Raises:
            ValueError: if fewer than 2 batches have been added.
        """
        if self.num_batches < 2:
            raise ValueError("update needs at least 2 batches: add_batch first")
        X, y = torch.cat(self._X), torch.cat(self._y)
        objective = Objective(model, X, y, batch_size=len(self._X[0]), loss=self.loss)
        D = min(self.D, objective.num_params - 1)
        init = self.basis if self.basis is not None and self.basis.shape == (objective.num_params, D) else None
        # block Davidson from the previous subspace (half the products and time of Lanczos from it on the paper's
        # online runs: 582 against 1,102 products for seed 0), block Lanczos for the first solve
        method = "lanczos" if init is None else "davidson"
        eig = top_eigenpairs(objective, D, tol=self.eig_tol, init=init, method=method, seed=len(self.ks))
        self.basis, self.hvps = eig.eigenvectors, self.hvps + eig.num_hvps
        if self.formula == "paper":  # the top-D eigenvalues of H_k and H_{k+1}, both at the current weights
            k = objective.num_batches - 1
            previous = top_eigenpairs(objective.prefix(k), D, tol=self.eig_tol, init=self.basis, method="davidson",
                                      seed=len(self.ks))
            self.hvps += previous.num_hvps
            pair = torch.stack([previous.eigenvalues, eig.eigenvalues]).double().cpu().numpy()
            delta = float(delta_from_eigenvalues(pair, self.sigma).delta[-1])
        else:
            curvature = projected_hessians(objective, self.basis)
            delta = float(delta_from_curvature(curvature, self.sigma, self.formula).delta[-1])
        k = self.num_batches - 1
        if self.monte_carlo_samples:
            thetas = gaussian_thetas(D, self.sigma, self.monte_carlo_samples, seed=self.mc_seed + len(self.ks))
            squared = loss_changes(subspace_losses(objective, self.basis, thetas))[:, -1] ** 2
            self.mc_deltas.append(float(squared.mean()))
            self.mc_stderr.append(float(squared.std() / np.sqrt(len(squared))) if len(squared) > 1 else float("nan"))
        self.losses.append(float(objective.batch_losses()[:k].double().mean()))
        self.ks.append(k)
        self.deltas.append(delta)
        return delta

    @property
    def settled(self) -> bool:
        """Whether the last ``patience`` estimates are all below ``tol``."""
        recent = self.deltas[-self.patience :]
        return len(recent) == self.patience and all(d < self.tol for d in recent)

    @property
    def history(self) -> DeltaCurve:
        """The estimates so far as a :class:`~hesslib.estimators.DeltaCurve` (zero ``stderr``).

        Each Δ_k was measured at the weights of its own update.
        """
        deltas = np.asarray(self.deltas, dtype=float)
        return DeltaCurve(np.asarray(self.ks, dtype=int), deltas, np.zeros_like(deltas),
                          f"online, {self.formula.replace('_', '-')}", float(self.sigma), {"D": self.D})

    @property
    def K(self) -> int | None:
        """Once settled, K of :func:`~hesslib.estimators.sufficient_sample_size` on the history; None before.

        K is the first k of the final run of estimates below ``tol``.
        """
        return sufficient_sample_size(self.history, self.tol) if self.settled else None


def first_settled(ks: list[int], deltas: list[float], tol: float, patience: int) -> int | None:
    """The K at which the online rule first stops: the first k of the first ``patience`` consecutive Δ_k < tol.

    Args:
        ks: the k of each estimate, in the order they were made.
        deltas: the estimates Δ_k.
        tol: the tolerance Δ.
        patience: the run length that confirms K, ≥ 1.

    Returns:
        That k, or None if no such run exists.

    Example:
        >>> first_settled([1, 2, 3, 4, 5], [0.5, 0.1, 0.3, 0.1, 0.1], tol=0.2, patience=2)
        4
    """
    run = 0
    for i, delta in enumerate(deltas):
        run = run + 1 if delta < tol else 0
        if run == patience:
            return ks[i - patience + 1]
    return None


@dataclass
class OnlineResult:
    """What :func:`run_online_stopping` found.

    Attributes:
        K: the sufficient sample size in batches, None if Δ_k never settled.
        model: the trained model, in evaluation mode, on the run's device.
        ks: the k of each estimate.
        deltas: the Δ_k estimates.
        loss_at_K: L_K, the mean cross-entropy over the first K batches at the weights of the update that made
            the estimate at k = K (None without K).
        seconds: the wall time of the run.
        hvps: the Hessian-vector products spent on eigen-solves.
        losses: L_k at the weights of each update.
        mc_deltas, mc_stderr: Monte Carlo Δ_k and its standard error at the same weights (empty without
            ``monte_carlo_samples``).
        K_monte_carlo: the K the same rule gives on ``mc_deltas`` (None if it never settles or was not measured).
    """

    K: int | None
    model: nn.Module
    ks: list[int] = field(default_factory=list)
    deltas: list[float] = field(default_factory=list)
    loss_at_K: float | None = None
    seconds: float = 0.0
    hvps: int = 0
    losses: list[float] = field(default_factory=list)
    mc_deltas: list[float] = field(default_factory=list)
    mc_stderr: list[float] = field(default_factory=list)
    K_monte_carlo: int | None = None


def run_online_stopping(
    data: Dataset,
    *,
    model: str = "mlp",
    hidden: tuple[int, ...] = (256, 256),
    channels: tuple[int, ...] = (8, 16),
    activation: str = "relu",
    batch_size: int = 64,
    steps_per_batch: int = 20,
    lr: float = 1e-3,
    D: int = 10,
    sigma: float = 1.0,
    tol: float = 0.025,
    patience: int = 5,
    formula: Formula = "second_order",
    max_batches: int | None = None,
    seed: int = 0,
    monte_carlo_samples: int = 0,
    stop_when_settled: bool = True,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> OnlineResult:
    """The paper's Algorithm 1: train while revealing batches, and stop once Δ_k has settled below ``tol``.

    Batches of ``batch_size`` are revealed one at a time in the data's fixed order; after each, the model takes
    ``steps_per_batch`` Adam steps on mini-batches drawn (with replacement, seeded) from the batches seen so
    far, and :class:`OnlineStopping` updates Δ_k from the second batch on. Training uses cross-entropy.

    Args:
        data: the dataset in its fixed order; only full batches are used.
        model: ``"linear"``, ``"mlp"`` or ``"cnn"``.
        hidden: the MLP's hidden widths.
        channels: the CNN's conv widths.
        activation: the hidden nonlinearity (:func:`~hesslib.models.make_model`).
        batch_size: B, the samples per batch (also the training mini-batch size).
        steps_per_batch: Adam steps after each revealed batch.
        lr: Adam's learning rate.
        D: the subspace dimension.
        sigma: σ of θ ~ N(0, σ² I_D), > 0.
        tol: the tolerance Δ, > 0.
        patience: consecutive estimates below ``tol`` needed to stop, ≥ 1.
        formula: ``"second_order"`` or ``"paper"``.
        max_batches: reveal at most this many batches (None: all full batches).
        seed: seeds the model's initialisation (and torch's global generator), the mini-batch draws and the
            Monte Carlo θ.
        monte_carlo_samples: T ≥ 0; T > 0 also measures Δ_k by Monte Carlo at every update (see
            :class:`OnlineStopping`), and ``K_monte_carlo`` is the rule applied to those.
        stop_when_settled: stop once the rule settles (Algorithm 1); False reveals all batches, so that the rule
            on the closed form and on Monte Carlo can both be read off one run.
        device: where the model trains and every estimate is computed (the data are moved there once; the
            mini-batch draws stay on the CPU generator, so a run draws the same mini-batches on every device).
        progress: show a progress bar.

    Returns:
        An :class:`OnlineResult`.

    Raises:
        ValueError: if fewer than 2 batches can be revealed, and as :class:`OnlineStopping` and
            :func:`~hesslib.models.make_model`.
    """
    N = len(data) // batch_size if max_batches is None else min(max_batches, len(data) // batch_size)
    if N < 2:
        raise ValueError(f"need at least 2 full batches of {batch_size}, the data gives {len(data) // batch_size}")
    device = torch.device(check_device("device", device))
    start = time.perf_counter()
    net = make_model(model, data.input_shape, data.num_classes, hidden=hidden, channels=channels,
                     activation=activation, seed=seed).to(device)
    X, y = data.X.to(device), data.y.to(device)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    monitor = OnlineStopping(D=D, sigma=sigma, tol=tol, patience=patience, formula=formula,
                             monte_carlo_samples=monte_carlo_samples, mc_seed=seed)
    with training_threads(device):
        bar = progress_bar(range(N), desc="online stopping", unit="batch", enabled=progress)
        for i in bar:
            part = slice(i * batch_size, (i + 1) * batch_size)
            monitor.add_batch(X[part], y[part])
            seen = (i + 1) * batch_size
            net.train()
            for _ in range(steps_per_batch):
                idx = torch.randint(0, seen, (batch_size,), generator=generator).to(device)
                opt.zero_grad(set_to_none=True)
                per_sample_loss(net(X[idx]), y[idx], "cross_entropy").mean().backward()
                opt.step()
            net.eval()
            if monitor.num_batches >= 2:
                delta = monitor.update(net)
                bar.set_postfix(k=monitor.ks[-1], delta=f"{delta:.2e}")
                if stop_when_settled and monitor.settled:
                    break
        bar.close()
    K = first_settled(monitor.ks, monitor.deltas, tol, patience)
    loss_at_K = monitor.losses[monitor.ks.index(K)] if K is not None else None
    K_mc = first_settled(monitor.ks, monitor.mc_deltas, tol, patience) if monitor.mc_deltas else None
    return OnlineResult(K, net, monitor.ks, monitor.deltas, loss_at_K, time.perf_counter() - start, monitor.hvps,
                        monitor.losses, monitor.mc_deltas, monitor.mc_stderr, K_mc)
