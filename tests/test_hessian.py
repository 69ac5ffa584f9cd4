"""Hessian engine against ground truth: dense Hessians from torch.func.hessian on tiny float64 models."""

import numpy as np
import pytest
import torch
from torch.func import hessian

from hesslib import DenseOperator, make_model, top_eigenpairs
from hesslib.hessian import Objective, projected_hessians

F64 = torch.float64


def _tiny(kind: str, n: int = 44, batch_size: int = 8, seed: int = 0, **kwargs) -> Objective:
    torch.manual_seed(seed)
    if kind == "mlp":
        model = make_model("mlp", (1, 4, 4), 3, hidden=(7,))
    else:
        model = make_model("cnn", (1, 6, 6), 3, channels=(3,))
    model = model.to(F64)
    shape = (1, 4, 4) if kind == "mlp" else (1, 6, 6)
    X = torch.randn(n, *shape, dtype=F64)
    y = torch.randint(0, 3, (n,))
    return Objective(model, X, y, batch_size=batch_size, chunk_size=16, **kwargs)


def _batch_loss(obj: Objective, i: int):
    part = slice(i * obj.batch_size, min((i + 1) * obj.batch_size, obj.num_samples))
    return lambda w: obj.per_sample_losses(w, obj.X[part], obj.y[part]).mean()


