"""Scaling benchmark: the `python -m hesslib run` pipeline with 1 and 2 processes (gloo, CPU) on the default MLP.

Prints the time of each stage (train or load w*, top-D eigenpairs, Monte Carlo, closed forms) for one process
with all cores, one process with one thread, and two processes with one thread each (torchrun's default), and
the bytes each process moves per Lanczos step (an all-reduce of the block of b Hessian-vector products, M·b
floats). On 2 cores the 2-process run cannot beat the 1-process one (the cores are the same); what it shows is
the overhead of the data-parallel path at equal total compute. Run: ``python benchmarks/bench_distributed.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIG = {"dataset": "mnist5k", "limit": 4992, "model": "mlp", "D": 10, "samples": 1024, "sigma": 1.0,
          "formulas": ["second_order"], "cache_dir": str(ROOT / "data" / "cache"), "data_root": str(ROOT / "data")}
STAGES = ("train_or_load", "eigenpairs", "monte_carlo", "theory", "total")


def run(label: str, args: list[str], threads: int | None, tmp: Path) -> dict:
    out = tmp / label.replace(" ", "_")
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    done = subprocess.run([sys.executable, *args, "run", str(tmp / "config.yaml"), "--out", str(out)], env=env,
                          capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"{label} failed:\n{done.stderr[-3000:]}")
    return json.loads((out / "results.json").read_text())


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        (tmp / "config.yaml").write_text(yaml.safe_dump(CONFIG))
        runs = {
            "1 process, all cores": run("1 process, all cores", ["-m", "hesslib"], None, tmp),
            "1 process, 1 thread": run("1 process, 1 thread", ["-m", "hesslib"], 1, tmp),
            "2 processes, 1 thread each": run("2 processes", ["-m", "torch.distributed.run", "--standalone",
                                                              "--nproc_per_node=2", "-m", "hesslib"], 1, tmp),
        }
    first = next(iter(runs.values()))
    M, N, hvps = first["num_params"], first["num_batches"], first["eigen_hvps"]
    block = min(CONFIG["D"], 4)  # top_eigenpairs' default block size
    print(f"default MLP on mnist5k: M = {M:,} parameters, N = {N} batches, D = {CONFIG['D']}, "
          f"{CONFIG['samples']} Monte Carlo θ, {os.cpu_count()} CPU cores")
    print(f"{'':28}" + "".join(f"{s:>15}" for s in STAGES))
    for label, result in runs.items():
        print(f"{label:28}" + "".join(f"{result['timings'][s]:14.2f}s" for s in STAGES))
    two = runs["2 processes, 1 thread each"]
    print(f"Lanczos: {hvps} Hessian-vector products in blocks of {block}; each block step all-reduces "
          f"{block} × M float32 = {block * M * 4 / 2**20:.2f} MiB per process "
          f"({two['communication']['allreduce_bytes_per_hvp'] / 2**20:.2f} MiB per product)")
    same_K = all(r["K"] == first["K"] for r in runs.values())
    worst = max(abs(a - b) / abs(b) for r in runs.values()
                for a, b in zip(r["delta_monte_carlo"]["delta"], first["delta_monte_carlo"]["delta"], strict=True))
    print(f"K {first['K']} in every run: {same_K}; largest relative difference of Δ_k from the first run: {worst:.1e}")


if __name__ == "__main__":
    main()
