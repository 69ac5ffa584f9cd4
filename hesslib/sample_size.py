"""The paper's Table 1, offline: the Δ-sufficient sample size K per dataset x model x tolerance.

:func:`sample_size_row` trains one model from scratch, solves for the top-D Hessian eigenvectors and runs
Monte Carlo, timing each step, and reads K and L_K(w*) for each tolerance; :func:`sample_size_table` does that
for datasets x models (skipping datasets whose files are missing) and :func:`table_cells` /
:func:`format_table` lay the rows out as text. (The online rule is :mod:`hesslib.stopping`.)
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .cache import DEFAULT_CACHE_DIR, cached
from .data import idx_paths, load_dataset
from .eigen import top_eigenpairs
from .estimators import (
    DeltaCurve,
    delta_from_losses,
    format_K,
    gaussian_thetas,
    order_average,
    sample_size_curve,
    sufficient_sample_size,
)
from .hessian import Objective
from .subspace import subspace_losses
from .training import train
from .uncertainty import sample_size_distribution


@dataclass
class SampleSizeRow:
    """One model on one dataset: K and L_K(w*) for each tolerance, and what the measurement cost.

    K (in batches) is read from a Monte Carlo Δ_k curve along the top-D Hessian eigenvectors.

    Attributes:
        dataset: the dataset's name.
        model: the model's name.
        num_params: M.
        num_batches: N, the analysis batches.
        tolerances: the tolerances Δ.
        K: K for each tolerance (None: never settles).
        K_range: for each tolerance, K of Δ − 2 s.e. and of Δ + 2 s.e. (NaN: never settles), bracketing K by
            Monte Carlo noise.
        K_orders: for each tolerance, the 5 % and 95 % quantiles of K over ``ORDERS`` random batch orders of the
            same loss matrix (:func:`~hesslib.uncertainty.sample_size_distribution`; NaN: never settles).
        loss_at_K: L_K(w*) = (1/K) Σ_{i≤K} ℓ_i(w*) for each tolerance (None without K).
        train_accuracy: the training accuracy of w*.
        curve: the Monte Carlo Δ_k curve.
        order_average: E_π[Δ_k] over all batch orders of the same loss matrix
            (:func:`~hesslib.estimators.order_average`), the scale for a tolerance relative to Δ_1.
        seconds: the wall time of each step ("train", "eigen", "monte_carlo") as measured when the row was
            computed from scratch.
        threads: the CPU threads torch used then.
        config: the measurement's configuration (its cache key).
        computed_now: False when the measurement was read from the cache.
    """

    dataset: str
    model: str
    num_params: int
    num_batches: int
    tolerances: list[float]
    K: list[int | None]
    K_range: list[tuple[float, float]]
    K_orders: list[tuple[float, float]]
    loss_at_K: list[float | None]
    train_accuracy: float
    curve: DeltaCurve
    order_average: DeltaCurve
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
    activation: str = "relu",
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

    Args:
        dataset: a name accepted by :func:`~hesslib.data.load_dataset`.
        model: ``"linear"``, ``"mlp"`` or ``"cnn"``.
        tolerances: the tolerances Δ, a non-empty sequence of numbers > 0.
        limit: use the first ``limit`` samples (None: all).
        root: the data folder.
        hidden: the MLP's hidden widths.
        channels: the CNN's conv widths.
        activation: the hidden nonlinearity (:func:`~hesslib.models.make_model`).
        epochs: training epochs.
        lr: Adam's learning rate.
        train_batch_size: the training mini-batch size.
        seed: the training seed, also the seed of θ.
        batch_size: B, the analysis batch size.
        D: the subspace dimension.
        sigma: σ of θ ~ N(0, σ² I_D).
        samples: T, the number of θ, an int ≥ 2.
        eig_tol: the eigen-solver's relative residual.
        device: where to compute.
        cache_dir: the cache folder; None always recomputes.
        progress: show progress bars.

    Returns:
        A :class:`SampleSizeRow`.

    Raises:
        ValueError: if ``tolerances`` is empty or holds a value that is not a number > 0, ``samples`` is not
            an int ≥ 2, and as :func:`~hesslib.training.train` and :func:`~hesslib.eigen.top_eigenpairs`.
        FileNotFoundError: if the dataset's files are missing.
    """
    if not tolerances or any(not (isinstance(t, int | float) and t > 0) for t in tolerances):
        raise ValueError(f"tolerances must be a non-empty list of numbers > 0, got {tolerances!r}")
    if not isinstance(samples, int) or samples < 2:
        raise ValueError(f"samples must be an integer >= 2 (for a standard error), got {samples!r}")
    data = load_dataset(dataset, root=root, limit=limit)
    config = dict(dataset=dataset, limit=len(data), model=model, hidden=list(hidden), channels=list(channels),
                  activation=activation, epochs=epochs, lr=lr, train_batch_size=train_batch_size, seed=seed,
                  batch_size=batch_size, D=D, sigma=float(sigma), samples=samples, eig_tol=eig_tol, device=str(device))

    computed = []

    def measure() -> dict:
        computed.append(True)
        start = time.perf_counter()
        net, record = train(dataset, model=model, limit=limit, root=root, hidden=hidden, channels=channels,
                            activation=activation, lr=lr, epochs=epochs, batch_size=train_batch_size, seed=seed,
                            device=device, cache_dir=None, progress=progress)
        trained = time.perf_counter()
        objective = Objective(net, data.X, data.y, batch_size=batch_size, device=device)
        eig = top_eigenpairs(objective, D, tol=eig_tol, seed=0, progress=progress)
        solved = time.perf_counter()
        thetas = gaussian_thetas(D, sigma, samples, seed=seed)
        losses = subspace_losses(objective, eig.eigenvectors, thetas, progress=progress)
        curve = delta_from_losses(losses, sigma=sigma, meta=dict(seed=seed, D=D, directions="hessian",
                                                                 eig_converged=bool(eig.converged),
                                                                 eig_hvps=int(eig.num_hvps)))
        done = time.perf_counter()
        return dict(curve=curve, losses=losses.cpu().double().numpy(),
                    batch_losses=objective.batch_losses().cpu().double().numpy(),
                    num_params=objective.num_params, train_accuracy=record.train_accuracy,
                    eig_converged=bool(eig.converged), eig_hvps=int(eig.num_hvps), threads=torch.get_num_threads(),
                    seconds=dict(train=trained - start, eigen=solved - trained, monte_carlo=done - solved))

    m = cached("sample-size-row", config, measure, cache_dir=cache_dir,
               validate=lambda value: isinstance(value.get("curve"), DeltaCurve) and "losses" in value)
    N, curve = len(m["batch_losses"]), m["curve"]
    Ks = [sufficient_sample_size(curve, float(t)) for t in tolerances]
    low, high = sample_size_curve(curve, tolerances, z=-2.0), sample_size_curve(curve, tolerances, z=2.0)
    loss_at_K = [None if K is None else float(np.mean(m["batch_losses"][:K])) for K in Ks]
    over_orders = [sample_size_distribution(m["losses"], float(t), orders=ORDERS, seed=seed).interval(0.9)
                   for t in tolerances]
    return SampleSizeRow(dataset, model, int(m["num_params"]), N, [float(t) for t in tolerances], Ks,
                         [(float(a), float(b)) for a, b in zip(low, high, strict=True)], over_orders, loss_at_K,
                         float(m["train_accuracy"]), curve, order_average(m["losses"], sigma=float(sigma)),
                         dict(m["seconds"]), int(m["threads"]), config,
                         computed_now=bool(computed))


