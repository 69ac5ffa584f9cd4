"""Experiment: the notebooks' cached pipeline, its set-up from parameters and its cache keys."""

import numpy as np
import pytest
import torch

import hesslib.experiment
from hesslib import Experiment, delta_monte_carlo, delta_theory
from hesslib.cache import cached, config_key, project_root
from hesslib.estimators import delta_from_eigenvalues

TINY = dict(dataset="digits", limit=192, model="mlp", hidden=(8,), epochs=1, batch_size=64, progress=False)


@pytest.fixture(scope="module")
def exp(tmp_path_factory):
    return Experiment(**TINY, cache_dir=tmp_path_factory.mktemp("cache"))


def _files(exp, namespace):
    return sorted(p.name for p in exp.cache_dir.glob(f"{namespace}-*.pt"))


def test_monte_carlo_and_theory_equal_the_estimators_on_the_same_subspace(exp):
    P = exp.basis("hessian", 2)
    mc = exp.monte_carlo("hessian", 2, sigma=0.5, samples=8, mc_seed=3)
    direct = delta_monte_carlo(exp.objective, P, sigma=0.5, samples=8, seed=3)
    np.testing.assert_allclose(mc.delta, direct.delta, rtol=1e-6)
    assert mc.meta["directions"] == "hessian" and mc.meta["seed"] == 3 and mc.meta["samples"] == 8
    theory = exp.theory("random", 2, sigma=0.5, formula="paper_subspace", direction_seed=4)
    P_random = exp.basis("random", 2, direction_seed=4)
    np.testing.assert_allclose(theory.delta, delta_theory(exp.objective, P_random, sigma=0.5,
                                                          formula="paper_subspace").delta, rtol=1e-6)
    assert theory.label == "paper's formula, fixed subspace" and theory.meta["direction_seed"] == 4
    # the paper's own formula: the cached top-2 eigenvalues of every H_k, whatever the directions
    cached = exp.paper_eigenvalues(2)
    assert cached["eigenvalues"].shape == (exp.objective.num_batches, 2) and cached["hvps"] > 0
    paper = exp.theory("hessian", 2, sigma=0.5, formula="paper")
    np.testing.assert_array_equal(paper.delta, delta_from_eigenvalues(cached["eigenvalues"], 0.5).delta)
    np.testing.assert_array_equal(exp.theory("random", 2, sigma=0.5, formula="paper").delta, paper.delta)


def test_cache_hits_recompute_nothing_and_keys_separate_every_setting(exp, monkeypatch):
    first = exp.loss_matrix("random", 2, sigma=1.0, samples=4, direction_seed=1, mc_seed=2)
    before = _files(exp, "losses")

    def fail(*args, **kwargs):
        raise AssertionError("a cache hit must not evaluate losses")

    with monkeypatch.context() as patch:
        patch.setattr(hesslib.experiment, "subspace_losses", fail)
        assert torch.equal(exp.loss_matrix("random", 2, sigma=1.0, samples=4, direction_seed=1, mc_seed=2), first)
    # the Monte Carlo seed and the direction seed are separate keys with separate effects
    other_theta = exp.loss_matrix("random", 2, sigma=1.0, samples=4, direction_seed=1, mc_seed=3)
    other_P = exp.loss_matrix("random", 2, sigma=1.0, samples=4, direction_seed=5, mc_seed=2)
    assert not torch.equal(other_theta, first) and not torch.equal(other_P, first)
    assert len(_files(exp, "losses")) == len(before) + 2
    # Hessian directions have no direction seed: any value reads the same cache entry
    exp.curvature("hessian", 2)
    count = len(_files(exp, "curvature"))
    with monkeypatch.context() as patch:
        patch.setattr(hesslib.experiment, "projected_hessians", fail)
        exp.curvature("hessian", 2, direction_seed=9)
    assert len(_files(exp, "curvature")) == count


def test_bad_directions_name_the_parameter(exp):
    with pytest.raises(ValueError, match="parameter directions = 'sideways' is not allowed: one of"):
        exp.basis("sideways", 2)
    with pytest.raises(ValueError, match="parameter directions = 'sideways'"):
        exp.monte_carlo("sideways", 2, sigma=1.0, samples=2)


