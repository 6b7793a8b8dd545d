"""Trajectory tools: interpolation, the plane through three checkpoints, trajectory PCA, checkpoint listing."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from engine.core.errors import UserError
from engine.directions.trajectory import (
    PCAResult,
    interpolation_direction,
    list_checkpoints,
    plane_through,
    trajectory_pca,
)
from engine.directions.vectors import perturbed_tensors
from engine.sources.checkpoints import load_state

SHAPES = {"conv.weight": (3, 2, 2), "fc.weight": (4, 3), "fc.bias": (4,)}
NAMES = list(SHAPES)


def random_state(seed: int, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """A state over NAMES with seeded standard-normal entries."""
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(s, generator=g, dtype=torch.float64).to(dtype) for n, s in SHAPES.items()}


def flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    """One flat float64 vector of per-name tensors."""
    return torch.cat([t.reshape(-1).double() for t in tensors])


def split(vector: torch.Tensor) -> dict[str, torch.Tensor]:
    """A flat vector cut into a state over NAMES."""
    sizes = [math.prod(s) for s in SHAPES.values()]
    return {n: t.reshape(s) for (n, s), t in zip(SHAPES.items(), torch.split(vector, sizes))}


def synthetic_trajectory(
    count: int, dtype: torch.dtype = torch.float32, flat_b: bool = False
) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]], torch.Tensor, np.ndarray]:
    """Final state F, checkpoints F + a_i u + b_i v on a shrinking elliptic spiral (last one == F), basis [u v] (P x 2)
    and the (a_i, b_i) as a [count, 2] array."""
    final = random_state(7, torch.float64)
    size = sum(math.prod(s) for s in SHAPES.values())
    uv, _ = torch.linalg.qr(torch.randn(size, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64))
    t = np.linspace(0.0, 3 * np.pi, count)
    radius = 1.0 - t / t[-1]
    ab = np.stack([4.0 * radius * np.cos(t), (0.0 if flat_b else 1.0) * radius * np.sin(t)], axis=1)
    f = flat(list(final.values()))
    states = [{n: x.to(dtype) for n, x in split(f + uv @ torch.from_numpy(row)).items()} for row in ab]
    return {n: x.to(dtype) for n, x in final.items()}, states, uv, ab


def pca(states: list[dict[str, torch.Tensor]], final: dict[str, torch.Tensor], **kw: int) -> tuple[PCAResult, int]:
    """trajectory_pca over an in-memory list of states, and how many times it loaded a checkpoint."""
    loads = 0

    def load(i: int) -> dict[str, torch.Tensor]:
        nonlocal loads
        loads += 1
        return states[i]

    return trajectory_pca(NAMES, load, len(states), final, where="the test run", **kw), loads


def pairwise(points: np.ndarray) -> np.ndarray:
    """All pairwise Euclidean distances of a set of points [n, d]."""
    return np.linalg.norm(points[:, None, :] - points[None, :, :], axis=-1)


def test_interpolation_direction_goes_from_a_to_b() -> None:
    a, b = random_state(0), random_state(1)
    direction = interpolation_direction(NAMES, a, b)
    for n, d in zip(NAMES, direction):
        torch.testing.assert_close(d, b[n] - a[n], rtol=0, atol=0)
        torch.testing.assert_close(a[n] + 1.0 * d, b[n], rtol=0, atol=1e-6)
        assert d.dtype == torch.float32 and d.shape == SHAPES[n]


def test_interpolation_refuses_a_mismatched_state() -> None:
    a, b = random_state(0), random_state(1)
    b["fc.bias"] = torch.zeros(5)
    with pytest.raises(UserError, match=r"fc\.bias") as err:
        interpolation_direction(NAMES, a, b)
    assert "\n" not in str(err.value)


def test_plane_is_orthonormal_and_reproduces_the_three_models() -> None:
    a, b, c = random_state(0), random_state(1), random_state(2)
    (e1, e2), coords = plane_through(NAMES, a, b, c)
    assert all(t.dtype == torch.float32 and t.shape == SHAPES[n] for n, t in zip(NAMES, e1 + e2))
    basis = torch.stack([flat(e1), flat(e2)])
    torch.testing.assert_close(basis @ basis.T, torch.eye(2, dtype=torch.float64), rtol=0, atol=1e-5)
    assert coords["A"] == (0.0, 0.0)
    assert coords["B"][1] == 0.0
    fa, fb, fc = (flat(list(s.values())) for s in (a, b, c))
    assert coords["B"][0] == pytest.approx(float((fb - fa).norm()), rel=1e-12)
    for label, target in (("B", fb), ("C", fc)):
        x, y = coords[label]
        torch.testing.assert_close(fa + x * basis[0] + y * basis[1], target, rtol=0, atol=1e-5)


def test_plane_math_is_orthonormal_in_float64() -> None:
    a, b, c = (random_state(k, torch.float64) for k in range(3))
    (e1, e2), coords = plane_through(NAMES, a, b, c)
    basis = torch.stack([flat(e1), flat(e2)])
    assert all(t.dtype == torch.float64 for t in e1 + e2)
    torch.testing.assert_close(basis @ basis.T, torch.eye(2, dtype=torch.float64), rtol=0, atol=1e-10)
    fa, fc = flat(list(a.values())), flat(list(c.values()))
    x, y = coords["C"]
    torch.testing.assert_close(fa + x * basis[0] + y * basis[1], fc, rtol=0, atol=1e-10)


def test_plane_refuses_collinear_and_identical_checkpoints() -> None:
    a, b = random_state(0, torch.float64), random_state(1, torch.float64)
    beyond = {n: a[n] + 2.5 * (b[n] - a[n]) for n in NAMES}
    for args in ((a, b, beyond), (a, a, b), (a, b, a), (a, b, b)):
        with pytest.raises(UserError, match="collinear") as err:
            plane_through(NAMES, *args)
        assert "\n" not in str(err.value)


def test_pca_recovers_the_plane_of_a_synthetic_trajectory() -> None:
    final, states, uv, ab = synthetic_trajectory(12)
    result, loads = pca(states, final)
    assert loads == len(states)
    assert all(t.dtype == torch.float32 and t.shape == SHAPES[n] for d in result.directions for n, t in zip(NAMES, d))
    d = torch.stack([flat(x) for x in result.directions], dim=1)
    torch.testing.assert_close(d.T @ d, torch.eye(2, dtype=torch.float64), rtol=0, atol=1e-6)
    cosines = torch.linalg.svdvals(d.T @ uv)
    assert bool((cosines > 1 - 1e-6).all()), cosines
    e1, e2 = result.explained
    assert e1 + e2 == pytest.approx(1.0, abs=1e-9)
    assert e1 >= e2 > 0
    centred = ab - ab.mean(0)
    variances = np.sort(np.linalg.eigvalsh(centred.T @ centred))[::-1]
    np.testing.assert_allclose(result.explained, variances / variances.sum(), atol=1e-6)
    assert result.coords.shape == (12, 2)
    np.testing.assert_allclose(pairwise(result.coords), pairwise(ab), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(result.coords, axis=1), np.linalg.norm(ab, axis=1), atol=1e-5)
    np.testing.assert_allclose(result.coords[-1], [0.0, 0.0], atol=1e-5)
    assert (result.coords[0] < 0).all()


def test_pca_streaming_path_agrees_with_the_in_memory_path() -> None:
    final, states, _, _ = synthetic_trajectory(9)
    held, held_loads = pca(states, final)
    streamed, streamed_loads = pca(states, final, max_bytes=1)
    assert held_loads == 9
    assert streamed_loads == 9 + 9 * 10 // 2 + 9
    np.testing.assert_allclose(streamed.coords, held.coords, atol=1e-9)
    np.testing.assert_allclose(streamed.explained, held.explained, atol=1e-12)
    for a, b in zip(streamed.directions, held.directions):
        torch.testing.assert_close(flat(a), flat(b), rtol=0, atol=1e-6)


@pytest.mark.parametrize("count", [0, 1, 2])
def test_pca_refuses_too_few_checkpoints(count: int) -> None:
    final, states, _, _ = synthetic_trajectory(5)
    with pytest.raises(UserError, match=f"found {count} in the test run") as err:
        pca(states[:count], final)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("max_bytes", [1 << 30, 1])
def test_pca_refuses_a_one_dimensional_trajectory(max_bytes: int) -> None:
    final, states, _, _ = synthetic_trajectory(6, torch.float64, flat_b=True)
    with pytest.raises(UserError, match="fewer than 2 dimensions"):
        pca(states, final, max_bytes=max_bytes)
    with pytest.raises(UserError, match="fewer than 2 dimensions"):
        pca([final] * 4, final, max_bytes=max_bytes)


def test_pca_refuses_a_checkpoint_missing_a_tensor() -> None:
    final, states, _, _ = synthetic_trajectory(5)
    states[3] = {n: t for n, t in states[3].items() if n != "fc.bias"}
    with pytest.raises(UserError, match=r"checkpoint 3 of the test run lacks tensor fc\.bias"):
        pca(states, final)


def test_list_checkpoints_orders_by_epoch_and_skips_final(tmp_path: Path) -> None:
    names = ["epoch_1000.pt", "epoch_010.pt", "final.pt", "epoch_002.pt", "epoch_101.pt", "notes.txt", "epoch_3.pt.tmp"]
    for name in names:
        (tmp_path / name).touch()
    listed = [p.name for p in list_checkpoints(tmp_path)]
    assert listed == ["epoch_002.pt", "epoch_010.pt", "epoch_101.pt", "epoch_1000.pt"]  # 1000 epochs outgrow :03d
    with pytest.raises(UserError, match="nowhere does not exist"):
        list_checkpoints(tmp_path / "nowhere")


def test_pca_over_checkpoint_files_of_a_model(tmp_path: Path) -> None:
    model = nn.Linear(5, 3)
    names = [n for n, _ in perturbed_tensors(model, "weights")]
    final = {n: t.detach().clone() for n, t in model.state_dict().items()}
    g = torch.Generator().manual_seed(11)
    for epoch in range(1, 6):
        state = {n: t + torch.randn(t.shape, generator=g) / epoch for n, t in final.items()}
        torch.save({"state_dict": state, "epoch": epoch}, tmp_path / f"epoch_{epoch:03d}.pt")
    torch.save({"state_dict": final}, tmp_path / "final.pt")
    paths = list_checkpoints(tmp_path)
    result = trajectory_pca(names, lambda i: load_state(paths[i], model), len(paths),
                            load_state(tmp_path / "final.pt", model), where=str(tmp_path))
    assert result.coords.shape == (5, 2)
    assert [d.shape for d in result.directions[0]] == [model.weight.shape, model.bias.shape]
    assert 1.0 > result.explained[0] >= result.explained[1] > 0


@pytest.mark.parametrize(("max_bytes", "loads"), [(1 << 30, 9), (1, 9 + 9 * 10 // 2 + 9)])
def test_pca_progress_bar_counts_checkpoint_loads(capfd: pytest.CaptureFixture[str], max_bytes: int,
                                                  loads: int) -> None:
    final, states, _, _ = synthetic_trajectory(9)
    silent, _ = pca(states, final, max_bytes=max_bytes)
    assert capfd.readouterr() == ("", "")
    shown = trajectory_pca(NAMES, states.__getitem__, len(states), final, where="the test run", max_bytes=max_bytes,
                           progress=True)
    out, err = capfd.readouterr()
    assert out == "" and "pca trajectory" in err and f"{loads}/{loads}" in err
    assert np.array_equal(shown.coords, silent.coords) and shown.explained == silent.explained
    assert all(torch.equal(a, b) for d, e in zip(shown.directions, silent.directions) for a, b in zip(d, e))
