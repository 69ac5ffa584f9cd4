"""A distributed Objective (gloo, 2 and 3 processes on the CPU) returns on every rank what one process returns.

The tiny float64 problem of tests/distributed_worker.py has 7 batches (the last one short), which 2 and 3 ranks
cannot split evenly; every listed method must agree with the single-process result to 1e-10 relative, and
top_eigenpairs must find the same eigenpairs (eigenvectors up to sign).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("distributed_worker.py")
pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")


def _run(world: int, tmp: Path) -> list[dict]:
    init = tmp / f"rendezvous-{world}"
    outs = [tmp / f"rank{r}-of-{world}.pt" for r in range(world)]
    ranks = [subprocess.Popen([sys.executable, str(WORKER), str(r), str(world), str(init), str(outs[r])],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(world)]
    logs = [rank.communicate(timeout=300)[0] for rank in ranks]
    assert all(rank.returncode == 0 for rank in ranks), "\n".join(logs)
    return [torch.load(out, weights_only=False) for out in outs]


@pytest.fixture(scope="module")
def single():
    """The single-process reference, computed in this process (no process group)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("distributed_worker", WORKER)
    worker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(worker)
    return worker.results(distributed=False)


@pytest.mark.parametrize("world", [2, 3])
def test_every_method_equals_the_single_process_result_on_every_rank(single, tmp_path, world):
    ranks = _run(world, tmp_path)
    shares = [r["local_batches"] for r in ranks]
    assert shares[0][0] == 0 and shares[-1][1] == 7
    assert all(a[1] == b[0] for a, b in zip(shares[:-1], shares[1:], strict=True)), "contiguous shares"
    assert len({b - a for a, b in shares}) > 1, "the split must be uneven for this test to mean something"
    for rank, result in enumerate(ranks):
        for name, expected in single.items():
            if name in ("local_batches", "eigenvectors"):
                continue
            got = result[name]
            scale = expected.abs().max().clamp_min(1e-300)
            assert ((got - expected).abs().max() / scale) < 1e-10, f"rank {rank} of {world}: {name} differs"
        # the same eigenpairs: eigenvalues above, eigenvectors up to sign
        overlap = (result["eigenvectors"].T @ single["eigenvectors"]).diagonal().abs()
        assert torch.allclose(overlap, torch.ones_like(overlap), atol=1e-8), f"rank {rank}: eigenvectors differ"


def test_distributed_needs_a_process_group():
    from hesslib import Objective, make_model

    model = make_model("linear", (1, 2, 2), num_classes=2, seed=0)
    with pytest.raises(RuntimeError, match="distributed=True needs an initialised torch.distributed process group"):
        Objective(model, torch.randn(4, 1, 2, 2), torch.tensor([0, 1, 0, 1]), batch_size=2, distributed=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_same_results_on_a_gpu():
    import importlib.util

    spec = importlib.util.spec_from_file_location("distributed_worker", WORKER)
    worker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(worker)
    cpu = worker.results(distributed=False)
    original = worker.Objective.__init__

    def on_gpu(self, *args, **kwargs):
        original(self, *args, **{**kwargs, "device": "cuda"})

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(worker.Objective, "__init__", on_gpu)
        gpu = worker.results(distributed=False)
    for name, expected in cpu.items():
        if name in ("local_batches", "eigenvectors"):
            continue
        got = torch.as_tensor(gpu[name]).cpu()
        scale = expected.abs().max().clamp_min(1e-300)
        assert ((got - expected).abs().max() / scale) < 1e-8, f"{name} differs on the GPU"
