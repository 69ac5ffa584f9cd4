"""Univariate Taylor mode: the coefficients of ℓ_s(w* + t·v) in t up to t⁴, for many directions v at once.

Along a line w(t) = w* + t·v every parametric layer is affine in t (W(t) = W* + t·W_v, b(t) = b* + t·b_v), so the
Taylor coefficients c_0..c_J of each activation h(t) = Σ_j c_j t^j follow exactly from those of its input:

* a linear or convolution layer: y_j = W* c_j + W_v c_{j−1} (+ b_v at j = 1), the product rule of two series;
* a smooth activation g: Faà di Bruno, y_1 = g' c_1, y_2 = g' c_2 + g'' c_1²/2,
  y_3 = g' c_3 + g'' c_1 c_2 + g''' c_1³/6, y_4 = g' c_4 + g''(c_1 c_3 + c_2²/2) + g''' c_1² c_2/2 + g'''' c_1⁴/24,
  with g⁽ᵏ⁾ at c_0 in closed form (tanh, exact GELU);
* ReLU: y_j = 1[c_0 > 0] c_j, max-pooling: every c_j read at the maxima of c_0 (the derivatives autograd takes);
* cross-entropy: log Σ_i p_i exp(δ_i(t)) − δ_y(t) with p = softmax(c_0) and δ = Σ_{j≥1} c_j t^j, by the
  recurrences of the exponential and the logarithm of a series; squared error: the Cauchy product.

So D^j ℓ[v, …, v] = j!·c_j, exactly (no finite differences), at the cost of about one forward pass per nonzero
coefficient and direction: c_0 is shared by every direction, and a coefficient that is identically zero (a
piecewise-linear network has no t² term after its first layer) is never computed. A series is a list
[c_0, c_1, ..., c_J]: c_0 of shape [m, ...] (the same for every direction), c_j of shape [U, m, ...] for U
directions, or None where it is zero.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .models import Conv2d

Series = list[torch.Tensor | None]

PARAMETRIC = (nn.Linear, nn.Conv2d, Conv2d)  # hesslib's Conv2d computes nn.Conv2d's map in another layout
SMOOTH = (nn.Tanh, nn.GELU)  # activations composed by Faà di Bruno


def supported(modules: Sequence[nn.Module]) -> bool:
    """Whether :func:`propagate` handles every module: Linear, Conv2d, ReLU, Tanh, exact GELU, MaxPool2d, Flatten."""
    for module in modules:
        kind = type(module)
        if kind in PARAMETRIC or kind in (nn.ReLU, nn.Tanh):
            continue
        if kind is nn.GELU and module.approximate == "none":
            continue
        if kind is nn.Flatten and module.start_dim == 1 and module.end_dim == -1:
            continue
        if isinstance(module, nn.MaxPool2d) and not module.return_indices and not module.ceil_mode:
            continue
        return False
    return True


def _add(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    return b if a is None else a if b is None else a + b


def _mul(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    return None if a is None or b is None else a * b


def _shared_affine(module: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The layer without bias, per direction: x [m, ...] shared, weight [U, *shape] -> [U, m, ...]."""
    U = weight.shape[0]
    if isinstance(module, nn.Linear):
        return torch.einsum("mi,uoi->umo", x, weight)
    out = F.conv2d(x, weight.reshape(U * weight.shape[1], *weight.shape[2:]), None, module.stride, module.padding,
                   module.dilation)  # [m, U * out, H', W']
    return out.reshape(x.shape[0], U, -1, *out.shape[2:]).transpose(0, 1)


