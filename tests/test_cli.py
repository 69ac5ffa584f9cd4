"""`python -m hesslib run CONFIG --out DIR`: one process and torchrun with 2 processes write the same results;
bad configurations fail with one line before any work."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from hesslib import cli

SMALL = {"dataset": "digits", "limit": 640, "model": "mlp", "hidden": [16], "epochs": 1, "batch_size": 64, "D": 3,
         "samples": 64, "sigma": 0.5, "tolerances": [0.0005, 0.0001], "formulas": ["second_order", "paper_subspace"]}


def _config(tmp: Path, **changes) -> Path:
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump({**SMALL, "cache_dir": str(tmp / "cache"), **changes}))
    return path


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_one_process_and_torchrun_with_two_give_the_same_results(tmp_path):
    config = _config(tmp_path)  # float32, the default
    one = _run(["-m", "hesslib", "run", str(config), "--out", "one"], tmp_path)
    assert one.returncode == 0, one.stderr
    two = _run(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "hesslib", "run",
                str(config), "--out", "two"], tmp_path)
    assert two.returncode == 0, two.stderr
    a, b = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("one", "two"))
    assert (a["world_size"], b["world_size"]) == (1, 2)
    assert a["K"] == b["K"] and a["K"] == {"0.0005": 4, "0.0001": 9}
    np.testing.assert_allclose(b["delta_monte_carlo"]["delta"], a["delta_monte_carlo"]["delta"], rtol=1e-5)
    for formula, delta in a["delta_theory"].items():
        np.testing.assert_allclose(b["delta_theory"][formula], delta, rtol=1e-5)
    np.testing.assert_allclose(b["eigenvalues"], a["eigenvalues"], rtol=1e-5)
    assert set(a["timings"]) >= {"train_or_load", "eigenpairs", "monte_carlo", "theory", "total"}
    assert b["communication"]["allreduce_bytes_per_hvp"] == 4 * a["num_params"]
    for d in ("one", "two"):
        assert (tmp_path / d / "delta.png").stat().st_size > 1000 and (tmp_path / d / "delta.pdf").exists()
    assert "K at each tolerance" in one.stdout and two.stdout.count("K at each tolerance") == 1, "rank 0 only"


@pytest.mark.parametrize("changes, message", [
    ({"sigmaa": 1.0}, "unknown key 'sigmaa'; did you mean sigma?"),
    ({"sigma": -1}, "sigma = -1 is not allowed: a finite number > 0"),
    ({"samples": 0}, "samples = 0 is not allowed: an integer ≥ 1"),
    ({"D": 100000}, "D = 100000 is not allowed: an integer in [1, "),
    ({"directions": "sideways"}, "directions = 'sideways' is not allowed: one of ('hessian'"),
    ({"formulas": ["exact"]}, "formulas = ['exact'] is not allowed: a non-empty list of names from"),
    ({"dtype": "float16"}, "dtype = 'float16' is not allowed: one of ('float32', 'float64')"),
    ({"dataset": "mnits"}, "dataset = 'mnits' is not allowed"),
])
def test_bad_configuration_is_one_line_before_any_work(tmp_path, monkeypatch, capsys, changes, message):
    monkeypatch.setattr(cli, "run", lambda *a, **k: pytest.fail("the pipeline started"))
    assert cli.main(["run", str(_config(tmp_path, **changes)), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("hesslib run: ") and err.count("\n") == 1, err
