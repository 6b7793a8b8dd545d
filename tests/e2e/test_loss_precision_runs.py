"""Every loss path of the sweep against float64 on trained models whose loss is small (the regime where a
float32 sum can cancel): in place, rewritten, vmap and streamed, at batch sizes below, above and across the
transposed-reduction threshold, each with a short last batch."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.app.landscape import run_landscape, run_train
from engine.sources.checkpoints import load_checkpoint
from engine.sources.data import load_data
from engine.sources.models import build_model
from engine.store.read import read_directions, read_surface
from helpers import make_cfg

# An MLP and a BatchNorm ResNet trained long enough that the train loss is ~1e-2 or below.
MODELS = {"mlp": ["model=mlp", "train.epochs=60"], "resnet8": ["model=resnet8", "model.width=4", "train.epochs=12"]}
# in place (no rewrites), rewritten (BN folded, cached input layer, transposed head), K=3 under vmap, streamed
PATHS = {
    "in_place": ["eval.points_per_pass=1", "eval.rewrites=[]"],
    "rewritten": ["eval.points_per_pass=1"],
    "vmap": ["eval.points_per_pass=3"],
    "streamed": ["eval.points_per_pass=1", "eval.cache=stream"],
}
BATCHES = (128, 300, 1024)  # 1438 train samples: last batches of 30, 238 and 414 items
SWEEP = ["eval.split=train", "eval.samples=null", "grid=line", "grid.resolution=[3]", "grid.x=[-0.05,0.05]",
         "grid.preview=0", "summary.epsilon=null", "summary.adaptive_radius=null"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Checkpoints of the two models, trained once by the engine's own train stage."""
    out = tmp_path_factory.mktemp("trained")
    return {name: run_train(make_cfg(out, *overrides, f"name={name}")[0]) for name, overrides in MODELS.items()}


def float64_losses(model_name: str, checkpoint: Path, store: Path, cfg_overrides: list[str]) -> np.ndarray:
    """Mean train loss at each grid point, with the model, the store's direction and the data all in float64."""
    cfg, _ = make_cfg(Path("/unused"), *MODELS[model_name], *cfg_overrides)
    data = load_data(cfg.data)
    model = build_model(cfg.model, data.input_shape, data.num_classes)
    load_checkpoint(model, checkpoint)
    model = model.double().eval()
    surface = read_surface(store)
    direction = read_directions(store)[0]
    theta = {n: t.detach().clone() for n, t in model.named_parameters()}
    out = []
    with torch.no_grad():
        for c in surface.coords[0]:
            for n, p in model.named_parameters():
                p.copy_(theta[n] + float(c) * direction[n].double())
            out.append(F.cross_entropy(model(data.train.x.double()), data.train.y).item())
    return np.asarray(out)


@pytest.mark.parametrize("model_name", list(MODELS))
def test_every_loss_path_matches_float64_near_a_minimum(model_name: str, trained: dict[str, Path],
                                                        tmp_path: Path) -> None:
    ckpt = trained[model_name]
    reference: np.ndarray | None = None
    for path, settings in PATHS.items():
        for batch in BATCHES:
            name = f"{path}-{batch}"
            cfg, resolved = make_cfg(tmp_path, *MODELS[model_name], f"model.checkpoint={ckpt}", *SWEEP, *settings,
                                     f"eval.batch_size={batch}", f"name={name}")
            result = run_landscape(copy.deepcopy(cfg), resolved, log=False)
            if reference is None:
                reference = float64_losses(model_name, ckpt, result.store, [])
                assert reference[1] < 0.02, f"{model_name} is not trained to a small loss: {reference}"
            got = read_surface(result.store).metrics["loss"]
            np.testing.assert_allclose(got, reference, rtol=1e-5, err_msg=f"{model_name}, {path}, batch {batch}")
