"""End to end on the models people study: a Hugging Face causal LM (tokenizer trained here, saved with
save_pretrained, loaded back by the CLI) and a torchvision ResNet-18 on CIFAR-10 files in their real format, each
from the command line, on 2 torchrun ranks (bit for bit the 1-process store) and from the Python API (equal to the
CLI's store). The LM's surface is checked against a float64 evaluation of the perturbed model, and at theta* against
the model's own outputs.loss.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from engine.store.read import read_directions, read_surface
from hf_fixtures import save_tiny_lm, tiny_text
from vision_fixtures import write_cifar

NO_SHARPNESS = ["summary.epsilon=null", "summary.adaptive_radius=null"]  # these runs test equality, not sharpness
NO_SHARPNESS_KEYS = {"summary.epsilon": None, "summary.adaptive_radius": None}
LM = ["model=hf", "data=text", "data.block_size=32", "loss=causal_lm", "grid.resolution=[5,3]", "grid.tile=[3,3]",
      "grid.preview=2", "eval.batch_size=8", "eval.samples=24", "eval.points_per_pass=1", "plot.enabled=false",
      "eval.progress=false", *NO_SHARPNESS]
VISION = ["model=torchvision", "model.arch=resnet18", "model.kwargs.num_classes=10", "data=cifar10",
          "grid.resolution=[3,3]", "grid.tile=[2,2]", "grid.preview=0", "eval.samples=40", "eval.batch_size=16",
          "eval.points_per_pass=2", "plot.enabled=false", "eval.progress=false", *NO_SHARPNESS]
# torchvision checks every CIFAR file's md5; the fixture's files are not the real ones, so the check is bypassed in
# the subprocesses (the reader itself is the code under test)
SITE = """from torchvision.datasets import cifar
import os
cifar.check_integrity = lambda fpath, md5=None: os.path.isfile(fpath)
cifar.CIFAR10._check_integrity = lambda self: all(
    os.path.isfile(os.path.join(self.root, self.base_folder, f)) for f, _ in self.train_list + self.test_list)
