"""Δ_k = E_θ[(L_{k+1}(w* + Pθ) − L_k(w* + Pθ))²], θ ~ N(0, σ² I_D), for every k = 1..N−1 at once.

* the pieces: :func:`prefix_means` (L_k = (1/k) Σ_{i≤k} ℓ_i) and :func:`loss_changes`
  (L_{k+1} − L_k = (ℓ_{k+1} − L_k)/(k+1)), the one place where either is computed;
* :func:`delta_monte_carlo` / :func:`delta_from_losses`: ground truth from one [T, N] matrix of per-batch losses;
  :func:`order_average`: its exact expectation over all batch orders;
* :func:`delta_theory`: closed forms. ``formula="second_order"`` (the exact Gaussian moments of the
  second-order expansion) and ``"paper_subspace"`` (the paper's Theorem 1 with the eigenvalues of PᵀH_kP) come
  from prefix sums of per-batch projected curvature (:func:`delta_from_curvature`); ``"paper"`` (Theorem 1 as the
  paper defines it, with the top-D eigenvalues of every H_k) from :func:`paper_eigenvalues` and
  :func:`delta_from_eigenvalues`;
* :func:`sufficient_sample_size` and :func:`sample_sizes` (the one home of the last-exceedance rule for K),
  :func:`sample_size_curve`, :func:`settling_envelope`, :func:`first_below`, :func:`moving_average`,
  :func:`rolling_median`, :func:`loglog_slope`, :func:`compare_to_reference`, :func:`fit_against`: reading the curves.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from typing import Literal, get_args

import numpy as np
import torch

from .hessian import (
    HigherDerivatives,
    Objective,
    ProjectedCurvature,
    projected_hessians,
    projected_higher_derivatives,
)
from .operators import check_block
from .progress import progress_bar
from .subspace import subspace_losses

Formula = Literal["paper", "paper_subspace", "second_order", "fourth_order"]
FORMULAS: tuple[str, ...] = get_args(Formula)
CURVATURE_FORMULAS = ("paper_subspace", "second_order")  # those that per-batch projected curvature determines
FORMULA_LABELS: dict[str, str] = {"paper": "paper's formula", "paper_subspace": "paper's formula, fixed subspace",
                                  "second_order": "second-order estimate", "fourth_order": "fourth-order estimate"}
MONTE_CARLO_LABEL = "Monte Carlo"
ORDER_AVERAGE_LABEL = "average over batch orders"
CONTROL_VARIATE_LABEL = "Monte Carlo, control variate"


@dataclass
class DeltaCurve:
    """Δ_k for k = 1..N−1 (``k``, ``delta``), its standard error (zeros for closed forms), and how it was made.

    ``len(curve)`` is the number of points, N − 1. Made by :func:`delta_from_losses` (Monte Carlo),
    :func:`delta_from_curvature` (closed forms), :func:`delta_unperturbed` and the online rule.

    Attributes:
        k: int array [N−1], the number of batches k of each point.
        delta: float array [N−1], Δ_k.
        stderr: float array [N−1], the standard error of Δ_k (0 where the value is exact).
        label: what made it ("Monte Carlo", "paper's formula", "second-order estimate", ...).
        sigma: the σ of θ ~ N(0, σ² I_D) (0 for the unperturbed curve, NaN where σ does not apply).
        meta: further settings (samples, seeds, D, directions, formula, ...).
    """

    k: np.ndarray
    delta: np.ndarray
    stderr: np.ndarray
    label: str
    sigma: float
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.k)

    @property
    def num_batches(self) -> int:
        """N, the number of batches the curve was made from (its last k is N − 1)."""
        return int(self.k[-1]) + 1 if len(self.k) else 1


def _check_sigma(sigma: float) -> float:
    if not (isinstance(sigma, int | float) and np.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}")
    return float(sigma)


def _check_formula(formula: str) -> str:
    if formula not in FORMULAS:
        raise ValueError(f"formula must be one of {FORMULAS}, got {formula!r}")
    return formula


def _check_P(objective: Objective, P: torch.Tensor) -> torch.Tensor:
    P = check_block(objective, P, "P")
    if objective.num_batches < 2:
        raise ValueError(f"need at least 2 batches to form Δ_k, got num_batches={objective.num_batches}")
    return P


def gaussian_thetas(D: int, sigma: float, samples: int, *, seed: int = 0, antithetic: bool = False) -> torch.Tensor:
    """Draw θ_1..θ_T ~ N(0, σ² I_D), reproducibly from ``seed``.

    Args:
        D: the subspace dimension, ≥ 1.
        sigma: σ, the standard deviation of every coordinate (not checked here; > 0 is the intended use).
        samples: T, the number of draws, ≥ 0 (even with ``antithetic``).
        seed: seeds a fresh CPU generator (the global torch generator is untouched).
        antithetic: draw T/2 θ and return them followed by their negatives (antithetic pairs (θ_t, −θ_t)).

    Returns:
        θ as a float64 CPU tensor [T, D], one draw per row.

    Example:
        >>> gaussian_thetas(3, 0.5, 4, seed=1).shape
        torch.Size([4, 3])
        >>> bool(torch.equal(gaussian_thetas(3, 0.5, 4, seed=1), gaussian_thetas(3, 0.5, 4, seed=1)))
        True
    """
    generator = torch.Generator().manual_seed(seed)
    if antithetic:
        if samples % 2:
            raise ValueError(f"antithetic draws come in pairs: samples must be even, got {samples}")
        half = sigma * torch.randn(samples // 2, D, generator=generator, dtype=torch.float64)
        return torch.cat([half, -half])
    return sigma * torch.randn(samples, D, generator=generator, dtype=torch.float64)


def _float64(values: np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
    """``values`` as a float64 CPU tensor with at least one entry along its last axis."""
    t = values.detach() if isinstance(values, torch.Tensor) else torch.as_tensor(np.asarray(values))
    if t.dim() == 0 or t.shape[-1] == 0:
        raise ValueError(f"{name} must have at least one batch along its last axis, got shape {list(t.shape)}")
    return t.to("cpu", torch.float64)


def _prefix_means(losses: torch.Tensor) -> torch.Tensor:
    """L_k = (1/k) Σ_{i≤k} ℓ_i along the last axis of a float64 tensor."""
    return losses.cumsum(-1) / torch.arange(1, losses.shape[-1] + 1, dtype=torch.float64)


def prefix_means(values: np.ndarray | torch.Tensor) -> np.ndarray:
    """The prefix means L_k = (1/k) Σ_{i≤k} ℓ_i for k = 1..N along the last axis.

    Args:
        values: per-batch losses ℓ_i [..., N] with N ≥ 1, an array, tensor or list of real numbers (e.g.
            ℓ_i(w*) from ``Objective.batch_losses()``, or a [T, N] loss matrix).

    Returns:
        A float64 numpy array [..., N] whose index ``k − 1`` holds L_k.

    Raises:
        ValueError: if ``values`` is a scalar or its last axis is empty.

    Example:
        >>> prefix_means([1.0, 3.0, 2.0]).tolist()
        [1.0, 2.0, 2.0]
    """
    return _prefix_means(_float64(values, "values")).numpy()


def loss_changes(batch_losses: np.ndarray | torch.Tensor) -> torch.Tensor:
    """The changes L_{k+1} − L_k = (ℓ_{k+1} − L_k)/(k+1) for k = 1..N−1 along the last axis.

    The telescoped form avoids differencing two nearly equal prefix means.

    Args:
        batch_losses: per-batch losses ℓ_i [..., N] with N ≥ 2 (e.g. ℓ_i(w* + Pθ_t) as [T, N]), an array or
            tensor of real numbers.

    Returns:
        A float64 CPU tensor [..., N − 1] whose index ``k − 1`` holds L_{k+1} − L_k.

    Raises:
        ValueError: if ``batch_losses`` is a scalar or has fewer than 2 batches along its last axis.

    Example:
        >>> loss_changes(torch.tensor([1.0, 3.0, 2.0])).tolist()
        [1.0, 0.0]
    """
    losses = _float64(batch_losses, "batch_losses")
    if losses.shape[-1] < 2:
        raise ValueError(f"need at least 2 batches to form L_(k+1) - L_k, got {losses.shape[-1]}")
    k = torch.arange(1, losses.shape[-1], dtype=torch.float64)
    return (losses[..., 1:] - _prefix_means(losses)[..., :-1]) / (k + 1)


def delta_from_losses(batch_losses: np.ndarray | torch.Tensor, *, sigma: float = float("nan"),
                      meta: dict | None = None, antithetic: bool = False) -> DeltaCurve:
    """Monte Carlo Δ_k and its standard error from per-batch losses ℓ_i(w* + Pθ_t), a [T, N] matrix.

    Δ_k = (1/T) Σ_t (L_{k+1} − L_k)²(θ_t) with :func:`loss_changes` along each row (one batch order for every θ,
    the SAME θ for L_k and L_{k+1}); stderr = std_t / √T (NaN for T = 1). ``sigma`` and ``meta`` describe how
    the θ were drawn and are stored on the curve.

    Args:
        batch_losses: [T, N] with T ≥ 1 draws and N ≥ 2 batches, an array or tensor of real numbers.
        sigma: the σ the θ_t were drawn with (NaN: unknown); stored, not used.
        meta: extra settings stored in ``curve.meta`` after ``{"samples": T}``.
        antithetic: the rows are antithetic pairs (θ_t, −θ_t), first half then second half (T even); each pair
            is one sample of the standard error.

    Returns:
        A :class:`DeltaCurve` labelled "Monte Carlo" with k = 1..N−1 and float64 ``delta`` and ``stderr``.

    Raises:
        ValueError: if ``batch_losses`` is not 2-D or has fewer than 2 batches.

    Example:
        >>> curve = delta_from_losses(np.array([[1.0, 3.0, 2.0], [1.0, 1.0, 1.0]]))
        >>> curve.k.tolist(), curve.delta.tolist(), curve.stderr.tolist()
        ([1, 2], [0.5, 0.0], [0.5, 0.0])
    """
    squared = loss_changes(batch_losses) ** 2
    if squared.dim() != 2:
        raise ValueError(f"batch_losses must be a [T, N] matrix, got shape {list(squared.shape[:-1]) + ['N']}")
    if antithetic:  # pairs are one sample each: average the squared changes of θ and −θ first
        if squared.shape[0] % 2:
            raise ValueError(f"antithetic rows come in pairs: T must be even, got {squared.shape[0]}")
        half = squared.shape[0] // 2
        squared = 0.5 * (squared[:half] + squared[half:])
    T = squared.shape[0]
    delta = squared.mean(0)
    stderr = squared.std(0, correction=1) / np.sqrt(T) if T > 1 else torch.full_like(delta, float("nan"))
    k = np.arange(1, squared.shape[1] + 1)
    return DeltaCurve(k, delta.numpy(), stderr.numpy(), MONTE_CARLO_LABEL, float(sigma),
                      {"samples": len(batch_losses), **({"antithetic": True} if antithetic else {}), **(meta or {})})


def order_average(batch_losses: np.ndarray | torch.Tensor, *, sigma: float = float("nan"),
                  meta: dict | None = None) -> DeltaCurve:
    """E_π[Δ_k], Monte Carlo Δ_k averaged exactly over all N! batch orders π, from a [T, N] loss matrix.

    For one θ, drawing the batches in a uniformly random order is sampling ℓ_1..ℓ_N without replacement; with
    s² = (1/N) Σ_i (ℓ_i − ℓ̄)² the between-batch variance, Var ℓ_i = s² and Cov(ℓ_i, ℓ_j) = −s²/(N − 1), so
    L_{k+1} − L_k = (ℓ_{k+1} − L_k)/(k + 1) has mean 0 and E_π[(ℓ_{k+1} − L_k)²] = s² N (k + 1) / (k (N − 1)):

        E_π[Δ_k] = N/(N − 1) · V̄ / (k (k + 1)),   V̄ = (1/T) Σ_t s²(θ_t).

    So for a random order Δ_k·k(k+1) is flat in k; what a measured curve adds is the order actually used.
    stderr = std_t / √T of the per-θ terms (NaN for T = 1).

    Args:
        batch_losses: [T, N] per-batch losses ℓ_i(w* + Pθ_t), T ≥ 1 draws, N ≥ 2 batches.
        sigma: the σ the θ_t were drawn with (stored, not used).
        meta: extra settings stored in ``curve.meta`` after ``{"samples": T}``.

    Returns:
        A :class:`DeltaCurve` labelled "average over batch orders", k = 1..N−1, float64 ``delta`` and
        ``stderr``.

    Raises:
        ValueError: if ``batch_losses`` is not a [T, N] matrix with N ≥ 2.

    Example:
        Two batches with losses 0 and 2: either order gives (L_2 − L_1)² = 1.

        >>> order_average(np.array([[0.0, 2.0]])).delta.tolist()
        [1.0]
    """
    losses = _float64(batch_losses, "batch_losses")
    if losses.dim() != 2 or losses.shape[1] < 2:
        raise ValueError(f"batch_losses must be a [T, N] matrix with N >= 2, got shape {list(losses.shape)}")
    T, N = losses.shape
    variance = losses.var(1, correction=0)  # s²(θ_t), the between-batch variance
    k = torch.arange(1, N, dtype=torch.float64)
    terms = N / (N - 1) * variance[:, None] / (k * (k + 1))  # [T, N − 1]
    delta = terms.mean(0)
    stderr = terms.std(0, correction=1) / np.sqrt(T) if T > 1 else torch.full_like(delta, float("nan"))
    return DeltaCurve(k.long().numpy(), delta.numpy(), stderr.numpy(), ORDER_AVERAGE_LABEL, float(sigma),
                      {"samples": T, **(meta or {})})


def delta_control_variate(batch_losses: np.ndarray | torch.Tensor, thetas: torch.Tensor,
                          curvature: ProjectedCurvature, *, sigma: float, antithetic: bool = False,
                          meta: dict | None = None) -> DeltaCurve:
    """Monte Carlo Δ_k with the second-order model as a control variate: unbiased, lower variance.

    With d_t = (L_{k+1} − L_k)(θ_t) from the loss matrix and q_t = a_k + c_kᵀθ_t + ½ θ_tᵀB_kθ_t
    (:func:`second_order_terms`), whose Gaussian second moment E[q²] is the second-order estimate
    (:func:`delta_from_curvature`), Δ̂_k is the mean of the residuals
    r_t = d_t² − β_k (q_t² − E[q²]); stderr = std_t(r_t)/√T. β_k is the regression coefficient of d² on q², fitted
    on the other half of the draws (cross-fitting: even and odd draws), so the estimate is exactly unbiased for any
    loss, exact (zero variance) where the loss is quadratic in θ (β_k = 1), and hardly worse than plain Monte
    Carlo where the model explains nothing (β_k ≈ 0); β_k = 1 for T < 4. With ``antithetic``
    the rows come in pairs (θ_t, −θ_t) (first half, then second half, as :func:`gaussian_thetas` with
    ``antithetic=True`` makes them) and each pair is one sample.

    Args:
        batch_losses: [T, N] per-batch losses ℓ_i(w* + Pθ_t), N ≥ 2.
        thetas: the [T, D] θ_t of those rows.
        curvature: per-batch terms at w* in the same subspace P (:func:`~hesslib.hessian.projected_hessians`).
        sigma: the σ the θ_t were drawn with, > 0.
        antithetic: the rows are antithetic pairs (T even).
        meta: extra settings stored in ``curve.meta``.

    Returns:
        A :class:`DeltaCurve` labelled "Monte Carlo, control variate", k = 1..N−1.

    Raises:
        ValueError: if the shapes disagree (T, N, D), T is odd with ``antithetic``, or ``sigma`` is not > 0.
    """
    sigma = _check_sigma(sigma)
    d = loss_changes(batch_losses)
    a, c, B = second_order_terms(curvature)
    thetas = _float64(thetas, "thetas")
    if d.dim() != 2 or thetas.dim() != 2 or len(thetas) != len(d) or d.shape[1] != len(a) \
            or thetas.shape[1] != c.shape[1]:
        raise ValueError(f"batch_losses [T, N], thetas [T, D] and curvature (N batches, D directions) must agree, "
                         f"got {list(d.shape[:1]) + [d.shape[-1] + 1]}, {list(thetas.shape)}, N = {len(a) + 1}, "
                         f"D = {c.shape[1]}")
    q = second_order_changes(curvature, thetas)  # [T, N − 1]
    exact = torch.from_numpy(delta_from_curvature(curvature, sigma, "second_order").delta)
    u, v = d**2, q**2 - exact  # E[v] = 0 exactly
    if antithetic:
        if len(u) % 2:
            raise ValueError(f"antithetic rows come in pairs: T must be even, got {len(u)}")
        half = len(u) // 2
        u, v = 0.5 * (u[:half] + u[half:]), 0.5 * (v[:half] + v[half:])
    residual = u - v
    if len(u) >= 4:  # β_k fitted on the other fold (cross-fitting): unbiased, and never much worse than plain
        fold = torch.arange(len(u)) % 2
        for f in (0, 1):
            other = fold != f
            uo, vo = u[other] - u[other].mean(0), v[other] - v[other].mean(0)
            beta = torch.where((vo**2).sum(0) > 0, (uo * vo).sum(0) / (vo**2).sum(0), torch.ones(u.shape[1]))
            residual[fold == f] = u[fold == f] - beta * v[fold == f]
    T = len(residual)
    delta = residual.mean(0).numpy()
    stderr = (residual.std(0, correction=1) / np.sqrt(T)).numpy() if T > 1 else np.full(len(exact), np.nan)
    return DeltaCurve(np.arange(1, len(exact) + 1), delta, stderr, CONTROL_VARIATE_LABEL, sigma,
                      {"samples": len(d), "antithetic": antithetic, **(meta or {})})


def delta_monte_carlo(
    objective: Objective,
    P: torch.Tensor,
    *,
    sigma: float,
    samples: int,
    seed: int = 0,
    control_variate: bool = False,
    antithetic: bool = False,
    progress: bool = False,
) -> DeltaCurve:
    """Monte Carlo Δ_k = E_θ[(L_{k+1}(w* + Pθ) − L_k(w* + Pθ))²], θ ~ N(0, σ² I_D), for k = 1..N−1.

    Draws T = ``samples`` θ with :func:`gaussian_thetas`, evaluates ONE [T, N] loss matrix with
    :func:`~hesslib.subspace.subspace_losses` (all D columns of P used) and reads it with
    :func:`delta_from_losses`, or with ``control_variate`` with :func:`delta_control_variate` (one more pass of
    :func:`~hesslib.hessian.projected_hessians`, about D products' worth, for an unbiased estimate whose variance
    is that of the part of (L_{k+1} − L_k)² the second-order model does not explain).

    Args:
        objective: the loss, its N ≥ 2 batches and w*.
        P: the subspace basis [M, D], D ≥ 1, in the objective's dtype on its device.
        sigma: σ, a finite number > 0.
        samples: T, an int ≥ 1 (T = 1 gives NaN standard errors).
        seed: seeds the draw of θ.
        control_variate: subtract the second-order model (:func:`delta_control_variate`).
        antithetic: draw θ in antithetic pairs (θ, −θ); ``samples`` must then be even.
        progress: show a progress bar.

    Returns:
        A :class:`DeltaCurve` labelled "Monte Carlo" (or "Monte Carlo, control variate"), with ``meta`` holding
        ``samples``, ``seed`` and ``D``.

    Raises:
        ValueError: if ``sigma`` is not a finite number > 0, ``samples`` is not an int ≥ 1 (even with
            ``antithetic``), ``P`` is not [M, D] in the objective's dtype and device, or the objective has fewer
            than 2 batches.
    """
    sigma = _check_sigma(sigma)
    if not isinstance(samples, int) or samples < 1 or (antithetic and samples % 2):
        raise ValueError(f"samples must be an integer >= 1 (even with antithetic=True), got {samples!r}")
    P = _check_P(objective, P)
    thetas = gaussian_thetas(P.shape[1], sigma, samples, seed=seed, antithetic=antithetic)
    losses = subspace_losses(objective, P, thetas, progress=progress)
    meta = {"seed": seed, "D": P.shape[1]}
    if control_variate:
        return delta_control_variate(losses, thetas, projected_hessians(objective, P), sigma=sigma,
                                     antithetic=antithetic, meta=meta)
    return delta_from_losses(losses, sigma=sigma, meta=meta, antithetic=antithetic)


def second_order_terms(curvature: ProjectedCurvature) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The second-order model L_{k+1} − L_k ≈ a_k + c_kᵀθ + ½ θᵀB_kθ in the subspace, for k = 1..N−1.

    a_k = L_{k+1}(w*) − L_k(w*), c_k = Pᵀ(∇L_{k+1} − ∇L_k)(w*), B_k = Pᵀ(H_{k+1} − H_k)(w*)P, all from prefix
    means of the per-batch terms (float64, CPU).

    Args:
        curvature: per-batch terms from :func:`~hesslib.hessian.projected_hessians`, N ≥ 2 batches.

    Returns:
        (a [N−1], c [N−1, D], B [N−1, D, D]).
    """
    losses, grads, hessians = (t.double().cpu() for t in (curvature.losses, curvature.grads, curvature.hessians))
    counts = torch.arange(1, len(grads) + 1, dtype=torch.float64)
    G = grads.cumsum(0) / counts[:, None]
    H = hessians.cumsum(0) / counts[:, None, None]
    return loss_changes(losses), G[1:] - G[:-1], H[1:] - H[:-1]


