"""Δ_k estimators against closed forms: an exactly quadratic problem (linear least squares) and hand-made curves."""

import numpy as np
import pytest
import torch

from hesslib import make_model
from hesslib.estimators import (
    DeltaCurve,
    delta_from_curvature,
    delta_monte_carlo,
    delta_theory,
    loglog_slope,
    moving_average,
    sufficient_sample_size,
)
from hesslib.hessian import Objective, ProjectedCurvature
from hesslib.subspace import grid_thetas, random_directions, subspace_losses

F64 = torch.float64


def _least_squares(n=96, p=6, batch_size=8, seed=0):
    """ℓ_s(w) = (x_sᵀw − y_s)² around an arbitrary (not optimal) w, so a_k and c_k are non-zero."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p)) * np.linspace(0.5, 2.0, p)
    y = X @ rng.standard_normal(p) + 0.5 * rng.standard_normal(n)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(p, 1, bias=False)).to(F64)
    with torch.no_grad():
        model[1].weight.copy_(torch.from_numpy(rng.standard_normal((1, p))))
    obj = Objective(model, torch.from_numpy(X).reshape(n, 1, 1, p), torch.from_numpy(y), batch_size=batch_size,
                    loss="mse")
    return obj, X, y, model[1].weight.detach().numpy().ravel()


def _closed_form(X, y, w, P, batch_size, sigma):
    """Independent numpy derivation: ℓ_i(θ) = α_i + β_iᵀθ + θᵀΓ_iθ per batch, L_{k+1} − L_k a weighted sum,
    E[(α + βᵀθ + θᵀΓθ)²] = α² + σ²‖β‖² + 2ασ² tr Γ + σ⁴ (2 tr Γ² + (tr Γ)²)."""
    r, Z = X @ w - y, X @ P
    N = len(y) // batch_size
    alpha = np.array([np.mean(r[i * batch_size:(i + 1) * batch_size] ** 2) for i in range(N)])
    beta = np.array([2 * (r[s, None] * Z[s]).mean(0) for s in (slice(i * batch_size, (i + 1) * batch_size)
                                                             for i in range(N))])
    gamma = np.array([Z[i * batch_size:(i + 1) * batch_size].T @ Z[i * batch_size:(i + 1) * batch_size] / batch_size
                      for i in range(N)])
    out = []
    for k in range(1, N):
        omega = np.full(k + 1, 1 / (k + 1) - 1 / k)
        omega[k] = 1 / (k + 1)
        a, b, G = omega @ alpha[: k + 1], omega @ beta[: k + 1], np.tensordot(omega, gamma[: k + 1], 1)
        out.append(a**2 + sigma**2 * b @ b + 2 * a * sigma**2 * np.trace(G)
                   + sigma**4 * (2 * np.trace(G @ G) + np.trace(G) ** 2))
    return np.array(out)


@pytest.mark.parametrize("sigma", [0.05, 0.7])
def test_second_order_is_exact_on_least_squares(sigma):
    obj, X, y, w = _least_squares()
    P = torch.linalg.qr(torch.randn(obj.num_params, 3, dtype=F64))[0]
    curve = delta_theory(obj, P, sigma=sigma, formula="second_order")
    expected = _closed_form(X, y, w, P.numpy(), obj.batch_size, sigma)
    assert curve.k.tolist() == list(range(1, 12)) and np.all(curve.stderr == 0)
    np.testing.assert_allclose(curve.delta, expected, rtol=1e-8)


@pytest.mark.parametrize("sigma", [0.05, 0.7])
def test_monte_carlo_agrees_with_closed_form_within_4_stderr(sigma):
    obj, X, y, w = _least_squares()
    P = torch.linalg.qr(torch.randn(obj.num_params, 3, dtype=F64))[0]
    mc = delta_monte_carlo(obj, P, sigma=sigma, samples=4000, seed=3)
    expected = _closed_form(X, y, w, P.numpy(), obj.batch_size, sigma)
    assert np.all(mc.stderr > 0)
    z = np.abs(mc.delta - expected) / mc.stderr
    assert z.max() < 4, z
    # and Monte Carlo is not trivially loose: the band is a few percent of the value
    assert np.median(mc.stderr / expected) < 0.1


def _synthetic_curvature(N=12, D=3, seed=0, losses=False, grads=False, offdiag=False):
    rng = np.random.default_rng(seed)
    base = np.array([10.0, 5.0, 2.0])[:D]
    H = np.stack([np.diag(base + 0.3 * rng.standard_normal(D)) for _ in range(N)])
    if offdiag:
        S = 0.3 * rng.standard_normal((N, D, D))
        H = H + S + S.transpose(0, 2, 1)
    return ProjectedCurvature(
        torch.from_numpy(rng.standard_normal(N) if losses else np.zeros(N)),
        torch.from_numpy(rng.standard_normal((N, D)) if grads else np.zeros((N, D))),
        torch.from_numpy(H),
    )


def test_paper_formula_equals_second_order_only_when_its_assumptions_hold():
    sigma = 0.8
    exact = _synthetic_curvature()  # a_k = 0, c_k = 0, diagonal B_k, no eigenvalue crossings
    np.testing.assert_allclose(delta_from_curvature(exact, sigma, "paper_subspace").delta,
                               delta_from_curvature(exact, sigma, "second_order").delta, rtol=1e-12)
    for broken in (dict(losses=True), dict(grads=True), dict(offdiag=True)):
        curv = _synthetic_curvature(**broken)
        paper = delta_from_curvature(curv, sigma, "paper_subspace").delta
        second = delta_from_curvature(curv, sigma, "second_order").delta
        assert np.max(np.abs(paper - second) / second) > 0.05, broken


@pytest.mark.parametrize(
    "delta, tol, expected",
    [
        ([5, 4, 3, 2, 1.5], 1.0, None),  # never below
        ([5, 0.5, 0.4, 2.0, 0.3, 0.2], 1.0, 5),  # dips, rises again: the LAST exceedance matters
        ([5, 3, 0.9, 0.8, 0.7], 1.0, 3),  # ends below
        ([0.1, 0.2, 0.1], 1.0, 1),  # always below
        ([5, 0.5, np.nan, 0.4, 0.3], 1.0, 4),  # NaN inside counts as an exceedance
        ([5, 0.5, 0.4, np.nan], 1.0, None),  # NaN at the end: not settled
        ([0.5, 0.4, 1.0], 1.0, None),  # equal to tol is not below
    ],
)
def test_sufficient_sample_size_hand_made(delta, tol, expected):
    assert sufficient_sample_size(np.array(delta, dtype=float), tol) == expected
    k = np.arange(10, 10 + len(delta))
    curve = DeltaCurve(k, np.array(delta, dtype=float), np.zeros(len(delta)), "hand", 1.0)
    assert sufficient_sample_size(curve, tol) == (None if expected is None else expected + 9)


def test_moving_average_and_slope():
    values = np.array([1.0, 2, 3, 10, 5])
    # 5-point, edge padded: [1,1,1,2,3], [1,1,2,3,10], [1,2,3,10,5], [2,3,10,5,5], [3,10,5,5,5]
    np.testing.assert_allclose(moving_average(values), [8 / 5, 17 / 5, 21 / 5, 25 / 5, 28 / 5])
    np.testing.assert_allclose(moving_average(values, 1), values)
    with pytest.raises(ValueError, match="window must be an odd integer"):
        moving_average(values, 4)
    k = np.arange(1, 50)
    slope, const = loglog_slope(DeltaCurve(k, 3.0 * k**-2.0, np.zeros(49), "x", 1.0), k_min=5)
    assert slope == pytest.approx(-2.0) and const == pytest.approx(3.0)


def test_random_directions_filter_normalised():
    torch.manual_seed(0)
    model = make_model("cnn", (1, 6, 6), 3, channels=(3,)).to(F64)
    obj = Objective(model, torch.randn(10, 1, 6, 6, dtype=F64), torch.randint(0, 3, (10,)), batch_size=5)
    P = random_directions(obj, 4, seed=1)
    assert P.shape == (obj.num_params, 4)
    offset = 0
    for (name, param) in model.named_parameters():
        block = P[offset:offset + param.numel()].T.reshape(4, *param.shape)
        if param.dim() == 1:
            assert torch.all(block == 0), name  # biases zeroed
        else:
            filter_norms = block.reshape(4, param.shape[0], -1).norm(dim=2)
            torch.testing.assert_close(filter_norms, param.reshape(param.shape[0], -1).norm(dim=1).expand(4, -1))
        offset += param.numel()
    Q = random_directions(obj, 4, seed=1, orthonormalize=True)
    torch.testing.assert_close(Q.T @ Q, torch.eye(4, dtype=F64))
    assert not torch.equal(random_directions(obj, 4, seed=2), P)


@pytest.mark.parametrize("batch_size", [1, 4])
def test_subspace_losses_match_direct_evaluation(batch_size):
    torch.manual_seed(0)
    model = make_model("cnn", (1, 6, 6), 3, channels=(3,)).to(F64)
    obj = Objective(model, torch.randn(22, 1, 6, 6, dtype=F64), torch.randint(0, 3, (22,)), batch_size=batch_size,
                    chunk_size=7)
    P = torch.linalg.qr(torch.randn(obj.num_params, 2, dtype=F64))[0]
    _, thetas = grid_thetas(1.0, 5)
    assert thetas.shape == (25, 2)
    losses = subspace_losses(obj, P, thetas, memory_mb=0.01)  # a tiny budget: many chunks
    assert losses.shape == (25, obj.num_batches)
    for t in (0, 7, 24):
        torch.testing.assert_close(losses[t], obj.batch_losses(obj.params + P @ thetas[t]))


def test_bad_input_raises_before_work():
    obj, *_ = _least_squares()
    P = torch.linalg.qr(torch.randn(obj.num_params, 2, dtype=F64))[0]
    with pytest.raises(ValueError, match="sigma must be a finite number > 0"):
        delta_monte_carlo(obj, P, sigma=0, samples=10)
    with pytest.raises(ValueError, match="sigma must be a finite number > 0"):
        delta_theory(obj, P, sigma=-1.0)
    with pytest.raises(ValueError, match="samples must be an integer >= 1"):
        delta_monte_carlo(obj, P, sigma=1.0, samples=0)
    with pytest.raises(ValueError, match=r"P must have shape \[6, r\]"):
        delta_theory(obj, torch.zeros(5, 2, dtype=F64), sigma=1.0)
    with pytest.raises(ValueError, match="formula must be one of"):
        delta_theory(obj, P, sigma=1.0, formula="upper_bound")
    with pytest.raises(ValueError, match="tol must be a number > 0"):
        sufficient_sample_size(np.ones(3), 0)
    with pytest.raises(ValueError, match=r"thetas must have shape \[T, 2\]"):
        subspace_losses(obj, P, torch.zeros(4, 3, dtype=F64))


def test_settling_envelope_and_sample_size_curve():
    from hesslib.estimators import sample_size_curve, settling_envelope

    delta = np.array([5.0, 0.5, 3.0, 0.4, 0.3, np.nan, 0.2, 0.1])
    assert np.array_equal(settling_envelope(delta), [np.inf] * 6 + [0.2, 0.1])
    delta = delta[:5]
    assert np.array_equal(settling_envelope(delta), [5.0, 3.0, 3.0, 0.4, 0.3])
    curve = DeltaCurve(np.arange(1, 6), delta, np.full(5, 0.05), "x", 1.0)
    tols = [10.0, 4.0, 1.0, 0.35, 0.3, 0.01]
    K = sample_size_curve(curve, tols)
    assert np.array_equal(K, [1, 2, 4, 5, np.nan, np.nan], equal_nan=True)
    assert all((np.isnan(a) and b is None) or a == b for a, b in zip(K, (sufficient_sample_size(curve, t)
                                                                         for t in tols), strict=True))
    # K(tol) = the first k whose envelope is below tol
    env = settling_envelope(curve)
    assert all(np.isnan(k) or env[int(k) - 1] < t <= (env[int(k) - 2] if k > 1 else np.inf)
               for k, t in zip(K, tols, strict=True))
    from hesslib.estimators import first_below

    assert [first_below(curve, t) for t in (10.0, 1.0, 0.45, 0.01)] == [1, 2, 4, None]
    assert first_below(delta, 1.0) == 2 and sufficient_sample_size(delta, 1.0) == 4  # the dip at k = 2 is not K
    # Δ ± 2 s.e.: Δ + 0.1 at tol 0.35 never settles (0.3 + 0.1 > 0.35), Δ − 0.1 settles at k = 4
    assert np.isnan(sample_size_curve(curve, [0.35], z=2.0)[0]) and sample_size_curve(curve, [0.35], z=-2.0)[0] == 4


# ---- the average over batch orders ------------------------------------------------------------------------------
def test_order_average_equals_the_brute_force_average_over_all_orders():
    import itertools

    from hesslib import delta_from_losses, order_average

    rng = np.random.default_rng(0)
    losses = rng.gamma(2.0, size=(3, 5))  # T = 3 draws of θ, N = 5 batches: 120 orders
    orders = list(itertools.permutations(range(5)))
    brute = np.mean([delta_from_losses(losses[:, list(order)]).delta for order in orders], axis=0)
    curve = order_average(losses, sigma=0.5)
    np.testing.assert_allclose(curve.delta, brute, rtol=1e-12)
    assert curve.k.tolist() == [1, 2, 3, 4] and curve.sigma == 0.5 and curve.meta["samples"] == 3
    # Δ_k · k(k+1) is flat, at N/(N−1) times the mean between-batch variance
    np.testing.assert_allclose(curve.delta * curve.k * (curve.k + 1), 5 / 4 * losses.var(1).mean(), rtol=1e-12)
    assert np.all(curve.stderr > 0)
    with pytest.raises(ValueError, match=r"batch_losses must be a \[T, N\] matrix with N >= 2"):
        order_average(losses[:, :1])


def test_delta_over_orders_permutes_batches_and_averages_to_the_order_average():
    from hesslib import delta_from_losses, delta_over_orders, order_average

    rng = np.random.default_rng(1)
    losses = rng.gamma(2.0, size=(4, 6))
    many = delta_over_orders(losses, orders=4000, seed=3, chunk=7)
    assert many.shape == (4000, 5)
    np.testing.assert_array_equal(many, delta_over_orders(losses, orders=4000, seed=3, chunk=1000))  # chunk-free
    # each row is the Monte Carlo curve of one column permutation
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(3))
    np.testing.assert_allclose(many[0], delta_from_losses(losses[:, perm.numpy()]).delta, rtol=1e-12)
    # their mean converges to the exact average over all orders (within 4 standard errors)
    exact = order_average(losses).delta
    err = many.std(0) / np.sqrt(len(many))
    assert np.all(np.abs(many.mean(0) - exact) < 4 * err)
    with pytest.raises(ValueError, match="orders must be an integer >= 1"):
        delta_over_orders(losses, orders=0)


# ---- variance-reduced Monte Carlo ----------------------------------------------------------------------------------
@pytest.mark.parametrize("antithetic", [False, True])
def test_control_variate_is_exact_with_zero_error_on_least_squares(antithetic):
    obj, X, y, w = _least_squares()
    P = torch.linalg.qr(torch.randn(obj.num_params, 3, dtype=F64, generator=torch.Generator().manual_seed(1)))[0]
    expected = _closed_form(X, y, w, P.numpy(), obj.batch_size, 0.7)
    cv = delta_monte_carlo(obj, P, sigma=0.7, samples=64, seed=2, control_variate=True, antithetic=antithetic)
    np.testing.assert_allclose(cv.delta, expected, rtol=1e-9)
    assert np.all(cv.stderr < 1e-9 * expected) and cv.label == "Monte Carlo, control variate"


def test_control_variate_and_antithetic_agree_with_plain_monte_carlo_on_an_mlp():
    torch.manual_seed(0)
    model = make_model("mlp", (1, 4, 4), num_classes=3, hidden=(6,), seed=0).to(F64)
    X, y = torch.randn(72, 1, 4, 4, dtype=F64), torch.randint(0, 3, (72,))
    obj = Objective(model, X, y, batch_size=8, dtype=F64)
    P = torch.linalg.qr(torch.randn(obj.num_params, 2, dtype=F64, generator=torch.Generator().manual_seed(0)))[0]
    sigma = 1.5  # far enough from w* that the loss is not quadratic: the control variate has work to do
    plain = delta_monte_carlo(obj, P, sigma=sigma, samples=6000, seed=1)
    for kwargs in (dict(control_variate=True), dict(antithetic=True), dict(control_variate=True, antithetic=True)):
        other = delta_monte_carlo(obj, P, sigma=sigma, samples=2000, seed=2, **kwargs)
        z = np.abs(other.delta - plain.delta) / np.sqrt(other.stderr**2 + plain.stderr**2)
        assert z.max() < 4.5, (kwargs, z)
    # closer to w* the second-order model explains most of the variance (here about 4x at σ = 0.5, 30x at 0.1)
    cv = delta_monte_carlo(obj, P, sigma=0.5, samples=2000, seed=2, control_variate=True)
    same = delta_monte_carlo(obj, P, sigma=0.5, samples=2000, seed=2)
    assert np.median(same.stderr**2 / cv.stderr**2) > 2
    with pytest.raises(ValueError, match="even with antithetic=True"):
        delta_monte_carlo(obj, P, sigma=sigma, samples=3, antithetic=True)
