"""Test data for engine/sources/vision.py, written offline: CIFAR-10/100 files in their real on-disk format (small)
and folders of PNG images.

Imported as `from vision_fixtures import ...` (pyproject.toml puts tests/ on pytest's pythonpath).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

# name: (folder, training files, test file, meta file, label key, meta key, classes)
CIFAR_FORMAT = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch", "batches.meta",
                "labels", "label_names", 10),
    "cifar100": ("cifar-100-python", ["train"], "test", "meta", "fine_labels", "fine_label_names", 100),
}


def write_cifar(root: Path, name: str, per_file: int = 40, test: int = 30, seed: int = 0) -> dict[str, np.ndarray]:
    """CIFAR files of random images under root/<folder>/ as the data set ships them: pickled dicts (protocol 2, as
    Python 2 wrote them) of uint8 rows [N, 3072] in channel-major order and int labels. Returns the rows and labels
    written, training files in order: train_x, train_y, test_x, test_y."""
    folder, train_files, test_file, meta_file, label_key, meta_key, classes = CIFAR_FORMAT[name]
    rng = np.random.default_rng(seed)
    (root / folder).mkdir(parents=True)
    written: dict[str, list[np.ndarray]] = {"train_x": [], "train_y": [], "test_x": [], "test_y": []}
    for file, n, part in [*[(f, per_file, "train") for f in train_files], (test_file, test, "test")]:
        rows = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, classes, n)
        entry: dict[str, Any] = {"batch_label": f"{file} of the fixture", "data": rows, label_key: labels.tolist(),
                                 "filenames": [f"img_{i}.png" for i in range(n)]}
        if name == "cifar100":
            entry["coarse_labels"] = (labels // 5).tolist()
        _pickle(root / folder / file, entry)
        written[f"{part}_x"].append(rows)
        written[f"{part}_y"].append(labels)
    _pickle(root / folder / meta_file, {meta_key: [f"class_{i}" for i in range(classes)]})
    return {key: np.concatenate(parts) for key, parts in written.items()}


def _pickle(path: Path, obj: Any) -> None:
    with path.open("wb") as f:
        pickle.dump(obj, f, protocol=2)


def skip_cifar_md5(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchvision's md5 checks of the CIFAR files pass for any file that exists (the fixtures are not the real
    files); a missing file still fails them."""
    from torchvision.datasets import cifar

    def exists(fpath: str, md5: str | None = None) -> bool:
        return os.path.isfile(fpath)

    def all_exist(self: Any) -> bool:
        return all(exists(os.path.join(self.root, self.base_folder, f)) for f, _ in self.train_list + self.test_list)

    monkeypatch.setattr(cifar, "check_integrity", exists)
    monkeypatch.setattr(cifar.CIFAR10, "_check_integrity", all_exist)


def write_images(folder: Path, sizes: dict[str, list[tuple[int, int]]], seed: int = 0) -> None:
    """folder/<class>/<i>.png: one random RGB image of each (width, height) listed for the class."""
    rng = np.random.default_rng(seed)
    for cls, whs in sizes.items():
        (folder / cls).mkdir(parents=True)
        for i, (w, h) in enumerate(whs):
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / cls / f"{i}.png")
