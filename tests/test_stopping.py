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
    offline = delta_theory(Objective(model, data.X, data.y, batch_size=64), monitor._P, sigma=0.1)
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
    assert result.ks[0] == 1 and len(result.ks) == len(result.deltas) and np.all(np.isfinite(result.deltas))
    if result.K is not None:
        assert all(d < 1e-2 for d in result.deltas[-2:]) and result.loss_at_K > 0
    assert result.hvps > 0 and not result.model.training


@pytest.mark.parametrize("kwargs", [dict(sigma=0), dict(tol=-1), dict(D=0), dict(patience=0), dict(estimator="x")])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        OnlineStopping(**kwargs)
