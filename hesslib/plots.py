"""Paper figures: one style, deterministic files (no timestamps), and Δ_k curves with standard-error bands."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from .cache import project_root
from .estimators import DeltaCurve

FIGURE_LOG_ENV = "HESSLIB_FIGURE_LOG"  # set by `make paper` to record which notebook wrote which figure
FIGURE_STAGING_ENV = "HESSLIB_FIGURE_STAGING"  # set by `make paper`: figures wait there until their notebook succeeds
STYLE = {
    "figure.dpi": 80,  # inline images in the notebooks, sized for reading; files use savefig.dpi
    "savefig.dpi": 150,
    "font.size": 10,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.frameon": False,
    "svg.hashsalt": "hesslib",
}


INTERACTIVE_ENV = "HESSLIB_INTERACTIVE"  # set by `make lab`: figures in JupyterLab can be rotated and zoomed


def set_style() -> None:
    """Apply the paper's matplotlib style; in a JupyterLab started by ``make lab``, with interactive figures.

    ``make lab`` sets ``$HESSLIB_INTERACTIVE``; in a Jupyter kernel that has it, the ipympl backend
    (``%matplotlib widget``) is switched on, so the 3-D surfaces can be rotated and every plot zoomed. Everywhere
    else (papermill, ``make paper``, scripts) figures stay static inline images, and the saved files are the same
    bytes either way.
    """
    plt.rcParams.update(STYLE)
    if os.environ.get(INTERACTIVE_ENV):
        try:
            from IPython import get_ipython
        except ImportError:
            return
        shell = get_ipython()
        if shell is not None and type(shell).__name__ == "ZMQInteractiveShell":
            shell.run_line_magic("matplotlib", "widget")
            plt.rcParams.update(STYLE)  # again: switching the backend may reset rcParams


def save_figure(fig: plt.Figure, name: str, folder: str | Path = "figures") -> list[Path]:
    """Write ``folder/name.pdf`` and ``folder/name.png`` with no timestamps or version stamps.

    The files are byte-identical on re-runs and are recorded for the figure manifest when
    ``$HESSLIB_FIGURE_LOG`` is set. A relative ``folder`` is taken from the project root
    (:func:`~hesslib.cache.project_root`), so notebooks write to the same place from JupyterLab and from
    ``make paper``. Each file is written to a temporary name and renamed into place. When ``$HESSLIB_FIGURE_STAGING``
    names a folder (``make paper`` sets it), the files are written there instead and the runner moves them to
    ``folder`` only once the whole notebook has succeeded, so an interrupted or failed notebook changes no figure.
    Both files are cropped to one bounding box, that of ``bbox_inches="tight"`` (the drawn artists plus
    ``savefig.pad_inches``), computed once for both. Returns the two final paths.
    """
    return _write_figure(fig, name, folder)[0]


def save_and_show(fig: plt.Figure, name: str, folder: str | Path = "figures") -> None:
    """:func:`save_figure`, then show the figure.

    In a notebook run with matplotlib's inline backend (papermill, ``make paper``) the figure shown is the saved
    PNG scaled from ``savefig.dpi`` to ``figure.dpi`` (the inline resolution), and the figure is closed: drawing it
    a third time would cost about a third of its time. Elsewhere (a script, the interactive figures of ``make
    lab``) it is ``plt.show()``.
    """
    written = _write_figure(fig, name, folder)[1]
    if not _inline_backend():
        plt.show()
        return
    import base64
    import io

    from IPython.display import display
    from PIL import Image

    scale = _inline_scale()
    with Image.open(written[1]) as saved:
        png = saved.copy() if scale == 1.0 else saved.resize(
            (max(1, round(saved.width * scale)), max(1, round(saved.height * scale))), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    png.save(buffer, format="png")
    display({"image/png": base64.b64encode(buffer.getvalue()).decode("ascii"),
             "text/plain": f"<Figure {name}, {png.width}x{png.height} px>"}, raw=True)
    plt.close(fig)


def _inline_backend() -> bool:
    """Whether figures are shown by matplotlib's inline backend in an IPython kernel."""
    if "inline" not in plt.get_backend().lower():
        return False
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    return get_ipython() is not None


