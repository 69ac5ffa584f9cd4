"""The paper's three model families as plain ``nn.Module``s (no BatchNorm, no dropout).

* ``"linear"``: the single-layer MLP, a softmax regression ``in -> classes``;
* ``"mlp"``: the multi-layer MLP, default ``in-256-256-classes`` with ReLU (269,322 parameters on MNIST, as in
  the original code);
* ``"cnn"``: a small CNN, two 3x3 conv + ReLU + 2x2 max-pool stages and a linear head. With ReLU each stage is
  built as conv, max-pool, ReLU: the same function (the maximum of rectified values is the rectified maximum,
  exactly) and the same gradients, with the activation on a quarter of the values; it is the same model (same
  parameters, same initialisation), but hooks on the ReLU modules, e.g. :func:`hesslib.activation_switches`, see
  pooled pre-activations. Smooth activations, which need not commute with a maximum, come before the pooling.

The MLP's and the CNN's nonlinearity is ReLU, as in the paper; ``activation="gelu"`` or ``"tanh"`` gives the same
architecture with a smooth one (to tell the kinks of ReLU apart from other causes of non-quadratic losses).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

MODELS = ("linear", "mlp", "cnn")
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


class MaxPool2d(nn.MaxPool2d):
    """2x2 max-pooling (stride 2) whose forward without autograd is the maximum of the four strided slices.

    The values are exactly those of ``nn.MaxPool2d(2)`` (floor mode drops an odd last row or column); on a CPU the
    elementwise maxima of four views are about 15x faster than the ``max_pool2d`` kernel (0.012 s against 0.175 s
    on the paper's CNN's first activation, [4,992, 8, 28, 28], 2 threads), which dominated Monte Carlo on the CNN.
    With autograd on (training, gradients, Hessian-vector products) it is ``nn.MaxPool2d``, whose backward sends a
    gradient to one maximum.
    """

    def __init__(self) -> None:
        super().__init__(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Max over each 2x2 window of x [..., H, W] -> [..., H // 2, W // 2]."""
        if torch.is_grad_enabled():
            return super().forward(x)
        H, W = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
        return torch.maximum(torch.maximum(x[..., 0:H:2, 0:W:2], x[..., 0:H:2, 1:W:2]),
                             torch.maximum(x[..., 1:H:2, 0:W:2], x[..., 1:H:2, 1:W:2]))


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` computed in channels-last memory (NHWC), where the CPU's oneDNN kernels are fastest.

    Values are those of ``nn.Conv2d`` up to float rounding; only the layout of the input, the weight and so the
    output differs, and the ReLU and max-pooling after it keep that layout. On the paper's CNN (1 -> 8 -> 16
    channels, 28x28) the first convolution's forward and backward take 8.5 ms instead of 52 ms per 1,000
    images, the 2x2 max-pooling's 7.8 ms instead of 24 ms, and the whole gradient over mnist5k 0.20 s instead of
    0.33 s (2 threads). Inside ``vmap`` (``jvp`` of ``grad`` products vmapped over a block, Monte Carlo over several
    θ per pass), where a batched tensor's memory format cannot be chosen, it is ``nn.Conv2d`` (an input alone in
    channels-last made vmapped products 25 % slower); hesslib's explicit products (:mod:`hesslib.rop`) and its
    one-θ Monte Carlo passes run outside ``vmap``, in channels-last.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The convolution of x [n, C, H, W] (or [C, H, W]) with this layer's weight and bias."""
        return self.convolve(x, self.weight, self.bias)

    def convolve(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """This layer's convolution (stride, padding, dilation) of x with ``weight`` and ``bias``, channels-last."""
        if x.dim() == 4:
            try:  # both or neither: inside vmap a batched input or weight cannot change its memory format
                x, weight = x.to(memory_format=torch.channels_last), weight.to(memory_format=torch.channels_last)
            except RuntimeError:  # e.g. "NYI: Tensor.clone(memory_format) inside vmap": keep vmap's own layout
                pass
        return self._conv_forward(x, weight, bias)


def make_model(
    name: str,
    input_shape: Sequence[int],
    num_classes: int = 10,
    *,
    hidden: Sequence[int] = (256, 256),
    channels: Sequence[int] = (8, 16),
    activation: str = "relu",
    seed: int | None = None,
) -> nn.Module:
    """Build model ``name`` for inputs of shape ``input_shape`` (C x H x W).

    Args:
        name: ``"linear"``, ``"mlp"`` or ``"cnn"`` (see the module docstring).
        input_shape: (C, H, W), each ≥ 1.
        num_classes: the number of outputs (logits), ≥ 2.
        hidden: the MLP's hidden widths, each ≥ 1 (ignored by other models).
        channels: the CNN's conv widths, each ≥ 1 (ignored by other models).
        activation: the hidden nonlinearity of the MLP and the CNN, ``"relu"`` (the paper's), ``"gelu"`` or
            ``"tanh"`` (ignored by ``"linear"``).
        seed: if given, ``torch.manual_seed(seed)`` is called first (this reseeds torch's global generator),
            so the initialisation is reproducible.

    Returns:
        An ``nn.Sequential`` in float32 on the CPU mapping inputs [n, C, H, W] to logits [n, num_classes].

    Raises:
        ValueError: if ``name`` or ``activation`` is unknown, ``input_shape`` is not three positive sizes,
            ``num_classes`` < 2, or a width in ``hidden`` or ``channels`` is < 1.

    Example:
        >>> sum(p.numel() for p in make_model("mlp", (1, 28, 28), seed=0).parameters())
        269322
        >>> make_model("cnn", (1, 8, 8), num_classes=3, seed=0)(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 3])
    """
    if name not in MODELS:
        raise ValueError(f"model name must be one of {MODELS}, got {name!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}, got {activation!r}")
    act = ACTIVATIONS[activation]
    if len(input_shape) != 3 or min(input_shape) < 1:
        raise ValueError(f"input_shape must be (C, H, W) with positive sizes, got {tuple(input_shape)}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if any(h < 1 for h in hidden) or any(c < 1 for c in channels):
        raise ValueError(f"hidden and channels must be positive widths, got {tuple(hidden)}, {tuple(channels)}")
    if seed is not None:
        torch.manual_seed(seed)
    c, h, w = input_shape
    if name == "linear":
        return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, num_classes))
    if name == "mlp":
        widths = [c * h * w, *hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for fan_in, fan_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Linear(fan_in, fan_out), act()]
        layers.append(nn.Linear(widths[-1], num_classes))
        return nn.Sequential(*layers)
    layers = []
    in_ch = c
    for out_ch in channels:
        stage = [Conv2d(in_ch, out_ch, 3, padding=1), act()]
        if h >= 2 and w >= 2:
            # ReLU commutes with max-pooling (relu(max z) = max relu(z), and so do their gradients), so with ReLU
            # the pooling comes first and the activation runs on a quarter of the values
            stage.insert(1 if activation == "relu" else 2, MaxPool2d())
            h, w = h // 2, w // 2
        layers += stage
        in_ch = out_ch
    layers += [nn.Flatten(), nn.Linear(in_ch * h * w, num_classes)]
    return nn.Sequential(*layers)


def num_params(model: nn.Module) -> int:
    """Number of trainable parameters M."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
