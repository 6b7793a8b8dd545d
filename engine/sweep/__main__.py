"""`python -m engine.sweep` (what torchrun, the sbatch scripts and the container run): the `landscape` command."""

from engine.app.cli import main

main()
