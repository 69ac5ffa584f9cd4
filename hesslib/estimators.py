"""Δ_k = E_θ[(L_{k+1}(w* + Pθ) − L_k(w* + Pθ))²], θ ~ N(0, σ² I_D), for every k = 1..N−1 at once.

* :func:`delta_monte_carlo`: ground truth from one [T, N] matrix of per-batch losses;
* :func:`delta_theory`: closed forms from prefix sums of per-batch projected curvature
  (``kind="paper"``: the paper's Theorem 1; ``kind="second_order"``: the exact Gaussian moments of the
  second-order expansion);
* :func:`sufficient_sample_size`, :func:`sample_size_curve`, :func:`settling_envelope`, :func:`moving_average`,
  :func:`loglog_slope`: reading the curves.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .hessian import Objective, ProjectedCurvature, projected_hessians
from .subspace import subspace_losses

KINDS = ("paper", "second_order")


@dataclass
class DeltaCurve:
    """Δ_k for k = 1..N−1 (``k``, ``delta``), its standard error (zeros for closed forms), and how it was made."""

    k: np.ndarray
    delta: np.ndarray
    stderr: np.ndarray
    label: str
    sigma: float
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.k)


def _check_sigma(sigma: float) -> float:
    if not (isinstance(sigma, int | float) and np.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}")
    return float(sigma)


def _check_P(objective: Objective, P: torch.Tensor) -> torch.Tensor:
    P = objective._check_block(P, "P")
    if objective.num_batches < 2:
        raise ValueError(f"need at least 2 batches to form Δ_k, got num_batches={objective.num_batches}")
    return P


def gaussian_thetas(D: int, sigma: float, samples: int, *, seed: int = 0) -> torch.Tensor:
    """θ_1..θ_T ~ N(0, σ² I_D) as a [T, D] float64 tensor, reproducible from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return sigma * torch.randn(samples, D, generator=generator, dtype=torch.float64)


