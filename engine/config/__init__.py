"""Configuration: the typed schema of every Hydra config group, the checks of keys, values and combinations made
before any work, where the conf/ folder is, and the run folder's record of its config."""