def _dense_hessian(obj: Objective) -> torch.Tensor:
    """H of L(w) = mean_i ℓ_i(w), built independently from per-batch dense Hessians."""
    return sum(hessian(_batch_loss(obj, i))(obj.params) for i in range(obj.num_batches)) / obj.num_batches


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_hvp_matches_dense_hessian(kind):
    obj = _tiny(kind)
    assert 100 < obj.num_params < 500 and obj.num_batches == 6  # 44 = 5 * 8 + 4: short last batch kept
    H = _dense_hessian(obj)
    V = torch.randn(obj.num_params, 5, dtype=F64)
    torch.testing.assert_close(obj.hvp(V), H @ V, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(obj.hvp(V[:, 2]), H @ V[:, 2], rtol=1e-10, atol=1e-12)
    losses = torch.stack([_batch_loss(obj, i)(obj.params) for i in range(obj.num_batches)])
    torch.testing.assert_close(obj.batch_losses(), losses)
    grads = sum(torch.func.grad(_batch_loss(obj, i))(obj.params) for i in range(obj.num_batches)) / obj.num_batches
    torch.testing.assert_close(obj.gradient(), grads)


def test_drop_last_removes_short_batch():
    obj = _tiny("mlp", drop_last=True)
    assert obj.num_batches == 5 and obj.num_samples == 40


def _top_by_magnitude(evals: torch.Tensor, d: int) -> torch.Tensor:
    return evals[evals.abs().argsort(descending=True)[:d]].sort(descending=True).values


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("method", ["lanczos", "davidson", "power"])
def test_top_eigenpairs_match_eigh(kind, method):
    obj = _tiny(kind)
    obj.chunk_size = obj.num_samples  # one pass per product: this test is about the solver (chunking: above)
    evals, evecs = torch.linalg.eigh(_dense_hessian(obj))
    d = 3 if method == "power" else 4  # power's 4th vector converges slowly here (2.4k products on the MLP)
    result = top_eigenpairs(obj, d, method=method, tol=1e-10, max_hvps=20_000, seed=1)
    assert result.converged and result.method == method
    if method != "power":  # largest algebraic
        order = evals.argsort(descending=True)[:d]
    else:  # largest magnitude, as the original's power iteration
        order = evals.abs().argsort(descending=True)[:d]
        order = order[evals[order].argsort(descending=True)]
    torch.testing.assert_close(result.eigenvalues, evals[order], rtol=1e-6, atol=0)
    overlap = (result.eigenvectors.T @ evecs[:, order]).diagonal().abs()
    torch.testing.assert_close(overlap, torch.ones(d, dtype=F64), rtol=0, atol=1e-6)
    gram = result.eigenvectors.T @ result.eigenvectors
    torch.testing.assert_close(gram, torch.eye(d, dtype=F64), rtol=0, atol=1e-10)
    # power reports residuals against the undeflated H, so deflation errors show (honestly) there
    assert result.residuals.max() < (1e-8 if method == "power" else 1e-10) and result.num_hvps > 0


@pytest.mark.parametrize("method", ["lanczos", "davidson", "power"])
def test_top_eigenpairs_signs_do_not_depend_on_the_solver_path(method):
    """Every solve returns the canonical sign of each eigenvector, whatever its seed, block size or method."""
    from hesslib.eigen import canonical_signs

    M, d = 60, 4
    rng = np.random.default_rng(3)
    Q = np.linalg.qr(rng.standard_normal((M, M)))[0]
    op = DenseOperator(torch.from_numpy(Q @ np.diag(np.linspace(10.0, 0.1, M)) @ Q.T))
    runs = [top_eigenpairs(op, d, method=method, tol=1e-11, seed=seed, block_size=block, max_hvps=50_000)
            for seed, block in ((0, None), (1, 1), (2, 2), (5, 3))]
    reference = runs[0].eigenvectors
    torch.testing.assert_close(reference, canonical_signs(reference), rtol=0, atol=0)
    for result in runs[1:]:
        assert result.converged
        torch.testing.assert_close(result.eigenvectors, reference, rtol=0, atol=1e-8)


def test_lanczos_needs_far_fewer_products_than_power():
    # a spectrum with slow geometric decay: power iteration pays for every small gap
    rng = np.random.default_rng(0)
    Q, _ = np.linalg.qr(rng.standard_normal((300, 300)))
    evals = 1.0 / (1 + np.arange(300)) ** 0.5
    H = torch.from_numpy((Q * evals) @ Q.T)
    lanczos = top_eigenpairs(DenseOperator(H), 5, tol=1e-6)
    power = top_eigenpairs(DenseOperator(H), 5, method="power", tol=1e-6)
    assert lanczos.converged
    torch.testing.assert_close(lanczos.eigenvalues, torch.from_numpy(evals[:5]), rtol=1e-9, atol=0)
    assert power.num_hvps > 5 * lanczos.num_hvps


@pytest.mark.parametrize(("block_size", "max_basis"), [(1, 8), (3, 12), (4, None), (7, 20)])
def test_lanczos_restarts_and_block_sizes_reach_the_known_spectrum(block_size, max_basis):
    # small bases force many thick restarts; the residuals the solver returns are its explicit ones
    rng = np.random.default_rng(1)
    Q, _ = np.linalg.qr(rng.standard_normal((200, 200)))
    evals = np.linspace(10.0, 0.1, 200) ** 2 / 10
    H = torch.from_numpy((Q * evals) @ Q.T)
    result = top_eigenpairs(DenseOperator(H), 5, tol=1e-8, block_size=block_size, max_basis=max_basis)
    assert result.converged
    torch.testing.assert_close(result.eigenvalues, torch.from_numpy(evals[:5]), rtol=1e-12, atol=0)
    explicit = (H @ result.eigenvectors - result.eigenvectors * result.eigenvalues).norm(dim=0) / result.eigenvalues
    # equal to rounding: a pair converged to machine precision has a residual of a few eps·‖H‖/λ either way
    torch.testing.assert_close(result.residuals, explicit, rtol=1e-6, atol=50 * torch.finfo(F64).eps)
    assert explicit.max() < 1e-8


@pytest.mark.parametrize("block_size", [1, 2, 3])
def test_lanczos_returns_d_true_eigenpairs_after_its_krylov_space_closes(block_size):
    # from b start vectors the Krylov space holds b directions per distinct eigenvalue (3 distinct here), so it
    # closes before d = 5 Ritz pairs exist for b = 1: the solver must go on (it once returned 3 pairs as converged)
    # and turn the rounding noise of the next block into new directions orthogonal to its basis; a multiplicity
    # above the block size is found only as far as rounding allows (the documented Krylov limitation)
    evals = np.array([5.0] * 3 + [4.0] * 2 + [1.0] * 40)
    H = _rotated(evals, 3)
    result = top_eigenpairs(DenseOperator(H), 5, tol=1e-10, block_size=block_size, max_basis=12)
    U, lam = result.eigenvectors, result.eigenvalues
    assert result.converged and lam.shape == (5,) and U.shape == (45, 5)
    torch.testing.assert_close(U.T @ U, torch.eye(5, dtype=F64), rtol=0, atol=1e-10)
    assert ((H @ U - U * lam).norm(dim=0) / lam).max() < 1e-10  # true eigenpairs
    assert lam[0] == pytest.approx(5.0, rel=1e-12) and all(min(abs(v - evals)) < 1e-9 for v in lam.tolist())
    if block_size >= 3:  # the block covers the multiplicity: exactly the top 5
        torch.testing.assert_close(lam, torch.from_numpy(evals[:5]), rtol=1e-10, atol=0)


def test_lanczos_on_a_tiny_operator_fills_the_whole_space():
    H = torch.diag(torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0], dtype=F64))
    result = top_eigenpairs(DenseOperator(H), 4, tol=1e-14, block_size=3)
    assert result.converged and result.num_hvps <= 6
    torch.testing.assert_close(result.eigenvalues, torch.tensor([5.0, 4.0, 3.0, 2.0], dtype=F64))


