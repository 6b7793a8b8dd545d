"""model.dtype and direction.dtype end to end on a tiny Hugging Face LM, from the command line: a bfloat16 model's
surface is its own loss at theta* and, at every point, the loss of the float32 formula rounded once to bfloat16
(checked against a float32 evaluation of those rounded weights); bfloat16 directions are the float32 ones rounded.
Weights made on access (eval.perturb=on_access, no copy of theta*) give the in-place run's store bit for bit."""

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

LM = ["model=hf", "data=text", "data.block_size=32", "loss=causal_lm", "grid.resolution=[3,3]", "grid.tile=[3,3]",
      "grid.preview=0", "eval.batch_size=8", "eval.samples=16", "plot.enabled=false", "eval.progress=false",
      "summary.epsilon=null", "summary.adaptive_radius=null"]


def landscape(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    """The `landscape` command, one thread, started and not waited for: the fixture's runs share the cores."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", "from engine.app.cli import main; main()", *args], cwd=cwd,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("lowp")
    text = tiny_text(8000)
    (root / "corpus.txt").write_text(text)
    save_tiny_lm(root / "model", text)
    args = [*LM, f"model.path={root / 'model'}", f"data.path={root / 'corpus.txt'}", f"out_dir={root / 'runs'}"]
    names = {"fp32": [], "bf16": ["model.dtype=bfloat16"], "bf16dirs": ["direction.dtype=bfloat16"],
             "bf16_access": ["model.dtype=bfloat16", "eval.perturb=on_access"]}
    started = [landscape([*args, *extra, f"name={name}"], root) for name, extra in names.items()]
    for proc in started:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
    return {"root": root, **{n: root / "runs" / n / "landscape.zarr" for n in names}}


def eval_ids(root: Path) -> torch.Tensor:
    from engine.app.stages import eval_split
    from engine.sources.data import load_data
    from helpers import make_cfg

    cfg, _ = make_cfg(root, *LM, f"model.path={root / 'model'}", f"data.path={root / 'corpus.txt'}")
    return eval_split(cfg, load_data(cfg.data, cfg.model.path)).x["input_ids"]


def next_token_loss(model: torch.nn.Module, ids: torch.Tensor) -> float:
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[:, :-1].double(), -1)
    return float(-logp.gather(-1, ids[:, 1:, None]).mean())


def test_bfloat16_model_is_the_rounded_float32_formula(runs: dict[str, Any]) -> None:
    from transformers import AutoModelForCausalLM

    root = runs["root"]
    surface, directions = read_surface(runs["bf16"]), read_directions(runs["bf16"])
    assert surface.done.all()
    ids = eval_ids(root)
    low = AutoModelForCausalLM.from_pretrained(root / "model", attn_implementation="eager",
                                               dtype=torch.bfloat16).eval()
    wide = AutoModelForCausalLM.from_pretrained(root / "model", attn_implementation="eager").eval()
    params, wide_params = dict(low.named_parameters()), dict(wide.named_parameters())
    theta = {n: params[n].detach().clone() for n in directions[0]}
    assert surface.metrics["loss"][1, 1] == pytest.approx(next_token_loss(low, ids), rel=1e-6)
    for i, j in [(0, 0), (2, 1), (1, 2)]:
        a, b = float(surface.coords[0][i]), float(surface.coords[1][j])
        with torch.no_grad():
            for n, th in theta.items():
                value = th.float()
                for c, d in ((a, directions[0][n]), (b, directions[1][n])):
                    if c != 0.0:
                        value.add_(d, alpha=c)
                params[n].copy_(value)  # rounded once to bfloat16
                wide_params[n].copy_(params[n].float())
        assert surface.metrics["loss"][i, j] == pytest.approx(next_token_loss(low, ids), rel=1e-6), (i, j)
        assert surface.metrics["loss"][i, j] == pytest.approx(next_token_loss(wide, ids), rel=2e-2), (i, j)
    assert not np.allclose(surface.metrics["loss"], read_surface(runs["fp32"]).metrics["loss"], rtol=1e-6)


def test_bfloat16_directions_are_the_float32_ones_rounded(runs: dict[str, Any]) -> None:
    full, half = read_directions(runs["fp32"]), read_directions(runs["bf16dirs"])
    for dk_full, dk_half in zip(full, half):
        for n, d in dk_full.items():
            assert torch.equal(dk_half[n], d.to(torch.bfloat16).float()), n
    a, b = read_surface(runs["fp32"]).metrics["loss"], read_surface(runs["bf16dirs"]).metrics["loss"]
    assert a[1, 1] == b[1, 1]  # theta* itself
    np.testing.assert_allclose(a, b, rtol=2e-2)


def test_weights_made_on_access_give_the_in_place_store(runs: dict[str, Any]) -> None:
    a, b = read_surface(runs["bf16"]), read_surface(runs["bf16_access"])
    assert a.done.all() and b.done.all()
    for metric in ("loss", "accuracy"):
        np.testing.assert_array_equal(a.metrics[metric], b.metrics[metric])
    for a, b in zip(read_directions(runs["bf16"]), read_directions(runs["bf16_access"])):
        assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
