"""The offline Table-1 helpers (hesslib.sample_size) on digits."""

import numpy as np
import pytest

from hesslib import load_dataset


def test_sample_size_row_on_digits_is_timed_cached_and_consistent(tmp_path, data_root):
    from hesslib.estimators import format_K, sufficient_sample_size
    from hesslib.hessian import Objective
    from hesslib.sample_size import format_table, sample_size_row, sample_size_table, table_cells
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
    for _K, (low, high) in zip(row.K, row.K_orders, strict=True):  # K over random orders: a 90 % interval
        assert (np.isnan(low) or np.isnan(high) or low <= high) and len(row.K_orders) == len(row.K)
    # a re-run reads the stored measurement, times included; other tolerances need no recomputation
    again = sample_size_row("digits", model="mlp", tolerances=[0.5], **kwargs)
    assert again.seconds == row.seconds and np.array_equal(again.curve.delta, row.curve.delta)
    assert row.computed_now and not again.computed_now
    assert again.K == [sufficient_sample_size(row.curve, 0.5)]
    assert format_K(None, 5) == "never settles (K > 4)" and format_K(float("nan"), 5) == "never settles (K > 4)"
    assert format_K(3, 5) == format_K(3.0, 5) == "3"
    header, cells = table_cells([row])
    assert len(cells) == 2 and all(len(c) == len(header) for c in cells) and cells[1][5] == "never settles (K > 4)"
    text = format_table([row])
    assert text.count("\n") == 3 and "digits" in text and "| K " in text
    rows, skipped = sample_size_table([("mnist", 640), ("digits", 320)], ["linear"], tolerances=[0.1],
                                      **{k: v for k, v in kwargs.items() if k not in ("limit", "root")},
                                      root=data_root)
    assert [r.model for r in rows] == ["linear"] and rows[0].dataset == "digits"
    assert len(skipped) == 1 and skipped[0].startswith("mnist: skipped") and "IDX" in skipped[0]
    with pytest.raises(ValueError, match="tolerances"):
        sample_size_row("digits", model="mlp", tolerances=[], **kwargs)
