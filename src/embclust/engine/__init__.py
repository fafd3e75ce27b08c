"""Where a run's passes over the rows execute: here, on threads (engine=local), or as Ray Data jobs
on a Ray cluster (engine=ray, :mod:`embclust.engine.ray_rows`)."""

ENGINES = ("local", "ray")
