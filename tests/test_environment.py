"""environment.yml (conda / Binder) names exactly pyproject.toml's dependencies, constrained by the lock file."""

import json
import re
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def _environment() -> dict:
    return yaml.safe_load((ROOT / "environment.yml").read_text())


def _pip_section(env: dict) -> list[str]:
    sections = [dep["pip"] for dep in env["dependencies"] if isinstance(dep, dict) and "pip" in dep]
    assert len(sections) == 1, "environment.yml must have exactly one pip: section"
    return [str(line).strip() for line in sections[0]]


def _requirements(pip: list[str]) -> list[str]:
    return [line for line in pip if not line.startswith("-")]  # options: -c <lock>, -e .


def _lock() -> dict[str, str]:
    lines = (ROOT / "requirements-lock.txt").read_text().splitlines()
    pins = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"requirements-lock.txt: {line!r} is not an exact pin"
            pins[canonicalize_name(name)] = version
    return pins


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_environment_yml_matches_pyproject():
    pip = _pip_section(_environment())
    assert "-e ." in pip
    assert sorted(_requirements(pip)) == sorted(_project()["dependencies"])


def test_environment_yml_installs_the_locked_versions():
    # pip's -c in the pip: section is resolved next to environment.yml, as `make` installs with -c
    pip = _pip_section(_environment())
    assert "-c requirements-lock.txt" in pip
    lock = _lock()
    for line in _requirements(pip):
        req = Requirement(line)
        name = canonicalize_name(req.name)
        assert name in lock, f"{req.name} (environment.yml) is not pinned in requirements-lock.txt"
        assert req.specifier.contains(lock[name], prereleases=True), (
            f"environment.yml asks for {line}, requirements-lock.txt pins {req.name}=={lock[name]}"
        )
        for spec in req.specifier:
            if spec.operator == "==":
                assert spec.version == lock[name], f"{line} in environment.yml, {lock[name]} in the lock"


def test_environment_yml_python_matches_requires_python():
    conda = [dep for dep in _environment()["dependencies"] if isinstance(dep, str)]
    pythons = [m.group(1) for dep in conda if (m := re.fullmatch(r"python\s*=+\s*([\d.]+)", dep))]
    assert len(pythons) == 1, "environment.yml must pin python to one version"
    assert SpecifierSet(_project()["requires-python"]).contains(pythons[0])


def test_binder_reads_the_root_environment_yml():
    # repo2docker uses binder/ or .binder/ instead of the root whenever one exists
    assert not (ROOT / "binder").exists() and not (ROOT / ".binder").exists()
    # the notebooks run on the environment's default kernel, which Binder provides without a postBuild
    for notebook in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        kernel = json.loads(notebook.read_text())["metadata"]["kernelspec"]["name"]
        assert kernel == "python3", f"{notebook.name} asks for kernel {kernel!r}, which Binder lacks"


def test_torch_pinned_everywhere():
    assert "torch==2.13.0" in _project()["dependencies"]
    assert "torch==2.13.0" in _pip_section(_environment())
    lock = _lock()
    assert lock["torch"] == "2.13.0"
    for dep in _project()["dependencies"]:
        name = canonicalize_name(Requirement(dep).name)
        assert name in lock, f"{name} is not pinned in requirements-lock.txt"
