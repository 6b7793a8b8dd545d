"""Integrations with training code and experiment trackers (optional extras, imported on first use):
`Trajectory(directory).save(model, step)` for a plain loop, `log_run(run_dir, tracker)` for TensorBoard, MLflow and
W&B, and the callbacks `engine.integrations.lightning.LandscapeCallback` and `engine.integrations.hf.LandscapeCallback`.
"""

from engine.app.trackers import log_run
from engine.integrations.trajectory import Trajectory

__all__ = ["Trajectory", "log_run"]
