"""A notebook's findings: headline numbers recorded for ``figures/RESULTS.json`` and stated in words.

Each notebook ends with a "What we found" cell: :func:`record` notes a number with its description (and unit),
and :func:`show_findings` displays sentences built from the computed values as Markdown, so the text is true
for the run that produced it. ``make paper`` sets ``$HESSLIB_RESULTS_LOG``; the runner collects every recorded
number, with the notebook that computed it, into ``RESULTS.json`` beside the figures. The phrase helpers
(:func:`times`, :func:`share`) keep the wording of ratios and fractions the same across notebooks.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence

import numpy as np

RESULTS_LOG_ENV = "HESSLIB_RESULTS_LOG"  # set by `make paper` to collect the recorded numbers


def _plain(value):
    """A JSON-able plain Python value (numpy scalars and arrays become floats, ints and lists; NaN -> None)."""
    if isinstance(value, np.ndarray | list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        value = float(value)
        return None if math.isnan(value) or math.isinf(value) else value
    if value is None or isinstance(value, str):
        return value
    raise TypeError(f"value must be a number, a string, None or a list of them, got {type(value).__name__}")


def record(name: str, value, description: str, unit: str | None = None):
    """Record a headline number of this run for ``RESULTS.json`` and return ``value`` unchanged.

    Args:
        name: a stable identifier, unique across the paper (e.g. ``"delta_slope"``).
        value: a number, a string, None or a list of them (NaN and inf are stored as null).
        description: what the number is, in one sentence.
        unit: its unit, where one applies (e.g. ``"batches"``, ``"nats"``, ``"s"``).

    Raises:
        ValueError: if ``name`` or ``description`` is empty.
        TypeError: if ``value`` is not JSON-able as described.
    """
    if not name or not description:
        raise ValueError(f"name and description must be non-empty, got {name!r} and {description!r}")
    entry = {"name": name, "value": _plain(value), "description": description}
    if unit:
        entry["unit"] = unit
    log = os.environ.get(RESULTS_LOG_ENV)
    if log:
        with open(log, "a") as fh:
            fh.write(json.dumps(entry, ensure_ascii=False) + "\n")
    return value


def findings_markdown(sentences: Sequence[str], *, title: str = "What we found") -> str:
    """The Markdown of a findings cell: a level-2 heading and one bullet per sentence."""
    if not sentences:
        raise ValueError("sentences must hold at least one finding")
    return f"## {title}\n\n" + "\n".join(f"- {s.strip()}" for s in sentences) + "\n"


def show_findings(sentences: Sequence[str], *, title: str = "What we found") -> None:
    """Display :func:`findings_markdown` as a Markdown output of the current notebook cell."""
    from IPython.display import Markdown, display

    display(Markdown(findings_markdown(sentences, title=title)))


def times(ratio: float, *, digits: int = 2) -> str:
    """A ratio in words: "3.2× above" / "about equal to" / "4.5× below" (within 10 % counts as about equal).

    Example:
        >>> times(0.25), times(1.04), times(3.0)
        ('4× below', 'about equal to', '3× above')
    """
    if not np.isfinite(ratio) or ratio <= 0:
        return "not comparable with"
    if 1 / 1.1 <= ratio <= 1.1:
        return "about equal to"
    factor = ratio if ratio > 1 else 1 / ratio
    return f"{factor:.{digits}g}× {'above' if ratio > 1 else 'below'}"


def share(fraction: float) -> str:
    """A fraction in words: "none of", "all of" or "37 % of"."""
    if fraction <= 0:
        return "none of"
    if fraction >= 1:
        return "all of"
    return f"{100 * fraction:.0f} % of"
