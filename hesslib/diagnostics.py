"""Why the second-order model of Δ_k fails: measurements that tell the candidate causes apart.

Along w = w* + Pθ the closed forms assume every batch loss ℓ_i is quadratic in θ. Three measurements say where
and why that stops being true:

* :func:`quadratic_slices`: one-dimensional slices L_N(w* + t·p_d) against their second-order model, and the
  radius in t within which the model holds (:meth:`Slices.quadratic_radius`);
* :func:`activation_switches`: the fraction of hidden units whose pre-activation changes sign between w* and
  w* + Pθ (for ReLU, a unit crossing its kink, where the loss is not even twice differentiable);
* :func:`tail_share`: the share of E[(L_{k+1} − L_k)²] carried by the largest draws, to compare the tails of the
  true changes with those of the second-order model on the same θ
  (:func:`~hesslib.estimators.second_order_changes`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from .hessian import Objective, ProjectedCurvature, check_block
from .subspace import subspace_losses

SWITCHING = (nn.ReLU, nn.GELU, nn.Tanh)  # activation modules whose input sign activation_switches compares


@dataclass
class Slices:
    """Full-data losses along each direction p_d of P, with their second-order model.

    Attributes:
        t: the step lengths [S] (θ = t·e_d, in the units of θ).
        losses: L_N(w* + t·p_d) = (1/N) Σ_i ℓ_i(w* + t·p_d), float64 [D, S].
        quadratic: L_N(w*) + t·g_d + ½ t²·h_d with g_d = p_dᵀ∇L_N(w*), h_d = p_dᵀ∇²L_N(w*)p_d, float64 [D, S].
        linear_part: |t·g_d|, float64 [D, S].
        curvature_part: ½ t²·|h_d|, float64 [D, S].
    """

    t: np.ndarray
    losses: np.ndarray
    quadratic: np.ndarray
    linear_part: np.ndarray
    curvature_part: np.ndarray

    @property
    def relative_error(self) -> np.ndarray:
        """|L_N − model| / (|t·g_d| + ½ t²|h_d|), [D, S]: the model's error relative to the size it predicts.

        The denominator is the sum of the model's terms in absolute value, so it vanishes only at t = 0 (NaN there).
        """
        scale = self.linear_part + self.curvature_part
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(scale > 0, np.abs(self.losses - self.quadratic) / scale, np.nan)

    def quadratic_radius(self, rel: float = 0.1) -> np.ndarray:
        """Per direction, the largest r on the grid such that the relative error is ≤ ``rel`` for all |t| ≤ r.

        Args:
            rel: the relative error allowed, > 0.

        Returns:
            float64 [D]; 0 where the smallest nonzero |t| already fails, the largest |t| where none fails.

        Raises:
            ValueError: if ``rel`` is not > 0.
        """
        if not rel > 0:
            raise ValueError(f"rel must be > 0, got {rel!r}")
        error = self.relative_error
        radius = np.abs(self.t)
        order = np.argsort(radius, kind="stable")
        radii = np.zeros(len(error))
        for d in range(len(error)):  # D small: a loop over directions, each a cumulative test over the grid
            ok = np.isnan(error[d, order]) | (error[d, order] <= rel)
            bad = np.flatnonzero(~ok)
            if len(bad) == 0:
                radii[d] = radius[order[-1]]
            else:
                first_bad = radius[order[bad[0]]]
                within = radius[order[: bad[0]]]
                radii[d] = within[within < first_bad].max() if np.any(within < first_bad) else 0.0
        return radii


def quadratic_slices(objective: Objective, P: torch.Tensor, curvature: ProjectedCurvature,
                     t: np.ndarray | torch.Tensor) -> Slices:
    """L_N(w* + t·p_d) for every direction d of P and step t, against the second-order model of L_N.

    All D·S points are one :func:`~hesslib.subspace.subspace_losses` call (θ = t·e_d); the model's terms are the
    batch means of the per-batch ``curvature`` in the same subspace, so L_N is (1/N) Σ_i ℓ_i as in the paper.

    Args:
        objective: the loss, its N batches and w*.
        P: the subspace basis [M, D].
        curvature: :func:`~hesslib.hessian.projected_hessians` of ``objective`` along the same P.
        t: the steps [S], S ≥ 1, finite.

    Returns:
        A :class:`Slices`.

    Raises:
        ValueError: if ``P`` is not [M, D] in the objective's dtype and device, ``curvature`` does not have N
            batches and D directions, or ``t`` is empty or not finite.
    """
    P = check_block(objective, P, "P")
    D = P.shape[1]
    t = torch.as_tensor(t, dtype=torch.float64).reshape(-1)
    if len(t) == 0 or not torch.isfinite(t).all():
        raise ValueError(f"t must be a non-empty array of finite steps, got {t.tolist()}")
    if curvature.grads.shape != (objective.num_batches, D):
        raise ValueError(f"curvature must have {objective.num_batches} batches and {D} directions, got grads of "
                         f"shape {list(curvature.grads.shape)}")
    eye = torch.eye(D, dtype=torch.float64)
    thetas = (eye[:, None, :] * t[None, :, None]).reshape(D * len(t), D)  # row d·S + s: t_s·e_d
    losses = subspace_losses(objective, P, thetas).double().cpu().reshape(D, len(t), -1).mean(-1)
    level = curvature.losses.double().cpu().mean()
    g = curvature.grads.double().cpu().mean(0)
    h = torch.diagonal(curvature.hessians.double().cpu().mean(0))
    linear, curv = g[:, None] * t[None, :], 0.5 * h[:, None] * t[None, :] ** 2
    return Slices(t.numpy(), losses.numpy(), (level + linear + curv).numpy(), linear.abs().numpy(),
                  curv.abs().numpy())


def activation_switches(objective: Objective, P: torch.Tensor, thetas: torch.Tensor) -> tuple[list[str], np.ndarray]:
    """Fraction of hidden units that change sides between w* and w* + Pθ_t, per activation layer.

    For every activation module (ReLU, GELU, Tanh) the sign of its input is compared, sample by sample and unit by
    unit, at w* and at w* + Pθ_t over all n samples; for ReLU a sign change is a unit crossing its kink. One
    whole-data forward pass per θ (each already a large call).

    Args:
        objective: the loss, its data and w*.
        P: the subspace basis [M, D].
        thetas: [T, D], T ≥ 1.

    Returns:
        (names, fractions): the activation modules' names and float64 [T, layers], the fraction of (sample, unit)
        pairs of each layer whose pre-activation sign differs from w*. ``layers`` is 0 for a model without such
        modules.

    Raises:
        ValueError: if ``P`` is not [M, D] in the objective's dtype and device, or ``thetas`` is not [T ≥ 1, D].
    """
    P = check_block(objective, P, "P")
    if thetas.dim() != 2 or thetas.shape[1] != P.shape[1] or len(thetas) < 1:
        raise ValueError(f"thetas must have shape [T, {P.shape[1]}] (T >= 1), got {list(thetas.shape)}")
    thetas = thetas.to(objective.device, objective.dtype)
    modules = [(name, m) for name, m in objective.model.named_modules() if isinstance(m, SWITCHING)]
    signs: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda _m, args, _out, name=name: signs.__setitem__(name, args[0] > 0))
             for name, m in modules]

    def side_of_zero(w: torch.Tensor) -> dict[str, torch.Tensor]:
        params = {**objective.unflatten(w), **dict(objective.model.named_buffers())}
        parts = []
        for part in objective.chunks():
            with torch.no_grad():
                functional_call(objective.model, params, (objective.X[part],))
            parts.append(dict(signs))
        if not parts:  # a rank with no batches (more processes than batches)
            return {name: torch.zeros(0, dtype=torch.bool, device=objective.device) for name, _ in modules}
        return {name: torch.cat([p[name] for p in parts]) for name, _ in modules}

    try:
        base = side_of_zero(objective.params)
        changed = torch.zeros(len(thetas), len(modules), dtype=torch.float64, device=objective.device)
        pairs = torch.tensor([base[name].numel() for name, _ in modules], dtype=torch.float64,
                             device=objective.device)
        for row, theta in enumerate(thetas):
            moved = side_of_zero(objective.params + P @ theta)
            for col, (name, _) in enumerate(modules):
                changed[row, col] = (moved[name] != base[name]).sum()
        fractions = (objective.all_reduce(changed) / objective.all_reduce(pairs)).cpu()  # counts over all ranks
    finally:
        for hook in hooks:
            hook.remove()
    return [name for name, _ in modules], fractions.numpy()


def tail_share(changes: np.ndarray | torch.Tensor, fraction: float = 0.01) -> np.ndarray:
    """Share of the Monte Carlo Δ_k = mean_t d_t² carried by the largest ⌈fraction·T⌉ of the d_t², for every k.

    For Gaussian-like d_t the share of the top 1 % is a few per cent; a share near 1 means Δ_k is decided by a
    handful of draws (heavy tails), and so is its Monte Carlo error.

    Args:
        changes: [T, K] values d_t of L_{k+1} − L_k, e.g. :func:`~hesslib.estimators.loss_changes` of a loss
            matrix or :func:`~hesslib.estimators.second_order_changes` on the same θ; T ≥ 1.
        fraction: the share of draws counted as the tail, in (0, 1].

    Returns:
        float64 [K] in [⌈fraction·T⌉/T, 1] (NaN where every d_t is 0).

    Raises:
        ValueError: if ``changes`` is not [T ≥ 1, K] or ``fraction`` is outside (0, 1].

    Example:
        >>> d = torch.zeros(100, 1); d[0] = 10.0; d[1:] = 1.0
        >>> round(float(tail_share(d, 0.01)[0]), 4)  # 100 of 199
        0.5025
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    d = torch.as_tensor(changes, dtype=torch.float64)
    if d.dim() != 2 or len(d) < 1:
        raise ValueError(f"changes must have shape [T, K] with T >= 1, got {list(d.shape)}")
    squares = (d**2).sort(0, descending=True).values
    top = squares[: math.ceil(fraction * len(d))].sum(0)
    total = squares.sum(0)
    return torch.where(total > 0, top / total, torch.full_like(total, float("nan"))).numpy()

