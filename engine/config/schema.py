"""Typed configuration of a sweep: one dataclass per Hydra config group, checked in __post_init__.

YAML files under conf/ only choose between values; every key and type is fixed here, so an unknown
key (one added with `+` too) or a wrong type fails with one line naming the key (engine/config/check.py).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore

from engine.core.errors import UserError

RESNET_FAMILIES = ("resnet", "plain")
HF_TASKS = ("causal_lm", "sequence_classification", "image_classification")
DATA_SOURCES = ("digits", "synthetic", "custom", "cifar10", "cifar100", "imagefolder", "text")
LOSSES = ("cross_entropy", "mse", "causal_lm", "custom")
REWRITES = ("fold_batchnorm", "in_place", "input_products", "transposed_head", "stacked_graph")


DTYPES = ("float32", "bfloat16", "float16")
AUTO = "auto"  # grid.x / grid.y: the range is found by bisection before the sweep


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UserError(f"{key}={value!r} is not one of {', '.join(choices)}")


@dataclass
class ModelConfig:
    """Which network to build; shapes left None are taken from the data."""

    name: str = "resnet8"  # resnet<6n+2> | plain<6n+2> (no shortcuts) | mlp | torchvision | timm | hf | custom
    width: int = 16  # channels of the first ResNet stage (doubled at each of the 3 stages)
    hidden: list[int] = field(default_factory=lambda: [128, 128])  # MLP hidden sizes
    in_channels: int | None = None  # image channels; None: from the data
    image_size: int | None = None  # image side; None: from the data
    num_classes: int | None = None  # None: from the data
    checkpoint: str | None = None  # trained weights to load; None: train them (see train/)
    _target_: str | None = None  # custom model: import path of an nn.Module class or factory
    kwargs: dict[str, Any] = field(default_factory=dict)  # arguments of the custom, torchvision or timm model
    arch: str | None = None  # torchvision / timm: an architecture of torchvision.models or timm (resnet18, ...)
    path: str | None = None  # hf: a local folder saved with save_pretrained (config, weights, tokenizer)
    task: str = "causal_lm"  # hf: causal_lm | sequence_classification | image_classification (which head)
    trust_remote_code: bool = False  # hf: run the folder's own modelling code (off: such a folder is refused)
    # float32 | bfloat16 | float16: the dtype the model is held and evaluated in (LLMs ship in bfloat16); perturbed
    # weights are computed in float32 from theta* and rounded once per point, so no drift builds up
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.width < 1:
            raise UserError(f"model.width={self.width} must be >= 1")
        if self.name == "custom" and not self._target_:
            raise UserError("model=custom needs model._target_=<module.Class> (and model.checkpoint=...)")
        if self.name in ("torchvision", "timm") and not self.arch:
            raise UserError(f"model={self.name} needs model.arch=<an architecture name, e.g. resnet18>")
        if self.name == "hf" and not self.path:
            raise UserError("model=hf needs model.path=<a folder saved with save_pretrained>")
        _check_choice("model.task", self.task, HF_TASKS)
        _check_choice("model.dtype", self.dtype, DTYPES)


@dataclass
class DataConfig:
    """Where the evaluation (and training) samples come from."""

    # digits (bundled with scikit-learn) | synthetic | custom | cifar10 | cifar100 | imagefolder | text
    name: str = "digits"
    shape: list[int] = field(default_factory=lambda: [3, 32, 32])  # synthetic: one sample's shape
    num_classes: int = 10  # synthetic: number of classes
    size: int = 1280  # synthetic: number of samples (train + test)
    test_fraction: float = 0.2  # share of samples held out as the test split (fixed, seeded)
    seed: int = 0  # seed of the split and of synthetic samples
    _target_: str | None = None  # custom: import path of a Dataset, a DataLoader, or a factory of either
    kwargs: dict[str, Any] = field(default_factory=dict)  # arguments of the custom dataset
    root: str | None = None  # cifar10/cifar100: folder holding cifar-10-batches-py/; imagefolder: class folders
    download: bool = False  # cifar10/cifar100: fetch the files into data.root when missing (needs a network)
    preset: str = "imagenet"  # imagefolder: imagenet (resize 256, centre crop 224, ImageNet mean/std) | plain
    image_size: int = 224  # imagefolder: side of the centre crop (imagenet resizes to 8/7 of it first)
    path: str | None = None  # text: a .txt file, or a .json/.jsonl/.parquet file with a data.text_field column
    text_field: str = "text"  # text: the column of a json/jsonl/parquet file that holds the text
    tokenizer: str | None = None  # text: folder of a saved tokenizer; None: model.path's
    block_size: int = 128  # text: tokens per sequence (the token stream is cut into blocks of this length)
    label_field: str | None = None  # text: a record field of class labels: one padded example per record instead

    def __post_init__(self) -> None:
        _check_choice("data.name", self.name, DATA_SOURCES)
        _check_choice("data.preset", self.preset, ("imagenet", "plain"))
        if self.name in ("cifar10", "cifar100", "imagefolder") and not self.root:
            raise UserError(f"data={self.name} needs data.root=<folder of the data set>")
        if self.name == "text" and not self.path:
            raise UserError("data=text needs data.path=<a .txt, .json, .jsonl or .parquet file>")
        if self.block_size < 2 or self.image_size < 1:
            raise UserError("data.block_size must be >= 2 and data.image_size >= 1")
        if not 0.0 < self.test_fraction < 1.0:
            raise UserError(f"data.test_fraction={self.test_fraction} must lie strictly between 0 and 1")
        if self.name == "synthetic" and (self.size < 2 or self.num_classes < 2 or not self.shape):
            raise UserError("data=synthetic needs data.size >= 2, data.num_classes >= 2 and a data.shape")
        if self.name == "custom" and not self._target_:
            raise UserError("data=custom needs data._target_=<module.DatasetClass>")


@dataclass
class LossConfig:
    """What is swept: the loss (and metrics) of the model on one batch, summed over the batch's items."""

    # cross_entropy (classification; accuracy) | mse (regression) | causal_lm (next-token loss; perplexity, token
    # accuracy) | custom (loss._target_: fn(model, batch) -> (summed loss, item count[, {metric: sum}]))
    name: str = "cross_entropy"
    _target_: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)  # keyword arguments the custom function is called with

    def __post_init__(self) -> None:
        _check_choice("loss.name", self.name, LOSSES)
        if self.name == "custom" and not self._target_:
            raise UserError("loss=custom needs loss._target_=<module.function> (fn(model, batch) -> (sum, count))")


