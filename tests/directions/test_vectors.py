"""engine.directions.vectors: filter/layer normalization, ignored tensors, seeding, the 'states' set (BatchNorm
variances in log space), loading from files."""

from __future__ import annotations

import weakref

import pytest
import torch

from engine.core.errors import UserError
from engine.directions.vectors import (
    load_directions,
    log_space,
    normalize,
    perturbed_tensors,
    random_directions,
    to_coordinates,
)
from engine.sources.models import CifarResNet


@pytest.fixture
def net() -> CifarResNet:
    torch.manual_seed(0)
    return CifarResNet(8, 10, 3, 4, shortcut=True)


def _theta(net, over="weights"):
    named = perturbed_tensors(net, over)
    return [n for n, _ in named], [t.detach() for _, t in named]


def test_filter_normalization_matches_each_filter_norm(net):
    names, theta = _theta(net)
    (d,) = random_directions(theta, 1, seed=7, norm="filter", ignore="biasbn")
    checked = 0
    for name, di, wi in zip(names, d, theta):
        if wi.dim() <= 1:
            assert torch.count_nonzero(di) == 0, f"{name} should be ignored (biasbn)"
            continue
        d_norms = di.reshape(di.shape[0], -1).norm(dim=1)
        w_norms = wi.reshape(wi.shape[0], -1).norm(dim=1)
        torch.testing.assert_close(d_norms, w_norms, rtol=1e-5, atol=1e-7)
        checked += di.shape[0]
    assert checked > 50


def test_layer_norm_and_no_ignore(net):
    _, theta = _theta(net)
    (d,) = random_directions(theta, 1, seed=7, norm="layer", ignore="none")
    for di, wi in zip(d, theta):
        torch.testing.assert_close(di.norm(), wi.norm(), rtol=1e-5, atol=1e-6)
    (raw,) = random_directions(theta, 1, seed=7, norm="none", ignore="none")
    assert not torch.allclose(raw[0].norm(), theta[0].norm())
    assert any(t.dim() == 1 and torch.count_nonzero(r) > 0 for r, t in zip(raw, theta))


def test_same_seed_same_direction_other_seed_differs(net):
    _, theta = _theta(net)
    a1, a2 = random_directions(theta, 2, seed=3, norm="filter", ignore="biasbn")
    b1, b2 = random_directions(theta, 2, seed=3, norm="filter", ignore="biasbn")
    (c1,) = random_directions(theta, 1, seed=4, norm="filter", ignore="biasbn")
    assert all(torch.equal(x, y) for x, y in zip(a1 + a2, b1 + b2))
    assert not torch.equal(a1[0], c1[0]) and not torch.equal(a1[0], a2[0])


def test_states_cover_bn_buffers(net):
    weights, _ = _theta(net, "weights")
    states, _ = _theta(net, "states")
    extra = set(states) - set(weights)
    assert extra and all(n.endswith(("running_mean", "running_var")) for n in extra)


def test_normalize_is_idempotent(net):
    _, theta = _theta(net)
    (d,) = random_directions(theta, 1, seed=1, norm="filter", ignore="biasbn")
    again = normalize(d, theta, "filter", "biasbn")
    for x, y in zip(d, again):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-7)


def test_load_directions_from_pt_file(net, tmp_path):
    names, theta = _theta(net)
    dirs = random_directions(theta, 2, seed=5, norm="filter", ignore="biasbn")
    path = tmp_path / "dirs.pt"
    torch.save([dict(zip(names, d)) for d in dirs], path)
    loaded = load_directions(path, names, theta, 2)
    assert all(torch.equal(x, y) for a, b in zip(dirs, loaded) for x, y in zip(a, b))
    with pytest.raises(UserError, match="holds 2 direction"):
        load_directions(path, names, theta, 3)
    other = CifarResNet(8, 10, 3, 8, shortcut=True)
    o_names, o_theta = _theta(other)
    with pytest.raises(UserError, match="another model"):
        load_directions(path, o_names, o_theta, 2)


def test_states_directions_log_space_mask_and_unit_rms(net):
    """The 'states' set's running variances are marked log-space, and their normalized directions have unit
    root-mean-square there (moving them: sweep/test_perturb.py)."""
    names, live = _theta(net, "states")
    theta = [t.clone() for t in live]
    logged = log_space(net, names)
    assert [n for n, m in zip(names, logged) if m] == [n for n in names if n.endswith("running_var")]
    dirs = random_directions(to_coordinates(theta, logged), 2, 0, "filter", "none", logged)
    for d, m in zip(dirs[0], logged):
        if m:  # unit root-mean-square in log space: a factor of about e at coordinate 1
            assert d.pow(2).mean().sqrt().item() == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize("norm", ["filter", "layer", "none"])
def test_normalize_all_equals_normalize_and_lets_go_of_the_raw_tensors(norm: str) -> None:
    """normalize_all gives normalize's directions bit for bit, and no raw tensor is referenced from the raw lists
    afterwards (so a large model's raw draws are freed as the normalized ones are made)."""
    from engine.directions.vectors import normalize, normalize_all, random_raw

    g = torch.Generator().manual_seed(0)
    theta = [torch.randn(6, 3, 2, 2, generator=g), torch.randn(6, generator=g), torch.randn(4, 24, generator=g)]
    want = [normalize(r, theta, norm, "biasbn", None, [0, 0, 1]) for r in random_raw(theta, 2, 7)]
    raw = random_raw(theta, 2, 7)
    drawn = [weakref.ref(t) for r in raw for t in r]
    got = normalize_all(raw, theta, norm, "biasbn", None, [0, 0, 1])
    for a, b in zip(got, want):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert raw and all(ref() is None for ref in drawn)  # the raw lists are alive, the draws are gone


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_seeded_normalized_is_the_drawn_then_normalized_stream(dtype: torch.dtype | None) -> None:
    """Directions made tensor by tensor (what a run does since it stopped drawing them all first) equal random_raw
    then normalize_all bit for bit, one direction after another from one generator, rounded once when a dtype is
    given: the stores of earlier runs are what the same seed gives now."""
    from engine.directions.vectors import normalize_all, random_raw, seeded_normalized

    g = torch.Generator().manual_seed(0)
    theta = [torch.randn(6, 3, 2, 2, generator=g), torch.randn(6, generator=g), torch.randn(4, 24, generator=g)]
    want = normalize_all(random_raw(theta, 2, 7), theta, "filter", "biasbn", None, [0, 0, 1])
    stream = torch.Generator().manual_seed(7)
    got = [list(seeded_normalized(stream, theta, "filter", "biasbn", None, [0, 0, 1], dtype)) for _ in range(2)]
    for a, b in zip(got, want):
        assert all(torch.equal(x, y if dtype is None else y.to(dtype)) for x, y in zip(a, b))
