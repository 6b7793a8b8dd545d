"""The one exception type for bad input, and the guard that turns it into one line on stderr and exit code 2."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any


class UserError(Exception):
    """Bad input from the user (config, checkpoint, store); the message names the culprit and the fix."""


def guarded(fn: Callable[[], Any]) -> Any:
    """Run fn; a UserError becomes one line on stderr and exit code 2 (no traceback from deep inside)."""
    try:
        return fn()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