@dataclass
class TrainConfig:
    """SGD training of the model when no checkpoint is given; a checkpoint is saved every epoch."""

    epochs: int = 12
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise UserError("train.epochs and train.batch_size must be >= 1 and train.lr > 0")


@dataclass
class DirectionConfig:
    """The plane's axes: seeded random (Li et al. 2018) or loaded from a file or another store."""

    # random | file | hessian (top two Hessian eigenvectors at theta*, see hessian.*) | interpolation (1D, from
    # theta* = model A at 0 to checkpoints[0] = model B at 1) | plane (through A and checkpoints[0], [1] = B, C,
    # orthonormalized) | pca (top two principal components of the training trajectory, Li et al. section 7)
    kind: str = "random"
    norm: str = "filter"  # filter | layer | none
    ignore: str = "biasbn"  # biasbn: zero the direction on rank-1 tensors | none: normalize them whole
    # weights: parameters | states: parameters and BatchNorm running statistics (variances move in log space, so they
    # stay positive); direction=interpolation and direction=plane default to states, so each model keeps its own
    over: str = "weights"
    seed: int = 123  # seed of the random directions
    path: str | None = None  # kind=file: a .pt file (list of {tensor name: tensor}) or a .zarr store
    checkpoints: list[str] = field(default_factory=list)  # kind=interpolation, curve: [B]; kind=plane: [B, C]
    trajectory: str | None = None  # kind=pca: folder of epoch_*.pt; None: this run's own checkpoints/
    include: list[str] = field(default_factory=list)  # regexes over parameter names: only those moved ([]: all)
    exclude: list[str] = field(default_factory=list)  # regexes over parameter names: never moved
    frozen: bool = False  # also move parameters with requires_grad=False (off: frozen ones stay at theta*)
    dtype: str = "float32"  # float32 | bfloat16 | float16: the directions as held in memory (bfloat16 halves them)
    # kind=curve (Garipov et al. 2018): the trained curve from theta* (A, t=0) to checkpoints[0] (B, t=1), swept over
    # t (grid=line) or drawn on the plane through A, B and its bend (grid=plane, bends=1)
    curve: str = "bezier"  # bezier (Bernstein polynomial of A, the bends, B) | polychain (straight segments)
    bends: int = 1  # trained points between A and B
    curve_epochs: int = 30  # epochs over the training split minimizing the loss at one t ~ U(0, 1) per step
    curve_lr: float = 0.05  # SGD learning rate of the bends (momentum 0.9, cosine schedule)
    curve_batch_size: int = 64  # training samples per step of the curve
    # random with grid=line: N independent lines in one store (a direction axis by a distance axis); line i is drawn
    # from seed + i, so it is the single line of a run with direction.seed=seed+i (engine/directions/lines.py)
    count: int = 1
    # none | weights: permute B's (and C's) hidden units to match A's by weight matching (Ainsworth et al. 2023)
    # before the line, plane or curve is built; the aligned B is saved in the run folder
    align: str = "none"

    def __post_init__(self) -> None:
        _check_choice("direction.align", self.align, ("none", "weights"))
        if self.align != "none" and self.kind not in ("interpolation", "plane", "curve"):
            raise UserError(f"direction.align={self.align} permutes other checkpoints onto theta*: use it with "
                            f"direction=interpolation, plane or curve, not direction={self.kind}")
        if self.count < 1:
            raise UserError(f"direction.count={self.count} must be >= 1 (the number of random lines)")
        _check_choice("direction.kind", self.kind,
                      ("random", "file", "hessian", "interpolation", "plane", "pca", "curve"))
        _check_choice("direction.curve", self.curve, ("bezier", "polychain"))
        if self.bends < 1 or self.curve_epochs < 1 or self.curve_batch_size < 1 or not self.curve_lr > 0:
            raise UserError(f"direction.bends={self.bends}, direction.curve_epochs={self.curve_epochs} and "
                            f"direction.curve_batch_size={self.curve_batch_size} must be >= 1 and "
                            f"direction.curve_lr={self.curve_lr} > 0")
        if self.kind == "curve" and self.over != "weights":
            raise UserError("direction.kind=curve trains the weights only: set direction.over=weights (BatchNorm "
                            "statistics are recomputed at every t with eval.recalibrate_bn=true)")
        if self.kind in ("interpolation", "plane", "pca", "curve") and (self.norm, self.ignore) != ("none", "none"):
            raise UserError(f"direction.kind={self.kind} keeps the checkpoints' own geometry: set direction.norm=none "
                            f"and direction.ignore=none (or use direction={self.kind})")
        wanted = {"interpolation": 1, "plane": 2, "curve": 1}.get(self.kind)
        if wanted is not None and len(self.checkpoints) != wanted:
            raise UserError(f"direction.kind={self.kind} needs direction.checkpoints=[{', '.join('BC'[:wanted])}] "
                            f"({wanted} checkpoint file(s)), got {len(self.checkpoints)}")
        _check_choice("direction.norm", self.norm, ("filter", "layer", "none"))
        _check_choice("direction.ignore", self.ignore, ("biasbn", "none"))
        _check_choice("direction.over", self.over, ("weights", "states"))
        _check_choice("direction.dtype", self.dtype, DTYPES)
        if self.kind == "file" and not self.path:
            raise UserError("direction.kind=file needs direction.path=<file.pt or store.zarr>")


