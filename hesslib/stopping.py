"""The paper's Algorithm 1 as an online stopping rule, with its test fixed to Δ_k < tol.

Drive :class:`OnlineStopping` from any training loop: ``add_batch`` the next batch, train, ``update(model)``;
it re-estimates the top-D subspace at the current weights (block Lanczos warm-started from the previous
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
from tqdm.auto import tqdm

from .data import Dataset
from .eigen import top_eigenpairs
from .estimators import FORMULAS, DeltaCurve, Formula, delta_from_curvature, sufficient_sample_size
from .hessian import Objective, projected_hessians
from .losses import Loss, check_loss, per_sample_loss
from .models import make_model


class OnlineStopping:
    """Online Δ-sufficient sample size: Δ_k < ``tol`` for ``patience`` consecutive k (in batches)."""

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
    ) -> None:
        check_loss(loss)
        if formula not in FORMULAS:
            raise ValueError(f"formula must be one of {FORMULAS}, got {formula!r}")
        if not (sigma > 0 and tol > 0 and eig_tol > 0):
            raise ValueError(f"sigma, tol and eig_tol must be > 0, got {sigma}, {tol}, {eig_tol}")
        if not isinstance(D, int) or D < 1 or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"D and patience must be integers >= 1, got D={D!r}, patience={patience!r}")
        self.D, self.sigma, self.tol, self.patience = D, sigma, tol, patience
        self.loss, self.formula, self.eig_tol = loss, formula, eig_tol
        self._X: list[torch.Tensor] = []
        self._y: list[torch.Tensor] = []
        self.basis: torch.Tensor | None = None  # P at the latest update
        self.ks: list[int] = []
        self.deltas: list[float] = []
        self.hvps = 0

    @property
    def num_batches(self) -> int:
        return len(self._X)

    def add_batch(self, X: torch.Tensor, y: torch.Tensor) -> None:
        """Append batch k+1 (all batches must have the same size, the batch size B)."""
        if self._X and len(X) != len(self._X[0]):
            raise ValueError(f"every batch must have {len(self._X[0])} samples (the first batch's size), got {len(X)}")
        self._X.append(X)
        self._y.append(y)

    def update(self, model: nn.Module) -> float:
        """Δ_k for the newest pair (k = batches − 1) at the model's current weights; needs ≥ 2 batches."""
        if self.num_batches < 2:
            raise ValueError("update needs at least 2 batches: add_batch first")
        X, y = torch.cat(self._X), torch.cat(self._y)
        objective = Objective(model, X, y, batch_size=len(self._X[0]), loss=self.loss)
        D = min(self.D, objective.num_params - 1)
        init = self.basis if self.basis is not None and self.basis.shape == (objective.num_params, D) else None
        eig = top_eigenpairs(objective, D, tol=self.eig_tol, init=init, seed=len(self.ks))
        self.basis, self.hvps = eig.eigenvectors, self.hvps + eig.num_hvps
        curvature = projected_hessians(objective, self.basis)
        delta = float(delta_from_curvature(curvature, self.sigma, self.formula).delta[-1])
        self.ks.append(self.num_batches - 1)
        self.deltas.append(delta)
        return delta

    @property
    def settled(self) -> bool:
        """Whether the last ``patience`` estimates are all below ``tol``."""
        recent = self.deltas[-self.patience :]
        return len(recent) == self.patience and all(d < self.tol for d in recent)

    @property
    def history(self) -> DeltaCurve:
        """The estimates so far as a curve: Δ_k at each k, each measured at the weights of its own update."""
        deltas = np.asarray(self.deltas, dtype=float)
        return DeltaCurve(np.asarray(self.ks, dtype=int), deltas, np.zeros_like(deltas),
                          f"online, {self.formula.replace('_', '-')}", float(self.sigma), {"D": self.D})

    @property
    def K(self) -> int | None:
        """Once settled, K of :func:`~hesslib.estimators.sufficient_sample_size` on the history (the first k of
        the final run of estimates below ``tol``); None before."""
        return sufficient_sample_size(self.history, self.tol) if self.settled else None


@dataclass
class OnlineResult:
    """What :func:`run_online_stopping` found: K (None if never settled), the model, the Δ_k history."""

    K: int | None
    model: nn.Module
    ks: list[int] = field(default_factory=list)
    deltas: list[float] = field(default_factory=list)
    loss_at_K: float | None = None
    seconds: float = 0.0
    hvps: int = 0


def run_online_stopping(
    data: Dataset,
    *,
    model: str = "mlp",
    hidden: tuple[int, ...] = (256, 256),
    channels: tuple[int, ...] = (8, 16),
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
    progress: bool = True,
) -> OnlineResult:
    """Algorithm 1: reveal batches one at a time in the fixed order, take ``steps_per_batch`` Adam steps on
    mini-batches drawn from the batches seen so far, and stop once Δ_k has settled below ``tol``."""
    N = len(data) // batch_size if max_batches is None else min(max_batches, len(data) // batch_size)
    if N < 2:
        raise ValueError(f"need at least 2 full batches of {batch_size}, the data gives {len(data) // batch_size}")
    start = time.perf_counter()
    net = make_model(model, data.input_shape, data.num_classes, hidden=hidden, channels=channels, seed=seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    monitor = OnlineStopping(D=D, sigma=sigma, tol=tol, patience=patience, formula=formula)
    bar = tqdm(range(N), desc="online stopping", unit="batch", disable=not progress)
    for i in bar:
        part = slice(i * batch_size, (i + 1) * batch_size)
        monitor.add_batch(data.X[part], data.y[part])
        seen = (i + 1) * batch_size
        net.train()
        for _ in range(steps_per_batch):
            idx = torch.randint(0, seen, (batch_size,), generator=generator)
            opt.zero_grad(set_to_none=True)
            per_sample_loss(net(data.X[idx]), data.y[idx], "cross_entropy").mean().backward()
            opt.step()
        net.eval()
        if monitor.num_batches >= 2:
            delta = monitor.update(net)
            bar.set_postfix(k=monitor.ks[-1], delta=f"{delta:.2e}")
            if monitor.settled:
                break
    bar.close()
    K = monitor.K
    loss_at_K = None
    if K is not None:
        with torch.no_grad():
            loss_at_K = float(per_sample_loss(net(data.X[: K * batch_size]), data.y[: K * batch_size],
                                              "cross_entropy").mean())
    return OnlineResult(K, net, monitor.ks, monitor.deltas, loss_at_K, time.perf_counter() - start, monitor.hvps)
