"""Exact Hessian-vector products by explicit forward and backward passes (Pearlmutter's R-operator).

For a network of affine layers (Linear, Conv2d), elementwise activations, max-pooling and Flatten, H v is the
directional derivative R{∇L} of the gradient's backward pass along w* + t·v (Pearlmutter 1994). With a_{l−1} an
affine layer's input, z_l = A_l(a_{l−1}; W_l) + b_l its output (A_l linear in the input and in the weight:
a_{l−1}W_lᵀ, or the convolution W_l ⋆ a_{l−1}), g = ∂L/∂(·) the ordinary backward pass and V_l, c_l the weight
and bias parts of v:

* forward:  R z_l = A_l(R a_{l−1}; W_l) + A_l(a_{l−1}; V_l) + c_l,  R a = σ'(z) ⊙ R z for an activation, R a = R z
  at the pooling window's maximum for max-pooling (R x = 0 for the input);
* loss:     R g_out = w_s (p ⊙ R z − p (pᵀ R z)) for cross-entropy (p = softmax), w_s (2/C) R z for squared error,
  with w_s the sample's weight in L (1 / (N |batch|));
* backward: R(∂L/∂W_l) = ∂_W⟨R g_{z_l}, A_l(a_{l−1}; ·)⟩ + ∂_W⟨g_{z_l}, A_l(R a_{l−1}; ·)⟩,
  R(∂L/∂b_l) = Σ R g_{z_l} (over samples and positions), R g_{a_{l−1}} = A_lᵀ(R g_{z_l}; W_l) + A_lᵀ(g_{z_l}; V_l),
  R g_z = σ'(z) ⊙ R g_a + σ''(z) ⊙ R z ⊙ g_a, and max-pooling sends R g back to each window's maximum (it is
  piecewise linear: no second-order term).

The ordinary passes (a, z, g, σ', σ'', the pooling's maxima at w*) are the same for every v: :func:`primal`
computes them once and :func:`tangent` the rest, for r vectors at once (tangents are kept as [n, r, *features]).
Each product above is ONE call over all r: for a Linear layer a_{l−1}V_lᵀ is a [n, in] × [in, r·out] product and
R a W_lᵀ a [n·r, in] × [in, out] one; for a convolution A(a; V) is one convolution with r·out output channels, A(R a;
W) one over n·r images, and the terms with g one weight- or input-gradient over r·C channels. ``vmap`` of
``jvp(grad)`` redoes the primal passes and runs many smaller batched calls (and, on a CPU, convolutions in the
slow NCHW layout, where hesslib's :class:`~hesslib.models.Conv2d` uses channels-last). On the paper's MLP over
mnist5k, with the primal passes kept (:class:`~hesslib.hessian.Objective` keeps them), one vector costs 1.25
gradients instead of 3.2 and a block of 10 1.24 per vector instead of 1.6. :func:`supported` says which models it
handles; :meth:`~hesslib.hessian.Objective.hvp` runs :func:`primal` and :func:`tangent` for those, the vmapped
``jvp`` of ``grad`` otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.grad import conv2d_input, conv2d_weight

from .models import Conv2d

ACTIVATIONS = (nn.ReLU, nn.Tanh, nn.GELU, nn.Sigmoid)
CONVOLUTIONS = (nn.Conv2d, Conv2d)


def supported(modules: Sequence[nn.Module], loss: str) -> bool:
    """Whether :func:`primal` and :func:`tangent` handle a Sequential of ``modules`` with this ``loss``.

    That is: Flatten modules (start_dim 1), then a Linear or Conv2d layer, then any of Linear layers, Conv2d layers
    (one group, numeric zero padding), ReLU, Tanh, exact GELU or Sigmoid activations, max-pooling (2-D, no
    returned indices) and Flatten modules; cross-entropy or squared error.
    """
    if loss not in ("cross_entropy", "mse") or not any(isinstance(m, nn.Linear) for m in modules):
        return False
    seen_affine = False
    for module in modules:
        kind = type(module)
        if kind is nn.Flatten:
            if module.start_dim != 1 or module.end_dim != -1:
                return False
        elif kind is nn.Linear:
            seen_affine = True
        elif kind in CONVOLUTIONS:
            if module.groups != 1 or module.padding_mode != "zeros" or isinstance(module.padding, str):
                return False
            seen_affine = True
        elif not seen_affine:  # only Flatten modules before the first affine layer
            return False
        elif isinstance(module, nn.MaxPool2d):
            if module.return_indices:
                return False
        elif kind not in ACTIVATIONS or (kind is nn.GELU and module.approximate != "none"):
            return False
    return True


def _derivatives(module: nn.Module, z: torch.Tensor, second: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """σ'(z) and (if ``second``) σ''(z) of an activation; σ'' is None where it vanishes (ReLU)."""
    if isinstance(module, nn.ReLU):
        return (z > 0).to(z.dtype), None  # autograd's derivative, 0 at z = 0
    if isinstance(module, nn.Tanh):
        t = torch.tanh(z)
        d1 = 1 - t * t
        return d1, (-2 * t * d1 if second else None)
    if isinstance(module, nn.Sigmoid):
        s = torch.sigmoid(z)
        d1 = s * (1 - s)
        return d1, (d1 * (1 - 2 * s) if second else None)
    pdf = torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)  # exact GELU, x Φ(x)
    cdf = 0.5 * (1 + torch.erf(z / math.sqrt(2)))
    return cdf + z * pdf, (pdf * (2 - z * z) if second else None)