@dataclass
class GridConfig:
    """Coordinates swept along each direction: one entry of resolution per axis (1D line or 2D plane)."""

    resolution: list[int] = field(default_factory=lambda: [41, 41])  # points per axis
    # [min, max] along direction 1, or auto: found by bisection before the sweep (engine/sweep/autorange.py)
    x: Any = field(default_factory=lambda: [-1.0, 1.0])
    y: Any = field(default_factory=lambda: [-1.0, 1.0])  # [min, max] along direction 2 (2D), or auto
    tile: list[int] = field(default_factory=lambda: [14, 14])  # points per tile (= Zarr chunk) per axis
    preview: int = 4  # stride of a coarse preview plane swept first (0: none), so a stopped run still shows one
    auto_rise: float = 10.0  # auto: sweep out to where the loss reaches max(auto_rise x centre, centre + basin_rise)

    def __post_init__(self) -> None:
        if len(self.resolution) not in (1, 2):
            raise UserError(f"grid.resolution={list(self.resolution)} must have 1 (line) or 2 (plane) entries")
        for axis, n in zip("xy", self.resolution):
            if n < 1:
                raise UserError(f"grid.resolution: {n} points along {axis}; give at least 1")
        for axis in "xy"[: len(self.resolution)]:
            value = getattr(self, axis)
            if value == AUTO:
                continue
            if isinstance(value, str) or not isinstance(value, (list, tuple)):
                raise UserError(f"grid.{axis}={value!r} is neither [min, max] nor {AUTO}")
            lo_hi = [float(v) for v in value]
            if len(lo_hi) != 2 or not lo_hi[0] < lo_hi[1]:
                raise UserError(f"grid.{axis}={lo_hi} is an empty or inverted range; give [min, max] with min < max")
            setattr(self, axis, lo_hi)
        if not self.auto_rise > 1:
            raise UserError(f"grid.auto_rise={self.auto_rise} must be > 1 (the factor the loss rises by at the edge)")
        if self.preview < 0:
            raise UserError(f"grid.preview={self.preview} must be >= 0 (0 turns the coarse preview off)")
        if len(self.tile) < len(self.resolution) or min(self.tile) < 1:
            raise UserError(f"grid.tile={list(self.tile)} needs a size >= 1 for each of the grid's axes")


