import numpy as np
import pytest
import torch

from hesslib import Objective, delta_theory, load_dataset, make_model
from hesslib.stopping import OnlineStopping, run_online_stopping


def test_online_monitor_matches_offline_second_order_and_settles():
    data = load_dataset("digits", limit=256)
    torch.manual_seed(0)
    model = make_model("mlp", data.input_shape, hidden=(8,)).eval()
    monitor = OnlineStopping(D=2, sigma=0.1, tol=1e9, patience=2)
    with pytest.raises(ValueError, match="at least 2 batches"):
        monitor.update(model)
    for i in range(4):
        monitor.add_batch(data.X[i * 64:(i + 1) * 64], data.y[i * 64:(i + 1) * 64])
        if i:
            assert monitor.update(model) > 0
    assert monitor.ks == [1, 2, 3] and monitor.settled and monitor.K == 1
    # the newest estimate is the offline second-order Δ_3 over the same 4 batches and subspace
    offline = delta_theory(Objective(model, data.X, data.y, batch_size=64), monitor.basis, sigma=0.1)
    assert monitor.deltas[-1] == pytest.approx(offline.delta[-1], rel=1e-5)
    with pytest.raises(ValueError, match="every batch must have 64 samples"):
        monitor.add_batch(data.X[:10], data.y[:10])


def test_K_is_first_k_of_final_run_below_tol():
    monitor = OnlineStopping(tol=1.0, patience=2)
    monitor.ks, monitor.deltas = [1, 2, 3, 4, 5], [5.0, 0.5, 3.0, 0.4, 0.3]
    assert monitor.settled and monitor.K == 4
    monitor.deltas = [5.0, 0.5, 3.0, 0.4, 3.0]
    assert not monitor.settled and monitor.K is None


def test_run_online_stopping_on_digits():
    data = load_dataset("digits", limit=640)
    result = run_online_stopping(data, hidden=(16,), D=2, sigma=0.05, tol=1e-2, patience=2, steps_per_batch=5,
                                 progress=False)
    assert result.ks == list(range(1, len(result.ks) + 1)) and len(result.deltas) == len(result.ks)
    assert np.all(np.isfinite(result.deltas)) and np.all(np.asarray(result.deltas) > 0)
    below = np.asarray(result.deltas) < 1e-2
    if result.K is None:  # ran through all 9 full batches (k = 1..9) without 2 estimates in a row below tol
        assert result.ks[-1] == 9 and not below[-2:].all()
    else:  # stopped at the first k that completed a run of 2 estimates below tol; K is that run's first k
        assert below[-2:].all() and (len(below) == 2 or not below[-3])
        assert result.K == result.ks[-2] and result.loss_at_K > 0
    assert result.hvps > 0 and not result.model.training


@pytest.mark.parametrize("kwargs, match", [(dict(sigma=0), "sigma, tol and eig_tol must be > 0"),
                                           (dict(tol=-1), "sigma, tol and eig_tol must be > 0"),
                                           (dict(D=0), "D and patience must be integers >= 1"),
                                           (dict(patience=0), "D and patience must be integers >= 1"),
                                           (dict(formula="x"), "formula must be one of")])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        OnlineStopping(**kwargs)


def test_online_monte_carlo_and_loss_at_K_are_measured_at_the_weights_of_each_update():
    from hesslib.estimators import delta_from_losses
    from hesslib.stopping import first_settled
    from hesslib.subspace import subspace_losses

    data = load_dataset("digits", limit=256)
    torch.manual_seed(0)
    model = make_model("linear", data.input_shape).eval()
    monitor = OnlineStopping(D=2, sigma=0.01, tol=1e9, patience=1, monte_carlo_samples=4000, mc_seed=7)
    for i in range(3):
        monitor.add_batch(data.X[i * 64:(i + 1) * 64], data.y[i * 64:(i + 1) * 64])
    monitor.update(model)
    # the Monte Carlo value is Δ_2 of delta_from_losses over the same θ, batches, weights and subspace
    from hesslib.estimators import gaussian_thetas
    objective = Objective(model, data.X[:192], data.y[:192], batch_size=64)
    losses = subspace_losses(objective, monitor.basis, gaussian_thetas(2, 0.01, 4000, seed=7))
    direct = delta_from_losses(losses)
    assert monitor.mc_deltas[-1] == pytest.approx(direct.delta[-1], rel=1e-6)
    assert monitor.mc_stderr[-1] == pytest.approx(direct.stderr[-1], rel=1e-4)
    # at σ = 0.01 the loss is quadratic in θ to high accuracy: the second-order estimate matches Monte Carlo
    assert abs(monitor.deltas[-1] - monitor.mc_deltas[-1]) < 4 * monitor.mc_stderr[-1]
    assert monitor.losses[-1] == pytest.approx(float(objective.batch_losses()[:2].mean()), rel=1e-6)
    assert first_settled([1, 2, 3, 4], [3.0, 0.1, 0.1, 0.1], tol=1.0, patience=2) == 2
    assert first_settled([1, 2, 3], [3.0, 0.1, 3.0], tol=1.0, patience=2) is None


def test_run_online_stopping_to_the_end_reads_K_of_both_estimates_and_loss_at_K():
    data = load_dataset("digits", limit=448)
    result = run_online_stopping(data, hidden=(8,), D=2, sigma=0.05, tol=1e9, patience=2, steps_per_batch=3,
                                 monte_carlo_samples=16, stop_when_settled=False, progress=False)
    assert result.ks == [1, 2, 3, 4, 5, 6] and len(result.mc_deltas) == 6 and len(result.losses) == 6
    assert result.K == 1 and result.K_monte_carlo == 1  # tol 1e9: settled from the start, and not stopped there
    # L_K at the weights of the update at k = K (after 2 batches), not at the final weights
    assert result.loss_at_K == result.losses[0]
    final = Objective(result.model, data.X[:64], data.y[:64], batch_size=64).batch_losses()[0]
    assert result.loss_at_K != pytest.approx(float(final), rel=1e-3)


def test_run_online_stopping_refuses_a_device_this_machine_lacks_before_any_work():
    data = load_dataset("digits", limit=256)
    with pytest.raises(ValueError, match=r"parameter device = 'tpu' is not allowed: a torch device such as"):
        run_online_stopping(data, hidden=(4,), D=2, device="tpu", progress=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_run_online_stopping_on_a_gpu_trains_and_estimates_there():
    data = load_dataset("digits", limit=640)
    settings = dict(hidden=(8,), D=2, sigma=0.05, tol=1e9, patience=2, steps_per_batch=3, max_batches=5,
                    monte_carlo_samples=4, stop_when_settled=False, progress=False)
    cpu = run_online_stopping(data, **settings)
    gpu = run_online_stopping(data, device="cuda", **settings)
    assert next(gpu.model.parameters()).is_cuda and gpu.ks == cpu.ks == [1, 2, 3, 4]
    # the same mini-batches on both devices: the runs differ by float rounding, amplified a little by training
    np.testing.assert_allclose(gpu.losses, cpu.losses, rtol=1e-2)
    assert np.all(np.isfinite(gpu.deltas)) and np.all(np.isfinite(gpu.mc_deltas))
