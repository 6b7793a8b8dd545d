"""Which rows of a tensor each rank of a shard group holds: the cut torch.chunk makes (and FSDP2 with it), the last
ranks' rows short or empty when the rows do not divide; every reader of rows (checkpoints, directions, sharpness)
takes its rows from this one place."""

from __future__ import annotations

import pytest
import torch

from engine.sweep.sharded import ShardGroup, local_rows


def group(size: int, rank: int) -> ShardGroup:
    return ShardGroup(size=size, rank=rank, replica=0, replicas=1, mesh=None, device=torch.device("cpu"))  # type: ignore[arg-type]


@pytest.mark.parametrize(("rows", "size"), [(8, 2), (7, 3), (2, 4), (1, 2), (5, 1)])
def test_each_rank_holds_the_rows_torch_chunk_gives_it(rows: int, size: int) -> None:
    whole = torch.arange(rows * 3).view(rows, 3)
    chunks = torch.chunk(whole, size)
    for rank in range(size):
        g = group(size, rank)
        mine = local_rows(whole, g)
        expected = chunks[rank] if rank < len(chunks) else whole[:0]
        assert torch.equal(mine, expected)
        lo, hi = g.row_range(rows)
        assert hi - lo <= g.rows_per_rank(rows)
    assert sum(local_rows(whole, group(size, r)).shape[0] for r in range(size)) == rows