@dataclass
class EvalConfig:
    """How each grid point is evaluated; batches are built once on the device and reused."""

    split: str = "test"  # test | train
    samples: int | None = None  # deterministic subsample of the split; None: all of it
    batch_size: int | None = None  # None: rank 0 times 32, 64, ... (small batches stay in a CPU core's cache)
    device: str = "auto"  # auto (cuda when present) | cpu | cuda | cuda:N
    progress: bool = True  # progress bar with ETA
    points_per_pass: int | None = None  # K grid points per forward pass (vmap); 1: in place; None: timed on rank 0
    memory_gb: float = 2.0  # budget for K stacked points (weights + activations) and for caching batches
    cache: str = "auto"  # device: batches kept on the device | stream: pinned host batches copied per pass | auto
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast, CUDA only; recorded in the store)
    channels_last: bool | None = None  # channels_last memory format; None: on for image (N, C, H, W) inputs
    compile: bool = False  # torch.compile the model (K = 1 path; instead of eval.rewrites)
    recalibrate_bn: bool = False  # at every point, recompute BatchNorm statistics on training data (K = 1 path)
    recalibrate_samples: int = 512  # training samples used for each recalibration
    # graph rewrites (engine/sweep/rewrite.py, stacked.py), same numbers to float32 rounding; [] turns them off:
    # fold_batchnorm (eval BN into the conv before it, once per point), in_place (ReLU/residual add write into a
    # fresh operand), input_products (the input layer's products with theta* and each direction, cached per
    # batch), transposed_head (a final Linear with few outputs computed as a [classes, N] product): the K = 1
    # path; stacked_graph (K > 1: the traced graph at K points, each Linear one batched matmul, the input layer
    # from its cached products, other ops under vmap; instead of vmap over the whole model)
    rewrites: list[str] = field(default_factory=lambda: list(REWRITES))
    host_malloc: bool = True  # CPU runs: glibc keeps freed activation memory instead of faulting in new pages
    workers: int = 0  # DataLoader worker processes for an eval set streamed from its files (too big to cache)
    perturb: str = "in_place"  # in_place: the weights are moved in place, theta* kept as a copy beside them |
    # on_access: the weights stay theta*, each made at the point when a module reads it (no copy: the size of the
    # model less; points one at a time, no graph rewrites; the same numbers to the bit)

    def __post_init__(self) -> None:
        _check_choice("eval.split", self.split, ("test", "train"))
        _check_choice("eval.perturb", self.perturb, ("in_place", "on_access"))
        _check_choice("eval.cache", self.cache, ("auto", "device", "stream"))
        _check_choice("eval.precision", self.precision, ("fp32", "bf16", "fp16"))
        for name in self.rewrites:
            _check_choice("eval.rewrites", name, REWRITES)
        if self.points_per_pass is not None and self.points_per_pass < 1:
            raise UserError(f"eval.points_per_pass={self.points_per_pass} must be >= 1 (or null: chosen by timing)")
        if self.recalibrate_samples < 1:
            raise UserError(f"eval.recalibrate_samples={self.recalibrate_samples} must be >= 1")
        if self.memory_gb <= 0:
            raise UserError(f"eval.memory_gb={self.memory_gb} must be > 0")
        if self.samples is not None and self.samples < 1:
            raise UserError(f"eval.samples={self.samples} must be >= 1 (or null for the whole split)")
        if self.batch_size is not None and self.batch_size < 1:
            raise UserError(f"eval.batch_size={self.batch_size} must be >= 1 (or null: chosen by timing)")


