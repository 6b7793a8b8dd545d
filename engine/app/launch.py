"""SLURM through submitit: a sweep submitted as one job whose tasks are the ranks, requeued when preempted
or timed out (it then resumes from the store). `launchers/submit.py` is the command-line face of this.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import submitit

from engine.core.errors import UserError


class SweepJob(submitit.helpers.Checkpointable):
    """One task of a submitted sweep: compose the Hydra config from overrides and run it as a rank.

    Checkpointable resubmits the same call on preemption or timeout; the store makes that a resume.
    """

    def __init__(self, overrides: list[str], workdir: str) -> None:
        self.overrides = overrides
        self.workdir = workdir

    def __call__(self) -> dict[str, Any] | None:
        from hydra import compose, initialize_config_dir

        from engine.app.landscape import run_landscape
        from engine.config.check import to_run_config
        from engine.config.files import CONF_DIR
        from engine.config.schema import register_configs

        os.chdir(self.workdir)
        register_configs()
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose("config", overrides=self.overrides)
        run_cfg, resolved = to_run_config(cfg)
        result = run_landscape(run_cfg, resolved)  # joins and leaves the process group itself
        return {"store": str(result.store), "summary": result.summary} if result.summary else None


def submit(
    overrides: list[str],
    tasks: int = 1,
    nodes: int = 1,
    gpus_per_node: int = 0,
    cpus_per_task: int = 1,
    cluster: str | None = None,
    partition: str | None = None,
    timeout_min: int = 60,
    folder: str = "runs/submitit",
) -> submitit.Job:
    """Submit one sweep: `nodes` x `tasks` ranks (tasks per node), one GPU each when gpus_per_node > 0."""
    if tasks < 1 or nodes < 1:
        raise UserError("--tasks and --nodes must be >= 1")
    check_shard_placement(overrides, tasks, nodes)
    executor = submitit.AutoExecutor(folder=f"{folder}/%j", cluster=cluster)
    params: dict[str, Any] = {"nodes": nodes, "tasks_per_node": tasks, "cpus_per_task": cpus_per_task,
                              "timeout_min": timeout_min, "name": "landscape"}
    if gpus_per_node:
        params["gpus_per_node"] = gpus_per_node
    if partition and executor.cluster == "slurm":
        params["slurm_partition"] = partition
    executor.update_parameters(**params)
    return executor.submit(SweepJob(overrides, str(Path.cwd())))


def check_shard_placement(overrides: list[str], tasks: int, nodes: int) -> None:
    """Refuse before queueing a job whose parallel.shard groups could not each sit inside one node (or on whole
    nodes): ranks are numbered node by node, so S must divide the tasks per node, or be a multiple of them."""
    shards = [o.split("=", 1)[1] for o in overrides if o.lstrip("+").startswith("parallel.shard=")]
    if not shards:
        return
    try:
        shard = int(shards[-1])
    except ValueError:
        raise UserError(f"parallel.shard={shards[-1]} must be an integer") from None
    if (tasks * nodes) % shard:
        raise UserError(f"parallel.shard={shard} needs a multiple of {shard} ranks; --nodes {nodes} x --tasks {tasks} "
                        f"gives {tasks * nodes}")
    if tasks % shard and shard % tasks:
        raise UserError(f"parallel.shard={shard} with --tasks {tasks} per node would split a shard group across "
                        f"nodes; use --tasks a multiple of {shard} (or parallel.shard a divisor or multiple of "
                        f"{tasks})")


def main(argv: list[str] | None = None) -> None:
    """Parse the launcher's flags (Hydra overrides after them pass through), submit, optionally wait."""
    parser = argparse.ArgumentParser(prog="launchers/submit.py", description=__doc__)
    parser.add_argument("--tasks", type=int, default=1, help="ranks per node (one GPU each with --gpus-per-node)")
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--gpus-per-node", type=int, default=0)
    parser.add_argument("--cpus-per-task", type=int, default=1)
    parser.add_argument("--cluster", choices=["slurm", "local", "debug"], default=None,
                        help="default: slurm when sbatch is found, else local processes")
    parser.add_argument("--partition", default=None)
    parser.add_argument("--timeout-min", type=int, default=60)
    parser.add_argument("--folder", default="runs/submitit", help="submitit's logs and pickles")
    parser.add_argument("--wait", action="store_true", help="wait for the job and print rank 0's summary")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=resnet20 grid.resolution=[51,51]")
    args = parser.parse_args(argv)
    job = submit(args.overrides, args.tasks, args.nodes, args.gpus_per_node, args.cpus_per_task, args.cluster,
                 args.partition, args.timeout_min, args.folder)
    print(f"submitted job {job.job_id} ({args.nodes} node(s) x {args.tasks} task(s)); "
          f"logs in {args.folder}/{job.job_id}")
    if args.wait:
        results = job.results()
        main_result = next((r for r in results if r), None)
        print(f"job {job.job_id} done: {main_result['store'] if main_result else 'no result from rank 0'}")


if __name__ == "__main__":
    main()