def sample_size_table(
    datasets: Sequence[tuple[str, int | None]],
    models: Sequence[str],
    *,
    tolerances: Sequence[float],
    root: str | Path = "data",
    **kwargs,
) -> tuple[list[SampleSizeRow], list[str]]:
    """The paper's Table 1: :func:`sample_size_row` for every (dataset, limit) x model.

    A dataset whose files are missing (``load_dataset`` raises FileNotFoundError) is skipped, not an error.

    Args:
        datasets: (name, limit) pairs; limit None uses all samples.
        models: model names, e.g. ``("linear", "mlp")``.
        tolerances: the tolerances Δ, numbers > 0.
        root: the data folder.
        **kwargs: passed to :func:`sample_size_row` (epochs, D, sigma, samples, cache_dir, ...).

    Returns:
        (rows, skipped): one :class:`SampleSizeRow` per dataset and model, in order, and one line per skipped
        dataset saying why.

    Raises:
        ValueError: as :func:`sample_size_row` (e.g. an unknown dataset name or a tolerance ≤ 0).
    """
    rows: list[SampleSizeRow] = []
    skipped: list[str] = []
    for name, limit in datasets:
        try:
            load_dataset(name, root=root, limit=1)
        except FileNotFoundError:  # the reason in a few words, with a path that does not depend on the machine
            folder = idx_paths(name, Path(root).name, "train")[0].parent
            skipped.append(f"{name}: skipped, its IDX files are not in {folder}/ (see data/README.md)")
            continue
        for model in models:
            rows.append(sample_size_row(name, model=model, tolerances=tolerances, limit=limit, root=root, **kwargs))
    return rows, skipped


TABLE_HEADER = ("dataset", "model", "params", "N", "Δ (tol)", "K", "K (Δ ± 2 s.e.)", "K, 90 % over orders",
                "K·B samples", "L_K(w*)", "time, s")
ORDERS = 1000  # random batch orders behind the "over orders" interval of every row


def table_cells(rows: Sequence[SampleSizeRow]) -> tuple[tuple[str, ...], list[list[str]]]:
    """The table's header and cells, one line per row and tolerance.

    Each line holds the dataset, model, M, N, the tolerance, K (:func:`~hesslib.estimators.format_K`), the ±2 s.e.
    bracket of K, its 90 % interval over random batch orders, K·B samples, L_K(w*) and the row's total time.

    Args:
        rows: rows from :func:`sample_size_table` or :func:`sample_size_row`.

    Returns:
        (header, cells): the column names (:data:`TABLE_HEADER`) and a list of lines, each a list of strings.
    """
    cells = []
    for row in rows:
        batch_size = row.config.get("batch_size", 64)
        for tol, K, (low, high), orders, loss in zip(row.tolerances, row.K, row.K_range, row.K_orders, row.loss_at_K,
                                                     strict=True):
            bracket = "–".join(format_K(v, row.num_batches) for v in (low, high))
            over_orders = "–".join(format_K(v, row.num_batches) for v in orders)
            cells.append([row.dataset, row.model, f"{row.num_params:,}", str(row.num_batches), f"{tol:g}",
                          format_K(K, row.num_batches), bracket, over_orders,
                          "–" if K is None else f"{K * batch_size:,}", "–" if loss is None else f"{loss:.4f}",
                          f"{row.total_seconds:.1f}"])
    return TABLE_HEADER, cells


def format_table(rows: Sequence[SampleSizeRow]) -> str:
    """The table of :func:`table_cells` as GitHub-flavoured markdown, columns padded so it reads as plain text.

    Args:
        rows: rows from :func:`sample_size_table` or :func:`sample_size_row`.

    Returns:
        The markdown table: a header line, a separator line and one line per row and tolerance.
    """
    header, cells = table_cells(rows)
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(header)]

    def line(values: Sequence[str]) -> str:
        return "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)) + " |"

    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells)])
