"""One rank of the distributed-equivalence test (tests/test_distributed.py): compute every listed method of a tiny
float64 Objective, split over the ranks of a gloo process group, and save the results.

Usage: python tests/distributed_worker.py RANK WORLD_SIZE INIT_FILE OUT_FILE   (WORLD_SIZE 1: no process group)
"""

from __future__ import annotations

import faulthandler
import sys
from pathlib import Path

import torch

import hesslib
from hesslib import Objective, make_model
from hesslib.diagnostics import activation_switches

BATCH, BATCHES = 10, 7  # 67 samples: 7 batches, the last one short (7 = 3 + 4 = 2 + 2 + 3 over 2 and 3 ranks)


def problem(distributed: bool) -> tuple[Objective, torch.Tensor, torch.Tensor, torch.Tensor]:
    data = hesslib.load_dataset("digits", limit=BATCH * BATCHES - 3)
    model = make_model("mlp", data.input_shape, hidden=(6,), seed=0).double()
    obj = Objective(model, data.X, data.y, batch_size=BATCH, dtype=torch.float64, distributed=distributed,
                    chunk_size=16)  # chunks that cut through batches, on purpose
    generator = torch.Generator().manual_seed(1)
    V = torch.randn(obj.num_params, 3, generator=generator, dtype=torch.float64)
    P = torch.linalg.qr(torch.randn(obj.num_params, 2, generator=generator, dtype=torch.float64))[0]
    thetas = torch.randn(5, 2, generator=generator, dtype=torch.float64)
    return obj, V.to(obj.device), P.to(obj.device), thetas


def results(distributed: bool) -> dict:
    obj, V, P, thetas = problem(distributed)
    mc = hesslib.delta_monte_carlo(obj, P, sigma=0.5, samples=8, seed=3)
    theory = hesslib.delta_theory(obj, P, sigma=0.5, formula="second_order")
    curvature = hesslib.projected_hessians(obj, P)
    higher = hesslib.projected_higher_derivatives(obj, P)
    eig = hesslib.top_eigenpairs(obj, 3, tol=1e-8)
    cnn = make_model("cnn", obj.X.shape[1:], channels=(2,), seed=0).double()  # explicit conv products, kept passes
    conv = Objective(cnn, obj.X, obj.y, batch_size=BATCH, dtype=torch.float64, distributed=distributed, chunk_size=16)
    W = torch.randn(conv.num_params, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    assert conv.hvp_method == "explicit"
    return {
        "cnn_hvp": conv.hvp(W.to(conv.device)), "cnn_hvp_kept": conv.hvp(W.to(conv.device)),
        "local_batches": (obj.local_batches.start, obj.local_batches.stop),
        "batch_losses": obj.batch_losses(), "value": obj.value(), "gradient": obj.gradient(), "hvp": obj.hvp(V),
        "curvature_losses": curvature.losses, "curvature_grads": curvature.grads,
        "curvature_hessians": curvature.hessians, "third": higher.third, "fourth": higher.fourth,
        "subspace_losses": hesslib.subspace_losses(obj, P, thetas),
        "mc_delta": torch.as_tensor(mc.delta), "mc_stderr": torch.as_tensor(mc.stderr),
        "theory_delta": torch.as_tensor(theory.delta),
        "eigenvalues": eig.eigenvalues, "eigenvectors": eig.eigenvectors,
        "switches": torch.as_tensor(activation_switches(obj, P, thetas)[1]),
    }


def gloo_threads() -> list[str]:
    """The names of this process's threads that belong to gloo (Linux names them; elsewhere none are found)."""
    tasks = Path("/proc/self/task")
    names = [(task / "comm").read_text().strip() for task in tasks.iterdir()] if tasks.is_dir() else []
    return [name for name in names if "gloo" in name]


if __name__ == "__main__":
    faulthandler.enable()  # an abort prints every thread's Python stack into the test's log
    rank, world, init_file, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    if world > 1:
        torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                                             world_size=world)
    torch.save(results(distributed=world > 1), out)
    if world > 1:
        torch.distributed.barrier()  # every rank has finished before any tears gloo down
        torch.distributed.destroy_process_group()
        # the group is gone now, not at interpreter exit: a group that outlived destroy_process_group (held by
        # torch.distributed.nn.functional's defaults, see hesslib/hessian.py) was torn down while the
        # interpreter exited and sometimes aborted there ("terminate called without an active exception")
        left = gloo_threads()
        if left:
            sys.exit(f"rank {rank}: gloo threads outlived destroy_process_group: {left}")
