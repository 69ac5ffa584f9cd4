"""Helpers behind notebooks 00-03: test splits and learning curves, Rayleigh quotients and curvature spread,
common surface limits and per-k surface change, and the figure helpers they use."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch.func import hessian  # noqa: E402

from hesslib import (  # noqa: E402  # noqa: E402
    DenseOperator,
    delta_from_losses,
    make_model,
    rayleigh_quotients,
    spectrum_ratios,
    surface_change_curves,
    surface_limits,
    surfaces_at,
)
from hesslib.data import has_test_split, write_idx  # noqa: E402
from hesslib.hessian import Objective, curvature_spread, projected_hessians  # noqa: E402
from hesslib.plots import label_log_ticks, plot_image_grid, plot_signed_log, plot_surface_row  # noqa: E402
from hesslib.training import LearningCurve, TrainRecord, learning_curve  # noqa: E402

F64 = torch.float64
FAST = dict(model="mlp", hidden=(16,), epochs=2, lr=1e-2, progress=False, cache_dir=None)


# ---- data and training ------------------------------------------------------------------------------------------
def test_has_test_split(tmp_path):
    assert has_test_split("digits") and not has_test_split("mnist5k")
    assert not has_test_split("mnist", tmp_path)
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte"):
        shape = (3, 28, 28) if "images" in name else (3,)
        write_idx(tmp_path / "MNIST" / "raw" / name, np.zeros(shape, np.uint8))
    assert has_test_split("mnist", tmp_path) and not has_test_split("fashion-mnist", tmp_path)
    with pytest.raises(ValueError, match="dataset name"):
        has_test_split("cifar")


def test_learning_curve_uses_the_test_split_or_a_holdout(data_root):
    own = learning_curve("digits", [100, 300], holdout=50, **FAST)
    assert own.holdout == 0 and own.test_set == "digits test split" and own.sizes == [100, 300]
    assert [r.config["limit"] for r in own.records] == [100, 300]
    assert np.all((own.test_accuracy > 0) & (own.test_accuracy <= 1)) and np.all(own.test_loss > 0)
    held = learning_curve("mnist5k", [200, 400], holdout=300, root=data_root, **FAST)
    assert held.holdout == 300 and held.test_set == "last 300 samples of mnist5k"
    assert all(r.config["holdout"] == 300 for r in held.records) and np.all(np.isfinite(held.test_accuracy))
    with pytest.raises(ValueError, match="holdout must be >= 1"):
        learning_curve("mnist5k", [200], holdout=0, root=data_root, **FAST)
    with pytest.raises(ValueError, match="holdout must be <="):
        learning_curve("mnist5k", [4500], holdout=1000, root=data_root, **FAST)
    for sizes in ([], [300, 100], [100, 100], [0, 10]):
        with pytest.raises(ValueError, match="strictly increasing"):
            learning_curve("digits", sizes, **FAST)


def test_learning_curve_gains_and_power_law():
    sizes = [100, 200, 400, 800]
    error = 0.5 * np.asarray(sizes, dtype=float) ** -0.5
    records = [TrainRecord(config={}, test_accuracy=1 - e, test_loss=e, train_accuracy=1.0, train_loss=0.0)
               for e in error]
    curve = LearningCurve(sizes, records, 0, "x")
    alpha, C = curve.error_power_law()
    assert alpha == pytest.approx(0.5) and C == pytest.approx(0.5)
    np.testing.assert_allclose(curve.gain_per_doubling(), -np.diff(error))  # sizes double each step
    np.testing.assert_allclose(curve.gain_per_sample("test_loss"), np.diff(error) / np.diff(sizes))
    np.testing.assert_allclose(curve.mid_sizes, np.sqrt([100 * 200, 200 * 400, 400 * 800]))
    with pytest.raises(ValueError, match="metric"):
        curve.gain_per_doubling("seconds")
    perfect = LearningCurve([1, 2], [TrainRecord(config={}, test_accuracy=1.0)] * 2, 0, "x")
    with pytest.raises(ValueError, match="positive test error"):
        perfect.error_power_law()


# ---- curvature ---------------------------------------------------------------------------------------------------
def test_rayleigh_quotients_and_spectrum_ratios():
    torch.manual_seed(0)
    A = torch.randn(9, 9, dtype=F64)
    H = A + A.T
    op = DenseOperator(H)
    V = torch.linalg.qr(torch.randn(9, 3, dtype=F64))[0]
    torch.testing.assert_close(rayleigh_quotients(op, V), torch.diagonal(V.T @ H @ V))
    evals, evecs = torch.linalg.eigh(H)
    torch.testing.assert_close(rayleigh_quotients(op, evecs[:, -2:]), evals[-2:])
    with pytest.raises(ValueError, match="shape"):
        rayleigh_quotients(op, torch.ones(8, 2, dtype=F64))
    ratios = spectrum_ratios(torch.tensor([8.0, 4.0, 2.0, 1.0]), [2, 4, 10])
    assert ratios == {2: 2.0, 4: 8.0}
    with pytest.raises(ValueError, match="non-empty"):
        spectrum_ratios([], [1])


def test_curvature_spread_matches_dense_per_batch_hessians():
    torch.manual_seed(0)
    model = make_model("mlp", (1, 3, 3), 3, hidden=(5,)).to(F64)
    X, y = torch.randn(30, 1, 3, 3, dtype=F64), torch.randint(0, 3, (30,))
    obj = Objective(model, X, y, batch_size=8)  # 4 batches, the last one short
    P = torch.linalg.qr(torch.randn(obj.num_params, 2, dtype=F64))[0]
    mean, std = curvature_spread(projected_hessians(obj, P))
    per_batch = []
    for i in range(obj.num_batches):
        part = slice(8 * i, min(8 * i + 8, 30))
        H_i = hessian(lambda w, part=part: obj.per_sample_losses(w, X[part], y[part]).mean())(obj.params)
        per_batch.append(torch.diagonal(P.T @ H_i @ P))
    per_batch = torch.stack(per_batch)
    torch.testing.assert_close(mean, per_batch.mean(0))
    torch.testing.assert_close(std, per_batch.std(0))
    torch.testing.assert_close(mean, rayleigh_quotients(obj, P))  # H is the mean of the batch Hessians


# ---- surfaces ----------------------------------------------------------------------------------------------------
def _grid_losses(points=4, N=7, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(points * points, N, generator=generator, dtype=F64) + 1.0


def test_surface_limits_cover_every_k():
    losses = _grid_losses()
    limits = surface_limits(losses, [1, 5])
    grids = [surfaces_at(losses, k) for k in (1, 5)]
    assert limits.loss == (min(g[0].min() for g in grids), max(g[0].max() for g in grids))
    assert limits.change == (0.0, max(g[1].max() for g in grids))
    assert surface_limits(losses, [1]).change[1] == grids[0][1].max()
    with pytest.raises(ValueError, match="square grid"):
        surface_limits(losses[:15], [1])
    with pytest.raises(ValueError, match="at least one k"):
        surface_limits(losses, [])
    with pytest.raises(ValueError, match="k must be in"):
        surface_limits(losses, [7])


def test_surface_change_curves_match_surfaces_at_for_every_k():
    losses = _grid_losses()
    mean, largest = surface_change_curves(losses, "plane:")
    np.testing.assert_array_equal(mean.k, np.arange(1, 7))
    for k in range(1, 7):
        change = surfaces_at(losses, k)[1]
        assert mean.delta[k - 1] == pytest.approx(change.mean(), rel=1e-12)
        assert largest.delta[k - 1] == pytest.approx(change.max(), rel=1e-12)
    np.testing.assert_allclose(mean.delta, delta_from_losses(losses).delta, rtol=1e-12)
    assert mean.label == "plane: mean over the grid" and not np.any(mean.stderr)
    with pytest.raises(ValueError, match="N >= 2"):
        surface_change_curves(losses[:, :1])


# ---- figures -----------------------------------------------------------------------------------------------------
def test_figure_helpers_draw():
    fig = plt.figure()
    plot_image_grid(fig, torch.rand(5, 1, 4, 4), torch.arange(5), ncols=3, title="t")
    assert len(fig.axes) == 6 and fig.axes[0].get_title() == "0" and not fig.axes[5].images
    fig = plt.figure()
    Z = np.outer(np.arange(3.0), np.ones(3))
    axes = plot_surface_row(fig, np.linspace(-1, 1, 3), [dict(Z=Z, title="a", zlabel="z", limits=(0.0, 4.0)),
                                                         dict(Z=Z, title="b", zlabel="z")])
    assert len(axes) == 2 and axes[0].get_zlim() == (0.0, 4.0) and axes[1].get_zlim() == (0.0, 2.0)
    fig, ax = plt.subplots()
    plot_signed_log(ax, [3.0, -2.0, 1.0], label="v")
    assert ax.get_yscale() == "log" and [line.get_label() for line in ax.lines[1:]] == ["v", "v (negative: |value|)"]
    ax.set_xscale("log")
    label_log_ticks(ax, [1, 2, 3])
    assert [t.get_text() for t in ax.xaxis.get_ticklabels()] == ["1", "2", "3"]
    plt.close("all")


def _figure_with_a_legend_outside():
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.plot([1, 2], [1, 2], label="a long legend entry, as notebook 06's online figure has (10 Adam steps per batch)")
    ax.set_title(r"$\Delta_k$ and a title")
    fig.legend(loc="lower center", bbox_to_anchor=(0.5, -0.12))
    fig.tight_layout()
    return fig


def test_saved_figures_are_cropped_as_bbox_inches_tight(tmp_path, monkeypatch):
    import io

    from PIL import Image

    from hesslib.plots import save_figure, set_style

    monkeypatch.delenv("HESSLIB_FIGURE_STAGING", raising=False)
    monkeypatch.delenv("HESSLIB_FIGURE_LOG", raising=False)
    set_style()
    fig = _figure_with_a_legend_outside()
    reference = io.BytesIO()
    fig.savefig(reference, format="png", bbox_inches="tight")
    pdf, png = save_figure(fig, "legend", tmp_path)
    assert Image.open(png).size == Image.open(reference).size  # measured at savefig.dpi, not the screen's
    assert fig.dpi == plt.rcParams["figure.dpi"] and pdf.read_bytes().startswith(b"%PDF")
    plt.close("all")


def test_save_and_show_shows_the_saved_png_at_the_inline_resolution(tmp_path, monkeypatch):
    import base64
    import io

    from PIL import Image

    import hesslib.plots as plots

    monkeypatch.delenv("HESSLIB_FIGURE_STAGING", raising=False)
    monkeypatch.delenv("HESSLIB_FIGURE_LOG", raising=False)
    plots.set_style()
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda bundle, raw: shown.append(bundle))
    fig = _figure_with_a_legend_outside()
    assert not plots._inline_backend()  # a script: plt.show(), nothing displayed here
    plots.save_and_show(fig, "script", tmp_path)
    assert shown == [] and plt.fignum_exists(fig.number)
    monkeypatch.setattr(plots, "_inline_backend", lambda: True)  # as in a papermill kernel
    plots.save_and_show(fig, "inline", tmp_path)
    assert len(shown) == 1 and not plt.fignum_exists(fig.number)  # shown once, then closed
    saved, inline = Image.open(tmp_path / "inline.png"), Image.open(io.BytesIO(base64.b64decode(shown[0]["image/png"])))
    assert shown[0]["text/plain"] == f"<Figure inline, {inline.width}x{inline.height} px>"
    scale = plt.rcParams["figure.dpi"] / plt.rcParams["savefig.dpi"]
    assert inline.size == (round(saved.width * scale), round(saved.height * scale))
    plt.close("all")
