"""Top-D eigenpairs of a symmetric operator given only by (batched) matrix products H V.

The algorithms only need the :class:`~hesslib.operators.Operator` contract: ``hvp(V)`` for V of shape [M, r],
``num_params``, ``dtype`` and ``device`` (an :class:`~hesslib.hessian.Objective`, a
:class:`~hesslib.operators.DenseOperator`, or a user's own operator). Both stop on the residual
‖H v − λ v‖ / |λ| < tol of every requested pair.

* ``"lanczos"`` (default): block Lanczos in Krylov–Schur form with full re-orthogonalisation and thick
  restarts. Each step makes one batched product of a block of b vectors, extends T = QᵀHQ by its new columns
  and does Rayleigh–Ritz on the whole basis (no extra products); residuals come from the Krylov–Schur
  relation and are checked explicitly before returning. It finds the largest ALGEBRAIC eigenvalues.
* ``"davidson"``: block Davidson (no preconditioner) for a warm start from a nearby problem's eigenvectors,
  e.g. H_k from the solve of H_{k−1}. The basis starts as ALL the ``init`` columns (Lanczos puts only its first
  block of b there) and grows by the explicit residuals H u − θ u of the unconverged Ritz pairs, with thick
  restarts to the best Ritz vectors. From a good start it needs fewer, larger products than Lanczos; from a
  random start it is slower. Like Lanczos it finds the largest algebraic eigenvalues reachable from its start.
* :func:`running_mean_eigenpairs`: the top-d eigenpairs of EVERY running mean H_k = (1/k) Σ_{i≤k} h_i (the
  paper's H_k), k = 1..K, from one basis shared by all k whose products are summed as k grows, so each k costs
  one product of the basis with h_k alone plus the few expansions its residuals ask for.
* ``"power"``: power iteration with deflation H − Σ λ_i u_i u_iᵀ, one vector at a time, as the original paper
  did; kept as the reference baseline. It finds the largest-MAGNITUDE eigenvalues.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch

from .operators import Operator, check_block, check_operator
from .progress import progress_bar

EigenMethod = Literal["lanczos", "davidson", "power"]
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
        method: ``"lanczos"``, ``"davidson"`` or ``"power"``.
    """

    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor
    residuals: torch.Tensor
    num_hvps: int
    converged: bool
    method: str