def _inline_scale() -> float:
    """``figure.dpi`` / ``savefig.dpi``: the size of an inline image relative to the saved PNG."""
    saved = plt.rcParams["savefig.dpi"]
    return 1.0 if saved == "figure" else float(plt.rcParams["figure.dpi"]) / float(saved)


def _tight_bbox(fig: plt.Figure):
    """The box ``savefig(..., bbox_inches="tight")`` crops a PNG to, found once for both files.

    savefig finds it by drawing the figure once more for each file; here it is measured at ``savefig.dpi`` (text
    extents depend on the resolution: measured at the 80 dpi of the screen, a long legend came out 70 pixels wider
    at 150). "tight" where the canvas has no Agg renderer to measure with.
    """
    get_renderer = getattr(fig.canvas, "get_renderer", None)  # Agg canvases: inline, ipympl, scripts' default
    saved = plt.rcParams["savefig.dpi"]
    if get_renderer is None:
        return "tight"
    screen = fig.dpi
    try:
        if saved != "figure":
            fig.set_dpi(float(saved))
        return fig.get_tightbbox(get_renderer()).padded(plt.rcParams["savefig.pad_inches"])
    finally:
        fig.set_dpi(screen)


def _write_figure(fig: plt.Figure, name: str, folder: str | Path) -> tuple[list[Path], list[Path]]:
    """:func:`save_figure`'s work: (the final paths, the paths written now: staged or final), PDF then PNG."""
    folder = project_root() / folder
    staging = os.environ.get(FIGURE_STAGING_ENV)
    target = Path(staging) if staging else folder
    target.mkdir(parents=True, exist_ok=True)
    bbox = _tight_bbox(fig)
    paths, written = [], []
    for ext, metadata in (("pdf", {"CreationDate": None, "ModDate": None, "Producer": None, "Creator": None}),
                          ("png", {"Software": None})):
        path = target / f"{name}.{ext}"
        tmp = path.with_name(f".{path.name}.tmp")
        fig.savefig(tmp, format=ext, metadata=metadata, bbox_inches=bbox)
        os.replace(tmp, path)
        written.append(path)
        paths.append(folder / f"{name}.{ext}")
    log = os.environ.get(FIGURE_LOG_ENV)
    if log:
        with open(log, "a") as fh:
            entry = {"name": name, "files": [str(p.resolve()) for p in paths]}
            if staging:
                entry["staged"] = [str(p.resolve()) for p in written]
            fh.write(json.dumps(entry) + "\n")
    return paths, written


def plot_delta(ax: plt.Axes, curves: Sequence[DeltaCurve], *, times_kk1: bool = False,
               labels: Sequence[str] | None = None, colors: Sequence[str] | None = None) -> None:
    """Δ_k (or Δ_k·k(k+1) with ``times_kk1``) against k on log-log axes, with ±2 s.e. bands where known.

    Δ_k·k(k+1) is flat for the average over batch orders (:func:`~hesslib.estimators.order_average`).
    """
    for i, curve in enumerate(curves):
        k = curve.k.astype(float)
        scale = k * (k + 1) if times_kk1 else 1.0
        label = labels[i] if labels is not None else curve.label
        color = colors[i] if colors is not None else None
        (line,) = ax.plot(curve.k, curve.delta * scale, label=label, color=color, lw=1.4)
        if np.any(curve.stderr > 0):
            low = np.clip(curve.delta - 2 * curve.stderr, curve.delta * 1e-3, None) * scale
            ax.fill_between(curve.k, low, (curve.delta + 2 * curve.stderr) * scale, color=line.get_color(),
                            alpha=0.2, lw=0)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("k (batches in the fixed order)")
    ax.set_ylabel(r"$\Delta_k \cdot k(k+1)$" if times_kk1 else r"$\Delta_k = E_\theta[(L_{k+1}-L_k)^2]$")


