"""The paper end to end: every notebook runs through `hesslib.paper.main` with the smoke parameters, writes its
executed notebook, HTML and figures, and the manifest describes the figures exactly; figures are byte-identical
across runs; committed notebooks are clean and parametrisable; a bad parameter fails before any work; a killed run
leaves no partial output and the next run gives the same files.

The notebooks run ONCE per session (module-scoped fixture, two single-threaded kernels at a time: about a minute
on 2 cores, 95 s one at a time; most of it is kernel start-up, imports and figures, several seconds per notebook)
and every check below reads that run.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
import torch
import yaml

from hesslib import paper

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "tests" / "smoke-params.yaml"
NOTEBOOKS = paper.notebooks(ROOT)  # notebooks/[0-9][0-9]_*.ipynb, whatever exists
# figures the first notebooks must write (later notebooks: at least one, named after their number)
EXPECTED_FIGURES = {
    "00_background": ["00_samples", "00_training_loss", "00_learning_curve"],
    "01_rising_action": ["01_spectrum", "01_hessian_vs_random_curvature"],
    "02_climax": ["02_surfaces_hessian_small_k", "02_surfaces_random_small_k"],
    "03_falling_action": ["03_surfaces_hessian_large_k", "03_surfaces_random_large_k", "03_change_vs_k"],
}
RERUN = "03_falling_action"  # a fast notebook with 3D surfaces and line plots, rerun for byte-identity


def _main(tmp: Path, figures: Path, cache: Path, *extra: str) -> int:
    return paper.main(["--params-file", str(SMOKE), "-p", "output_dir", str(figures), "-p", "cache_dir", str(cache),
                       "--build", str(tmp / "build"), "--rendered", str(tmp / "rendered"), "--no-progress", *extra])


@pytest.fixture(scope="module")
def environment():
    """Run from the repository root (as `make paper` does), kernels single-threaded unless told otherwise."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(ROOT)
        if "OMP_NUM_THREADS" not in os.environ:
            mp.setenv("OMP_NUM_THREADS", "1")
            mp.setenv("MKL_NUM_THREADS", "1")
        yield


