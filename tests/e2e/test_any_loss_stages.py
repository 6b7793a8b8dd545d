"""End to end: every stage beyond the plain sweep (Hessian spectra, curvature maps, epsilon-sharpness,
direction=hessian, interpolation, the three-model plane, PCA of a trajectory) on the new losses and batch
structures: mse on a regression MLP, a custom loss with an extra metric over dict batches, causal_lm on a
transformers LM; and a torchvision model on an image folder from the command line. Surfaces are checked against a
float64 evaluation of the perturbed model written here, spectra against the exact float64 Hessian (small models) or
the float64 Hessian-vector product of the LM's own outputs.loss."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

from engine.app.landscape import run_landscape
from engine.sources.data import load_data
from engine.sources.splits import held
from engine.store.read import read_array, read_directions, read_surface
from engine.store.spectra import read_spectrum
from helpers import make_cfg
from hf_fixtures import save_tiny_lm, tiny_text
from vision_fixtures import write_images

Loss64 = Callable[[nn.Module, Any], torch.Tensor]  # (float64 model, whole eval batch) -> mean loss
GRID = ["grid.tile=[3,3]", "grid.preview=0", "eval.points_per_pass=1", "eval.samples=null", "hessian.samples=null"]
REGRESSION = ["data=custom", "train.epochs=3", "summary.epsilon=0.001"]
NO_SHARPNESS = ["summary.epsilon=null", "summary.adaptive_radius=null"]  # runs that test other things skip both


def mse64(model: nn.Module, batch: Any) -> torch.Tensor:
    x, y = batch
    return (model(x) - y).pow(2).mean(1).mean()


def squared64(model: nn.Module, batch: Any) -> torch.Tensor:
    return 0.5 * (model(batch["features"]) - batch["target"]).pow(2).sum(1).mean()


def to64(batch: Any) -> Any:
    if isinstance(batch, dict):
        return {k: to64(v) for k, v in batch.items()}
    if isinstance(batch, tuple | list):
        return tuple(to64(v) for v in batch)
    return batch.double() if batch.is_floating_point() else batch


def run(tmp: Path, *overrides: str) -> tuple[Any, Any]:
    cfg, resolved = make_cfg(tmp, *GRID, *overrides)
    return cfg, run_landscape(cfg, resolved, log=False)


def model_at_theta(cfg: Any, result: Any) -> tuple[nn.Module, Any]:
    """The run's trained model (its final checkpoint) and its whole eval split as one batch."""
    from engine.sources.checkpoints import load_checkpoint
    from engine.sources.models import build_model

    data = load_data(cfg.data)
    model = build_model(cfg.model, data.input_shape, data.num_classes)
    load_checkpoint(model, result.run_dir / "checkpoints" / "final.pt")
    return model.eval(), held(data.test).x if held(data.test).y is None else (held(data.test).x, held(data.test).y)


def moved(model: nn.Module, dirs: list[dict[str, torch.Tensor]], coords: tuple[float, ...]) -> nn.Module:
    """A float64 copy of the model at theta* + sum_k coords[k] * d_k (directions over its named parameters)."""
    out = copy.deepcopy(model).double()
    params = dict(out.named_parameters())
    with torch.no_grad():
        for c, d in zip(coords, dirs, strict=True):
            for name, t in d.items():
                params[name].add_(c * t.double())
    return out


def exact_hessian(model: nn.Module, batch: Any, loss64: Loss64) -> tuple[np.ndarray, list[str]]:
    """The float64 Hessian of the mean loss over the trainable parameters (in named_parameters order)."""
    m = copy.deepcopy(model).double()
    names = [n for n, p in m.named_parameters() if p.requires_grad]
    shapes = [p.shape for n, p in m.named_parameters() if p.requires_grad]
    flat = torch.cat([p.detach().reshape(-1) for n, p in m.named_parameters() if p.requires_grad])

    def f(v: torch.Tensor) -> torch.Tensor:
        pieces = dict(zip(names, (t.view(s) for t, s in zip(v.split([s.numel() for s in shapes]), shapes,
                                                              strict=True)), strict=True))
        return loss64(lambda *a, **k: functional_call(m, pieces, a, k), batch)  # type: ignore[arg-type]

    return torch.autograd.functional.hessian(f, flat).numpy(), names


