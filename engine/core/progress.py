"""Progress bars with ETA for the long stages of a run (the sweep, spectra, sharpness, PCA): tqdm on stderr, drawn by
one process only, so N ranks running the same loop show one bar."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tqdm import tqdm


def progress_bar(total: int, desc: str, unit: str, enabled: bool) -> tqdm[Any]:
    """A bar of `total` units on stderr, or a silent one (every call a no-op) unless enabled; callers pass
    `progress and env.is_main`, so only rank 0 draws."""
    return tqdm(total=max(0, total), desc=desc, unit=unit, disable=not enabled, file=sys.stderr, dynamic_ncols=True)


@contextmanager
def planned(bar: tqdm[Any], steps: int, phase: str = "") -> Iterator[None]:
    """A stretch of at most `steps` updates of `bar`, named `phase` in its postfix; steps it did not take (an early
    stop) come off the bar's total, so the bar ends full at what was done and its ETA stays truthful."""
    if bar.disable:
        yield
        return
    if phase:
        bar.set_postfix_str(phase)  # drawn at once: a phase shows even when it starts and ends between refreshes
    start = bar.n
    yield
    unused = steps - (bar.n - start)
    if unused > 0 and bar.total is not None:
        bar.total -= unused
        bar.refresh()
