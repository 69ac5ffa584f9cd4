"""Top-D eigenpairs of a symmetric operator given only by (batched) matrix products H V.

The algorithms only need the :class:`~hesslib.operators.Operator` contract: ``hvp(V)`` for V of shape [M, r],
``num_params``, ``dtype`` and ``device`` (an :class:`~hesslib.hessian.Objective`, a
:class:`~hesslib.operators.DenseOperator`, or a user's own operator). Both stop on the residual
‖H v − λ v‖ / |λ| < tol of every requested pair.

* ``"lanczos"`` (default): block Lanczos with full re-orthogonalisation and thick restarts. Each step makes
  one batched product of a block of b vectors, does Rayleigh–Ritz on the whole basis (T = Qᵀ(HQ) from the
  stored products, no extra products), and extends the basis by the residuals of the leading Ritz pairs that
  have not converged yet (soft locking).
  It finds the largest ALGEBRAIC eigenvalues.
* ``"power"``: power iteration with deflation H − Σ λ_i u_i u_iᵀ, one vector at a time, as the original paper
  did; kept as the reference baseline. It finds the largest-MAGNITUDE eigenvalues.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from tqdm.auto import tqdm

from .operators import Operator, check_block, check_operator

EigenMethod = Literal["lanczos", "power"]
METHODS: tuple[str, ...] = get_args(EigenMethod)


@dataclass
class EigenResult:
    """Eigenvalues (descending) [d], orthonormal eigenvectors [M, d], residuals ‖Hv − λv‖/|λ| [d], the number
    of Hessian-vector products used and whether every residual reached ``tol``."""

    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor
    residuals: torch.Tensor
    num_hvps: int
    converged: bool
    method: str


def top_eigenpairs(
    operator: Operator,
    d: int,
    *,
    method: EigenMethod = "lanczos",
    tol: float = 1e-4,
    seed: int = 0,
    max_hvps: int | None = None,
    block_size: int | None = None,
    max_basis: int | None = None,
    init: torch.Tensor | None = None,
    progress: bool = False,
) -> EigenResult:
    """Top-``d`` eigenpairs of the operator's H to relative residual ``tol``.

    ``max_hvps`` caps the Hessian-vector products (default 1000·d, the original's 1000 iterations per vector);
    ``init`` ([M, j], e.g. the previous eigenvectors) warm-starts the search; ``block_size`` b (default
    min(d, 4), the fastest on the paper's MLP in ``benchmarks/bench_eigen.py``) and ``max_basis`` (default
    max(3d, d + 6b)) tune Lanczos.
    """
    M = check_operator(operator).num_params
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not isinstance(d, int) or not 1 <= d < M:
        raise ValueError(f"d must be an integer in [1, {M - 1}] (M - 1 = num_params - 1), got {d!r}")
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol!r}")
    max_hvps = 1000 * d if max_hvps is None else max_hvps
    if max_hvps < 1:
        raise ValueError(f"max_hvps must be >= 1, got {max_hvps}")
    if init is not None and (init.dim() != 2 or init.shape[0] != M or init.shape[1] < 1):
        raise ValueError(f"init must have shape [{M}, j] with j >= 1, got {list(init.shape)}")
    generator = torch.Generator(device="cpu").manual_seed(seed)
    if method == "power":
        return _power(operator, d, tol, max_hvps, generator, init, progress)
    b = min(d, 4) if block_size is None else block_size
    if not 1 <= b <= M:
        raise ValueError(f"block_size must be in [1, {M}], got {b}")
    m_max = min(M, max(3 * d, d + 6 * b) if max_basis is None else max_basis)
    if m_max < d + b and m_max < M:
        raise ValueError(f"max_basis must be >= d + block_size = {d + b}, got {m_max}")
    return _block_lanczos(operator, d, b, m_max, tol, max_hvps, generator, init, progress)


def _random(op: Operator, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    return torch.randn(*shape, generator=generator, dtype=torch.float64).to(op.device, op.dtype)


def _orthonormalize(V: torch.Tensor, Q: torch.Tensor | None, op: Operator, generator: torch.Generator) -> torch.Tensor:
    """Columns of V made orthonormal and orthogonal to Q (CGS2 + QR); (near-)dependent ones replaced by random."""
    for _ in range(2):
        if Q is not None and Q.shape[1]:
            V = V - Q @ (Q.T @ V)
        norms = V.norm(dim=0)
        scale = norms.max().clamp_min(torch.finfo(V.dtype).tiny)
        weak = norms < 1e3 * torch.finfo(V.dtype).eps * scale
        if weak.any():
            V[:, weak] = _random(op, (V.shape[0], int(weak.sum())), generator)
            if Q is not None and Q.shape[1]:
                V = V - Q @ (Q.T @ V)
        V = torch.linalg.qr(V)[0]
    return V


def _block_lanczos(op, d, b, m_max, tol, max_hvps, generator, init, progress) -> EigenResult:
    M = op.num_params
    start = _random(op, (M, b), generator)
    if init is not None:
        j = min(b, init.shape[1])
        start[:, :j] = init[:, :j].to(op.device, op.dtype)
    V = _orthonormalize(start, None, op, generator)
    Q = torch.empty(M, 0, dtype=op.dtype, device=op.device)
    HQ = torch.empty_like(Q)
    hvps = 0
    bar = tqdm(total=max_hvps, desc="lanczos", unit="hvp", disable=not progress)
    while True:
        W = op.hvp(V)
        hvps += V.shape[1]
        bar.update(V.shape[1])
        Q, HQ = torch.cat([Q, V], 1), torch.cat([HQ, W], 1)
        T = (Q.T @ HQ).double()
        theta, Y = torch.linalg.eigh(0.5 * (T + T.T))
        order = torch.argsort(theta, descending=True)
        theta, Y = theta[order], Y[:, order].to(op.dtype)
        k = min(max(d, b), Q.shape[1])
        U, HU = Q @ Y[:, :k], HQ @ Y[:, :k]
        R = HU - U * theta[:k].to(op.dtype)
        residuals = R.norm(dim=0).double() / theta[:k].abs().clamp_min(torch.finfo(torch.float64).tiny)
        worst = residuals[:d].max().item()
        bar.set_postfix(residual=f"{worst:.1e}")
        done = worst < tol or Q.shape[1] == M
        if done or hvps + b > max_hvps:
            bar.close()
            return EigenResult(theta[:d].to(op.dtype), U[:, :d], residuals[:d].to(op.dtype), hvps, done, "lanczos")
        if Q.shape[1] + b > m_max:  # thick restart: keep the best Ritz vectors and their products
            keep = max(d, min(Q.shape[1] - b, m_max - 2 * b))
            Q, HQ = Q @ Y[:, :keep], HQ @ Y[:, :keep]  # Y is orthonormal, so Q stays orthonormal
        # extend by the residuals of the leading pairs that have not converged yet (soft locking)
        pending = torch.cat([torch.nonzero(residuals >= tol).ravel(), torch.nonzero(residuals < tol).ravel()])
        V = _orthonormalize(R[:, pending[: min(b, M - Q.shape[1])].to(R.device)], Q, op, generator)


def _power(op, d, tol, max_hvps, generator, init, progress) -> EigenResult:
    M = op.num_params
    U = torch.zeros(M, d, dtype=op.dtype, device=op.device)
    lam = torch.zeros(d, dtype=op.dtype, device=op.device)
    hvps, converged = 0, True
    per_vector = max(1, max_hvps // d)
    bar = tqdm(total=d, desc="power iteration", unit="eigvec", disable=not progress)
    for j in range(d):
        v = init[:, j].to(op.device, op.dtype) if init is not None and j < init.shape[1] else None
        v = _random(op, (M,), generator) if v is None else v.clone()
        v = v / v.norm()
        for _ in range(per_vector):
            w = op.hvp(v) - U[:, :j] @ (lam[:j] * (U[:, :j].T @ v))
            hvps += 1
            rayleigh = v @ w
            residual = (w - rayleigh * v).norm() / rayleigh.abs()
            v = w / w.norm()
            if residual < tol:
                break
        else:
            converged = False
        U[:, j], lam[j] = v, rayleigh
        bar.update(1)
    bar.close()
    # honest residuals against the undeflated H (one batched product)
    HU = op.hvp(U)
    hvps += d
    lam = (U * HU).sum(0)
    order = torch.argsort(lam, descending=True)
    lam, U, HU = lam[order], U[:, order], HU[:, order]
    residuals = (HU - U * lam).norm(dim=0) / lam.abs()
    return EigenResult(lam, U, residuals, hvps, converged, "power")


def rayleigh_quotients(op: Operator, V: torch.Tensor) -> torch.Tensor:
    """vᵀHv for each column v of ``V`` [M, r] (the curvature of the loss along v when ‖v‖ = 1), from ONE batched
    product H V. For eigenvectors these are their eigenvalues."""
    V = check_block(op, V.to(op.device, op.dtype), "V")
    return (V * op.hvp(V)).sum(0)


def spectrum_ratios(eigenvalues: torch.Tensor | Sequence[float], at: Sequence[int]) -> dict[int, float]:
    """λ_1 / λ_j for each 1-based index j in ``at`` that the (descending) ``eigenvalues`` reach: how fast the top
    of the spectrum decays. Indices beyond the spectrum are left out."""
    lam = torch.as_tensor(eigenvalues, dtype=torch.float64).cpu()
    if lam.dim() != 1 or len(lam) == 0:
        raise ValueError(f"eigenvalues must be a non-empty 1-D sequence, got shape {list(lam.shape)}")
    return {int(j): float(lam[0] / lam[j - 1]) for j in at if 1 <= j <= len(lam)}