def check_surface(store: Path, model: nn.Module, batch: Any, loss64: Loss64, metric: str = "loss") -> None:
    """Every third grid point of the store against the float64 loss of the perturbed model."""
    surface = read_surface(store)
    dirs = read_directions(store)
    batch = to64(batch)
    points = list(np.ndindex(surface.metrics[metric].shape))[::3]
    for idx in points:
        coords = tuple(float(surface.coords[k][i]) for k, i in enumerate(idx))
        with torch.no_grad():
            want = float(loss64(moved(model, dirs, coords), batch))
        assert surface.metrics[metric][idx] == pytest.approx(want, rel=2e-5), (idx, coords)


@pytest.fixture(scope="session")
def mse_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A regression MLP trained and swept with loss=mse, with spectra, a curvature map and epsilon-sharpness."""
    cfg, result = run(tmp_path_factory.mktemp("mse"), *REGRESSION, "model=mlp", "model.hidden=[4]",
                      "model.num_classes=2", "data._target_=loss_fixtures.Regression", "loss=mse",
                      "grid.resolution=[5,5]", "hessian.curvature=true", "hessian.spectrum=true", "name=mse")
    return {"cfg": cfg, "result": result}


@pytest.fixture(scope="session")
def custom_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A custom loss (with an extra metric) over dict batches, on the plane of the top two Hessian eigenvectors."""
    cfg, result = run(tmp_path_factory.mktemp("custom"), *REGRESSION, "model=custom",
                      "model._target_=loss_fixtures.FeatureNet", "data._target_=loss_fixtures.DictRegression",
                      "loss=custom", "loss._target_=loss_fixtures.squared_error", "loss.kwargs.scale=0.5",
                      "direction=hessian", "hessian.spectrum=true", "grid.resolution=[3,3]", "name=custom")
    return {"cfg": cfg, "result": result}


def test_mse_surface_has_only_the_loss_and_matches_float64(mse_run: dict[str, Any]) -> None:
    store = mse_run["result"].store
    assert [m for m in read_surface(store).attrs["metrics"] if not m.startswith("hessian/")] == ["loss", "loss_stderr"]
    model, batch = model_at_theta(mse_run["cfg"], mse_run["result"])
    check_surface(store, model, batch, mse64)


