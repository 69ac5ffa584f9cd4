"""`make paper`: run the notebooks in story order with papermill, render HTML, write figures/MANIFEST.json.

Each notebook is executed headlessly from the repository root into ``BUILD/notebooks/`` (written to a
temporary name and renamed only on success; a failure stops the run, keeps the partial notebook under
``BUILD/failed/`` for reading, and leaves nothing a later run would take as done). Parameters given with
``-p NAME VALUE`` or ``--params-file FILE.yaml`` go to every notebook that declares them in its ``parameters``
cell. Figures are recorded through ``$HESSLIB_FIGURE_LOG`` and listed with their notebook, parameters, the git
commit and sha256 in ``figures/MANIFEST.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from .cache import project_root
from .plots import FIGURE_LOG_ENV


def notebooks(root: Path, only: str | None = None) -> list[Path]:
    """The story's notebooks ``notebooks/NN_*.ipynb`` in order (optionally those whose name contains ``only``)."""
    found = sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    return [nb for nb in found if only is None or only in nb.stem]


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


def run_notebook(nb: Path, out_dir: Path, params: dict, *, progress: bool = True) -> tuple[Path, dict, list[dict]]:
    """Execute one notebook with the parameters it declares; return (executed path, parameters used, figures)."""
    import papermill as pm

    root = project_root(nb.parent)
    declared = pm.inspect_notebook(str(nb))
    used = {k: v for k, v in params.items() if k in declared}
    effective = {k: (used[k] if k in used else spec["default"]) for k, spec in declared.items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / "notebooks" / nb.name
    tmp = out_dir / "notebooks" / f".{nb.stem}.running.ipynb"
    failed = out_dir / "failed" / nb.name
    final.parent.mkdir(parents=True, exist_ok=True)
    final.unlink(missing_ok=True)
    log = out_dir / f".{nb.stem}.figures.jsonl"
    log.unlink(missing_ok=True)
    env_before = os.environ.get(FIGURE_LOG_ENV)
    os.environ[FIGURE_LOG_ENV] = str(log.resolve())
    try:
        pm.execute_notebook(str(nb), str(tmp), parameters=used, cwd=str(root), kernel_name="python3",
                            progress_bar=progress, request_save_on_cell_execute=False)
    except BaseException:
        failed.parent.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            os.replace(tmp, failed)
        raise
    finally:
        if env_before is None:
            os.environ.pop(FIGURE_LOG_ENV, None)
        else:
            os.environ[FIGURE_LOG_ENV] = env_before
    os.replace(tmp, final)
    figures = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    log.unlink(missing_ok=True)
    return final, effective, figures


def render_html(executed: Path, out_dir: Path) -> Path:
    """Render an executed notebook to ``out_dir/html/<name>.html`` (written atomically); returns its path."""
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_filename(str(executed))
    html = out_dir / "html" / f"{executed.stem}.html"
    html.parent.mkdir(parents=True, exist_ok=True)
    tmp = html.with_name(f".{html.name}.tmp")
    tmp.write_text(body)
    os.replace(tmp, html)
    return html


def write_manifest(path: Path, entries: list[dict], commit: str) -> None:
    """figures/MANIFEST.json: every figure file with its notebook, parameters, git commit and sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(path.read_text()) if path.exists() else {}
    figures = {f["name"]: f for f in old.get("figures", [])}
    for entry in entries:
        figures[entry["name"]] = entry
    manifest = {"git_commit": commit, "figures": [figures[k] for k in sorted(figures)]}
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def parse_params(pairs: list[list[str]], params_file: str | None) -> dict:
    """Notebook parameters from a YAML file, then ``-p NAME VALUE`` pairs (each VALUE parsed as YAML) on top."""
    params: dict = {}
    if params_file:
        params.update(yaml.safe_load(Path(params_file).read_text()) or {})
    for name, value in pairs:
        params[name] = yaml.safe_load(value)
    return params


def main(argv: list[str] | None = None) -> int:
    """The ``python -m hesslib.paper`` command line (see the module docstring); returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build", default="build", help="folder for executed notebooks and HTML")
    parser.add_argument("--params-file", help="YAML file of notebook parameters")
    parser.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="a notebook parameter (VALUE is parsed as YAML)")
    parser.add_argument("--only", help="run only notebooks whose name contains this")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    root = project_root()
    params = parse_params(args.param, args.params_file)
    out_dir = (root / args.build).resolve()
    todo = notebooks(root, args.only)
    if not todo:
        print("no notebooks found in notebooks/", file=sys.stderr)
        return 1
    commit = git_commit(root)
    entries: dict[str, list[dict]] = {}
    start = time.perf_counter()
    for i, nb in enumerate(todo, 1):
        print(f"[{i}/{len(todo)}] {nb.name}", flush=True)
        t0 = time.perf_counter()
        try:
            executed, used, figures = run_notebook(nb, out_dir, params, progress=not args.no_progress)
        except Exception as exc:  # papermill raises PapermillExecutionError with the cell's traceback
            print(f"\n{nb.name} FAILED: {exc}\nThe partial notebook is in {out_dir / 'failed' / nb.name}",
                  file=sys.stderr)
            return 1
        render_html(executed, out_dir)
        for fig in figures:
            files = {Path(f).suffix[1:]: {"path": os.path.relpath(f, root), "sha256": sha256(Path(f))}
                     for f in fig["files"]}
            entries.setdefault(str(Path(fig["files"][0]).parent), []).append(
                {"name": fig["name"], "notebook": f"notebooks/{nb.name}", "parameters": used, "files": files})
        print(f"    done in {time.perf_counter() - t0:.1f} s, {len(figures)} figure(s)", flush=True)
    for folder, figs in entries.items():
        write_manifest(Path(folder) / "MANIFEST.json", figs, commit)
    print(f"paper built in {time.perf_counter() - start:.1f} s: notebooks and HTML in {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
