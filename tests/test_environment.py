"""environment.yml (conda / Binder) must name exactly the dependencies of pyproject.toml."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _pip_section(text: str) -> list[str]:
    lines = text.split("pip:", 1)[1].splitlines()
    return [m.group(1).strip() for line in lines if (m := re.match(r"\s+-\s+(.+)", line))]


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pip = _pip_section((ROOT / "environment.yml").read_text())
    assert "-e ." in pip
    assert sorted(d for d in pip if d != "-e .") == sorted(project["dependencies"])


def test_torch_pinned_everywhere():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "torch==2.13.0" in project["dependencies"]
    lock = (ROOT / "requirements-lock.txt").read_text().splitlines()
    assert "torch==2.13.0" in lock
    pinned = {line.split("==")[0].lower() for line in lock if "==" in line}
    for dep in project["dependencies"]:
        name = re.split(r"[<>=!~ \[]", dep)[0].lower()
        assert name in pinned, f"{name} is not pinned in requirements-lock.txt"
