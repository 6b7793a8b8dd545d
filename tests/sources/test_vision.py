"""engine.sources.vision: CIFAR-10/100 read from files in their real format (official split, values equal to
torchvision's transforms), image folders (both layouts, presets, lazy splits), torchvision models, each refusal."""

from __future__ import annotations

import sys
import urllib.error
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms
from torchvision.datasets import CIFAR10, CIFAR100, cifar

from engine.config.schema import DataConfig, ModelConfig
from engine.core.errors import UserError
from engine.sources.data import load_data
from engine.sources.splits import DatasetSplit, Split
from engine.sources.vision import build_torchvision_model, load_vision_data
from vision_fixtures import skip_cifar_md5, write_cifar, write_images

# The standard statistics, written out here so a wrong constant in the module cannot pass.
STATS = {"cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
         "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))}
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# Three classes of 4, 3 and 5 images of different sizes and aspect ratios (labels 0, 1, 2 in folder order).
CLASSES = {"ant": [(20, 16), (16, 24), (30, 30), (18, 18)], "bee": [(24, 20), (16, 16), (40, 22)],
           "cat": [(17, 33), (25, 19), (16, 16), (20, 20), (21, 28)]}
LABELS = [0] * 4 + [1] * 3 + [2] * 5


@pytest.fixture
def no_md5(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fixture files pass torchvision's md5 checks."""
    skip_cifar_md5(monkeypatch)


def refused(make: Callable[[], Any], *parts: str) -> str:
    """The UserError that make() raises: one line holding every part."""
    with pytest.raises(UserError) as info:
        make()
    message = str(info.value)
    assert "\n" not in message
    for part in parts:
        assert part in message
    return message


def per_channel(values: tuple[float, ...]) -> torch.Tensor:
    return torch.tensor(values).view(1, 3, 1, 1)


def cropped(path: Path, size: int, shorter: int) -> torch.Tensor:
    """PIL's own bilinear resize (shorter side to `shorter`) and centre crop of an image, as [3, size, size] in
    [0, 1]: what the presets mean, computed without torchvision."""
    img = Image.open(path).convert("RGB")
    w, h = img.size
    new_w, new_h = (shorter, int(shorter * h / w)) if w <= h else (int(shorter * w / h), shorter)
    img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
    top, left = round((new_h - size) / 2), round((new_w - size) / 2)
    pixels = np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.float32) / 255
    return torch.from_numpy(pixels).permute(2, 0, 1)


@pytest.mark.parametrize(("name", "classes"), [("cifar10", 10), ("cifar100", 100)])
def test_cifar_official_split_in_file_order(tmp_path: Path, no_md5: None, name: str, classes: int) -> None:
    """Train is the training files in order and test the test file, pixel for pixel and label for label."""
    written = write_cifar(tmp_path, name, per_file=40 if name == "cifar10" else 150)
    data = load_vision_data(DataConfig(name=name, root=str(tmp_path)))
    assert (data.input_shape, data.num_classes) == ((3, 32, 32), classes)
    assert (len(data.train), len(data.test)) == ((200, 30) if name == "cifar10" else (150, 30))
    mean, std = STATS[name]
    for split, part in ((data.train, "train"), (data.test, "test")):
        assert isinstance(split, Split) and split.x.dtype == torch.float32 and split.y.dtype == torch.int64
        pixels = ((split.x * per_channel(std) + per_channel(mean)) * 255).round().to(torch.uint8)
        np.testing.assert_array_equal(pixels.numpy(), written[f"{part}_x"].reshape(-1, 3, 32, 32))
        np.testing.assert_array_equal(split.y.numpy(), written[f"{part}_y"])


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_values_equal_torchvision_transforms(tmp_path: Path, no_md5: None, name: str) -> None:
    """The tensors built at once equal ToTensor() then Normalize(mean, std) applied item by item."""
    write_cifar(tmp_path, name)
    data = load_vision_data(DataConfig(name=name, root=str(tmp_path)))
    reader = CIFAR10 if name == "cifar10" else CIFAR100
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(*STATS[name])])
    for split, train in ((data.train, True), (data.test, False)):
        items = reader(str(tmp_path), train=train, transform=transform)
        expected = torch.stack([items[i][0] for i in range(len(items))])
        torch.testing.assert_close(split.x, expected, atol=1e-6, rtol=0)


