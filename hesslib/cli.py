"""``python -m hesslib run CONFIG.yaml --out DIR``: the pipeline for one configuration, as a batch job.

Train (or load) w*, find the top-D eigenpairs, estimate Δ_k by Monte Carlo and in closed form, read off K at each
tolerance, and write ``DIR/results.json`` (``config``, ``world_size``, ``eigenvalues``, ``delta_monte_carlo``
{k, delta, stderr}, ``delta_theory`` {formula: delta}, ``K`` {tolerance: K or null}, ``timings`` in seconds,
``communication`` and ``machine``) and the Δ_k figure ``DIR/delta.pdf`` / ``.png``.

Under ``torchrun --nproc_per_node=P -m hesslib run ...`` the same command runs data-parallel
(:class:`~hesslib.hessian.Objective` with ``distributed=True``: gloo on CPUs, NCCL on GPUs, one GPU per process
with ``device: cuda``): rank 0 trains or loads w* and broadcasts it, every rank evaluates its share of the batches,
and rank 0 writes the same results a single process writes (Δ_k to float rounding; every rank needs the dataset).
Progress bars are drawn on rank 0 only. Every key and value of the configuration is checked before any work.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from .estimators import FORMULAS, delta_monte_carlo, delta_theory, sufficient_sample_size
from .experiment import DIRECTIONS
from .parameters import ParameterError, check_choice, check_int, check_parameters, check_positive, model_size

DEFAULTS: dict[str, Any] = {
    "dataset": "mnist5k", "limit": 4992, "model": "mlp", "hidden": [256, 256], "channels": [8, 16],
    "activation": "relu", "epochs": 10, "seed": 0, "batch_size": 64,
    "D": 10, "directions": "hessian", "sigma": 1.0, "samples": 1024, "mc_seed": 0,
    "tolerances": [0.025, 0.03], "formulas": ["second_order"], "eig_tol": 1e-4,
    "device": "cpu", "dtype": "float32", "cache_dir": "data/cache", "data_root": "data",
}
# the keys that mean what the notebooks' parameters of the same name mean, checked by check_parameters
CHECKED_AS_PARAMETERS = ("dataset", "model", "hidden", "channels", "activation", "batch_size", "limit", "epochs",
                         "seed", "device", "cache_dir", "sigma", "samples", "tolerances")
DTYPES = {"float32": torch.float32, "float64": torch.float64}


class ConfigError(ValueError):
    """A configuration key or value that is not allowed (the message names it)."""


def load_config(path: str | Path) -> dict[str, Any]:
    """The configuration in ``path`` (YAML) on top of :data:`DEFAULTS`, every key and value checked.

    Raises:
        ConfigError: for an unreadable file, an unknown key (with the closest valid ones) or a bad value.
    """
    try:
        given = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read the configuration: {exc}") from None
    if not isinstance(given, dict):
        raise ConfigError(f"the configuration must be a mapping of keys to values, got {type(given).__name__}")
    for key in given:
        if key not in DEFAULTS:
            close = difflib.get_close_matches(str(key), DEFAULTS, n=3, cutoff=0.6)
            hint = f"did you mean {' or '.join(close)}?" if close else f"the keys are {', '.join(DEFAULTS)}"
            raise ConfigError(f"unknown key {key!r}; {hint}")
    config = DEFAULTS | given
    try:
        check_parameters({k: config[k] for k in CHECKED_AS_PARAMETERS}, data_root=config["data_root"])
        check_choice("directions", config["directions"], DIRECTIONS)
        M = model_size(config)
        check_int("D", config["D"], 1, M - 1 if config["directions"] == "hessian" else M,
                  f"the {config['directions']} subspace of M = {M:,} parameters")
        check_int("mc_seed", config["mc_seed"], 0)
        check_positive("eig_tol", config["eig_tol"])
        check_choice("dtype", config["dtype"], tuple(DTYPES))
        formulas = config["formulas"]
        if not isinstance(formulas, list) or not formulas or any(f not in FORMULAS for f in formulas):
            raise ParameterError("formulas", formulas, f"a non-empty list of names from {FORMULAS}")
        if not isinstance(config["data_root"], str) or not config["data_root"]:
            raise ParameterError("data_root", config["data_root"], "a folder path")
    except ParameterError as exc:
        raise ConfigError(str(exc).replace("parameter ", "", 1)) from None
    return config


def _setup_distributed(device: str) -> tuple[int, int, str]:
    """(rank, world size, this process's device); initialises the default group under torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, device
    if torch.device(device).type == "cuda":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if torch.device(device).type == "cuda" else "gloo")
    return torch.distributed.get_rank(), world, device


