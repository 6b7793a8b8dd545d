"""Where shard groups sit: a group of parallel.shard=S ranks must run inside one node (or on whole nodes when S is
larger than a node's ranks), checked from the ranks' hosts at run time, from the flags before a submitit job is
queued, and by the multi-node sbatch script before its nodes meet."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from engine.app.launch import check_shard_placement
from engine.core.errors import UserError
from engine.sweep.sharded import group_nodes

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("hosts", "shard", "spans"), [
    (["a"] * 4, 2, [1, 1]),
    (["a"] * 4 + ["b"] * 4, 4, [1, 1]),
    (["a"] * 4 + ["b"] * 4, 2, [1, 1, 1, 1]),
    (["a"] * 2 + ["b"] * 2 + ["c"] * 2 + ["d"] * 2, 4, [2, 2]),  # S larger than a node: whole nodes
])
def test_groups_inside_nodes_are_accepted(hosts: list[str], shard: int, spans: list[int]) -> None:
    assert group_nodes(hosts, shard) == spans


@pytest.mark.parametrize(("hosts", "shard", "culprit"), [
    (["a"] * 3 + ["b"] * 3, 2, "shard group 1 (ranks 2-3) spans 2 nodes and shares them"),
    (["a"] * 2 + ["b"] * 2 + ["c"] * 2, 3, "shard group 0 (ranks 0-2) spans 2 nodes and shares them"),
    (["a", "b", "a", "b"], 2, "shard group 0 (ranks 0-1) spans 2 nodes and shares them"),
])
def test_a_group_split_across_nodes_is_refused_in_one_line(hosts: list[str], shard: int, culprit: str) -> None:
    with pytest.raises(UserError) as err:
        group_nodes(hosts, shard)
    assert culprit in str(err.value) and "\n" not in str(err.value)


def test_submitit_refuses_before_queueing() -> None:
    check_shard_placement(["model=resnet8"], 3, 2)  # no sharding: anything goes
    check_shard_placement(["parallel.shard=4"], 8, 2)
    check_shard_placement(["parallel.shard=4"], 2, 4)  # groups on two whole nodes
    with pytest.raises(UserError, match=r"--tasks 3 per node would split a shard group across nodes"):
        check_shard_placement(["parallel.shard=2"], 3, 2)
    with pytest.raises(UserError, match=r"needs a multiple of 4 ranks; --nodes 1 x --tasks 2 gives 2"):
        check_shard_placement(["parallel.shard=4"], 2, 1)


def test_multi_node_sbatch_refuses_a_split_group() -> None:
    done = subprocess.run(["bash", str(ROOT / "slurm" / "multi-node.sbatch"), "parallel.shard=2", "grid=line"],
                          env={"NPROC": "3", "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert done.stderr.strip() == ("error: parallel.shard=2 with 3 rank(s) per node would split a shard group "
                                   "across nodes; set NPROC to a multiple of 2")