def _rotated(evals: np.ndarray, seed: int) -> torch.Tensor:
    Q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((len(evals), len(evals))))
    return torch.from_numpy((Q * evals) @ Q.T)


@pytest.mark.parametrize(("block_size", "max_basis"), [(None, None), (1, 12), (3, 15), (10, 20)])
def test_davidson_tracks_a_perturbed_spectrum_from_its_neighbour(block_size, max_basis):
    # H_next = H + a symmetric perturbation, as H_k is from H_{k−1}; warm-started from H's eigenvectors Davidson
    # reaches the exact top-d of H_next (dense eigh), with fewer products than from a random start
    d = 10
    evals = 1.0 / (1 + np.arange(400)) ** 0.7
    H = _rotated(evals, 2)
    E = torch.from_numpy(np.random.default_rng(3).standard_normal((400, 400))) * 2e-4
    H_next = H + (E + E.T)
    exact_values, exact_vectors = torch.linalg.eigh(H_next)
    exact_values, exact_vectors = exact_values.flip(0)[:d], exact_vectors.flip(1)[:, :d]
    start = top_eigenpairs(DenseOperator(H), d, tol=1e-9).eigenvectors
    davidson = top_eigenpairs(DenseOperator(H_next), d, method="davidson", tol=1e-8, init=start,
                              block_size=block_size, max_basis=max_basis)
    cold = top_eigenpairs(DenseOperator(H_next), d, method="davidson", tol=1e-8, block_size=block_size,
                          max_basis=max_basis)
    assert davidson.converged and davidson.method == "davidson"
    torch.testing.assert_close(davidson.eigenvalues, exact_values, rtol=1e-12, atol=0)
    overlap = (davidson.eigenvectors.T @ exact_vectors).diagonal().abs()
    torch.testing.assert_close(overlap, torch.ones(d, dtype=F64), rtol=0, atol=1e-8)
    explicit = (H_next @ davidson.eigenvectors - davidson.eigenvectors * davidson.eigenvalues).norm(dim=0)
    torch.testing.assert_close(davidson.residuals, explicit / davidson.eigenvalues, rtol=1e-6, atol=1e-15)
    assert cold.converged and davidson.num_hvps < cold.num_hvps
    capped = top_eigenpairs(DenseOperator(H_next), d, method="davidson", tol=1e-8, init=start, max_hvps=d + 3)
    assert not capped.converged and capped.num_hvps <= d + 3


