"""Progress bars for long work: in place when asked for, and on the console of `make paper` otherwise.

Notebooks run with ``progress=False`` so their rendered outputs hold no bars (whose timings would change the bytes
on every run). Under ``make paper`` on a terminal the runner sets ``$HESSLIB_CONSOLE_PROGRESS``; the bars of a
notebook's long steps (training, eigen-solves, Monte Carlo, the fourth-order pass) are then drawn on the terminal
the runner prints to (the kernel's inherited standard error, ``sys.__stderr__``), never in the notebook.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable

from tqdm import tqdm  # plain text bars: no widget warnings in rendered notebooks

CONSOLE_PROGRESS_ENV = "HESSLIB_CONSOLE_PROGRESS"


def progress_bar(iterable: Iterable | None = None, *, total: int | None = None, desc: str, unit: str = "it",
                 enabled: bool) -> tqdm:
    """A ``tqdm`` bar: shown where the caller prints when ``enabled``; else on the runner's console, or nowhere.

    Args:
        iterable: what to iterate over (or None, with ``total`` and ``update()`` calls).
        total: the number of steps, when ``iterable`` has no length.
        desc: what the bar counts, e.g. ``"lanczos"``.
        unit: the unit of a step, e.g. ``"hvp"``.
        enabled: the caller's ``progress`` argument.

    Returns:
        The bar (disabled, so it draws nothing, when neither place applies).
    """
    if enabled:
        return tqdm(iterable, total=total, desc=desc, unit=unit)
    if os.environ.get(CONSOLE_PROGRESS_ENV) and sys.__stderr__ is not None:
        return tqdm(iterable, total=total, desc=f"    {desc}", unit=unit, file=sys.__stderr__, leave=False,
                    mininterval=0.5)
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=True)
