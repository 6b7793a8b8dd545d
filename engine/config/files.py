"""Where the Hydra config groups are: engine/conf in an installed wheel, conf/ beside engine/ in a checkout."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent.parent


def conf_dir() -> str:
    """The folder holding config.yaml and the config groups (model/, data/, direction/, grid/, hydra/)."""
    for candidate in (_PACKAGE / "conf", _PACKAGE.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return str(candidate)
    raise FileNotFoundError(f"no conf/config.yaml in {_PACKAGE} or beside it: reinstall landscape-engine")


CONF_DIR = conf_dir()