def second_order_changes(curvature: ProjectedCurvature, thetas: torch.Tensor) -> torch.Tensor:
    """The second-order model q_t = a_k + c_kᵀθ_t + ½ θ_tᵀB_kθ_t of (L_{k+1} − L_k)(θ_t) (:func:`second_order_terms`).

    Args:
        curvature: per-batch terms from :func:`~hesslib.hessian.projected_hessians`, N ≥ 2 batches, D directions.
        thetas: [T, D].

    Returns:
        float64 [T, N − 1] on the CPU.

    Raises:
        ValueError: if ``thetas`` is not [T, D] for the curvature's D.
    """
    a, c, B = second_order_terms(curvature)
    thetas = _float64(thetas, "thetas")
    if thetas.dim() != 2 or thetas.shape[1] != c.shape[1]:
        raise ValueError(f"thetas must have shape [T, {c.shape[1]}] (D = the curvature's directions), "
                         f"got {list(thetas.shape)}")
    return a + thetas @ c.T + 0.5 * torch.einsum("td,kde,te->tk", thetas, B, thetas)


def delta_from_curvature(curvature: ProjectedCurvature, sigma: float,
                         formula: Literal["paper_subspace", "second_order"]) -> DeltaCurve:
    """Closed-form Δ_k, k = 1..N−1, from per-batch terms, via prefix means L_k, Pᵀ∇L_k, PᵀH_kP.

    H_k = (1/k) Σ_{i≤k} ∇²ℓ_i(w*), and likewise for L_k and ∇L_k; all k come from one cumulative sum.

    ``"second_order"``: with a_k = L_{k+1} − L_k, c_k = Pᵀ(∇L_{k+1} − ∇L_k), B_k = Pᵀ(H_{k+1} − H_k)P (full D×D),
        Δ_k ≈ a_k² + σ²‖c_k‖² + a_k σ² tr B_k + σ⁴/4 (2 tr B_k² + (tr B_k)²), exact for a quadratic loss.
    ``"paper_subspace"`` (Theorem 1 inside the fixed subspace): with λ_k the eigenvalues of PᵀH_kP (the
        Rayleigh–Ritz estimates of the top-D eigenvalues of H_k in span P), sorted descending, Δλ = λ_{k+1} − λ_k:
        Δ_k ≈ σ⁴/4 (2 Σ_d Δλ_d² + (Σ_d Δλ_d)²). The paper's own definition, with the top-D eigenvalues of every
        H_k, is :func:`delta_from_eigenvalues` (``formula="paper"`` of :func:`delta_theory`).

    Args:
        curvature: per-batch terms from :func:`~hesslib.hessian.projected_hessians`, N ≥ 2 batches, any dtype
            and device (computed in float64 on the CPU).
        sigma: σ, a finite number > 0.
        formula: ``"second_order"`` or ``"paper_subspace"``.

    Returns:
        A :class:`DeltaCurve` with k = 1..N−1, float64 ``delta``, zero ``stderr``, the formula's label, and
        ``meta`` holding ``formula`` and ``D``.

    Raises:
        ValueError: if ``sigma`` is not a finite number > 0, ``formula`` is not one of the two, or N < 2.

    Example:
        With D = 1, a constant loss and gradient, both formulas give 3σ⁴/4 (H_{k+1} − H_k)²:

        >>> c = ProjectedCurvature(torch.ones(3), torch.zeros(3, 1), torch.tensor([[[2.0]], [[0.0]], [[1.0]]]))
        >>> delta_from_curvature(c, 1.0, "second_order").delta.tolist()
        [0.75, 0.0]
        >>> delta_from_curvature(c, 1.0, "paper_subspace").delta.tolist()
        [0.75, 0.0]
    """
    sigma = _check_sigma(sigma)
    if formula not in CURVATURE_FORMULAS:
        raise ValueError(f"formula must be one of {CURVATURE_FORMULAS} (the paper's own formula needs the top-D "
                         f"eigenvalues of every H_k: delta_from_eigenvalues), got {formula!r}")
    losses, grads, hessians = (t.double().cpu() for t in (curvature.losses, curvature.grads, curvature.hessians))
    N, D = grads.shape
    if N < 2:
        raise ValueError(f"need at least 2 batches to form Δ_k, got {N}")
    counts = torch.arange(1, N + 1, dtype=torch.float64)
    H = hessians.cumsum(0) / counts[:, None, None]  # PᵀH_kP
    if formula == "paper_subspace":
        lam = torch.linalg.eigvalsh(0.5 * (H + H.transpose(1, 2))).flip(-1)
        dlam = lam[1:] - lam[:-1]
        delta = sigma**4 / 4 * (2 * (dlam**2).sum(1) + dlam.sum(1) ** 2)
    else:
        a, c, B = second_order_terms(curvature)
        trB = B.diagonal(dim1=1, dim2=2).sum(1)
        trB2 = (B * B.transpose(1, 2)).sum((1, 2))
        delta = a**2 + sigma**2 * (c**2).sum(1) + a * sigma**2 * trB + sigma**4 / 4 * (2 * trB2 + trB**2)
    return DeltaCurve(np.arange(1, N), delta.numpy(), np.zeros(N - 1), FORMULA_LABELS[formula], sigma,
                      {"formula": formula, "D": D})


