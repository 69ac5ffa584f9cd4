"""Exact Hessian-vector products of an MLP by explicit forward and backward passes (Pearlmutter's R-operator).

For a network of Linear layers and elementwise activations, H v is the directional derivative R{∇L} of the
gradient's backward pass along w* + t·v (Pearlmutter 1994). With a_{l−1} a Linear layer's input, z_l = a_{l−1}W_lᵀ
+ b_l its output, g = ∂L/∂(·) the ordinary backward pass and V_l, c_l the weight and bias parts of v:

* forward:  R z_l = R a_{l−1} W_lᵀ + a_{l−1} V_lᵀ + c_l,  R a = σ'(z) ⊙ R z  (R x = 0 for the input);
* loss:     R g_out = w_s (p ⊙ R z − p (pᵀ R z)) for cross-entropy (p = softmax), w_s (2/C) R z for squared error,
  with w_s the sample's weight in L (1 / (N |batch|));
* backward: R(∂L/∂W_l) = R g_{z_l}ᵀ a_{l−1} + g_{z_l}ᵀ R a_{l−1},  R(∂L/∂b_l) = Σ_s R g_{z_l},
  R g_{a_{l−1}} = R g_{z_l} W_l + g_{z_l} V_l,  R g_z = σ'(z) ⊙ R g_a + σ''(z) ⊙ R z ⊙ g_a.

The ordinary passes (a, z, g, σ', σ'' at w*) are the same for every v: :func:`primal` computes them once and
:func:`tangent` the rest, for r vectors at once, each product above ONE matrix multiply over all r (tangents are
kept as [n, r, width], so a_{l−1}V_lᵀ is a [n, in] × [in, r·out] product and R a W_lᵀ a [n·r, in] × [in, out]
one), where ``vmap`` of ``jvp(grad)`` redoes the primal passes and runs many smaller batched multiplies. On the
paper's MLP over mnist5k, with the primal passes kept (:class:`~hesslib.hessian.Objective` keeps them), one
vector costs 1.25 gradients instead of 3.2 and a block of 10 1.24 per vector instead of 1.6. :func:`supported`
says which models it handles; :meth:`~hesslib.hessian.Objective.hvp` runs :func:`primal` and :func:`tangent` for
those, the vmapped ``jvp`` of ``grad`` otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = (nn.ReLU, nn.Tanh, nn.GELU, nn.Sigmoid)


def supported(modules: Sequence[nn.Module], loss: str) -> bool:
    """Whether :func:`primal` and :func:`tangent` handle a Sequential of ``modules`` with this ``loss``.

    That is: Flatten modules (start_dim 1), then Linear layers and ReLU, Tanh, exact GELU or Sigmoid activations,
    starting with a Linear layer; cross-entropy or squared error.
    """
    if loss not in ("cross_entropy", "mse") or not any(isinstance(m, nn.Linear) for m in modules):
        return False
    seen_linear = False
    for module in modules:  # Flatten modules, then a Linear layer before any activation
        kind = type(module)
        if kind is nn.Linear:
            seen_linear = True
        elif kind is nn.Flatten:
            if seen_linear or module.start_dim != 1 or module.end_dim != -1:
                return False
        elif not seen_linear or kind not in ACTIVATIONS or (kind is nn.GELU and module.approximate != "none"):
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


class Primal(NamedTuple):
    """What every product at w* shares, for one chunk of samples: the ordinary forward and backward passes.

    Attributes:
        layers: in forward order, ``("linear", index, a_{l−1}, g_{z_l})`` for a Linear layer (its input and the
            gradient at its output) or ``("act", σ'(z), σ''(z) ⊙ g_a or None)`` for an activation.
        probabilities: softmax of the logits [n, C] (cross-entropy) or None (squared error).
        sample_weights: w_s [n].
    """

    layers: list[tuple]
    probabilities: torch.Tensor | None
    sample_weights: torch.Tensor


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
    a = X.reshape(n, -1)
    forward = []  # ("linear", index, input) or ("act", module, pre-activation)
    for index, module in enumerate(modules):
        if isinstance(module, nn.Flatten):
            continue
        if isinstance(module, nn.Linear):
            forward.append(("linear", index, a))
            W, b = weights[f"{index}.weight"], weights.get(f"{index}.bias")
            a = torch.addmm(b, a, W.T) if b is not None else a @ W.T
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
        kind, item, value = forward[position]
        if kind == "linear":
            layers[position] = ("linear", item, value, g)
            if position:
                g = g @ weights[f"{item}.weight"]
        else:
            d1, d2 = _derivatives(item, value, second=True)
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
    Ra = None  # the tangent of the current activation, [n, r, width] (None while it is zero)
    inputs = []  # per layer: the tangent of a Linear layer's input, or of an activation's pre-activation
    for layer in state.layers:
        if layer[0] == "linear":
            _, index, a_in, _ = layer
            W, VW, cb = weights[f"{index}.weight"], V[f"{index}.weight"], V.get(f"{index}.bias")
            n, out = a_in.shape[0], W.shape[0]
            inputs.append(Ra)
            Rz = (a_in @ VW.reshape(r * out, -1).T).view(n, r, out)
            if Ra is not None:
                Rz += (Ra.reshape(n * r, -1) @ W.T).view(n, r, out)
            if cb is not None:
                Rz += cb
            Ra = Rz
        else:
            inputs.append(Ra)
            Ra = layer[1][:, None, :] * Ra
    w = state.sample_weights[:, None, None]
    if loss == "cross_entropy":
        p = state.probabilities
        Rg = p[:, None, :] * (Ra - torch.einsum("nc,nrc->nr", p, Ra)[:, :, None]) * w
    else:
        Rg = Ra * ((2.0 / Ra.shape[2]) * w)
    products: dict[str, torch.Tensor] = {}
    for layer, Ra_in in zip(reversed(state.layers), reversed(inputs), strict=True):
        if layer[0] == "act":
            _, d1, d2g = layer
            Rg = d1[:, None, :] * Rg
            if d2g is not None:
                Rg += d2g[:, None, :] * Ra_in
            continue
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
            break  # the first Linear layer: nothing before it has parameters
        Rg = (Rg.reshape(n * r, out) @ W).view(n, r, fan_in)
        Rg += (g @ V[f"{index}.weight"].transpose(0, 1).reshape(out, r * fan_in)).view(n, r, fan_in)
    return products