@pytest.fixture(scope="module")
def paper_run(environment, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("paper")
    figures, cache = tmp / "figures", tmp / "cache"
    rc = _main(tmp, figures, cache, "--jobs", "2")  # single-threaded kernels, two at a time (as `make paper JOBS=2`)
    return {"rc": rc, "build": tmp / "build", "figures": figures, "cache": cache, "rendered": tmp / "rendered"}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _parameters_cell(nb) -> list:
    return [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]


# ---- (a) every notebook runs and leaves its outputs --------------------------------------------------------------
def test_notebooks_exist():
    names = [nb.stem for nb in NOTEBOOKS]
    assert set(EXPECTED_FIGURES) <= set(names), f"missing notebooks: {sorted(set(EXPECTED_FIGURES) - set(names))}"


def test_every_notebook_runs_and_is_rendered(paper_run):
    assert paper_run["rc"] == 0
    build = paper_run["build"]
    for nb in NOTEBOOKS:
        executed = build / "notebooks" / nb.name
        assert executed.exists(), f"no executed notebook for {nb.name}"
        assert (build / "html" / f"{nb.stem}.html").stat().st_size > 0
        outputs = [o for c in nbformat.read(executed, as_version=4).cells for o in c.get("outputs", [])]
        assert not [o for o in outputs if o.get("output_type") == "error"]
        assert any("image/png" in o.get("data", {}) for o in outputs), f"{nb.name} shows no figure"
    assert not (build / "failed").exists() or not list((build / "failed").iterdir())
    assert not list(build.glob("notebooks/.*")), "temporary notebook files left behind"


def test_expected_figures_exist(paper_run):
    figures = paper_run["figures"]
    for names in EXPECTED_FIGURES.values():
        for name in names:
            for ext in ("pdf", "png"):
                path = figures / f"{name}.{ext}"
                assert path.exists() and path.stat().st_size > 1000, f"missing or empty {path.name}"


def test_manifest_lists_every_figure_with_its_notebook_parameters_commit_and_hashes(paper_run):
    figures = paper_run["figures"]
    manifest = json.loads((figures / "MANIFEST.json").read_text())
    assert manifest["git_commit"] == paper.git_commit(ROOT)
    entries = {entry["name"]: entry for entry in manifest["figures"]}
    on_disk = {p.stem for p in figures.iterdir() if p.suffix in (".pdf", ".png")}
    assert set(entries) == on_disk
    smoke = yaml.safe_load(SMOKE.read_text())
    by_notebook: dict[str, list[str]] = {}
    for name, entry in entries.items():
        notebook = Path(entry["notebook"])
        assert notebook.parent.name == "notebooks" and (ROOT / notebook).exists()
        assert name.startswith(notebook.name[:3]), f"{name} is not prefixed with its notebook's number"
        by_notebook.setdefault(notebook.stem, []).append(name)
        params = entry["parameters"]
        assert params["output_dir"] == str(figures)
        for key, value in smoke.items():
            if key in params:
                assert params[key] == value, f"{name}: parameter {key} = {params[key]!r}, passed {value!r}"
        assert set(entry["files"]) == {"pdf", "png"}
        for ext, info in entry["files"].items():
            path = (ROOT / info["path"]).resolve()
            assert path == (figures / f"{name}.{ext}").resolve()
            assert info["sha256"] == _sha256(path)
    assert set(by_notebook) == {nb.stem for nb in NOTEBOOKS}, "every notebook must write at least one figure"
    for stem, names in EXPECTED_FIGURES.items():
        assert set(names) <= set(by_notebook[stem])


def _code(nb) -> list[str]:
    return [c.source for c in nb.cells if c.cell_type == "code" and "injected-parameters" not in c.metadata.get(
        "tags", [])]


def test_rendered_notebooks_carry_outputs_the_source_code_and_no_volatile_metadata(paper_run):
    for source in NOTEBOOKS:
        path = paper_run["rendered"] / source.name
        rendered = nbformat.read(path, as_version=4)
        assert _code(rendered) == _code(nbformat.read(source, as_version=4)), f"{source.name}: code differs"
        injected = [c for c in rendered.cells if "injected-parameters" in c.metadata.get("tags", [])]
        assert len(injected) == 1, "the smoke run passes parameters, so papermill's injected cell is there"
        assert "papermill" not in rendered.metadata and "widgets" not in rendered.metadata
        for cell in rendered.cells:
            assert "execution" not in cell.metadata and "papermill" not in cell.metadata
        outputs = [o for c in rendered.cells for o in c.get("outputs", [])]
        assert any("image/png" in o.get("data", {}) for o in outputs), f"{source.name} shows no figure"
        text = json.dumps(outputs)
        assert "IProgress" not in text and "TqdmWarning" not in text, f"{source.name} carries widget warnings"
        findings = paper.notebook_findings(path)
        assert findings and findings.startswith("## What we found") and findings.count("\n- ") >= 2, source.name


def test_results_json_records_the_headline_numbers_of_every_notebook(paper_run):
    results = json.loads((paper_run["figures"] / "RESULTS.json").read_text())["results"]
    assert len(results) >= 20
    for name, entry in results.items():
        assert set(entry) <= {"value", "notebook", "description", "unit"} and entry["description"], name
        assert (ROOT / entry["notebook"]).exists()
    assert {Path(e["notebook"]).stem for e in results.values()} == {nb.stem for nb in NOTEBOOKS}
    index = (paper_run["build"] / "html" / "index.html").read_text()
    for nb in NOTEBOOKS:
        assert f'href="{nb.stem}.html"' in index
    assert "What we found" in index and "Headline numbers" in index


def test_output_places_keep_a_non_default_run_away_from_the_committed_paper(tmp_path):
    root, out = tmp_path, tmp_path / "build"
    assert paper.output_places({}, root=root, out_dir=out) == ({}, root / "notebooks" / "rendered")
    params, rendered = paper.output_places({"sigma": 2}, root=root, out_dir=out)
    assert params == {"sigma": 2, "output_dir": str(out / "figures")} and rendered is None
    assert paper.output_places({"sigma": 2, "output_dir": "x"}, root=root, out_dir=out, rendered="r") == (
        {"sigma": 2, "output_dir": "x"}, root / "r")


def test_clean_notebook_drops_only_volatile_metadata():
    nb = {"metadata": {"papermill": {"duration": 1}, "kernelspec": {"name": "python3"}},
          "cells": [{"cell_type": "code", "metadata": {"execution": {"t": 1}, "papermill": {}, "tags": ["x"]},
                     "outputs": [{"output_type": "stream", "text": "a"}], "execution_count": 3, "source": "1"}]}
    clean = paper.clean_notebook(nb)
    assert clean["metadata"] == {"kernelspec": {"name": "python3"}}
    assert clean["cells"][0]["metadata"] == {"tags": ["x"]}
    assert clean["cells"][0]["outputs"] == nb["cells"][0]["outputs"]
    assert "papermill" in nb["metadata"], "the input is not modified"


def test_clean_notebook_merges_stream_outputs_split_by_timing():
    split = [{"output_type": "stream", "name": "stdout", "text": ["a\n", "b\n"]},
             {"output_type": "stream", "name": "stdout", "text": "c\nd"},
             {"output_type": "stream", "name": "stderr", "text": ["warn\n"]},
             {"output_type": "stream", "name": "stdout", "text": ["e\n"]},
             {"output_type": "display_data", "data": {}, "metadata": {}}]
    nb = {"metadata": {}, "cells": [{"cell_type": "code", "metadata": {}, "outputs": split, "source": ""}]}
    outputs = paper.clean_notebook(nb)["cells"][0]["outputs"]
    assert [o.get("name") for o in outputs] == ["stdout", "stderr", "stdout", None]
    assert outputs[0]["text"] == ["a\n", "b\n", "c\n", "d"]
    whole = {"metadata": {}, "cells": [{"cell_type": "code", "metadata": {}, "outputs": [
        {"output_type": "stream", "name": "stdout", "text": ["a\n", "b\n", "c\n", "d"]}], "source": ""}]}
    assert paper.clean_notebook(whole)["cells"][0]["outputs"] == [outputs[0]], "split or not, the same bytes"


# ---- (b) byte-identical figures and rendered notebooks on a rerun ----------------------------------------------
def test_rerun_gives_byte_identical_figures_and_rendered_notebooks(paper_run, tmp_path):
    assert paper_run["rc"] == 0
    figures = tmp_path / "figures"
    # a fresh cache too: training, eigenvectors and the surface grids are recomputed, not just re-plotted
    assert _main(tmp_path, figures, tmp_path / "cache", "--only", RERUN) == 0
    for name in EXPECTED_FIGURES[RERUN]:
        for ext in ("pdf", "png"):
            first, second = paper_run["figures"] / f"{name}.{ext}", figures / f"{name}.{ext}"
            assert first.read_bytes() == second.read_bytes(), f"{name}.{ext} differs between two runs"
    first, second = paper_run["rendered"] / f"{RERUN}.ipynb", tmp_path / "rendered" / f"{RERUN}.ipynb"
    # the figures folder is a parameter, printed nowhere but in the injected cell: compare with it normalised
    assert first.read_text().replace(str(paper_run["figures"]), "FIGURES").replace(
        str(paper_run["cache"]), "CACHE") == second.read_text().replace(str(figures), "FIGURES").replace(
        str(tmp_path / "cache"), "CACHE"), f"{RERUN}.ipynb differs between two runs"


# ---- (c) committed notebooks are clean and parametrisable --------------------------------------------------------
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[nb.stem for nb in NOTEBOOKS])
def test_committed_notebook_is_clean_with_one_literal_parameters_cell(path):
    import papermill as pm

    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"
    assert "widgets" not in nb.metadata
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, "committed notebooks carry no outputs"
    cells = _parameters_cell(nb)
    assert len(cells) == 1 and cells[0].cell_type == "code", "exactly one code cell tagged 'parameters'"
    names = []
    for node in ast.parse(cells[0].source).body:
        assert isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name), (
            f"only plain `name = literal` lines, got: {ast.unparse(node)}")
        ast.literal_eval(node.value)  # raises on anything but a literal
        names.append(node.targets[0].id)
    assert len(names) == len(set(names)), "a parameter is assigned twice"
    assert {"output_dir", "cache_dir"} <= set(names)
    # papermill must see every parameter (a comment containing '=' or ':' can hide one from it)
    assert list(pm.inspect_notebook(str(path))) == names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[nb.stem for nb in NOTEBOOKS])
