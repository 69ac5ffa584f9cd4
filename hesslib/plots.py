"""Paper figures: one style, deterministic files (no timestamps), and Δ_k curves with standard-error bands."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from .estimators import DeltaCurve

FIGURE_LOG_ENV = "HESSLIB_FIGURE_LOG"  # set by `make paper` to record which notebook wrote which figure
STYLE = {
    "figure.dpi": 110,
    "savefig.dpi": 150,
    "font.size": 10,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.frameon": False,
    "svg.hashsalt": "hesslib",
}


def set_style() -> None:
    """Apply the paper's matplotlib style."""
    plt.rcParams.update(STYLE)


def save_figure(fig: plt.Figure, name: str, folder: str | Path = "figures") -> list[Path]:
    """Write ``folder/name.pdf`` and ``folder/name.png`` with no timestamps or version stamps (byte-identical on
    re-runs), and record them for the figure manifest when ``$HESSLIB_FIGURE_LOG`` is set."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext, metadata in (("pdf", {"CreationDate": None, "ModDate": None, "Producer": None, "Creator": None}),
                          ("png", {"Software": None})):
        path = folder / f"{name}.{ext}"
        tmp = path.with_name(f".{path.name}.tmp")
        fig.savefig(tmp, format=ext, metadata=metadata, bbox_inches="tight")
        os.replace(tmp, path)
        paths.append(path)
    log = os.environ.get(FIGURE_LOG_ENV)
    if log:
        with open(log, "a") as fh:
            fh.write(json.dumps({"name": name, "files": [str(p.resolve()) for p in paths]}) + "\n")
    return paths


def plot_delta(ax: plt.Axes, curves: Sequence[DeltaCurve], *, times_k2: bool = False,
               labels: Sequence[str] | None = None, colors: Sequence[str] | None = None) -> None:
    """Δ_k (or Δ_k·k² with ``times_k2``) against k on log-log axes, with ±2 standard-error bands where known."""
    for i, curve in enumerate(curves):
        scale = curve.k.astype(float) ** 2 if times_k2 else 1.0
        label = labels[i] if labels else curve.label
        color = colors[i] if colors else None
        (line,) = ax.plot(curve.k, curve.delta * scale, label=label, color=color, lw=1.4)
        if np.any(curve.stderr > 0):
            low = np.clip(curve.delta - 2 * curve.stderr, curve.delta * 1e-3, None) * scale
            ax.fill_between(curve.k, low, (curve.delta + 2 * curve.stderr) * scale, color=line.get_color(),
                            alpha=0.2, lw=0)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("k (batches in the fixed order)")
    ax.set_ylabel(r"$\Delta_k \cdot k^2$" if times_k2 else r"$\Delta_k = E_\theta[(L_{k+1}-L_k)^2]$")


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