@dataclass
class HessianConfig:
    """Curvature of the eval loss (engine/curvature/hessian.py): spectra at theta* and curvature maps over the grid."""

    spectrum: bool = False  # top-k eigenpairs, lambda_min, traces, SLQ density at theta* (store's hessian/ group)
    curvature: bool = False  # lambda_max, lambda_min, |lambda_min/lambda_max| at every grid point (hessian/ arrays)
    samples: int | None = 512  # eval samples the Hessian is taken over (seeded subsample of eval.split; None: all)
    batch_size: int = 128  # batch size of Hessian-vector products (summed exactly over batches)
    keep_graph: bool = True  # keep each batch's gradient graph between products at one point (faster; memory:
    # one backward graph per Hessian batch); false: a forward and a double backward per product
    top_k: int = 5  # eigenpairs of the spectrum (and direction.kind=hessian uses the top 2)
    steps: int = 60  # Lanczos steps of the spectrum's eigenpairs, at most (capped at the parameter count)
    curvature_steps: int = 20  # Lanczos steps at each grid point of the curvature map (at most)
    rtol: float | None = 1e-5  # Lanczos stops once the tracked eigenvalues' residual bounds are below rtol x
    # |lambda_max| (steps and curvature_steps are then caps); null: always run all steps
    trace_samples: int = 100  # Rademacher probes of Hutchinson's trace
    hutchpp_matvecs: int = 99  # Hessian-vector products of the Hutch++ trace
    slq_runs: int = 5  # seeded runs of stochastic Lanczos quadrature
    slq_steps: int = 60  # Lanczos steps per SLQ run
    sigma: float = 0.01  # Gaussian broadening of the density, as a fraction of the spectrum's width
    seed: int = 0  # seed of every random start and probe vector
    matrix: str = "hessian"  # hessian | ggn (generalized Gauss-Newton J^T H_L J, PSD) for the spectrum and blocks;
    # curvature maps and direction=hessian always use the Hessian
    blocks: Any = None  # null | layer (each module owning parameters) | module (top-level children) | [regex, ...]:
    # lambda_max, lambda_min and trace of each block's diagonal block of the matrix
    tolerance: float = 1e-2  # summary.json flags a spectrum estimate whose error (Ritz bound, standard error) is
    # wider than this, relative (eigenvalues: to max |eigenvalue|; traces and moments: to their own value)

    def __post_init__(self) -> None:
        _check_choice("hessian.matrix", self.matrix, ("hessian", "ggn"))
        if not self.tolerance > 0:
            raise UserError(f"hessian.tolerance={self.tolerance} must be > 0 (relative error flagged in summary.json)")
        if isinstance(self.blocks, str) and self.blocks not in ("layer", "module"):
            raise UserError(f"hessian.blocks={self.blocks} must be null, layer, module or a list of parameter-name "
                            "patterns (regular expressions)")
        if self.blocks is not None and not isinstance(self.blocks, str):
            if not self.blocks or not all(isinstance(b, str) for b in self.blocks):
                raise UserError(f"hessian.blocks={list(self.blocks)} must be a non-empty list of parameter-name "
                                "patterns (or layer, module, null)")
            self.blocks = [str(b) for b in self.blocks]
        for key in ("batch_size", "top_k", "steps", "curvature_steps", "slq_runs", "slq_steps"):
            if getattr(self, key) < 1:
                raise UserError(f"hessian.{key}={getattr(self, key)} must be >= 1")
        if self.samples is not None and self.samples < 1:
            raise UserError(f"hessian.samples={self.samples} must be >= 1 (or null for the whole split)")
        if self.steps < self.top_k:
            raise UserError(f"hessian.steps={self.steps} must be >= hessian.top_k={self.top_k}")
        if self.trace_samples < 2 or self.hutchpp_matvecs < 3:
            raise UserError("hessian.trace_samples must be >= 2 and hessian.hutchpp_matvecs >= 3")
        if self.rtol is not None and self.rtol <= 0:
            raise UserError(f"hessian.rtol={self.rtol} must be > 0 (or null: always run all Lanczos steps)")
        if self.sigma <= 0:
            raise UserError(f"hessian.sigma={self.sigma} must be > 0 (a fraction of the spectrum's width)")


