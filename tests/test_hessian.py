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
@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_top_eigenpairs_match_eigh(kind, method):
    obj = _tiny(kind)
    obj.chunk_size = obj.num_samples  # one pass per product: this test is about the solver (chunking: above)
    evals, evecs = torch.linalg.eigh(_dense_hessian(obj))
    d = 4
    result = top_eigenpairs(obj, d, method=method, tol=1e-10, max_hvps=20_000, seed=1)
    assert result.converged and result.method == method
    if method == "lanczos":  # largest algebraic
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
    assert result.residuals.max() < (1e-10 if method == "lanczos" else 1e-8) and result.num_hvps > 0


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
    torch.testing.assert_close(result.residuals, explicit, rtol=1e-6, atol=1e-15)
    assert explicit.max() < 1e-8


def test_lanczos_on_a_tiny_operator_fills_the_whole_space():
    H = torch.diag(torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0], dtype=F64))
    result = top_eigenpairs(DenseOperator(H), 4, tol=1e-14, block_size=3)
    assert result.converged and result.num_hvps <= 6
    torch.testing.assert_close(result.eigenvalues, torch.tensor([5.0, 4.0, 3.0, 2.0], dtype=F64))


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
    from hesslib.estimators import paper_eigenvalues

    obj = _tiny("mlp", n=40, batch_size=8)  # N = 5 full batches
    D, sigma = 3, 0.7
    dense = [sum(hessian(_batch_loss(obj, i))(obj.params) for i in range(k)) / k for k in range(1, 6)]
    lam = torch.stack([torch.linalg.eigvalsh(H).flip(0)[:D] for H in dense]).numpy()  # top-D, descending
    dlam = np.diff(lam, axis=0)
    expected = sigma**4 / 4 * (2 * (dlam**2).sum(1) + dlam.sum(1) ** 2)
    eigenvalues, hvps = paper_eigenvalues(obj, D, tol=1e-10)
    np.testing.assert_allclose(eigenvalues, lam, rtol=1e-7, atol=1e-12)
    assert hvps > 5 * D
    P = torch.linalg.eigh(dense[-1])[1][:, -D:]
    paper = delta_theory(obj, P, sigma=sigma, formula="paper")
    np.testing.assert_allclose(paper.delta, expected, rtol=1e-5)
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
