"""hesslib.check_parameters: the defaults and the smoke parameters of every notebook pass; bad values are named."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hesslib import ParameterError, check_parameters, paper
from hesslib.data import write_idx

ROOT = Path(__file__).resolve().parents[1]
SMOKE = yaml.safe_load((ROOT / "tests" / "smoke-params.yaml").read_text())


@pytest.mark.parametrize("nb", paper.notebooks(ROOT), ids=lambda nb: nb.stem)
def test_defaults_and_smoke_parameters_pass(nb):
    declared = paper.declared_parameters(nb)
    assert check_parameters(declared).keys() == declared.keys()
    check_parameters(declared | {k: v for k, v in SMOKE.items() if k in declared})


def test_full_datasets_need_their_files(tmp_path):
    with pytest.raises(ParameterError, match=r"dataset = 'mnist' .*MNIST/raw/train-images-idx3-ubyte\[\.gz\] is "
                                             r"missing \(run `python -m hesslib.data download mnist`"):
        check_parameters({"dataset": "mnist"}, data_root=tmp_path)
    import numpy as np

    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    write_idx(raw / "train-images-idx3-ubyte", np.zeros((4, 28, 28), np.uint8))
    write_idx(raw / "train-labels-idx1-ubyte", np.zeros(4, np.uint8))
    assert check_parameters({"dataset": "mnist"}, data_root=tmp_path) == {"dataset": "mnist"}


@pytest.mark.parametrize("params, message", [
    ({"limit": 3000, "batch_size": 2000}, "limit = 3000 is not allowed: at least 2 batches: limit ≥ 2·batch_size = "
                                          "4000 (batch_size = 2000)"),
    ({"batch_size": 4000}, "batch_size = 4000 is not allowed: an integer in [1, 2500]"),
    ({"sizes": [250, 4500], "holdout": 1000},
     "sizes = [250, 4500] is not allowed: a non-empty list of integers in [128, 4000]"),
    ({"tolerance_range": [1.0, 0.1]}, "tolerance_range = [1.0, 0.1] is not allowed: [low, high] with 0 < low < high"),
    ({"training_seeds": [0, 0]}, "training_seeds = [0, 0] is not allowed: a list of distinct integers ≥ 0"),
    ({"fourth_order": "yes"}, "fourth_order = 'yes' is not allowed: true or false"),
    ({"samples": True}, "samples = True is not allowed: an integer ≥ 1"),
    ({"sigma": float("inf")}, "sigma = inf is not allowed: a finite number > 0"),
    ({"cache_dir": ""}, "cache_dir = '' is not allowed: a folder path or null"),
    ({"slope_k_min": 77}, "slope_k_min = 77 is not allowed: an integer in [1, 76]"),
])
def test_bad_values_are_named_with_their_range(params, message):
    with pytest.raises(ParameterError) as info:
        check_parameters({"dataset": "mnist5k", "limit": 4992, "batch_size": 64, **params})
    assert message in str(info.value), str(info.value)
