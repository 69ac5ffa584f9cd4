"""The notebooks' parameters, checked before any work: types and ranges, with one clear error per bad value.

Every parameter a notebook declares in its ``parameters`` cell has a rule here (a test keeps it so). A
notebook's first code cell calls :func:`check_parameters` on its ``globals()`` and the ``make paper`` runner calls
it on every notebook's effective parameters before the first notebook starts, so ``-p sigma -1`` or
``-p samples 0`` fails within seconds with a :class:`ParameterError` that names the parameter, its value and the
allowed range, instead of running for minutes or failing deep inside with a message about tensor shapes.

A full dataset (``"mnist"``, ``"fashion-mnist"``) must have its IDX files in the data folder. Ranges that depend
on the configuration use the numbers it implies without loading or training anything:
n = min(limit, size of the dataset's train split), N = ceil(n / batch_size) batches, M = the model's parameter
count (built on the CPU, not trained). The same small checks (:func:`check_positive`, :func:`check_int`) are used
by the :class:`~hesslib.experiment.Experiment` methods on their own arguments.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .cache import project_root
from .data import DATASETS, DIGITS_TRAIN, idx_paths
from .models import ACTIVATIONS, MODELS, make_model, num_params

# size of the train split and the input shape (C, H, W) of each dataset, known without reading its files
TRAIN_SIZES = {"mnist5k": 5000, "digits": DIGITS_TRAIN, "mnist": 60000, "fashion-mnist": 60000}
IDX_DATASETS = ("mnist", "fashion-mnist")
DATA_ROOT = "<data root>"  # where check_parameters passes its data_root to the rules (not a parameter name)
INPUT_SHAPES = {"mnist5k": (1, 28, 28), "digits": (1, 8, 8), "mnist": (1, 28, 28), "fashion-mnist": (1, 28, 28)}


class ParameterError(ValueError):
    """A parameter outside its allowed range; the message names the parameter, its value and the range."""

    def __init__(self, name: str, value: Any, allowed: str):
        self.name, self.value, self.allowed = name, value, allowed
        super().__init__(f"parameter {name} = {value!r} is not allowed: {allowed}")


# ---- single-value checks (also used by Experiment on its own arguments) ---------------------------------------
def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_int(name: str, value: Any, low: int | None = None, high: int | None = None, why: str = "") -> int:
    """``value`` if it is an int in [low, high] (either end may be open), else :class:`ParameterError`.

    ``why`` (e.g. "N = 78 batches") is appended to the message in parentheses.
    """
    if not _is_int(value) or (low is not None and value < low) or (high is not None and value > high):
        if low is not None and high is not None:
            allowed = f"an integer in [{low}, {high}]"
        elif low is not None:
            allowed = f"an integer ≥ {low}"
        else:
            allowed = "an integer" if high is None else f"an integer ≤ {high}"
        raise ParameterError(name, value, allowed + (f" ({why})" if why else ""))
    return value


def check_positive(name: str, value: Any) -> float:
    """``value`` if it is a finite number > 0, else :class:`ParameterError`."""
    if not _is_number(value) or value <= 0:
        raise ParameterError(name, value, "a finite number > 0")
    return float(value)


def check_device(name: str, value: Any) -> Any:
    """``value`` if it names a torch device this machine has (a CUDA one only where CUDA is available)."""
    import torch

    try:
        device = torch.device(value)
    except (RuntimeError, TypeError):
        raise ParameterError(name, value, "a torch device such as 'cpu', 'cuda' or 'cuda:1'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ParameterError(name, value, "'cpu' here: this machine has no CUDA device")
    return value


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices``, else :class:`ParameterError`."""
    if value not in choices:
        raise ParameterError(name, value, f"one of {tuple(choices)}")
    return value


def _check_list(name: str, value: Any, item: Callable[[str, Any], Any], what: str, *, unique: bool = False) -> list:
    if not isinstance(value, list | tuple) or not value:
        raise ParameterError(name, value, f"a non-empty list of {what}")
    for v in value:
        try:
            item(name, v)
        except ParameterError:
            raise ParameterError(name, value, f"a non-empty list of {what}") from None
    if unique and len(set(value)) != len(value):
        raise ParameterError(name, value, f"a list of distinct {what}")
    return list(value)


# ---- what a configuration implies -------------------------------------------------------------------------------
def _samples(params: Mapping[str, Any]) -> int:
    """n: the samples the analysis uses (the first ``limit`` of the dataset's train split)."""
    size = TRAIN_SIZES[params.get("dataset", "mnist5k")]
    limit = params.get("limit")
    return size if limit is None else min(limit, size)


