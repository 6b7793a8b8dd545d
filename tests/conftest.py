"""Fixtures shared by every test folder; the helpers (TINY, make_cfg, run_cli, ...) are in helpers.py."""

from __future__ import annotations

import pytest

from helpers import make_cfg


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory):
    """One tiny complete run shared by the tests that only read it."""
    from engine.app.landscape import run_landscape

    out = tmp_path_factory.mktemp("runs")
    cfg, resolved = make_cfg(out)
    return cfg, resolved, run_landscape(cfg, resolved, log=False)