def test_davidson_on_a_tiny_operator_and_from_a_random_start():
    H = torch.diag(torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0], dtype=F64))
    result = top_eigenpairs(DenseOperator(H), 4, method="davidson", tol=1e-14)
    assert result.converged and result.num_hvps <= 5
    torch.testing.assert_close(result.eigenvalues, torch.tensor([5.0, 4.0, 3.0, 2.0], dtype=F64))
    evals = np.linspace(10.0, 0.1, 200) ** 2 / 10
    cold = top_eigenpairs(DenseOperator(_rotated(evals, 1)), 5, method="davidson", tol=1e-8, init=torch.ones(200, 1))
    assert cold.converged  # one init column, four random ones: no warm start needed, only slower
    torch.testing.assert_close(cold.eigenvalues, torch.from_numpy(evals[:5]), rtol=1e-12, atol=0)


class _Counted(DenseOperator):
    """A DenseOperator that records how many vectors each product multiplies."""

    def __init__(self, H: torch.Tensor, log: list[int]) -> None:
        super().__init__(H)
        self.log = log

    def hvp(self, V: torch.Tensor) -> torch.Tensor:
        self.log.append(V.shape[1])
        return super().hvp(V)


def _running_mean_problem(K: int = 12, M: int = 60, seed: int = 5) -> list[torch.Tensor]:
    # h_i = a shared spectrum plus a symmetric perturbation per term, as the batches' Hessians are
    rng = np.random.default_rng(seed)
    base = _rotated(3.0 / (1 + np.arange(M)), seed)
    noise = [torch.from_numpy(rng.standard_normal((M, M))) * 0.02 for _ in range(K)]
    return [base + E + E.T for E in noise]


@pytest.mark.parametrize(("block_size", "max_basis"), [(None, None), (1, 6), (2, 40)])
def test_running_mean_eigenpairs_match_eigh_of_every_mean(block_size, max_basis):
    from hesslib.eigen import running_mean_eigenpairs

    terms, d = _running_mean_problem(), 4
    term_log, mean_log = [], {}

    def mean(k):
        mean_log[k] = []
        return _Counted(sum(terms[:k]) / k, mean_log[k])

    results = list(running_mean_eigenpairs(lambda i: _Counted(terms[i - 1], term_log), mean, len(terms), d,
                                           tol=1e-10, block_size=block_size, max_basis=max_basis))
    assert len(results) == len(terms)
    for k, result in enumerate(results, start=1):
        H = sum(terms[:k]) / k
        assert result.converged and result.method == "running_mean"
        torch.testing.assert_close(result.eigenvalues, torch.linalg.eigvalsh(H).flip(0)[:d], rtol=1e-9, atol=0)
        U = result.eigenvectors
        torch.testing.assert_close(U.T @ U, torch.eye(d, dtype=F64), rtol=0, atol=1e-10)
        explicit = (H @ U - U * result.eigenvalues).norm(dim=0) / result.eigenvalues.abs()
        assert explicit.max() < 1e-9
        torch.testing.assert_close(result.residuals, explicit, rtol=1e-4, atol=1e-13)
    # the cost in one-term units: a vector times h_k counts 1, times H_k counts k
    assert sum(r.num_hvps for r in results) == sum(term_log) + sum(k * sum(log) for k, log in mean_log.items())
    assert len(term_log) == len(terms) - 1  # one product of the basis with each h_k, k ≥ 2
    # a budget too small for tol: every k is reported, unconverged, with its best estimates
    capped = list(running_mean_eigenpairs(lambda i: DenseOperator(terms[i - 1]), lambda k: DenseOperator(
        sum(terms[:k]) / k), len(terms), d, tol=1e-14, max_hvps=1))
    assert len(capped) == len(terms) and not any(r.converged for r in capped)


