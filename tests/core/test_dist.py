"""engine.core.dist in one process: no launcher variables means rank 0 of 1 and no process group; process_group
leaves none behind (and leaves a caller's own group joined); on_main, broadcast_value and check_same without
collectives; tensors_hash tells tensors apart. And two real gloo ranks (torchrun's variables, no torchrun): the run's
group joined and left, rank 0's value broadcast, differing weights refused, a UserError on rank 0 raised on both."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from engine.core.dist import (
    DistEnv,
    broadcast_value,
    check_same,
    init_distributed,
    on_main,
    process_group,
    tensors_hash,
)
from engine.core.errors import UserError

LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_JOB_ID", "SLURM_NTASKS", "SUBMITIT_LOCAL_JOB_ID",
                      "SUBMITIT_LOCAL_NTASKS")


@pytest.fixture
def one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """No torchrun, SLURM or submitit variables, and no process group."""
    for name in LAUNCHER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert not dist.is_initialized()


def test_without_launcher_variables_rank_0_of_1(one_process) -> None:
    env = init_distributed("cpu")
    assert env == DistEnv(0, 1, 0, torch.device("cpu"))
    assert env.is_main and not env.distributed and not dist.is_initialized()
    auto = init_distributed("auto")
    assert auto.device.type == ("cuda" if torch.cuda.is_available() else "cpu") and auto.world_size == 1
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match=r"eval\.device=cuda but no CUDA device is visible"):
            init_distributed("cuda")


def test_process_group_leaves_no_group_behind(one_process) -> None:
    with process_group("cpu") as env:
        assert (env.rank, env.world_size) == (0, 1)
    assert not dist.is_initialized()
    with pytest.raises(RuntimeError, match="inside"), process_group("cpu"):
        raise RuntimeError("inside")
    assert not dist.is_initialized()


def test_process_group_leaves_a_callers_group_joined(one_process, tmp_path: Path) -> None:
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        with process_group("cpu") as env:
            assert (env.rank, env.world_size) == (0, 1)
        assert dist.is_initialized()  # the user's own group stays theirs
    finally:
        dist.destroy_process_group()


def test_on_main_broadcast_and_check_in_one_process() -> None:
    main, other = DistEnv(0, 1, 0, torch.device("cpu")), DistEnv(1, 1, 0, torch.device("cpu"))
    calls: list[int] = []
    assert on_main(main, lambda: calls.append(1) or "made") == "made"
    assert on_main(other, lambda: calls.append(2) or "made") is None and calls == [1]  # only rank 0 runs it

    def refuse() -> None:
        raise UserError("one clear line")

    with pytest.raises(UserError, match=r"^one clear line$"):
        on_main(main, refuse)
    with pytest.raises(ZeroDivisionError):  # not a UserError: raised as it is
        on_main(main, lambda: 1 / 0)
    assert broadcast_value(main, {"k": [1, 2]}) == {"k": [1, 2]}
    check_same(main, "weights", "abc")  # nothing to compare against


def test_tensors_hash_changes_with_any_value() -> None:
    a = [torch.arange(6.0).reshape(2, 3), torch.ones(4)]
    h = tensors_hash(a)
    assert len(h) == 16 and int(h, 16) >= 0
    assert tensors_hash([t.clone() for t in a]) == h
    assert tensors_hash([a[0].double(), a[1]]) == h  # the values, not the dtype
    changed = [a[0], a[1].clone()]
    changed[1][3] = 1.0 + 2**-20
    assert tensors_hash(changed) != h
    assert tensors_hash([a[1], a[0]]) != h  # order matters


def refuse_on_rank_0() -> None:
    raise UserError("rank 0 refused")


def join_and_leave(rank: int, port: int, out: str) -> None:
    """One of two ranks started as torchrun would (RANK, WORLD_SIZE, MASTER_ADDR/PORT): a run's process group."""
    for name in LAUNCHER_VARIABLES:
        os.environ.pop(name, None)
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    seen: dict[str, object] = {}
    with process_group("cpu") as env:
        seen["inside"] = [env.rank, env.world_size, dist.is_initialized()]
        seen["broadcast"] = broadcast_value(env, "rank 0's" if env.is_main else f"rank {rank}'s")
        check_same(env, "directions (hashes)", "same")
        try:
            check_same(env, "model weights (fingerprints)", f"weights{rank}")
        except UserError as err:
            seen["refused"] = str(err)
        try:
            on_main(env, refuse_on_rank_0)
        except UserError as err:
            seen["on_main"] = str(err)
    seen["after"] = dist.is_initialized()
    Path(out, f"rank{rank}.json").write_text(json.dumps(seen))


def test_process_group_joins_two_ranks_and_leaves(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(join_and_leave, args=(port, str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        seen = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert seen["inside"] == [rank, 2, True] and seen["after"] is False  # joined for the run, left after it
        assert seen["broadcast"] == "rank 0's"
        assert seen["refused"] == ("model weights (fingerprints) differ across ranks (weights0, weights1); every rank "
                                   "must load the same checkpoint and config")
        assert seen["on_main"] == "rank 0 refused"  # raised on every rank, so none waits forever