@pytest.mark.parametrize("call, message", [
    (lambda e: e.monte_carlo("hessian", 2, sigma=-1.0, samples=4), "parameter sigma = -1.0 .* > 0"),
    (lambda e: e.loss_matrix("random", 2, sigma=0.0, samples=4), "parameter sigma = 0.0"),
    (lambda e: e.monte_carlo("hessian", 2, sigma=1.0, samples=0), r"parameter samples = 0 .* ≥ 1"),
    (lambda e: e.theory("hessian", 2, sigma=float("nan")), "parameter sigma = nan"),
    (lambda e: e.basis("hessian", 0), r"parameter D = 0 .* \[1, "),
    (lambda e: e.order_average("hessian", e.objective.num_params, sigma=1.0, samples=4), "parameter D = "),
    (lambda e: e.activation_switches("hessian", 2, sigma=1.0, samples=0), "parameter samples = 0"),
    (lambda e: e.slices("hessian", 2, extent=-1.0, points=3), "parameter extent = -1.0"),
])
def test_methods_check_their_arguments_before_any_work(exp, monkeypatch, call, message):
    def fail(*args, **kwargs):
        raise AssertionError("work started before the arguments were checked")

    for name in ("subspace_losses", "projected_hessians", "top_eigenpairs", "activation_switches"):
        monkeypatch.setattr(hesslib.experiment, name, fail)
    with pytest.raises(hesslib.ParameterError, match=message):
        call(exp)


@pytest.mark.parametrize("field, value, message", [
    ("dataset", "mnits", "parameter dataset = 'mnits' is not allowed: one of"),
    ("batch_size", 10_000, r"batch_size = 10000 .*\[1, 750\] \(at least 2 batches of the 1500 samples"),
    ("epochs", 0, "parameter epochs = 0"),
    ("activation", "swish", "parameter activation = 'swish'"),
])
def test_experiment_checks_its_settings_before_training(tmp_path, monkeypatch, field, value, message):
    monkeypatch.setattr(hesslib.experiment, "train", lambda *a, **k: pytest.fail("trained before checking"))
    with pytest.raises(hesslib.ParameterError, match=message):
        hesslib.Experiment(**{**TINY, field: value}, cache_dir=tmp_path)


def test_from_parameters_uses_known_names_and_the_project_root(tmp_path, monkeypatch):
    params = dict(TINY, cache_dir=str(tmp_path / "cache"), sigma=0.3, output_dir="figures", D=2)
    monkeypatch.chdir(project_root() / "notebooks")  # as in JupyterLab
    exp = Experiment.from_parameters(params)
    assert exp.cache_dir == tmp_path / "cache" and exp.root == project_root() / "data"
    assert (exp.dataset, exp.limit, exp.hidden, exp.batch_size, exp.progress) == ("digits", 192, (8,), 64, False)
    monkeypatch.setattr(Experiment, "__post_init__", lambda self: None)  # resolve paths only: train nothing
    relative = Experiment.from_parameters(dict(params, cache_dir="data/cache-x"), progress=True)
    assert relative.cache_dir == project_root() / "data/cache-x" and relative.progress


def test_from_parameters_overrides_and_holdout(monkeypatch):
    monkeypatch.setattr(Experiment, "__post_init__", lambda self: None)  # the fields only: train nothing
    params = dict(TINY, holdout=500, activation="gelu")  # a notebook's `holdout` belongs to its learning curve
    exp = Experiment.from_parameters(params)
    assert exp.holdout == 0 and exp.activation == "gelu"
    exp = Experiment.from_parameters(params, limit=96, holdout=200, activation="tanh")
    assert (exp.limit, exp.holdout, exp.activation) == (96, 200, "tanh")
    with pytest.raises(TypeError, match="sigmaa"):
        Experiment.from_parameters(params, sigmaa=2)


def test_activation_and_holdout_are_part_of_every_key(tmp_path):
    base = Experiment(**TINY, cache_dir=tmp_path)
    smooth = Experiment(**{**TINY, "activation": "tanh"}, cache_dir=tmp_path)
    held = Experiment(**{**TINY, "holdout": 100}, cache_dir=tmp_path)
    assert isinstance(smooth.net[2], torch.nn.Tanh) and held.record.test_accuracy is not None
    keys = {config_key(e.config) for e in (base, smooth, held)}
    assert len(keys) == 3 and len(list(tmp_path.glob("train-*.pt"))) == 3


def test_config_key_is_stable_and_depends_on_every_setting(tmp_path):
    config = {"a": 1, "b": [1, 2]}
    assert config_key(config) == config_key({"b": [1, 2], "a": 1}) and len(config_key(config)) == 16
    assert config_key(config) != config_key({"a": 1, "b": [2, 1]})
    calls = []
    value = cached("thing", config, lambda: calls.append(1) or 42, cache_dir=tmp_path)
    assert value == 42 and cached("thing", config, lambda: calls.append(1) or 0, cache_dir=tmp_path) == 42
    assert cached("other", config, lambda: calls.append(1) or 7, cache_dir=tmp_path) == 7 and len(calls) == 2