@pytest.mark.parametrize("case", ["orthogonal", "mostly_in_the_basis", "nearly_dependent", "dependent", "no_basis"])
def test_orthonormalize_is_orthonormal_and_orthogonal_to_the_basis_when_it_skips_a_pass(case):
    """One Gram–Schmidt pass where it suffices, two where cancellation needs them; dependent columns replaced."""
    from hesslib.eigen import _orthonormalize

    M, n, r = 400, 30, 5
    rng = torch.Generator().manual_seed(1)
    Q = torch.linalg.qr(torch.randn(M, n, generator=rng, dtype=F64))[0]
    V = torch.randn(M, r, generator=rng, dtype=F64)
    V -= Q @ (Q.T @ V)  # a residual block: orthogonal to Q in exact arithmetic
    if case == "mostly_in_the_basis":  # 1 − 1e-9 of the norm along Q: one pass leaves ~1e-7 there
        V = 1e-9 * V + Q @ torch.randn(n, r, generator=rng, dtype=F64)
    elif case == "nearly_dependent":  # column 1 ≈ column 0: the QR's triangle is near-singular
        V[:, 1] = V[:, 0] + 1e-9 * V[:, 1]
    elif case == "dependent":
        V[:, 2] = 0.0
    qr_calls = []
    original = torch.linalg.qr

    def counted(*args, **kwargs):
        qr_calls.append(1)
        return original(*args, **kwargs)

    torch.linalg.qr = counted
    try:
        out = _orthonormalize(V.clone(), None if case == "no_basis" else Q, DenseOperator(torch.eye(M, dtype=F64)),
                              torch.Generator().manual_seed(0))
    finally:
        torch.linalg.qr = original
    assert out.shape == (M, r)
    torch.testing.assert_close(out.T @ out, torch.eye(r, dtype=F64), rtol=0, atol=1e-13)
    if case != "no_basis":
        assert (Q.T @ out).abs().max() < 1e-13
    assert len(qr_calls) == (1 if case in ("orthogonal", "no_basis") else 2)
    if case in ("orthogonal", "no_basis"):  # the span is kept: out = V R⁻¹
        assert (V - out @ (out.T @ V)).norm() < 1e-12 * V.norm()


def test_running_mean_eigenpairs_check_their_arguments_before_any_product():
    from hesslib.eigen import running_mean_eigenpairs

    terms = _running_mean_problem(K=3, M=10)
    log = []
    term = lambda i: _Counted(terms[i - 1], log)  # noqa: E731
    mean = lambda k: _Counted(sum(terms[:k]) / k, log)  # noqa: E731
    bad = [(dict(num_terms=0), "num_terms must be an integer >= 1"), (dict(d=10), r"d must be an integer in \[1, 9\]"),
           (dict(tol=0.0), "tol must be > 0"), (dict(max_hvps=0), "max_hvps must be >= 1"),
           (dict(init=torch.ones(9, 2, dtype=F64)), r"init must have shape \[10, j\]"),
           (dict(block_size=11), r"block_size must be in \[1, 10\]"),
           (dict(d=3, block_size=3, max_basis=5), "max_basis must be >= d \\+ block_size = 6")]
    for change, message in bad:
        kwargs = dict(num_terms=3, d=2) | change
        with pytest.raises(ValueError, match=message):
            running_mean_eigenpairs(term, mean, **kwargs)
    assert log == []


def test_batch_objectives_are_the_terms_of_every_prefix():
    obj = _tiny("mlp", n=44, batch_size=8)  # N = 6, the last batch holds 4 samples
    V = torch.randn(obj.num_params, 2, dtype=F64)
    for i in (1, 6):
        batch = obj.batch(i)
        assert batch.num_batches == 1 and batch.num_samples == (8 if i == 1 else 4)
        torch.testing.assert_close(batch.hvp(V), hessian(_batch_loss(obj, i - 1))(obj.params) @ V,
                                   rtol=1e-10, atol=1e-12)
    for k in (3, 6):
        torch.testing.assert_close(sum(obj.batch(i).hvp(V) for i in range(1, k + 1)) / k, obj.prefix(k).hvp(V),
                                   rtol=1e-10, atol=1e-12)
    for i in (0, 7, 1.0):
        with pytest.raises(ValueError, match=r"i must be an integer in \[1, 6\]"):
            obj.batch(i)


