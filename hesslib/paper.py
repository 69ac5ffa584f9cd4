"""`make paper`: run the notebooks in story order with papermill, render HTML, write the paper's records.

Each notebook is executed headlessly from the repository root into ``BUILD/notebooks/`` (written to a
temporary name and renamed only on success; a failure stops the run, keeps the partial notebook under
``BUILD/failed/`` for reading, and leaves nothing a later run would take as done). Parameters given with
``-p NAME VALUE`` or ``--params-file FILE.yaml`` go to every notebook that declares them in its ``parameters``
cell; before anything runs, a name no notebook declares, a value out of range (:func:`hesslib.check_parameters`)
or an unwritable folder stops the run with one line (exit 2). Figures wait in ``BUILD/.staging/`` until their
notebook succeeds; the build, figure and rendered folders are locked for the run (a second run on them refuses),
and leftovers of a killed run are removed at the next start. Figures are recorded through
``$HESSLIB_FIGURE_LOG`` and listed with their notebook, parameters, the git commit, the machine and sha256
in ``MANIFEST.json`` beside them; the numbers a notebook records with :func:`hesslib.results.record` (through
``$HESSLIB_RESULTS_LOG``) go to ``RESULTS.json`` beside them.

Notebooks run one at a time, and each one's kernel starts while the notebook before it runs: it is launched in
a thread with that notebook's environment and runs the imports every notebook begins with, silently (no
execution count, no output), so the about 2.5 s of kernel start-up and imports per notebook overlap the work
before it; finished kernels exit in the background. On 2 cores a second run (everything cached) took 55-61 s with
this and 73-80 s without, run back to back.

``--jobs N`` runs up to N notebooks at once, each in a worker process with its own kernel environment; their
outputs are still installed one notebook at a time in story order, so the files are the same bytes as a run one
at a time, and a failure leaves the notebooks before it in place and nothing of those after it. Its workers start
their kernels when their notebook's turn comes, and their torch threads compete for the cores: on 2 cores a
second run took 62 s with 2 jobs, and 44-55 s one at a time in the same hour; an empty-cache run with 2 jobs is
many times slower (notebook 00 took 142 s, not 14 s). It is meant for machines with many more cores than one
kernel uses.

A default run (no parameters) also writes every executed notebook, without its volatile metadata, to
``notebooks/rendered/`` (so the repository host shows the paper with its outputs) and a paper page,
``BUILD/html/index.html``. A run WITH parameters writes its figures to ``BUILD/figures/`` unless it is given
``-p output_dir ...``, and rendered notebooks only where ``--rendered DIR`` says, so it never overwrites the
committed paper by accident.
"""

from __future__ import annotations

import argparse
import ast
import copy
import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

import yaml

from .cache import project_root, remove_stale_temporaries
from .plots import FIGURE_LOG_ENV, FIGURE_STAGING_ENV
from .progress import CONSOLE_PROGRESS_ENV
from .results import RESULTS_LOG_ENV


def notebooks(root: Path, only: str | None = None) -> list[Path]:
    """The story's notebooks ``notebooks/NN_*.ipynb`` in order (optionally those whose name contains ``only``)."""
    found = sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    return [nb for nb in found if only is None or only in nb.stem]


def parameter_value(source: str):
    """A parameter's default as papermill's ``inspect_notebook`` gives it (source text) turned into its value.

    Example:
        >>> parameter_value('"figures"'), parameter_value("[8, 16]"), parameter_value("np.pi")
        ('figures', [8, 16], 'np.pi')
    """
    try:
        return ast.literal_eval(source)
    except (ValueError, SyntaxError):
        return source


def git_commit(root: Path) -> str:
    """The HEAD commit of ``root``, with ``-dirty`` when hesslib/ or notebooks/ has changes; "unknown" without git."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "hesslib", "notebooks"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def sha256(path: Path) -> str:
    """The hex SHA-256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read_log(path: Path) -> list[dict]:
    entries = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    path.unlink(missing_ok=True)
    return entries


def declared_parameters(nb: Path) -> dict:
    """The parameters ``nb`` declares in its ``parameters`` cell, name → default value (read once per file version)."""
    stat = Path(nb).stat()
    return copy.deepcopy(dict(_declared(str(Path(nb).resolve()), stat.st_mtime_ns, stat.st_size)))


@functools.lru_cache(maxsize=64)
def _declared(path: str, _mtime_ns: int, _size: int) -> tuple[tuple[str, object], ...]:
    import papermill as pm

    return tuple((k, parameter_value(spec["default"])) for k, spec in pm.inspect_notebook(path).items())


