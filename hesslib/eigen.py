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

from .operators import Operator, check_block, check_operator
from .progress import progress_bar

EigenMethod = Literal["lanczos", "power"]
METHODS: tuple[str, ...] = get_args(EigenMethod)


@dataclass
class EigenResult:
    """The top-d eigenpairs found by :func:`top_eigenpairs`, in the operator's dtype on its device.

    Attributes:
        eigenvalues: λ_1 ≥ ... ≥ λ_d, [d].
        eigenvectors: orthonormal columns [M, d], column j for λ_j (P = ``eigenvectors`` spans w = w* + Pθ).
        residuals: ‖H v_j − λ_j v_j‖ / |λ_j|, [d].
        num_hvps: the number of Hessian-vector products (columns of V in ``hvp(V)``) used.
        converged: whether every residual reached ``tol``.
        method: ``"lanczos"`` or ``"power"``.
    """

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

    Stops when ‖H v − λ v‖ / |λ| < ``tol`` for all ``d`` pairs, or when the product budget runs out (then
    ``converged`` is False and the best estimates are returned; no error is raised).

    Args:
        operator: any :class:`~hesslib.operators.Operator` (an :class:`~hesslib.hessian.Objective`, a
            :class:`~hesslib.operators.DenseOperator`, ...) of size M.
        d: the number of eigenpairs, an int in [1, M − 1].
        method: ``"lanczos"`` (largest algebraic eigenvalues) or ``"power"`` (largest magnitude; the
            original paper's deflated power iteration, kept as a baseline).
        tol: the relative residual to reach, > 0.
        seed: seeds the random start vectors (a CPU generator).
        max_hvps: caps the Hessian-vector products, ≥ 1 (default 1000·d, the original's 1000 iterations per
            vector); ``"power"`` spends up to ``max_hvps // d`` per vector plus d for the final residuals.
        block_size: Lanczos block size b in [1, M] (default min(d, 4), the fastest on the paper's MLP in
            ``benchmarks/bench_eigen.py``).
        max_basis: the Lanczos basis size that triggers a thick restart, ≥ min(d + b, M) (default
            max(3d, d + 6b)); capped at M.
        init: [M, j] with j ≥ 1 (e.g. the previous eigenvectors) warm-starts the search; any dtype or device.
        progress: show a progress bar.

    Returns:
        An :class:`EigenResult` with eigenvalues [d] in descending order and eigenvectors [M, d].

    Raises:
        TypeError: if ``operator`` lacks a member of the :class:`~hesslib.operators.Operator` protocol.
        ValueError: if ``method`` is unknown, ``d`` is not an int in [1, M − 1], ``tol`` ≤ 0, ``max_hvps`` < 1,
            ``init`` is not [M, j ≥ 1], ``block_size`` is outside [1, M] or ``max_basis`` < min(d + b, M).

    Example:
        >>> from hesslib import DenseOperator
        >>> op = DenseOperator(torch.diag(torch.arange(1.0, 9.0, dtype=torch.float64)))
        >>> eig = top_eigenpairs(op, 2)
        >>> [round(x, 6) for x in eig.eigenvalues.tolist()], eig.eigenvectors.shape, eig.converged
        ([8.0, 7.0], torch.Size([8, 2]), True)
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


def canonical_signs(vectors: torch.Tensor, *, seed: int = 0) -> torch.Tensor:
    """``vectors`` [M, d] with each column's sign chosen so that its dot product with a fixed random vector is ≥ 0.

    An eigenvector's sign is arbitrary, and float rounding (another world size, another device) can flip it;
    the Monte Carlo Δ_k at a fixed θ draw depends on it (its expectation does not). With canonical signs a run
    is reproducible across world sizes. The reference vector is drawn from a CPU generator seeded by ``seed``,
    the same on every process.

    Example:
        >>> V = torch.eye(3)[:, :2]
        >>> bool(torch.equal(canonical_signs(V), canonical_signs(-V)))
        True
    """
    generator = torch.Generator(device="cpu").manual_seed(seed)
    reference = torch.randn(vectors.shape[0], generator=generator, dtype=torch.float64)
    signs = torch.where((reference.to(vectors.device, vectors.dtype) @ vectors) < 0, -1.0, 1.0)
    return vectors * signs.to(vectors.dtype)


def _random(op: Operator, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Standard normal entries of ``shape`` (drawn in float64 on the CPU), in the operator's dtype and device.

    An operator split over processes (a distributed :class:`~hesslib.hessian.Objective`) broadcasts rank 0's
    draw, so every rank starts, and therefore iterates, identically.
    """
    V = torch.randn(*shape, generator=generator, dtype=torch.float64).to(op.device, op.dtype)
    broadcast = getattr(op, "broadcast", None)
    return broadcast(V) if broadcast is not None else V


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
    """Block Lanczos with full re-orthogonalisation, thick restarts and soft locking (see the module docstring)."""
    M = op.num_params
    start = _random(op, (M, b), generator)
    if init is not None:
        j = min(b, init.shape[1])
        start[:, :j] = init[:, :j].to(op.device, op.dtype)
    V = _orthonormalize(start, None, op, generator)
    Q = torch.empty(M, 0, dtype=op.dtype, device=op.device)
    HQ = torch.empty_like(Q)
    hvps = 0
    bar = progress_bar(total=max_hvps, desc="lanczos", unit="hvp", enabled=progress)
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
    """Power iteration with deflation, one vector at a time (see the module docstring)."""
    M = op.num_params
    U = torch.zeros(M, d, dtype=op.dtype, device=op.device)
    lam = torch.zeros(d, dtype=op.dtype, device=op.device)
    hvps, converged = 0, True
    per_vector = max(1, max_hvps // d)
    bar = progress_bar(total=d, desc="power iteration", unit="eigvec", enabled=progress)
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
    """The Rayleigh quotients vᵀHv of the columns v of ``V``, from ONE batched product H V.

    vᵀHv is the curvature of the loss along v when ‖v‖ = 1 (no normalisation is applied); for eigenvectors
    these are their eigenvalues.

    Args:
        op: any :class:`~hesslib.operators.Operator` of size M.
        V: [M, r] with r ≥ 1; moved to the operator's dtype and device first.

    Returns:
        [r], in the operator's dtype on its device.

    Raises:
        ValueError: if ``V`` is not [M, r] with r ≥ 1.

    Example:
        >>> from hesslib import DenseOperator
        >>> op = DenseOperator(torch.diag(torch.tensor([3.0, 1.0, 2.0])))
        >>> rayleigh_quotients(op, torch.eye(3)[:, :2]).tolist()
        [3.0, 1.0]
    """
    V = check_block(op, V.to(op.device, op.dtype), "V")
    return (V * op.hvp(V)).sum(0)


def spectrum_ratios(eigenvalues: torch.Tensor | Sequence[float], at: Sequence[int]) -> dict[int, float]:
    """The ratios λ_1 / λ_j for the 1-based indices j in ``at``: how fast the top of the spectrum decays.

    Args:
        eigenvalues: λ_1 ≥ λ_2 ≥ ..., a non-empty 1-D tensor or sequence.
        at: 1-based indices j; those outside [1, len(eigenvalues)] are left out.

    Returns:
        {j: λ_1 / λ_j} as Python ints and floats (inf or NaN where λ_j = 0).

    Raises:
        ValueError: if ``eigenvalues`` is empty or not 1-D.

    Example:
        >>> spectrum_ratios([8.0, 4.0, 2.0], at=[1, 2, 3, 10])
        {1: 1.0, 2: 2.0, 3: 4.0}
    """
    lam = torch.as_tensor(eigenvalues, dtype=torch.float64).cpu()
    if lam.dim() != 1 or len(lam) == 0:
        raise ValueError(f"eigenvalues must be a non-empty 1-D sequence, got shape {list(lam.shape)}")
    return {int(j): float(lam[0] / lam[j - 1]) for j in at if 1 <= j <= len(lam)}
