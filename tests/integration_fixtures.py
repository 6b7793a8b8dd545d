"""Small training setups for the integration tests (`from integration_fixtures import ...`): a Lightning module on
scikit-learn's digits (the engine's own digits split, so `landscape data=digits` evaluates the same samples), a
reader of W&B's offline run files, and the trackers' scalars read back with each tracker's own reader."""

from __future__ import annotations

import glob
import struct
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from engine.config.schema import DataConfig
from engine.sources.data import load_data
from engine.sources.models import MLP


class DigitsModule(pl.LightningModule):
    """An MLP (64 -> 16 -> 10) trained with SGD; its criterion is what the callback's sweep uses."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = MLP(64, [16], 10)
        self.criterion = nn.CrossEntropyLoss()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return self.criterion(self(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", self.criterion(self(x), y))

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


def digits_loaders(batch_size: int = 64) -> tuple[DataLoader, DataLoader]:
    """The engine's digits train and test splits (data=digits) as loaders; the test split is the eval set."""
    bundle = load_data(DataConfig(name="digits"))
    train = TensorDataset(bundle.train.x, bundle.train.y)
    test = TensorDataset(bundle.test.x, bundle.test.y)
    return (DataLoader(train, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(0)),
            DataLoader(test, batch_size=batch_size))


def tensorboard_scalars(log_dir: Path) -> dict[str, float]:
    """The last value of every scalar in the event files under log_dir, read by TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    mux = EventMultiplexer()
    mux.AddRunsFromDirectory(str(log_dir))
    mux.Reload()
    out: dict[str, float] = {}
    for run, tags in mux.Runs().items():
        for tag in tags.get("scalars", []):
            out[tag] = mux.Scalars(run, tag)[-1].value
    return out


def mlflow_scalars(tracking_uri: str) -> dict[str, float]:
    """The metrics of every run in an MLflow store, read by MLflow's client."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    out: dict[str, float] = {}
    for experiment in client.search_experiments():
        for run in client.search_runs([experiment.experiment_id]):
            out.update(run.data.metrics)
    return out


def wandb_records(wandb_dir: Path) -> list[Any]:
    """Every record of the offline runs' transaction logs (run-*.wandb: W&B's LevelDB-style log of 32 KiB blocks,
    7-byte headers of CRC, length and type), decoded with W&B's own protobuf."""
    from wandb.proto import wandb_internal_pb2 as pb

    records = []
    for path in sorted(glob.glob(str(wandb_dir / "**" / "run-*.wandb"), recursive=True)):
        raw = Path(path).read_bytes()
        pos, pending = 7, b""  # after the file header ":W&B", magic, version
        while pos + 7 <= len(raw):
            block_left = 32768 - pos % 32768
            if block_left < 7:
                pos += block_left
                continue
            _, length, kind = struct.unpack("<IHB", raw[pos:pos + 7])
            data = raw[pos + 7:pos + 7 + length]
            pos += 7 + length
            if kind in (1, 2):  # full, first
                pending = data
            else:  # middle, last
                pending += data
            if kind in (1, 4) and pending:
                record = pb.Record()
                record.ParseFromString(pending)
                records.append(record)
    return records


def wandb_scalars(wandb_dir: Path) -> dict[str, float]:
    """The numbers of the offline runs' history rows (the last value of each key)."""
    import json

    out: dict[str, float] = {}
    for record in wandb_records(wandb_dir):
        if record.WhichOneof("record_type") == "history":
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                value = json.loads(item.value_json)
                if isinstance(value, int | float) and not isinstance(value, bool):
                    out[key] = float(value)
    return out
