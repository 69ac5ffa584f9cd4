"""hesslib: loss-landscape convergence in a Hessian low-dimensional space.

The modules follow the method: data -> models -> training -> Hessian -> subspace -> estimators -> plots.
"""

__version__ = "0.1.0"

from .data import DATASETS, Dataset, load_dataset, read_idx  # noqa: E402
from .eigen import DenseOperator, EigenResult, top_eigenpairs  # noqa: E402
from .estimators import (  # noqa: E402
    Agreement,
    DeltaCurve,
    LinearFit,
    compare_to_reference,
    delta_from_losses,
    delta_monte_carlo,
    delta_ratio,
    delta_theory,
    delta_unperturbed,
    fit_against,
    gaussian_thetas,
    loglog_slope,
    moving_average,
    prefix_means,
    sufficient_sample_size,
    theory_from_curvature,
)
from .experiment import Experiment, project_root, surfaces_at  # noqa: E402
from .hessian import Objective, ProjectedCurvature, projected_hessians  # noqa: E402
from .models import MODELS, make_model, num_params  # noqa: E402
from .stopping import OnlineResult, OnlineStopping, run_online_stopping  # noqa: E402
from .subspace import grid_thetas, random_directions, subspace_losses  # noqa: E402
from .training import TrainRecord, evaluate, train  # noqa: E402

__all__ = [
    "DATASETS", "Dataset", "load_dataset", "read_idx",
    "MODELS", "make_model", "num_params",
    "TrainRecord", "evaluate", "train",
    "Objective", "ProjectedCurvature", "projected_hessians",
    "DenseOperator", "EigenResult", "top_eigenpairs",
    "grid_thetas", "random_directions", "subspace_losses",
    "Experiment", "project_root", "surfaces_at", "OnlineResult", "OnlineStopping", "run_online_stopping",
    "DeltaCurve", "delta_from_losses", "delta_monte_carlo", "delta_theory", "gaussian_thetas", "loglog_slope",
    "moving_average", "sufficient_sample_size", "theory_from_curvature",
    "Agreement", "LinearFit", "compare_to_reference", "delta_ratio", "delta_unperturbed", "fit_against",
    "prefix_means",
]
