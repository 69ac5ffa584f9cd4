import pytest
import torch

import hesslib.training
from hesslib import train

FAST = dict(model="mlp", hidden=(32,), epochs=3, lr=1e-2, batch_size=64, progress=False)


def _flat(model):
    return torch.cat([p.detach().ravel() for p in model.parameters()])


def test_same_seed_gives_bit_identical_weights_and_loss_decreases():
    m1, r1 = train("digits", cache_dir=None, seed=1, **FAST)
    m2, r2 = train("digits", cache_dir=None, seed=1, **FAST)
    assert torch.equal(_flat(m1), _flat(m2))
    m3, _ = train("digits", cache_dir=None, seed=2, **FAST)
    assert not torch.equal(_flat(m1), _flat(m3))
    assert r1.loss_curve[-1] < r1.loss_curve[0] / 3
    assert r1.train_accuracy > 0.9 and r1.test_accuracy > 0.8  # digits has a test split
    assert not m1.training


def test_cache_hit_trains_nothing_and_truncated_cache_is_recomputed(tmp_path, monkeypatch):
    config = dict(FAST, model="cnn")
    m1, r1 = train("digits", cache_dir=tmp_path, **config)
    (path,) = tmp_path.glob("train-*.pt")

    def no_training(*args, **kwargs):
        raise AssertionError("a cache hit must not train")

    with monkeypatch.context() as patch:
        patch.setattr(hesslib.training, "_fit", no_training)
        m2, r2 = train("digits", cache_dir=tmp_path, **config)
    assert torch.equal(_flat(m1), _flat(m2)) and r2.loss_curve == r1.loss_curve
    # a different configuration gets a different file
    train("digits", cache_dir=tmp_path, **dict(config, seed=5))
    assert len(list(tmp_path.glob("train-*.pt"))) == 2
    # truncate: detected, recomputed (bit-identical, deterministic) and rewritten whole
    path.write_bytes(path.read_bytes()[:100])
    m3, _ = train("digits", cache_dir=tmp_path, **config)
    assert torch.equal(_flat(m1), _flat(m3))
    assert path.stat().st_size > 1000
    assert not list(tmp_path.glob(".*.tmp"))


def test_holdout_on_mnist5k(data_root):
    _, record = train("mnist5k", root=data_root, limit=500, holdout=500, cache_dir=None, **FAST)
    assert record.test_accuracy is not None and record.test_accuracy > 0.5
    with pytest.raises(ValueError, match="holdout must be <= 4500"):
        train("mnist5k", root=data_root, limit=500, holdout=4600, cache_dir=None, **FAST)


@pytest.mark.parametrize("kwargs, match", [({"optimizer": "lbfgs"}, "optimizer"), ({"lr": 0}, "lr > 0"),
                                           ({"loss": "hinge"}, "loss must be one of")])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        train("digits", cache_dir=None, **dict(FAST, **kwargs))
