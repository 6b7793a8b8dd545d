#!/usr/bin/env python
"""python benchmarks/bench_fingerprint.py [--images N] [--rounds R] [--threads T]

What it costs to fingerprint a whole eval set (engine.sources.splits.split_fingerprint: a sha256 of every value of
every sample and label, which the Python API and data=custom use as the store's data identity), on CIFAR-10's test
set shape (10,000 3x32x32 images; the bytes are random, the cost depends only on their number), against baselines
measured in the same run:

- held: the set as float32 tensors in memory (what the engine holds once it has read a set that fits), hashed;
  against one forward pass of a CIFAR ResNet-20 over the same images (one grid point's work);
- read: the set in torchvision's CIFAR10 reader over files written in the real on-disk format (pickled batches),
  hashed while read through a DataLoader (a set too large to hold), against the same read without hashing.

Printed: median seconds of each over R rounds, the hash's bytes per second, and each ratio. torchvision is needed
for the reader part (pip install -e .[vision]); without it only the held part runs.
"""

from __future__ import annotations

import argparse
import pickle
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from engine.sources.models import CifarResNet
from engine.sources.splits import DatasetSplit, Split, split_fingerprint


def timed(fn: Callable[[], object], rounds: int) -> float:
    """The median wall seconds of fn over rounds."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def write_cifar_test(root: Path, images: int) -> None:
    """cifar-10-batches-py/test_batch and batches.meta as the data set ships them (pickled dicts, protocol 2)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    g = np.random.default_rng(0)
    batch = {"data": g.integers(0, 256, (images, 3072), dtype=np.uint8), "labels": g.integers(0, 10, images).tolist()}
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(batch, f, protocol=2)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class_{i}" for i in range(10)]}, f, protocol=2)


def held_part(images: int, rounds: int) -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(images, 3, 32, 32, generator=g), torch.randint(0, 10, (images,), generator=g)
    split = Split(x, y)
    model = CifarResNet(depth=20, num_classes=10, in_channels=3, width=16, shortcut=True).eval()

    def forward() -> None:
        with torch.no_grad():
            for i in range(0, images, 1000):
                model(x[i : i + 1000])

    hash_s, point_s = timed(lambda: split_fingerprint(split), rounds), timed(forward, rounds)
    size = x.numel() * 4 + y.numel() * 8
    print(f"held  {images} images, {size / 1e6:.0f} MB: hash {hash_s:.3f} s ({size / hash_s / 1e9:.2f} GB/s); "
          f"one ResNet-20 point {point_s:.3f} s; hash / point = {hash_s / point_s:.3f}")


def read_part(images: int, rounds: int) -> None:
    try:
        import torchvision
        from torchvision import transforms
    except ImportError:
        print("read  skipped: torchvision is not installed (pip install -e .[vision])")
        return
    with tempfile.TemporaryDirectory() as tmp:
        write_cifar_test(Path(tmp), images)
        from torchvision.datasets import cifar

        # the files are not the real ones, so their md5 checks are skipped (the reader itself is unchanged)
        cifar.check_integrity = lambda fpath, md5=None: Path(fpath).is_file()
        cifar.CIFAR10._check_integrity = lambda self: True  # type: ignore[method-assign]
        test = torchvision.datasets.CIFAR10(tmp, train=False, transform=transforms.ToTensor())
        split = DatasetSplit(test)

        def read() -> None:
            for _ in split.batches(256):
                pass

        hash_s, read_s = timed(lambda: split_fingerprint(split), rounds), timed(read, rounds)
        print(f"read  {images} images from CIFAR10's reader: read and hash {hash_s:.3f} s, read alone {read_s:.3f} s;"
              f" ratio {hash_s / read_s:.3f} (the hash adds {hash_s - read_s:+.3f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    held_part(args.images, args.rounds)
    read_part(args.images, args.rounds)


if __name__ == "__main__":
    main()
