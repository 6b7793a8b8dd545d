"""engine.sweep.counter.TileCounter alone: one process counts locally; two real gloo ranks (a FileStore rendezvous,
no torchrun) claim from one shared counter until it is exhausted, every index claimed exactly once."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from engine.core.dist import DistEnv
from engine.sweep.counter import TileCounter

ITEMS = 40


def test_one_process_counts_locally() -> None:
    assert not dist.is_initialized()
    env = DistEnv(0, 1, 0, torch.device("cpu"))
    claims, points = TileCounter(env, "claims"), TileCounter(env, "points")
    assert claims.store is None
    assert [claims.add(1) for _ in range(3)] == [1, 2, 3]
    assert points.add(9) == 9 and points.add(4) == 13  # its own total, apart from the other key
    assert claims.add(0) == 3


def claim_until_exhausted(rank: int, world: int, rendezvous: str, out: str) -> None:
    """One rank: join the group, claim indices as the sweep does (add 1, minus 1) until none is left, record them."""
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    try:
        env = DistEnv(rank, world, 0, torch.device("cpu"))
        claims, points = TileCounter(env, "claims"), TileCounter(env, "points")
        mine, seen, totals = [], [], []
        while (k := claims.add(1) - 1) < ITEMS:
            seen.append(k + 1)
            mine.append(k)
            totals.append(points.add(k + 1))  # > 0: every total differs from the one before
            time.sleep(0.002)  # a tile's work: the other rank claims meanwhile
        seen.append(k + 1)
        dist.barrier()
        Path(out, f"rank{rank}.json").write_text(json.dumps({"mine": mine, "seen": seen, "totals": totals}))
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_claim_every_index_exactly_once(tmp_path: Path) -> None:
    mp.spawn(claim_until_exhausted, args=(2, str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    claimed = [k for r in ranks for k in r["mine"]]
    assert sorted(claimed) == list(range(ITEMS))  # every index once, none twice
    assert all(r["mine"] for r in ranks), "both ranks should have claimed work"
    for r in ranks:
        assert r["mine"] == sorted(r["mine"])  # each rank sees the shared counter only grow
    seen = sorted(v for r in ranks for v in r["seen"])
    assert seen == list(range(1, ITEMS + 3))  # every add returned a distinct new total, the last claims included
    totals = sorted(v for r in ranks for v in r["totals"])
    assert totals[-1] == sum(range(1, ITEMS + 1)) and len(set(totals)) == ITEMS  # a second key, summed over both