def _trained_model(config: dict, rank: int, world: int, device: str) -> tuple[torch.nn.Module, Any]:
    """w*: trained (or loaded from the cache) on rank 0 and broadcast, so every rank holds the same weights."""
    from .models import make_model
    from .parameters import INPUT_SHAPES
    from .training import train

    record = None
    settings = dict(model=config["model"], limit=config["limit"], hidden=config["hidden"],
                    channels=config["channels"], activation=config["activation"], epochs=config["epochs"],
                    seed=config["seed"], cache_dir=config["cache_dir"], progress=rank == 0)
    if rank == 0:
        net, record = train(config["dataset"], root=config["data_root"], device=device, **settings)
    else:
        net = make_model(config["model"], INPUT_SHAPES[config["dataset"]], hidden=config["hidden"],
                         channels=config["channels"], activation=config["activation"])  # rank 0's weights follow
    net = net.to(device=device, dtype=DTYPES[config["dtype"]]).eval()
    if world > 1:
        flat = torch.nn.utils.parameters_to_vector(net.parameters()).detach()
        torch.distributed.broadcast(flat, src=0)
        torch.nn.utils.vector_to_parameters(flat, net.parameters())
    return net, record


def run(config: dict, out: Path) -> dict:
    """Run the pipeline for ``config`` (see the module docstring); returns the results (written by rank 0)."""
    from .data import load_dataset
    from .eigen import top_eigenpairs
    from .hessian import Objective, projected_hessians
    from .subspace import random_directions

    rank, world, device = _setup_distributed(config["device"])
    main = rank == 0
    timings: dict[str, float] = {}
    start = time.perf_counter()
    net, record = _trained_model(config, rank, world, device)
    timings["train_or_load"] = time.perf_counter() - start
    data = load_dataset(config["dataset"], root=config["data_root"], limit=config["limit"])
    objective = Objective(net, data.X, data.y, batch_size=config["batch_size"], dtype=DTYPES[config["dtype"]],
                          device=device, distributed=world > 1)
    t0 = time.perf_counter()
    eig = None
    if config["directions"] == "hessian":
        eig = top_eigenpairs(objective, config["D"], tol=config["eig_tol"], progress=main)
        P = eig.eigenvectors  # with canonical signs: rounding (e.g. the world size) does not flip the θ draws
    else:
        P = random_directions(objective, config["D"], seed=config["seed"],
                              orthonormalize=config["directions"] == "random_orthonormal")
    timings["eigenpairs"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    mc = delta_monte_carlo(objective, P, sigma=config["sigma"], samples=config["samples"], seed=config["mc_seed"],
                           progress=main)
    timings["monte_carlo"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    curvature = projected_hessians(objective, P) if set(config["formulas"]) - {"paper"} else None
    theory = {f: delta_theory(objective, P, sigma=config["sigma"], formula=f, curvature=curvature)
              for f in config["formulas"]}
    timings["theory"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - start
    bytes_per_value = torch.finfo(objective.dtype).bits // 8
    results = {
        "config": config, "world_size": world,
        "num_params": objective.num_params, "num_batches": objective.num_batches,
        "train_loss": None if record is None else record.train_loss,
        "eigenvalues": [] if eig is None else eig.eigenvalues.cpu().tolist(),
        "eigen_hvps": None if eig is None else eig.num_hvps,
        "delta_monte_carlo": {"k": mc.k.tolist(), "delta": mc.delta.tolist(), "stderr": mc.stderr.tolist()},
        "delta_theory": {f: curve.delta.tolist() for f, curve in theory.items()},
        "K": {str(tol): sufficient_sample_size(mc, tol) for tol in config["tolerances"]},
        "timings": timings,
        # what one Hessian-vector product moves between processes: an all-reduce of an [M] vector per column
        "communication": {"allreduce_bytes_per_hvp": objective.num_params * bytes_per_value if world > 1 else 0},
    }
    if main:
        _write(results, theory, mc, out)
    if world > 1:
        torch.distributed.barrier()
    return results


def _write(results: dict, theory: dict, mc, out: Path) -> None:
    """results.json (atomically) and the Δ_k figure into ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .cache import atomic_write
    from .paper import machine
    from .plots import plot_delta, save_figure, set_style

    results["machine"] = machine()
    atomic_write(out / "results.json", lambda tmp: tmp.write_text(json.dumps(results, indent=2) + "\n"))
    set_style()
    fig, ax = plt.subplots(figsize=(6, 4))
    plot_delta(ax, [mc, *theory.values()])
    for tol in results["config"]["tolerances"]:
        ax.axhline(tol, color="grey", ls=":", lw=1)
    ax.set_title(f"Δ_k: {results['config']['model']} on {results['config']['dataset']}, "
                 f"D = {results['config']['D']}, σ = {results['config']['sigma']:g}", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, "delta", out.resolve())
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """The ``python -m hesslib`` command line; returns the exit status (2 for a bad configuration)."""
    parser = argparse.ArgumentParser(prog="python -m hesslib", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="run the pipeline for one configuration")
    run_parser.add_argument("config", help="a YAML file of settings (keys: " + ", ".join(DEFAULTS) + ")")
    run_parser.add_argument("--out", required=True, help="folder for results.json and the Δ_k figure")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"hesslib run: {args.config}: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"hesslib run: cannot create --out {out}: {exc.strerror}", file=sys.stderr)
        return 2
    results = run(config, out)
    if int(os.environ.get("RANK", "0")) == 0:
        K = ", ".join(f"{tol}: {k}" for tol, k in results["K"].items())
        print(f"K at each tolerance: {K}; results in {out / 'results.json'} ({results['timings']['total']:.1f} s, "
              f"{results['world_size']} process(es))")
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()  # no rank tears gloo down while another still talks to it
        torch.distributed.destroy_process_group()
    return 0
