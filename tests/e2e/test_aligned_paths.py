"""direction.align=weights through whole runs: two MLPs trained on digits from different seeds.

- The line from A to B before alignment (Python stages) and after it (the `landscape` command): the barrier
  max_t L(t) - ((1 - t) L(0) + t L(1)) drops well below its value before (both printed), while both ends keep each
  model's own loss (the aligned B computes B's function); the aligned B is saved and reads back as a checkpoint.
- The plane through A, B and C with B and C aligned saves both and marks the three models.
- align with a kind that has no other checkpoint is refused in one line.
"""

from __future__ import annotations

import numpy as np
import pytest

from engine.app.landscape import run_landscape
from engine.core.errors import UserError
from engine.sources.checkpoints import load_checkpoint
from engine.sources.models import MLP
from engine.store.read import read_surface
from helpers import make_cfg, run_cli

MLP_KEYS = ["model=mlp", "model.hidden=[48,48]", "eval.samples=360", "train.epochs=3"]
LINE = ["direction=interpolation", "grid=line", "grid.resolution=[5]", "grid.x=[0,1]", "grid.tile=[5]",
        "grid.preview=0", "eval.points_per_pass=1"]


def barrier(store) -> float:
    """The largest rise of the swept loss above the chord between the line's ends (Frankle et al. 2020)."""
    surface = read_surface(store)
    t, loss = np.asarray(surface.coords[0], float), np.asarray(surface.metrics["loss"], float)
    return float(np.max(loss - ((1 - t) * loss[0] + t * loss[-1])))


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Two digits MLPs trained from seeds 0 and 1 (final.pt each) and the out folder."""
    out = tmp_path_factory.mktemp("align")
    finals = []
    for seed in (0, 1):
        cfg, resolved = make_cfg(out, *MLP_KEYS, f"train.seed={seed}", f"name=seed{seed}", "grid.resolution=[2,2]",
                                 "grid.preview=0")
        run_landscape(cfg, resolved, log=False)
        finals.append(out / f"seed{seed}" / "checkpoints" / "final.pt")
    return out, finals[0], finals[1]


def test_alignment_lowers_the_barrier_between_two_seeds(pair):
    out, a, b = pair
    common = [*MLP_KEYS, *LINE, f"model.checkpoint={a}", f"direction.checkpoints=[{b}]"]
    cfg, resolved = make_cfg(out, *common, "name=before")
    before = run_landscape(cfg, resolved, log=False).store
    done = run_cli("main", *common, "direction.align=weights", "name=after", "eval.progress=false",
                   "plot.enabled=false", "eval.batch_size=32", "model.width=4", f"out_dir={out}", cwd=out)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "weight matching: B aligned to A" in done.stdout + done.stderr
    after = out / "after" / "landscape.zarr"
    b_before, b_after = barrier(before), barrier(after)
    print(f"\nbarrier between digits MLPs (seeds 0, 1): before alignment {b_before:.4f}, after {b_after:.4f}")
    assert b_before > 0.1 and b_after < 0.5 * b_before
    loss_before, loss_after = (read_surface(s).metrics["loss"] for s in (before, after))
    np.testing.assert_allclose(loss_after[[0, -1]], loss_before[[0, -1]], rtol=1e-5)  # A, and B's own function
    assert read_surface(after).attrs["axis_labels"][0] == "A (0) to B aligned to A (1)"
    load_checkpoint(MLP(64, [48, 48], 10), out / "after" / "aligned_B.pt")  # a checkpoint any run reads back


def test_aligned_plane_saves_b_and_c_and_marks_all_three(pair):
    out, a, b = pair
    c = a.parent / "epoch_001.pt"
    cfg, resolved = make_cfg(out, *MLP_KEYS, f"model.checkpoint={a}", "direction=plane", "direction.align=weights",
                             f"direction.checkpoints=[{b},{c}]", "name=plane", "grid.resolution=[3,3]",
                             "grid.preview=0", "grid.x=[-0.5,1.5]", "grid.y=[-0.5,1.5]")
    result = run_landscape(cfg, resolved, log=False)
    assert (out / "plane" / "aligned_B.pt").is_file() and (out / "plane" / "aligned_C.pt").is_file()
    assert set(read_surface(result.store).attrs["markers"]) == {"A", "B", "C"}


def test_align_needs_other_checkpoints(tmp_path):
    refusal = r"direction.align=weights .* direction=interpolation, plane or curve, not direction=random"
    with pytest.raises(UserError, match=refusal):
        make_cfg(tmp_path, "direction.align=weights")