def unknown_parameters(given: dict[str, str], declared: dict[str, set[str]]) -> str | None:
    """The error for a parameter name that no notebook declares, with the closest valid names; None if all are known.

    Args:
        given: each parameter name mapped to where it came from (``"-p"`` or the params file's name).
        declared: for each place, the names the notebooks it applies to declare (``-p`` names must be declared by a
            notebook being run, a params file's by any notebook of the story, since one file serves every run).
    """
    import difflib

    for name, source in given.items():
        valid = declared[source]
        if name not in valid:
            close = difflib.get_close_matches(name, sorted(valid), n=3, cutoff=0.6)
            hint = (f"; did you mean {' or '.join(close)}?" if close
                    else f"; the parameters are {', '.join(sorted(valid))}")
            return f"unknown parameter {name!r} (from {source}): no notebook run here declares it{hint}"
    return None


# run silently in each notebook's kernel as soon as it is up: the imports every notebook begins with (about 1.5 s)
KERNEL_WARM_UP = "import matplotlib.pyplot, numpy, torch, hesslib, hesslib.plots"


def _logs(nb: Path, out_dir: Path) -> tuple[Path, Path]:
    """Where a notebook's kernel logs the figures it saves and the numbers it records."""
    return tuple((out_dir / f".{nb.stem}.{kind}.jsonl").resolve() for kind in ("figures", "results"))


def notebook_environment(nb: Path, out_dir: Path, staging: Path | None) -> dict[str, str]:
    """The variables a notebook's kernel gets on top of the runner's.

    Where it logs its figures and numbers (:func:`_logs`, fresh files) and, with ``staging``, where its figures
    wait.
    """
    env = {}
    for name, log in zip((FIGURE_LOG_ENV, RESULTS_LOG_ENV), _logs(nb, out_dir), strict=True):
        log.unlink(missing_ok=True)
        env[name] = str(log)
    if staging is not None:
        env[FIGURE_STAGING_ENV] = str(staging)
    return env


class NotebookKernel:
    """A notebook's kernel, started in a thread, so that it can start while the notebook before it runs.

    It gets that notebook's environment, runs from the repository root and talks over IPC sockets in a temporary
    folder (no unencrypted-TCP warning, nothing in the project). Once it is up it runs :data:`KERNEL_WARM_UP`
    silently (no execution count, no output), so a kernel started ahead spares its notebook about 2.5 s of start-up
    and imports.

    ``manager()`` waits for the start and returns the ``KernelManager`` for papermill (``km=``); its clients are
    asynchronous, as nbclient's own. ``shutdown()`` stops the kernel and removes its sockets; call it in every case.
    """

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        import threading

        self.sockets = Path(tempfile.mkdtemp(prefix="hesslib-kernel-"))
        self._km = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._start, args=(root, {**os.environ, **env}), daemon=True,
                                        name="kernel-start")
        self._thread.start()

    def _start(self, root: Path, env: dict[str, str]) -> None:
        from jupyter_client import KernelManager

        try:
            km = KernelManager(kernel_name="python3", transport="ipc", ip=str(self.sockets / "kernel"),
                               client_class="jupyter_client.asynchronous.AsyncKernelClient")
            km.start_kernel(cwd=str(root), env=env)
            self._km = km
            client = km.blocking_client()
            client.start_channels()
            try:
                client.wait_for_ready(timeout=120)
                # a failed import is left for the notebook's own first cell to report, with its traceback
                client.execute(KERNEL_WARM_UP, silent=True, store_history=False, reply=True, timeout=300)
            finally:
                client.stop_channels()
        except BaseException as exc:  # re-raised by manager()
            self._error = exc

    def manager(self):
        """The started kernel's ``KernelManager``; raises what its start raised."""
        self._thread.join()
        if self._error is not None:
            raise RuntimeError(f"the notebook kernel did not start: {self._error}") from self._error
        return self._km

    def shutdown(self) -> None:
        """Stop the kernel (if it started) and remove its sockets, in a thread: :func:`wait_for_kernels` joins it."""
        import threading

        def stop() -> None:
            self._thread.join()
            try:
                if self._km is not None and self._km.has_kernel:
                    self._km.shutdown_kernel(now=False)  # about 0.9 s: the kernel's own clean exit
            finally:
                shutil.rmtree(self.sockets, ignore_errors=True)

        stopping = threading.Thread(target=stop, name="kernel-stop")
        stopping.start()
        _STOPPING.append(stopping)


_STOPPING: list = []  # the threads of NotebookKernel.shutdown still running


def wait_for_kernels() -> None:
    """Wait until every kernel that :meth:`NotebookKernel.shutdown` is stopping has exited."""
    while _STOPPING:
        _STOPPING.pop().join()