def plot_surface(ax, axis: np.ndarray, Z: np.ndarray, *, title: str, zlabel: str, vmin: float | None = None,
                 vmax: float | None = None, cmap: str = "viridis"):
    """A 3D surface of Z over the (θ_1, θ_2) grid; returns the mappable for a colour bar."""
    A, B = np.meshgrid(axis, axis, indexing="ij")
    surf = ax.plot_surface(A, B, Z, cmap=cmap, vmin=vmin, vmax=vmax, linewidth=0, antialiased=True)
    ax.set_xlabel(r"$\theta_1$")
    ax.set_ylabel(r"$\theta_2$")
    ax.set_zlabel(zlabel)
    ax.set_title(title)
    if vmin is not None and vmax is not None:
        ax.set_zlim(vmin, vmax)
    return surf


# ---- notebooks 04-05: power-law fits, smoothed curves, ratios, Δ_k against L_k(w*) -------------------------
def plot_power_law(ax: plt.Axes, slope: float, C: float, k_min: float, k_max: float, *, times_kk1: bool = False,
                   label: str | None = None, color: str = "black") -> None:
    """A fitted power law C·k^slope (times k(k+1) with ``times_kk1``) over [k_min, k_max], dashed."""
    k = np.geomspace(k_min, k_max, 50)
    ax.plot(k, C * k**slope * (k * (k + 1) if times_kk1 else 1.0), ls="--", lw=1.2, color=color, label=label)