def test_mse_spectrum_and_curvature_against_the_exact_hessian(mse_run: dict[str, Any]) -> None:
    model, batch = model_at_theta(mse_run["cfg"], mse_run["result"])
    hessian, _ = exact_hessian(model, to64(batch), mse64)
    exact = np.linalg.eigvalsh(hessian)
    spectrum = read_spectrum(mse_run["result"].store)
    assert spectrum is not None
    k = len(spectrum.eigenvalues)
    np.testing.assert_allclose(spectrum.eigenvalues, exact[::-1][:k], rtol=1e-4, atol=1e-5)
    assert spectrum.lambda_min == pytest.approx(exact[0], rel=1e-3, abs=1e-4)
    assert spectrum.trace_hutchpp == pytest.approx(exact.sum(), rel=0.5)
    centre = tuple(n // 2 for n in read_surface(mse_run["result"].store).metrics["loss"].shape)
    lam = read_array(mse_run["result"].store, "hessian/lambda_max")
    assert lam is not None and np.isfinite(lam).all()
    coords = read_surface(mse_run["result"].store).coords
    assert all(float(c[i]) == 0.0 for c, i in zip(coords, centre, strict=True))  # the 5x5 grid's centre is theta*
    assert lam[centre] == pytest.approx(exact[-1], rel=1e-3)
    summary = json.loads((mse_run["result"].run_dir / "summary.json").read_text())
    sharp = summary["sharpness"]["epsilon"]
    assert sharp["max_loss"] >= sharp["loss"] and np.isfinite(sharp["sharpness"])


def test_custom_loss_over_dict_batches_keeps_its_metric_and_matches_float64(custom_run: dict[str, Any]) -> None:
    store = custom_run["result"].store
    assert read_surface(store).attrs["metrics"] == ["loss", "abs_error"]
    model, batch = model_at_theta(custom_run["cfg"], custom_run["result"])
    check_surface(store, model, batch, squared64)
    check_surface(store, model, batch, lambda m, b: (m(b["features"]) - b["target"]).abs().sum(1).mean(),
                  metric="abs_error")


def test_hessian_directions_of_a_custom_loss_are_the_exact_top_eigenvectors(custom_run: dict[str, Any]) -> None:
    model, batch = model_at_theta(custom_run["cfg"], custom_run["result"])
    hessian, names = exact_hessian(model, to64(batch), squared64)
    values, vectors = np.linalg.eigh(hessian)
    spectrum = read_spectrum(custom_run["result"].store)
    assert spectrum is not None
    np.testing.assert_allclose(spectrum.eigenvalues[:2], values[::-1][:2], rtol=1e-4)
    for d, v in zip(read_directions(custom_run["result"].store), vectors.T[::-1][:2], strict=False):
        flat = torch.cat([d[n].reshape(-1) for n in names]).double().numpy()
        assert abs(flat @ v) / np.linalg.norm(flat) == pytest.approx(1.0, abs=1e-4)


# ---- a transformers causal LM: dict batches, tied head, checkpoint directions ----


@pytest.fixture(scope="session")
def lm(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny saved LM, its corpus, two more models B and C near it and a 5-checkpoint trajectory ending at it."""
    root = tmp_path_factory.mktemp("lm_stages")
    text = tiny_text(9000)
    (root / "corpus.txt").write_text(text)
    save_tiny_lm(root / "model", text)
    from transformers import AutoModelForCausalLM

    state = AutoModelForCausalLM.from_pretrained(root / "model").state_dict()
    g = torch.Generator().manual_seed(1)

    def near(scale: float) -> dict[str, torch.Tensor]:
        out = {k: v + scale * torch.randn(v.shape, generator=g) for k, v in state.items()}
        out["lm_head.weight"] = out["transformer.wte.weight"]  # tied, as the model's own checkpoint has them
        return out

    for name in ("B", "C"):
        torch.save(near(0.02), root / f"{name}.pt")
    (root / "traj").mkdir()
    for epoch in range(4):
        torch.save(near(0.01 * (4 - epoch)), root / "traj" / f"epoch_{epoch}.pt")
    torch.save(state, root / "traj" / "epoch_4.pt")
    args = ["model=hf", f"model.path={root / 'model'}", "data=text", f"data.path={root / 'corpus.txt'}",
            "data.block_size=32", "loss=causal_lm", "eval.batch_size=8"]
    return {"root": root, "args": args}


def lm_loss64(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The model's own outputs.loss over equal-length blocks, averaged (every block predicts the same count)."""
    return model(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss


def lm_model(lm: dict[str, Any], state: Path | None = None) -> nn.Module:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(lm["root"] / "model", attn_implementation="eager")
    if state is not None:
        model.load_state_dict(torch.load(state, weights_only=True))
    return model.eval()


def lm_eval_batch(cfg: Any) -> dict[str, torch.Tensor]:
    return held(load_data(cfg.data, cfg.model.path).test).x


def test_lm_interpolation_ends_at_model_b(lm: dict[str, Any], tmp_path: Path) -> None:
    cfg, result = run(tmp_path, *lm["args"], "direction=interpolation", "grid=line", "grid.resolution=[3]",
                      "grid.x=[0,1]", f"direction.checkpoints=[{lm['root'] / 'B.pt'}]", *NO_SHARPNESS)
    surface = read_surface(result.store)
    batch = lm_eval_batch(cfg)
    with torch.no_grad():
        at_a = float(lm_loss64(lm_model(lm).double(), batch))
        at_b = float(lm_loss64(lm_model(lm, lm["root"] / "B.pt").double(), batch))
    assert surface.metrics["loss"][0] == pytest.approx(at_a, rel=2e-5)
    assert surface.metrics["loss"][-1] == pytest.approx(at_b, rel=2e-5)
    assert set(surface.metrics) == {"loss", "accuracy", "perplexity", "loss_stderr", "accuracy_stderr"}
    np.testing.assert_allclose(surface.metrics["perplexity"], np.exp(surface.metrics["loss"]), rtol=1e-5)


def test_lm_plane_markers_rebuild_models_b_and_c(lm: dict[str, Any], tmp_path: Path) -> None:
    """theta* + x d1 + y d2 at each marker is that model's weights: the tied head moved once, with its embedding."""
    _, result = run(tmp_path, *lm["args"], "direction=plane", "grid.resolution=[3,3]", *NO_SHARPNESS,
                    f"direction.checkpoints=[{lm['root'] / 'B.pt'},{lm['root'] / 'C.pt'}]")
    markers = read_surface(result.store).attrs["markers"]
    dirs = read_directions(result.store)
    assert "lm_head.weight" not in dirs[0] or "transformer.wte.weight" not in dirs[0]
    base = lm_model(lm)
    assert markers["A"] == [0.0, 0.0]
    for name in ("B", "C"):
        model = moved(base, dirs, tuple(markers[name]))
        want = torch.load(lm["root"] / f"{name}.pt", weights_only=True)
        for key, value in model.state_dict().items():
            if value.is_floating_point():
                torch.testing.assert_close(value.float(), want[key], rtol=0, atol=2e-6, msg=key)


def test_lm_pca_projects_the_trajectory_onto_its_plane(lm: dict[str, Any], tmp_path: Path) -> None:
    _, result = run(tmp_path, *lm["args"], "direction=pca", f"direction.trajectory={lm['root'] / 'traj'}",
                    "grid.resolution=[3,3]", *NO_SHARPNESS)
    path = read_array(result.store, "trajectory/coords")
    assert path is not None and path.shape == (5, 2) and np.isfinite(path).all()
    np.testing.assert_allclose(path[-1], 0.0, atol=1e-6)  # the last checkpoint is theta*
    assert read_surface(result.store).done.all()


def test_lm_spectrum_curvature_and_sharpness(lm: dict[str, Any], tmp_path: Path) -> None:
    """The stored top eigenpair is one of the float64 Hessian of the model's own outputs.loss: ||Hv - lambda v|| is
    small against lambda; the curvature map and epsilon-sharpness are finite."""
    cfg, result = run(tmp_path, *lm["args"], "grid.resolution=[2,2]", "hessian.spectrum=true", "hessian.steps=30",
                      "hessian.curvature=true", "hessian.curvature_steps=6", "hessian.slq_runs=1",
                      "hessian.slq_steps=8", "hessian.trace_samples=4", "summary.epsilon=0.001")
    spectrum = read_spectrum(result.store)
    assert spectrum is not None
    model = lm_model(lm).double()
    names = list(read_directions(result.store)[0])
    params = dict(model.named_parameters())
    shapes = [params[n].shape for n in names]
    v = [t.view(s) for t, s in zip(torch.from_numpy(spectrum.eigenvectors[0]).double().split(
        [s.numel() for s in shapes]), shapes, strict=True)]
    batch = lm_eval_batch(cfg)
    grads = torch.autograd.grad(lm_loss64(model, batch), [params[n] for n in names], create_graph=True)
    hv = torch.autograd.grad(sum((g * t).sum() for g, t in zip(grads, v, strict=True)), [params[n] for n in names])
    residual = torch.cat([(h - spectrum.eigenvalues[0] * t).reshape(-1) for h, t in zip(hv, v, strict=True)])
    assert float(residual.norm()) < 1e-2 * abs(spectrum.eigenvalues[0])
    lam = read_array(result.store, "hessian/lambda_max")
    assert lam is not None and np.isfinite(lam).all()
    sharp = json.loads((result.run_dir / "summary.json").read_text())["sharpness"]["epsilon"]
    assert sharp["max_loss"] >= sharp["loss"] and np.isfinite(sharp["sharpness"])


def test_torchvision_model_on_an_image_folder_from_the_command_line(tmp_path: Path) -> None:
    """`landscape model=torchvision data=imagefolder`: class folders with train/ and val/ (the folder's own split),
    images of mixed sizes resized and cropped by the imagenet preset; the run completes with 3 classes."""
    sizes = {c: [(40 + 3 * i, 36 + 2 * i) for i in range(6)] for c in ("cat", "dog", "owl")}
    write_images(tmp_path / "images" / "train", sizes)
    write_images(tmp_path / "images" / "val", sizes, seed=1)
    args = ["model=torchvision", "model.arch=resnet18", "model.kwargs.num_classes=3", "data=imagefolder",
            f"data.root={tmp_path / 'images'}", "data.image_size=32", "grid.resolution=[2,2]", "eval.batch_size=9",
            "eval.points_per_pass=1", "plot.enabled=false", "eval.progress=false", *NO_SHARPNESS,
            f"out_dir={tmp_path / 'runs'}", "name=folder"]
    done = subprocess.run([sys.executable, "-c", "from engine.app.cli import main; main()", *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    surface = read_surface(tmp_path / "runs" / "folder" / "landscape.zarr")
    assert surface.done.all() and np.isfinite(surface.metrics["loss"]).all()
    counts = surface.metrics["accuracy"] * 18  # accuracies over the val folder's 18 images, whole
    np.testing.assert_allclose(counts, np.round(counts), atol=1e-4)


def test_hf_image_classifier_on_cifar_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """model=hf model.task=image_classification: a tiny ViT saved with save_pretrained, swept on CIFAR-10 files with
    cross_entropy; the centre's loss equals the model's own outputs.loss on the same images."""
    from transformers import ViTConfig, ViTForImageClassification

    from vision_fixtures import skip_cifar_md5, write_cifar

    skip_cifar_md5(monkeypatch)
    write_cifar(tmp_path / "data", "cifar10", per_file=4, test=20)
    torch.manual_seed(0)
    config = ViTConfig(image_size=32, patch_size=8, num_channels=3, hidden_size=16, num_hidden_layers=1,
                       num_attention_heads=2, intermediate_size=32, num_labels=10)
    ViTForImageClassification(config).save_pretrained(tmp_path / "vit")
    cfg, result = run(tmp_path, "model=hf", f"model.path={tmp_path / 'vit'}", "model.task=image_classification",
                      "data=cifar10", f"data.root={tmp_path / 'data'}", "grid.resolution=[3,3]", "eval.batch_size=10",
                      *NO_SHARPNESS, "summary.adaptive_radius=null")
    surface = read_surface(result.store)
    assert surface.done.all() and set(surface.metrics) >= {"loss", "accuracy", "loss_stderr"}
    test = held(load_data(cfg.data).test)
    model = ViTForImageClassification.from_pretrained(tmp_path / "vit", attn_implementation="eager").eval()
    with torch.no_grad():
        want = float(model(pixel_values=test.x, labels=test.y).loss)
    assert surface.metrics["loss"][1, 1] == pytest.approx(want, rel=1e-5)


def test_hf_sequence_classifier_on_labelled_records(tmp_path: Path) -> None:
    """model=hf model.task=sequence_classification with data=text data.label_field: one padded example per record;
    the centre's loss equals the model's own outputs.loss on the test records."""
    import json as _json

    from hf_fixtures import save_tiny_classifier

    text = tiny_text(6000)
    save_tiny_classifier(tmp_path / "clf", text)
    words = text.split()
    rows = [{"text": " ".join(words[i: i + 3 + i % 17]), "label": ["neg", "pos", "mixed"][i % 3]} for i in range(40)]
    (tmp_path / "reviews.jsonl").write_text("\n".join(_json.dumps(r) for r in rows))
    cfg, result = run(tmp_path, "model=hf", f"model.path={tmp_path / 'clf'}", "model.task=sequence_classification",
                      "data=text", f"data.path={tmp_path / 'reviews.jsonl'}", "data.label_field=label",
                      "data.block_size=24", "grid.resolution=[3,3]", "eval.batch_size=4", *NO_SHARPNESS,
                      "summary.adaptive_radius=null")
    surface = read_surface(result.store)
    assert surface.done.all()
    batch = held(load_data(cfg.data, cfg.model.path).test).x
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "clf", attn_implementation="eager").eval()
    with torch.no_grad():
        want = float(model(**batch).loss)
    assert surface.metrics["loss"][1, 1] == pytest.approx(want, rel=1e-5)
