"""How certain is K? Its distribution over batch orders, over θ draws and over training seeds.

K is read off one Monte Carlo curve made from one [T, N] loss matrix ℓ_i(w* + Pθ_t). Three things it was not
averaged over can move it, and each is re-read from data already computed:

* the batch order: :func:`delta_over_orders` / :func:`sample_size_distribution` permute the columns of the
  cached matrix (no new forward passes; the exact order average of Δ_k is :func:`~hesslib.estimators.order_average`);
* the θ draws: :func:`sample_size_bootstrap` resamples its rows;
* the training run: :meth:`SampleSizeDistribution.from_values` of K over w* trained with several seeds.

Each gives a :class:`SampleSizeDistribution`: K per replicate (NaN where the curve never settles), its median and
a central interval, with "never settles" ranked above every finite K.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .estimators import _float64, loss_changes, sample_sizes

__all__ = ["SampleSizeDistribution", "delta_over_orders", "sample_size_bootstrap", "sample_size_distribution"]


@dataclass
class SampleSizeDistribution:
    """K over replicates of one source of variation (batch orders, θ bootstrap, training seeds).

    Attributes:
        K: float [R], K of each replicate in batches; NaN where that replicate's curve never settles.
        tol: the tolerance Δ.
        source: what was varied ("batch orders", "θ bootstrap", "training seeds", ...).
        num_batches: N (K ≤ N − 1 when it settles).
    """

    K: np.ndarray
    tol: float
    source: str
    num_batches: int

    @classmethod
    def from_values(cls, K: list[int | None] | np.ndarray, tol: float, source: str,
                    num_batches: int) -> SampleSizeDistribution:
        """From K values computed elsewhere (e.g. one per training seed); None means never settles.

        Example:
            >>> SampleSizeDistribution.from_values([3, None, 5], 0.1, "training seeds", 10).K.tolist()
            [3.0, nan, 5.0]
        """
        values = np.array([np.nan if K_i is None else float(K_i) for K_i in K])
        return cls(values, float(tol), source, int(num_batches))

    def __len__(self) -> int:
        return len(self.K)

    @property
    def never_settles(self) -> float:
        """The share of replicates whose curve never settles."""
        return float(np.mean(np.isnan(self.K))) if len(self.K) else float("nan")

    def quantile(self, q: float, method: str = "lower") -> float:
        """The q-quantile of K, NaN if it falls on "never settles" (those replicates rank above every finite K).

        ``method`` is NumPy's; "lower" and "higher" give a K that some replicate had.
        """
        ranked = np.where(np.isnan(self.K), np.inf, self.K)
        value = float(np.quantile(ranked, q, method=method))
        return float("nan") if np.isinf(value) else value

    @property
    def median(self) -> float:
        """The median K (NaN: at least half the replicates never settle)."""
        return self.quantile(0.5)

    def interval(self, level: float = 0.9) -> tuple[float, float]:
        """The central ``level`` interval of K, e.g. the 5 % and 95 % quantiles for 0.9 (NaN: never settles).

        The ends are K values of replicates, rounded outwards, so the interval holds at least ``level`` of them.

        Raises:
            ValueError: if ``level`` is not in (0, 1).
        """
        if not 0 < level < 1:
            raise ValueError(f"level must be in (0, 1), got {level!r}")
        return self.quantile((1 - level) / 2, "lower"), self.quantile((1 + level) / 2, "higher")


def _check_loss_matrix(batch_losses: np.ndarray | torch.Tensor) -> torch.Tensor:
    losses = _float64(batch_losses, "batch_losses")
    if losses.dim() != 2 or losses.shape[1] < 2:
        raise ValueError(f"batch_losses must be a [T, N] matrix with N >= 2, got shape {list(losses.shape)}")
    return losses


def _orders(N: int, orders: int | np.ndarray | torch.Tensor, seed: int) -> torch.Tensor:
    """[R, N] batch orders: ``orders`` uniformly random permutations (seeded), or the given [R, N] permutations."""
    if isinstance(orders, int) and not isinstance(orders, bool):
        if orders < 1:
            raise ValueError(f"orders must be an integer >= 1 or an [R, N] array of permutations, got {orders!r}")
        generator = torch.Generator().manual_seed(seed)
        return torch.stack([torch.randperm(N, generator=generator) for _ in range(orders)])
    perms = torch.as_tensor(np.asarray(orders), dtype=torch.long)
    if perms.dim() != 2 or perms.shape[1] != N or not torch.equal(perms.sort(1).values,
                                                                  torch.arange(N).expand_as(perms)):
        raise ValueError(f"orders must be an integer >= 1 or an [R, {N}] array of permutations of 0..{N - 1}, got "
                         f"shape {list(perms.shape)}")
    return perms


def delta_over_orders(batch_losses: np.ndarray | torch.Tensor, *, orders: int | np.ndarray = 200, seed: int = 0,
                      chunk: int = 16) -> np.ndarray:
    """Monte Carlo Δ_k under many batch orders: :func:`~hesslib.estimators.delta_from_losses` of column permutations.

    Row j holds Δ_k^{π_j} = (1/T) Σ_t (L_{k+1} − L_k)²(θ_t) with the batches taken in the order π_j (the same π for
    every θ). No new forward passes: the [T, N] matrix is re-read, ``chunk`` orders per vectorised step.

    Args:
        batch_losses: [T, N] per-batch losses ℓ_i(w* + Pθ_t), T ≥ 1, N ≥ 2.
        orders: the number of uniformly random orders (an int ≥ 1), or explicit permutations [R, N] (row j lists
            the batches in the order they are added; ``np.arange(N)[None]`` is the fixed order).
        seed: seeds the random permutations.
        chunk: orders per vectorised step, ≥ 1.

    Returns:
        float64 [R, N − 1]: row j, column k − 1 holds Δ_k under the j-th order.

    Raises:
        ValueError: if ``batch_losses`` is not [T, N] with N ≥ 2, or ``orders`` is neither an int ≥ 1 nor [R, N]
            permutations.

    Example:
        >>> delta_over_orders(np.array([[0.0, 2.0]]), orders=3).tolist()
        [[1.0], [1.0], [1.0]]
    """
    losses = _check_loss_matrix(batch_losses)
    perms = _orders(losses.shape[1], orders, seed)
    out = [(loss_changes(losses[:, part].transpose(0, 1)) ** 2).mean(1) for part in perms.split(max(1, chunk))]
    return torch.cat(out).numpy()


def sample_size_distribution(batch_losses: np.ndarray | torch.Tensor, tol: float, *,
                             orders: int | np.ndarray = 1000, seed: int = 0) -> SampleSizeDistribution:
    """K over batch orders: the last-exceedance K of the Monte Carlo curve for each order of the N batches.

    Args:
        batch_losses: [T, N] per-batch losses ℓ_i(w* + Pθ_t) (e.g. ``Experiment.loss_matrix``), N ≥ 2.
        tol: the tolerance Δ, > 0.
        orders: the number of random orders (int ≥ 1) or explicit [R, N] permutations (see
            :func:`delta_over_orders`).
        seed: seeds the random orders.

    Returns:
        A :class:`SampleSizeDistribution` with source "batch orders"; K is NaN for orders that never settle.

    Raises:
        ValueError: if ``tol`` is not > 0, and as :func:`delta_over_orders`.

    Example:
        With one outlying batch, every order settles once the outlier has come and gone by enough batches:

        >>> dist = sample_size_distribution(np.array([[0.0, 0.0, 6.0]]), 2.0, orders=np.array([[0, 1, 2], [2, 0, 1]]))
        >>> dist.K.tolist()
        [nan, 2.0]
    """
    if not (isinstance(tol, int | float) and tol > 0):
        raise ValueError(f"tol must be a number > 0, got {tol!r}")
    deltas = delta_over_orders(batch_losses, orders=orders, seed=seed)
    N = deltas.shape[1] + 1
    return SampleSizeDistribution(sample_sizes(deltas, tol), float(tol), "batch orders", N)


def sample_size_bootstrap(batch_losses: np.ndarray | torch.Tensor, tol: float, *, resamples: int = 1000,
                          seed: int = 0) -> SampleSizeDistribution:
    """K over a bootstrap of the θ draws: rows of the [T, N] matrix resampled with replacement, fixed batch order.

    It shows how far K moves with the Monte Carlo sample alone (the ±2 s.e. bracket of Δ_k, read as a
    distribution of K).

    Args:
        batch_losses: [T, N] per-batch losses ℓ_i(w* + Pθ_t), T ≥ 1, N ≥ 2.
        tol: the tolerance Δ, > 0.
        resamples: the number of bootstrap resamples, an int ≥ 1.
        seed: seeds the resampling.

    Returns:
        A :class:`SampleSizeDistribution` with source "θ bootstrap".

    Raises:
        ValueError: if ``batch_losses`` is not [T, N] with N ≥ 2, ``tol`` is not > 0 or ``resamples`` < 1.
    """
    if not (isinstance(tol, int | float) and tol > 0):
        raise ValueError(f"tol must be a number > 0, got {tol!r}")
    if not isinstance(resamples, int) or resamples < 1:
        raise ValueError(f"resamples must be an integer >= 1, got {resamples!r}")
    squared = (loss_changes(_check_loss_matrix(batch_losses)) ** 2).numpy()  # [T, N − 1]
    T = len(squared)
    rows = np.random.default_rng(seed).integers(0, T, size=(resamples, T))
    counts = np.stack([np.bincount(r, minlength=T) for r in rows]).astype(float)  # [resamples, T]
    deltas = counts @ squared / T  # the mean over each resample
    return SampleSizeDistribution(sample_sizes(deltas, tol), float(tol), "θ bootstrap", squared.shape[1] + 1)