def delta_fourth_order(curvature: ProjectedCurvature, higher: HigherDerivatives, sigma: float) -> DeltaCurve:
    """Δ_k exact to σ⁴: the second-order estimate plus every other σ⁴ term of E[(L_{k+1} − L_k)²].

    Expanding g_k(θ) = (L_{k+1} − L_k)(w* + Pθ) = a_k + c_kᵀθ + ½θᵀB_kθ + (1/6)T_k[θ³] + (1/24)Q_k[θ⁴] + O(θ⁵), the
    Gaussian moments add to the second-order estimate two σ⁴ terms it lacks: 2E[(c_kᵀθ)(1/6)T_k[θ³]] = σ⁴ c_k·t_k
    and 2E[a_k (1/24)Q_k[θ⁴]] = σ⁴ a_k s_k / 4, with t_k,a = Σ_b T_k,abb and s_k = Σ_{a,b} Q_k,aabb. So

        Δ_k ≈ a_k² + σ²‖c_k‖² + a_k σ² tr B_k + σ⁴ (¼(2 tr B_k² + (tr B_k)²) + c_k·t_k + a_k s_k / 4),

    with an error O(σ⁶) where the second-order estimate's is O(σ⁴). t_k and s_k are prefix-mean differences of the
    per-batch terms of :func:`~hesslib.hessian.projected_higher_derivatives`, like a_k, c_k, B_k.

    Args:
        curvature: per-batch terms from :func:`~hesslib.hessian.projected_hessians`, N ≥ 2 batches.
        higher: per-batch third and fourth derivatives in the same subspace.
        sigma: σ, a finite number > 0.

    Returns:
        A :class:`DeltaCurve` labelled "fourth-order estimate", k = 1..N−1, zero ``stderr``.

    Raises:
        ValueError: if ``sigma`` is not > 0, or ``curvature`` and ``higher`` disagree in N or D.
    """
    sigma = _check_sigma(sigma)
    second = delta_from_curvature(curvature, sigma, "second_order")
    third, fourth = higher.third.double().cpu(), higher.fourth.double().cpu()
    N, D = curvature.grads.shape
    if third.shape != (N, D) or fourth.shape != (N,):
        raise ValueError(f"higher derivatives must be third [N, D] = [{N}, {D}] and fourth [{N}], got "
                         f"{list(third.shape)} and {list(fourth.shape)}")
    a, c, _ = second_order_terms(curvature)
    counts = torch.arange(1, N + 1, dtype=torch.float64)
    T_mean, S_mean = third.cumsum(0) / counts[:, None], fourth.cumsum(0) / counts
    t, s_k = T_mean[1:] - T_mean[:-1], S_mean[1:] - S_mean[:-1]
    delta = second.delta + (sigma**4 * ((c * t).sum(1) + a * s_k / 4)).numpy()
    return DeltaCurve(second.k, delta, np.zeros(N - 1), FORMULA_LABELS["fourth_order"], sigma,
                      {"formula": "fourth_order", "D": D})


