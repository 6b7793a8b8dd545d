"""engine.core.progress: a bar on stderr with its desc that ends full, nothing written when off, and planned stretches
that take the steps an early stop skipped off the total."""

from __future__ import annotations

import pytest

from engine.core.progress import planned, progress_bar


def test_bar_writes_its_desc_to_stderr_and_reaches_its_total(capfd: pytest.CaptureFixture[str]) -> None:
    with progress_bar(5, "demo", "it", True) as bar:
        for _ in range(5):
            bar.update(1)
    out, err = capfd.readouterr()
    assert out == "" and "demo" in err and "5/5" in err


def test_bar_off_writes_nothing(capfd: pytest.CaptureFixture[str]) -> None:
    with progress_bar(5, "demo", "it", False) as bar:
        for _ in range(5):
            bar.update(1)
    assert capfd.readouterr() == ("", "")


def test_planned_takes_an_early_stop_off_the_total(capfd: pytest.CaptureFixture[str]) -> None:
    with progress_bar(10, "demo", "it", True) as bar:
        with planned(bar, 6, "first"):
            bar.update(2)  # stopped after 2 of 6
        assert bar.total == 6
        with planned(bar, 4, "second"):
            bar.update(4)
        assert (bar.n, bar.total) == (6, 6)
    err = capfd.readouterr().err
    assert "0/10" in err and "6/6" in err and "second" in err  # planned 10 at first, ended full at what was done


def test_planned_on_a_silent_bar_changes_nothing(capfd: pytest.CaptureFixture[str]) -> None:
    with progress_bar(10, "demo", "it", False) as bar, planned(bar, 6, "first"):
        bar.update(2)
    assert bar.total == 10
    assert capfd.readouterr() == ("", "")
