"""The cross-library tests: ``benchmarks/adapters.py`` importable as ``adapters``, torch on one thread."""

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

BENCHMARKS = str(Path(__file__).resolve().parents[2] / "benchmarks")
if BENCHMARKS not in sys.path:
    sys.path.insert(0, BENCHMARKS)


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """The products here are tiny: one thread is faster, and far faster when other processes share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
