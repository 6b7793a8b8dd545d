#!/usr/bin/env python
"""Submit a sweep to SLURM (or local processes) through submitit: one job, its tasks are the ranks.

Run: python launchers/submit.py --nodes 1 --tasks 4 --gpus-per-node 4 --partition gpu --wait -- model=resnet56
"""

from engine.app.launch import main

if __name__ == "__main__":
    main()