def _batched_affine(module: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The layer without bias, direction by direction: x [U, m, ...], weight [U, *shape] -> [U, m, ...]."""
    if isinstance(module, nn.Linear):
        return torch.bmm(x, weight.transpose(1, 2))
    U, m = x.shape[:2]
    grouped = x.transpose(0, 1).reshape(m, U * x.shape[2], *x.shape[3:])  # directions as convolution groups
    out = F.conv2d(grouped, weight.reshape(U * weight.shape[1], *weight.shape[2:]), None, module.stride,
                   module.padding, module.dilation, groups=U)
    return out.reshape(m, U, -1, *out.shape[2:]).transpose(0, 1)


def _plain(module: nn.Module, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The layer at w* on x of any leading shape [..., m, features...]."""
    lead = x.shape[:-3] if isinstance(module, nn.Conv2d) else x.shape[:-1]
    if isinstance(module, nn.Linear):
        return F.linear(x, weight, bias)
    flat = x.reshape(-1, *x.shape[-3:])
    out = F.conv2d(flat, weight, bias, module.stride, module.padding, module.dilation)
    return out.reshape(*lead, *out.shape[1:])


def _affine(module: nn.Module, series: Series, params: dict[str, torch.Tensor],
            deltas: dict[str, torch.Tensor]) -> Series:
    """y_j = W* c_j + W_v c_{j−1} (+ b* at j = 0, + b_v at j = 1)."""
    weight, bias = params["weight"], params.get("bias")
    d_weight, d_bias = deltas["weight"], deltas.get("bias")
    spatial = (1,) * (series[0].dim() - 2)  # a bias broadcasts over the spatial axes of a convolution
    out: Series = [_plain(module, series[0], weight, bias)]
    for j in range(1, len(series)):
        term = None if series[j] is None else _plain(module, series[j], weight, None)
        previous = series[j - 1]
        if previous is not None:
            along = (_shared_affine if j == 1 else _batched_affine)(module, previous, d_weight)
            term = _add(term, along)
        if j == 1 and d_bias is not None:
            term = _add(term, d_bias.reshape(d_bias.shape[0], 1, -1, *spatial))
        out.append(term)
    return out


def _activation_derivatives(module: nn.Module, x: torch.Tensor, order: int) -> tuple[torch.Tensor, list]:
    """g(x) and g', g'', g''', g'''' at x (as many as ``order``) for tanh and the exact GELU."""
    if isinstance(module, nn.Tanh):
        tau = torch.tanh(x)
        g1 = 1 - tau * tau
        derivatives = [g1, -2 * tau * g1, g1 * (6 * tau * tau - 2), tau * g1 * (16 - 24 * tau * tau)]
        return tau, derivatives[:order]
    phi = torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
    Phi = 0.5 * (1 + torch.erf(x / math.sqrt(2)))
    x2 = x * x
    derivatives = [Phi + x * phi, (2 - x2) * phi, (x2 - 4) * x * phi, (7 - x2) * x2 * phi - 4 * phi]
    return x * Phi, derivatives[:order]


def _compose(g0: torch.Tensor, g: list, series: Series) -> Series:
    """The series of g(c_0 + δ(t)) from g's derivatives at c_0 (Faà di Bruno, up to t⁴)."""
    c = series + [None] * (5 - len(series))
    order = len(series) - 1
    g1, g2, g3, g4 = g + [None] * (4 - len(g))
    out: Series = [g0]
    if order >= 1:
        out.append(_mul(g1, c[1]))
    if order >= 2:
        out.append(_sum([_mul(g1, c[2]), None if c[1] is None else g2 * c[1] * c[1] / 2]))
    if order >= 3:
        terms = [_mul(g1, c[3]), _mul(g2, _mul(c[1], c[2])), None if c[1] is None else g3 * c[1] ** 3 / 6]
        out.append(_sum(terms))
    if order >= 4:
        inner = _sum([_mul(c[1], c[3]), None if c[2] is None else c[2] * c[2] / 2])
        terms = [_mul(g1, c[4]), _mul(g2, inner), None if c[1] is None or c[2] is None else g3 * c[1] ** 2 * c[2] / 2,
                 None if c[1] is None else g4 * c[1] ** 4 / 24]
        out.append(_sum(terms))
    return out


def _sum(terms: list) -> torch.Tensor | None:
    total = None
    for term in terms:
        total = _add(total, term)
    return total


def _max_pool(module: nn.Module, series: Series) -> Series:
    """Every coefficient read where c_0 has its maxima (what autograd differentiates through)."""
    pooled, index = F.max_pool2d(series[0], module.kernel_size, module.stride, module.padding, module.dilation,
                                 return_indices=True)
    m, C = index.shape[:2]
    flat_index = index.reshape(m, C, -1)

    def gather(c: torch.Tensor | None) -> torch.Tensor | None:
        if c is None:
            return None
        U = c.shape[0]
        values = c.reshape(U, m, C, -1).gather(3, flat_index.expand(U, -1, -1, -1))
        return values.reshape(U, *pooled.shape)

    return [pooled] + [gather(c) for c in series[1:]]


def propagate(modules: Sequence[tuple[str, nn.Module]], series: Series, params: dict[str, torch.Tensor],
              deltas: dict[str, torch.Tensor]) -> Series:
    """The series of the output of ``modules`` (run in order) given the series of their input.

    Args:
        modules: (name, module) pairs, each :func:`supported`; a parametric one's tensors are
            ``params[f"{name}.weight"]`` (at w*) and ``deltas[f"{name}.weight"]`` ([U, *shape]: its part of each
            direction v), the same for ``bias``.
        series: [c_0 [m, ...], c_1, ..., c_J] with c_j [U, m, ...] or None (zero), J ≤ 4.
        params: the parameters at w* by name.
        deltas: the directions' parameters by name, U of each.

    Returns:
        The output's series, in the same layout.
    """
    for name, module in modules:
        if isinstance(module, PARAMETRIC):
            own = {key: params[f"{name}.{key}"] for key in ("weight", "bias") if f"{name}.{key}" in params}
            own_deltas = {key: deltas[f"{name}.{key}"] for key in ("weight", "bias") if f"{name}.{key}" in deltas}
            series = _affine(module, series, own, own_deltas)
        elif isinstance(module, nn.ReLU):
            mask = (series[0] > 0).to(series[0].dtype)
            series = [torch.relu(series[0])] + [_mul(c, mask) for c in series[1:]]
        elif isinstance(module, SMOOTH):
            g0, g = _activation_derivatives(module, series[0], len(series) - 1)
            series = _compose(g0, g, series)
        elif isinstance(module, nn.MaxPool2d):
            series = _max_pool(module, series)
        else:  # Flatten (start_dim 1): the shared c_0 has one leading axis, the others two
            series = [series[0].flatten(1)] + [None if c is None else c.flatten(2) for c in series[1:]]
    return series


def loss_series(out: Series, y: torch.Tensor, loss: str) -> Series:
    """The series of the per-sample loss ℓ(out(t), y): [ℓ_0 [m], ℓ_1 [U, m], ..., ℓ_J [U, m]] (zeros included).

    Cross-entropy: ℓ = log Σ_i p_i e^{δ_i} + (logsumexp(c_0) − c_0,y) − δ_y with p = softmax(c_0) and
    δ = Σ_{j≥1} c_j t^j; e^{δ} by e_n = (1/n) Σ_{k=1..n} k δ_k e_{n−k}, then log E by
    l_n = E_n − (1/n) Σ_{k=1..n−1} k l_k E_{n−k} (E_0 = 1). Squared error: ℓ = mean_i (c_i(t) − y_i)².
    """
    J = len(out) - 1
    sample = next((c for c in out[1:] if c is not None), None)
    U = 1 if sample is None else sample.shape[0]
    c = [out[0]] + [torch.zeros(U, *out[0].shape, dtype=out[0].dtype, device=out[0].device) if t is None else t
                    for t in out[1:]]
    if loss == "cross_entropy":
        p = torch.softmax(c[0], dim=-1)
        e = [torch.ones_like(c[1]) if J else None]
        E = [None]
        logs = [None]
        for n in range(1, J + 1):
            e.append(sum(k * c[k] * e[n - k] for k in range(1, n + 1)) / n)
            E.append((p * e[n]).sum(-1))
            logs.append(E[n] - sum(k * logs[k] * E[n - k] for k in range(1, n)) / n)
        picked = [t.gather(-1, y.expand(t.shape[:-1]).unsqueeze(-1)).squeeze(-1) for t in c]
        return [F.cross_entropy(c[0], y, reduction="none")] + [logs[n] - picked[n] for n in range(1, J + 1)]
    target = y if y.is_floating_point() else F.one_hot(y, c[0].shape[-1]).to(c[0].dtype)
    c[0] = c[0] - target.reshape(c[0].shape)
    return [(c[0] ** 2).mean(-1)] + [sum(c[k] * c[n - k] for k in range(n + 1)).mean(-1) for n in range(1, J + 1)]
