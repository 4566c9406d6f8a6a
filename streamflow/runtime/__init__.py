"""The runtime: tasks, workers, checkpoints, and ``run``."""
