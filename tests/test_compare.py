"""Reading Δ_k curves against each other: prefix means, ratios, agreement summaries and linear fits."""

import numpy as np
import pytest
import torch

from hesslib.estimators import (
    DeltaCurve,
    compare_to_reference,
    delta_ratio,
    delta_unperturbed,
    fit_against,
    prefix_means,
)


def _curve(delta, stderr=None, k=None):
    delta = np.asarray(delta, dtype=float)
    k = np.arange(1, len(delta) + 1) if k is None else np.asarray(k)
    stderr = np.zeros_like(delta) if stderr is None else np.asarray(stderr, dtype=float)
    return DeltaCurve(k, delta, stderr, "test", 1.0)


def test_prefix_means_are_running_means():
    values = torch.tensor([2.0, 4.0, 0.0, 6.0])
    np.testing.assert_allclose(prefix_means(values), [2.0, 3.0, 2.0, 3.0])
    np.testing.assert_allclose(prefix_means([1.5]), [1.5])
    np.testing.assert_allclose(prefix_means(np.array([[1.0, 3.0], [2.0, 0.0]])), [[1.0, 2.0], [2.0, 1.0]])
    with pytest.raises(ValueError, match="at least one batch"):
        prefix_means([])


def test_delta_ratio_and_nan_where_reference_is_not_positive():
    ratio = delta_ratio(_curve([2.0, 1.0, 3.0, 4.0]), _curve([1.0, 0.0, 6.0, np.nan]))
    np.testing.assert_allclose(ratio, [2.0, np.nan, 0.5, np.nan])
    with pytest.raises(ValueError, match="same k"):
        delta_ratio(_curve([1.0, 2.0]), _curve([1.0, 2.0], k=[2, 3]))


def test_compare_to_reference_counts_bound_violations_against_the_noise():
    reference = _curve([1.0, 1.0, 1.0, 1.0, 1.0], stderr=[0.1] * 5)
    # ratios 2, 1, 0.9 (within 2 s.e.), 0.5 (significantly below), 0.7 (significantly below)
    estimate = _curve([2.0, 1.0, 0.9, 0.5, 0.7])
    agreement = compare_to_reference(estimate, reference)
    assert agreement.median_ratio == pytest.approx(0.9)
    assert agreement.fraction_at_or_above == pytest.approx(2 / 5)
    assert agreement.fraction_significantly_below == pytest.approx(2 / 5)
    assert agreement.num_k == 5
    tail = compare_to_reference(estimate, reference, k_min=4)
    assert (tail.num_k, tail.fraction_at_or_above, tail.median_ratio) == (2, 0.0, pytest.approx(0.6))
    with pytest.raises(ValueError, match="no k >= 10"):
        compare_to_reference(estimate, reference, k_min=10)


def test_fit_against_recovers_a_line_over_the_chosen_k():
    x = np.linspace(0.1, 1.0, 10)
    delta = 3.0 * x - 0.5
    delta[:4] = 100.0  # k < 5 must be ignored
    fit = fit_against(_curve(delta), x, k_min=5)
    assert (fit.slope, fit.intercept, fit.r2, fit.num_points) == (
        pytest.approx(3.0), pytest.approx(-0.5), pytest.approx(1.0), 6)
    noisy = fit_against(_curve(3.0 * x + np.array([0.1, -0.1] * 5)), x)
    assert 0 < noisy.r2 < 1
    with pytest.raises(ValueError, match="aligned"):
        fit_against(_curve(delta), x[:-1])
    with pytest.raises(ValueError, match="distinct x"):
        fit_against(_curve(delta), np.ones(10))


def test_delta_unperturbed_is_the_squared_step_of_the_prefix_means():
    losses = torch.tensor([1.0, 3.0, 2.0, 6.0])
    curve = delta_unperturbed(losses)
    # L_k = 1, 2, 2, 3 -> (L_{k+1} - L_k)^2 = 1, 0, 1 for k = 1, 2, 3
    np.testing.assert_array_equal(curve.k, [1, 2, 3])
    np.testing.assert_allclose(curve.delta, [1.0, 0.0, 1.0])
    assert np.all(curve.stderr == 0)
    with pytest.raises(ValueError, match="at least 2 batches"):
        delta_unperturbed([1.0])