EIGENVALUE_TOL = 1e-3  # relative residual of solves whose eigenvalues alone are used (see paper_eigenvalues)


def paper_eigenvalues(objective: Objective, D: int, *, tol: float = EIGENVALUE_TOL, init: torch.Tensor | None = None,
                      progress: bool = False) -> tuple[np.ndarray, float]:
    """λ^(d)_k, the top-D eigenvalues of H_k = ∇²L_k(w*) for every k = 1..N, as the paper's Theorem 1 uses them.

    H_k = (1/k) Σ_{i≤k} h_i is the Hessian of the objective restricted to its first k batches (:meth:`Objective.prefix
    <hesslib.hessian.Objective.prefix>`), h_i that of batch i alone (:meth:`Objective.batch
    <hesslib.hessian.Objective.batch>`). All N solves share one basis whose products are summed batch by batch
    (:func:`~hesslib.eigen.running_mean_eigenpairs`), each to relative residual ``tol``, starting from ``init``
    for k = 1. The original code recomputed them per k with power iteration.

    Only eigenvalues are used, and a Ritz value with residual r = Hv − λv is within ‖r‖²/δ of an eigenvalue
    (Kato–Temple, δ the gap to the rest of the spectrum), so the default ``tol`` = 1e-3 (:data:`EIGENVALUE_TOL`)
    gives eigenvalues as accurate as float32 products allow: on the paper's MLP all N·D of them are within 6e-6
    (relative) of solves to 1e-4, with 581 instead of 939 full-data products.

    Args:
        objective: the loss over all N ≥ 2 batches, at w*.
        D: how many eigenvalues per k, an int in [1, M − 1].
        tol: the relative residual of every solve, > 0.
        init: optional starting vectors [M, j] for k = 1 (e.g. the top eigenvectors of H_N).
        progress: show a progress bar over k.

    Returns:
        (eigenvalues, hvps): a float64 array [N, D] whose row k − 1 holds λ^(1)_k ≥ … ≥ λ^(D)_k, and the cost of
        the N solves in full-data Hessian-vector products (a product with one batch counts 1/N, with H_k k/N).

    Raises:
        ValueError: if the objective has fewer than 2 batches, or as :func:`~hesslib.eigen.running_mean_eigenpairs`.

    Warns:
        RuntimeWarning: for each H_k that does not reach ``tol`` within the solver's budget (its best estimates
            are used).
    """
    from .eigen import running_mean_eigenpairs

    N = objective.num_batches
    if N < 2:
        raise ValueError(f"need at least 2 batches to form Δ_k, got num_batches={N}")
    solves = running_mean_eigenpairs(objective.batch, objective.prefix, N, D, tol=tol, init=init)
    eigenvalues, units = np.zeros((N, D)), 0
    bar = progress_bar(total=N, desc="top eigenvalues of every H_k", unit="k", enabled=progress)
    for k, result in enumerate(solves, start=1):
        if not result.converged:
            warnings.warn(f"the top-{D} eigenpairs of H_{k} did not reach tol={tol:g} (worst relative residual "
                          f"{result.residuals.max().item():.2e}); its best estimates are used", RuntimeWarning,
                          stacklevel=2)
        eigenvalues[k - 1] = result.eigenvalues.double().cpu().numpy()
        units += result.num_hvps
        bar.update(1)
    bar.close()
    return eigenvalues, units / N