def test_committed_rendered_notebook_is_the_default_run_of_the_current_source(path):
    """notebooks/rendered/ holds the default run of every notebook: outputs, findings, and the source's code."""
    rendered_path = ROOT / "notebooks" / "rendered" / path.name
    assert rendered_path.exists(), f"no rendered {path.name}: run `make paper` and commit notebooks/rendered/"
    rendered = nbformat.read(rendered_path, as_version=4)
    assert _code(rendered) == _code(nbformat.read(path, as_version=4)), (
        f"{path.name} changed since it was rendered: run `make paper` and commit notebooks/rendered/")
    assert not [c for c in rendered.cells if "injected-parameters" in c.metadata.get("tags", [])], (
        "the committed rendering must be the default run (no injected parameters)")
    outputs = [o for c in rendered.cells for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert paper.notebook_findings(rendered_path), f"{path.name}: rendering has no 'What we found' cell"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_every_notebook_runs_on_a_gpu_cold_and_warm(environment, tmp_path):
    """device="cuda": nothing the story hands to NumPy or matplotlib may stay on the GPU, whether a value was just
    computed (an empty cache) or read back from the cache (the second run)."""
    figures, cache = tmp_path / "figures", tmp_path / "cache"
    for run in ("cold", "warm"):
        assert _main(tmp_path / run, figures, cache, "-p", "device", "cuda", "--jobs", "3") == 0, run


# ---- (d) bad input fails before any work; an interrupted run leaves nothing and the next one completes -----------
def test_bad_parameter_fails_within_seconds_and_writes_nothing(environment, tmp_path):
    start = time.perf_counter()
    rc = _main(tmp_path, tmp_path / "figures", tmp_path / "cache", "-p", "dataset", "nonexistent")
    assert rc == 2 and time.perf_counter() - start < 30
    assert not (tmp_path / "build").exists() and not (tmp_path / "figures").exists()


def test_killed_run_leaves_no_partial_output_and_the_next_run_gives_the_same_files(paper_run, tmp_path):
    """Kill the whole process group (runner and kernel) while a notebook is half done, then run it again."""
    first = next(nb for nb in NOTEBOOKS if nb.stem == RERUN)  # a fast notebook that saves several figures
    figures, cache, build, rendered = (tmp_path / name for name in ("figures", "cache", "build", "rendered"))
    cmd = [sys.executable, "-m", "hesslib.paper", "--params-file", str(SMOKE), "-p", "output_dir", str(figures),
           "-p", "cache_dir", str(cache), "--build", str(build), "--rendered", str(rendered), "--no-progress",
           "--only", first.stem]
    run = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not list((build / ".staging").glob("*.png")):  # the notebook has saved a figure and is still running
        assert run.poll() is None, "the run ended before it could be interrupted"
        assert time.time() < deadline, "no figure was staged within 240 s"
        time.sleep(0.05)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    assert not [p for p in figures.glob("*") if p.suffix in (".png", ".pdf", ".json")], "a killed run wrote outputs"
    assert not (rendered / first.name).exists() and not (build / "notebooks" / first.name).exists()
    from hesslib.cache import load_torch

    for entry in cache.glob("*.pt"):
        assert load_torch(entry) is not None, f"cache entry {entry.name} is corrupt"
    assert _main(tmp_path, figures, cache, "--only", first.stem) == 0
    assert not list(build.rglob(".*.tmp")) and not (build / ".staging").exists()
    assert not list(figures.glob(".*"))
    assert not list(ROOT.glob("kernel-ipc-*")), "the kernels' IPC sockets were left in the project"
    for name in EXPECTED_FIGURES[first.stem]:
        for ext in ("pdf", "png"):
            assert (figures / f"{name}.{ext}").read_bytes() == (paper_run["figures"] / f"{name}.{ext}").read_bytes()
    results = json.loads((figures / "RESULTS.json").read_text())["results"]
    uninterrupted = json.loads((paper_run["figures"] / "RESULTS.json").read_text())["results"]
    assert results == {k: v for k, v in uninterrupted.items() if v["notebook"] == f"notebooks/{first.name}"}
    # (the rendered notebook prints the compute times stored in its own cache, so only its existence is compared)
    assert (rendered / first.name).exists()


# ---- (e) the way JupyterLab runs a notebook gives the same figures -------------------------------------------------
def test_jupyterlab_run_from_the_notebooks_folder_gives_the_same_figures(paper_run, tmp_path, monkeypatch):
    """Run a notebook as JupyterLab does: working directory notebooks/, the project's kernel, parameters edited in
    the parameters cell, and the interactive backend of `make lab` (ipympl) on; the figures must be the bytes of the
    papermill run."""
    import importlib.util
    import re

    from jupyter_client.kernelspec import KernelSpecManager
    from nbclient import NotebookClient

    if importlib.util.find_spec("ipympl") is None:  # (not imported here: importing it switches this process's backend)
        pytest.skip("ipympl is not installed")
    kernel = "hesslib" if "hesslib" in KernelSpecManager().find_kernel_specs() else "python3"
    path = ROOT / "notebooks" / f"{RERUN}.ipynb"
    nb = nbformat.read(path, as_version=4)
    values = {**yaml.safe_load(SMOKE.read_text()), "output_dir": str(tmp_path / "figures"),
              "cache_dir": str(tmp_path / "cache")}
    cell = _parameters_cell(nb)[0]
    for name, value in values.items():  # what a user does in JupyterLab: edit the values in place
        cell.source = re.sub(rf"^{name} = .*$", f"{name} = {value!r}", cell.source, flags=re.M)
    nb.cells.append(nbformat.v4.new_code_cell("import matplotlib\nprint(matplotlib.get_backend())"))
    monkeypatch.setenv("HESSLIB_INTERACTIVE", "1")  # as `make lab` sets it
    for name in ("HESSLIB_FIGURE_LOG", "HESSLIB_FIGURE_STAGING", "HESSLIB_RESULTS_LOG"):
        monkeypatch.delenv(name, raising=False)
    NotebookClient(nb, kernel_name=kernel, timeout=600,
                   resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    backend = "".join(o.get("text", "") for o in nb.cells[-1].outputs)
    assert "ipympl" in backend or "widget" in backend, f"not the interactive backend: {backend!r}"
    for name in EXPECTED_FIGURES[RERUN]:
        for ext in ("pdf", "png"):
            assert (tmp_path / "figures" / f"{name}.{ext}").read_bytes() == (
                paper_run["figures"] / f"{name}.{ext}").read_bytes(), f"{name}.{ext} differs from the papermill run"