@dataclass
class ParallelConfig:
    """How the job's ranks hold the model: shard=S splits the W ranks into W/S replica groups of S ranks, each group
    holding one copy of the model sharded over its S ranks (FSDP2) and evaluating each point as one data-parallel
    step; the groups claim tiles as single ranks do. shard=1: every rank holds the whole model."""

    shard: int = 1
    # how a sharded model gets its weights: sharded (built on the meta device, each rank reads only its rows of the
    # checkpoint) | whole (every rank loads the whole model, then shards it) | auto (sharded when nothing asked for
    # needs the whole model, else whole, saying why)
    load: str = "auto"

    def __post_init__(self) -> None:
        if self.shard < 1:
            raise UserError(f"parallel.shard={self.shard} must be >= 1 (the ranks one copy of the model is split over)")
        if self.load not in ("auto", "sharded", "whole"):
            raise UserError(f"parallel.load={self.load!r}: use auto, sharded (each rank reads its rows) or whole")


@dataclass
class StoreConfig:
    """Where the Zarr store goes and whether an existing one written by another config may be replaced."""

    path: str | None = None  # None: <out_dir>/<name>/landscape.zarr
    overwrite: bool = False
    lease_ttl: float = 120.0  # seconds a job's lease on the store lasts unless renewed (it renews every ttl/4)


@dataclass
class PlotConfig:
    """Figures drawn after the sweep."""

    enabled: bool = True
    log_scale: bool = False
    clip: float | None = None  # losses above are drawn at this value; None: automatic
    formats: list[str] = field(default_factory=lambda: ["png", "pdf"])
    levels: str = "log"  # loss contour levels: log (geometric, resolves the basin) | quantile | linear
    n_levels: int = 20  # number of contour bands
    html: bool = True  # figures/landscape.html (interactive, offline) and report.html next to the store
    vtk: bool = False  # also write the surface (and trajectory) as VTK files for ParaView into vtk/

    def __post_init__(self) -> None:
        _check_choice("plot.levels", self.levels, ("log", "quantile", "linear"))
        if self.n_levels < 2:
            raise UserError(f"plot.n_levels={self.n_levels} must be >= 2")


@dataclass
class SummaryConfig:
    """Numbers derived from the surface for summary.json."""

    basin_rise: float = 0.5  # basin width is measured where loss <= center loss + basin_rise
    sharpness_radius: float = 0.25  # surface sharpness: max loss rise within |coords| <= radius, over 1 + loss
    epsilon: float | None = 1e-3  # Keskar et al.'s epsilon-sharpness box size (None: not computed)
    epsilon_steps: int = 20  # projected gradient ascent steps of epsilon-sharpness
    sharpness_samples: int | None = 512  # eval samples epsilon- and adaptive sharpness are computed on (None: all)
    adaptive_radius: float | None = 0.01  # adaptive sharpness: worst case over ||u||_p <= radius, delta = |theta| u
    adaptive_norm: str = "inf"  # p of the worst case's ball: inf (each weight moves by at most radius x |weight|) | 2
    adaptive_steps: int = 20  # ascent steps of the worst case
    adaptive_average_radius: float | None = 0.01  # average case: u ~ N(0, radius^2) per weight (None: not computed)
    adaptive_samples: int = 32  # Monte Carlo draws of the average case

    def __post_init__(self) -> None:
        _check_choice("summary.adaptive_norm", self.adaptive_norm, ("inf", "2"))
        for key in ("adaptive_radius", "adaptive_average_radius"):
            value = getattr(self, key)
            if value is not None and not value > 0:
                raise UserError(f"summary.{key}={value} must be > 0 (or null: not computed)")
        if self.adaptive_steps < 1 or self.adaptive_samples < 2:
            raise UserError("summary.adaptive_steps must be >= 1 and summary.adaptive_samples >= 2")
        if self.epsilon is not None and not self.epsilon > 0:
            raise UserError(f"summary.epsilon={self.epsilon} must be > 0 (or null: no epsilon-sharpness)")
        if self.epsilon_steps < 1 or self.sharpness_radius <= 0:
            raise UserError("summary.epsilon_steps must be >= 1 and summary.sharpness_radius > 0")
        if self.sharpness_samples is not None and self.sharpness_samples < 1:
            raise UserError(f"summary.sharpness_samples={self.sharpness_samples} must be >= 1 (or null: all)")


