"""The first-layer precomputation of ``SubspaceLoss`` against the whole model run at w* + Pθ (float64)."""

import pytest
import torch
from torch import nn

from hesslib import make_model, projected_higher_derivatives, subspace_losses
from hesslib.hessian import Objective, SubspaceLoss

F64 = torch.float64


def _problem(kind: str, D: int, n: int = 37, batch_size: int = 8, seed: int = 0):
    torch.manual_seed(seed)
    shape = (1, 6, 6)
    model = make_model(kind, shape, 3, hidden=(7, 5), channels=(3, 2)).to(F64)
    gen = torch.Generator().manual_seed(seed)
    X, y = torch.randn(n, *shape, dtype=F64, generator=gen), torch.randint(0, 3, (n,), generator=gen)
    obj = Objective(model, X, y, batch_size=batch_size, dtype=F64)
    P = torch.randn(obj.num_params, D, dtype=F64, generator=gen) / obj.num_params ** 0.5
    return obj, P


def _direct(obj: Objective, P: torch.Tensor, thetas: torch.Tensor) -> torch.Tensor:
    """[T, N] batch losses, one θ and one batch at a time at w* + Pθ (the definition)."""
    return torch.stack([obj.batch_losses(obj.params + P @ theta) for theta in thetas])


@pytest.mark.parametrize("kind", ["linear", "mlp", "cnn"])
def test_precomputed_first_layer_equals_the_whole_model(kind):
    obj, P = _problem(kind, D=3)
    thetas = torch.randn(5, 3, dtype=F64, generator=torch.Generator().manual_seed(1))
    fast, plain = SubspaceLoss(obj, P, precompute=True), SubspaceLoss(obj, P, precompute=False)
    assert fast.precomputed and not plain.precomputed
    X, y = obj.X[:11], obj.y[:11]
    for theta in thetas:
        expected = obj.per_sample_losses(obj.params + P @ theta, X, y)
        torch.testing.assert_close(fast.per_sample_losses(theta, fast.features(X), y), expected, rtol=1e-12, atol=1e-13)
        torch.testing.assert_close(plain.per_sample_losses(theta, plain.features(X), y), expected, rtol=0, atol=0)


@pytest.mark.parametrize(("kind", "D", "expected"), [("linear", 3, True), ("mlp", 3, True), ("mlp", 36, False),
                                                     ("cnn", 3, True), ("cnn", 9, False)])
def test_precomputation_is_used_only_when_D_is_below_the_first_layers_fan_in(kind, D, expected):
    obj, P = _problem(kind, D)  # fan-in: 36 for the linear model and the MLP, 9 for the CNN's 3x3 conv
    assert SubspaceLoss(obj, P).precomputed is expected


def test_models_without_an_affine_first_layer_use_the_whole_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.LayerNorm(4), nn.Linear(4, 3)).to(F64)
    obj = Objective(model, torch.randn(6, 1, 2, 2, dtype=F64), torch.tensor([0, 1, 2, 0, 1, 2]), batch_size=3)
    P = torch.eye(obj.num_params, 2, dtype=F64)
    assert not SubspaceLoss(obj, P).precomputed
    with pytest.raises(ValueError, match="precompute=True needs"):
        SubspaceLoss(obj, P, precompute=True)