def _check_solve(M: int, d: int, tol: float, max_hvps: int | None, init: torch.Tensor | None) -> int:
    """Check the arguments every solver shares (1 ≤ d < M, tol > 0, max_hvps ≥ 1, init [M, j ≥ 1]); the cap."""
    if not isinstance(d, int) or not 1 <= d < M:
        raise ValueError(f"d must be an integer in [1, {M - 1}] (M - 1 = num_params - 1), got {d!r}")
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol!r}")
    max_hvps = 1000 * d if max_hvps is None else max_hvps
    if max_hvps < 1:
        raise ValueError(f"max_hvps must be >= 1, got {max_hvps}")
    if init is not None and (init.dim() != 2 or init.shape[0] != M or init.shape[1] < 1):
        raise ValueError(f"init must have shape [{M}, j] with j >= 1, got {list(init.shape)}")
    return max_hvps


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
    ``converged`` is False and the best estimates are returned; no error is raised). Like every Krylov method,
    Lanczos sees an exactly repeated eigenvalue only as often as its block size (plus what rounding adds): with
    eigenvalues 5, 5, 5, 4, ... and blocks of 1 it may return 5, 5, 4, ... as converged, each a true eigenpair.
    Use ``block_size`` ≥ the multiplicity where exact multiplicities are expected.

    Args:
        operator: any :class:`~hesslib.operators.Operator` (an :class:`~hesslib.hessian.Objective`, a
            :class:`~hesslib.operators.DenseOperator`, ...) of size M.
        d: the number of eigenpairs, an int in [1, M − 1].
        method: ``"lanczos"`` (largest algebraic eigenvalues), ``"davidson"`` (the same, for a warm ``init``
            from a nearby problem) or ``"power"`` (largest magnitude; the original paper's deflated power
            iteration, kept as a baseline).
        tol: the relative residual to reach, > 0.
        seed: seeds the random start vectors (a CPU generator).
        max_hvps: caps the Hessian-vector products, ≥ 1 (default 1000·d, the original's 1000 iterations per
            vector); ``"power"`` spends up to ``max_hvps // d`` per vector plus d for the final residuals.
        block_size: block size b in [1, M]: Lanczos multiplies b vectors per step (default min(d, p) with p the
            operator's ``preferred_block_size`` if it has one, else 4; an
            :class:`~hesslib.hessian.Objective` prefers 1 or 2, whichever its product formulation makes fastest;
            with ``init`` of j columns, at least min(d, j), so the whole warm start fills the first block),
            Davidson adds up to b residuals per step (default d).
        max_basis: the basis size that triggers a thick restart, ≥ min(d + b, M) (default max(3d, d + 6b)
            for Lanczos, max(3d, d + 2b) for Davidson); capped at M.
        init: [M, j] with j ≥ 1 (e.g. the previous eigenvectors) warm-starts the search; any dtype or device.
        progress: show a progress bar.

    Returns:
        An :class:`EigenResult` with eigenvalues [d] in descending order and eigenvectors [M, d], each with its
        canonical sign (:func:`canonical_signs`): an eigenvector's sign is arbitrary, and without this any change
        of rounding (a solver's algebra, the world size, the device) could flip it and with it every θ draw
        along it.

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
    max_hvps = _check_solve(M, d, tol, max_hvps, init)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    if method == "power":
        return _with_canonical_signs(_power(operator, d, tol, max_hvps, generator, init, progress))
    preferred = getattr(operator, "preferred_block_size", 4)
    if init is not None:  # a warm start is used whole: it fills the first block
        preferred = max(preferred, init.shape[1])
    b = (min(d, preferred) if method == "lanczos" else d) if block_size is None else block_size
    if not 1 <= b <= M:
        raise ValueError(f"block_size must be in [1, {M}], got {b}")
    default_basis = max(3 * d, d + 6 * b) if method == "lanczos" else max(3 * d, d + 2 * b)
    m_max = min(M, default_basis if max_basis is None else max_basis)
    if m_max < d + b and m_max < M:
        raise ValueError(f"max_basis must be >= d + block_size = {d + b}, got {m_max}")
    solver = _block_lanczos if method == "lanczos" else _block_davidson
    return _with_canonical_signs(solver(operator, d, b, m_max, tol, max_hvps, generator, init, progress))


def _with_canonical_signs(result: EigenResult) -> EigenResult:
    """``result`` with its eigenvectors' signs made canonical (:func:`canonical_signs`)."""
    result.eigenvectors = canonical_signs(result.eigenvectors)
    return result


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
    """Columns of V made orthonormal and orthogonal to Q (CGS + QR, twice where needed), dependent ones random.

    A second pass is skipped when the first lost little: if the columns' norms before the pass scale R (the
    QR's triangle) to a matrix whose smallest singular value is ≥ 1/2 (for one vector: it kept half its norm, the
    Daniel–Gragg–Kaufman–Stewart criterion), the rounding left along Q grows at most twofold and the result is
    orthogonal to working precision. Residual blocks, already orthogonal to Q in exact arithmetic, pass in one;
    every pass reads all of Q twice.
    """
    rows = V.T  # one vector per row, as the bases are stored: the skinny products run fastest that way
    basis = Q.T if Q is not None and Q.shape[1] else None
    for _ in range(2):
        before = rows.norm(dim=1)
        if basis is not None:
            rows = torch.addmm(rows, rows @ basis.T, basis, alpha=-1)
        norms = rows.norm(dim=1)
        scale = norms.max().clamp_min(torch.finfo(V.dtype).tiny)
        weak = norms < 1e3 * torch.finfo(V.dtype).eps * scale
        if weak.any():
            rows = rows.clone()
            rows[weak] = _random(op, (V.shape[0], int(weak.sum())), generator).T
            if basis is not None:
                rows = torch.addmm(rows, rows @ basis.T, basis, alpha=-1)
        factor, triangle = torch.linalg.qr(rows.T)  # rows.T is column-major, as LAPACK wants it
        rows = factor.T
        if not weak.any() and torch.linalg.svdvals(triangle / before).min() >= 0.5:
            break
    return rows.T


def _rotate_rows(Y: torch.Tensor, B: torch.Tensor, n: int, chunk: int = 1 << 16) -> None:
    """B[:j] = Yᵀ B[:n] in place for Y [n, j], j ≤ n, one slice of columns at a time (no [j, M] temporary)."""
    for start in range(0, B.shape[1], chunk):
        columns = slice(start, start + chunk)
        B[: Y.shape[1], columns] = Y.T @ B[:n, columns]


def _block_lanczos(op, d, b, m_max, tol, max_hvps, generator, init, progress) -> EigenResult:
    """Block Lanczos in Krylov–Schur form: H Q = Q T + F S, with full re-orthogonalisation and thick restarts.

    Q [M, m] is the orthonormal basis, T = QᵀHQ, F [M, r] the next block (orthonormal, ⟂ Q) and S [r, m]. Each
    step multiplies the block, H F, appends it to Q and finds the next F from the part of H F outside the basis
    (Gram–Schmidt, a second pass only where the first lost too much: :func:`_orthonormalize`). The residual of a
    Ritz pair (θ, Qy) is ‖HQy − θQy‖ = ‖Sy‖, so convergence is checked without touching the basis; the residuals
    are then recomputed explicitly from the stored products HQ before the pairs are returned (and the iteration
    goes on should rounding make them miss ``tol``). The basis and its products are stored one vector per row,
    where the skinny products Qᵀ W run fastest (5x on the paper's MLP against one vector per column). A warm
    start (``init``) puts its leading b columns in the first block.
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
        Z = torch.addmm(W, coefficients.T, Q[:m], alpha=-1)  # the part of H F outside the basis (one CGS pass)
        S_next = torch.zeros(r, m, dtype=torch.float64, device=device)
        if m < M:  # a second pass only where this one lost too much (see _orthonormalize)
            F = _orthonormalize(Z.T, Q[:m].T, op, generator).T[: min(r, M - m)].contiguous()
            S_next[: F.shape[0], m - r:] = (F @ Z.T).double()  # Z = Fᵀ S on the new block's columns (F ⟂ Q)
        S = S_next
        theta, Y = torch.linalg.eigh(0.5 * (T[:m, :m] + T[:m, :m].T))
        order = torch.argsort(theta, descending=True)
        theta, Y = theta[order], Y[:, order]
        scale = theta[:d].abs().clamp_min(torch.finfo(torch.float64).tiny)
        worst = ((S @ Y[:, :d]).norm(dim=0) / scale).max().item() if m < M else 0.0
        bar.set_postfix(residual=f"{worst:.1e}")
        out_of_budget = hvps + F.shape[0] > max_hvps
        if (worst < tol and m >= d) or m == M or out_of_budget:  # fewer than d Ritz pairs are not an answer
            Yd = Y[:, :d].to(dtype)
            U, HU = Yd.T @ Q[:m], Yd.T @ HQ[:m]  # [d, M]
            residuals = (HU - theta[:d, None].to(dtype) * U).norm(dim=1).double() / scale
            done = bool(residuals.max() < tol) or m == M
            if done or out_of_budget:
                bar.close()
                return EigenResult(theta[:d].to(dtype), U.T.contiguous(), residuals.to(dtype), hvps, done, "lanczos")
        if m + F.shape[0] > m_max:  # thick restart: keep the best Ritz vectors and their products
            # d and half of the rest: a restart costs two [keep, m] x [m, M] products, and keeping m_max − 2b
            # vectors restarted every other step (top-32 of a seed of the paper's MLP: 130 products in 13.7 s
            # against 131 in 17.0 s)
            keep = max(d, min(m - b, d + (m_max - d) // 2))
            Yk = Y[:, :keep].to(dtype)
            _rotate_rows(Yk, Q, m)
            _rotate_rows(Yk, HQ, m)
            T[:keep, :keep] = torch.diag(theta[:keep])
            S = S @ Y[:, :keep]
            m = keep


def _block_davidson(op, d, b, m_max, tol, max_hvps, generator, init, progress) -> EigenResult:
    """Block Davidson without a preconditioner: Rayleigh–Ritz on span(V), expanded by the residuals.

    V [n, M] holds an orthonormal basis one vector per row and W = V H its products; G = V H Vᵀ = V Wᵀ. Each
    step takes the Ritz pairs (θ_j, u_j = Vᵀ y_j) of G, their explicit residuals r_j = H u_j − θ_j u_j = Wᵀ y_j −
    θ_j u_j (no product needed), stops when ‖r_j‖ / |θ_j| < tol for j = 1..d, and otherwise appends the
    orthonormalised residuals of up to b unconverged pairs (top first) and multiplies them in one batch. When
    the basis would exceed ``m_max`` it restarts from the best max(d, m_max − b) Ritz vectors and their
    products. The start is ``init``'s first d columns (random ones fill up to d).
    """
    M, dtype, device = op.num_params, op.dtype, op.device
    j = 0 if init is None else min(d, init.shape[1])
    start = torch.empty(M, d, dtype=dtype, device=device)
    if j:
        start[:, :j] = init[:, :j].to(device, dtype)
    if j < d:  # random columns only where the warm start has none (a [M, d] draw took 47 ms on the paper's MLP)
        start[:, j:] = _random(op, (M, d - j), generator)
    new = _orthonormalize(start, None, op, generator).T.contiguous()  # [d, M]
    capacity = min(M, max(m_max, d) + b)
    V = torch.empty(capacity, M, dtype=dtype, device=device)
    W = torch.empty_like(V)
    G = torch.zeros(capacity, capacity, dtype=torch.float64, device=device)
    n, hvps = 0, 0
    bar = progress_bar(total=max_hvps, desc="davidson", unit="hvp", enabled=progress)
    while True:
        r = new.shape[0]
        V[n:n + r], W[n:n + r] = new, op.hvp(new.T).T
        hvps += r
        bar.update(r)
        G[:n + r, n:n + r] = (V[:n + r] @ W[n:n + r].T).double()  # the new columns of G = V H Vᵀ
        G[n:n + r, :n] = G[:n, n:n + r].T
        n += r
        theta, Y = torch.linalg.eigh(0.5 * (G[:n, :n] + G[:n, :n].T))
        order = torch.argsort(theta, descending=True)
        theta, Y = theta[order], Y[:, order]
        Yd = Y[:, :d]
        # the residuals H u − θ u of the Ritz vectors u = Vᵀ y, without forming u (one pass over V and W each)
        R = torch.addmm(Yd.T.to(dtype) @ W[:n], (Yd * theta[:d]).T.to(dtype), V[:n], alpha=-1)
        scale = theta[:d].abs().clamp_min(torch.finfo(torch.float64).tiny)
        residuals = R.norm(dim=1).double() / scale
        bar.set_postfix(residual=f"{residuals.max().item():.1e}")
        unconverged = torch.nonzero(residuals >= tol).flatten()[:b]
        done = len(unconverged) == 0 or n == M
        if done or hvps + len(unconverged) > max_hvps:
            bar.close()
            U = Yd.T.to(dtype) @ V[:n]  # [d, M] Ritz vectors
            return EigenResult(theta[:d].to(dtype), U.T.contiguous(), residuals.to(dtype), hvps, done, "davidson")
        if n + len(unconverged) > m_max:  # thick restart: keep the best Ritz vectors and their products
            keep = max(d, min(n - len(unconverged), m_max - b))
            Yk = Y[:, :keep].to(dtype)
            _rotate_rows(Yk, V, n)
            _rotate_rows(Yk, W, n)
            G[:keep, :keep] = torch.diag(theta[:keep])
            n = keep
        new = _orthonormalize(R[unconverged].T, V[:n].T, op, generator)[:, : M - n].T.contiguous()


def running_mean_eigenpairs(
    term: Callable[[int], Operator],
    mean: Callable[[int], Operator],
    num_terms: int,
    d: int,
    *,
    tol: float = 1e-4,
    seed: int = 0,
    init: torch.Tensor | None = None,
    block_size: int | None = None,
    max_basis: int | None = None,
    max_hvps: int | None = None,
) -> Iterator[EigenResult]:
    """The top-``d`` eigenpairs of every running mean H_k = (1/k) Σ_{i≤k} h_i, k = 1..``num_terms``, in turn.

    One orthonormal basis V serves every k, with the SUMS A_k = Σ_{i≤k} h_i V of its products: going from k − 1
    to k costs one product of the basis with h_k alone (A_k = A_{k−1} + h_k V), after which Rayleigh–Ritz on
    Vᵀ A_k / k gives Ritz pairs (θ, u) of H_k and their explicit residuals r = A_k y / k − θ u with no further
    product. While some of the top d have ‖r‖ / |θ| ≥ ``tol``, the residuals of up to b of them (top first) are
    orthonormalised against V and appended, their sums from one product with H_k (``mean(k)``, one pass over k
    terms). A thick restart keeps the best max(d, m_max − b) Ritz vectors, whose sums are the same combinations
    of A_k, so no product is repeated. With the paper's H_k (h_i the Hessian of batch i) a product of V with one
    batch replaces a fresh eigen-solve over k batches.

    Args:
        term: i ↦ an :class:`~hesslib.operators.Operator` for h_i, i = 1..num_terms (e.g. one batch's Hessian).
        mean: k ↦ an Operator for H_k itself (e.g. :meth:`Objective.prefix <hesslib.hessian.Objective.prefix>`);
            it must equal (1/k) Σ_{i≤k} term(i), which is not checked.
        num_terms: K ≥ 1.
        d: the eigenpairs per k, an int in [1, M − 1].
        tol: the relative residual every k reaches, > 0.
        seed: seeds the random vectors (start columns beyond ``init``, replacements of dependent residuals).
        init: [M, j], j ≥ 1: start vectors for k = 1 (e.g. the eigenvectors of H_K); random ones fill up to d.
        block_size: b, the most residuals added per step, in [1, M] (default d).
        max_basis: m_max, the basis size that triggers a restart, ≥ d + b (default 3d); capped at M.
        max_hvps: the most vectors multiplied by ``mean(k)`` per k, ≥ 1 (default 1000·d; the d start vectors at
            k = 1 are multiplied whatever the cap); a k that runs out is returned with ``converged`` False and the
            next k goes on.

    Yields:
        For k = 1..K an :class:`EigenResult` of H_k (method ``"running_mean"``) whose ``num_hvps`` counts the
        vector products at that k in units of one term: a vector times h_k counts 1, times H_k counts k (divide
        the total by K for full-data products).

    Raises:
        TypeError: if ``term(1)`` lacks a member of the Operator protocol.
        ValueError: if ``num_terms`` < 1, ``d`` is not an int in [1, M − 1], ``tol`` ≤ 0, ``max_hvps`` < 1,
            ``init`` is not [M, j ≥ 1], ``block_size`` is outside [1, M] or ``max_basis`` < d + b (all before any
            product).

    Example:
        >>> from hesslib import DenseOperator
        >>> terms = [torch.diag(torch.tensor([3.0, 1.0, 0.0, 0.0], dtype=torch.float64)),
        ...          torch.diag(torch.tensor([1.0, 5.0, 0.0, 0.0], dtype=torch.float64))]
        >>> mean = lambda k: DenseOperator(sum(terms[:k]) / k)  # H_1 = diag(3, 1, 0, 0), H_2 = diag(2, 3, 0, 0)
        >>> solves = running_mean_eigenpairs(lambda i: DenseOperator(terms[i - 1]), mean, 2, 2, tol=1e-10)
        >>> [[round(value, 6) for value in r.eigenvalues.tolist()] for r in solves]
        [[3.0, 1.0], [3.0, 2.0]]
    """
    if not isinstance(num_terms, int) or num_terms < 1:
        raise ValueError(f"num_terms must be an integer >= 1, got {num_terms!r}")
    first = check_operator(term(1))
    M, dtype, device = first.num_params, first.dtype, first.device
    max_hvps = _check_solve(M, d, tol, max_hvps, init)
    b = d if block_size is None else block_size
    if not 1 <= b <= M:
        raise ValueError(f"block_size must be in [1, {M}], got {b}")
    m_max = min(M, 3 * d if max_basis is None else max_basis)
    if m_max < d + b and m_max < M:
        raise ValueError(f"max_basis must be >= d + block_size = {d + b}, got {m_max}")
    return _running_mean(term, mean, num_terms, d, b, m_max, tol, max_hvps, seed, init, first, M, dtype, device)


def _running_mean(term, mean, K, d, b, m_max, tol, max_hvps, seed, init, first, M, dtype, device):
    """The iteration of :func:`running_mean_eigenpairs` (a generator, so that its arguments are checked eagerly)."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    capacity = min(M, max(m_max, d) + b)
    V = torch.empty(capacity, M, dtype=dtype, device=device)  # row i: basis vector v_i
    A = torch.empty_like(V)  # row i: Σ_{j≤k} h_j v_i
    start = _random(first, (M, d), generator)
    if init is not None:
        j = min(d, init.shape[1])
        start[:, :j] = init[:, :j].to(device, dtype)
    new = _orthonormalize(start, None, first, generator).T.contiguous()
    S = torch.zeros(capacity, capacity, dtype=torch.float64, device=device)  # V Aᵀ = k V H_k Vᵀ
    n = 0
    for k in range(1, K + 1):
        units = n
        if n:
            A[:n] += term(k).hvp(V[:n].T).T
            S[:n, :n] = (V[:n] @ A[:n].T).double()
        operator, spent = mean(k), 0
        while True:
            if new is not None:
                r = new.shape[0]
                V[n:n + r], A[n:n + r] = new, operator.hvp(new.T).T * k
                S[:n + r, n:n + r] = (V[:n + r] @ A[n:n + r].T).double()  # only the new columns
                S[n:n + r, :n] = S[:n, n:n + r].T
                n, spent, units, new = n + r, spent + r, units + k * r, None
            theta, Y = torch.linalg.eigh(0.5 * (S[:n, :n] + S[:n, :n].T) / k)
            order = torch.argsort(theta, descending=True)
            theta, Y = theta[order], Y[:, order]
            Yd = Y[:, :d]
            # the residuals H_k u − θ u of the Ritz vectors u = Vᵀ y of H_k, without forming u
            R = torch.addmm((Yd / k).T.to(dtype) @ A[:n], (Yd * theta[:d]).T.to(dtype), V[:n], alpha=-1)
            scale = theta[:d].abs().clamp_min(torch.finfo(torch.float64).tiny)
            residuals = R.norm(dim=1).double() / scale
            unconverged = torch.nonzero(residuals >= tol).flatten()[:b]
            done = len(unconverged) == 0 or n == M
            if done or spent + len(unconverged) > max_hvps:
                U = Yd.T.to(dtype) @ V[:n]  # [d, M] Ritz vectors of H_k
                yield EigenResult(theta[:d].to(dtype), U.T.contiguous(), residuals.to(dtype), units, done,
                                  "running_mean")
                break
            if n + len(unconverged) > m_max:  # thick restart: the best Ritz vectors and their sums
                keep = max(d, min(n - len(unconverged), m_max - b))
                Yk = Y[:, :keep].to(dtype)
                _rotate_rows(Yk, V, n)
                _rotate_rows(Yk, A, n)
                S[:keep, :keep] = torch.diag(theta[:keep] * k)
                n = keep
            new = _orthonormalize(R[unconverged].T, V[:n].T, operator, generator)[:, : M - n].T.contiguous()


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
