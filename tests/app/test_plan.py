"""landscape-plan: the memory formula, parameters counted on the meta device from config.json alone, and the command
(a tiny GPT-2 timed here, its config-only copy planned from the formula), which writes nothing."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from engine.app.plan import clock, divisors, per_rank_bytes, sharpness_bytes
from engine.config.schema import ModelConfig
from engine.sources.hf import hf_parameter_count
from hf_fixtures import save_tiny_lm, tiny_text


@pytest.fixture(scope="module")
def lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("plan")
    text = tiny_text(6000)
    (root / "corpus.txt").write_text(text)
    save_tiny_lm(root / "lm", text)
    (root / "config_only").mkdir()
    shutil.copy(root / "lm" / "config.json", root / "config_only" / "config.json")
    return root


def test_formula_counts_model_theta_and_directions_over_the_shards() -> None:
    # a 7B bfloat16 model with two bfloat16 directions: (2 + 2 + 2 x 2) bytes per parameter, over S
    assert per_rank_bytes(7_000_000_000, 2, 2, 2, 1) == 56e9
    assert per_rank_bytes(7_000_000_000, 2, 2, 2, 4, activations=10) == 14e9 + 10
    assert per_rank_bytes(1000, 4, 4, 2, 2) == 8000  # float32: the 16 bytes per parameter of an unsharded sweep
    assert divisors(8) == [1, 2, 4, 8] and clock(90061) == "25:01:01"
    # the sharpness ascents: the model, theta*, the step and the gradient in the model's dtype, plus one graph
    assert sharpness_bytes(7_000_000_000, 2, 8, graph=5) == 7e9 + 5
    assert sharpness_bytes(1000, 4, 1) == 16000


def test_parameters_are_counted_from_config_json_alone(lm: Path) -> None:
    import transformers

    want = sum(p.numel() for p in transformers.AutoModelForCausalLM.from_pretrained(lm / "lm").parameters())
    assert hf_parameter_count(ModelConfig(name="hf", path=str(lm / "lm"))) == (want, True)
    assert hf_parameter_count(ModelConfig(name="hf", path=str(lm / "config_only"))) == (want, False)


def plan(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "from engine.app.cli import plan_main; plan_main()", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_plan_times_a_model_and_tabulates_every_shard_count(lm: Path) -> None:
    done = plan(lm, "--ranks", "4", "--points", "2", "model=hf", f"model.path={lm / 'lm'}", "data=text",
                f"data.path={lm / 'corpus.txt'}", "data.block_size=32", "loss=causal_lm", "eval.samples=8",
                "grid.resolution=[5,5]", "grid.tile=[3,3]", "grid.preview=0", "hessian.spectrum=true")
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert "grid 5x5: 25 points in 4 tile(s)" in lines[0]
    assert "s per point" in lines[1] and "measured/formula" in lines[1]
    rows = [line.split() for line in lines if line.split() and line.split()[0] in ("1", "2", "4")]
    assert [r[0] for r in rows] == ["1", "2", "4"] and [r[1] for r in rows] == ["4", "2", "1"]
    gb = [float(r[2]) for r in rows]
    assert gb[0] > gb[1] > gb[2] > 0
    assert [r[4] for r in rows] == ["1", "2", "4"]  # tiles per group
    note = next(line for line in lines if line.startswith("GB per rank: the larger of the sweep and the sharpness"))
    assert "one gradient batch's graph (" in note and ", measured)" in note
    assert lines[-1].startswith("S > 1 loads the whole model on every rank first (hessian.spectrum runs on the whole")
    assert not (lm / "runs").exists()  # nothing written


def test_config_only_folder_is_planned_from_the_formula(lm: Path) -> None:
    done = plan(lm, "--ranks", "2", "--memory-gb", "80", "model=hf", f"model.path={lm / 'config_only'}",
                "model.dtype=bfloat16", "direction.dtype=bfloat16", "data=text", f"data.path={lm / 'corpus.txt'}",
                "loss=causal_lm", "summary.epsilon=null", "summary.adaptive_radius=null")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines()[-1].startswith("S > 1: each rank reads only its rows of the weights")
    assert "no weights in model.path" in done.stdout and "80.0 GB per rank (given)" in done.stdout
    params = hf_parameter_count(ModelConfig(name="hf", path=str(lm / "lm")))[0]
    row = next(line.split() for line in done.stdout.splitlines() if line.split()[:2] == ["1", "2"])
    assert float(row[2]) == pytest.approx(per_rank_bytes(params, 2, 2, 2, 1) / 1e9, rel=5e-3)
    assert row[3] == "yes" and row[5] == "-"


def test_the_sharpness_ascents_set_the_memory_when_they_hold_more_than_the_sweep(lm: Path) -> None:
    """With the weights made on access and bfloat16 directions the sweep holds 2 + 2 x 2 bytes per parameter at S=1,
    the default sharpness ascents 4 x 2: the row gives the larger."""
    done = plan(lm, "--ranks", "1", "--memory-gb", "80", "model=hf", f"model.path={lm / 'config_only'}",
                "model.dtype=bfloat16", "direction.dtype=bfloat16", "eval.perturb=on_access", "data=text",
                f"data.path={lm / 'corpus.txt'}", "loss=causal_lm")
    assert done.returncode == 0, done.stderr[-3000:]
    params = hf_parameter_count(ModelConfig(name="hf", path=str(lm / "lm")))[0]
    row = next(line.split() for line in done.stdout.splitlines() if line.split()[:2] == ["1", "1"])
    assert float(row[2]) == pytest.approx(sharpness_bytes(params, 2, 1) / 1e9, rel=5e-3)
    assert sharpness_bytes(params, 2, 1) > per_rank_bytes(params, 2, 2, 2, 1, theta_copy=False)
    assert "one gradient batch's graph (0.00 GB, not counted)" in done.stdout
