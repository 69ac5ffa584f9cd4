"""The σ⁴-exact estimate against Gauss–Hermite quadrature on a smooth (tanh) model, and its derivatives against
dense derivative tensors from nested ``jacfwd``."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jacfwd

from hesslib import Objective, delta_fourth_order, delta_theory, projected_hessians, projected_higher_derivatives
from hesslib.estimators import delta_from_curvature, loss_changes

F64 = torch.float64


def _tanh_problem(n=24, batch_size=8, D=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).to(F64)
    X, y = torch.randn(n, 1, 2, 2, dtype=F64, generator=gen), torch.randint(0, 3, (n,), generator=gen)
    obj = Objective(model, X, y, batch_size=batch_size, dtype=F64)
    P = torch.linalg.qr(torch.randn(obj.num_params, D, dtype=F64, generator=gen))[0]
    return obj, P


def _batch_losses_of_theta(obj, P):
    """An independent F(θ) = [ℓ_1, ..., ℓ_N](w* + Pθ): per-batch mean cross-entropy via functional_call."""
    names = [name for name, _ in obj.model.named_parameters()]
    shapes = [p.shape for _, p in obj.model.named_parameters()]

    def F_(theta):
        w = obj.params + P @ theta
        params, start = {}, 0
        for name, shape in zip(names, shapes, strict=True):
            size = int(np.prod(shape))
            params[name] = w[start:start + size].view(shape)
            start += size
        out = functional_call(obj.model, params, (obj.X,))
        per_sample = F.cross_entropy(out, obj.y, reduction="none")
        return torch.stack([chunk.mean() for chunk in per_sample.split(obj.batch_size)])

    return F_


def _gauss_hermite_delta(obj, P, sigma, nodes=30):
    """E_θ[(L_{k+1} − L_k)²], θ ~ N(0, σ² I_2), by a tensor-product Gauss–Hermite rule (probabilists')."""
    x, w = np.polynomial.hermite_e.hermegauss(nodes)
    w = w / w.sum()
    F_ = _batch_losses_of_theta(obj, P)
    thetas = [torch.tensor([sigma * a, sigma * b], dtype=F64) for a in x for b in x]
    weights = np.array([wa * wb for wa in w for wb in w])
    with torch.no_grad():
        losses = torch.stack([F_(t) for t in thetas])
    return (weights[:, None] * (loss_changes(losses) ** 2).numpy()).sum(0)


def test_higher_derivatives_equal_contractions_of_the_dense_derivative_tensors():
    obj, P = _tanh_problem()
    F_ = _batch_losses_of_theta(obj, P)
    zero = torch.zeros(2, dtype=F64)
    third = jacfwd(jacfwd(jacfwd(F_)))(zero)  # [N, D, D, D]
    fourth = jacfwd(jacfwd(jacfwd(jacfwd(F_))))(zero)  # [N, D, D, D, D]
    higher = projected_higher_derivatives(obj, P, samples_per_step=5, pairs_per_step=3)  # uneven steps on purpose
    np.testing.assert_allclose(higher.third, torch.einsum("nabb->na", third), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(higher.fourth, torch.einsum("naabb->n", fourth), rtol=1e-9, atol=1e-12)


def test_fourth_order_error_shrinks_faster_than_second_order_as_sigma_goes_to_zero():
    obj, P = _tanh_problem()
    curvature, higher = projected_hessians(obj, P), projected_higher_derivatives(obj, P)
    sigmas = [0.2, 0.1, 0.05]
    err2, err4 = [], []
    for sigma in sigmas:
        exact = _gauss_hermite_delta(obj, P, sigma)
        err2.append(np.abs(delta_from_curvature(curvature, sigma, "second_order").delta - exact).max())
        err4.append(np.abs(delta_fourth_order(curvature, higher, sigma).delta - exact).max())
    err2, err4 = np.array(err2), np.array(err4)
    assert err4[-1] < 0.1 * err2[-1], (err2, err4)
    # O(σ⁴) against O(σ⁶): halving σ divides the errors by about 16 and 64
    assert np.all(err2[:-1] / err2[1:] > 8) and np.all(err4[:-1] / err4[1:] > 32), (err2, err4)
    # delta_theory takes the same path
    theory = delta_theory(obj, P, sigma=0.05, formula="fourth_order")
    np.testing.assert_allclose(theory.delta, delta_fourth_order(curvature, higher, 0.05).delta, rtol=1e-12)
    assert theory.label == "fourth-order estimate"


def test_fourth_order_rejects_mismatched_terms():
    obj, P = _tanh_problem()
    curvature = projected_hessians(obj, P)
    higher = projected_higher_derivatives(obj, P[:, :1])
    with pytest.raises(ValueError, match="higher derivatives must be third"):
        delta_fourth_order(curvature, higher, 0.1)
    with pytest.raises(ValueError, match="sigma must be a finite number > 0"):
        delta_fourth_order(curvature, projected_higher_derivatives(obj, P), 0.0)


def _model(kind):
    if kind == "tanh":
        return nn.Sequential(nn.Flatten(), nn.Linear(16, 5), nn.Tanh(), nn.Linear(5, 3))
    if kind in ("gelu", "relu"):
        act = nn.GELU if kind == "gelu" else nn.ReLU
        return nn.Sequential(nn.Flatten(), nn.Linear(16, 5), act(), nn.Linear(5, 6), act(), nn.Linear(6, 3))
    if kind == "cnn":
        return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.GELU(), nn.MaxPool2d(2), nn.Conv2d(2, 3, 3, padding=1),
                             nn.Tanh(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(3, 3))
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 3))


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
@pytest.mark.parametrize("kind", ["tanh", "gelu", "relu", "cnn", "linear"])
@pytest.mark.parametrize("precompute", [None, False])
def test_taylor_mode_equals_the_dense_derivative_tensors(kind, loss, precompute, monkeypatch):
    """Taylor mode along the polarisation directions against nested jacfwd of an independent F(θ) (float64)."""
    from hesslib.hessian import SubspaceLoss

    gen = torch.Generator().manual_seed(1)
    torch.manual_seed(1)
    model = _model(kind).to(F64)
    X, y = torch.randn(20, 1, 4, 4, dtype=F64, generator=gen), torch.randint(0, 3, (20,), generator=gen)
    obj = Objective(model, X, y, batch_size=8, dtype=F64, loss=loss)  # batches of 8, 8 and 4
    P = torch.linalg.qr(torch.randn(obj.num_params, 3, dtype=F64, generator=gen))[0]
    original = SubspaceLoss.__init__
    monkeypatch.setattr(SubspaceLoss, "__init__", lambda self, o, p, precompute=precompute: original(
        self, o, p, precompute=precompute))
    taylor = projected_higher_derivatives(obj, P, method="taylor", samples_per_step=7, pairs_per_step=4)
    jvp = projected_higher_derivatives(obj, P, method="jvp")

    names = [name for name, _ in obj.model.named_parameters()]
    shapes = [p.shape for _, p in obj.model.named_parameters()]

    def F_(theta):
        w, params, start = obj.params + P @ theta, {}, 0
        for name, shape in zip(names, shapes, strict=True):
            params[name] = w[start:start + int(np.prod(shape))].view(shape)
            start += int(np.prod(shape))
        out = functional_call(obj.model, params, (obj.X,))
        if loss == "cross_entropy":
            per_sample = F.cross_entropy(out, obj.y, reduction="none")
        else:
            per_sample = ((out - F.one_hot(obj.y, 3).to(F64)) ** 2).mean(-1)
        return torch.stack([chunk.mean() for chunk in per_sample.split(obj.batch_size)])

    zero = torch.zeros(3, dtype=F64)
    third = torch.einsum("nabb->na", jacfwd(jacfwd(jacfwd(F_)))(zero))
    fourth = torch.einsum("naabb->n", jacfwd(jacfwd(jacfwd(jacfwd(F_))))(zero))
    assert fourth.abs().max() > 1e-3 or kind == "linear" and loss == "mse"  # not trivially zero
    for result in (taylor, jvp):
        np.testing.assert_allclose(result.third, third, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(result.fourth, fourth, rtol=1e-9, atol=1e-12)


def test_taylor_mode_refuses_a_model_it_does_not_handle():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.GELU(approximate="tanh"), nn.Linear(3, 2)).to(F64)
    obj = Objective(model, torch.randn(6, 1, 2, 2, dtype=F64), torch.tensor([0, 1] * 3), batch_size=3, dtype=F64)
    P = torch.linalg.qr(torch.randn(obj.num_params, 2, dtype=F64))[0]
    with pytest.raises(ValueError, match="method='taylor' needs"):
        projected_higher_derivatives(obj, P, method="taylor")
    with pytest.raises(ValueError, match="method must be"):
        projected_higher_derivatives(obj, P, method="taylor-mode")
    # the default falls back to nested jvps, which handle any model
    torch.testing.assert_close(projected_higher_derivatives(obj, P).fourth,
                               projected_higher_derivatives(obj, P, method="jvp").fourth)
