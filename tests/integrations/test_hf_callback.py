"""engine.integrations.hf.LandscapeCallback on a transformers Trainer (a 2-layer GPT-2 of width 32 built from a
config, a local tokenizer, 3 epochs on CPU) reporting to TensorBoard, MLflow and W&B: the trajectory checkpoints,
the PCA plane with causal_lm against `landscape model=hf data=text loss=causal_lm direction=pca` on the same
checkpoints, and every summary number read back with each tracker's own reader."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("accelerate")
pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")
pytest.importorskip("wandb")

from engine.app.trackers import summary_scalars
from engine.config.schema import DataConfig
from engine.sources.data import load_data
from engine.store.read import read_surface
from helpers import run_cli
from hf_fixtures import gpt2_config, save_tiny_tokenizer, tiny_text
from integration_fixtures import mlflow_scalars, tensorboard_scalars, wandb_scalars

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning",
                                        "ignore::ResourceWarning", "ignore::FutureWarning",
                                        "ignore::PendingDeprecationWarning")
BLOCK = 32
SETTINGS = {"grid.resolution": (5, 5), "eval.batch_size": 16, "eval.progress": False, "eval.points_per_pass": 1,
            "summary.epsilon": None, "summary.adaptive_radius": None, "summary.adaptive_average_radius": None,
            "plot.enabled": False}  # figures, pages and images in trackers: tested with Lightning
CLI_SETTINGS = ["grid.resolution=[5,5]", "eval.batch_size=16", "eval.progress=false", "eval.points_per_pass=1",
                "summary.epsilon=null", "summary.adaptive_radius=null", "summary.adaptive_average_radius=null",
                "plot.enabled=false"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 3-epoch Trainer run with the callback, reporting to all three trackers; the final model saved for the CLI."""
    import wandb
    from transformers import GPT2LMHeadModel, Trainer, TrainingArguments

    from engine.integrations.hf import LandscapeCallback

    tmp = tmp_path_factory.mktemp("hf")
    mp = pytest.MonkeyPatch()
    uri = f"file:{tmp / 'mlruns'}"
    for key, value in {"MLFLOW_TRACKING_URI": uri, "MLFLOW_ALLOW_FILE_STORE": "true", "WANDB_MODE": "offline",
                       "WANDB_DIR": str(tmp), "WANDB_SILENT": "true", "WANDB_PROJECT": "gpt2",
                       "OMP_NUM_THREADS": "1"}.items():  # one thread: tiny ops on a shared CPU, here and in the CLI
        mp.setenv(key, value)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    text = tiny_text(6000)
    (tmp / "corpus.txt").write_text(text)
    save_tiny_tokenizer(tmp / "lm", text)
    bundle = load_data(DataConfig(name="text", path=str(tmp / "corpus.txt"), tokenizer=str(tmp / "lm"),
                                  block_size=BLOCK))  # the split `landscape data=text` evaluates

    def rows(ids: torch.Tensor) -> list[dict]:
        return [{"input_ids": r, "attention_mask": torch.ones_like(r), "labels": r} for r in ids]

    torch.manual_seed(0)
    model = GPT2LMHeadModel(gpt2_config(tmp / "lm", 2, 32, 64))
    callback = LandscapeCallback(**SETTINGS)
    args = TrainingArguments(output_dir=str(tmp / "out"), num_train_epochs=3, per_device_train_batch_size=8,
                             per_device_eval_batch_size=16, eval_strategy="epoch", learning_rate=1e-3,
                             report_to=["tensorboard", "mlflow", "wandb"], use_cpu=True, save_strategy="no",
                             logging_steps=5, disable_tqdm=True, seed=0)
    trainer = Trainer(model=model, args=args, train_dataset=rows(bundle.train.x["input_ids"]),
                      eval_dataset=rows(bundle.test.x["input_ids"]), callbacks=[callback])
    trainer.train()
    wandb.finish()
    model.save_pretrained(tmp / "lm")
    yield {"tmp": tmp, "callback": callback, "model": model, "uri": uri}
    torch.set_num_threads(threads)
    mp.undo()


def test_trajectory_checkpoints_are_float32_with_epoch_and_step(trained: dict) -> None:
    blobs = [torch.load(f, weights_only=True) for f in sorted(trained["callback"].directory.glob("epoch_*.pt"))]
    assert [b["epoch"] for b in blobs] == [1, 2, 3]
    assert [b["step"] for b in blobs] == [12, 24, 36]  # 89 training blocks in batches of 8
    assert all(t.dtype == torch.float32 for b in blobs for t in b["state_dict"].values() if t.is_floating_point())
    assert all(torch.equal(blobs[-1]["state_dict"][k], v) for k, v in trained["model"].state_dict().items())


def test_causal_lm_pca_plane_equals_the_cli_on_the_same_checkpoints(trained: dict) -> None:
    callback, tmp = trained["callback"], trained["tmp"]
    cli = run_cli("main", "model=hf", f"model.path={tmp / 'lm'}", "data=text", f"data.path={tmp / 'corpus.txt'}",
                  f"data.block_size={BLOCK}", "loss=causal_lm", "direction=pca",
                  f"direction.trajectory={callback.directory}", f"out_dir={tmp / 'cli'}", "name=cli", *CLI_SETTINGS,
                  cwd=tmp)
    assert cli.returncode == 0, cli.stderr[-2000:]
    ours = read_surface(callback.run_dir / "landscape.zarr")
    theirs = read_surface(tmp / "cli" / "cli" / "landscape.zarr")
    assert set(ours.metrics) >= {"loss", "accuracy", "perplexity"}
    for a, b in zip(ours.coords, theirs.coords):
        np.testing.assert_array_equal(a, b)
    for metric in ("loss", "accuracy", "perplexity"):
        np.testing.assert_allclose(ours.metrics[metric], theirs.metrics[metric], rtol=1e-6, atol=0)
    summary = json.loads((callback.run_dir / "summary.json").read_text())
    assert summary["center"]["perplexity"] == pytest.approx(np.exp(summary["center"]["loss"]), rel=1e-6)


def test_trackers_of_report_to_hold_the_summary_numbers(trained: dict) -> None:
    run_dir, tmp = trained["callback"].run_dir, trained["tmp"]
    want = summary_scalars(json.loads((run_dir / "summary.json").read_text()))
    assert "landscape/center/perplexity" in want
    for name, got in (("tensorboard", tensorboard_scalars(tmp / "out" / "runs")),
                      ("mlflow", mlflow_scalars(trained["uri"])), ("wandb", wandb_scalars(tmp / "wandb"))):
        missing = sorted(set(want) - set(got))
        assert not missing, f"{name} lacks {missing[:5]}"
        for key, value in want.items():
            assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-12), f"{name}: {key}"
    assert len([p for p in (tmp / "out" / "runs").iterdir() if p.is_dir()]) == 1  # the Trainer's own TB folder