@dataclass
class RunConfig:
    """A whole run: train (if needed), sweep, assemble, plot."""

    name: str = "${model.name}-${data.name}"  # run folder name under out_dir
    out_dir: str = "runs"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    direction: DirectionConfig = field(default_factory=DirectionConfig)
    grid: GridConfig = field(default_factory=GridConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    plot: PlotConfig = field(default_factory=PlotConfig)
    summary: SummaryConfig = field(default_factory=SummaryConfig)
    hessian: HessianConfig = field(default_factory=HessianConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    # tensorboard | mlflow | wandb: send the finished run's numbers, figures, pages and tags to that tracker
    # (engine/app/trackers.py); null: none
    track: str | None = None

    def __post_init__(self) -> None:
        if self.track is not None:
            _check_choice("track", self.track, ("tensorboard", "mlflow", "wandb"))


def register_configs() -> None:
    """Register the schema so conf/config.yaml can build on it (Hydra structured configs)."""
    ConfigStore.instance().store(name="run_schema", node=RunConfig)


# Keys that change the numbers in a store; the rest (paths, plots, batch size, device) do not.
RESULT_KEYS = ("model", "data", "loss", "train", "direction", "grid", "eval.split", "eval.samples", "eval.precision",
               "hessian.curvature", "hessian.curvature_steps", "hessian.samples", "hessian.seed", "hessian.rtol")


# Keys added after stores were first written, at their defaults: left out of result_config, so a store written
# before they existed reopens (a run at the defaults computes what it computed then).
ADDED_DEFAULTS: dict[str, Any] = {
    "model.arch": None, "model.path": None, "model.task": "causal_lm", "model.trust_remote_code": False,
    "data.root": None, "data.download": False, "data.preset": "imagenet", "data.image_size": 224, "data.path": None,
    "data.text_field": "text", "data.tokenizer": None, "data.block_size": 128, "data.label_field": None,
    "loss.name": "cross_entropy", "loss._target_": None, "loss.kwargs": {},
    "direction.include": [], "direction.exclude": [], "direction.frozen": False, "direction.align": "none",
    "model.dtype": "float32", "direction.dtype": "float32",
    "hessian.matrix": "hessian", "hessian.blocks": None, "hessian.tolerance": 1e-2,
    "direction.curve": "bezier", "direction.bends": 1, "direction.curve_epochs": 30, "direction.curve_lr": 0.05,
    "direction.curve_batch_size": 64,
    "track": None,
    "direction.count": 1, "grid.auto_rise": 10.0,
}


def result_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The part of a resolved config that determines a store's values, as a flat {dotted key: value}."""
    flat = {k: v for k, v in _flatten(cfg).items() if k not in ADDED_DEFAULTS or ADDED_DEFAULTS[k] != v}
    for key in ("grid.x", "grid.y"):  # typed Any since grid.x=auto: [-1, 1] hashes as [-1.0, 1.0] did
        if isinstance(flat.get(key), list):
            flat[key] = [float(v) for v in flat[key]]
    keep = {k: v for k, v in flat.items() if any(k == r or k.startswith(r + ".") for r in RESULT_KEYS)}
    if cfg.get("model", {}).get("checkpoint"):
        keep = {k: v for k, v in keep.items() if not k.startswith("train.")}
    if cfg.get("direction", {}).get("kind") == "hessian":  # the axes themselves come from these settings
        keep.update({k: v for k, v in flat.items() if k in ("hessian.steps", "hessian.batch_size", "hessian.rtol")})
    return keep


def config_hash(cfg: dict[str, Any]) -> str:
    """A short stable hash of result_config(cfg)."""
    text = json.dumps(result_config(cfg), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def config_diff(old: dict[str, Any], new: dict[str, Any], limit: int = 4) -> str:
    """Name the first result-relevant keys whose values differ between two configs."""
    a, b = result_config(old), result_config(new)
    diffs = [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    more = f" (+{len(diffs) - limit} more)" if len(diffs) > limit else ""
    return "; ".join(diffs[:limit]) + more


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out
