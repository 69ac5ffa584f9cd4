import pytest
import torch

from hesslib import make_model
from hesslib.models import num_params


@pytest.mark.parametrize(
    "name, shape, kwargs, expected",
    [
        ("linear", (1, 28, 28), {}, 784 * 10 + 10),
        ("mlp", (1, 28, 28), {}, 269_322),  # the original 784-256-256-10
        ("mlp", (1, 28, 28), {"hidden": (64,)}, 784 * 64 + 64 + 64 * 10 + 10),
        ("cnn", (1, 28, 28), {}, (9 * 8 + 8) + (8 * 9 * 16 + 16) + 16 * 7 * 7 * 10 + 10),
        ("cnn", (1, 8, 8), {"channels": (4,)}, (9 * 4 + 4) + 4 * 4 * 4 * 10 + 10),
    ],
)
def test_output_shape_and_param_count(name, shape, kwargs, expected):
    model = make_model(name, shape, 10, **kwargs)
    assert model(torch.zeros(5, *shape)).shape == (5, 10)
    assert num_params(model) == expected
    assert not any(isinstance(m, torch.nn.BatchNorm2d | torch.nn.Dropout) for m in model.modules())


def test_seed_fixes_initialisation():
    a, b = make_model("mlp", (1, 8, 8), seed=3), make_model("mlp", (1, 8, 8), seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"name": "resnet", "input_shape": (1, 8, 8)}, "model name must be one of"),
        ({"name": "mlp", "input_shape": (64,)}, "input_shape must be"),
        ({"name": "mlp", "input_shape": (1, 8, 8), "hidden": (0,)}, "positive widths"),
        ({"name": "mlp", "input_shape": (1, 8, 8), "activation": "swish"}, "activation must be one of"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_model(**kwargs)


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_activation_replaces_every_relu_and_nothing_else(name):
    relu = make_model(name, (1, 8, 8), seed=0)
    for activation, kind in (("gelu", torch.nn.GELU), ("tanh", torch.nn.Tanh)):
        smooth = make_model(name, (1, 8, 8), activation=activation, seed=0)
        kinds = [type(m) for m in smooth]
        replaced = [kind if t is torch.nn.ReLU else t for t in map(type, relu)]
        assert sorted(map(str, kinds)) == sorted(map(str, replaced)) and kind in kinds
        if name == "mlp":
            assert kinds == replaced
        else:  # a smooth activation before each pooling, ReLU after it (they commute)
            assert [type(m).__name__ for m in smooth][:3] == ["Conv2d", kind.__name__, "MaxPool2d"]
            assert [type(m).__name__ for m in relu][:3] == ["Conv2d", "MaxPool2d", "ReLU"]
        for a, b in zip(relu.parameters(), smooth.parameters(), strict=True):  # same initialisation
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("shape", [(3, 2, 8, 8), (2, 3, 7, 9), (4, 2, 1, 5, 5)])
def test_max_pool_without_autograd_equals_max_pool2d_and_keeps_its_gradient(shape):
    from torch import nn

    from hesslib.models import MaxPool2d

    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    flat = x.reshape(-1, *shape[-3:])
    with torch.no_grad():
        fast = MaxPool2d()(x)  # the strided-maxima path, also with an extra leading (vmap-like) axis
    torch.testing.assert_close(fast, nn.functional.max_pool2d(flat, 2).reshape(*shape[:-2], *fast.shape[-2:]),
                               rtol=0, atol=0)
    xr, ref = flat.clone().requires_grad_(), flat.clone().requires_grad_()
    MaxPool2d()(xr).square().sum().backward()
    nn.MaxPool2d(2)(ref).square().sum().backward()
    torch.testing.assert_close(xr.grad, ref.grad, rtol=0, atol=0)
    assert isinstance(make_model("cnn", (1, 8, 8))[1], MaxPool2d)


@pytest.mark.parametrize("channels", [1, 3])
def test_conv2d_computes_nn_conv2d_in_channels_last_memory_also_under_torch_func(channels):
    from torch import nn
    from torch.func import grad, jvp, vmap

    from hesslib.models import Conv2d

    g = torch.Generator().manual_seed(0)
    fast, plain = Conv2d(channels, 4, 3, padding=1).double(), nn.Conv2d(channels, 4, 3, padding=1).double()
    plain.load_state_dict(fast.state_dict())
    x = torch.randn(5, channels, 6, 6, generator=g, dtype=torch.float64)
    out = fast(x)
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()  # the layout changed
    torch.testing.assert_close(out, plain(x), rtol=1e-12, atol=1e-12)  # the values did not
    torch.testing.assert_close(fast(x[0]), plain(x[0]), rtol=1e-12, atol=1e-12)  # unbatched [C, H, W] input
    params = dict(fast.named_parameters())

    def loss(module, w, inputs):
        return torch.func.functional_call(module, w, (inputs,)).tanh().sum()

    for module in (fast, plain):
        module.requires_grad_(False)
    directions = {k: torch.randn(3, *p.shape, generator=g, dtype=torch.float64) for k, p in params.items()}
    results = []
    for module in (fast, plain):  # gradients, and Hessian-vector products vmapped over directions (vmap keeps layout)
        gradient = grad(lambda w, m=module: loss(m, w, x))(params)
        products = vmap(lambda v, m=module: jvp(lambda w: grad(lambda u: loss(m, u, x))(w), (params,), (v,))[1])(
            directions)
        results.append((gradient, products))
    torch.testing.assert_close(results[0], results[1], rtol=1e-10, atol=1e-12)
    # vmapped over the inputs (per-batch curvature), with the weight shared: a batched input keeps its layout too
    inputs = x[None].expand(2, -1, -1, -1, -1)
    per_input = [vmap(lambda xb, m=module: torch.func.functional_call(m, params, (xb,)))(inputs)
                 for module in (fast, plain)]
    torch.testing.assert_close(per_input[0], per_input[1], rtol=1e-12, atol=1e-12)
    assert isinstance(make_model("cnn", (1, 8, 8))[0], Conv2d)


def test_cnn_pooling_before_relu_is_the_function_and_gradient_of_relu_before_pooling():
    """relu(max z) = max relu(z) exactly, and the gradients agree (ties included: a window of equal values)."""
    torch.manual_seed(0)
    net = make_model("cnn", (1, 12, 12), num_classes=3, seed=1).double()
    modules = list(net)
    assert [type(m).__name__ for m in modules[:6]] == ["Conv2d", "MaxPool2d", "ReLU"] * 2
    reordered = torch.nn.Sequential(modules[0], modules[2], modules[1], modules[3], modules[5], modules[4],
                                    *modules[6:])  # conv, ReLU, pool: the paper's order
    X = torch.randn(20, 1, 12, 12, dtype=torch.float64)
    X[:, :, :4, :4] = 0.0  # windows where the convolution is its bias: ties inside a pooling window
    y = torch.randint(0, 3, (20,))
    for grad_mode in (False, True):
        with torch.set_grad_enabled(grad_mode):
            assert torch.equal(net(X), reordered(X))
    grads = [torch.autograd.grad(torch.nn.functional.cross_entropy(m(X), y), list(m.parameters()))
             for m in (net, reordered)]
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