def delta_from_losses(batch_losses: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Monte Carlo Δ_k and its standard error from per-batch losses ℓ_i(w* + Pθ_t), a [T, N] matrix.

    L_k = (1/k) Σ_{i≤k} ℓ_i along each row (one batch order for every θ), the SAME θ for L_k and L_{k+1};
    L_{k+1} − L_k = (ℓ_{k+1} − L_k)/(k+1) in float64; Δ_k = mean over t of its square, stderr = std / √T.
    """
    losses = batch_losses.double().cpu()
    T, N = losses.shape
    k = torch.arange(1, N, dtype=torch.float64)
    prefix = losses.cumsum(1)[:, :-1] / k  # L_k, k = 1..N-1
    squared = ((losses[:, 1:] - prefix) / (k + 1)) ** 2  # (L_{k+1} - L_k)²
    delta = squared.mean(0)
    stderr = squared.std(0, correction=1) / np.sqrt(T) if T > 1 else torch.full_like(delta, float("nan"))
    return delta.numpy(), stderr.numpy()


def delta_monte_carlo(
    objective: Objective,
    P: torch.Tensor,
    *,
    sigma: float,
    samples: int,
    seed: int = 0,
    progress: bool = False,
) -> DeltaCurve:
    """Monte Carlo Δ_k, k = 1..N−1, from ONE [T, N] loss matrix over T = ``samples`` Gaussian θ (all D used)."""
    sigma = _check_sigma(sigma)
    if not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be an integer >= 1, got {samples!r}")
    P = _check_P(objective, P)
    thetas = gaussian_thetas(P.shape[1], sigma, samples, seed=seed)
    losses = subspace_losses(objective, P, thetas, progress=progress)
    delta, stderr = delta_from_losses(losses)
    k = np.arange(1, objective.num_batches)
    return DeltaCurve(k, delta, stderr, "Monte Carlo", sigma, {"samples": samples, "seed": seed, "D": P.shape[1]})


def theory_from_curvature(curvature: ProjectedCurvature, sigma: float, kind: str) -> np.ndarray:
    """Closed-form Δ_k, k = 1..N−1, from per-batch terms, via prefix means L_k, Pᵀ∇L_k, PᵀH_kP.

    ``"second_order"``: with a_k = L_{k+1} − L_k, c_k = Pᵀ(∇L_{k+1} − ∇L_k), B_k = Pᵀ(H_{k+1} − H_k)P (full D×D),
        Δ_k ≈ a_k² + σ²‖c_k‖² + a_k σ² tr B_k + σ⁴/4 (2 tr B_k² + (tr B_k)²), exact for a quadratic loss.
    ``"paper"`` (Theorem 1): with λ_k the eigenvalues of PᵀH_kP (the Rayleigh–Ritz estimates of the top-D
        eigenvalues of H_k), sorted descending, Δλ = λ_{k+1} − λ_k:
        Δ_k ≈ σ⁴/4 (2 Σ_d Δλ_d² + (Σ_d Δλ_d)²).
    """
    sigma = _check_sigma(sigma)
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    losses, grads, hessians = (t.double().cpu() for t in (curvature.losses, curvature.grads, curvature.hessians))
    N = len(losses)
    counts = torch.arange(1, N + 1, dtype=torch.float64)
    H = hessians.cumsum(0) / counts[:, None, None]  # PᵀH_kP
    if kind == "paper":
        lam = torch.linalg.eigvalsh(0.5 * (H + H.transpose(1, 2))).flip(-1)
        dlam = lam[1:] - lam[:-1]
        delta = sigma**4 / 4 * (2 * (dlam**2).sum(1) + dlam.sum(1) ** 2)
        return delta.numpy()
    L = losses.cumsum(0) / counts
    G = grads.cumsum(0) / counts[:, None]
    a, c, B = L[1:] - L[:-1], G[1:] - G[:-1], H[1:] - H[:-1]
    trB = B.diagonal(dim1=1, dim2=2).sum(1)
    trB2 = (B * B.transpose(1, 2)).sum((1, 2))
    delta = a**2 + sigma**2 * (c**2).sum(1) + a * sigma**2 * trB + sigma**4 / 4 * (2 * trB2 + trB**2)
    return delta.numpy()


def delta_theory(
    objective: Objective,
    P: torch.Tensor,
    *,
    sigma: float,
    kind: str = "second_order",
    curvature: ProjectedCurvature | None = None,
) -> DeltaCurve:
    """Closed-form Δ_k for every k from ONE pass of :func:`projected_hessians` (pass ``curvature`` to reuse it)."""
    sigma = _check_sigma(sigma)
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    P = _check_P(objective, P)
    curvature = projected_hessians(objective, P) if curvature is None else curvature
    delta = theory_from_curvature(curvature, sigma, kind)
    label = "paper's formula" if kind == "paper" else "second-order estimate"
    k = np.arange(1, objective.num_batches)
    return DeltaCurve(k, delta, np.zeros_like(delta), label, sigma, {"kind": kind, "D": P.shape[1]})


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

    Returns None when the last Δ is not below ``tol`` (the curve never settles).
    """
    k, delta = _curve_and_tol(curve, tol)
    below = delta < tol  # NaN compares False
    if len(delta) == 0 or not below[-1]:
        return None
    above = np.flatnonzero(~below)
    return int(k[0] if len(above) == 0 else k[above[-1] + 1])


def moving_average(values: np.ndarray, window: int = 5, *, pad: str = "edge") -> np.ndarray:
    """Centred moving average over ``window`` points (odd), the ends padded with ``np.pad(mode=pad)``, so the
    output has the input's length. The paper's figure uses ``window=5`` with edge padding."""
    if not isinstance(window, int) or window < 1 or window % 2 == 0:
        raise ValueError(f"window must be an odd integer >= 1, got {window!r}")
    values = np.asarray(values, dtype=float)
    padded = np.pad(values, window // 2, mode=pad)
    return np.convolve(padded, np.ones(window) / window, mode="valid")


def loglog_slope(curve: DeltaCurve, *, k_min: int = 1, k_max: int | None = None) -> tuple[float, float]:
    """Least-squares fit log Δ_k = log C + s log k over k_min ≤ k ≤ k_max (finite, positive Δ only): (s, C)."""
    k = np.asarray(curve.k, dtype=float)
    delta = np.asarray(curve.delta, dtype=float)
    keep = (k >= k_min) & (k <= (k_max if k_max is not None else np.inf)) & np.isfinite(delta) & (delta > 0)
    if keep.sum() < 2:
        raise ValueError(f"need at least 2 positive Δ_k with {k_min} <= k <= {k_max} to fit a slope")
    slope, intercept = np.polyfit(np.log(k[keep]), np.log(delta[keep]), 1)
    return float(slope), float(np.exp(intercept))


def prefix_means(values: np.ndarray | torch.Tensor) -> np.ndarray:
    """Running means (1/k) Σ_{i≤k} v_i for k = 1..N in float64, e.g. L_k(w*) from the per-batch losses ℓ_i(w*)
    (``Objective.batch_losses()``); index ``k − 1`` holds the value for k."""
    values = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values, dtype=np.float64)
    if values.ndim != 1 or len(values) == 0:
        raise ValueError(f"values must be a non-empty 1-D array, got shape {values.shape}")
    return np.cumsum(values) / np.arange(1, len(values) + 1)


def delta_ratio(estimate: DeltaCurve, reference: DeltaCurve) -> np.ndarray:
    """estimate Δ_k / reference Δ_k at every k (NaN where the reference is not a finite positive number).

    Both curves must cover the same k (e.g. a closed form and Monte Carlo from the same experiment)."""
    if not np.array_equal(np.asarray(estimate.k), np.asarray(reference.k)):
        raise ValueError("estimate and reference must cover the same k")
    ref = np.asarray(reference.delta, dtype=float)
    est = np.asarray(estimate.delta, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(np.isfinite(ref) & (ref > 0), est / ref, np.nan)


@dataclass
class Agreement:
    """How an estimate of Δ_k compares with a (Monte Carlo) reference over the k it was compared on.

    ``median_ratio``: median over k of estimate / reference; ``fraction_at_or_above``: the share of k where
    estimate ≥ reference (1.0 for an upper bound); ``fraction_significantly_below``: the share of k where
    estimate < reference − 2·stderr(reference), i.e. below the reference by more than its Monte Carlo noise;
    ``num_k``: how many k were compared."""

    median_ratio: float
    fraction_at_or_above: float
    fraction_significantly_below: float
    num_k: int


def compare_to_reference(estimate: DeltaCurve, reference: DeltaCurve, *, k_min: int = 1) -> Agreement:
    """Summarise ``estimate`` against ``reference`` over k ≥ ``k_min`` where the reference is finite and > 0."""
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
    """y ≈ slope · x + intercept by least squares over ``num_points`` points, with the coefficient of
    determination ``r2`` (1 − residual / total sum of squares)."""

    slope: float
    intercept: float
    r2: float
    num_points: int


def fit_against(curve: DeltaCurve, x: np.ndarray, *, k_min: int = 1) -> LinearFit:
    """Least-squares line Δ_k ≈ slope · x_k + intercept over k ≥ ``k_min`` (finite values only), where ``x`` is
    aligned with ``curve.k`` (e.g. L_k(w*) = ``prefix_means(batch_losses)[curve.k - 1]``)."""
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
    """E_k = max_{k' ≥ k} Δ_{k'} (a NaN counts as +inf): the running maximum from the right, non-increasing in k.

    It reads K for every tolerance at once: K(tol) = the first k with E_k < tol (see :func:`sample_size_curve`).
    """
    delta = np.asarray(curve.delta if isinstance(curve, DeltaCurve) else curve, dtype=float)
    delta = np.where(np.isnan(delta), np.inf, delta)
    return np.maximum.accumulate(delta[::-1])[::-1]


def sample_size_curve(curve: DeltaCurve, tolerances: np.ndarray | list[float], *, z: float = 0.0) -> np.ndarray:
    """K(tol) of :func:`sufficient_sample_size` for each tolerance, as floats (NaN where Δ never settles).

    ``z`` shifts the curve to Δ_k + z·s.e._k first (clipped at 0), so ``z = ±2`` brackets how far Monte Carlo
    noise moves K (Δ − 2 s.e. gives the smaller K, Δ + 2 s.e. the larger).
    """
    delta = np.clip(np.asarray(curve.delta, dtype=float) + z * np.asarray(curve.stderr, dtype=float), 0.0, None)
    shifted = DeltaCurve(curve.k, delta, curve.stderr, curve.label, curve.sigma, curve.meta)
    out = [sufficient_sample_size(shifted, float(tol)) for tol in np.asarray(tolerances, dtype=float)]
    return np.array([np.nan if K is None else K for K in out], dtype=float)


def delta_unperturbed(batch_losses: np.ndarray | torch.Tensor) -> DeltaCurve:
    """Δ_k at θ = 0, i.e. (L_{k+1}(w*) − L_k(w*))² for k = 1..N−1 from the per-batch losses ℓ_i(w*)
    (``Objective.batch_losses()``): the σ → 0 limit of Δ_k for any directions."""
    L = prefix_means(batch_losses)
    if len(L) < 2:
        raise ValueError(f"need at least 2 batches to form Δ_k, got {len(L)}")
    delta = np.diff(L) ** 2
    return DeltaCurve(np.arange(1, len(L)), delta, np.zeros_like(delta), "unperturbed (σ → 0)", 0.0)


def first_below(curve: DeltaCurve | np.ndarray, tol: float) -> int | None:
    """The first k with Δ_k < tol (None if none): what a rule that stops at the first dip would report. It is
    never later than :func:`sufficient_sample_size`, and earlier whenever the curve comes back above ``tol``."""
    k, delta = _curve_and_tol(curve, tol)
    below = np.flatnonzero(delta < tol)
    return None if len(below) == 0 else int(k[below[0]])
