"""hesslib: loss-landscape convergence in a Hessian low-dimensional space.

The modules follow the method: data -> models -> training -> operators / hessian (the loss Hessian as an
operator, per-batch projected curvature) -> eigen (top-D eigenpairs) -> subspace (w = w* + Pθ) -> estimators
(Δ_k by Monte Carlo and in closed form, K) -> diagnostics (why the quadratic model fails) -> uncertainty (K over
batch orders, θ draws, seeds) -> surfaces (2-D grids) -> experiment (cached pipeline) -> sample_size (the paper's
Table 1) and stopping (the online rule) -> parameters (checked before any work) -> plots, results and paper
(figures, findings in words, `make paper`).

``__all__`` lists what a user of the method calls; result types (``EigenResult``, ``ProjectedCurvature``, ...)
and helpers stay in their modules.
"""

__version__ = "0.3.4"

from .data import load_dataset  # noqa: E402
from .diagnostics import activation_switches, quadratic_slices, tail_share  # noqa: E402
from .eigen import rayleigh_quotients, running_mean_eigenpairs, spectrum_ratios, top_eigenpairs  # noqa: E402
from .estimators import (  # noqa: E402
    DeltaCurve,
    compare_to_reference,
    delta_control_variate,
    delta_fourth_order,
    delta_from_curvature,
    delta_from_losses,
    delta_monte_carlo,
    delta_ratio,
    delta_theory,
    delta_unperturbed,
    first_below,
    fit_against,
    format_K,
    gaussian_thetas,
    loglog_slope,
    loss_changes,
    order_average,
    prefix_means,
    sample_size_curve,
    sample_sizes,
    second_order_changes,
    sufficient_sample_size,
)
from .experiment import Experiment  # noqa: E402
from .hessian import Objective, curvature_spread, projected_hessians, projected_higher_derivatives  # noqa: E402
from .models import make_model  # noqa: E402
from .operators import DenseOperator, Operator  # noqa: E402
from .parameters import ParameterError, check_parameters  # noqa: E402
from .results import record, share, show_findings, times  # noqa: E402
from .sample_size import format_table, sample_size_table, table_cells  # noqa: E402
from .stopping import OnlineStopping, run_online_stopping  # noqa: E402
from .subspace import grid_thetas, random_directions, subspace_losses  # noqa: E402
from .surfaces import surface_change_curves, surface_limits, surfaces_at  # noqa: E402
from .training import learning_curve, train  # noqa: E402
from .uncertainty import (  # noqa: E402
    SampleSizeDistribution,
    delta_over_orders,
    sample_size_bootstrap,
    sample_size_distribution,
)

__all__ = [
    # data, models, training
    "load_dataset", "make_model", "train", "learning_curve",
    # the Hessian as an operator
    "Operator", "DenseOperator", "Objective", "projected_hessians", "projected_higher_derivatives",
    "curvature_spread",
    # its top eigenpairs
    "top_eigenpairs", "running_mean_eigenpairs", "rayleigh_quotients", "spectrum_ratios",
    # the subspace w = w* + Pθ
    "random_directions", "gaussian_thetas", "grid_thetas", "subspace_losses",
    # Δ_k: its pieces, Monte Carlo and closed forms
    "DeltaCurve", "prefix_means", "loss_changes", "delta_from_losses", "delta_monte_carlo", "delta_control_variate",
    "delta_from_curvature", "delta_fourth_order",
    "delta_theory", "delta_unperturbed", "order_average", "second_order_changes",
    # why the quadratic model fails: slices, activation switches, heavy tails
    "quadratic_slices", "activation_switches", "tail_share",
    # reading Δ_k curves: K, slopes, agreement
    "sufficient_sample_size", "sample_sizes", "sample_size_curve", "first_below", "format_K", "loglog_slope",
    "compare_to_reference", "delta_ratio", "fit_against",
    # how certain K is: batch orders, θ bootstrap, training seeds
    "delta_over_orders", "sample_size_distribution", "sample_size_bootstrap", "SampleSizeDistribution",
    # surfaces over a 2-D grid
    "surfaces_at", "surface_limits", "surface_change_curves",
    # the cached pipeline, the paper's Table 1 and the online rule
    "Experiment", "sample_size_table", "format_table", "table_cells", "OnlineStopping", "run_online_stopping",
    # the paper: parameters checked before any work, headline numbers and findings in words
    "check_parameters", "ParameterError", "record", "show_findings", "times", "share",
]
