"""The Hydra entry point: run one configured job (a single run or a sweep cell) as an MLflow run.

The pipeline itself is :mod:`embclust.pipeline`; this module decides which way it runs (single
run, light cell, full cell), limits threads under a parallel launcher, and turns failures into
one line and an exit status.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from pathlib import Path

import mlflow
from omegaconf import DictConfig
from threadpoolctl import threadpool_limits

from embclust import pipeline, signals, stages, tracking, validate
from embclust.errors import EmbclustError
from embclust.pipeline import STAGES
from embclust.processes import owner_token
from embclust.sweep import callback as sweep
from embclust.sweep.plan import SweepPlan, resolve_metric

log = logging.getLogger(__name__)

__all__ = ["STAGES", "run"]


def _hydra_overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def _is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _threads_per_cell() -> int | None:
    """CPU threads each cell may use when a parallel launcher runs several cells at once.

    Without a limit, every joblib worker's BLAS/OpenMP would use all cores and the workers would
    fight over them; each then gets cores / workers threads instead.
    """
    if not _is_multirun():
        return None
    from hydra.core.hydra_config import HydraConfig

    launcher = HydraConfig.get().launcher
    if "joblib" not in str(launcher.get("_target_", "")):
        return None
    cores = os.cpu_count() or 1
    n_jobs = launcher.get("n_jobs") or -1
    workers = cores if n_jobs < 0 else min(n_jobs, cores)
    return max(1, cores // workers)


def _resumed_metric(cfg: DictConfig, cell: sweep.SweepCell, plan: SweepPlan) -> float | None:
    """The ranking metric of an earlier FINISHED run of this cell on the same data, else None."""
    previous = sweep.finished_run_of(cell, plan.experiment_id)
    if previous is None:
        return None
    try:
        ds, _ = stages.load_dataset(cfg, stages.cache_dir(cfg, in_sweep=True))
    except Exception:  # noqa: BLE001 - let the real run report the error
        return None
    if previous.data.tags.get("data_fingerprint") != ds.fingerprint:
        return None
    missing = _missing_cell_artifacts(previous)
    if missing:  # the summary and the best cell's report read them: run the cell again instead
        log.warning("%s: run %s finished earlier but its artifacts %s: the cell runs again", cell.position,
                    previous.info.run_id, missing)
        return None
    value = sweep.cell_metric(previous, plan.rank_metric)
    log.info("%s: skipped, finished earlier as run %s (%s=%.4g)", cell.position, previous.info.run_id, plan.rank_metric, value)
    return value


def _missing_cell_artifacts(run) -> str:
    """What is wrong with the artifacts every finished cell logs (``config.yaml``, ``labels.parquet``), '' if nothing."""
    from embclust.errors import first_line

    try:
        logged = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    except Exception as exc:  # noqa: BLE001 - an artifact store that cannot be listed: the cell runs again
        return f"could not be listed ({first_line(exc)})"
    missing = [name for name in ("config.yaml", "labels.parquet") if name not in logged]
    return f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} gone" if missing else ""


def run(cfg: DictConfig) -> float:
    """Run one configured job as an MLflow run; return the sweep's ranking metric (NaN when failed).

    Errors end the MLflow run as FAILED with the message in tag ``error``. In a single run the
    process then exits with status 1 after one error line; in a sweep the other cells go on.
    Sweep cells nest under the sweep's parent run, are light unless ``analysis.in_sweeps=full``,
    and with ``sweep.resume`` are skipped when the same cell already FINISHED on the same data.
    A store that fails during the run (SQLite kept locked by another process, a tracking server
    gone) ends the process after one error line.
    """
    try:
        return _run(cfg)
    except Exception as exc:
        problem = tracking.store_failure_message(exc, cfg.mlflow.tracking_uri)
        if problem is None:
            raise
        log.error("%s", problem)
        raise SystemExit(1) from None


def _say_a_grid_needs_multirun() -> None:
    """``+sweep=NAME`` (a grid) without ``-m`` runs one run with the config's own values: say so."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    choice = hydra_cfg.runtime.choices.get("sweep")
    if choice and hydra_cfg.sweeper.get("params"):
        log.warning("+sweep=%s is a grid, run only with -m: this is one run with the config's own values "
                    "(python run.py -m +sweep=%s ...)", choice, choice)


