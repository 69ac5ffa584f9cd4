"""Reading a grid of losses over a 2-D slice w = w* + Pθ: the surfaces of L_k and (L_{k+1} − L_k)².

Notebooks 02 and 03 draw these surfaces on common scales and show how much the surface moves with k. Every
function takes the [points², N] matrix of per-batch losses on a ``points`` x ``points`` grid
(:meth:`~hesslib.experiment.Experiment.surface`, or :func:`~hesslib.subspace.subspace_losses` of
:func:`~hesslib.subspace.grid_thetas`) and gets L_k and L_{k+1} − L_k from
:func:`~hesslib.estimators.prefix_means` and :func:`~hesslib.estimators.loss_changes`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .estimators import DeltaCurve, loss_changes, prefix_means


def _grid_points(losses: torch.Tensor) -> int:
    """The points per axis of a [points², N] grid loss matrix (N ≥ 2), or a ValueError."""
    if losses.dim() != 2 or losses.shape[1] < 2:
        raise ValueError(f"losses must be [grid points, N] with N >= 2, got {list(losses.shape)}")
    points = round(losses.shape[0] ** 0.5)
    if points * points != losses.shape[0]:
        raise ValueError(f"losses must have points² rows (a square grid), got {losses.shape[0]}")
    return points


def surfaces_at(losses: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The surfaces L_k(θ) and (L_{k+1}(θ) − L_k(θ))² on the grid, for one k.

    Args:
        losses: per-batch losses ℓ_i(w* + Pθ) on a square grid, [points², N] with N ≥ 2, rows in the row-major
            order of :func:`~hesslib.subspace.grid_thetas`.
        k: the number of batches, 1 ≤ k ≤ N − 1.

    Returns:
        (L_k, change): two float64 numpy arrays [points, points].

    Raises:
        ValueError: if ``losses`` is not [points², N ≥ 2] or ``k`` is outside [1, N − 1].

    Example:
        >>> L_k, change = surfaces_at(torch.tensor([[1.0, 3.0, 2.0]] * 4), 1)
        >>> L_k.tolist(), change.tolist()
        ([[1.0, 1.0], [1.0, 1.0]], [[1.0, 1.0], [1.0, 1.0]])
    """
    points, N = _grid_points(losses), losses.shape[1]
    if not 1 <= k < N:
        raise ValueError(f"k must be in [1, {N - 1}] (N - 1 = num_batches - 1), got {k}")
    L_k = prefix_means(losses)[:, k - 1]
    change = loss_changes(losses)[:, k - 1].numpy() ** 2
    return L_k.reshape(points, points), change.reshape(points, points)


@dataclass
class SurfaceLimits:
    """Common z-limits of the surfaces over several k, so that surfaces at different k share one scale.

    Attributes:
        loss: (low, high) of L_k.
        change: (low, high) of (L_{k+1} − L_k)², low = 0.
    """

    loss: tuple[float, float]
    change: tuple[float, float]


def surface_limits(losses: torch.Tensor, ks: Sequence[int]) -> SurfaceLimits:
    """The min and max of L_k(θ) and of (L_{k+1}(θ) − L_k(θ))² over every grid point and every k in ``ks``.

    Args:
        losses: a grid loss matrix [points², N], N ≥ 2 (see :func:`surfaces_at`).
        ks: the k to cover, each in [1, N − 1].

    Returns:
        A :class:`SurfaceLimits`; the change's lower limit is 0.

    Raises:
        ValueError: if ``ks`` is empty, or as :func:`surfaces_at`.
    """
    if not len(ks):
        raise ValueError("ks must name at least one k")
    surfaces = [surfaces_at(losses, int(k)) for k in ks]
    loss = (min(float(L.min()) for L, _ in surfaces), max(float(L.max()) for L, _ in surfaces))
    return SurfaceLimits(loss, (0.0, max(float(C.max()) for _, C in surfaces)))


def surface_change_curves(losses: torch.Tensor, label: str = "") -> tuple[DeltaCurve, DeltaCurve]:
    """The mean and the max over the grid of (L_{k+1}(θ) − L_k(θ))², for every k = 1..N−1 at once.

    How much one more batch moves the surface, on average and at worst.

    Args:
        losses: a grid loss matrix [points², N], N ≥ 2 (see :func:`surfaces_at`).
        label: prefixed to each curve's label.

    Returns:
        (mean, max): two :class:`~hesslib.estimators.DeltaCurve` with k = 1..N−1, zero ``stderr`` (the grid is
        fixed, not sampled), σ = NaN and ``meta["grid_points"]`` = points².

    Raises:
        ValueError: if ``losses`` is not [points², N ≥ 2].
    """
    _grid_points(losses)
    squared = loss_changes(losses) ** 2
    ks = np.arange(1, losses.shape[1])
    zeros = np.zeros(len(ks))
    meta = {"grid_points": losses.shape[0]}
    return (DeltaCurve(ks, squared.mean(0).numpy(), zeros, f"{label} mean over the grid".strip(), float("nan"), meta),
            DeltaCurve(ks, squared.amax(0).numpy(), zeros, f"{label} max over the grid".strip(), float("nan"), meta))
