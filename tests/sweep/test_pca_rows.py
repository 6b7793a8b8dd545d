"""direction=pca made as a rank's rows (a one-rank gloo group: every tensor whole, the group's sums trivial) equals
the unsharded trajectory PCA to float64 rounding, whether the rank holds the centred deltas or streams them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh

from engine.directions.checkpoints import pca
from engine.directions.vectors import PerturbedTensors, perturbed_tensors
from engine.sweep.checkpoint_rows import pca_rows
from engine.sweep.sharded import ShardGroup


@pytest.fixture
def group(tmp_path: Path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1, 1), mesh_dim_names=("replica", "shard"))
        yield ShardGroup(size=1, rank=0, replica=0, replicas=1, mesh=mesh["shard"], device=torch.device("cpu"))
    finally:
        dist.destroy_process_group()


def test_rows_held_and_streamed_equal_the_whole_pca(group: ShardGroup, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    final = {k: v.clone() for k, v in model.state_dict().items()}
    for epoch in range(1, 5):  # a trajectory that ends near the final model
        torch.save({"state_dict": {k: v + 0.3 * torch.randn_like(v) / epoch for k, v in final.items()}},
                   tmp_path / f"epoch_{epoch:03d}.pt")
    named = perturbed_tensors(model, "weights")
    names = [n for n, _ in named]
    tensors = [t for _, t in named]
    target = PerturbedTensors(names, tensors, [False] * len(names), [t.detach() for t in tensors], None)
    shapes = [tuple(t.shape) for t in tensors]
    whole = pca(tmp_path, model, names, [t.detach() for t in tensors], set())
    held = pca_rows(tmp_path, target, [False] * len(names), shapes, group)
    streamed = pca_rows(tmp_path, target, [False] * len(names), shapes, group, max_bytes=0)
    for made in (held, streamed):
        assert made.axis_labels == whole.axis_labels
        np.testing.assert_allclose(made.trajectory, whole.trajectory, rtol=0, atol=1e-12)
        for k in range(2):
            for a, b in zip(made.directions[k], whole.directions[k]):
                torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