def test_max_hvps_reports_not_converged():
    obj = _tiny("mlp")
    result = top_eigenpairs(obj, 3, tol=1e-12, max_hvps=6)
    assert not result.converged and result.num_hvps <= 6
    result = top_eigenpairs(obj, 3, method="power", tol=1e-12, max_hvps=6)
    assert not result.converged


def test_warm_start_converges_immediately():
    obj = _tiny("mlp")
    cold = top_eigenpairs(obj, 3, tol=1e-8)
    warm = top_eigenpairs(obj, 3, tol=1e-6, init=cold.eigenvectors)
    assert warm.converged and warm.num_hvps < cold.num_hvps
    torch.testing.assert_close(warm.eigenvalues, cold.eigenvalues, rtol=1e-10, atol=0)


def test_linear_least_squares_eigenvalues_are_second_moment_eigenvalues():
    # ℓ_s(w) = (x_sᵀ w − y_s)², so with equal batches H = 2 XᵀX / n, derived here with numpy alone
    rng = np.random.default_rng(0)
    n, p = 96, 12
    Xn = rng.standard_normal((n, p)) * np.linspace(0.2, 3, p)
    yn = rng.standard_normal(n)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(p, 1, bias=False)).to(F64)
    obj = Objective(model, torch.from_numpy(Xn).reshape(n, 1, 1, p), torch.from_numpy(yn), batch_size=16, loss="mse")
    expected = np.sort(np.linalg.eigvalsh(2 * Xn.T @ Xn / n))[::-1][:4]
    result = top_eigenpairs(obj, 4, tol=1e-10)
    np.testing.assert_allclose(result.eigenvalues.numpy(), expected, rtol=1e-9)


@pytest.mark.parametrize("kind, n, batch_size", [("mlp", 44, 8), ("cnn", 40, 8), ("mlp", 9, 1)])
def test_projected_hessians_per_batch(kind, n, batch_size):
    obj = _tiny(kind, n=n, batch_size=batch_size)
    P = torch.linalg.qr(torch.randn(obj.num_params, 3, dtype=F64))[0]
    curv = projected_hessians(obj, P, memory_mb=0.05)  # tiny budget: several chunks of batches
    N = obj.num_batches
    assert curv.hessians.shape == (N, 3, 3) and curv.grads.shape == (N, 3) and curv.losses.shape == (N,)
    for i in range(N):
        f = _batch_loss(obj, i)
        torch.testing.assert_close(curv.hessians[i], P.T @ hessian(f)(obj.params) @ P)
        torch.testing.assert_close(curv.grads[i], P.T @ torch.func.grad(f)(obj.params))
        torch.testing.assert_close(curv.losses[i], f(obj.params))
    # averaging over batches gives the full-data projected Hessian
    torch.testing.assert_close(curv.hessians.mean(0), P.T @ obj.hvp(P))


def test_bad_input_raises_clear_errors():
    obj = _tiny("mlp")
    M = obj.num_params
    with pytest.raises(ValueError, match=r"d must be an integer in \[1, "):
        top_eigenpairs(obj, 0)
    with pytest.raises(ValueError, match=r"d must be an integer in \[1, "):
        top_eigenpairs(obj, M)
    with pytest.raises(ValueError, match="tol must be > 0"):
        top_eigenpairs(obj, 2, tol=0)
    with pytest.raises(ValueError, match="method must be one of"):
        top_eigenpairs(obj, 2, method="arnoldi")
    with pytest.raises(ValueError, match=rf"P must have shape \[{M}, r\]"):
        projected_hessians(obj, torch.randn(M + 1, 2, dtype=F64))
    with pytest.raises(ValueError, match="P must be torch.float64"):
        projected_hessians(obj, torch.randn(M, 2, dtype=torch.float32))
    with pytest.raises(ValueError, match="on cpu"):
        obj.hvp(torch.randn(M, 2, dtype=F64, device="meta"))
    with pytest.raises(ValueError, match=r"batch_size must be in \[1, 44\]"):
        Objective(obj.model, obj.X, obj.y, batch_size=0)


