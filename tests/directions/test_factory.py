"""engine.directions.factory.make_directions on a tiny model, each kind: random (seeded, normalized), file (loaded,
then normalized), hessian (the given hessian_axes, then normalized), and interpolation, plane, pca (the checkpoints'
own geometry, never normalized), with checkpoints saved to tmp_path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from engine.config.schema import DirectionConfig
from engine.core.flat import flatten
from engine.directions.factory import make_directions
from engine.directions.vectors import PerturbedTensors, perturbed

GEOMETRY = {"norm": "none", "ignore": "none"}  # what the checkpoint kinds require


def tiny() -> nn.Module:
    """Conv (2 filters) -> BatchNorm2d -> Linear on 1x4x4 inputs, BatchNorm affine parameters and statistics away
    from their defaults."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 3))
    model[1].running_mean.copy_(torch.tensor([0.3, -0.2]))
    model[1].running_var.copy_(torch.tensor([0.5, 2.0]))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([1.2, 0.7]))
        model[1].bias.copy_(torch.tensor([0.1, -0.3]))
    return model.eval()


def save_moved(model: nn.Module, path: Path, seed: int, scale: float = 0.1) -> dict[str, torch.Tensor]:
    """A checkpoint of model's architecture at other weights and statistics (variances kept positive)."""
    g = torch.Generator().manual_seed(seed)
    state = {n: t.clone() for n, t in model.state_dict().items()}
    for n, t in state.items():
        if n.endswith("running_var"):
            state[n] = t * torch.exp(scale * torch.randn(t.shape, generator=g))
        elif t.is_floating_point():
            state[n] = t + scale * torch.randn(t.shape, generator=g)
    torch.save({"state_dict": state, "epoch": seed}, path)
    return state


def assert_filter_normalized(direction: list[torch.Tensor], target: PerturbedTensors) -> None:
    """Each filter (row) of a rank >= 2 tensor has theta*'s norm; rank-1 tensors are zero (ignore=biasbn)."""
    for t, w in zip(direction, target.theta):
        if w.dim() <= 1:
            assert torch.count_nonzero(t) == 0
        else:
            torch.testing.assert_close(t.reshape(len(t), -1).norm(dim=1), w.reshape(len(w), -1).norm(dim=1),
                                       rtol=1e-5, atol=0)


def unit_and_orthogonal(directions: list[list[torch.Tensor]]) -> None:
    flat = torch.stack([flatten(d, torch.float64) for d in directions])
    torch.testing.assert_close(flat @ flat.T, torch.eye(len(directions), dtype=torch.float64), rtol=0, atol=1e-5)


def test_random_is_seeded_reproducible_and_normalized(tmp_path: Path) -> None:
    model = tiny()
    target = perturbed(model, "weights")
    made = make_directions(DirectionConfig(seed=7), model, target, 2, tmp_path)
    assert len(made.directions) == 2 and made.end is None and made.markers == {} and made.trajectory is None
    for direction in made.directions:
        assert [tuple(t.shape) for t in direction] == [tuple(t.shape) for t in target.theta]
        assert_filter_normalized(direction, target)
    assert not torch.equal(made.directions[0][0], made.directions[1][0])
    again = make_directions(DirectionConfig(seed=7), model, target, 2, tmp_path)
    assert all(torch.equal(a, b) for da, db in zip(made.directions, again.directions) for a, b in zip(da, db))
    other = make_directions(DirectionConfig(seed=8), model, target, 2, tmp_path)
    assert not torch.equal(other.directions[0][0], made.directions[0][0])
    line = make_directions(DirectionConfig(seed=7), model, target, 1, tmp_path)
    assert len(line.directions) == 1 and all(torch.equal(a, b) for a, b in zip(line.directions[0], made.directions[0]))
    layer = make_directions(DirectionConfig(seed=7, norm="layer", ignore="none"), model, target, 1, tmp_path)
    for t, w in zip(layer.directions[0], target.theta):
        assert t.norm().item() == pytest.approx(w.norm().item(), rel=1e-5) and torch.count_nonzero(t) > 0


def test_random_over_states_moves_variances_in_log_space_at_unit_rms(tmp_path: Path) -> None:
    model = tiny()
    target = perturbed(model, "states")
    made = make_directions(DirectionConfig(seed=7, over="states", ignore="none"), model, target, 2, tmp_path)
    for name, t, logged in zip(target.names, made.directions[0], target.logged):
        assert logged == name.endswith("running_var")
        if logged:
            assert t.pow(2).mean().sqrt().item() == pytest.approx(1.0, rel=1e-5)


def test_file_directions_are_loaded_then_normalized(tmp_path: Path) -> None:
    model = tiny()
    target = perturbed(model, "weights")
    g = torch.Generator().manual_seed(3)
    raw = [[5 * torch.randn(t.shape, generator=g) for t in target.theta] for _ in range(2)]
    path = tmp_path / "dirs.pt"
    torch.save([dict(zip(target.names, d)) for d in raw], path)
    made = make_directions(DirectionConfig(kind="file", path=str(path)), model, target, 2, tmp_path)
    for direction, saved in zip(made.directions, raw):
        assert_filter_normalized(direction, target)
        for t, s in zip(direction, saved):
            if t.dim() >= 2:  # each filter rescaled, not turned: parallel to the saved one
                rows, saved_rows = t.reshape(len(t), -1), s.reshape(len(s), -1)
                cosine = (rows * saved_rows).sum(1) / (rows.norm(dim=1) * saved_rows.norm(dim=1))
                torch.testing.assert_close(cosine, torch.ones(len(t)), rtol=0, atol=1e-5)
    as_saved = make_directions(DirectionConfig(kind="file", path=str(path), **GEOMETRY), model, target, 2, tmp_path)
    assert all(torch.equal(a, b) for da, db in zip(as_saved.directions, raw) for a, b in zip(da, db))


