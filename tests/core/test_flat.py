"""engine.core.flat: tensors to one flat vector and back (order, shapes, dtypes)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.core.flat import flat_chunks, flatten, unflatten


def tensors() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(2, 3, generator=g), torch.randn(4, generator=g, dtype=torch.float64),
            torch.randn(1, 1, 5, generator=g).to(torch.bfloat16), torch.randn(3, 2, generator=g).t()]  # last: a view


def test_flatten_concatenates_in_order_as_float32_on_the_cpu():
    ts = tensors()
    flat = flatten(ts)
    assert flat.dtype == torch.float32 and flat.device.type == "cpu" and flat.shape == (6 + 4 + 5 + 6,)
    assert torch.equal(flat[:6], ts[0].reshape(-1))
    assert torch.equal(flat[6:10], ts[1].float())
    assert torch.equal(flat[10:15], ts[2].float().reshape(-1))
    assert torch.equal(flat[15:], ts[3].contiguous().reshape(-1))  # the view's logical order, not its storage's
    wide = flatten(ts, torch.float64)
    assert wide.dtype == torch.float64 and torch.equal(wide[6:10], ts[1])  # no float32 rounding on the way
    assert flatten([]).shape == (0,) and flatten([], torch.float64).dtype == torch.float64


def test_flatten_detaches():
    w = torch.randn(3, requires_grad=True)
    flat = flatten([w * 2])
    assert not flat.requires_grad and flat.grad_fn is None


def test_unflatten_round_trips_shapes_and_dtypes():
    ts = tensors()
    shapes = [tuple(t.shape) for t in ts]
    dtypes = [t.dtype for t in ts]
    back = unflatten(flatten(ts, torch.float64), shapes, dtypes)
    assert [tuple(t.shape) for t in back] == shapes and [t.dtype for t in back] == dtypes
    assert all(torch.equal(a, b) for a, b in zip(back, ts))  # float64 holds every value exactly
    plain = unflatten(flatten(ts), shapes)  # no dtypes: the flat vector's
    assert all(t.dtype == torch.float32 for t in plain)
    assert torch.equal(plain[0], ts[0]) and torch.equal(plain[1], ts[1].float())
    assert unflatten(torch.zeros(0), []) == []


@pytest.mark.parametrize("chunk", [1, 3, 7, 64, 90, 1000])
def test_flat_chunks_are_flatten_piece_by_piece(chunk: int) -> None:
    """Consecutive pieces of `chunk` entries (the last shorter), starting where the previous ended, that join to
    flatten's vector bit for bit, across tensor boundaries and dtypes."""
    g = torch.Generator().manual_seed(0)
    tensors = [torch.randn(4, 5, generator=g), torch.randn(3, generator=g).double(), torch.randn(2, 3, 4, generator=g),
               torch.randn(0, generator=g), torch.randn(1, generator=g).half()]
    pieces = list(flat_chunks(tensors, chunk))
    assert [s for s, _ in pieces] == list(range(0, sum(t.numel() for t in tensors), chunk))
    assert all(len(v) == chunk for _, v in pieces[:-1]) and 0 < len(pieces[-1][1]) <= chunk
    assert np.array_equal(np.concatenate([v for _, v in pieces]), flatten(tensors).numpy())