def delta_from_eigenvalues(eigenvalues: np.ndarray, sigma: float) -> DeltaCurve:
    """The paper's Theorem 1 from the top-D eigenvalues of every H_k (:func:`paper_eigenvalues`).

    Δ_k ≈ σ⁴/4 (2 Σ_d (λ^(d)_{k+1} − λ^(d)_k)² + (Σ_d (λ^(d)_{k+1} − λ^(d)_k))²), k = 1..N−1. It assumes that w*
    minimises every L_k, that L_{k+1}(w*) = L_k(w*) and that the eigenvectors do not move with k; the paper calls
    it an upper bound, without proof.

    Args:
        eigenvalues: [N, D], row k − 1 the top-D eigenvalues of H_k in descending order; N ≥ 2.
        sigma: σ, a finite number > 0.

    Returns:
        A :class:`DeltaCurve` with k = 1..N−1, zero ``stderr``, label "paper's formula", ``meta["formula"] =
        "paper"``.

    Raises:
        ValueError: if ``sigma`` is not a finite number > 0 or ``eigenvalues`` is not [N, D] with N ≥ 2.

    Example:
        >>> delta_from_eigenvalues(np.array([[2.0], [1.0], [1.0]]), 1.0).delta.tolist()
        [0.75, 0.0]
    """
    sigma = _check_sigma(sigma)
    lam = np.asarray(eigenvalues, dtype=np.float64)
    if lam.ndim != 2 or lam.shape[0] < 2:
        raise ValueError(f"eigenvalues must be [N, D] with N >= 2, got shape {list(lam.shape)}")
    dlam = np.diff(lam, axis=0)
    delta = sigma**4 / 4 * (2 * (dlam**2).sum(1) + dlam.sum(1) ** 2)
    return DeltaCurve(np.arange(1, lam.shape[0]), delta, np.zeros(len(delta)), FORMULA_LABELS["paper"], sigma,
                      {"formula": "paper", "D": lam.shape[1]})


