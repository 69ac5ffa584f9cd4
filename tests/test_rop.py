"""Explicit Hessian-vector products (hesslib.rop) against dense Hessians from torch.func.hessian, in float64."""

import pytest
import torch
from torch import nn
from torch.func import hessian

from hesslib import make_model, rop
from hesslib.hessian import Objective

F64 = torch.float64


def _dense_hessian(obj: Objective) -> torch.Tensor:
    """H = (1/N) Σ_i ∇²ℓ_i(w*), each ℓ_i the mean per-sample loss of batch i, by torch.func.hessian."""
    def batch_loss(i):
        part = slice(i * obj.batch_size, min((i + 1) * obj.batch_size, obj.num_samples))
        return lambda w: obj.per_sample_losses(w, obj.X[part], obj.y[part]).mean()

    return sum(hessian(batch_loss(i))(obj.params) for i in range(obj.num_batches)) / obj.num_batches


def _both_formulations_equal_the_dense_hessian(obj: Objective) -> None:
    """The explicit products (a block and one vector) and the vmapped jvp of grad against torch.func.hessian."""
    assert obj.hvp_method == "explicit"
    H = _dense_hessian(obj)
    V = torch.randn(obj.num_params, 3, dtype=F64, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(obj.hvp(V), H @ V, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(obj.hvp(V[:, 1]), H @ V[:, 1], rtol=1e-10, atol=1e-12)
    obj.hvp_method = "jvp"
    torch.testing.assert_close(obj.hvp(V), H @ V, rtol=1e-10, atol=1e-12)


def _models():
    torch.manual_seed(0)
    yield "relu mlp", make_model("mlp", (1, 3, 3), 4, hidden=(6, 5))
    yield "tanh mlp", make_model("mlp", (1, 3, 3), 4, hidden=(6, 5), activation="tanh")
    yield "gelu mlp", make_model("mlp", (1, 3, 3), 4, hidden=(6,), activation="gelu")
    yield "linear", make_model("linear", (1, 3, 3), 4)
    yield "sigmoid, no biases, two linears in a row, activation at the end", nn.Sequential(
        nn.Flatten(), nn.Linear(9, 6, bias=False), nn.Sigmoid(), nn.Linear(6, 5), nn.Linear(5, 4, bias=False),
        nn.Tanh())


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
@pytest.mark.parametrize("name, model", list(_models()), ids=[name for name, _ in _models()])
def test_explicit_products_equal_the_dense_hessian(name, model, loss):
    model = model.to(F64)
    X = torch.randn(29, 1, 3, 3, dtype=F64, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 4, (29,), generator=torch.Generator().manual_seed(2))
    obj = Objective(model, X, y, batch_size=8, loss=loss, chunk_size=11)  # a short last batch, chunks across batches
    _both_formulations_equal_the_dense_hessian(obj)


def test_explicit_products_with_float_targets_and_at_relu_kinks():
    torch.manual_seed(0)
    model = make_model("mlp", (1, 2, 2), 3, hidden=(5,)).to(F64)
    with torch.no_grad():  # pre-activations exactly 0 for every sample: autograd's ReLU derivative there is 0
        model[1].weight[:2] = 0.0
        model[1].bias[:2] = 0.0
    X = torch.randn(12, 1, 2, 2, dtype=F64)
    targets = torch.randn(12, 3, dtype=F64)
    obj = Objective(model, X, targets, batch_size=5, loss="mse")
    assert obj.hvp_method == "explicit"
    V = torch.randn(obj.num_params, 2, dtype=F64)
    torch.testing.assert_close(obj.hvp(V), _dense_hessian(obj) @ V, rtol=1e-10, atol=1e-12)


def _conv_nets():
    torch.manual_seed(0)
    for activation in ("relu", "gelu", "tanh"):  # ReLU after each pooling, the smooth ones before it
        yield f"{activation} cnn", make_model("cnn", (2, 7, 6), 3, channels=(3, 4), activation=activation)
    yield "strides, padding, dilation, overlapping and ceil-mode pooling, nn.Conv2d, flatten after linear", (
        nn.Sequential(nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.Tanh(), nn.MaxPool2d(2, stride=1),
                      nn.Conv2d(3, 2, (2, 1), padding=(1, 0), dilation=(2, 1), bias=False), nn.Sigmoid(),
                      nn.MaxPool2d(2, ceil_mode=True), nn.Flatten(), nn.Linear(4, 5), nn.Flatten(), nn.GELU(),
                      nn.Linear(5, 3)))


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
@pytest.mark.parametrize("name, model", list(_conv_nets()), ids=[name for name, _ in _conv_nets()])
def test_explicit_products_of_convolutional_networks_equal_the_dense_hessian(name, model, loss):
    model = model.to(F64)
    X = torch.randn(13, 2, 7, 6, dtype=F64, generator=torch.Generator().manual_seed(1))
    X[:3, :, :3, :3] = 0.0  # windows where a convolution is its bias: ties inside pooling windows
    y = torch.randint(0, 3, (13,), generator=torch.Generator().manual_seed(2))
    obj = Objective(model, X, y, batch_size=4, loss=loss, chunk_size=5)
    _both_formulations_equal_the_dense_hessian(obj)


@pytest.mark.parametrize("model", [
    nn.Sequential(nn.Conv2d(2, 4, 3, groups=2), nn.ReLU(), nn.Flatten(), nn.Linear(64, 2)),
    nn.Sequential(nn.Conv2d(2, 2, 3, padding="same"), nn.ReLU(), nn.Flatten(), nn.Linear(72, 2)),
    nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(2, 2, 1), nn.Flatten(), nn.Linear(18, 2)),
    nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.GELU(approximate="tanh"), nn.Linear(3, 2)),
    nn.Sequential(nn.Flatten(), nn.ReLU(), nn.Linear(4, 2)),
], ids=["grouped convolution", "padding 'same'", "pooling first", "tanh-gelu", "activation first"])
def test_other_models_fall_back_to_jvp_of_grad(model):
    shape = (1, 2, 2) if isinstance(model[0], nn.Flatten) else (2, 6, 6)
    obj = Objective(model.to(F64), torch.randn(6, *shape, dtype=F64), torch.randint(0, 2, (6,)), batch_size=3)
    assert obj.hvp_method == "jvp"
    V = torch.randn(obj.num_params, 2, dtype=F64)
    torch.testing.assert_close(obj.hvp(V), _dense_hessian(obj) @ V, rtol=1e-10, atol=1e-12)


