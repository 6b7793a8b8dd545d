"""Evaluation batches: cut once and kept on the device for every grid point, streamed from pinned host memory when
they do not fit the device, or read afresh from a Dataset through a DataLoader when they do not fit memory at all.
A batch is any structure of tensors (engine/sources/structure.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from engine.sources.splits import AnySplit, DatasetSplit, Split
from engine.sources.structure import Batch, map_tensors, nbytes, to_device


def device_batches(split: Split, batch_size: int, device: torch.device) -> list[Batch]:
    """Cut the split into batches once and move them to the device; reused for every grid point."""
    return [to_device(split.batch(i, i + batch_size), device) for i in range(0, len(split), batch_size)]


def eval_batches(
    split: AnySplit, batch_size: int, device: torch.device, cache: str = "auto", memory_gb: float = 2.0,
    workers: int = 0,
) -> list[Batch] | StreamedBatches | LoaderBatches:
    """The eval batches as the config asks: cached on the device (auto: when they take under half the memory
    budget), streamed from pinned host memory, or (a split still in its Dataset) read through a DataLoader."""
    if isinstance(split, DatasetSplit):
        return LoaderBatches(split, batch_size, device, workers)
    fits = nbytes(split.x) <= memory_gb * 2**30 / 2
    if cache == "device" or (cache == "auto" and (fits or device.type == "cpu")):
        return device_batches(split, batch_size, device)
    return StreamedBatches(device_batches(split, batch_size, torch.device("cpu")), device)


class StreamedBatches:
    """Eval batches held in (pinned) host memory and copied to the device on every pass, the next batch's copy
    overlapping the current batch's compute on a side CUDA stream: for eval sets larger than device memory."""

    def __init__(self, host: list[Batch], device: torch.device) -> None:
        cuda = device.type == "cuda"
        self.host = [map_tensors(b, lambda t: t.pin_memory()) if cuda else b for b in host]
        self.device = device

    def __len__(self) -> int:
        return len(self.host)

    def __getitem__(self, i: int) -> Batch:
        return to_device(self.host[i], self.device)

    def __iter__(self) -> Iterator[Batch]:
        if self.device.type != "cuda":
            yield from self.host
            return
        side = torch.cuda.Stream(self.device)

        def load(i: int) -> Batch:
            with torch.cuda.stream(side):
                return to_device(self.host[i], self.device, non_blocking=True)

        nxt = load(0)
        for i in range(len(self.host)):
            torch.cuda.current_stream(self.device).wait_stream(side)
            batch = nxt
            map_tensors(batch, lambda t: record(t, self.device))
            if i + 1 < len(self.host):
                nxt = load(i + 1)
            yield batch


def record(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Mark t as used by the current stream (its memory is not reused before that stream is done with it)."""
    t.record_stream(torch.cuda.current_stream(device))
    return t


class LoaderBatches:
    """Eval batches read afresh on every pass from a Dataset through a DataLoader (fixed order, `workers` decoding
    processes): for eval sets larger than memory. The same batches, in the same order, as the cached path."""

    def __init__(self, split: DatasetSplit, batch_size: int, device: torch.device, workers: int = 0) -> None:
        self.split, self.batch_size, self.device, self.workers = split, batch_size, device, workers
        self.first: Any = None

    def __len__(self) -> int:
        return -(-len(self.split) // self.batch_size)

    def __getitem__(self, i: int) -> Batch:
        if i != 0:
            raise IndexError("a streamed eval set is read in order; only its first batch is at hand")
        if self.first is None:
            self.first = next(iter(self.split.batches(self.batch_size)))
        return to_device(self.first, self.device)

    def __iter__(self) -> Iterator[Batch]:
        for batch in self.split.batches(self.batch_size, self.workers):
            yield to_device(batch, self.device, non_blocking=self.device.type == "cuda")


EvalBatches = list[Batch] | StreamedBatches | LoaderBatches  # what eval_batches returns