def test_hessian_directions_come_from_hessian_axes_then_normalized(tmp_path: Path) -> None:
    model = tiny()
    target = perturbed(model, "weights")
    asked: list[int] = []
    g = torch.Generator().manual_seed(4)
    axes = [[torch.randn(t.shape, generator=g) for t in target.theta] for _ in range(2)]

    def hessian_axes(ndim: int) -> list[list[torch.Tensor]]:
        asked.append(ndim)
        return axes[:ndim]

    made = make_directions(DirectionConfig(kind="hessian"), model, target, 2, tmp_path, hessian_axes)
    assert asked == [2] and len(made.directions) == 2
    for direction in made.directions:
        assert_filter_normalized(direction, target)
    raw = make_directions(DirectionConfig(kind="hessian", **GEOMETRY), model, target, 1, tmp_path, hessian_axes)
    assert asked == [2, 1] and all(torch.equal(a, b) for a, b in zip(raw.directions[0], axes[0]))
    with pytest.raises(ValueError, match="needs hessian_axes"):
        make_directions(DirectionConfig(kind="hessian"), model, target, 2, tmp_path)


def test_interpolation_is_b_minus_a_with_b_as_its_end(tmp_path: Path) -> None:
    model = tiny()
    target = perturbed(model, "states")
    b = save_moved(model, tmp_path / "b.pt", seed=1)
    d = DirectionConfig(kind="interpolation", over="states", checkpoints=[str(tmp_path / "b.pt")], **GEOMETRY)
    made = make_directions(d, model, target, 1, tmp_path)
    (direction,) = made.directions
    for name, t, a, logged in zip(target.names, direction, target.theta, target.logged):
        want = b[name].log() - a.log() if logged else b[name] - a  # variances along the line in log space
        assert torch.equal(t, want), name
    assert made.end is not None and all(torch.equal(e, b[n]) for n, e in zip(target.names, made.end))  # B's own
    assert made.markers == {"A": [0.0], "B": [1.0]} and made.axis_labels == ["A (0) to B (1)", ""]


def test_plane_is_orthonormal_through_the_three_models(tmp_path: Path) -> None:
    model = tiny()
    target = perturbed(model, "weights")
    b = save_moved(model, tmp_path / "b.pt", seed=1)
    c = save_moved(model, tmp_path / "c.pt", seed=2)
    d = DirectionConfig(kind="plane", checkpoints=[str(tmp_path / "b.pt"), str(tmp_path / "c.pt")], **GEOMETRY)
    made = make_directions(d, model, target, 2, tmp_path)
    unit_and_orthogonal(made.directions)  # not rescaled filter by filter
    assert made.markers["A"] == [0.0, 0.0] and made.markers["B"][1] == 0.0
    e1, e2 = (flatten(x, torch.float64) for x in made.directions)
    origin = flatten(target.theta, torch.float64)
    for label, state in (("B", b), ("C", c)):
        x, y = made.markers[label]
        torch.testing.assert_close(origin + x * e1 + y * e2, flatten([state[n] for n in target.names], torch.float64),
                                   rtol=0, atol=1e-5)


def test_pca_of_the_run_checkpoints_or_another_trajectory(tmp_path: Path) -> None:
    model = tiny()
    target = perturbed(model, "weights")
    (tmp_path / "checkpoints").mkdir()
    for epoch in range(1, 5):
        save_moved(model, tmp_path / "checkpoints" / f"epoch_{epoch:03d}.pt", seed=epoch, scale=1.0 / epoch)
    made = make_directions(DirectionConfig(kind="pca", **GEOMETRY), model, target, 2, tmp_path)
    unit_and_orthogonal(made.directions)
    assert made.trajectory is not None and made.trajectory.shape == (4, 2)
    assert made.explained is not None and made.explained[0] >= made.explained[1] > 0 and sum(made.explained) < 1
    assert made.markers == {"final": [0.0, 0.0]} and made.axis_labels[0].startswith("PC1 (")
    other = tmp_path / "elsewhere"
    other.mkdir()
    for epoch in range(1, 4):
        save_moved(model, other / f"epoch_{epoch:03d}.pt", seed=10 + epoch)
    elsewhere = make_directions(DirectionConfig(kind="pca", trajectory=str(other), **GEOMETRY), model, target, 2,
                                tmp_path)
    assert elsewhere.trajectory is not None and elsewhere.trajectory.shape == (3, 2)
    assert elsewhere.explained is not None and sum(elsewhere.explained) == pytest.approx(1.0)  # 3 models: a plane
    assert not np.allclose(elsewhere.trajectory[:, 0], made.trajectory[:3, 0])


def test_pca_shows_a_bar_over_the_checkpoints_only_when_asked(tmp_path: Path,
                                                              capfd: pytest.CaptureFixture[str]) -> None:
    model = tiny()
    target = perturbed(model, "weights")
    (tmp_path / "checkpoints").mkdir()
    for epoch in range(1, 5):
        save_moved(model, tmp_path / "checkpoints" / f"epoch_{epoch:03d}.pt", seed=epoch, scale=1.0 / epoch)
    cfg = DirectionConfig(kind="pca", **GEOMETRY)
    silent = make_directions(cfg, model, target, 2, tmp_path)
    assert capfd.readouterr() == ("", "")
    shown = make_directions(cfg, model, target, 2, tmp_path, progress=True)
    err = capfd.readouterr().err
    assert "pca trajectory" in err and "4/4" in err
    assert shown.trajectory is not None and silent.trajectory is not None
    assert np.array_equal(shown.trajectory, silent.trajectory)
