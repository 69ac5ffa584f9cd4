"""Diagnostics of the quadratic model against ground truth: an exactly quadratic loss, brute-force unit signs."""

import numpy as np
import pytest
import torch

from hesslib import activation_switches, make_model, quadratic_slices, second_order_changes, tail_share
from hesslib.estimators import loss_changes
from hesslib.hessian import Objective, projected_hessians
from hesslib.subspace import subspace_losses

F64 = torch.float64


def _quadratic_problem(n=48, p=5, batch_size=8, seed=0):
    """ℓ_s(w) = (x_sᵀw − y_s)²: every batch loss is exactly quadratic in w."""
    gen = torch.Generator().manual_seed(seed)
    X, y = torch.randn(n, 1, 1, p, generator=gen, dtype=F64), torch.randn(n, generator=gen, dtype=F64)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(p, 1, bias=False)).to(F64)
    obj = Objective(model, X, y, batch_size=batch_size, loss="mse")
    P = torch.linalg.qr(torch.randn(p, 3, generator=gen, dtype=F64)).Q
    return obj, P


def _tanh_problem(seed=0):
    gen = torch.Generator().manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, 5), torch.nn.Tanh(),
                                torch.nn.Linear(5, 3)).to(F64)
    X, y = torch.randn(40, 1, 2, 3, generator=gen, dtype=F64), torch.randint(0, 3, (40,), generator=gen)
    obj = Objective(model, X, y, batch_size=8)
    P = torch.linalg.qr(torch.randn(obj.num_params, 2, generator=gen, dtype=F64)).Q
    return obj, P


def test_slices_of_an_exactly_quadratic_loss_match_their_model():
    obj, P = _quadratic_problem()
    slices = quadratic_slices(obj, P, projected_hessians(obj, P), np.linspace(-3, 3, 13))
    assert slices.losses.shape == slices.quadratic.shape == (3, 13)
    np.testing.assert_allclose(slices.losses, slices.quadratic, rtol=1e-10, atol=1e-12)
    # the model's own terms: at t = 0 the level is L_N(w*) = mean of the batch losses
    np.testing.assert_allclose(slices.losses[:, 6], obj.batch_losses().mean().item(), rtol=1e-12)
    np.testing.assert_array_equal(slices.quadratic_radius(1e-6), np.full(3, 3.0))


def test_slices_of_a_smooth_model_leave_their_quadratic_at_third_order():
    obj, P = _tanh_problem()
    t = np.array([-4.0, -2.0, -1e-2, 0.0, 1e-2, 2.0, 4.0])
    slices = quadratic_slices(obj, P, projected_hessians(obj, P), t)
    error = slices.relative_error
    assert np.isnan(error[:, 3]).all()  # t = 0: the model predicts no change
    assert (error[:, [2, 4]] < 1e-2).all()  # the error is O(t) relative to the model near 0
    assert (slices.quadratic_radius(0.5) >= 1e-2).all()
    assert (slices.quadratic_radius(1e-12) == 0.0).all()


def test_quadratic_radius_stops_at_the_first_failure_from_the_centre():
    t = np.array([-2.0, -1.0, 0.0, 1.0, 2.0])
    zero = np.zeros((1, 5))
    losses = np.array([[4.0, 1.0, 0.0, 1.0, 9.0]])  # fails at |t| = 2, on the right only
    quadratic = np.array([[4.0, 1.0, 0.0, 1.0, 4.0]])
    from hesslib.diagnostics import Slices
    slices = Slices(t, losses, quadratic, zero, np.abs(quadratic))
    assert slices.quadratic_radius(0.1)[0] == 1.0
    with pytest.raises(ValueError, match="rel"):
        slices.quadratic_radius(0.0)


def test_second_order_changes_are_exact_for_a_quadratic_loss():
    obj, P = _quadratic_problem()
    thetas = torch.randn(7, 3, dtype=F64)
    exact = loss_changes(subspace_losses(obj, P, thetas))
    torch.testing.assert_close(second_order_changes(projected_hessians(obj, P), thetas), exact, rtol=1e-10,
                               atol=1e-12)
    with pytest.raises(ValueError, match="thetas"):
        second_order_changes(projected_hessians(obj, P), torch.zeros(7, 2, dtype=F64))


def test_activation_switches_against_the_preactivations_computed_by_hand():
    torch.manual_seed(0)
    model = make_model("mlp", (1, 2, 2), num_classes=3, hidden=(6, 5), seed=0).to(F64)
    X, y = torch.randn(30, 1, 2, 2, dtype=F64), torch.randint(0, 3, (30,))
    obj = Objective(model, X, y, batch_size=10, chunk_size=7)  # several chunks
    P = torch.linalg.qr(torch.randn(obj.num_params, 2, dtype=F64)).Q
    thetas = torch.tensor([[0.0, 0.0], [0.3, -0.2], [2.0, 1.0]], dtype=F64)
    names, fractions = activation_switches(obj, P, thetas)
    assert names == ["2", "4"] and fractions.shape == (3, 2)

    def preactivations(w):
        p = obj.unflatten(w)
        h1 = X.flatten(1) @ p["1.weight"].T + p["1.bias"]
        h2 = torch.relu(h1) @ p["3.weight"].T + p["3.bias"]
        return h1 > 0, h2 > 0

    base = preactivations(obj.params)
    for row, theta in enumerate(thetas):
        moved = preactivations(obj.params + P @ theta)
        expected = [(m != b).double().mean().item() for m, b in zip(moved, base, strict=True)]
        np.testing.assert_allclose(fractions[row], expected)
    assert (fractions[0] == 0).all() and fractions[2].sum() > 0
    with pytest.raises(ValueError, match="thetas"):
        activation_switches(obj, P, torch.zeros(2, 3, dtype=F64))
    assert not model[2]._forward_hooks  # hooks are removed


def test_tail_share_against_a_sort_by_hand():
    rng = np.random.default_rng(0)
    d = rng.standard_normal((200, 4)) * np.array([1.0, 2.0, 0.5, 1.0])
    d[:, 3] = 0.0
    d[5, 3] = 3.0
    share = tail_share(d, 0.02)
    for k in range(3):
        squares = np.sort(d[:, k] ** 2)[::-1]
        np.testing.assert_allclose(share[k], squares[:4].sum() / squares.sum())
    assert share[3] == 1.0
    assert np.isnan(tail_share(np.zeros((5, 1)))[0])
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="fraction"):
            tail_share(d, bad)
    with pytest.raises(ValueError, match="changes"):
        tail_share(np.zeros(5))
