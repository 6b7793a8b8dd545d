"""Evaluation batches: cut once and kept on the device for every grid point, or streamed from pinned host memory
when the eval set does not fit."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from engine.sources.data import Split


def device_batches(split: Split, batch_size: int, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Cut the split into batches once and move them to the device; reused for every grid point."""
    return [
        (split.x[i : i + batch_size].to(device), split.y[i : i + batch_size].to(device))
        for i in range(0, len(split.y), batch_size)
    ]


def eval_batches(
    split: Split, batch_size: int, device: torch.device, cache: str = "auto", memory_gb: float = 2.0,
) -> list[tuple[torch.Tensor, torch.Tensor]] | StreamedBatches:
    """The eval batches as the config asks: cached on the device (auto: when they take under half the memory
    budget), or streamed from pinned host memory for eval sets that do not fit."""
    fits = split.x.numel() * split.x.element_size() <= memory_gb * 2**30 / 2
    if cache == "device" or (cache == "auto" and (fits or device.type == "cpu")):
        return device_batches(split, batch_size, device)
    return StreamedBatches(device_batches(split, batch_size, torch.device("cpu")), device)


class StreamedBatches:
    """Eval batches held in (pinned) host memory and copied to the device on every pass, the next batch's copy
    overlapping the current batch's compute on a side CUDA stream: for eval sets larger than device memory."""

    def __init__(self, host: list[tuple[torch.Tensor, torch.Tensor]], device: torch.device) -> None:
        cuda = device.type == "cuda"
        self.host = [(x.pin_memory(), y.pin_memory()) if cuda else (x, y) for x, y in host]
        self.device = device

    def __len__(self) -> int:
        return len(self.host)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.host[i]
        return x.to(self.device), y.to(self.device)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.device.type != "cuda":
            yield from self.host
            return
        side = torch.cuda.Stream(self.device)

        def load(i: int) -> tuple[torch.Tensor, torch.Tensor]:
            with torch.cuda.stream(side):
                x, y = self.host[i]
                return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

        nxt = load(0)
        for i in range(len(self.host)):
            torch.cuda.current_stream(self.device).wait_stream(side)
            x, y = nxt
            x.record_stream(torch.cuda.current_stream(self.device))
            y.record_stream(torch.cuda.current_stream(self.device))
            if i + 1 < len(self.host):
                nxt = load(i + 1)
            yield x, y


EvalBatches = list[tuple[torch.Tensor, torch.Tensor]] | StreamedBatches  # what eval_batches returns
