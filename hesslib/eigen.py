"""Top-D eigenpairs of a symmetric operator given only by (batched) matrix products H V.

The algorithms only need the :class:`~hesslib.operators.Operator` contract: ``hvp(V)`` for V of shape [M, r],
``num_params``, ``dtype`` and ``device`` (an :class:`~hesslib.hessian.Objective`, a
:class:`~hesslib.operators.DenseOperator`, or a user's own operator). Both stop on the residual
‖H v − λ v‖ / |λ| < tol of every requested pair.

* ``"lanczos"`` (default): block Lanczos in Krylov–Schur form with full re-orthogonalisation and thick
  restarts. Each step makes one batched product of a block of b vectors, extends T = QᵀHQ by its new columns
  and does Rayleigh–Ritz on the whole basis (no extra products); residuals come from the Krylov–Schur
  relation and are checked explicitly before returning. It finds the largest ALGEBRAIC eigenvalues.
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
    """Block Lanczos in Krylov–Schur form: H Q = Q T + F S, with full re-orthogonalisation and thick restarts.

    Q [M, m] is the orthonormal basis, T = QᵀHQ, F [M, r] the next block (orthonormal, ⟂ Q) and S [r, m]. Each
    step multiplies the block, H F, appends it to Q and finds the next F from the part of H F outside the basis
    (two Gram–Schmidt passes). The residual of a Ritz pair (θ, Qy) is ‖HQy − θQy‖ = ‖Sy‖, so convergence is
    checked without touching the basis; the residuals are then recomputed explicitly from the stored products HQ
    before the pairs are returned (and the iteration goes on should rounding make them miss ``tol``). The basis
    and its products are stored one vector per row, where the skinny products Qᵀ W run fastest (5x on the
    paper's MLP against one vector per column). A warm start (``init``) puts its leading b columns in the first
    block.
    """
    M, dtype, device = op.num_params, op.dtype, op.device
    width = b
    start = _random(op, (M, width), generator)
    if init is not None:  # the leading b columns (a wider first block would make every block wider)
        j = min(width, init.shape[1])
        start[:, :j] = init[:, :j].to(device, dtype)
    F = _orthonormalize(start, None, op, generator).T.contiguous()  # the next block, one vector per row
    capacity = min(M, max(m_max, width) + width)
    Q = torch.empty(capacity, M, dtype=dtype, device=device)  # row i: basis vector q_i
    HQ = torch.empty_like(Q)  # row i: H q_i
    T = torch.zeros(capacity, capacity, dtype=torch.float64, device=device)
    S = torch.zeros(0, 0, dtype=torch.float64, device=device)
    m, hvps = 0, 0
    bar = progress_bar(total=max_hvps, desc="lanczos", unit="hvp", enabled=progress)
    while True:
        r = F.shape[0]
        W = op.hvp(F.T).T  # [r, M]
        hvps += r
        bar.update(r)
        Q[m:m + r], HQ[m:m + r] = F, W
        m += r
        coefficients = Q[:m] @ W.T  # [m, r]: the new columns of T = QᵀHQ
        T[:m, m - r:m] = coefficients.double()
        T[m - r:m, :m - r] = T[:m - r, m - r:m].T
        Z = W - coefficients.T @ Q[:m]  # the part of H F outside the basis, then a second pass for stability
        Z = Z - (Z @ Q[:m].T) @ Q[:m]
        S_next = torch.zeros(r, m, dtype=torch.float64, device=device)
        if m < M:
            F = _orthonormalize(Z.T, Q[:m].T, op, generator).T[: min(r, M - m)].contiguous()
            S_next[: F.shape[0], m - r:] = (F @ Z.T).double()  # Z = Fᵀ S on the new block's columns
        S = S_next
        theta, Y = torch.linalg.eigh(0.5 * (T[:m, :m] + T[:m, :m].T))
        order = torch.argsort(theta, descending=True)
        theta, Y = theta[order], Y[:, order]
        scale = theta[:d].abs().clamp_min(torch.finfo(torch.float64).tiny)
        worst = ((S @ Y[:, :d]).norm(dim=0) / scale).max().item() if m < M else 0.0
        bar.set_postfix(residual=f"{worst:.1e}")
        out_of_budget = hvps + F.shape[0] > max_hvps
        if worst < tol or m == M or out_of_budget:
            Yd = Y[:, :d].to(dtype)
            U, HU = Yd.T @ Q[:m], Yd.T @ HQ[:m]  # [d, M]
            residuals = (HU - theta[:d, None].to(dtype) * U).norm(dim=1).double() / scale
            done = bool(residuals.max() < tol) or m == M
            if done or out_of_budget:
                bar.close()
                return EigenResult(theta[:d].to(dtype), U.T.contiguous(), residuals.to(dtype), hvps, done, "lanczos")
        if m + F.shape[0] > m_max:  # thick restart: keep the best Ritz vectors and their products
            keep = max(d, min(m - b, m_max - 2 * b))
            Yk = Y[:, :keep].to(dtype)
            Q[:keep], HQ[:keep] = Yk.T @ Q[:m], Yk.T @ HQ[:m]
            T[:keep, :keep] = torch.diag(theta[:keep])
            S = S @ Y[:, :keep]
            m = keep


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
