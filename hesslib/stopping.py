"""The paper's Algorithm 1 as an online stopping rule, with its test fixed to Δ_k < tol.

Drive :class:`OnlineStopping` from any training loop: ``add_batch`` the next batch, train, ``update(model)``;
it re-estimates the top-D subspace at the current weights (block Lanczos warm-started from the previous
subspace), computes Δ_k for the newest pair (L_k, L_{k+1}) with the second-order estimate (or the paper's
formula) from one pass of :func:`~hesslib.hessian.projected_hessians`, and reports whether Δ has stayed below
``tol`` for ``patience`` consecutive k. K is the first k of that run. :func:`run_online_stopping` is such a loop.

Offline, the paper's Table 1: :func:`sample_size_row` trains one model from scratch, solves for the top-D
Hessian eigenvectors and runs Monte Carlo, timing each step, and reads K and L_K(w*) for each tolerance;
:func:`sample_size_table` does that for datasets x models (skipping datasets whose files are missing) and
:func:`table_cells` / :func:`format_table` lay the rows out as text.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .cache import DEFAULT_CACHE_DIR, cached
from .data import Dataset, load_dataset
from .eigen import top_eigenpairs
from .estimators import (
    KINDS,
    DeltaCurve,
    delta_from_losses,
    gaussian_thetas,
    sample_size_curve,
    sufficient_sample_size,
    theory_from_curvature,
)
from .hessian import Objective, projected_hessians
from .losses import check_loss, per_sample_loss
from .models import make_model
from .subspace import subspace_losses
from .training import train


class OnlineStopping:
    """Online Δ-sufficient sample size: Δ_k < ``tol`` for ``patience`` consecutive k (in batches)."""

    def __init__(
        self,
        *,
        D: int = 10,
        sigma: float = 1.0,
        tol: float = 0.025,
        patience: int = 5,
        loss: str = "cross_entropy",
        estimator: str = "second_order",
        eig_tol: float = 1e-3,
    ) -> None:
        check_loss(loss)
        if estimator not in KINDS:
            raise ValueError(f"estimator must be one of {KINDS}, got {estimator!r}")
        if not (sigma > 0 and tol > 0 and eig_tol > 0):
            raise ValueError(f"sigma, tol and eig_tol must be > 0, got {sigma}, {tol}, {eig_tol}")
        if not isinstance(D, int) or D < 1 or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"D and patience must be integers >= 1, got D={D!r}, patience={patience!r}")
        self.D, self.sigma, self.tol, self.patience = D, sigma, tol, patience
        self.loss, self.estimator, self.eig_tol = loss, estimator, eig_tol
        self._X: list[torch.Tensor] = []
        self._y: list[torch.Tensor] = []
        self._P: torch.Tensor | None = None
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
        init = self._P if self._P is not None and self._P.shape == (objective.num_params, D) else None
        eig = top_eigenpairs(objective, D, tol=self.eig_tol, init=init, seed=len(self.ks))
        self._P, self.hvps = eig.eigenvectors, self.hvps + eig.num_hvps
        curvature = projected_hessians(objective, self._P)
        delta = float(theory_from_curvature(curvature, self.sigma, self.estimator)[-1])
        self.ks.append(self.num_batches - 1)
        self.deltas.append(delta)
        return delta

    @property
    def settled(self) -> bool:
        """Whether the last ``patience`` estimates are all below ``tol``."""
        recent = self.deltas[-self.patience :]
        return len(recent) == self.patience and all(d < self.tol for d in recent)

    @property
    def K(self) -> int | None:
        """The first k of the final run of estimates below ``tol`` once settled, else None."""
        if not self.settled:
            return None
        below = np.asarray(self.deltas) < self.tol
        above = np.flatnonzero(~below)
        return self.ks[0] if len(above) == 0 else self.ks[above[-1] + 1]


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
    monitor = OnlineStopping(D=D, sigma=sigma, tol=tol, patience=patience)
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


# ---- offline: the paper's Table 1 ------------------------------------------------------------------------------
@dataclass
class SampleSizeRow:
    """One model on one dataset: K (in batches) and L_K(w*) for each tolerance, read from a Monte Carlo Δ_k curve
    along the top-D Hessian eigenvectors, and the wall time of each step (``seconds``: "train", "eigen",
    "monte_carlo") as measured when the row was computed from scratch with ``threads`` CPU threads.

    ``K_range`` brackets each K by Monte Carlo noise: K of Δ − 2 s.e. and of Δ + 2 s.e. (NaN: never settles).
    """

    dataset: str
    model: str
    num_params: int
    num_batches: int
    tolerances: list[float]
    K: list[int | None]
    K_range: list[tuple[float, float]]
    loss_at_K: list[float | None]
    train_accuracy: float
    curve: DeltaCurve
    seconds: dict[str, float]
    threads: int
    config: dict = field(default_factory=dict)
    computed_now: bool = True  # False: read from the cache, ``seconds`` as measured when it was computed

    @property
    def total_seconds(self) -> float:
        """Train + eigen-solve + Monte Carlo, the cost of the row (one computation serves every tolerance)."""
        return float(sum(self.seconds.values()))


def sample_size_row(
    dataset: str,
    *,
    model: str,
    tolerances: Sequence[float],
    limit: int | None = None,
    root: str | Path = "data",
    hidden: Sequence[int] = (256, 256),
    channels: Sequence[int] = (8, 16),
    epochs: int = 10,
    lr: float = 1e-3,
    train_batch_size: int = 64,
    seed: int = 0,
    batch_size: int = 64,
    D: int = 10,
    sigma: float = 1.0,
    samples: int = 1024,
    eig_tol: float = 1e-4,
    device: str = "cpu",
    cache_dir: str | Path | None = DEFAULT_CACHE_DIR,
    progress: bool = True,
) -> SampleSizeRow:
    """One row of the paper's Table 1, computed from scratch and timed step by step.

    Trains w* (the same recipe as :class:`~hesslib.experiment.Experiment`, but never from the training cache),
    finds the top-``D`` Hessian eigenvectors (Lanczos to ``eig_tol``, seed 0, as ``Experiment.eigenpairs``),
    evaluates the [``samples``, N] loss matrix for θ ~ N(0, σ² I_D) (seed ``seed``) and reads K and L_K(w*)
    for every tolerance. The measurement (curve, per-batch losses at w*, step times) is stored under
    ``cache_dir`` keyed by its configuration, so a re-run reports the times recorded when it was computed;
    ``cache_dir=None`` always recomputes. Tolerances are not part of the key: K is read afterwards.
    """
    if not tolerances or any(not (isinstance(t, int | float) and t > 0) for t in tolerances):
        raise ValueError(f"tolerances must be a non-empty list of numbers > 0, got {tolerances!r}")
    if not isinstance(samples, int) or samples < 2:
        raise ValueError(f"samples must be an integer >= 2 (for a standard error), got {samples!r}")
    data = load_dataset(dataset, root=root, limit=limit)
    config = dict(dataset=dataset, limit=len(data), model=model, hidden=list(hidden), channels=list(channels),
                  epochs=epochs, lr=lr, train_batch_size=train_batch_size, seed=seed, batch_size=batch_size, D=D,
                  sigma=float(sigma), samples=samples, eig_tol=eig_tol, device=str(device))

    computed = []

    def measure() -> dict:
        computed.append(True)
        start = time.perf_counter()
        net, record = train(dataset, model=model, limit=limit, root=root, hidden=hidden, channels=channels,
                            lr=lr, epochs=epochs, batch_size=train_batch_size, seed=seed, device=device,
                            cache_dir=None, progress=progress)
        trained = time.perf_counter()
        objective = Objective(net, data.X, data.y, batch_size=batch_size, device=device)
        eig = top_eigenpairs(objective, D, tol=eig_tol, seed=0, progress=progress)
        solved = time.perf_counter()
        thetas = gaussian_thetas(D, sigma, samples, seed=seed)
        losses = subspace_losses(objective, eig.eigenvectors, thetas, progress=progress)
        delta, stderr = delta_from_losses(losses)
        done = time.perf_counter()
        return dict(delta=delta, stderr=stderr, batch_losses=objective.batch_losses().cpu().double().numpy(),
                    num_params=objective.num_params, train_accuracy=record.train_accuracy,
                    eig_converged=bool(eig.converged), eig_hvps=int(eig.num_hvps), threads=torch.get_num_threads(),
                    seconds=dict(train=trained - start, eigen=solved - trained, monte_carlo=done - solved))

    m = cached("sample-size-row", config, measure, cache_dir=cache_dir)
    N = len(m["batch_losses"])
    curve = DeltaCurve(np.arange(1, N), m["delta"], m["stderr"], "Monte Carlo", float(sigma),
                       {"samples": samples, "seed": seed, "D": D, "directions": "hessian",
                        "eig_converged": m["eig_converged"], "eig_hvps": m["eig_hvps"]})
    Ks = [sufficient_sample_size(curve, float(t)) for t in tolerances]
    low, high = sample_size_curve(curve, tolerances, z=-2.0), sample_size_curve(curve, tolerances, z=2.0)
    loss_at_K = [None if K is None else float(np.mean(m["batch_losses"][:K])) for K in Ks]
    return SampleSizeRow(dataset, model, int(m["num_params"]), N, [float(t) for t in tolerances], Ks,
                         [(float(a), float(b)) for a, b in zip(low, high, strict=True)], loss_at_K,
                         float(m["train_accuracy"]), curve, dict(m["seconds"]), int(m["threads"]), config,
                         computed_now=bool(computed))


def sample_size_table(
    datasets: Sequence[tuple[str, int | None]],
    models: Sequence[str],
    *,
    tolerances: Sequence[float],
    root: str | Path = "data",
    **kwargs,
) -> tuple[list[SampleSizeRow], list[str]]:
    """:func:`sample_size_row` for every (dataset, limit) x model; returns (rows, skipped), where ``skipped``
    says why a dataset was left out (its files are missing: ``load_dataset`` raised FileNotFoundError)."""
    rows: list[SampleSizeRow] = []
    skipped: list[str] = []
    for name, limit in datasets:
        try:
            load_dataset(name, root=root, limit=1)
        except FileNotFoundError as exc:
            skipped.append(f"{name}: skipped, {exc}")
            continue
        for model in models:
            rows.append(sample_size_row(name, model=model, tolerances=tolerances, limit=limit, root=root, **kwargs))
    return rows, skipped


TABLE_HEADER = ("dataset", "model", "params", "N", "Δ (tol)", "K", "K (Δ ± 2 s.e.)", "K·B samples", "L_K(w*)",
                "time, s")


def format_K(K: int | float | None, num_batches: int) -> str:
    """K as text: the number of batches, or "never (K > N − 1)" when Δ does not settle (None or NaN)."""
    if K is None or (isinstance(K, float) and np.isnan(K)):
        return f"never (K > {num_batches - 1})"
    return str(int(K))


def table_cells(rows: Sequence[SampleSizeRow]) -> tuple[tuple[str, ...], list[list[str]]]:
    """(header, cells) of the table, one line per row and tolerance: K and K·B ("not reached" if Δ never
    settles below the tolerance within N − 1), the ±2 s.e. bracket of K, L_K(w*) and the row's total time."""
    cells = []
    for row in rows:
        batch_size = row.config.get("batch_size", 64)
        for tol, K, (low, high), loss in zip(row.tolerances, row.K, row.K_range, row.loss_at_K, strict=True):
            bracket = "–".join("never" if np.isnan(v) else str(int(v)) for v in (low, high))
            cells.append([row.dataset, row.model, f"{row.num_params:,}", str(row.num_batches), f"{tol:g}",
                          "not reached" if K is None else str(K), bracket,
                          "–" if K is None else f"{K * batch_size:,}", "–" if loss is None else f"{loss:.4f}",
                          f"{row.total_seconds:.1f}"])
    return TABLE_HEADER, cells


def format_table(rows: Sequence[SampleSizeRow]) -> str:
    """The table as GitHub-flavoured markdown, columns padded so it also reads as plain text."""
    header, cells = table_cells(rows)
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(header)]

    def line(values: Sequence[str]) -> str:
        return "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)) + " |"

    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells)])