def run_notebook(nb: Path, out_dir: Path, params: dict, *, progress: bool = True,
                 staging: Path | None = None, install: bool = True,
                 kernel: NotebookKernel | None = None) -> tuple[Path, list[dict], list[dict]]:
    """Execute one notebook with the parameters of ``params`` that it declares.

    With ``staging``, the figures the notebook saves are written there (``$HESSLIB_FIGURE_STAGING``) and moved into
    place only after it succeeds; with ``install=False`` they stay staged (each figure keeps its ``"staged"``
    paths) for the caller's :func:`install_figures`. ``kernel``: a :class:`NotebookKernel` started ahead with
    :func:`notebook_environment` of this notebook, ``out_dir`` and ``staging`` (by default one is started now);
    it is shut down here.

    Returns:
        (executed path, figures it saved, numbers it recorded).
    """
    import papermill as pm

    root = project_root(nb.parent)
    declared = declared_parameters(nb)
    used = {k: v for k, v in params.items() if k in declared}
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / "notebooks" / nb.name
    tmp = out_dir / "notebooks" / f".{nb.stem}.running.ipynb"
    failed = out_dir / "failed" / nb.name
    final.parent.mkdir(parents=True, exist_ok=True)
    final.unlink(missing_ok=True)
    if staging is not None:
        shutil.rmtree(staging, ignore_errors=True)
    if kernel is None:
        kernel = NotebookKernel(root, notebook_environment(nb, out_dir, staging))
    figure_log, results_log = _logs(nb, out_dir)
    succeeded = False
    try:
        pm.execute_notebook(str(nb), str(tmp), parameters=used, cwd=str(root), kernel_name="python3",
                            progress_bar=progress, request_save_on_cell_execute=False, km=kernel.manager())
        figures = _read_log(figure_log)
        if install:
            install_figures(figures)
        succeeded = True
    except BaseException:
        failed.parent.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            os.replace(tmp, failed)
        _read_log(figure_log), _read_log(results_log)
        raise
    finally:
        kernel.shutdown()
        if staging is not None and (install or not succeeded):
            shutil.rmtree(staging, ignore_errors=True)
    os.replace(tmp, final)
    results = [{**entry, "notebook": f"notebooks/{nb.name}"} for entry in _read_log(results_log)]
    return final, figures, results


def install_figures(figures: list[dict]) -> None:
    """Move each figure's staged files (its ``"staged"`` paths, removed from the entry) to their final ``"files"``."""
    for fig in figures:
        for staged, target in zip(fig.pop("staged", []), fig["files"], strict=True):
            _install(Path(staged), Path(target))


def _worker_console(log: Path) -> None:
    """Set up a ``--jobs`` worker: its stderr, and so its kernels', goes to ``log`` instead of the console.

    Under load a kernel interrupted at its shutdown (as jupyter_client does) logs "KeyboardInterrupt caught in
    kernel"; failures still reach the console as the runner's one-line report. On Linux the worker also gets
    SIGTERM when the runner dies, so a killed run leaves no worker behind (its kernels follow their parent).
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 2)
    os.close(fd)
    if sys.platform.startswith("linux"):  # die with the runner (a kill of it alone would leave workers running)
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _run_in_worker(nb: Path, out_dir: Path, params: dict) -> tuple[Path, list[dict], list[dict], float] | str:
    """:func:`run_notebook` in a worker process of ``--jobs N``: figures left staged in ``BUILD/.staging/<stem>``.

    Returns (executed, figures, results, seconds), or the one-line failure (exceptions are not sent back: a
    papermill error does not survive pickling).
    """
    start = time.perf_counter()
    try:
        executed, figures, results = run_notebook(nb, out_dir, params, progress=False,
                                                  staging=out_dir / ".staging" / nb.stem, install=False)
    except Exception as exc:
        return _failure(nb, exc, out_dir)
    finally:
        wait_for_kernels()
    return executed, figures, results, time.perf_counter() - start


@contextmanager
def _environment(name: str, value: str | None) -> Iterator[None]:
    """Set (or, with None, leave unset) ``$name`` for the duration, restoring it afterwards."""
    before = os.environ.get(name)
    if value is not None:
        os.environ[name] = value
    try:
        yield
    finally:
        os.environ.pop(name, None)
        if before is not None:
            os.environ[name] = before


def _install(staged: Path, target: Path) -> None:
    """Move a staged file to ``target`` atomically (via a temporary copy beside it across file systems)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(staged, target)
    except OSError:
        tmp = target.with_name(f".{target.name}.tmp")
        shutil.copyfile(staged, tmp)
        os.replace(tmp, target)
        staged.unlink(missing_ok=True)


