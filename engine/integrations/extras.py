"""Optional extras imported on first use, so `import engine` never loads lightning, transformers or a tracker."""

from __future__ import annotations

import importlib
from typing import Any

from engine.core.errors import UserError

EXTRAS = {"lightning": "lightning", "transformers": "hf", "tensorboard": "track", "mlflow": "track",
          "wandb": "track", "timm": "vision"}  # module: the extra of landscape-engine that installs it


def require(module: str, who: str) -> Any:
    """The imported module, or a one-line UserError naming `who` needs it and the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        extra = EXTRAS[module.split(".")[0]]
        raise UserError(f"{who} needs {module.split('.')[0]}: pip install 'landscape-engine[{extra}]' "
                        f"({type(err).__name__}: {err})") from None
