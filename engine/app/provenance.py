"""Where a run's numbers came from: versions (engine, torch, CUDA, Python), the devices and hosts of every rank, the
weight fingerprint and config hash of its store, the command and the wall time; written as provenance.json next to
summary.json and shown in report.html."""

from __future__ import annotations

import datetime
import json
import platform
import socket
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from engine.core.dist import DistEnv
from engine.core.version import VERSION
from engine.store.layout import get_attribute


def device_name(device: torch.device) -> str:
    """The device in words: the GPU's name, or the CPU."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"{device} ({platform.processor() or platform.machine()})"


def ranks_and_devices(env: DistEnv) -> list[str]:
    """`host: device` of every rank, in rank order (a collective: every rank calls it)."""
    mine = f"{socket.gethostname()}: {device_name(env.device)}"
    if env.world_size == 1 or not dist.is_initialized():
        return [mine]
    gathered: list[Any] = [None] * env.world_size
    dist.all_gather_object(gathered, mine)
    return [str(g) for g in gathered]


def write_provenance(run_dir: Path, store: Path, env: DistEnv, ranks: list[str], started: float,
                     seconds: float) -> dict[str, Any]:
    """provenance.json of a run (rank 0) and its contents."""
    record = provenance_record(env, ranks, get_attribute(store, "fingerprint"), get_attribute(store, "config_hash"),
                               started, seconds)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "provenance.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def provenance_record(env: DistEnv, ranks: list[str], fingerprint: str | None, config_hash: str | None,
                      started: float, seconds: float) -> dict[str, Any]:
    """Versions, devices, weights and config of a run, the command and its wall time (the report's provenance)."""
    return {
        "engine": VERSION, "torch": torch.__version__, "torch_cuda_build": torch.version.cuda,
        "python": platform.python_version(), "platform": platform.platform(),
        "ranks": env.world_size, "devices": ranks,
        "fingerprint": fingerprint, "config_hash": config_hash,
        "command": " ".join(sys.argv),
        "started": datetime.datetime.fromtimestamp(started, datetime.timezone.utc).isoformat(timespec="seconds"),
        "wall_seconds": round(seconds, 3),
    }


def read_provenance(run_dir: Path) -> dict[str, Any]:
    """A run's provenance.json, or {} for runs written before it existed."""
    path = run_dir / "provenance.json"
    return dict(json.loads(path.read_text())) if path.is_file() else {}
