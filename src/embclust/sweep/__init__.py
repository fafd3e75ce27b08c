"""Sweeps: plan the shared work, run the cells, summarise them on the parent MLflow run."""

from embclust.sweep.callback import MlflowSweepCallback, SweepCell, current_cell

__all__ = ["MlflowSweepCallback", "SweepCell", "current_cell"]