def _conv(module: nn.Conv2d, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``module``'s convolution of x with another weight and bias (in hesslib's Conv2d's channels-last layout)."""
    if isinstance(module, Conv2d):
        return module.convolve(x, weight, bias)
    return F.conv2d(x, weight, bias, module.stride, module.padding, module.dilation)


def _conv_input(module: nn.Conv2d, size: Sequence[int], weight: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Aᵀ(g; W): the gradient of ⟨g, W ⋆ a⟩ with respect to the input a of shape ``size``."""
    return conv2d_input(list(size), weight, g, module.stride, module.padding, module.dilation)


def _conv_weight(module: nn.Conv2d, a: torch.Tensor, size: Sequence[int], g: torch.Tensor) -> torch.Tensor:
    """The gradient of ⟨g, W ⋆ a⟩ with respect to a weight W of shape ``size``."""
    return conv2d_weight(a, list(size), g, module.stride, module.padding, module.dilation)


def _at_maxima(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The values [n, r, C, H, W] at the pooling maxima ``index`` [n, C, H', W'] (flat in H x W): [n, r, C, H', W']."""
    n, r, C = values.shape[:3]
    flat = index.flatten(2).unsqueeze(1).expand(n, r, C, -1)
    return values.flatten(3).gather(3, flat).view(n, r, *index.shape[1:])


def _to_maxima(g: torch.Tensor, index: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """The adjoint of :func:`_at_maxima`: g [n, r, C, H', W'] summed into zeros [n, r, C, H, W] at ``index``."""
    n, r, C = g.shape[:3]
    flat = index.flatten(2).unsqueeze(1).expand(n, r, C, -1)
    out = g.new_zeros(n, r, C, size[-2] * size[-1])
    return out.scatter_add_(3, flat, g.flatten(3)).view(n, r, C, *size[-2:])


class Primal(NamedTuple):
    """What every product at w* shares, for one chunk of samples: the ordinary forward and backward passes.

    Attributes:
        layers: in forward order (from the first affine layer), ``("linear", index, a_{l−1}, g_{z_l})`` or
            ``("conv", index, module, a_{l−1}, g_{z_l})`` for an affine layer (its input and the gradient at its
            output), ``("act", σ'(z), σ''(z) ⊙ g_a or None)`` for an activation, ``("pool", maxima, input size)``
            for max-pooling (the flat positions of each window's maximum) and ``("flatten", feature shape)``.
        probabilities: softmax of the logits [n, C] (cross-entropy) or None (squared error).
        sample_weights: w_s [n].
    """

    layers: list[tuple]
    probabilities: torch.Tensor | None
    sample_weights: torch.Tensor

    @property
    def nbytes(self) -> int:
        """The bytes of the tensors it holds."""
        tensors = [t for layer in self.layers for t in layer if isinstance(t, torch.Tensor)]
        tensors += [t for t in (self.probabilities, self.sample_weights) if t is not None]
        return sum(t.numel() * t.element_size() for t in tensors)


def primal(modules: Sequence[nn.Module], weights: dict[str, torch.Tensor], X: torch.Tensor, y: torch.Tensor,
           sample_weights: torch.Tensor, loss: str) -> Primal:
    """The forward and backward passes of Σ_s w_s ℓ_s at w* that :func:`tangent` needs, for samples X, y.

    Args:
        modules: the Sequential's modules (see :func:`supported`); parameter names are ``"{index}.weight"``,
            ``"{index}.bias"``.
        weights: w* by parameter name.
        X: inputs [n, ...].
        y: int64 labels [n] (or float targets [n, C] for ``"mse"``).
        sample_weights: w_s [n].
        loss: ``"cross_entropy"`` or ``"mse"``.
    """
    n = X.shape[0]
    a = X
    forward = []  # ("linear", index, input), ("conv", index, module, input), ("act", module, pre-activation),
    # ("pool", module, input size) or ("flatten", feature shape), from the first affine layer on
    for index, module in enumerate(modules):
        W, b = weights.get(f"{index}.weight"), weights.get(f"{index}.bias")
        if isinstance(module, nn.Linear):
            forward.append(("linear", index, a))
            a = torch.addmm(b, a, W.T) if b is not None else a @ W.T
        elif isinstance(module, CONVOLUTIONS):
            a = a.to(memory_format=torch.channels_last) if isinstance(module, Conv2d) else a
            forward.append(("conv", index, module, a))
            a = _conv(module, a, W, b)
        elif isinstance(module, nn.Flatten):
            if forward:
                forward.append(("flatten", a.shape[1:]))
            a = a.flatten(1)
        elif isinstance(module, nn.MaxPool2d):
            size = a.shape
            a, maxima = F.max_pool2d(a, module.kernel_size, module.stride, module.padding, module.dilation,
                                     module.ceil_mode, return_indices=True)
            forward.append(("pool", maxima, size))
        else:
            forward.append(("act", module, a))
            a = module(a)
    if loss == "cross_entropy":
        p = torch.softmax(a, dim=1)
        g = p.clone()
        g[torch.arange(n, device=a.device), y] -= 1
        g *= sample_weights[:, None]
    else:
        p = None
        target = F.one_hot(y, a.shape[1]).to(a.dtype) if not y.is_floating_point() else y.reshape(a.shape)
        g = (a - target) * ((2.0 / a.shape[1]) * sample_weights[:, None])
    layers: list[tuple] = [()] * len(forward)
    for position in reversed(range(len(forward))):
        kind, *items = forward[position]
        if kind == "linear":
            index, a_in = items
            layers[position] = ("linear", index, a_in, g)
            if position:
                g = g @ weights[f"{index}.weight"]
        elif kind == "conv":
            index, module, a_in = items
            layers[position] = ("conv", index, module, a_in, g)
            if position:
                g = _conv_input(module, a_in.shape, weights[f"{index}.weight"], g)
        elif kind == "pool":
            maxima, size = items
            layers[position] = ("pool", maxima, size)
            g = _to_maxima(g.unsqueeze(1), maxima, size).squeeze(1)
        elif kind == "flatten":
            layers[position] = ("flatten", items[0])
            g = g.reshape(n, *items[0])
        else:
            module, z = items
            d1, d2 = _derivatives(module, z, second=True)
            layers[position] = ("act", d1, None if d2 is None else d2 * g)
            g = d1 * g
    return Primal(layers, p, sample_weights)


def tangent(state: Primal, weights: dict[str, torch.Tensor], V: dict[str, torch.Tensor],
            loss: str) -> dict[str, torch.Tensor]:
    """Σ_s w_s ∇²ℓ_s(w*) v for the r directions v of ``V`` (each [r, *shape]), from the chunk's :func:`primal`.

    Returns:
        The products by parameter name, each [r, *shape].
    """
    r = next(iter(V.values())).shape[0]
    Ra = None  # the tangent of the current activation, [n, r, *features] (None while it is zero)
    inputs = []  # per layer: the tangent of its input
    for layer in state.layers:
        inputs.append(Ra)
        kind = layer[0]
        if kind == "linear":
            _, index, a_in, _ = layer
            W, VW, cb = weights[f"{index}.weight"], V[f"{index}.weight"], V.get(f"{index}.bias")
            n, out = a_in.shape[0], W.shape[0]
            Rz = (a_in @ VW.reshape(r * out, -1).T).view(n, r, out)
            if Ra is not None:
                Rz += (Ra.reshape(n * r, -1) @ W.T).view(n, r, out)
            if cb is not None:
                Rz += cb
            Ra = Rz
        elif kind == "conv":
            _, index, module, a_in, _ = layer
            W, VW, cb = weights[f"{index}.weight"], V[f"{index}.weight"], V.get(f"{index}.bias")
            n, out = a_in.shape[0], W.shape[0]
            Rz = _conv(module, a_in, VW.flatten(0, 1), None if cb is None else cb.flatten()).unflatten(1, (r, out))
            if Ra is not None:
                Rz = Rz + _conv(module, Ra.flatten(0, 1), W, None).unflatten(0, (n, r))
            Ra = Rz
        elif kind == "pool":
            Ra = _at_maxima(Ra, layer[1])
        elif kind == "flatten":
            Ra = Ra.flatten(2)
        else:
            Ra = layer[1].unsqueeze(1) * Ra
    w = state.sample_weights[:, None, None]
    if loss == "cross_entropy":
        p = state.probabilities
        Rg = p[:, None, :] * (Ra - torch.einsum("nc,nrc->nr", p, Ra)[:, :, None]) * w
    else:
        Rg = Ra * ((2.0 / Ra.shape[2]) * w)
    products: dict[str, torch.Tensor] = {}
    for layer, Ra_in in zip(reversed(state.layers), reversed(inputs), strict=True):
        kind = layer[0]
        if kind == "act":
            _, d1, d2g = layer
            Rg = d1.unsqueeze(1) * Rg
            if d2g is not None:
                Rg += d2g.unsqueeze(1) * Ra_in
            continue
        if kind == "pool":
            Rg = _to_maxima(Rg, layer[1], layer[2])
            continue
        if kind == "flatten":
            Rg = Rg.unflatten(2, layer[1])
            continue
        if kind == "linear":
            _, index, a_in, g = layer
            W = weights[f"{index}.weight"]
            n, (out, fan_in) = a_in.shape[0], W.shape
            RgW = (Rg.reshape(n, r * out).T @ a_in).view(r, out, fan_in)
            if Ra_in is not None:
                RgW += (g.T @ Ra_in.reshape(n, r * fan_in)).view(out, r, fan_in).transpose(0, 1)
            products[f"{index}.weight"] = RgW
            if f"{index}.bias" in V:
                products[f"{index}.bias"] = Rg.sum(0)
            if Ra_in is None:
                break  # the first affine layer: nothing before it has parameters
            Rg = (Rg.reshape(n * r, out) @ W).view(n, r, fan_in)
            Rg += (g @ V[f"{index}.weight"].transpose(0, 1).reshape(out, r * fan_in)).view(n, r, fan_in)
            continue
        _, index, module, a_in, g = layer  # a convolution: W [out, C, kh, kw], a_in [n, C, H, W]
        W, VW = weights[f"{index}.weight"], V[f"{index}.weight"]
        n, (out, C, *kernel) = a_in.shape[0], W.shape
        RgW = _conv_weight(module, a_in, (r * out, C, *kernel), Rg.flatten(1, 2)).unflatten(0, (r, out))
        if Ra_in is not None:  # all r directions as one input of r·C channels
            cross = _conv_weight(module, Ra_in.flatten(1, 2), (out, r * C, *kernel), g)
            RgW += cross.unflatten(1, (r, C)).transpose(0, 1)
        products[f"{index}.weight"] = RgW
        if f"{index}.bias" in V:
            products[f"{index}.bias"] = Rg.sum((0, 3, 4))
        if Ra_in is None:
            break
        size = a_in.shape[1:]
        Rg_in = _conv_input(module, (n * r, *size), W, Rg.flatten(0, 1)).unflatten(0, (n, r))
        VW_in = VW.transpose(0, 1).reshape(out, r * C, *kernel)  # [r, out, C, ...] as one weight of r·C inputs
        Rg = Rg_in + _conv_input(module, (n, r * C, *size[1:]), VW_in, g).unflatten(1, (r, C))
    return products