def delta_theory(
    objective: Objective,
    P: torch.Tensor,
    *,
    sigma: float,
    formula: Formula = "second_order",
    curvature: ProjectedCurvature | None = None,
    eigenvalues: np.ndarray | None = None,
) -> DeltaCurve:
    """Closed-form Δ_k for every k.

    ``"second_order"`` and ``"paper_subspace"`` come from ONE pass of :func:`projected_hessians` over the data
    (:func:`delta_from_curvature`); ``"paper"`` needs the top-D eigenvalues of every H_k (D = P's columns), N
    eigen-solves sharing one basis (:func:`paper_eigenvalues`, started from P), then :func:`delta_from_eigenvalues`.

    Args:
        objective: the loss, its N ≥ 2 batches and w*.
        P: the subspace basis [M, D], D ≥ 1, in the objective's dtype on its device.
        sigma: σ of θ ~ N(0, σ² I_D), a finite number > 0.
        formula: ``"second_order"`` (default), ``"paper_subspace"``, ``"paper"`` or ``"fourth_order"``
            (:func:`delta_fourth_order`; adds one pass of :func:`~hesslib.hessian.projected_higher_derivatives`).
        curvature: reuse these per-batch terms instead of computing them; they must come from this objective
            and P (not checked; P is still validated).
        eigenvalues: for ``"paper"``, reuse these [N, D] eigenvalues instead of solving for them.

    Returns:
        A :class:`DeltaCurve` with k = 1..N−1 and zero ``stderr``.

    Raises:
        ValueError: if ``sigma`` is not a finite number > 0, ``formula`` is unknown, ``P`` is not [M, D] in
            the objective's dtype and device, or the objective has fewer than 2 batches.
    """
    sigma = _check_sigma(sigma)
    _check_formula(formula)
    P = _check_P(objective, P)
    if formula == "paper":
        if eigenvalues is None:
            eigenvalues, _ = paper_eigenvalues(objective, P.shape[1], init=P)
        return delta_from_eigenvalues(eigenvalues, sigma)
    curvature = projected_hessians(objective, P) if curvature is None else curvature
    if formula == "fourth_order":
        return delta_fourth_order(curvature, projected_higher_derivatives(objective, P), sigma)
    return delta_from_curvature(curvature, sigma, formula)


def _curve_and_tol(curve: DeltaCurve | np.ndarray, tol: float) -> tuple[np.ndarray, np.ndarray]:
    """(k, Δ) of a curve (a bare array counts k from 1), after checking tol > 0."""
    if not (isinstance(tol, int | float) and tol > 0):
        raise ValueError(f"tol must be a number > 0, got {tol!r}")
    if isinstance(curve, DeltaCurve):
        return np.asarray(curve.k), np.asarray(curve.delta, dtype=float)
    delta = np.asarray(curve, dtype=float)
    return np.arange(1, len(delta) + 1), delta


def sufficient_sample_size(curve: DeltaCurve | np.ndarray, tol: float) -> int | None:
    """K = inf{k : Δ_{k'} < tol for all k' ≥ k}: the k after the LAST exceedance (a NaN counts as one).

    Only the k the curve covers count (k' ≤ N − 1).

    Args:
        curve: a :class:`DeltaCurve`, or a bare array of Δ_k whose first entry is k = 1.
        tol: the tolerance Δ, a number > 0.

    Returns:
        K as an int, or None when the last Δ is not below ``tol`` or the curve is empty (the curve never
        settles; see :func:`format_K`).

    Raises:
        ValueError: if ``tol`` is not a number > 0.

    Example:
        >>> sufficient_sample_size(np.array([0.5, 0.05, 0.2, 0.04, 0.03]), 0.1)
        4
    """
    k, delta = _curve_and_tol(curve, tol)
    if len(delta) == 0:
        return None
    K = sample_sizes(delta[None], tol, k=k)[0]
    return None if np.isnan(K) else int(K)


def sample_sizes(deltas: np.ndarray, tol: float, *, k: np.ndarray | None = None) -> np.ndarray:
    """The last-exceedance rule for many curves at once: K of every row of ``deltas`` (NaN: never settles).

    K = the k right after the last Δ_k ≥ tol (the first k if there is none); NaN where the last Δ is ≥ tol or NaN.
    :func:`sufficient_sample_size` is this rule for one curve.

    Args:
        deltas: [R, n] Δ_k of R curves on the same k.
        tol: the tolerance Δ, a number > 0.
        k: the k of the n columns (default 1..n).

    Returns:
        float [R]: K of each row, NaN where it never settles.

    Raises:
        ValueError: if ``tol`` is not a number > 0 or ``deltas`` is not 2-D.

    Example:
        >>> sample_sizes(np.array([[0.5, 0.05, 0.2, 0.04], [0.5, 0.5, 0.5, 0.5]]), 0.1).tolist()
        [4.0, nan]
    """
    if not (isinstance(tol, int | float) and tol > 0):
        raise ValueError(f"tol must be a number > 0, got {tol!r}")
    deltas = np.asarray(deltas, dtype=float)
    if deltas.ndim != 2:
        raise ValueError(f"deltas must be [R, n], got shape {list(deltas.shape)}")
    n = deltas.shape[1]
    k = np.arange(1, n + 1) if k is None else np.asarray(k)
    above = ~(deltas < tol)  # NaN counts as not settled
    last = np.where(above.any(1), n - 1 - np.argmax(above[:, ::-1], axis=1), -1)  # last exceedance, -1: none
    K = np.full(len(deltas), np.nan)
    settles = last < n - 1
    K[settles] = k[last[settles] + 1]
    return K


