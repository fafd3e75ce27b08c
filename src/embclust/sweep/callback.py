"""Sweeps: one MLflow parent run per multirun, a nested child per cell, a summary at the end.

:class:`MlflowSweepCallback` (registered in ``conf/config.yaml`` under ``hydra.callbacks``) opens
the parent run before the sweeper launches any cell and writes the summary when all cells are
done. Cells, in this process or in launcher workers, find their parent through the environment
variable ``EMBCLUST_SWEEP``, which workers inherit.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from embclust import tracking
from embclust.sweep import compare
from embclust.sweep.cache import stable_hash
from embclust.sweep.summary import summarize_sweep

log = logging.getLogger(__name__)

ENV_VAR = "EMBCLUST_SWEEP"
# Config keys that do not change a cell's result, left out of its identity.
_NOT_IDENTITY = ("mlflow", "sweep", "cache", "run_name")


@dataclass
class SweepCell:
    """Where one cell of a sweep belongs and how it is identified."""

    parent_run_id: str
    index: int
    total: int | None
    overrides: str
    config_key: str

    @property
    def position(self) -> str:
        return f"cell {self.index + 1}/{self.total if self.total else '?'}"


def config_key(cfg: DictConfig) -> str:
    """Hash of the resolved config that decides a cell's result."""
    container = OmegaConf.to_container(cfg, resolve=True)
    return stable_hash({k: v for k, v in container.items() if k not in _NOT_IDENTITY})


def current_cell(cfg: DictConfig) -> SweepCell | None:
    """The sweep cell this job is, or None outside a sweep opened by the callback."""
    raw = os.environ.get(ENV_VAR)
    if not raw:
        return None
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    info = json.loads(raw)
    hc = HydraConfig.get()
    return SweepCell(
        parent_run_id=info["parent_run_id"],
        index=int(hc.job.num),
        total=info.get("total"),
        overrides=" ".join(sorted(hc.overrides.task)),
        config_key=config_key(cfg),
    )


def finished_run_of(cell: SweepCell, experiment_id: str) -> mlflow.entities.Run | None:
    """A FINISHED earlier run of the same cell under the same parent, if any."""
    runs = mlflow.search_runs(
        [experiment_id],
        filter_string=(
            f"tags.`{compare.PARENT_TAG}` = '{cell.parent_run_id}' and tags.sweep_cell_key = '{cell.config_key}' "
            "and attributes.status = 'FINISHED'"
        ),
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    return runs[0] if runs else None


def count_cells(config: DictConfig) -> int | None:
    """Number of cells the configured sweeper will launch, when it can be known up front."""
    hydra_cfg = config.hydra
    sweeper = hydra_cfg.sweeper
    if "n_trials" in sweeper:
        return int(sweeper.n_trials)
    try:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser

        params = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
        overrides = OverridesParser.create().parse_overrides([*params, *hydra_cfg.overrides.task])
        return sum(len(batch) for batch in BasicSweeper.split_arguments(overrides, None))
    except Exception:  # noqa: BLE001 - a progress count must never stop a sweep
        return None


class MlflowSweepCallback(Callback):
    """Open the sweep's parent MLflow run, and close it with a summary of all cells."""

    def __init__(self) -> None:
        self.parent_run_id: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            experiment_id = tracking.setup_tracking(config.mlflow.tracking_uri, config.mlflow.experiment_name)
        except tracking.TrackingServerUnreachable as exc:
            # Hydra turns a callback's exceptions into warnings; stop before any cell starts.
            log.error("%s", exc)
            raise SystemExit(1) from None
        sweep_params = {str(k): str(v) for k, v in (config.hydra.sweeper.get("params") or {}).items()}
        task_overrides = list(config.hydra.overrides.task)
        task_cfg = {k: v for k, v in config.items() if k != "hydra"}
        container = OmegaConf.to_container(OmegaConf.create(task_cfg), resolve=True)
        key = stable_hash(
            {
                "config": {k: v for k, v in container.items() if k not in _NOT_IDENTITY},
                "overrides": sorted(task_overrides),
                "params": sweep_params,
            }
        )
        client = mlflow.MlflowClient()
        previous = None
        if config.sweep.resume:
            found = mlflow.search_runs(
                [experiment_id],
                filter_string=f"tags.sweep_role = 'parent' and tags.sweep_key = '{key}'",
                order_by=["attributes.start_time DESC"],
                max_results=1,
                output_format="list",
            )
            previous = found[0] if found else None
        if previous is not None:
            self.parent_run_id = previous.info.run_id
            client.update_run(self.parent_run_id, status="RUNNING")
            log.info("sweep: resuming parent run %s (finished cells are skipped)", self.parent_run_id)
        else:
            sweep_desc = " ".join([*task_overrides, *(f"{k}={v}" for k, v in sweep_params.items())])
            run = client.create_run(
                experiment_id,
                run_name=config.get("run_name") or f"sweep {sweep_desc}"[:200],
                tags={
                    "sweep_role": "parent",
                    "sweep_key": key,
                    "hydra_overrides": " ".join(task_overrides) or "(none)",
                    "sweep_params": json.dumps(sweep_params),
                    "sweep.metric": config.sweep.metric,
                    **tracking.git_state(Path(__file__).resolve().parent),
                },
            )
            self.parent_run_id = run.info.run_id
            log.info("sweep: parent run %s", self.parent_run_id)
        total = count_cells(config)
        os.environ[ENV_VAR] = json.dumps({"parent_run_id": self.parent_run_id, "total": total})
        if total:
            log.info("sweep: %d cells", total)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        os.environ.pop(ENV_VAR, None)
        if self.parent_run_id is None:
            return
        client = mlflow.MlflowClient()
        try:
            best = summarize_sweep(self.parent_run_id, config.mlflow.experiment_name, config.sweep.metric)
        except Exception as exc:  # noqa: BLE001 - record the failure on the parent, then re-raise
            client.set_tag(self.parent_run_id, "error", f"summary failed: {type(exc).__name__}: {exc}"[:5000])
            client.set_terminated(self.parent_run_id, "FAILED")
            raise
        client.set_terminated(self.parent_run_id, "FINISHED")
        if best:
            url = tracking.runs_page_url(config.mlflow.tracking_uri, client.get_run(self.parent_run_id).info.experiment_id)
            log.info("sweep done: best %s%s", best, f"; runs: {url}" if url else "")


def cell_metric(run: mlflow.entities.Run, metric: str) -> float:
    """The chosen metric of a finished run, NaN when it was not scored."""
    return float(run.data.metrics.get(metric, math.nan))