def test_control_variate_rereads_the_cached_losses_and_curvature(exp, monkeypatch):
    plain = exp.monte_carlo("hessian", 2, sigma=0.3, samples=64, mc_seed=5)
    monkeypatch.setattr(hesslib.experiment, "subspace_losses", lambda *a, **k: pytest.fail("recomputed the losses"))
    cv = exp.monte_carlo("hessian", 2, sigma=0.3, samples=64, mc_seed=5, control_variate=True)
    direct = delta_monte_carlo(exp.objective, exp.basis("hessian", 2), sigma=0.3, samples=64, seed=5,
                               control_variate=True)
    np.testing.assert_allclose(cv.delta, direct.delta, rtol=1e-5)
    assert cv.label == "Monte Carlo, control variate" and np.all(np.abs(cv.delta - plain.delta) < 5 * plain.stderr)


def test_cached_values_are_moved_to_the_objective_device():
    """Eigenvectors and curvature come back from the cache on the CPU; on a GPU run they must be on its device
    (checked with the 'meta' device, which exists without a GPU)."""
    from hesslib.eigen import EigenResult
    from hesslib.experiment import _to_device
    from hesslib.hessian import HigherDerivatives, ProjectedCurvature

    eig = EigenResult(torch.ones(2), torch.ones(5, 2), torch.zeros(2), 7, True, "lanczos")
    moved = _to_device({"eig": eig, "parts": [ProjectedCurvature(torch.ones(3), torch.ones(3, 2), torch.ones(3, 2, 2))],
                        "higher": HigherDerivatives(torch.ones(3, 2), torch.ones(3)), "seconds": 1.5},
                       torch.device("meta"))
    assert moved["eig"].eigenvectors.is_meta and moved["eig"].num_hvps == 7 and moved["eig"].method == "lanczos"
    assert all(t.is_meta for t in (moved["parts"][0].hessians, moved["higher"].third)) and moved["seconds"] == 1.5
    from hesslib.hessian import ParameterBlock

    block = _to_device((ParameterBlock("w", (2, 2), slice(0, 4)), torch.ones(1)), torch.device("meta"))  # NamedTuple
    assert type(block[0]) is ParameterBlock and block[0].slice == slice(0, 4) and block[1].is_meta
    model = _to_device({"model": torch.nn.Linear(2, 1)}, torch.device("meta"))["model"]  # e.g. OnlineResult.model
    assert next(model.parameters()).is_meta


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"))])
def test_results_are_on_the_cpu_except_eigenpairs_and_bases(device, tmp_path):
    """What a notebook reads with NumPy or matplotlib must be on the CPU, computed (cold) or cached (warm)."""
    for run in ("cold", "warm"):
        exp = Experiment(**TINY, device=device, cache_dir=tmp_path)
        on = exp.objective.device.type
        assert exp.eigenpairs(2).eigenvectors.device.type == on and exp.basis("random", 2).device.type == on, run
        values = [exp.curvature("hessian", 2), exp.higher_derivatives("hessian", 2)["higher"],
                  exp.loss_matrix("hessian", 2, sigma=0.5, samples=4), exp.paper_eigenvalues(2)["eigenvalues"],
                  exp.slices("hessian", 2, extent=0.5, points=2),
                  exp.activation_switches("hessian", 2, sigma=0.5, samples=2)[1],
                  exp.surface("hessian", extent=0.5, points=2)[1]]
        tensors = _tensors_in(values)
        assert tensors and all(t.device.type == "cpu" for t in tensors), run
        online = exp.online_stopping(seed=0, D=2, max_batches=3, steps_per_batch=1)  # trains on the device
        assert online.ks == [1, 2] and next(online.model.parameters()).device.type == "cpu", run


def _tensors_in(value) -> list:
    """Every tensor in ``value``: directly, in a dataclass, a dict, a list or a tuple."""
    if isinstance(value, torch.Tensor):
        return [value]
    if hasattr(value, "__dataclass_fields__"):
        value = [getattr(value, name) for name in value.__dataclass_fields__]
    elif isinstance(value, dict):
        value = list(value.values())
    elif not isinstance(value, list | tuple):
        return []
    return [t for v in value for t in _tensors_in(v)]