def render_html(executed: Path, out_dir: Path) -> Path:
    """Render an executed notebook to ``out_dir/html/<name>.html`` (written atomically); returns its path."""
    from nbconvert import HTMLExporter

    exporter = HTMLExporter()
    exporter.log.setLevel("ERROR")  # not one "alternative text is missing" warning per figure on the console
    body, _ = exporter.from_filename(str(executed))
    html = out_dir / "html" / f"{executed.stem}.html"
    html.parent.mkdir(parents=True, exist_ok=True)
    tmp = html.with_name(f".{html.name}.tmp")
    tmp.write_text(body)
    os.replace(tmp, html)
    return html


def machine() -> dict:
    """What determines a figure's bytes besides the code and the parameters: library versions, threads, CPU, OS."""
    import platform

    import matplotlib
    import numpy
    import torch

    from .training import TRAINING_THREADS

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
            "matplotlib": matplotlib.__version__, "torch_threads": torch.get_num_threads(),
            "training_threads": TRAINING_THREADS, "cpu": cpu, "cpu_count": os.cpu_count(),
            "platform": platform.platform()}


def write_manifest(path: Path, entries: list[dict], commit: str) -> None:
    """figures/MANIFEST.json: every figure file with its notebook, parameters, sha256, the git commit and machine."""
    path.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(path.read_text()) if path.exists() else {}
    figures = {f["name"]: f for f in old.get("figures", [])}
    for entry in entries:
        figures[entry["name"]] = entry
    manifest = {"git_commit": commit, "machine": machine(), "figures": [figures[k] for k in sorted(figures)]}
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


# ---- rendered notebooks, results and the paper page -----------------------------------------------------------
VOLATILE_CELL_KEYS = ("execution", "papermill")  # timestamps and durations of every cell
VOLATILE_NOTEBOOK_KEYS = ("papermill", "widgets")  # run times, input / output paths


def clean_notebook(nb: dict) -> dict:
    """An executed notebook without what changes from run to run.

    Removed: papermill's and Jupyter's timing metadata (per cell and per notebook) and widget state; the random
    id of papermill's injected-parameters cell becomes ``"injected-parameters"``; consecutive stream outputs of
    one cell to the same stream are merged into one (how the kernel splits them depends on timing: a cold run
    that computes between two prints splits where a cached one does not). Outputs, execution counts and the ids of
    the notebook's own cells stay.
    """
    nb = json.loads(json.dumps(nb))
    for key in VOLATILE_NOTEBOOK_KEYS:
        nb.get("metadata", {}).pop(key, None)
    for cell in nb.get("cells", []):
        for key in VOLATILE_CELL_KEYS:
            cell.get("metadata", {}).pop(key, None)
        if "injected-parameters" in cell.get("metadata", {}).get("tags", []):
            cell["id"] = "injected-parameters"  # papermill draws a random id for the cell it adds
        if "outputs" in cell:
            cell["outputs"] = _merged_streams(cell["outputs"])
    return nb


def _merged_streams(outputs: list[dict]) -> list[dict]:
    """``outputs`` with each run of consecutive stream outputs to the same stream joined into one."""
    merged: list[dict] = []
    for out in outputs:
        if (out.get("output_type") == "stream" and merged and merged[-1].get("output_type") == "stream"
                and merged[-1].get("name") == out.get("name")):
            text = "".join(merged[-1]["text"]) + "".join(out["text"])
            merged[-1]["text"] = text.splitlines(keepends=True)
        else:
            merged.append(out)
    return merged


def write_rendered(executed: Path, folder: Path) -> Path:
    """Write :func:`clean_notebook` of ``executed`` to ``folder/<name>.ipynb`` (atomically, nbformat's layout)."""
    nb = clean_notebook(json.loads(executed.read_text()))
    path = folder / executed.name
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


def write_results(path: Path, entries: list[dict]) -> None:
    """Write ``RESULTS.json``: every recorded number by name with its value, notebook, description and unit.

    Entries of earlier runs of other notebooks are kept (as in the manifest).
    """
    old = json.loads(path.read_text()) if path.exists() else {}
    results = dict(old.get("results", {}))
    for entry in entries:
        results[entry["name"]] = {k: v for k, v in entry.items() if k != "name"}
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"results": dict(sorted(results.items()))}, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