def _run(cfg: DictConfig) -> float:
    in_sweep = _is_multirun()
    stages.expand_home_paths(cfg)
    plan = SweepPlan.from_env() if in_sweep else None
    if plan is not None and plan.sweep_pid:
        from embclust.processes import exit_with_parent

        exit_with_parent(plan.sweep_pid)  # a launcher's worker: not left running if the sweep is killed
    try:
        experiment_id = tracking.setup_tracking(cfg.mlflow.tracking_uri, cfg.mlflow.experiment_name)
    except EmbclustError as exc:
        log.error("%s", exc)
        if in_sweep:
            return math.nan
        raise SystemExit(1) from None
    if in_sweep and signals.received is not None:  # stopped between cells: no further cell starts
        raise SystemExit(signals.received.exit_code)
    if not in_sweep:
        signals.received = None  # a run starts unstopped, whatever ran before it in this process
        _say_a_grid_needs_multirun()
    cell = sweep.current_cell(cfg, plan) if plan else None
    threads = _threads_per_cell() if in_sweep else None
    tags = {}
    if cell is not None:
        if cfg.sweep.resume and plan.resumed:
            resumed = _resumed_metric(cfg, cell, plan)
            if resumed is not None:
                return resumed
        if cfg.analysis.get("in_sweeps", "light") == "light":
            try:
                with signals.stop_on_signals():
                    outcome = pipeline.run_light_cell(cfg, plan, cell, threads)
                return outcome.value if outcome.failure is None else sweep.failed_cell_value(outcome.failure)
            except signals.Stopped as stopped:
                raise SystemExit(stopped.exit_code) from None
        log.info("%s: %s", cell.position, cell.overrides or "(no overrides)")
        tags = {"sweep_role": "cell", "sweep_cell": cell.overrides, "sweep_cell_key": cell.config_key}
    else:
        tracking.close_dead_runs(experiment_id)
    tags[tracking.PROCESS_TAG] = owner_token()
    timer = stages.StageTimer(STAGES, prefix=f"{cell.position} " if cell else "")
    prefix = f"{cell.position}: " if cell else ""
    try:
        # Stop signals turn into Stopped from the moment the run exists until it is ended, so a
        # stop during its set-up (validation, params) also ends it KILLED with the reason.
        with signals.stop_on_signals():
            with signals.deferred():  # the run is created whole; a stop meanwhile is raised after
                active = mlflow.start_run(run_name=pipeline.run_name(cfg), parent_run_id=cell.parent_run_id if cell else None,
                                          tags=tags)
            with active:
                try:
                    validate.validate_config(cfg)
                    stages.check_engine(cfg)
                    mlflow.log_params(tracking.flatten_config(cfg))
                    with tempfile.TemporaryDirectory(prefix="embclust-") as tmp, threadpool_limits(limits=threads):
                        result = pipeline.execute(cfg, Path(tmp), timer, plan=plan, in_sweep=in_sweep,
                                                  overrides=_hydra_overrides())
                except signals.Stopped as stopped:
                    signals.end_run_killed(stopped, prefix)  # before the run's own exit ends it FAILED
                    raise SystemExit(stopped.exit_code) from None
                except Exception as exc:  # noqa: BLE001 - every failure must be recorded before exiting
                    if signals.received is not None:  # a stop signal that a library turned into an error of its own
                        signals.end_run_killed(signals.received, prefix)
                        raise SystemExit(signals.received.exit_code) from None
                    with signals.ignored():
                        message = pipeline.record_failure(exc, timer, active.info.run_id, prefix)
                    if in_sweep:
                        return sweep.failed_cell_value(message)
                    raise SystemExit(1) from None
    except signals.Stopped as stopped:  # held while the run was created, raised once it existed
        signals.end_run_killed(stopped, prefix)
        raise SystemExit(stopped.exit_code) from None
    metric = plan.rank_metric if plan else resolve_metric(cfg, ())
    value = result.metrics.get(metric, math.nan)
    prefix = f"{cell.position} done: " if cell else ""
    url = None if in_sweep else tracking.runs_page_url(
        cfg.mlflow.tracking_uri, mlflow.get_experiment_by_name(cfg.mlflow.experiment_name).experiment_id
    )
    log.info(
        "%srun %s finished in %.1fs, %s=%.4g%s", prefix, result.run_id, sum(result.stage_seconds.values()), metric, value,
        f"; runs: {url}" if url else "",
    )
    return value