"""


def command(args: list[str], cwd: Path, ranks: int = 1, site: Path | None = None) -> None:
    """`landscape ARGS` in one process, or `torchrun -m engine.sweep ARGS` on `ranks` gloo ranks; must succeed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if site is not None:
        env["PYTHONPATH"] = f"{site}{os.pathsep}{env.get('PYTHONPATH', '')}"
    head = ([sys.executable, "-c", "from engine.app.cli import main; main()"] if ranks == 1 else
            [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
             "-m", "engine.sweep"])
    done = subprocess.run([*head, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def same_arrays(a: Path, b: Path) -> None:
    """Every metric of both stores' grids equal bit for bit, and both complete."""
    sa, sb = read_surface(a), read_surface(b)
    assert sa.done.all() and sb.done.all() and sorted(sa.metrics) == sorted(sb.metrics)
    for metric in sa.metrics:
        np.testing.assert_array_equal(sa.metrics[metric], sb.metrics[metric], err_msg=metric)


@pytest.fixture(scope="session")
def lm_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The tiny LM swept by the CLI in one process and on 2 ranks, from one local folder and corpus."""
    root = tmp_path_factory.mktemp("lm")
    text = tiny_text(12000)
    (root / "corpus.txt").write_text(text)
    save_tiny_lm(root / "model", text)
    args = [*LM, f"model.path={root / 'model'}", f"data.path={root / 'corpus.txt'}", f"out_dir={root / 'runs'}"]
    command([*args, "name=one"], root)
    command([*args, "name=two"], root, ranks=2)
    return {"root": root, "one": root / "runs/one/landscape.zarr", "two": root / "runs/two/landscape.zarr"}


@pytest.fixture(scope="session")
def vision_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """ResNet-18 (a seeded checkpoint) on CIFAR-10 files swept by the CLI in one process and on 2 ranks."""
    import torchvision

    root = tmp_path_factory.mktemp("vision")
    written = write_cifar(root / "data", "cifar10", per_file=8, test=48)
    (root / "site").mkdir()
    (root / "site" / "sitecustomize.py").write_text(SITE)
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), root / "r18.pt")
    args = [*VISION, f"model.checkpoint={root / 'r18.pt'}", f"data.root={root / 'data'}", f"out_dir={root / 'runs'}"]
    command([*args, "name=one"], root, site=root / "site")
    command([*args, "name=two"], root, ranks=2, site=root / "site")
    return {"root": root, "written": written, "one": root / "runs/one/landscape.zarr",
            "two": root / "runs/two/landscape.zarr"}


def lm_eval_blocks(root: Path) -> torch.Tensor:
    """The eval blocks the LM run used: the text source's test split, subsampled as eval.samples does."""
    from engine.app.stages import eval_split
    from engine.sources.data import load_data
    from helpers import make_cfg

    cfg, _ = make_cfg(root, *LM, f"model.path={root / 'model'}", f"data.path={root / 'corpus.txt'}")
    split = eval_split(cfg, load_data(cfg.data, cfg.model.path))
    return split.x["input_ids"]


def test_lm_two_ranks_equal_one_process(lm_runs: dict[str, Any]) -> None:
    """torchrun with 2 ranks writes the transformer's store bit for bit as one process does."""
    same_arrays(lm_runs["one"], lm_runs["two"])


def test_lm_surface_against_float64_and_outputs_loss(lm_runs: dict[str, Any]) -> None:
    """Grid points equal a float64 next-token loss of the perturbed model; at theta* the model's own outputs.loss."""
    from transformers import AutoModelForCausalLM

    root = lm_runs["root"]
    surface = read_surface(lm_runs["one"])
    directions = read_directions(lm_runs["one"])
    names = list(directions[0])
    ids = lm_eval_blocks(root)
    model = AutoModelForCausalLM.from_pretrained(root / "model", attn_implementation="eager").eval()
    center = tuple(int(np.argmin(np.abs(c))) for c in surface.coords)
    with torch.no_grad():
        own = model(input_ids=ids, labels=ids).loss.item()
    assert surface.metrics["loss"][center] == pytest.approx(own, rel=1e-5)
    params = dict(model.named_parameters())
    theta = {n: params[n].detach().double().clone() for n in names}
    model.double()
    for i, j in [(0, 0), (4, 2), (2, 1), (1, 2)]:
        a, b = surface.coords[0][i], surface.coords[1][j]
        with torch.no_grad():
            for n in names:
                params[n].copy_(theta[n] + a * directions[0][n].double() + b * directions[1][n].double())
            logp = torch.log_softmax(model(input_ids=ids).logits[:, :-1], -1)
            want = -logp.gather(-1, ids[:, 1:, None]).mean().item()
        assert surface.metrics["loss"][i, j] == pytest.approx(want, rel=1e-5), (i, j)
        assert surface.metrics["perplexity"][i, j] == pytest.approx(np.exp(want), rel=1e-4)


def test_lm_python_api_equals_cli_twice_in_one_process(lm_runs: dict[str, Any]) -> None:
    """engine.landscape on the loaded model and the same eval blocks gives the CLI's surface, twice in a row (the
    second call reopens its store), and leaves no Hydra state behind."""
    from hydra.core.global_hydra import GlobalHydra
    from transformers import AutoModelForCausalLM

    import engine

    root = lm_runs["root"]
    ids = lm_eval_blocks(root)
    model = AutoModelForCausalLM.from_pretrained(root / "model", attn_implementation="eager")
    batches = [{"input_ids": ids[i : i + 8], "attention_mask": torch.ones_like(ids[i : i + 8])}
               for i in range(0, len(ids), 8)]
    settings = {"grid.resolution": (5, 3), "grid.tile": (3, 3), "grid.preview": 2, "eval.batch_size": 8,
                "eval.points_per_pass": 1, "plot.enabled": False, **NO_SHARPNESS_KEYS, "out_dir": root / "api"}
    for _ in range(2):
        result = engine.landscape(model, batches, loss="causal_lm", **settings)
        cli = read_surface(lm_runs["one"])
        for metric in ("loss", "accuracy", "perplexity"):
            np.testing.assert_array_equal(result[metric].values, cli.metrics[metric], err_msg=metric)
        assert list(result["x"].values) == list(cli.coords[0]) and result.attrs["complete"]
        assert not GlobalHydra.instance().is_initialized()


def test_vision_two_ranks_equal_one_process_on_the_official_test_split(vision_runs: dict[str, Any]) -> None:
    """ResNet-18 on CIFAR-10: 2 ranks bit for bit one process, and the eval samples come from test_batch."""
    same_arrays(vision_runs["one"], vision_runs["two"])
    surface = read_surface(vision_runs["one"])
    assert surface.attrs["config"]["data"]["name"] == "cifar10" and np.isfinite(surface.metrics["loss"]).all()


def test_vision_python_api_on_torchvision_dataset(vision_runs: dict[str, Any],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The seed's example: a torchvision ResNet-18 and CIFAR-10's test split from torchvision's reader, swept
    from Python with nn.CrossEntropyLoss, equals the CLI's store on the same 40 samples."""
    import torchvision
    from torch import nn
    from torchvision import transforms

    import engine
    from engine.sources.splits import subsample
    from vision_fixtures import skip_cifar_md5

    skip_cifar_md5(monkeypatch)
    root = vision_runs["root"]
    model = torchvision.models.resnet18(num_classes=10)
    model.load_state_dict(torch.load(root / "r18.pt", weights_only=True))
    normalize = transforms.Normalize((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    test = torchvision.datasets.CIFAR10(root / "data", train=False,
                                        transform=transforms.Compose([transforms.ToTensor(), normalize]))
    from engine.sources.splits import DatasetSplit

    picked = subsample(DatasetSplit(test), 40, 0)  # the CLI's eval.samples=40 with data.seed=0
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(test, picked.indices), batch_size=16)
    result = engine.landscape(model, loader, loss=nn.CrossEntropyLoss(), **{
        "grid.resolution": (3, 3), "grid.tile": (2, 2), "grid.preview": 0, "eval.points_per_pass": 2,
        "plot.enabled": False, **NO_SHARPNESS_KEYS, "out_dir": root / "api"})
    cli = read_surface(vision_runs["one"])
    for metric in ("loss", "accuracy"):
        np.testing.assert_allclose(result[metric].values, cli.metrics[metric], rtol=1e-5, atol=1e-7)
