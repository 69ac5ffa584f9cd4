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


def test_sample_size_row_on_digits_is_timed_cached_and_consistent(tmp_path, data_root):
    from hesslib.estimators import sufficient_sample_size
    from hesslib.hessian import Objective
    from hesslib.stopping import format_K, format_table, sample_size_row, sample_size_table, table_cells
    from hesslib.training import train

    kwargs = dict(limit=320, root=data_root, hidden=(8,), epochs=1, D=2, sigma=0.5, samples=16, progress=False,
                  cache_dir=tmp_path)
    row = sample_size_row("digits", model="mlp", tolerances=[1e-3, 1e-12], **kwargs)
    assert row.num_batches == 5 and len(row.curve) == 4 and row.num_params == 64 * 8 + 8 + 8 * 10 + 10
    assert set(row.seconds) == {"train", "eigen", "monte_carlo"} and all(t > 0 for t in row.seconds.values())
    assert row.total_seconds == pytest.approx(sum(row.seconds.values())) and row.threads >= 1
    assert row.K == [sufficient_sample_size(row.curve, 1e-3), sufficient_sample_size(row.curve, 1e-12)]
    assert np.all(row.curve.delta > 0) and np.all(row.curve.stderr > 0)
    # L_K(w*) is the mean of the first K batch losses of the same (deterministically) trained w*
    net, _ = train("digits", model="mlp", limit=320, root=data_root, hidden=(8,), epochs=1, cache_dir=None,
                   progress=False)
    data = load_dataset("digits", limit=320)
    losses = Objective(net, data.X, data.y, batch_size=64).batch_losses().double().numpy()
    for K, loss in zip(row.K, row.loss_at_K, strict=True):
        assert (K is None and loss is None) or loss == pytest.approx(losses[:K].mean(), rel=1e-5)
    for K, (low, high) in zip(row.K, row.K_range, strict=True):  # the ±2 s.e. bracket contains K
        assert K is None or (np.isnan(low) or low <= K) and (np.isnan(high) or K <= high)
    # a re-run reads the stored measurement, times included; other tolerances need no recomputation
    again = sample_size_row("digits", model="mlp", tolerances=[0.5], **kwargs)
    assert again.seconds == row.seconds and np.array_equal(again.curve.delta, row.curve.delta)
    assert row.computed_now and not again.computed_now
    assert again.K == [sufficient_sample_size(row.curve, 0.5)]
    assert format_K(None, 5) == "never (K > 4)" and format_K(float("nan"), 5) == "never (K > 4)"
    assert format_K(3, 5) == format_K(3.0, 5) == "3"
    header, cells = table_cells([row])
    assert len(cells) == 2 and all(len(c) == len(header) for c in cells) and cells[1][5] == "not reached"
    text = format_table([row])
    assert text.count("\n") == 3 and "digits" in text and "| K " in text
    rows, skipped = sample_size_table([("mnist", 640), ("digits", 320)], ["linear"], tolerances=[0.1],
                                      **{k: v for k, v in kwargs.items() if k not in ("limit", "root")},
                                      root=data_root)
    assert [r.model for r in rows] == ["linear"] and rows[0].dataset == "digits"
    assert len(skipped) == 1 and skipped[0].startswith("mnist: skipped") and "IDX" in skipped[0]
    with pytest.raises(ValueError, match="tolerances"):
        sample_size_row("digits", model="mlp", tolerances=[], **kwargs)