def test_cifar_refusals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A root without the files, the files' own folder given as the root, and a failed download: one line each."""
    refused(lambda: load_vision_data(DataConfig(name="cifar10", root=str(tmp_path))),
            f"data.root={tmp_path} does not hold CIFAR-10 files (cifar-10-batches-py/", "data.download=true")
    write_cifar(tmp_path, "cifar100")
    inner = tmp_path / "cifar-100-python"
    refused(lambda: load_vision_data(DataConfig(name="cifar100", root=str(inner))),
            "CIFAR-100 files (cifar-100-python/", f"its parent, {tmp_path}")

    def offline(*args: Any, **kwargs: Any) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(cifar, "download_and_extract_archive", offline)
    refused(lambda: load_vision_data(DataConfig(name="cifar10", root=str(tmp_path), download=True)),
            "data.download=true could not fetch CIFAR-10", "no network")


def test_load_data_dispatches_to_vision(tmp_path: Path, no_md5: None) -> None:
    """engine.sources.data.load_data reads data=cifar10 and data=imagefolder through this module."""
    write_cifar(tmp_path / "c", "cifar10")
    cfg = DataConfig(name="cifar10", root=str(tmp_path / "c"))
    assert torch.equal(load_data(cfg).test.x, load_vision_data(cfg).test.x)
    write_images(tmp_path / "i", CLASSES)
    assert isinstance(load_data(DataConfig(name="imagefolder", root=str(tmp_path / "i"))).test, DatasetSplit)


def test_imagefolder_seeded_split(tmp_path: Path) -> None:
    """Class folders without a split of their own: every image once, a split fixed by data.seed, decoded lazily;
    materialize() equals reading batch by batch."""
    write_images(tmp_path, CLASSES)
    cfg = DataConfig(name="imagefolder", root=str(tmp_path), preset="plain", image_size=12, test_fraction=0.25)
    data = load_vision_data(cfg)
    assert (data.input_shape, data.num_classes) == ((3, 12, 12), 3)
    train, test = data.train, data.test
    assert isinstance(train, DatasetSplit) and isinstance(test, DatasetSplit)
    assert (len(train), len(test)) == (9, 3) and sorted([*train.indices, *test.indices]) == list(range(12))
    assert load_vision_data(cfg).test.indices == test.indices
    assert load_vision_data(DataConfig(**{**vars(cfg), "seed": 1})).test.indices != test.indices
    whole = test.materialize()
    xs, ys = zip(*test.batches(2))
    assert torch.equal(whole.x, torch.cat(xs)) and torch.equal(whole.y, torch.cat(ys))
    assert whole.x.shape == (3, 3, 12, 12) and whole.x.dtype == torch.float32 and whole.y.dtype == torch.int64
    assert whole.y.tolist() == [LABELS[i] for i in test.indices]


@pytest.mark.parametrize("held_out", ["val", "test"])
def test_imagefolder_train_val_is_the_official_split(tmp_path: Path, held_out: str) -> None:
    """data.root/train and data.root/val (or test) are the two splits, whole and in file order."""
    write_images(tmp_path / "train", CLASSES)
    write_images(tmp_path / held_out, {"ant": [(16, 16)], "bee": [(20, 18), (18, 20)], "cat": [(16, 24)]}, seed=1)
    data = load_vision_data(DataConfig(name="imagefolder", root=str(tmp_path), preset="plain", image_size=16))
    assert (len(data.train), len(data.test), data.num_classes) == (12, 4, 3)
    test = data.test.materialize()
    expected = [cropped(p, 16, 16) for p in sorted((tmp_path / held_out).glob("*/*.png"))]
    torch.testing.assert_close(test.x, torch.stack(expected), atol=1e-6, rtol=0)
    assert test.y.tolist() == [0, 1, 1, 2] and data.train.materialize().y.tolist() == LABELS