# ---- the paper's formula with the eigenvalues of every H_k -------------------------------------------------------
def test_paper_formula_uses_the_top_eigenvalues_of_every_H_k():
    from hesslib import delta_theory
    from hesslib.estimators import delta_from_eigenvalues, paper_eigenvalues

    obj = _tiny("mlp", n=40, batch_size=8)  # N = 5 full batches
    D, sigma = 3, 0.7
    dense = [sum(hessian(_batch_loss(obj, i))(obj.params) for i in range(k)) / k for k in range(1, 6)]
    lam = torch.stack([torch.linalg.eigvalsh(H).flip(0)[:D] for H in dense]).numpy()  # top-D, descending
    dlam = np.diff(lam, axis=0)
    expected = sigma**4 / 4 * (2 * (dlam**2).sum(1) + dlam.sum(1) ** 2)
    eigenvalues, hvps = paper_eigenvalues(obj, D, tol=1e-10)
    np.testing.assert_allclose(eigenvalues, lam, rtol=1e-7, atol=1e-12)
    assert isinstance(hvps, float) and hvps >= D  # in full-data products: at least the start's D
    np.testing.assert_allclose(delta_from_eigenvalues(eigenvalues, sigma).delta, expected, rtol=1e-9)
    P = torch.linalg.eigh(dense[-1])[1][:, -D:]
    # the default tolerance (1e-3 on the residual) gives eigenvalues to about ‖r‖²/gap: ~1e-6 here, not 1e-3
    default, cheaper = paper_eigenvalues(obj, D, init=P)
    assert cheaper < hvps
    np.testing.assert_allclose(default, lam, rtol=1e-5)
    paper = delta_theory(obj, P, sigma=sigma, formula="paper")  # the formula of those eigenvalues, started from P
    np.testing.assert_allclose(paper.delta, delta_from_eigenvalues(default, sigma).delta, rtol=1e-12)
    assert paper.label == "paper's formula" and paper.meta["formula"] == "paper"
    # the fixed-subspace variant uses the eigenvalues of PᵀH_kP instead: today's values, and different ones
    ritz = torch.stack([torch.linalg.eigvalsh(P.T @ H @ P).flip(0) for H in dense]).numpy()
    dritz = np.diff(ritz, axis=0)
    subspace = delta_theory(obj, P, sigma=sigma, formula="paper_subspace")
    np.testing.assert_allclose(subspace.delta, sigma**4 / 4 * (2 * (dritz**2).sum(1) + dritz.sum(1) ** 2), rtol=1e-8)
    assert np.max(np.abs(subspace.delta - paper.delta) / paper.delta) > 1e-3
    with pytest.raises(ValueError, match="k must be an integer in"):
        obj.prefix(0)
    assert obj.prefix(5) is obj and obj.prefix(2).num_batches == 2


def test_chunks_shrink_with_the_block_width_and_change_nothing_but_rounding(monkeypatch):
    import hesslib
    import hesslib.hessian as engine

    data = hesslib.load_dataset("digits", limit=200)
    model = hesslib.make_model("cnn", data.input_shape, channels=(4,), seed=0).double()
    obj = engine.Objective(model, data.X, data.y, batch_size=32, dtype=torch.float64)
    V = torch.randn(obj.num_params, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    whole = obj.hvp(V)
    per_sample_mb = obj.activation_numel * 8 / 2**20
    monkeypatch.setattr(engine, "ACTIVATION_BUDGET_MB", 40 * per_sample_mb)  # 40 samples' worth
    assert [c.stop - c.start for c in obj.chunks()][:2] == [40, 40]
    assert [c.stop - c.start for c in obj.chunks(width=4)][:2] == [16, 16], "floor of 16 samples per chunk"
    assert sum(c.stop - c.start for c in obj.chunks(width=4)) == obj.num_samples
    torch.testing.assert_close(obj.hvp(V), whole, rtol=1e-12, atol=1e-14)
