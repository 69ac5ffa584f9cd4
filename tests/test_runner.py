"""The `make paper` runner on its own: parameters checked before anything runs, one-line failures, no partial
outputs from a failed notebook, a lock against two runs writing the same folders, leftovers of a killed run removed.

Most tests use a throw-away project (a `pyproject.toml`, a link to `hesslib/` and one tiny notebook), so they take a
kernel start-up (a few seconds) rather than a real notebook's work; `tests/test_notebooks.py` runs the real ones.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from hesslib import paper

ROOT = Path(__file__).resolve().parents[1]

TINY_NOTEBOOK = [  # (source, tags) of its code cells
    ('output_dir = "figures"\ncache_dir = "data/cache"\nsigma = 1.0\npause = 0.0', ["parameters"]),
    ("import time\n\nimport matplotlib.pyplot as plt\n\nfrom hesslib import check_parameters\n"
             "from hesslib.plots import save_figure\n\ncheck_parameters(globals())\n"
             "fig, ax = plt.subplots()\nax.plot([0, 1], [0, sigma])\nsave_figure(fig, '00_line', output_dir)\n"
             "time.sleep(pause)", []),
    ("if sigma > 2:\n    raise RuntimeError(f'sigma {sigma} is too large for this notebook')", []),
]


def _project(tmp: Path) -> Path:
    """A minimal project: pyproject.toml, hesslib/ (a link) and notebooks/00_tiny.ipynb."""
    (tmp / "notebooks").mkdir(parents=True)
    (tmp / "pyproject.toml").write_text("[project]\nname = 'tiny'\n")
    (tmp / "hesslib").symlink_to(ROOT / "hesslib", target_is_directory=True)
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                           "language": "python"}})
    for source, tags in TINY_NOTEBOOK:
        nb.cells.append(nbformat.v4.new_code_cell(source, metadata={"tags": tags}))
    nbformat.write(nb, tmp / "notebooks" / "00_tiny.ipynb")
    return tmp


@pytest.fixture
def project(tmp_path, monkeypatch):
    root = _project(tmp_path / "project")
    monkeypatch.chdir(root)
    return root


def _no_work(monkeypatch):
    monkeypatch.setattr(paper, "run_notebook", lambda *a, **k: pytest.fail("a notebook ran"))


# ---- parameters checked before anything runs ---------------------------------------------------------------------
@pytest.mark.parametrize("argv, message", [
    (["-p", "sigmaa", "2"], "unknown parameter 'sigmaa' (from -p): no notebook run here declares it; did you mean "
                            "sigma?"),
    (["-p", "simga", "2"], "did you mean sigma?"),
    (["-p", "sigma", "-1"], "00_tiny.ipynb: parameter sigma = -1 is not allowed: a finite number > 0"),
    (["-p", "sigma", "abc"], "parameter sigma = 'abc' is not allowed"),
])
def test_bad_parameters_fail_before_any_notebook_runs(project, monkeypatch, capsys, argv, message):
    _no_work(monkeypatch)
    assert paper.main([*argv, "--build", str(project / "build")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_a_params_file_may_hold_names_of_other_notebooks_but_not_unknown_ones(project, monkeypatch, capsys):
    _no_work(monkeypatch)
    good = project / "good.yaml"
    good.write_text("sigma: 0.5\n")
    bad = project / "bad.yaml"
    bad.write_text("sigma: 0.5\nsamplez: 3\n")
    assert paper.main(["--params-file", str(bad), "--build", str(project / "build")]) == 2
    assert "unknown parameter 'samplez' (from --params-file" in capsys.readouterr().err


def test_every_declared_parameter_of_the_story_has_a_rule():
    from hesslib.parameters import RULES

    for nb in paper.notebooks(ROOT):
        missing = set(paper.declared_parameters(nb)) - set(RULES)
        assert not missing, f"{nb.name} declares parameters without a rule in hesslib.parameters: {missing}"


# ---- a failing notebook: one line, and nothing it wrote survives -------------------------------------------------
def test_failing_notebook_reports_one_line_and_changes_no_figure(project, capsys):
    build, figures = project / "build", project / "figures"
    executed = build / "notebooks" / "00_tiny.ipynb"
    executed.parent.mkdir(parents=True)
    executed.write_text("{}")  # a stale result of an earlier run must not survive a failed one
    _write_notebook(project, "01_next.ipynb", TINY_NOTEBOOK[:2])  # its kernel starts during 00: 00's failure stops it
    rc = paper.main(["-p", "sigma", "3", "--build", str(build), "--no-progress"])
    out, err = capsys.readouterr()
    err = err.strip().splitlines()
    assert rc == 1 and "01_next.ipynb" not in out
    if Path("/proc/self/stat").exists():
        assert _kernels_of(os.getpid()) == [], "a kernel outlived the run"
    assert err[-1].startswith("00_tiny.ipynb failed in cell [4]: RuntimeError: sigma 3 is too large for this notebook")
    assert "traceback in" in err[-1] and "Traceback" not in "\n".join(err)
    assert not executed.exists() and (build / "failed" / "00_tiny.ipynb").exists()
    saved_before_the_error = build / "figures" / "00_line.png"  # -p without output_dir: figures go to build/figures
    assert not saved_before_the_error.exists(), "a failed notebook's figure was installed"
    assert not (build / "figures" / "MANIFEST.json").exists() and not figures.exists()
    assert not (build / ".staging").exists()


def test_a_successful_run_installs_figures_with_the_machine_in_the_manifest(project):
    assert paper.main(["--build", str(project / "build"), "--no-progress"]) == 0
    manifest = json.loads((project / "figures" / "MANIFEST.json").read_text())
    assert [f["name"] for f in manifest["figures"]] == ["00_line"]
    machine = manifest["machine"]
    assert {"torch", "numpy", "matplotlib", "torch_threads", "training_threads", "cpu", "platform"} <= set(machine)
    assert (project / "figures" / "00_line.png").exists() and not (project / "build" / ".staging").exists()
    assert (project / "notebooks" / "rendered" / "00_tiny.ipynb").exists()


def _write_notebook(root: Path, name: str, cells: list[tuple[str, list[str]]]) -> None:
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                           "language": "python"}})
    for source, tags in cells:
        nb.cells.append(nbformat.v4.new_code_cell(source, metadata={"tags": tags}))
    nbformat.write(nb, root / "notebooks" / name)


def test_jobs_install_in_story_order_and_a_failure_leaves_nothing_of_the_notebooks_after_it(project, capsys):
    # 00 is slower than 01, which fails; 02 runs in the freed worker: only 00 is installed, nothing of 02 survives
    (project / "notebooks" / "00_tiny.ipynb").unlink()
    slow = [(TINY_NOTEBOOK[0][0].replace("pause = 0.0", "pause = 1.0"), ["parameters"]), TINY_NOTEBOOK[1]]
    _write_notebook(project, "00_slow.ipynb", slow)
    _write_notebook(project, "01_fails.ipynb", [*TINY_NOTEBOOK[:2], ("raise RuntimeError('broken')", [])])
    quick = [TINY_NOTEBOOK[0], (TINY_NOTEBOOK[1][0].replace("'00_line'", "'02_line'"), [])]
    _write_notebook(project, "02_quick.ipynb", quick)
    build, figures = project / "build", project / "figures"
    assert paper.main(["--build", str(build), "--no-progress", "--jobs", "2"]) == 1
    out, err = capsys.readouterr()
    assert err.strip().splitlines()[-1].startswith("01_fails.ipynb failed in cell [3]: RuntimeError: broken")
    assert "00_slow.ipynb" in out and "02_quick.ipynb" not in out
    manifest = json.loads((figures / "MANIFEST.json").read_text())
    assert [f["notebook"] for f in manifest["figures"]] == ["notebooks/00_slow.ipynb"]
    assert (figures / "00_line.png").exists() and not (figures / "02_line.png").exists()
    assert sorted(p.name for p in (build / "notebooks").iterdir()) == ["00_slow.ipynb"]
    assert not (build / ".staging").exists() and (build / "failed" / "01_fails.ipynb").exists()
    assert sorted(p.name for p in (project / "notebooks" / "rendered").iterdir()) == ["00_slow.ipynb"]
    # the same notebook run alone, one at a time, writes the same bytes
    before = {p: p.read_bytes() for p in [figures / "00_line.png", figures / "00_line.pdf",
                                          project / "notebooks" / "rendered" / "00_slow.ipynb"]}
    assert paper.main(["--build", str(build), "--no-progress", "--only", "00"]) == 0
    assert all(path.read_bytes() == data for path, data in before.items())
    assert paper.main(["--build", str(build), "--jobs", "0"]) == 2
    assert capsys.readouterr().err.strip() == "hesslib.paper: --jobs must be an integer >= 1, got 0"


# ---- kernels started ahead ---------------------------------------------------------------------------------------
def _kernels_of(pid: int) -> list[int]:
    """The live ipykernel processes whose parent is ``pid`` (Linux: read from /proc)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            stat = (proc / "stat").read_text()
            cmdline = (proc / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z" and b"ipykernel" in cmdline:
            found.append(int(proc.name))
    return found


def test_a_kernel_started_ahead_runs_its_notebook_with_its_environment_and_no_trace_of_the_warm_up(project):
    import papermill as pm

    kernel = paper.NotebookKernel(project, {"HESSLIB_TEST_AHEAD": "ahead"})
    _write_notebook(project, "01_probe.ipynb", [(
        "import os, sys\nprint(os.environ['HESSLIB_TEST_AHEAD'], os.getcwd(), 'torch' in sys.modules)", [])])
    executed = pm.execute_notebook(str(project / "notebooks" / "01_probe.ipynb"), str(project / "out.ipynb"),
                                   kernel_name="python3", progress_bar=False, km=kernel.manager())
    km = kernel.manager()
    kernel.shutdown()
    paper.wait_for_kernels()
    cell = executed.cells[0]
    assert cell.execution_count == 1  # the silent warm-up left no count
    assert cell.outputs[0]["text"] == f"ahead {project} True\n"  # its environment, the root, the imports done
    assert not km.is_alive() and not kernel.sockets.exists()


# ---- the lock: two runs writing the same folders -----------------------------------------------------------------
def test_lock_refuses_a_second_holder_and_dies_with_its_process(tmp_path):
    folder = tmp_path / "out"
    with paper.paper_lock([folder]):
        with pytest.raises(RuntimeError, match=r"another run is writing to .*out \(pid \d+"):
            with paper.paper_lock([tmp_path / "elsewhere", folder]):
                pass
    with paper.paper_lock([folder]):  # released
        pass
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from hesslib.paper import paper_lock\nwith paper_lock([Path(sys.argv[1])]):\n"
                               "    print('held', flush=True); time.sleep(60)", str(folder)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RuntimeError, match="another run"):
            with paper.paper_lock([folder]):
                pass
    finally:
        holder.kill()
        holder.wait()
    with paper.paper_lock([folder]):  # a killed holder leaves no lock behind
        pass


