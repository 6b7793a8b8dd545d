"""Entry points and the run: the stages in order (landscape, landscape-spectrum, landscape-train), the command
line, comparisons, SLURM submission. The last room: it may use every other one."""