@pytest.mark.parametrize("kind", ["linear", "mlp", "cnn"])
@pytest.mark.parametrize("memory_mb", [64.0, 0.002])  # one part and θ chunk, or many of each
def test_subspace_losses_equal_the_definition(kind, memory_mb):
    obj, P = _problem(kind, D=2)
    thetas = torch.randn(7, 2, dtype=F64, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(subspace_losses(obj, P, thetas, memory_mb=memory_mb), _direct(obj, P, thetas),
                               rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("memory_mb", [0.0, -1.0, float("nan")])
def test_subspace_losses_reject_a_budget_that_is_not_positive(memory_mb):
    obj, P = _problem("mlp", D=2)
    with pytest.raises(ValueError, match=r"memory_mb must be > 0 \(MiB\)"):
        subspace_losses(obj, P, torch.zeros(3, 2, dtype=F64), memory_mb=memory_mb)


def test_higher_derivatives_do_not_depend_on_the_precomputation(monkeypatch):
    obj, P = _problem("mlp", D=2)  # ReLU: third and fourth derivatives come from the output layer's softmax
    fast = projected_higher_derivatives(obj, P, samples_per_step=10, pairs_per_step=3)
    original = SubspaceLoss.__init__
    monkeypatch.setattr(SubspaceLoss, "__init__", lambda self, o, p, precompute=None: original(self, o, p,
                                                                                             precompute=False))
    plain = projected_higher_derivatives(obj, P, samples_per_step=10, pairs_per_step=3)
    torch.testing.assert_close(fast.third, plain.third, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(fast.fourth, plain.fourth, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("activation", ["relu", "gelu", "tanh"])
@pytest.mark.parametrize(("kind", "loss"), [("mlp", "cross_entropy"), ("mlp", "mse"), ("linear", "cross_entropy")])
def test_batched_products_equal_the_vmapped_model(kind, loss, activation):
    torch.manual_seed(0)
    model = make_model(kind, (1, 6, 6), 3, hidden=(7, 5), activation=activation).to(F64)
    gen = torch.Generator().manual_seed(0)
    X, y = torch.randn(21, 1, 6, 6, dtype=F64, generator=gen), torch.randint(0, 3, (21,), generator=gen)
    obj = Objective(model, X, y, batch_size=8, dtype=F64, loss=loss)
    P = torch.randn(obj.num_params, 3, dtype=F64, generator=gen) / obj.num_params ** 0.5
    restricted = SubspaceLoss(obj, P)
    assert restricted.batched  # Linear layers and activations after the precomputed first layer
    thetas = torch.randn(4, 3, dtype=F64, generator=gen)
    features = restricted.features(X)
    expected = torch.stack([obj.per_sample_losses(obj.params + P @ theta, X, y) for theta in thetas])
    torch.testing.assert_close(restricted.batched_losses(thetas, features, y), expected, rtol=1e-12, atol=1e-13)
    assert not SubspaceLoss(*_problem("cnn", D=3)).batched  # convolutions after the first layer: vmap


def test_few_thetas_in_many_directions_skip_the_precomputation_and_stay_batched():
    obj, P = _problem("mlp", D=30)  # fan-in 36: (D + 1)·36 = 1,116 against T·(36 − D) = 6·T multiply-adds
    assert SubspaceLoss(obj, P).precomputed  # T unknown: D < fan-in decides
    assert SubspaceLoss(obj, P, evaluations=1000).precomputed
    few = SubspaceLoss(obj, P, evaluations=100)
    assert not few.precomputed and few.batched  # the whole MLP, its first Linear layer on the shared input
    thetas = torch.randn(5, 30, dtype=F64, generator=torch.Generator().manual_seed(3))
    expected = torch.stack([obj.per_sample_losses(obj.params + P @ theta, obj.X, obj.y) for theta in thetas])
    torch.testing.assert_close(few.batched_losses(thetas, few.features(obj.X), obj.y), expected, rtol=1e-12,
                               atol=1e-13)
    torch.testing.assert_close(subspace_losses(obj, P, thetas), _direct(obj, P, thetas), rtol=1e-12, atol=1e-13)
    assert not SubspaceLoss(*_problem("cnn", D=3), precompute=False).batched  # convolutions: vmap

@pytest.mark.parametrize("evaluations", [5, None])  # the whole model, or after the precomputed first layer
def test_frozen_parameters_keep_the_batched_path_off(evaluations):
    obj, _ = _problem("mlp", D=30)
    obj.model[3].bias.requires_grad_(False)  # not among the weights that move with θ: batched_losses would drop it
    frozen = Objective(obj.model, obj.X, obj.y, batch_size=8, dtype=F64)
    P = torch.randn(frozen.num_params, 30, dtype=F64, generator=torch.Generator().manual_seed(4)) / 30
    restricted = SubspaceLoss(frozen, P, evaluations=evaluations)
    assert restricted.precomputed is (evaluations is None) and not restricted.batched
    thetas = torch.randn(evaluations or 3, 30, dtype=F64, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(subspace_losses(frozen, P, thetas), _direct(frozen, P, thetas), rtol=1e-12,
                               atol=1e-13)
