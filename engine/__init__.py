"""Loss-landscape sweep engine: filter-normalized surfaces over a Zarr store of tiles.

From Python: `engine.landscape(model, data, loss="cross_entropy", **{"grid.resolution": (21, 21)})` and
`engine.spectrum(...)` (engine/app/api.py), imported on first use so `import engine` stays light.
"""

from typing import Any

from engine.core.version import VERSION as __version__

__all__ = ["__version__", "landscape", "spectrum"]


def __getattr__(name: str) -> Any:
    if name in ("landscape", "spectrum"):
        from engine.app import api

        return getattr(api, name)
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
