import gzip

import numpy as np
import pytest
import torch

from hesslib import load_dataset
from hesslib.data import DATASETS, read_idx, write_idx


def test_mnist5k_shapes_dtypes_and_fixed_order(data_root):
    data = load_dataset("mnist5k", root=data_root)
    assert data.X.shape == (5000, 1, 28, 28) and data.X.dtype == torch.float32
    assert data.y.shape == (5000,) and data.y.dtype == torch.int64
    assert data.y.min() == 0 and data.y.max() == 9
    assert torch.bincount(data.y).tolist() == [500] * 10
    # normalised with the paper's MNIST statistics: roughly zero mean, unit variance
    assert abs(data.X.mean().item()) < 0.05 and abs(data.X.std().item() - 1) < 0.05
    # the documented fixed order (a seeded permutation of the class-sorted file), pinned
    assert data.y[:12].tolist() == [4, 2, 0, 9, 6, 6, 2, 1, 2, 0, 8, 1]
    assert (data_root / "mnist5k.npz").exists()
    again = load_dataset("mnist5k", root=data_root)  # from the cache
    assert torch.equal(again.X, data.X) and torch.equal(again.y, data.y)


def test_mnist5k_corrupt_cache_is_reparsed(data_root):
    reference = load_dataset("mnist5k", root=data_root)
    cache = data_root / "mnist5k.npz"
    cache.write_bytes(cache.read_bytes()[:1000])
    data = load_dataset("mnist5k", root=data_root)
    assert torch.equal(data.X, reference.X)


def test_limit_takes_first_samples(data_root):
    full = load_dataset("digits")
    part = load_dataset("digits", limit=100)
    assert len(part) == 100 and torch.equal(part.X, full.X[:100]) and torch.equal(part.y, full.y[:100])
    assert len(load_dataset("mnist5k", root=data_root, limit=64)) == 64


def test_digits_splits_do_not_overlap():
    train, test = load_dataset("digits"), load_dataset("digits", split="test")
    assert train.X.shape == (1500, 1, 8, 8) and test.X.shape == (297, 1, 8, 8)
    assert test.name == "digits-test"
    assert set(train.y.tolist()) == set(range(10))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"name": "cifar"}, "dataset name must be one of"),
        ({"name": "digits", "split": "val"}, "split must be one of"),
        ({"name": "digits", "limit": 0}, "limit must be"),
        ({"name": "mnist5k", "split": "test"}, "split must be 'train'"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_dataset(**kwargs)
    assert len(DATASETS) == 4


def _write_fake_idx(root, folder, prefix, n, gz, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    suffix = ".gz" if gz else ""
    write_idx(root / folder / "raw" / f"{prefix}-images-idx3-ubyte{suffix}", images)
    write_idx(root / folder / "raw" / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
    return images, labels


@pytest.mark.parametrize("gz", [True, False])
def test_idx_reader_roundtrip(tmp_path, gz):
    images, labels = _write_fake_idx(tmp_path, "MNIST", "train", 30, gz)
    data = load_dataset("mnist", root=tmp_path, split="train")
    assert data.X.shape == (30, 1, 28, 28) and data.y.tolist() == labels.tolist()
    expected = (images.astype(np.float32) / 255 - 0.1307) / 0.3081
    np.testing.assert_allclose(data.X[:, 0].numpy(), expected, rtol=1e-6)


def test_idx_header_parsed_independently(tmp_path):
    # hand-built header: magic 0x00000803, dims 2 x 3 x 4, big-endian
    body = bytes(range(24))
    raw = bytes([0, 0, 8, 3]) + (2).to_bytes(4, "big") + (3).to_bytes(4, "big") + (4).to_bytes(4, "big") + body
    path = tmp_path / "x-idx3-ubyte.gz"
    with gzip.open(path, "wb") as fh:
        fh.write(raw)
    arr = read_idx(path)
    assert arr.shape == (2, 3, 4) and arr.dtype == np.uint8 and arr.ravel().tolist() == list(range(24))
    (tmp_path / "bad").write_bytes(raw[:-5])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "bad")
    (tmp_path / "notidx").write_bytes(b"hello world")
    with pytest.raises(ValueError, match="magic"):
        read_idx(tmp_path / "notidx")


def test_fashion_mnist_test_split_and_missing_files(tmp_path):
    _write_fake_idx(tmp_path, "FashionMNIST", "t10k", 12, gz=True)
    data = load_dataset("fashion-mnist", root=tmp_path, split="test")
    assert len(data) == 12 and data.name == "fashion-mnist-test"
    with pytest.raises(FileNotFoundError, match=r"FashionMNIST/raw/train-images-idx3-ubyte\[\.gz\]"):
        load_dataset("fashion-mnist", root=tmp_path, split="train")
    with pytest.raises(FileNotFoundError, match="hesslib.data download mnist"):
        load_dataset("mnist", root=tmp_path)