def _batches(params: Mapping[str, Any]) -> int:
    """N = ceil(n / B)."""
    return -(-_samples(params) // params.get("batch_size", 64))


def model_size(params: Mapping[str, Any], model: str | None = None) -> int:
    """M of the model the parameters describe (built on the CPU, not trained)."""
    net = make_model(model or params.get("model", "mlp"), INPUT_SHAPES[params.get("dataset", "mnist5k")],
                     hidden=params.get("hidden", (256, 256)), channels=params.get("channels", (8, 16)))
    return num_params(net)


# ---- the rules: one per parameter name ----------------------------------------------------------------------------
def _positive_int_list(name, value, params):
    return _check_list(name, value, lambda n, v: check_int(n, v, 1), "integers ≥ 1")


def _seed_list(name, value, params):
    return _check_list(name, value, lambda n, v: check_int(n, v, 0), "integers ≥ 0 (seeds)", unique=True)


def _positive_list(name, value, params):
    return _check_list(name, value, check_positive, "finite numbers > 0")


def _dataset(name, value, params):
    check_choice(name, value, DATASETS)
    if value in IDX_DATASETS:  # the full datasets are read from files the user provides: are they there?
        root = params.get(DATA_ROOT, project_root() / "data")
        missing = [p for p in idx_paths(value, root, "train")
                   if not (p.exists() or p.with_name(p.name + ".gz").exists())]
        if missing:
            raise ParameterError(name, value, f"a dataset whose files exist, but {missing[0]}[.gz] is missing (run "
                                              f"`python -m hesslib.data download {value}` or copy torchvision's "
                                              f"raw files into {missing[0].parent}/)")
    return value


def _dataset_list(name, value, params):
    return _check_list(name, value, lambda n, v: check_choice(n, v, DATASETS), f"names from {DATASETS}")


def _model_list(name, value, params):
    return _check_list(name, value, lambda n, v: check_choice(n, v, MODELS), f"names from {MODELS}", unique=True)


def _limit(name, value, params):
    if value is None:
        return None
    check_int(name, value, 1)
    batch = params.get("batch_size", 64)
    if min(value, TRAIN_SIZES[params.get("dataset", "mnist5k")]) < 2 * batch:
        raise ParameterError(name, value, f"at least 2 batches: limit ≥ 2·batch_size = {2 * batch} "
                                          f"(batch_size = {batch})")
    return value


def _batch_size(name, value, params):
    dataset = params.get("dataset", "mnist5k")
    size = TRAIN_SIZES[dataset]
    return check_int(name, value, 1, size // 2, f"at least 2 batches of the {size} samples of {dataset}")


def _subspace_dimension(name, value, params):
    M = model_size(params)
    return check_int(name, value, 1, M - 1, f"D < M = {M:,}, the model's parameter count")


def _dimension_list(hessian: bool):
    def rule(name, value, params):
        M = model_size(params)
        high = M - 1 if hessian else M
        return _check_list(name, value, lambda n, v: check_int(n, v, 1, high),
                           f"integers in [1, {high}] (M = {M:,} parameters)")
    return rule


def _k_pair(name, value, params):
    N = _batches(params)
    why = f"1 ≤ small_k < large_k < N = {N} batches"
    if name == "small_k":
        return check_int(name, value, 1, N - 2, why)
    return check_int(name, value, params.get("small_k", 1) + 1, N - 1, why)


def _k_start(name, value, params):
    N = _batches(params)
    return check_int(name, value, 1, N - 2, f"at least two k of N − 1 = {N - 1} left for the fit")


def _training_sizes(name, value, params):
    holdout = params.get("holdout", 0)
    high = TRAIN_SIZES[params.get("dataset", "mnist5k")] - holdout
    batch = params.get("batch_size", 64)
    return _check_list(name, value, lambda n, v: check_int(n, v, 2 * batch, high),
                       f"integers in [{2 * batch}, {high}] (2 batches … the train split less the holdout)",
                       unique=True)


def _holdout(name, value, params):
    return check_int(name, value, 0, TRAIN_SIZES[params.get("dataset", "mnist5k")] - 1)


def _tolerance_range(name, value, params):
    ok = (isinstance(value, list | tuple) and len(value) == 2 and all(_is_number(v) for v in value)
          and 0 < value[0] < value[1])
    if not ok:
        raise ParameterError(name, value, "[low, high] with 0 < low < high")
    return list(value)


def _fraction(name, value, params):
    if not _is_number(value) or not 0 < value < 1:
        raise ParameterError(name, value, "a number in (0, 1)")
    return float(value)


def _bool(name, value, params):
    if not isinstance(value, bool):
        raise ParameterError(name, value, "true or false")
    return value


def _folder(optional: bool):
    def rule(name, value, params):
        if (value is None and optional) or (isinstance(value, str) and value):
            return value
        raise ParameterError(name, value, "a folder path" + (" or null (no caching)" if optional else ""))
    return rule


def _device(name, value, params):
    return check_device(name, value)


def _int_at_least(low: int):
    return lambda name, value, params: check_int(name, value, low)


def _positive(name, value, params):
    return check_positive(name, value)


def _activation(name, value, params):
    return check_choice(name, value, tuple(ACTIVATIONS))


RULES: dict[str, Callable[[str, Any, Mapping[str, Any]], Any]] = {
    # the configuration (its order matters: later rules read earlier, already checked values)
    "dataset": _dataset,
    "model": lambda name, value, params: check_choice(name, value, MODELS),
    "hidden": _positive_int_list,
    "channels": _positive_int_list,
    "batch_size": _batch_size,
    "limit": _limit,
    "holdout": _holdout,
    "activation": _activation,
    "epochs": _int_at_least(1),
    "lr": _positive,
    "train_batch_size": _int_at_least(1),
    "seed": _int_at_least(0),
    "device": _device,
    "output_dir": _folder(optional=False),
    "cache_dir": _folder(optional=True),
    # subspaces
    "D": _subspace_dimension,
    "top_eigs": _subspace_dimension,
    "hessian_D_values": _dimension_list(hessian=True),
    "D_values": _dimension_list(hessian=False),
    # σ and Monte Carlo
    "sigma": _positive,
    "sigmas": _positive_list,
    "random_sigmas": _positive_list,
    "samples": _int_at_least(1),
    "sweep_samples": _int_at_least(1),
    "table_samples": _int_at_least(1),
    "switch_samples": _int_at_least(1),
    # k and the curves read from Δ_k
    "small_k": _k_pair,
    "large_k": _k_pair,
    "slope_k_min": _k_start,
    "k_fit_min": _k_start,
    "smoothing_window": _int_at_least(1),
    "orders": _int_at_least(1),
    "bootstrap_resamples": _int_at_least(1),
    # surfaces and slices
    "grid_points": _int_at_least(2),
    "grid_extent": _positive,
    "slice_extent": _positive,
    "slice_points": _int_at_least(1),
    # tolerances and K
    "tolerances": _positive_list,
    "relative_tolerances": _positive_list,
    "tolerance_range": _tolerance_range,
    # learning curves, seeds, models, datasets
    "sizes": _training_sizes,
    "K_sizes": _training_sizes,
    "spectrum_seeds": _seed_list,
    "training_seeds": _seed_list,
    "models": _model_list,
    "full_datasets": _dataset_list,
    "full_limit": lambda name, value, params: check_int(name, value, 2 * params.get("batch_size", 64)),
    # the online rule
    "online_max_batches": lambda name, value, params: check_int(name, value, 2, _batches(params),
                                                                 f"N = {_batches(params)} batches"),
    "online_steps_per_batch": _int_at_least(1),
    "online_sigma": _positive,
    "online_tol": _positive,
    "online_patience": _int_at_least(1),
    "online_seeds": _seed_list,
    "online_mc_samples": _int_at_least(2),
    # why the quadratic model fails
    "smooth_activation": _activation,
    "short_epochs": _int_at_least(1),
    "fourth_order": _bool,
    "tail_fraction": _fraction,
}
PARAMETER_NAMES = tuple(RULES)


def check_parameters(params: Mapping[str, Any], *, data_root: str | Path | None = None) -> dict[str, Any]:
    """Check every known notebook parameter in ``params`` (e.g. a notebook's ``globals()``) before any work.

    Each name of :data:`RULES` present in ``params`` is checked, in the order of :data:`RULES` (the configuration
    first, so ranges that depend on n, N or M are computed from values already known to be valid); other names
    are ignored. Nothing is loaded or trained.

    Args:
        params: parameter names mapped to their values.
        data_root: the data folder, where the IDX files of ``"mnist"`` / ``"fashion-mnist"`` must exist (default:
            the project's ``data/``).

    Returns:
        The checked parameters (name → value), in the order of :data:`RULES`.

    Raises:
        ParameterError: for the first bad value, naming the parameter, its value and the allowed range.

    Example:
        >>> check_parameters({"dataset": "digits", "limit": 1000, "batch_size": 64, "sigma": 1.0})["limit"]
        1000
        >>> check_parameters({"sigma": -1})
        Traceback (most recent call last):
        ...
        hesslib.parameters.ParameterError: parameter sigma = -1 is not allowed: a finite number > 0
    """
    checked: dict[str, Any] = {}
    context = {} if data_root is None else {DATA_ROOT: Path(data_root)}
    for name, rule in RULES.items():
        if name in params:
            rule(name, params[name], context | checked)
            checked[name] = params[name]
    return checked