# the storyline: (notebook stem, act, what it asks, its key figure)
STORY = (
    ("00_background", "Background", "When does more data stop paying for itself?", "00_learning_curve"),
    ("01_rising_action", "Rising action", "Where does the loss landscape have structure?", "01_spectrum"),
    ("02_climax", "Climax", "How much does one batch move the landscape when data is scarce?",
     "02_surfaces_hessian_small_k"),
    ("03_falling_action", "Falling action", "And when data is plentiful?", "03_change_vs_k"),
    ("04_resolution", "Resolution", "How fast does Δ_k decay with k?", "04_delta_hessian"),
    ("05_theory_vs_monte_carlo", "Theory vs Monte Carlo", "Can curvature predict Δ_k without sampling?",
     "05_ratio_to_monte_carlo"),
    ("06_sufficient_sample_size", "Sufficient sample size", "How many batches are enough?",
     "06_sample_size_vs_tolerance"),
    ("07_how_certain_is_K", "How certain is K", "How far do the batch order, the θ draws and the seed move K?",
     "07_K_intervals"),
    ("08_why_the_quadratic_model_fails", "Why the quadratic model fails",
     "Kinks, saturation, higher-order terms or heavy tails?", "08_sigma_scan"),
)
TITLE = "When does one more batch stop changing the loss landscape?"
ABSTRACT = (
    "We train a network to w*, find the top-D eigenvectors P of the loss Hessian with Hessian-vector products, "
    "look at the loss only along w = w* + Pθ, and measure how much adding the (k+1)-th batch of a fixed order "
    "changes it: Δ_k = E_θ[(L_{k+1}(w* + Pθ) − L_k(w* + Pθ))²] with θ ~ N(0, σ²I). Δ_k is measured by Monte "
    "Carlo and predicted in closed form from curvature (the original paper's formula and the exact second-order "
    "estimate), for every k at once; the k after which Δ_k stays below a tolerance is the Δ-sufficient sample "
    "size K. Each section below states what this run found, in numbers computed by the notebooks."
)


def notebook_findings(executed: Path) -> str | None:
    """The Markdown of the "What we found" output of an executed notebook, if it has one."""
    nb = json.loads(executed.read_text())
    for cell in reversed(nb.get("cells", [])):
        for output in cell.get("outputs", []):
            text = output.get("data", {}).get("text/markdown")
            if text and "".join(text).lstrip().startswith("## What we found"):
                return "".join(text)
    return None