class _Wrapped(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


def test_frozen_parameters_and_non_sequentials_fall_back():
    model = make_model("mlp", (1, 2, 2), 3, hidden=(4,)).to(F64)
    X, y = torch.randn(6, 1, 2, 2, dtype=F64), torch.randint(0, 3, (6,))
    assert Objective(_Wrapped(model), X, y, batch_size=3).hvp_method == "jvp"
    model[1].bias.requires_grad_(False)
    assert Objective(model, X, y, batch_size=3).hvp_method == "jvp"
    assert not rop.supported([nn.Flatten(), nn.Linear(4, 3)], "hinge")
    assert not rop.supported([nn.Flatten(), nn.ReLU()], "mse")
    # (not compared with torch.func.hessian: in torch 2.13 its Hessian through LayerNorm disagrees with finite
    # differences, while jvp of grad and double backward agree with them)
    assert not rop.supported([nn.Flatten(), nn.Linear(4, 3), nn.LayerNorm(3), nn.Linear(3, 2)], "cross_entropy")


def test_kept_primal_passes_follow_the_parameters():
    torch.manual_seed(0)
    model = make_model("mlp", (1, 2, 2), 3, hidden=(5,), activation="tanh").to(F64)
    X, y = torch.randn(20, 1, 2, 2, dtype=F64), torch.randint(0, 3, (20,))
    obj = Objective(model, X, y, batch_size=6, chunk_size=7)
    V = torch.randn(obj.num_params, 2, dtype=F64)
    first = obj.hvp(V)
    torch.testing.assert_close(obj.hvp(V), first, rtol=0, atol=0)  # from the kept passes
    obj.params = obj.params + 0.3 * torch.randn(obj.num_params, dtype=F64)  # a new w*: the passes are redone
    torch.testing.assert_close(obj.hvp(V), _dense_hessian(obj) @ V, rtol=1e-10, atol=1e-12)
    obj.params.mul_(0.5)  # changed in place: redone as well
    torch.testing.assert_close(obj.hvp(V), _dense_hessian(obj) @ V, rtol=1e-10, atol=1e-12)


def test_primal_passes_too_large_to_keep_are_redone(monkeypatch):
    import hesslib.hessian

    model = make_model("cnn", (1, 6, 6), 3, channels=(2,), seed=0).to(F64)
    X, y = torch.randn(20, 1, 6, 6, dtype=F64), torch.randint(0, 3, (20,))
    obj = Objective(model, X, y, batch_size=6, chunk_size=7)
    V = torch.randn(obj.num_params, 2, dtype=F64)
    kept = obj.hvp(V)
    assert obj._primal_cache is not None and len(obj._primal_cache[1]) == len(obj.chunks()) == 2  # 16 + 4 samples
    monkeypatch.setattr(hesslib.hessian, "PRIMAL_CACHE_MB", 0.0)
    obj.params = obj.params.clone()  # a new w*: its passes exceed the (empty) budget, so none are kept
    torch.testing.assert_close(obj.hvp(V), kept, rtol=1e-12, atol=1e-14)
    assert obj._primal_cache is None
    torch.testing.assert_close(obj.hvp(V), _dense_hessian(obj) @ V, rtol=1e-10, atol=1e-12)
