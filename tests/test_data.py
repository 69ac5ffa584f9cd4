import gzip
import io
import os
import struct
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch

import hesslib.data as data_module
from hesslib import load_dataset
from hesslib.data import DATASETS, DownloadError, download, read_idx, write_idx


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


# --- environment failures: one line saying what failed and what to do --------------------------------------------

MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
               "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def _offline(monkeypatch, calls=None):
    def urlopen(url, *args, **kwargs):
        if calls is not None:
            calls.append(url)
        raise urllib.error.URLError(OSError(-2, "Name or service not known"))

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)


def _serve(monkeypatch, payloads):
    """urlopen answering each file name with payloads[name] (bytes) or by calling it (to raise)."""

    def urlopen(url, *args, **kwargs):
        payload = payloads[url.rsplit("/", 1)[1]]
        return io.BytesIO(payload) if isinstance(payload, bytes) else payload()

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)


def _gz_idx(array):
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    return gzip.compress(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def test_download_offline_gives_one_line_error_naming_url_folder_and_files(tmp_path, monkeypatch):
    calls = []
    _offline(monkeypatch, calls)
    with pytest.raises(DownloadError) as info:
        download("mnist", root=tmp_path)
    message = str(info.value)
    assert isinstance(info.value, OSError) and "\n" not in message
    assert calls == ["https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz"]
    assert message.startswith(f"cannot download {calls[0]} (")
    assert "Name or service not known" in message
    assert f"{tmp_path / 'MNIST' / 'raw'}/" in message
    assert all(name in message for name in MNIST_FILES)
    assert list((tmp_path / "MNIST" / "raw").iterdir()) == []  # nothing partial left behind


def test_download_cli_offline_exits_1_with_one_stderr_line(tmp_path, monkeypatch, capsys):
    _offline(monkeypatch)
    assert data_module.main(["download", "fashion-mnist", "--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("hesslib.data: error: cannot download http://fashion-mnist.")
    assert f"{tmp_path / 'FashionMNIST' / 'raw'}/" in err and "t10k-labels-idx1-ubyte.gz" in err


def test_download_cli_in_a_subprocess_prints_only_the_error_line(tmp_path):
    # a proxy on a closed local port fails every request at once, with or without internet
    env = {**os.environ, "https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9",
           "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9", "no_proxy": "", "NO_PROXY": ""}
    result = subprocess.run([sys.executable, "-m", "hesslib.data", "download", "mnist", "--root", str(tmp_path)],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("hesslib.data: error: cannot download https://ossci-datasets")
    assert f"{tmp_path / 'MNIST' / 'raw'}/" in result.stderr
    assert list((tmp_path / "MNIST" / "raw").iterdir()) == []


def test_download_http_error_and_bad_payload_leave_nothing(tmp_path, monkeypatch):
    def not_found():
        raise urllib.error.HTTPError("u", 404, "Not Found", None, None)

    good = _gz_idx(np.zeros((3, 28, 28), np.uint8))
    raw = tmp_path / "MNIST" / "raw"
    _serve(monkeypatch, {"train-images-idx3-ubyte.gz": good, "train-labels-idx1-ubyte.gz": not_found})
    with pytest.raises(DownloadError, match=r"train-labels-idx1-ubyte\.gz \(HTTP 404 Not Found\); without internet"):
        download("mnist", root=tmp_path)
    assert sorted(p.name for p in raw.iterdir()) == ["train-images-idx3-ubyte.gz"]  # the good file is kept
    for payload in (b"<html>captive portal</html>", good[:-20], gzip.compress(b"\0\0\x08\x01\0\0\0\x05abc")):
        _serve(monkeypatch, {"train-labels-idx1-ubyte.gz": payload})
        with pytest.raises(DownloadError) as info:
            download("mnist", root=tmp_path)
        assert "\n" not in str(info.value) and "train-labels-idx1-ubyte.gz (" in str(info.value)
        assert sorted(p.name for p in raw.iterdir()) == ["train-images-idx3-ubyte.gz"]


def test_download_interrupted_leaves_nothing(tmp_path, monkeypatch):
    class Interrupted(io.BytesIO):
        def read(self, *args):
            raise KeyboardInterrupt

    _serve(monkeypatch, {"train-images-idx3-ubyte.gz": lambda: Interrupted(b"")})
    with pytest.raises(KeyboardInterrupt):
        download("mnist", root=tmp_path)
    assert list((tmp_path / "MNIST" / "raw").iterdir()) == []


def test_download_unwritable_root_is_one_line(tmp_path, monkeypatch):
    _offline(monkeypatch)
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(DownloadError, match=r"\(cannot write to .*file/MNIST/raw/: .*\); without internet") as info:
        download("mnist", root=tmp_path / "file")
    assert "\n" not in str(info.value)


def test_download_writes_valid_files_and_skips_existing(tmp_path, monkeypatch):
    images = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28) % 251
    labels = np.array([3, 7], np.uint8)
    payloads = {name: _gz_idx(images if "images" in name else labels) for name in MNIST_FILES}
    _serve(monkeypatch, payloads)
    download("mnist", root=tmp_path)
    raw = tmp_path / "MNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(MNIST_FILES)  # no temporaries
    data = load_dataset("mnist", root=tmp_path, split="test")
    assert data.y.tolist() == [3, 7]
    _offline(monkeypatch)
    download("mnist", root=tmp_path)  # everything there: nothing fetched, no error


def test_missing_idx_message_is_one_line_with_path_and_both_remedies(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("mnist", root=tmp_path, split="test")
    message = str(info.value)
    raw = tmp_path / "MNIST" / "raw"
    assert "\n" not in message
    assert f"{raw / 't10k-images-idx3-ubyte'}[.gz]" in message and f"{raw / 't10k-labels-idx1-ubyte'}[.gz]" in message
    assert f"into {raw}/" in message and "torchvision's MNIST/raw/ files" in message
    assert f"`python -m hesslib.data download mnist --root {tmp_path}`" in message
