"""Import a user's `module.attribute` name (a custom model, data source or loss) with a one-line refusal, and the
optional extras on first use (so `import engine` never loads lightning, transformers or a tracker)."""

from __future__ import annotations

import importlib
from typing import Any

from engine.core.errors import UserError


def import_object(dotted: str, key: str) -> Any:
    """The object named `pkg.module.attr` (attributes may nest); a name that does not resolve raises a one-line
    UserError naming `key` (the config key that gave it) and why, instead of an import traceback."""
    parts = dotted.split(".")
    if len(parts) < 2 or not all(part.isidentifier() for part in parts):
        raise UserError(f"{key}={dotted!r} cannot be imported (not a dotted name); give module.function")
    for cut in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:cut])
        try:
            obj: Any = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name is not None and module_name.startswith(err.name):
                continue  # a shorter prefix may be the module and the rest attributes
            raise UserError(f"{key}={dotted!r} cannot be imported (ModuleNotFoundError: {err})") from None
        except Exception as err:
            first = str(err).splitlines()[0] if str(err) else ""
            raise UserError(f"{key}={dotted!r} cannot be imported ({type(err).__name__} while importing "
                            f"{module_name}: {first})") from None
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                raise UserError(f"{key}={dotted!r} cannot be imported (module {module_name} has no {attr!r})")
            obj = getattr(obj, attr)
        return obj
    raise UserError(f"{key}={dotted!r} cannot be imported (no module named {parts[0]!r}); is it installed and on "
                    "PYTHONPATH?")


EXTRAS = {"lightning": "lightning", "transformers": "hf", "accelerate": "hf", "tensorboard": "track", "mlflow": "track",
          "wandb": "track", "timm": "vision"}  # module: the extra of landscape-engine that installs it


def require(module: str, who: str) -> Any:
    """The imported module, or a one-line UserError naming `who` needs it and the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        top = module.split(".")[0]
        raise UserError(f"{who} needs {top}: pip install 'landscape-engine[{EXTRAS[top]}]' "
                        f"({type(err).__name__}: {' '.join(str(err).split())})") from None
