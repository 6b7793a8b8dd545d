"""torchvision sources (the optional [vision] extra): any torchvision.models architecture built without weights,
CIFAR-10/100 with their official train/test split, and class-per-folder image sets.

Nothing is downloaded unless data.download=true asks for the CIFAR files: pretrained weights come from
model.checkpoint (read by engine/sources/checkpoints.py), never from torchvision's weight URLs.
"""

from __future__ import annotations

import difflib
import inspect
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from engine.config.schema import DataConfig, ModelConfig
from engine.core.errors import UserError
from engine.sources.splits import AnySplit, DataBundle, DatasetSplit, Split, float_inputs, seeded_split

# name: (label in messages, torchvision's folder under data.root, classes, channel means, channel deviations)
CIFAR = {
    "cifar10": ("CIFAR-10", "cifar-10-batches-py", 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ("CIFAR-100", "cifar-100-python", 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# Builder arguments that fetch pretrained weights from the network (their defaults are replaced by None).
DOWNLOADING = ("weights", "weights_backbone", "pretrained", "pretrained_backbone")
LAYOUT = ("data=imagefolder reads data.root/<class>/<image>, or data.root/train/<class>/<image> with "
          "data.root/val/<class>/<image> (or test/) as its own split")


def build_torchvision_model(cfg: ModelConfig) -> nn.Module:
    """torchvision.models.get_model(model.arch, weights=None, **model.kwargs), with randomly initialized weights (a
    pretrained backbone's default download switched off too)."""
    tv = _torchvision("model=torchvision")
    arch = known_architecture(cfg, tv.models.list_models(), "torchvision.models",
                              "torchvision.models.list_models()")
    kwargs = offline_kwargs(cfg, DOWNLOADING)
    if "weights_backbone" in inspect.signature(tv.models.get_model_builder(arch)).parameters:
        kwargs["weights_backbone"] = None  # detection/segmentation builders fetch an ImageNet backbone by default
    try:
        return tv.models.get_model(arch, weights=None, **kwargs)
    except (TypeError, ValueError, AssertionError) as err:  # an unknown argument, or a value it refuses
        raise UserError(f"model.kwargs={dict(cfg.kwargs)} do not fit torchvision.models.{arch} ({_one_line(err)}); "
                        "give only arguments of its builder (e.g. num_classes)") from None


def known_architecture(cfg: ModelConfig, names: list[str], library: str, lister: str) -> str:
    """model.arch if it is one of the library's architecture names (listed by `lister`), else a one-line refusal
    with the closest names."""
    arch = str(cfg.arch)
    if arch not in names:
        close = difflib.get_close_matches(arch, names, n=3)
        hint = f" (close: {', '.join(close)})" if close else ""
        raise UserError(f"model.arch={arch!r} is not a {library} architecture{hint}; set model.arch to a name in "
                        f"{lister}")
    return arch


def offline_kwargs(cfg: ModelConfig, downloading: tuple[str, ...]) -> dict[str, Any]:
    """model.kwargs without the builder arguments that would fetch weights (left unset or off), or a one-line
    refusal of the first one set: weights come from model.checkpoint."""
    kwargs = dict(cfg.kwargs)
    asked = [key for key in downloading if kwargs.pop(key, None) not in (None, False)]
    if asked:
        raise UserError(f"model.kwargs.{asked[0]} would download weights; nothing is downloaded here: give a local "
                        "state-dict file as model.checkpoint=<path>")
    return kwargs


def load_vision_data(cfg: DataConfig) -> DataBundle:
    """data=cifar10 / cifar100 (held as normalized tensors) or data=imagefolder (decoded through a DataLoader)."""
    tv = _torchvision(f"data={cfg.name}")
    return _image_folder(tv, cfg) if cfg.name == "imagefolder" else _cifar(tv, cfg)


def _torchvision(who: str) -> Any:
    """The torchvision module, or a UserError naming the extra that installs it."""
    try:
        import torchvision
    except ImportError as err:
        raise UserError(f"{who} needs torchvision: pip install 'landscape-engine[vision]' ({err})") from None
    return torchvision


def _one_line(err: BaseException) -> str:
    """An error's message on one line (for a UserError that quotes it)."""
    return " ".join(str(err).split())


def _cifar(tv: Any, cfg: DataConfig) -> DataBundle:
    """CIFAR's official split (the training batches, then test_batch) read by torchvision's own reader."""
    label, folder, classes, mean, std = CIFAR[cfg.name]
    reader = tv.datasets.CIFAR10 if cfg.name == "cifar10" else tv.datasets.CIFAR100
    try:
        train, test = (reader(str(cfg.root), train=part, download=cfg.download) for part in (True, False))
    except RuntimeError as err:
        if "not found or corrupted" not in str(err):
            raise
        root = Path(str(cfg.root))
        parent = f" (here its parent, {root.parent})" if root.name == folder else ""
        raise UserError(f"data.root={cfg.root} does not hold {label} files ({folder}/, whole and unchanged); give the "
                        f"folder that holds them{parent}, or data.download=true where a network is available") from None
    except OSError as err:
        if not cfg.download:
            raise
        raise UserError(f"data.download=true could not fetch {label} into data.root={cfg.root} ({_one_line(err)}); "
                        f"put {folder}/ there by hand") from None
    return DataBundle(_normalized(train, mean, std), _normalized(test, mean, std), (3, 32, 32), classes)


def _normalized(dataset: Any, mean: tuple[float, ...], std: tuple[float, ...]) -> Split:
    """A CIFAR dataset's uint8 NHWC pixels as the float32 NCHW tensors ToTensor() then Normalize(mean, std) give
    item by item (the same operations, on the whole array at once)."""
    x = torch.from_numpy(np.ascontiguousarray(dataset.data)).permute(0, 3, 1, 2).contiguous()
    x = x.to(torch.float32).div_(255)
    x.sub_(torch.tensor(mean).view(1, 3, 1, 1)).div_(torch.tensor(std).view(1, 3, 1, 1))
    return Split(x, torch.as_tensor(dataset.targets, dtype=torch.int64))


def _image_folder(tv: Any, cfg: DataConfig) -> DataBundle:
    """The class folders of data.root: train/ and val/ (or test/) as the official split, else one set split by
    data.seed."""
    root = Path(str(cfg.root))
    if not root.is_dir():
        raise UserError(f"data.root={cfg.root} is not a folder; {LAYOUT}")
    held_out = next((root / name for name in ("val", "test") if (root / name).is_dir()), None)
    transform = _preset(tv, cfg)
    splits: tuple[AnySplit, AnySplit]
    if (root / "train").is_dir() and held_out is not None:
        train, test = _read_folder(tv, root / "train", transform, cfg), _read_folder(tv, held_out, transform, cfg)
        if train.classes != test.classes:
            mine, theirs = set(train.classes), set(test.classes)
            raise UserError(f"data.root={cfg.root}: the class folders of {held_out.name}/ differ from train/'s (only "
                            f"in train/: {sorted(mine - theirs)[:5]}, only in {held_out.name}/: "
                            f"{sorted(theirs - mine)[:5]}); both need the same classes so that a label means one class")
        splits = DatasetSplit(train, None, float_inputs), DatasetSplit(test, None, float_inputs)
    elif (root / "train").is_dir() or held_out is not None:
        raise UserError(f"data.root={cfg.root} has {'train/' if held_out is None else held_out.name + '/'} without "
                        f"its other split; add it, or give a folder of class folders (split by data.seed); {LAYOUT}")
    else:
        train = _read_folder(tv, root, transform, cfg)
        splits = seeded_split(DatasetSplit(train, None, float_inputs), cfg)
    return DataBundle(*splits, (3, cfg.image_size, cfg.image_size), len(train.classes))


def _read_folder(tv: Any, folder: Path, transform: Any, cfg: DataConfig) -> Any:
    """torchvision's ImageFolder over one folder of class folders, refused in one line when it holds fewer than two
    classes or two images."""
    try:
        dataset = tv.datasets.ImageFolder(str(folder), transform=transform)
    except FileNotFoundError as err:
        raise UserError(f"data.root={cfg.root}: {_one_line(err)}; {LAYOUT}") from None
    if len(dataset.classes) < 2 or len(dataset) < 2:
        raise UserError(f"data.root={cfg.root}: {folder} has {len(dataset.classes)} class folder(s) "
                        f"({', '.join(dataset.classes[:3])}) and {len(dataset)} image(s); need at least 2 of each "
                        f"(is data.root one level too high?); {LAYOUT}")
    return dataset


def _preset(tv: Any, cfg: DataConfig) -> Any:
    """data.preset=imagenet: resize to 8/7 of data.image_size, centre crop, ImageNet mean/std; plain: resize and
    centre crop to data.image_size, values in [0, 1]."""
    t, size = tv.transforms, cfg.image_size
    if cfg.preset == "imagenet":
        return t.Compose([t.Resize(round(size * 8 / 7)), t.CenterCrop(size), t.ToTensor(),
                          t.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    return t.Compose([t.Resize(size), t.CenterCrop(size), t.ToTensor()])