def write_index(out_dir: Path, figures: Path, results: dict) -> Path:
    """Write the paper page ``out_dir/html/index.html`` and return its path.

    It holds the title, the abstract, the storyline with each notebook's HTML, its key figure and its findings,
    and a table of the headline numbers of ``results`` (RESULTS.json's entries).
    """
    from html import escape

    from nbconvert.filters.markdown import markdown2html

    html_dir = out_dir / "html"
    (html_dir / "figures").mkdir(parents=True, exist_ok=True)
    parts = [f"<h1>{escape(TITLE)}</h1>", f"<p>{escape(ABSTRACT)}</p>", "<h2>The story</h2>"]
    for stem, act, question, figure in STORY:
        page = html_dir / f"{stem}.html"
        if not page.exists():
            continue
        parts.append(f'<h3><a href="{stem}.html">{escape(act)}</a>: {escape(question)}</h3>')
        png = figures / f"{figure}.png"
        if png.exists():
            shutil.copyfile(png, html_dir / "figures" / png.name)
            parts.append(f'<p><img src="figures/{png.name}" alt="{escape(figure)}" style="max-width: 720px"></p>')
        executed = out_dir / "notebooks" / f"{stem}.ipynb"
        findings = notebook_findings(executed) if executed.exists() else None
        if findings:
            parts.append(markdown2html(findings.replace("## What we found", "#### What we found", 1)))
    if results:
        rows = "".join(
            f"<tr><td><code>{escape(name)}</code></td><td>{escape(_format_value(entry.get('value')))}</td>"
            f"<td>{escape(entry.get('unit') or '')}</td><td>{escape(entry['description'])}</td>"
            f"<td>{escape(Path(entry['notebook']).stem)}</td></tr>"
            for name, entry in sorted(results.items(), key=lambda item: (item[1]["notebook"], item[0])))
        parts.append("<h2>Headline numbers</h2><table><tr><th>name</th><th>value</th><th>unit</th>"
                     f"<th>what it is</th><th>notebook</th></tr>{rows}</table>")
    style = ("body{font-family:sans-serif;max-width:960px;margin:2em auto;line-height:1.45}"
             "table{border-collapse:collapse;font-size:90%}td,th{border:1px solid #ccc;padding:3px 6px}")
    page = (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{escape(TITLE)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")
    index = html_dir / "index.html"
    tmp = index.with_name(".index.html.tmp")
    tmp.write_text(page)
    os.replace(tmp, index)
    return index


def _format_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(_format_value(v) for v in value)
    return "–" if value is None else str(value)


def output_places(params: dict, *, root: Path, out_dir: Path,
                  rendered: str | None = None) -> tuple[dict, Path | None]:
    """Where a run writes: (parameters with ``output_dir`` filled in, folder for rendered notebooks or None).

    A run without parameters is the paper's default run: figures go to the notebooks' default ``figures/`` and
    rendered notebooks to ``notebooks/rendered/``. A run with parameters but no ``output_dir`` writes its figures
    to ``out_dir/figures`` and renders nothing, unless ``rendered`` names a folder, so it never overwrites the
    committed paper by accident.
    """
    params = dict(params)
    if params and "output_dir" not in params:
        params["output_dir"] = str(out_dir / "figures")
        print(f"parameters given without output_dir: figures go to {params['output_dir']}", flush=True)
    if rendered:
        return params, (root / rendered).resolve()
    return params, None if params else root / "notebooks" / "rendered"


def parse_params(pairs: list[list[str]], params_file: str | None) -> dict:
    """Notebook parameters from a YAML file, then ``-p NAME VALUE`` pairs (each VALUE parsed as YAML) on top."""
    params: dict = {}
    if params_file:
        params.update(yaml.safe_load(Path(params_file).read_text()) or {})
    for name, value in pairs:
        params[name] = yaml.safe_load(value)
    return params


@contextmanager
def paper_lock(folders: list[Path]) -> Iterator[None]:
    """Hold a lock on each of ``folders`` for the duration, or raise :class:`RuntimeError` if another run holds one.

    The locks are ``flock``s on files in the system's temporary folder, named by a hash of each folder's absolute
    path, so two runs writing the same build, figure or rendered folder exclude each other wherever their other
    folders are, nothing is written into the project, and a lock dies with its process however it ends (Ctrl-C,
    a kill): a lock left by a dead run never blocks the next one.
    """
    import fcntl

    lock_dir = Path(tempfile.gettempdir()) / "hesslib-locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        for folder in sorted({Path(f).resolve() for f in folders}):
            digest = hashlib.sha256(str(folder).encode()).hexdigest()[:16]
            fh = stack.enter_context(open(lock_dir / f"{digest}.lock", "a+"))
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.seek(0)
                holder = fh.read().strip() or "another process"
                raise RuntimeError(f"another run is writing to {folder} ({holder}); wait for it to finish or stop "
                                   f"it, then run again") from None
            fh.seek(0)
            fh.truncate()
            fh.write(f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}")
            fh.flush()
        yield


def remove_leftovers(locked: Sequence[Path], shared: Sequence[Path] = (), *, min_age_s: float = 600.0) -> int:
    """Delete what an interrupted run can leave behind: temporary files and staged figures.

    Only names that this package's writers use for unfinished work are removed: ``.<name>.tmp`` and
    ``.<name>.<random>.tmp`` files, ``.<stem>.running.ipynb``, the runner's ``.<stem>.*.jsonl`` logs and the
    ``.staging`` folder. In ``locked`` folders (held by :func:`paper_lock`) they are all removed; in ``shared`` ones
    (a cache another process may be writing to) only temporary files older than ``min_age_s``.
    Returns how many were removed.
    """
    removed = sum(remove_stale_temporaries(folder, min_age_s=min_age_s) for folder in shared)
    for folder in locked:
        if not folder.is_dir():
            continue
        for pattern in (".*.tmp", ".*.running.ipynb", ".*.jsonl"):
            for leftover in folder.glob(pattern):
                leftover.unlink(missing_ok=True)
                removed += 1
        if (folder / ".staging").is_dir():
            shutil.rmtree(folder / ".staging")
            removed += 1
    return removed


def unwritable(folder: Path) -> str | None:
    """Why files cannot be written in ``folder`` (created if missing), or None when they can."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    return None


def _failure(nb: Path, exc: BaseException, out_dir: Path) -> str:
    """One line saying which notebook failed, in which cell, with which error, and where the details are."""
    from papermill.exceptions import PapermillExecutionError

    where = out_dir / "failed" / nb.name
    if isinstance(exc, PapermillExecutionError):
        return (f"{nb.name} failed in cell [{exc.exec_count}]: {exc.ename}: {exc.evalue} "
                f"(traceback in {os.path.relpath(where)})")
    return f"{nb.name} failed: {type(exc).__name__}: {exc} (partial notebook in {os.path.relpath(where)})"


def main(argv: list[str] | None = None) -> int:
    """The ``python -m hesslib.paper`` command line (see the module docstring); returns the exit status.

    Exit status: 0 on success, 1 if a notebook fails, 2 for a bad parameter (unknown name or value out of
    range; found before anything runs) or another run holding the lock, 130 on Ctrl-C.
    """
    from .parameters import ParameterError, check_parameters

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build", default="build", help="folder for executed notebooks and HTML")
    parser.add_argument("--params-file", help="YAML file of notebook parameters")
    parser.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="a notebook parameter (VALUE is parsed as YAML)")
    parser.add_argument("--only", help="run only notebooks whose name contains this")
    parser.add_argument("--rendered", help="folder for the rendered notebooks (default: notebooks/rendered for a "
                                           "run without parameters, none otherwise)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--jobs", type=int, default=1, metavar="N",
                        help="run up to N notebooks at once, each in its own worker process, and install their "
                             "outputs in story order (default 1, where each next kernel starts ahead). Only for a run "
                             "that reads its work from the cache, on many cores: computing notebooks compete for the "
                             "cores and run many times slower")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        print(f"hesslib.paper: --jobs must be an integer >= 1, got {args.jobs}", file=sys.stderr)
        return 2
    root = project_root()
    try:
        params = parse_params(args.param, args.params_file)
    except (OSError, yaml.YAMLError) as exc:
        print(f"hesslib.paper: cannot read the parameters: {exc}", file=sys.stderr)
        return 2
    out_dir = (root / args.build).resolve()
    story = notebooks(root)
    todo = notebooks(root, args.only)
    if not todo:
        print(f"hesslib.paper: no notebook in notebooks/ matches --only {args.only!r}", file=sys.stderr)
        return 1
    declared = {nb: declared_parameters(nb) for nb in story}
    sources = {name: f"--params-file {args.params_file}" for name in params} | {name: "-p" for name, _ in args.param}
    error = unknown_parameters(sources, {
        "-p": set().union(*(declared[nb] for nb in todo)),
        **{src: set().union(*declared.values()) for src in sources.values() if src != "-p"}})
    if error:
        print(f"hesslib.paper: {error}", file=sys.stderr)
        return 2
    for nb in todo:
        try:
            check_parameters(declared[nb] | {k: v for k, v in params.items() if k in declared[nb]})
        except ParameterError as exc:
            print(f"hesslib.paper: {nb.name}: {exc}", file=sys.stderr)
            return 2
    params, rendered = output_places(params, root=root, out_dir=out_dir, rendered=args.rendered)
    figure_dirs = {root / params.get("output_dir", declared[nb].get("output_dir", "figures")) for nb in todo}
    cache_dirs = {root / c for nb in todo if (c := params.get("cache_dir", declared[nb].get("cache_dir")))}
    places = [(out_dir, "--build"), *((f, "-p output_dir") for f in figure_dirs),
              *((c, "-p cache_dir") for c in cache_dirs), *([(rendered, "--rendered")] if rendered else [])]
    for folder, option in places:
        problem = unwritable(folder)
        if problem:
            print(f"hesslib.paper: cannot write to {folder} ({problem}); make it writable or choose another folder "
                  f"with {option}", file=sys.stderr)
            return 2
    # the notebooks' own bars on this terminal (not from notebooks running side by side)
    console = not args.no_progress and sys.stderr.isatty() and args.jobs == 1
    try:
        with (paper_lock([out_dir, *figure_dirs, *([rendered] if rendered else [])]),
              _environment(CONSOLE_PROGRESS_ENV, "1" if console else None)):
            return _run(todo, declared, params, root=root, out_dir=out_dir, rendered=rendered,
                        figure_dirs=figure_dirs, cache_dirs=cache_dirs, progress=not args.no_progress,
                        jobs=min(args.jobs, len(todo)))
    except RuntimeError as exc:
        print(f"hesslib.paper: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nhesslib.paper: interrupted; the notebooks that finished are in place, the one that was running "
              "changed nothing. Run again to finish.", file=sys.stderr)
        return 130


def _run(todo: list[Path], declared: dict[Path, dict], params: dict, *, root: Path, out_dir: Path,
         rendered: Path | None, figure_dirs: set[Path], cache_dirs: set[Path], progress: bool, jobs: int = 1) -> int:
    """Run ``todo`` under the lock, installing each notebook's outputs in story order as soon as it succeeds.

    With ``jobs`` > 1 the notebooks run in that many worker processes (each kernel with its own environment); the
    outputs of a notebook are installed only once every earlier one has succeeded, so a failure leaves what a
    one-at-a-time run leaves: the notebooks before it in place, nothing of those after it.
    """
    removed = remove_leftovers([*figure_dirs, out_dir, out_dir / "notebooks"], [*cache_dirs])
    if removed:
        print(f"removed {removed} leftover(s) of an interrupted run", flush=True)
    commit = git_commit(root)
    start = time.perf_counter()
    with ExitStack() as stack:
        futures = None
        if jobs > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            log = out_dir / "kernels.log"
            log.unlink(missing_ok=True)
            pool = ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                                       initializer=_worker_console, initargs=(log,))
            stack.callback(pool.shutdown, wait=True, cancel_futures=True)
            futures = [pool.submit(_run_in_worker, nb, out_dir, params) for nb in todo]
            print(f"running {len(todo)} notebooks, {jobs} at a time (their kernels' messages in {log})", flush=True)
        # each notebook's HTML render (about 1 s of nbconvert) runs in a thread while the next notebook executes
        from concurrent.futures import ThreadPoolExecutor

        renderer = stack.enter_context(ThreadPoolExecutor(max_workers=1, thread_name_prefix="html"))
        renders: list = []
        figures_dir = _install_in_order(todo, futures, declared, params, root=root, out_dir=out_dir,
                                        rendered=rendered, commit=commit, progress=progress,
                                        render=lambda executed: renders.append(
                                            renderer.submit(render_html, executed, out_dir)))
        for done in renders:
            done.result()  # an error in a render is the run's error
    if figures_dir is None:
        return 1
    results_file = figures_dir / "RESULTS.json"
    all_results = json.loads(results_file.read_text())["results"] if results_file.exists() else {}
    index = write_index(out_dir, figures_dir, all_results)
    print(f"paper built in {time.perf_counter() - start:.1f} s: notebooks and HTML in {out_dir}, "
          f"paper page {index}" + (f", rendered notebooks in {rendered}" if rendered else ""))
    return 0


def _install_in_order(todo: list[Path], futures: list | None, declared: dict[Path, dict], params: dict, *,
                      root: Path, out_dir: Path, rendered: Path | None, commit: str, progress: bool,
                      render=None) -> Path | None:
    """Run (``futures`` None) or collect each notebook in turn and install its outputs.

    ``render(executed)`` writes the HTML of an executed notebook (default: :func:`render_html` at once).

    Returns the figures folder of the last one, or None after a failure (reported in one line).
    """
    figures_dir = root / "figures"
    staging = out_dir / ".staging"
    ahead: NotebookKernel | None = None  # run one at a time, each next notebook's kernel starts during this one

    def start(nb: Path) -> NotebookKernel:
        return NotebookKernel(root, notebook_environment(nb, out_dir, staging))

    try:
        for i, nb in enumerate(todo, 1):
            print(f"[{i}/{len(todo)}] {nb.name}", flush=True)
            t0 = time.perf_counter()
            if futures is None:
                kernel, ahead = ahead or start(nb), (start(todo[i]) if i < len(todo) else None)
                try:
                    executed, figures, results = run_notebook(nb, out_dir, params, progress=progress, staging=staging,
                                                              kernel=kernel)
                except Exception as exc:  # papermill raises PapermillExecutionError with the cell's error
                    print(f"\n{_failure(nb, exc, out_dir)}", file=sys.stderr)
                    return None
            else:
                outcome = futures[i - 1].result()
                if isinstance(outcome, str):
                    print(f"\n{outcome}", file=sys.stderr)
                    _discard_later(todo[i:], futures[i:], out_dir)
                    return None
                executed, figures, results, ran = outcome
                install_figures(figures)
                shutil.rmtree(staging / nb.stem, ignore_errors=True)
            used = declared[nb] | {k: v for k, v in params.items() if k in declared[nb]}
            if render is None:
                render_html(executed, out_dir)
            else:
                render(executed)
            if rendered is not None:
                write_rendered(executed, rendered)
            by_folder: dict[Path, list[dict]] = {}
            for fig in figures:
                files = {Path(f).suffix[1:]: {"path": os.path.relpath(f, root), "sha256": sha256(Path(f))}
                         for f in fig["files"]}
                by_folder.setdefault(Path(fig["files"][0]).parent, []).append(
                    {"name": fig["name"], "notebook": f"notebooks/{nb.name}", "parameters": used, "files": files})
            for folder, entries in by_folder.items():
                write_manifest(folder / "MANIFEST.json", entries, commit)
            figures_dir = (root / used.get("output_dir", "figures")).resolve()
            if results:
                write_results(figures_dir / "RESULTS.json", results)
            took = f"{time.perf_counter() - t0:.1f} s" if futures is None else f"{ran:.1f} s in a worker"
            print(f"    done in {took}, {len(figures)} figure(s), {len(results)} number(s)", flush=True)
        return figures_dir
    finally:
        if ahead is not None:
            ahead.shutdown()
        wait_for_kernels()


def _discard_later(todo: list[Path], futures: list, out_dir: Path) -> None:
    """After a failure with ``--jobs``: undo what the notebooks after the failed one produced.

    The ones not started are cancelled, the running ones waited for; their executed notebooks and staged figures
    are removed, as if they had not run.
    """
    for future in futures:
        future.cancel()
    for nb, future in zip(todo, futures, strict=True):
        if not future.cancelled() and not isinstance(future.result(), str):
            (out_dir / "notebooks" / nb.name).unlink(missing_ok=True)
    shutil.rmtree(out_dir / ".staging", ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
