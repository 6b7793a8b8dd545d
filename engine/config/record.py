"""The run folder's `.hydra/` record (config.yaml, hydra.yaml, overrides.yaml), written by the run itself once
its store has accepted the config. conf/config.yaml sets hydra.output_subdir to null so that Hydra does not
write it before the job starts: a rerun refused by the store would otherwise leave a record of the wrong config.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

_job_cfg: DictConfig | None = None


@contextmanager
def hydra_job(cfg: DictConfig) -> Iterator[None]:
    """Mark cfg as the config of the Hydra job now running (the CLI's task functions), for write_config_record."""
    global _job_cfg
    previous, _job_cfg = _job_cfg, cfg
    try:
        yield
    finally:
        _job_cfg = previous


def write_config_record(run_dir: Path) -> None:
    """Write <run_dir>/.hydra/ as Hydra does: the job's config, Hydra's own config and the command-line
    overrides. Outside a CLI Hydra job (run_landscape called from Python, submitted SweepJobs) it writes nothing."""
    from hydra.core.hydra_config import HydraConfig

    if _job_cfg is None or not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.instance().cfg
    assert isinstance(hydra_cfg, DictConfig)
    out = run_dir / ".hydra"
    out.mkdir(parents=True, exist_ok=True)
    for name, node in (("config.yaml", _job_cfg), ("hydra.yaml", hydra_cfg),
                       ("overrides.yaml", hydra_cfg.hydra.overrides.task)):
        (out / name).write_text(OmegaConf.to_yaml(node), encoding="utf-8")
