"""`make verify`: RESULTS.json entries compared within their stated tolerances; misses fail, times are skipped."""

from __future__ import annotations

import json
from pathlib import Path

from hesslib import verify

ROOT = Path(__file__).resolve().parents[1]


def _entry(value, unit=None):
    return {"value": value, "description": "x", "notebook": "notebooks/00_x.ipynb", **({"unit": unit} if unit else {})}


def test_tolerances_by_kind():
    assert verify.tolerance(_entry(1.0)) == "±5%"
    assert verify.tolerance(_entry([38, 45], "batches")) == "±max(2, 10%)"
    assert verify.tolerance(_entry("saturation")) == "exact"
    assert verify.tolerance(_entry(12.5, "s")) is None


def test_compare_statuses():
    committed = {"a": _entry(1.0), "b": _entry(1.0), "c": _entry(1.0), "K": _entry([38, 20]), "K2": _entry([38]),
                 "t": _entry(3.0, "s"), "gone": _entry(1), "verdict": _entry("saturation"), "n": _entry(None)}
    current = {"a": _entry(1.0), "b": _entry(1.04), "c": _entry(1.06), "K": _entry([40, 22]), "K2": _entry([43]),
               "t": _entry(300.0, "s"), "new": _entry(2), "verdict": _entry("kinks"), "n": _entry(None)}
    status = {row["name"]: row["status"] for row in verify.compare(committed, current)}
    assert status == {"a": "exact", "b": "within", "c": "MISS", "K": "within", "K2": "MISS", "t": "not compared",
                      "gone": "MISSING", "new": "NEW", "verdict": "MISS", "n": "exact"}
    assert not verify.matches(_entry([1.0, 2.0]), _entry([1.0])), "lists of different lengths never match"


def test_main_prints_the_table_and_fails_on_a_miss(tmp_path, capsys):
    committed = json.loads((ROOT / "figures" / "RESULTS.json").read_text())
    reference = tmp_path / "committed.json"
    reference.write_text(json.dumps(committed))
    assert verify.main(["--reference", str(reference), "--results", str(reference)]) == 0
    out = capsys.readouterr().out
    n = len(committed["results"])
    assert f"{n} entries: " in out and " 0 missed, 0 missing" in out
    name, entry = next((k, e) for k, e in committed["results"].items() if isinstance(e["value"], float)
                       and e.get("unit") != "s")
    changed = json.loads(json.dumps(committed))
    changed["results"][name]["value"] = entry["value"] * 1.5 + 1
    run = tmp_path / "run.json"
    run.write_text(json.dumps(changed))
    assert verify.main(["--reference", str(reference), "--results", str(run)]) == 1
    assert any(line.startswith(name) and line.endswith("MISS") for line in capsys.readouterr().out.splitlines())


def test_missing_results_give_one_line(tmp_path, capsys):
    reference = tmp_path / "committed.json"
    reference.write_text(json.dumps({"results": {}}))
    assert verify.main(["--reference", str(reference), "--results", str(tmp_path / "none.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hesslib.verify: cannot read") and "make paper" in err and err.count("\n") == 1


def test_nested_lists_are_compared_element_by_element():
    entry = {"value": [[1.0, None], [3, 4]], "unit": ""}
    assert verify.matches(entry, {"value": [[1.01, None], [3, 5]]})
    assert not verify.matches(entry, {"value": [[1.2, None], [3, 4]]})
    assert not verify.matches(entry, {"value": [[1.0], [3, 4]]})
