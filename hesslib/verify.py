"""`make verify`: does a run reproduce the committed paper's numbers?

Every entry of a ``RESULTS.json`` is compared with the committed one, within a tolerance stated per entry, and a
table of matches and misses is printed.

By default the last run's ``figures/RESULTS.json`` is compared with the one committed at ``HEAD``; ``--rerun`` first
runs the whole paper into ``build/verify/`` (figures there, the committed ones untouched) reading the usual cache,
and ``--rerun --cold`` with an empty cache of its own, which recomputes everything: that is the reproduction on a
new machine (about half an hour on 2 cores). Exit status 0 when every entry matches, 1 on a miss.

Tolerances (:func:`tolerance`): strings and booleans exactly; integers (K, counts of batches or samples) within
max(2, 10 %); other numbers within 5 % relative (or 1e-9 absolute, for values near zero); lists element-wise, with
the same length; times (unit ``s``) are not compared, since they measure the machine. On the machine that
produced the committed numbers a rerun matches every entry exactly.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

from .cache import project_root

RELATIVE = 0.05  # other numbers: 5 % relative
ABSOLUTE = 1e-9  # ... or this close in absolute terms
INTEGER_RELATIVE, INTEGER_ABSOLUTE = 0.10, 2  # integers: within max(2, 10 %)


def tolerance(entry: dict) -> str | None:
    """The tolerance of an entry in words, or None when it is not compared (a time)."""
    if entry.get("unit") == "s":
        return None
    values = entry["value"] if isinstance(entry["value"], list) else [entry["value"]]
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values if v is not None) and any(
            v is not None for v in values):
        return f"±max({INTEGER_ABSOLUTE}, {INTEGER_RELATIVE:.0%})"
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values if v is not None):
        return f"±{RELATIVE:.0%}"
    return "exact"


def _close(a, b) -> bool:
    if isinstance(a, list) or isinstance(b, list):  # nested lists (e.g. one list per model) element by element
        return isinstance(a, list) and isinstance(b, list) and len(a) == len(b) and all(map(_close, a, b))
    if a is None or b is None or isinstance(a, str | bool) or isinstance(b, str | bool):
        return a == b
    if isinstance(a, int) and isinstance(b, int):
        return abs(a - b) <= max(INTEGER_ABSOLUTE, INTEGER_RELATIVE * abs(a))
    return math.isclose(a, b, rel_tol=RELATIVE, abs_tol=ABSOLUTE)


def matches(committed: dict, current: dict) -> bool:
    """Whether ``current``'s value reproduces ``committed``'s within :func:`tolerance` (times always match)."""
    if tolerance(committed) is None:
        return True
    return _close(committed["value"], current["value"])


def compare(committed: dict[str, dict], current: dict[str, dict]) -> list[dict]:
    """One row per entry of either file: name, both values, the tolerance and the status.

    Status: ``"exact"`` (identical), ``"within"`` (inside the tolerance), ``"MISS"`` (outside), ``"not compared"``
    (a time), ``"MISSING"`` (committed but not produced) or ``"NEW"`` (produced but not committed).
    """
    rows = []
    for name in sorted(set(committed) | set(current)):
        old, new = committed.get(name), current.get(name)
        if old is None or new is None:
            status = "MISSING" if new is None else "NEW"
            rows.append(dict(name=name, committed=old and old["value"], current=new and new["value"],
                             tolerance="", status=status))
            continue
        tol = tolerance(old)
        if tol is None:
            status = "not compared"
        elif old["value"] == new["value"]:
            status = "exact"
        else:
            status = "within" if matches(old, new) else "MISS"
        rows.append(dict(name=name, committed=old["value"], current=new["value"], tolerance=tol or "(a time)",
                         status=status))
    return rows


def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        text = "[" + ", ".join(_short(v) for v in value) + "]"
        return text if len(text) <= 36 else text[:33] + "…]"
    return "–" if value is None else str(value)


def format_table(rows: list[dict]) -> str:
    """The comparison as a fixed-width text table with a one-line summary at the end."""
    width = max([len(r["name"]) for r in rows] + [5])
    lines = [f"{'entry':<{width}}  {'committed':>38}  {'this run':>38}  {'tolerance':>14}  status"]
    for r in rows:
        lines.append(f"{r['name']:<{width}}  {_short(r['committed']):>38}  {_short(r['current']):>38}  "
                     f"{r['tolerance']:>14}  {r['status']}")
    counts = {s: sum(r["status"] == s for r in rows) for s in ("exact", "within", "not compared", "MISS",
                                                                 "MISSING", "NEW")}
    lines.append(f"{len(rows)} entries: {counts['exact']} exact, {counts['within']} within tolerance, "
                 f"{counts['not compared']} not compared (times), {counts['MISS']} missed, "
                 f"{counts['MISSING']} missing, {counts['NEW']} new")
    return "\n".join(lines)


def committed_results(root: Path, path: str = "figures/RESULTS.json", revision: str = "HEAD") -> dict:
    """``RESULTS.json``'s entries as committed at ``revision`` (git), or :class:`RuntimeError` saying why not."""
    try:
        text = subprocess.run(["git", "show", f"{revision}:{path}"], cwd=root, capture_output=True, text=True,
                              check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise RuntimeError(f"cannot read {path} at {revision} with git ({exc}); pass --reference FILE") from None
    return json.loads(text)["results"]


def main(argv: list[str] | None = None) -> int:
    """The ``python -m hesslib.verify`` command line (see the module docstring); returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", help="the RESULTS.json to check (default: figures/RESULTS.json, or the "
                                          "rerun's)")
    parser.add_argument("--reference", help="a RESULTS.json to compare with (default: figures/RESULTS.json at "
                                            "git HEAD)")
    parser.add_argument("--rerun", action="store_true", help="run the whole paper into build/verify/ first")
    parser.add_argument("--cold", action="store_true", help="with --rerun: an empty cache, recompute everything")
    args = parser.parse_args(argv)
    root = project_root()
    try:
        committed = (json.loads(Path(args.reference).read_text())["results"] if args.reference
                     else committed_results(root))
    except (OSError, RuntimeError, ValueError, KeyError) as exc:
        print(f"hesslib.verify: {exc}", file=sys.stderr)
        return 2
    results = Path(args.results) if args.results else root / "figures" / "RESULTS.json"
    if args.rerun:
        from . import paper

        build = root / "build" / "verify"
        extra = ["-p", "cache_dir", str(build / "cache")] if args.cold else []
        rc = paper.main(["--build", str(build), "-p", "output_dir", str(build / "figures"), *extra])
        if rc != 0:
            return rc
        results = build / "figures" / "RESULTS.json"
    try:
        current = json.loads(results.read_text())["results"]
    except (OSError, ValueError, KeyError) as exc:
        print(f"hesslib.verify: cannot read {results}: {exc}; run `make paper` first", file=sys.stderr)
        return 2
    rows = compare(committed, current)
    print(f"{results} against the committed figures/RESULTS.json" if not args.reference
          else f"{results} against {args.reference}")
    print(format_table(rows))
    return 1 if any(r["status"] in ("MISS", "MISSING") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