def _padded(values: np.ndarray, window: int, pad: str) -> np.ndarray:
    """``values`` as floats padded by window // 2 at each end, after checking that ``window`` is an odd int ≥ 1."""
    if not isinstance(window, int) or window < 1 or window % 2 == 0:
        raise ValueError(f"window must be an odd integer >= 1, got {window!r}")
    return np.pad(np.asarray(values, dtype=float), window // 2, mode=pad)


def moving_average(values: np.ndarray, window: int = 5, *, pad: str = "edge") -> np.ndarray:
    """Centred moving average over ``window`` points, the same length as the input.

    The ends are padded with ``np.pad(mode=pad)``. The paper's figure uses ``window=5`` with edge padding.

    Args:
        values: a 1-D array of numbers.
        window: the number of points averaged, an odd int ≥ 1.
        pad: an ``np.pad`` mode for the ends.

    Returns:
        A float array of ``values``' length.

    Raises:
        ValueError: if ``window`` is not an odd int ≥ 1.

    Example:
        >>> moving_average(np.array([0.0, 3.0, 0.0, 3.0]), 3).tolist()
        [1.0, 1.0, 2.0, 2.0]
    """
    return np.convolve(_padded(values, window, pad), np.ones(window) / window, mode="valid")


def rolling_median(values: np.ndarray, window: int = 5, *, pad: str = "edge") -> np.ndarray:
    """Centred rolling median over ``window`` points, the same length as the input (ends padded with ``pad``).

    A robust smoother for spiky positive ratios on log axes: unlike a moving average, one spike moves it by at
    most one rank and it commutes with log, so it makes no false plateaus.

    Args:
        values: a 1-D array of numbers.
        window: the number of points, an odd int ≥ 1.
        pad: an ``np.pad`` mode for the ends.

    Returns:
        A float array of ``values``' length.

    Raises:
        ValueError: if ``window`` is not an odd int ≥ 1.

    Example:
        >>> rolling_median(np.array([1.0, 100.0, 1.0, 1.0, 2.0]), 3).tolist()
        [1.0, 1.0, 1.0, 1.0, 2.0]
    """
    return np.median(np.lib.stride_tricks.sliding_window_view(_padded(values, window, pad), window), axis=1)


def loglog_slope(curve: DeltaCurve, *, k_min: int = 1, k_max: int | None = None) -> tuple[float, float]:
    """Least-squares fit of log Δ_k = log C + s log k, i.e. Δ_k ≈ C k^s, over k_min ≤ k ≤ k_max.

    Only finite, positive Δ_k are used.

    Args:
        curve: the Δ_k curve.
        k_min: the smallest k used.
        k_max: the largest k used; None: no upper bound.

    Returns:
        (s, C) as floats.

    Raises:
        ValueError: if fewer than 2 finite positive Δ_k lie in [k_min, k_max].

    Example:
        >>> k = np.arange(1, 6)
        >>> s, C = loglog_slope(DeltaCurve(k, 4.0 / k**2, np.zeros(5), "4/k²", 1.0))
        >>> round(s, 6), round(C, 6)
        (-2.0, 4.0)
    """
    k = np.asarray(curve.k, dtype=float)
    delta = np.asarray(curve.delta, dtype=float)
    keep = (k >= k_min) & (k <= (k_max if k_max is not None else np.inf)) & np.isfinite(delta) & (delta > 0)
    if keep.sum() < 2:
        raise ValueError(f"need at least 2 positive Δ_k with {k_min} <= k <= {k_max} to fit a slope")
    slope, intercept = np.polyfit(np.log(k[keep]), np.log(delta[keep]), 1)
    return float(slope), float(np.exp(intercept))


def delta_ratio(estimate: DeltaCurve, reference: DeltaCurve) -> np.ndarray:
    """The ratio estimate Δ_k / reference Δ_k at every k.

    Args:
        estimate: e.g. a closed form.
        reference: e.g. Monte Carlo from the same experiment, covering the same k.

    Returns:
        A float array [len(k)], NaN where the reference is not a finite positive number.

    Raises:
        ValueError: if the two curves do not cover the same k.
    """
    if not np.array_equal(np.asarray(estimate.k), np.asarray(reference.k)):
        raise ValueError("estimate and reference must cover the same k")
    ref = np.asarray(reference.delta, dtype=float)
    est = np.asarray(estimate.delta, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(np.isfinite(ref) & (ref > 0), est / ref, np.nan)


@dataclass
class Agreement:
    """How an estimate of Δ_k compares with a (Monte Carlo) reference over the k it was compared on.

    Attributes:
        median_ratio: the median over k of estimate / reference.
        fraction_at_or_above: the share of k where estimate ≥ reference (1.0 for an upper bound).
        fraction_significantly_below: the share of k where estimate < reference − 2·stderr(reference), i.e.
            below the reference by more than its Monte Carlo noise (a NaN stderr counts as 0).
        num_k: how many k were compared.
    """

    median_ratio: float
    fraction_at_or_above: float
    fraction_significantly_below: float
    num_k: int


def compare_to_reference(estimate: DeltaCurve, reference: DeltaCurve, *, k_min: int = 1) -> Agreement:
    """Summarise ``estimate`` against ``reference`` over k ≥ ``k_min``.

    Only the k where the reference is finite and > 0 and the ratio is finite are compared.

    Args:
        estimate: the Δ_k curve to judge (e.g. a closed form).
        reference: the reference Δ_k curve covering the same k, with its standard error (e.g. Monte Carlo).
        k_min: the smallest k compared.

    Returns:
        An :class:`Agreement`.

    Raises:
        ValueError: if the curves do not cover the same k, or no k ≥ ``k_min`` can be compared.
    """
    ratio = delta_ratio(estimate, reference)
    keep = (np.asarray(reference.k) >= k_min) & np.isfinite(ratio)
    if not keep.any():
        raise ValueError(f"no k >= {k_min} with a finite positive reference to compare")
    est = np.asarray(estimate.delta, dtype=float)[keep]
    ref = np.asarray(reference.delta, dtype=float)[keep]
    se = np.nan_to_num(np.asarray(reference.stderr, dtype=float)[keep])
    return Agreement(float(np.median(ratio[keep])), float(np.mean(est >= ref)),
                     float(np.mean(est < ref - 2 * se)), int(keep.sum()))


@dataclass
class LinearFit:
    """A least-squares line y ≈ slope · x + intercept (made by :func:`fit_against`).

    Attributes:
        slope: the fitted slope.
        intercept: the fitted intercept.
        r2: the coefficient of determination, 1 − residual / total sum of squares (1.0 when y is constant).
        num_points: how many points were fitted.
    """

    slope: float
    intercept: float
    r2: float
    num_points: int


def fit_against(curve: DeltaCurve, x: np.ndarray, *, k_min: int = 1) -> LinearFit:
    """Least-squares line Δ_k ≈ slope · x_k + intercept over k ≥ ``k_min`` (finite values only).

    Args:
        curve: the Δ_k curve.
        x: the regressor aligned with ``curve.k``, float [len(curve)] (e.g. L_k(w*) =
            ``prefix_means(batch_losses)[curve.k - 1]``).
        k_min: the smallest k used.

    Returns:
        A :class:`LinearFit`.

    Raises:
        ValueError: if ``x`` does not have the curve's shape, or fewer than 2 finite points with k ≥ ``k_min``
            remain, or their x are all equal.
    """
    k = np.asarray(curve.k)
    x = np.asarray(x, dtype=float)
    y = np.asarray(curve.delta, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"x must be aligned with curve.k (length {len(y)}), got shape {x.shape}")
    keep = (k >= k_min) & np.isfinite(x) & np.isfinite(y)
    if keep.sum() < 2 or np.ptp(x[keep]) == 0:
        raise ValueError(f"need at least 2 points with distinct x and k >= {k_min} to fit a line")
    slope, intercept = np.polyfit(x[keep], y[keep], 1)
    residual = y[keep] - (slope * x[keep] + intercept)
    total = np.sum((y[keep] - y[keep].mean()) ** 2)
    r2 = 1.0 - np.sum(residual**2) / total if total > 0 else 1.0
    return LinearFit(float(slope), float(intercept), float(r2), int(keep.sum()))


def settling_envelope(curve: DeltaCurve | np.ndarray) -> np.ndarray:
    """The settling envelope E_k = max_{k' ≥ k} Δ_{k'}: the running maximum from the right, non-increasing in k.

    A NaN counts as +inf. It reads K for every tolerance at once: K(tol) = the first k with E_k < tol (see
    :func:`sample_size_curve`).

    Args:
        curve: a :class:`DeltaCurve`, or a bare array of Δ_k.

    Returns:
        A float array of the curve's length.

    Example:
        >>> settling_envelope(np.array([0.5, 0.05, 0.2, 0.04])).tolist()
        [0.5, 0.2, 0.2, 0.04]
    """
    delta = np.asarray(curve.delta if isinstance(curve, DeltaCurve) else curve, dtype=float)
    delta = np.where(np.isnan(delta), np.inf, delta)
    return np.maximum.accumulate(delta[::-1])[::-1]


def sample_size_curve(curve: DeltaCurve, tolerances: np.ndarray | list[float], *, z: float = 0.0) -> np.ndarray:
    """K(tol) of :func:`sufficient_sample_size` for each tolerance, as floats (NaN where Δ never settles).

    ``z`` shifts the curve to Δ_k + z·s.e._k first (clipped at 0), so ``z = ±2`` brackets how far Monte Carlo
    noise moves K (Δ − 2 s.e. gives the smaller K, Δ + 2 s.e. the larger).

    Args:
        curve: the Δ_k curve, with its ``stderr``.
        tolerances: the tolerances Δ, each a number > 0.
        z: the shift in standard errors.

    Returns:
        A float array [len(tolerances)] of K, NaN where the curve never settles.

    Raises:
        ValueError: if a tolerance is not > 0.

    Example:
        >>> curve = DeltaCurve(np.arange(1, 5), np.array([0.5, 0.05, 0.2, 0.04]), np.zeros(4), "Δ", 1.0)
        >>> sample_size_curve(curve, [1.0, 0.1, 0.01]).tolist()
        [1.0, 4.0, nan]
    """
    shift = z * np.nan_to_num(np.asarray(curve.stderr, dtype=float)) if z else 0.0  # T = 1: stderr is NaN
    delta = np.clip(np.asarray(curve.delta, dtype=float) + shift, 0.0, None)
    shifted = replace(curve, delta=delta)
    out = [sufficient_sample_size(shifted, float(tol)) for tol in np.asarray(tolerances, dtype=float)]
    return np.array([np.nan if K is None else K for K in out], dtype=float)


def delta_unperturbed(batch_losses: np.ndarray | torch.Tensor) -> DeltaCurve:
    """Δ_k at θ = 0, i.e. (L_{k+1}(w*) − L_k(w*))²: the σ → 0 limit of Δ_k for any directions.

    Args:
        batch_losses: the per-batch losses ℓ_i(w*) [N] with N ≥ 2 (``Objective.batch_losses()``).

    Returns:
        A :class:`DeltaCurve` with k = 1..N−1, zero ``stderr`` and σ = 0.

    Raises:
        ValueError: if ``batch_losses`` is not 1-D or has fewer than 2 entries.

    Example:
        >>> delta_unperturbed(np.array([1.0, 3.0, 2.0])).delta.tolist()
        [1.0, 0.0]
    """
    losses = _float64(batch_losses, "batch_losses")
    if losses.dim() != 1:
        raise ValueError(f"batch_losses must be 1-D [N], got shape {list(losses.shape)}")
    delta = (loss_changes(losses) ** 2).numpy()
    return DeltaCurve(np.arange(1, len(losses)), delta, np.zeros_like(delta), "unperturbed (σ → 0)", 0.0)


def format_K(K: int | float | None, num_batches: int) -> str:
    """K as text: the number of batches, or "never settles (K > N − 1)" when K is None or NaN.

    The one wording, across tables and figures, for a Δ_k that does not stay below the tolerance within the data.

    Args:
        K: from :func:`sufficient_sample_size` (int or None) or :func:`sample_size_curve` (float, NaN).
        num_batches: N, the number of batches of the curve.

    Returns:
        The text.

    Example:
        >>> format_K(4, 78), format_K(4.0, 78), format_K(None, 78)
        ('4', '4', 'never settles (K > 77)')
    """
    if K is None or (isinstance(K, float) and np.isnan(K)):
        return f"never settles (K > {num_batches - 1})"
    return str(int(K))


def first_below(curve: DeltaCurve | np.ndarray, tol: float) -> int | None:
    """The first k with Δ_k < tol: what a rule that stops at the first dip would report.

    It is never later than :func:`sufficient_sample_size`, and earlier whenever the curve comes back above
    ``tol``.

    Args:
        curve: a :class:`DeltaCurve`, or a bare array of Δ_k whose first entry is k = 1.
        tol: the tolerance Δ, a number > 0.

    Returns:
        The first k as an int, or None if no Δ_k is below ``tol``.

    Raises:
        ValueError: if ``tol`` is not a number > 0.

    Example:
        >>> first_below(np.array([0.5, 0.05, 0.2, 0.04, 0.03]), 0.1)
        2
    """
    k, delta = _curve_and_tol(curve, tol)
    below = np.flatnonzero(delta < tol)
    return None if len(below) == 0 else int(k[below[0]])