def plot_delta_smoothed(ax: plt.Axes, curves: Sequence[DeltaCurve], *, window: int = 5,
                        labels: Sequence[str] | None = None, colors: Sequence[str] | None = None,
                        linestyles: Sequence[str] | None = None, raw_alpha: float = 0.3) -> None:
    """Each Δ_k curve raw and smoothed by a centred ``window``-point moving average, on log-log axes.

    The raw curve is thin and faint (with a ±2 s.e. band when it has one); the moving average (edge padding) is
    bold, in ``linestyles`` (solid by default).
    """
    from .estimators import moving_average

    for i, curve in enumerate(curves):
        color = colors[i] if colors is not None else f"C{i}"
        label = labels[i] if labels is not None else curve.label
        ax.plot(curve.k, curve.delta, color=color, lw=0.7, alpha=raw_alpha)
        if np.any(curve.stderr > 0):
            low = np.clip(curve.delta - 2 * curve.stderr, curve.delta * 1e-3, None)
            ax.fill_between(curve.k, low, curve.delta + 2 * curve.stderr, color=color, alpha=0.12, lw=0)
        ls = linestyles[i] if linestyles is not None else "-"
        ax.plot(curve.k, moving_average(curve.delta, window), color=color, lw=1.6, ls=ls, label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("k (batches in the fixed order)")
    ax.set_ylabel(r"$\Delta_k$")


def plot_ratio(ax: plt.Axes, ratios: Sequence[np.ndarray], k: np.ndarray, *, labels: Sequence[str],
               colors: Sequence[str] | None = None, window: int = 5, ylabel: str = "estimate / Monte Carlo") -> None:
    """Ratios (e.g. :func:`~hesslib.estimators.delta_ratio`) against k on log-log axes, with a line at 1.

    Each ratio is drawn raw (faint) and as a centred ``window``-point rolling median (solid;
    :func:`~hesslib.estimators.rolling_median`: robust to the spikes of a ratio, no false plateaus on log axes).
    """
    from .estimators import rolling_median

    for i, ratio in enumerate(ratios):
        color = colors[i] if colors is not None else f"C{i}"
        ax.plot(k, ratio, color=color, lw=0.7, alpha=0.3)
        ax.plot(k, rolling_median(ratio, window), color=color, lw=1.6, label=labels[i])
    ax.axhline(1.0, color="black", lw=1.0, ls=":")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("k (batches in the fixed order)")
    ax.set_ylabel(ylabel)


def plot_delta_vs_loss(ax: plt.Axes, curves: Sequence[DeltaCurve], loss: np.ndarray, *, k_min: int,
                       fits: Sequence | None = None, labels: Sequence[str] | None = None,
                       colors: Sequence[str] | None = None) -> None:
    """Δ_k against L_k(w*) (``loss``, aligned with the curves' k) for k ≥ ``k_min``, on linear axes.

    The fitted lines (:class:`~hesslib.estimators.LinearFit`, one per curve) are drawn when given.
    """
    for i, curve in enumerate(curves):
        color = colors[i] if colors is not None else f"C{i}"
        label = labels[i] if labels is not None else curve.label
        keep = curve.k >= k_min
        if fits is not None:
            fit = fits[i]
            x = np.linspace(loss[keep].min(), loss[keep].max(), 50)  # 50 points: straight on any axis scale
            label = f"{label}: slope {fit.slope:.3g}, $R^2$ = {fit.r2:.2f}"
            ax.plot(x, fit.slope * x + fit.intercept, color=color, lw=1.4)
        ax.scatter(loss[keep], curve.delta[keep], s=12, color=color, alpha=0.7, lw=0, label=label)
    ax.xaxis.set_major_locator(plt.MaxNLocator(4))  # long tick labels of a narrow loss range must not overlap
    ax.set_xlabel(r"$L_k(w^*)$ (mean cross-entropy over the first k batches, nats)")
    ax.set_ylabel(r"$\Delta_k$")


# ---- notebook 06: Δ-sufficient sample size -------------------------------------------------------------------
def plot_sample_size_vs_tolerance(ax: plt.Axes, curves: Sequence[DeltaCurve], tolerances: np.ndarray, *,
                                  labels: Sequence[str] | None = None, colors: Sequence[str] | None = None,
                                  linestyles: Sequence[str] | None = None) -> None:
    """K(tol) (:func:`~hesslib.estimators.sample_size_curve`) against the tolerance on a log x axis.

    One step line per curve; curves with a standard error get a band between K of Δ − 2 s.e. and of
    Δ + 2 s.e. Tolerances where Δ never settles are left blank.
    """
    from .estimators import sample_size_curve

    tolerances = np.asarray(tolerances, dtype=float)
    for i, curve in enumerate(curves):
        color = colors[i] if colors is not None else f"C{i}"
        label = labels[i] if labels is not None else curve.label
        ls = linestyles[i] if linestyles is not None else "-"
        ax.step(tolerances, sample_size_curve(curve, tolerances), where="post", color=color, ls=ls, lw=1.5,
                label=label)
        if np.any(curve.stderr > 0):
            low, high = (sample_size_curve(curve, tolerances, z=z) for z in (-2.0, 2.0))
            high = np.where(np.isnan(high), curve.k[-1] + 1, high)  # Δ + 2 s.e. never settles: K > N − 1
            ax.fill_between(tolerances, low, high, step="post", color=color, alpha=0.2, lw=0)
    ax.set_xscale("log")
    ax.set_xlabel(r"tolerance $\Delta$")
    ax.set_ylabel(r"Δ-sufficient sample size $K$ (batches)")


def plot_tolerance_marks(ax: plt.Axes, curve: DeltaCurve, tolerances: Sequence[float], *,
                         colors: Sequence[str] | None = None, envelope: bool = True) -> None:
    """Mark each tolerance and its K on a Δ_k plot.

    Draws a horizontal line at each tolerance, a marker at (K, Δ_K) where the curve settles below it for good,
    and (``envelope``) the running maximum from the right max_{k' ≥ k} Δ_{k'} that decides K.
    """
    from .estimators import format_K, settling_envelope, sufficient_sample_size

    if envelope:
        ax.plot(curve.k, settling_envelope(curve), color="black", lw=1.0, ls="--",
                label=r"settling envelope: max of $\Delta_{k'}$ over $k' \geq k$")
    for i, tol in enumerate(tolerances):
        color = colors[i] if colors is not None else f"C{i + 1}"
        K = sufficient_sample_size(curve, float(tol))
        text = format_K(K, curve.num_batches) if K is None else f"K = {K}"
        ax.axhline(tol, color=color, lw=1.0, ls=":", label=f"Δ = {tol:g}: {text}")
        if K is not None:
            ax.plot([K], [curve.delta[list(curve.k).index(K)]], marker="o", ms=7, mfc="none", mew=1.8,
                    color=color, ls="none")
            ax.axvline(K, color=color, lw=0.8, ls=":", alpha=0.7)


def plot_table(ax: plt.Axes, header: Sequence[str], cells: Sequence[Sequence[str]], *, title: str | None = None,
               note: str | None = None, fontsize: float = 8.5) -> None:
    """A text table (e.g. :func:`~hesslib.sample_size.table_cells`) drawn on an axis with no frame, bold header.

    ``note`` (e.g. which rows were skipped and why) is printed in small type under the table.
    """
    ax.axis("off")
    table = ax.table(cellText=[list(c) for c in cells] or [["–"] * len(header)], colLabels=list(header),
                     loc="center", cellLoc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(fontsize)
    table.auto_set_column_width(list(range(len(header))))
    table.scale(1.0, 1.35)
    for (row, _), cell in table.get_celld().items():
        cell.set_edgecolor("0.75")
        if row == 0:
            cell.set_text_props(weight="bold")
            cell.set_facecolor("0.92")
    if title:
        ax.set_title(title)
    if note:
        ax.text(0.5, 0.0, note, transform=ax.transAxes, ha="center", va="top", fontsize=fontsize - 1, color="0.3")


def plot_online_history(ax: plt.Axes, ks: Sequence[int], deltas: Sequence[float], *, tol: float,
                        K: int | None, patience: int, color: str = "C3", label: str = "online rule") -> None:
    """The online rule's Δ_k estimates (markers joined by a line) on a log y axis, with its tolerance.

    When K is given, the ``patience`` estimates that confirmed it are shaded.
    """
    ax.plot(ks, deltas, marker="o", ms=4, lw=1.2, color=color, label=label)
    ax.axhline(tol, color="black", lw=1.0, ls=":", label=f"tolerance Δ = {tol:g}")
    if K is not None:
        ax.axvspan(K - 0.5, K + patience - 0.5, color=color, alpha=0.12, lw=0,
                   label=f"K = {K}: {patience} estimates in a row below Δ")
    ax.set_yscale("log")
    ax.set_xlabel("k (batches in the fixed order)")
    ax.set_ylabel(r"$\Delta_k$")


# ---- notebooks 00-03: sample images, rows of 3D surfaces -----------------------------------------------------
def plot_image_grid(fig: plt.Figure, images, labels, *, ncols: int = 8, title: str | None = None,
                    cmap: str = "gray") -> None:
    """The images (``images`` [n, 1, H, W] or [n, H, W]) in a grid of ``ncols`` columns on ``fig``.

    Each is titled with its label, with no ticks; a suptitle is added when ``title`` is given.
    """
    images = np.asarray(images)
    images = images[:, 0] if images.ndim == 4 else images
    labels = np.asarray(labels)
    nrows = -(-len(images) // ncols)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < len(images):
            ax.imshow(images[i], cmap=cmap, interpolation="nearest")
            ax.set_title(f"{labels[i]}", fontsize=9, pad=2)
    if title:
        fig.suptitle(title)


def plot_surface_row(fig: plt.Figure, axis: np.ndarray, panels: Sequence[dict]) -> list:
    """One row of 3D surfaces over the (θ_1, θ_2) grid ``axis``, each with a colour bar on its left.

    Each panel is a dict with ``Z`` [points, points], ``title``, ``zlabel`` (also the colour bar's label) and
    optional ``limits`` (vmin, vmax; default Z's own range), which fix both the z axis and the colour scale
    (pass the same limits to compare panels). Tick labels are plain numbers (no offset text, which collides
    with labels on 3D axes). Returns the 3D axes.
    """
    from matplotlib.ticker import FuncFormatter

    fmt = FuncFormatter(lambda value, _: f"{value:.3g}")
    grid = fig.add_gridspec(1, len(panels), wspace=0.45)
    axes = []
    for i, panel in enumerate(panels):
        ax = fig.add_subplot(grid[0, i], projection="3d")
        vmin, vmax = panel.get("limits") or (float(np.min(panel["Z"])), float(np.max(panel["Z"])))
        surf = plot_surface(ax, axis, panel["Z"], title=panel["title"], zlabel=panel["zlabel"], vmin=vmin, vmax=vmax)
        ax.zaxis.set_major_formatter(fmt)
        ax.zaxis.labelpad = 14
        bar = fig.colorbar(surf, ax=ax, shrink=0.6, pad=0.0, location="left", format=fmt)
        bar.set_label(panel["zlabel"])
        axes.append(ax)
    return axes


def plot_signed_log(ax: plt.Axes, values, *, label: str, color: str | None = None, marker: str = "o",
                    x=None) -> None:
    """|values| against ``x`` (default 1, 2, ...) on a log y axis, joined by a thin line.

    Positive values are filled markers, negative ones open markers, so a sign change stays visible on a log
    scale.
    """
    values = np.asarray(values, dtype=float)
    x = np.arange(1, len(values) + 1) if x is None else np.asarray(x)
    (line,) = ax.plot(x, np.abs(values), color=color, lw=0.8, alpha=0.6)
    color = line.get_color()
    neg = values < 0
    ax.plot(x[~neg], np.abs(values[~neg]), ls="none", marker=marker, color=color, ms=5, label=label)
    if neg.any():
        ax.plot(x[neg], np.abs(values[neg]), ls="none", marker=marker, mfc="none", color=color, ms=5,
                label=f"{label} (negative: |value|)")
    ax.set_yscale("log")


def label_log_ticks(ax, values, *, axis: str = "x", fmt: str = "{:g}") -> None:
    """Major ticks of a log axis exactly at ``values`` (e.g. the measured sizes), labelled with ``fmt``.

    Minor tick labels are removed, instead of matplotlib's crowded defaults. Works on secondary axes too.
    """
    from matplotlib.ticker import FixedFormatter, FixedLocator, NullFormatter

    target = ax.xaxis if axis == "x" else ax.yaxis
    values = [float(v) for v in values]
    target.set_major_locator(FixedLocator(values))
    target.set_major_formatter(FixedFormatter([fmt.format(v) for v in values]))
    target.set_minor_formatter(NullFormatter())


# ---- notebook 07: how certain is K ----------------------------------------------------------------------------
def plot_sample_size_intervals(ax: plt.Axes, distributions: Sequence, *, reference: int | None = None,
                               colors: Sequence[str] | None = None, level: float = 0.9) -> None:
    """K of each :class:`~hesslib.uncertainty.SampleSizeDistribution` as one row of the axis.

    Every replicate is a faint tick, the central ``level`` interval a bar and the median a dot; replicates that
    never settle are drawn at N and counted in the row's label. ``reference`` (the K of the fixed order, seed and
    θ) is a dashed vertical line.
    """
    for row, dist in enumerate(distributions):
        color = colors[row] if colors is not None else f"C{row}"
        N = dist.num_batches
        values = np.where(np.isnan(dist.K), N, dist.K)
        jitter = (np.arange(len(values)) % 7 - 3) * 0.04
        ax.plot(values, row + jitter, ls="none", marker="|", ms=6, color=color, alpha=0.25)
        low, high = dist.interval(level)
        low, high = (N if np.isnan(v) else v for v in (low, high))
        ax.plot([low, high], [row, row], color=color, lw=4, alpha=0.8, solid_capstyle="butt")
        median = N if np.isnan(dist.median) else dist.median
        ax.plot([median], [row], marker="o", ms=7, color="white", mec=color, mew=2)
    ax.set_yticks(range(len(distributions)))
    ax.set_yticklabels([f"{d.source}\n({len(d)}; never settles: {d.never_settles:.0%})" for d in distributions],
                       fontsize=8)
    if reference is not None:
        ax.axvline(reference, color="black", ls="--", lw=1)
    N = distributions[0].num_batches if distributions else 1
    ax.axvline(N, color="grey", lw=0.8, ls=":")
    ax.set_xlim(0, N + 2)
    ax.set_ylim(-0.6, len(distributions) - 0.4)
    ax.set_xlabel(f"K (batches; at {N}: never settles within the data)")
