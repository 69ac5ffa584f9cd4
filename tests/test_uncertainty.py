import itertools

import numpy as np
import pytest
import torch

from hesslib import (
    SampleSizeDistribution,
    delta_from_losses,
    delta_over_orders,
    sample_size_bootstrap,
    sample_size_distribution,
    sample_sizes,
    sufficient_sample_size,
)


def _losses(T=6, N=9, seed=0):
    rng = np.random.default_rng(seed)
    return rng.gamma(2.0, size=(T, N)) * np.linspace(1, 3, N)


def test_sample_sizes_is_the_last_exceedance_rule_row_by_row():
    rng = np.random.default_rng(1)
    deltas = rng.exponential(size=(200, 12)) / np.arange(1, 13) ** 1.5
    deltas[3, 5] = np.nan  # a NaN counts as not settled
    for tol in (0.05, 0.2, 1.0):
        K = sample_sizes(deltas, tol)
        expected = [sufficient_sample_size(row, tol) for row in deltas]
        assert [None if np.isnan(v) else int(v) for v in K] == expected


def test_one_identity_order_gives_the_K_of_the_monte_carlo_curve():
    losses = _losses()
    curve = delta_from_losses(losses)
    for tol in np.quantile(curve.delta, [0.1, 0.5, 0.9]):
        dist = sample_size_distribution(losses, float(tol), orders=np.arange(9)[None])
        K = sufficient_sample_size(curve, float(tol))
        assert dist.K.tolist() == [np.nan if K is None else float(K)] or (K is None and np.isnan(dist.K[0]))
        assert dist.source == "batch orders" and dist.num_batches == 9 and len(dist) == 1


def test_hand_made_matrix_with_a_known_K_for_every_order():
    # losses 0, 0, 6 with tol 2: an order that adds the outlier last never settles (Δ_2 = 4); any other order
    # has Δ_1 = 9, Δ_2 = 1, so K = 2. Of the 6 orders, the 2 with the outlier last never settle.
    losses = np.array([[0.0, 0.0, 6.0]])
    every = np.array(list(itertools.permutations(range(3))))
    dist = sample_size_distribution(losses, 2.0, orders=every)
    last = every[:, -1] == 2
    assert np.isnan(dist.K[last]).all() and (dist.K[~last] == 2).all()
    assert dist.never_settles == pytest.approx(1 / 3)
    random = sample_size_distribution(losses, 2.0, orders=3000, seed=5)
    assert abs(random.never_settles - 1 / 3) < 4 * np.sqrt(2 / 9 / 3000)
    assert set(random.K[~np.isnan(random.K)].tolist()) == {2.0}


def test_delta_over_orders_rows_are_monte_carlo_curves_of_permuted_columns():
    losses = _losses()
    perms = np.array([np.random.default_rng(s).permutation(9) for s in range(5)])
    rows = delta_over_orders(losses, orders=perms, chunk=2)
    for perm, row in zip(perms, rows, strict=True):
        np.testing.assert_allclose(row, delta_from_losses(losses[:, perm]).delta, rtol=1e-12)


def test_bootstrap_resamples_theta_rows():
    losses = _losses(T=20)
    tol = float(np.median(delta_from_losses(losses).delta))
    dist = sample_size_bootstrap(losses, tol, resamples=50, seed=3)
    rows = np.random.default_rng(3).integers(0, 20, size=(50, 20))
    expected = [sufficient_sample_size(delta_from_losses(losses[r]), tol) for r in rows]
    assert [None if np.isnan(v) else int(v) for v in dist.K] == expected
    assert dist.source == "θ bootstrap"
    same = np.tile(losses[:1], (7, 1))  # identical rows: every resample is the same curve
    K = sufficient_sample_size(delta_from_losses(same), tol)
    assert set(sample_size_bootstrap(same, tol, resamples=20).K.tolist()) == {float(K) if K else np.nan} or K is None


def test_distribution_summaries_rank_never_settles_above_every_K():
    dist = SampleSizeDistribution.from_values([3, 5, 7, None, None], 0.1, "training seeds", 10)
    assert dist.median == 7 and dist.never_settles == pytest.approx(0.4)
    lo, hi = dist.interval(0.9)
    assert lo == 3 and np.isnan(hi)
    assert SampleSizeDistribution.from_values([4, 4, 6], 0.1, "x", 10).interval(0.5) == (4, 6)


@pytest.mark.parametrize("call, match", [
    (lambda m: sample_size_distribution(m, 0.0), "tol must be a number > 0"),
    (lambda m: sample_size_distribution(m, 0.1, orders=0), "orders must be an integer >= 1"),
    (lambda m: sample_size_distribution(m, 0.1, orders=np.zeros((2, 9), dtype=int)), "permutations of 0..8"),
    (lambda m: sample_size_distribution(m[:, :1], 0.1), r"must be a \[T, N\] matrix with N >= 2"),
    (lambda m: sample_size_distribution(m[0], 0.1), r"must be a \[T, N\] matrix with N >= 2"),
    (lambda m: sample_size_bootstrap(m, 0.1, resamples=0), "resamples must be an integer >= 1"),
    (lambda m: sample_size_bootstrap(m, -1.0), "tol must be a number > 0"),
    (lambda m: SampleSizeDistribution.from_values([1], 0.1, "x", 3).interval(1.0), r"level must be in \(0, 1\)"),
])
def test_bad_input_names_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call(torch.as_tensor(_losses()))