def test_two_runs_at_once_one_refuses_and_the_outputs_are_whole(project):
    cmd = [sys.executable, "-m", "hesslib.paper", "-p", "pause", "3", "-p", "output_dir", "figures",
           "--build", "build", "--no-progress"]
    runs = [subprocess.Popen(cmd, cwd=project, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for _ in range(2)]
    outputs = [run.communicate(timeout=120)[0] for run in runs]
    codes = sorted(run.returncode for run in runs)
    assert codes in ([0, 0], [0, 2]), outputs
    for code, out in zip([run.returncode for run in runs], outputs, strict=True):
        if code == 2:
            assert "another run is writing to" in out and "wait for it to finish" in out
    manifest = json.loads((project / "figures" / "MANIFEST.json").read_text())
    png = project / "figures" / "00_line.png"
    assert manifest["figures"][0]["files"]["png"]["sha256"] == paper.sha256(png)


# ---- leftovers of a killed run -------------------------------------------------------------------------------------
def test_leftovers_are_removed_from_locked_folders_and_only_old_ones_from_shared(tmp_path):
    locked, shared = tmp_path / "build", tmp_path / "cache"
    for folder in (locked, shared):
        folder.mkdir()
    (locked / ".fig.png.tmp").write_text("x")
    (locked / ".00_x.running.ipynb").write_text("x")
    (locked / ".staging").mkdir()
    (locked / "00_done.png").write_text("kept")
    fresh, old = shared / ".train-abc.pt.k3j9x2ab.tmp", shared / ".eigen-def.pt.x9q7w1zz.tmp"
    fresh.write_text("being written by another process")
    old.write_text("left by a dead one")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    (shared / "train-abc.pt").write_text("a cache entry")
    assert paper.remove_leftovers([locked], [shared]) == 4
    assert sorted(p.name for p in locked.iterdir()) == ["00_done.png"]
    assert sorted(p.name for p in shared.iterdir()) == [fresh.name, "train-abc.pt"]


# ---- the real story's parameters: each bad value named within seconds ---------------------------------------------
@pytest.mark.parametrize("argv, message", [
    (["-p", "sigma", "0"], "04_resolution.ipynb: parameter sigma = 0 is not allowed: a finite number > 0"),
    (["-p", "sigma", "-1"], "parameter sigma = -1 is not allowed"),
    (["-p", "sigmas", "[0.1, -1]"], "parameter sigmas = [0.1, -1] is not allowed: a non-empty list of finite"),
    (["-p", "samples", "0"], "parameter samples = 0 is not allowed: an integer ≥ 1"),
    (["-p", "D", "0"], "01_rising_action.ipynb: parameter D = 0 is not allowed: an integer in [1, 269321]"),
    (["-p", "D", "300000"], "parameter D = 300000 is not allowed: an integer in [1, 269321] (D < M = 269,322"),
    (["-p", "dataset", "mnits"], "parameter dataset = 'mnits' is not allowed: one of ('mnist5k', 'digits'"),
    (["-p", "model", "rnn"], "parameter model = 'rnn' is not allowed: one of ('linear', 'mlp', 'cnn')"),
    (["-p", "large_k", "78"], "parameter large_k = 78 is not allowed: an integer in [2, 77] (1 ≤ small_k < large_k"),
    (["-p", "small_k", "0"], "parameter small_k = 0 is not allowed"),
    (["-p", "limit", "100"], "parameter limit = 100 is not allowed: at least 2 batches: limit ≥ 2·batch_size = 128"),
    (["-p", "batch_size", "0"], "parameter batch_size = 0 is not allowed"),
    (["-p", "tolerances", "[]"], "parameter tolerances = [] is not allowed"),
    (["-p", "tail_fraction", "1.5"], "parameter tail_fraction = 1.5 is not allowed: a number in (0, 1)"),
    (["-p", "device", "cuda:7"] if not __import__("torch").cuda.is_available() else ["-p", "device", "tpu"],
     "parameter device = "),
    (["-p", "sigmaa", "2"], "unknown parameter 'sigmaa' (from -p): no notebook run here declares it; did you mean "
                            "sigma or sigmas?"),
    (["--only", "04", "-p", "grid_points", "5"], "unknown parameter 'grid_points' (from -p)"),
])
def test_the_story_rejects_each_bad_value_before_any_work(monkeypatch, capsys, tmp_path, argv, message):
    monkeypatch.chdir(ROOT)
    _no_work(monkeypatch)
    start = time.perf_counter()
    assert paper.main([*argv, "--build", str(tmp_path / "build")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert time.perf_counter() - start < 20
    assert not (tmp_path / "build").exists()


def test_an_unwritable_output_folder_is_one_line_before_any_work(project, monkeypatch, capsys):
    _no_work(monkeypatch)
    (project / "blocker").write_text("a file where a folder should be")  # makes mkdir fail, even for root
    assert paper.main(["-p", "output_dir", str(project / "blocker" / "figures"), "--build", "build"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"hesslib.paper: cannot write to {project / 'blocker' / 'figures'} (") and (
        "choose another folder with -p output_dir" in err) and err.count("\n") == 1, err


def test_two_processes_filling_one_cache_entry_at_once_leave_a_whole_entry(tmp_path):
    """Runs with different output folders may share a cache: both compute, both rename into place, one wins."""
    script = ("import sys, time, torch\nfrom hesslib.cache import cached\n"
              "value = cached('shared', {'n': 1}, lambda: (time.sleep(1), torch.arange(2e6, dtype=torch.float64))[1], "
              "cache_dir=sys.argv[1])\nprint(float(value.sum()))")
    runs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True)
            for _ in range(2)]
    outputs = [run.communicate(timeout=120)[0].strip() for run in runs]
    assert all(run.returncode == 0 for run in runs) and outputs[0] == outputs[1] == str(float(sum(range(2_000_000))))
    from hesslib.cache import load_torch

    entries = list(tmp_path.glob("shared-*.pt"))
    assert len(entries) == 1 and not list(tmp_path.glob(".*"))
    assert load_torch(entries[0])["value"].shape == (2_000_000,)