@pytest.mark.parametrize("preset", ["imagenet", "plain"])
def test_imagefolder_presets(tmp_path: Path, preset: str) -> None:
    """imagenet: shorter side to 8/7 of image_size, centre crop, ImageNet mean/std; plain: shorter side to
    image_size, centre crop, values in [0, 1]."""
    write_images(tmp_path, CLASSES)
    data = load_vision_data(DataConfig(name="imagefolder", root=str(tmp_path), preset=preset, image_size=14,
                                       test_fraction=0.5))
    assert data.input_shape == (3, 14, 14)
    files = sorted(tmp_path.glob("*/*.png"))
    expected = torch.stack([cropped(files[i], 14, 16 if preset == "imagenet" else 14) for i in data.test.indices])
    if preset == "imagenet":
        expected = (expected - per_channel(IMAGENET[0])) / per_channel(IMAGENET[1])
    torch.testing.assert_close(data.test.materialize().x, expected, atol=1e-6, rtol=0)


def test_imagefolder_refusals(tmp_path: Path) -> None:
    """Each layout that cannot be read is refused in one line naming data.root."""
    def read(root: Path) -> Callable[[], Any]:
        return lambda: load_vision_data(DataConfig(name="imagefolder", root=str(root)))

    refused(read(tmp_path / "missing"), f"data.root={tmp_path / 'missing'} is not a folder", "<class>/<image>")
    (tmp_path / "empty").mkdir()
    refused(read(tmp_path / "empty"), "data.root=", "class folder", "<class>/<image>")
    for cls in ("ant", "bee"):
        (tmp_path / "no_images" / cls).mkdir(parents=True)
    (tmp_path / "no_images" / "ant" / "notes.txt").write_text("not an image")
    refused(read(tmp_path / "no_images"), "data.root=", "no valid file", "<class>/<image>")
    write_images(tmp_path / "too_high" / "set", CLASSES)
    refused(read(tmp_path / "too_high"), "has 1 class folder(s) (set)", "one level too high")
    write_images(tmp_path / "split" / "train", CLASSES)
    refused(read(tmp_path / "split"), "has train/ without its other split")
    write_images(tmp_path / "split" / "val", {"ant": [(16, 16)], "bee": [(16, 16)], "dog": [(16, 16)]})
    refused(read(tmp_path / "split"), "only in train/: ['cat']", "only in val/: ['dog']")


def test_torchvision_model_without_download(monkeypatch: pytest.MonkeyPatch) -> None:
    """resnet18 with num_classes=10 gives [2, 10] logits; a builder that fetches an ImageNet backbone by default is
    built without it."""
    from torchvision.models import _api

    def no_network(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a weight download was attempted")

    monkeypatch.setattr(_api, "load_state_dict_from_url", no_network)
    model = build_torchvision_model(ModelConfig(name="torchvision", arch="resnet18", kwargs={"num_classes": 10}))
    assert model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    build_torchvision_model(ModelConfig(name="torchvision", arch="lraspp_mobilenet_v3_large"))


def test_torchvision_model_refusals() -> None:
    """An unknown arch names close matches; a bad argument, a value the builder refuses and a weight download are
    one line naming model.kwargs."""
    def build(arch: str, **kwargs: Any) -> Callable[[], Any]:
        return lambda: build_torchvision_model(ModelConfig(name="torchvision", arch=arch, kwargs=kwargs))

    refused(build("resnet19"), "model.arch='resnet19' is not a torchvision.models architecture", "resnet18")
    refused(build("resnet18", num_clases=10), "model.kwargs={'num_clases': 10}", "torchvision.models.resnet18")
    refused(build("vit_b_16", image_size=30), "model.kwargs={'image_size': 30}")
    refused(build("resnet18", weights="DEFAULT"), "model.kwargs.weights would download", "model.checkpoint")


def test_without_torchvision(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without torchvision, the model and the data sources name the [vision] extra."""
    monkeypatch.setitem(sys.modules, "torchvision", None)
    refused(lambda: build_torchvision_model(ModelConfig(name="torchvision", arch="resnet18")),
            "model=torchvision needs torchvision: pip install 'landscape-engine[vision]'")
    refused(lambda: load_vision_data(DataConfig(name="cifar10", root="x")), "data=cifar10 needs torchvision")
