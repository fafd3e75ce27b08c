"""Sweeps: one MLflow parent run per multirun, a nested child per cell, a summary at the end.

:class:`MlflowSweepCallback` (registered in ``conf/config.yaml`` under ``hydra.callbacks``) opens
the parent run before the sweeper launches any cell and writes the summary when all cells are
done. Cells, in this process or in launcher workers, find their parent through the environment
variable ``EMBCLUST_SWEEP``, which workers inherit.
"""

from __future__ import annotations

import contextlib
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

from embclust import console, signals, stages, tracking
from embclust.tracking.store import SWEEP_OWNER_TAG, store_lock
from embclust.errors import ConfigError, EmbclustError, first_line, user_error
from embclust.sweep import compare
from embclust.sweep.cache import stable_hash
from embclust.processes import owner_is_alive, owner_token
from embclust.sweep.params import check_cells_compose, check_swept_options, parent_params
from embclust.sweep.plan import (ENV_VAR, PREPROCESS_PREFIX, SweepPlan, check_rank_metric, grid_cells, largest_pca,
                                 resolve_metric, sweep_values)
from embclust.sweep.summary import summarize_sweep

log = logging.getLogger(__name__)

# The process running a sweep's parent run, ``host:pid:start`` (see :mod:`embclust.processes`).
OWNER_TAG = SWEEP_OWNER_TAG

# Config keys that do not change a cell's result, left out of its identity.
_NOT_IDENTITY = compare.NOT_CELL_IDENTITY
# Override keys left out of a sweep parent's run name.
_NOT_NAMING = ("mlflow", "hydra", "cache")


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


def current_cell(cfg: DictConfig, plan: SweepPlan | None = None) -> SweepCell | None:
    """The sweep cell this job is, or None outside a sweep opened by the callback."""
    plan = plan or SweepPlan.from_env()
    if plan is None:
        return None
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    return SweepCell(
        parent_run_id=plan.parent_run_id,
        index=int(hc.job.num),
        total=plan.total,
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


def _override_section(override: str) -> str:
    """The top-level config section an override sets: ``sweep.resume=true`` -> ``sweep``."""
    return override.split("=", 1)[0].lstrip("+~").split(".", 1)[0].split("@", 1)[0]


def _check_sweeper_takes(swept: dict[str, list | None], config: DictConfig) -> None:
    """Hydra's basic sweeper runs lists of values; a range to search (``interval(3, 5)``) needs a search
    sweeper. Said before the parent run, instead of Hydra's traceback after it."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.utils import get_class

    try:
        if not issubclass(get_class(str(config.hydra.sweeper.get("_target_", ""))), BasicSweeper):
            return
    except Exception:  # noqa: BLE001 - a sweeper that cannot be imported says so itself
        return
    empty = [key for key, values in swept.items() if values == []]
    if empty:  # range(5,3), or a glob that matches no option: the parent would hold no cell
        raise ConfigError(f"{empty[0]} is swept over no value, so the grid has no cell: give it at least one value")
    unlisted = [key for key, values in swept.items() if values is None]
    if unlisted:
        raise ConfigError(
            f"{unlisted[0]} is given as a range to search (interval, tag, ...), which Hydra's basic sweeper cannot "
            f"run: list the values ({unlisted[0]}=3,4,5 or range(3,6)), or search with hydra/sweeper=optuna "
            "(pip install -e '.[optuna]'; see +sweep=optuna_k)"
        )


def count_cells(config: DictConfig) -> int | None:
    """Number of cells the configured sweeper will launch, when it can be known up front."""
    sweeper = config.hydra.sweeper
    if "n_trials" in sweeper:
        return int(sweeper.n_trials)
    cells = grid_cells(config)
    return None if cells is None else len(cells)


def _log_params(client: mlflow.MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    """Log params in batches of MLflow's limit (100 per call)."""
    from mlflow.entities import Param

    items = [Param(k, str(v)[:6000]) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i : i + 100])


_ORPHANED = "orphaned: the sweep process running this cell ended without closing it"


def _parent_to_resume(experiment_id: str, key: str):
    """The latest parent run of the sweep ``key``, unless a live process is running it now.

    A RUNNING parent whose owner (see :mod:`embclust.processes`) is alive, or runs on another
    host where that cannot be checked, belongs to a sweep still going: this one gets its own.
    """
    found = mlflow.search_runs(
        [experiment_id],
        filter_string=f"tags.sweep_role = 'parent' and tags.sweep_key = '{key}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    if not found:
        return None
    previous = found[0]
    if previous.info.status == "RUNNING":
        token = previous.data.tags.get(OWNER_TAG)
        alive = owner_is_alive(token)
        if alive or (alive is None and token):
            log.warning(
                "sweep: parent run %s of this sweep is still being run (%s); this sweep gets a parent run of "
                "its own (let the other finish and run it again to resume)",
                previous.info.run_id,
                token,
            )
            return None
    return previous


def close_orphans(
    client: mlflow.MlflowClient, experiment_id: str, parent_run_id: str, reason: str = _ORPHANED, quiet: bool = False
) -> int:
    """End as KILLED the cells of ``parent_run_id`` still RUNNING: their process is gone."""
    orphans = mlflow.search_runs(
        [experiment_id],
        filter_string=f"tags.`{compare.PARENT_TAG}` = '{parent_run_id}' and attributes.status = 'RUNNING'",
        output_format="list",
    )
    for run in orphans:
        client.set_tag(run.info.run_id, "error", reason)
        client.set_terminated(run.info.run_id, "KILLED")
    if orphans and not quiet:
        log.warning("sweep: closed %d cell run(s) left RUNNING by an earlier, interrupted sweep", len(orphans))
    return len(orphans)


def _let_optuna_end_with_no_finished_trial() -> None:
    """Let an Optuna search in which every trial failed end as a sweep whose cells all failed.

    Hydra's Optuna sweeper asks the study for its best trial once the trials are done, which
    raises "No trials are completed yet"; Hydra then skips ``on_multirun_end``, and the user got
    a traceback and a parent run closed as stopped. The summary says it instead: every cell
    failed, parent FAILED, exit 1.
    """
    try:
        from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl
    except ImportError:
        return
    original = OptunaSweeperImpl.sweep
    if getattr(original, "embclust_no_finished_trial", False):
        return

    def sweep(self, arguments):
        try:
            return original(self, arguments)
        except ValueError as exc:
            if "No trials are completed yet" not in str(exc):
                raise
            return None

    sweep.embclust_no_finished_trial = True
    OptunaSweeperImpl.sweep = sweep


class MlflowSweepCallback(Callback):
    """Open the sweep's parent MLflow run and plan its shared work; close it with a summary."""

    def __init__(self) -> None:
        self.parent_run_id: str | None = None
        self.plan: SweepPlan | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        signals.received = None  # a sweep starts unstopped, whatever ran before it in this process
        _let_optuna_end_with_no_finished_trial()
        # The best cell is completed in this process, also where the cells ran in workers.
        console.quiet_libraries(verbose=bool(config.hydra.get("verbose")))
        try:
            self._start(config)
        except tracking.TrackingServerUnreachable as exc:
            # Hydra turns a callback's exceptions into warnings; stop before any cell starts.
            log.error("%s", exc)
            raise SystemExit(1) from None
        except Exception as exc:  # noqa: BLE001 - without a parent, cells would run as loose runs
            err = user_error(exc)
            if err is not None:  # a value or file every cell shares: each cell would fail on it
                log.error("sweep: no cell was run: %s", err)
                raise SystemExit(1) from None
            problem = tracking.store_failure_message(exc, config.mlflow.tracking_uri)
            if problem is not None:
                log.error("sweep: no cell was run: %s", problem)
                raise SystemExit(1) from None
            log.error("sweep: could not open the parent MLflow run at %s: %s", config.mlflow.tracking_uri, exc)
            raise SystemExit(1) from None

    def _start(self, config: DictConfig) -> None:
        from embclust import validate

        swept = sweep_values(config)
        _check_sweeper_takes(swept, config)
        check_swept_options(swept, config)
        check_cells_compose(swept, config)
        task_cfg = OmegaConf.create({k: v for k, v in config.items() if k != "hydra"})
        stages.expand_home_paths(task_cfg)
        # What every cell shares is checked once, before the store is touched: one error line
        # instead of one FAILED cell per grid point. Swept values are checked by their cells.
        validate.validate_config(task_cfg, skip=tuple(swept))
        check_rank_metric(resolve_metric(config, swept), task_cfg, swept)
        experiment_id = tracking.setup_tracking(config.mlflow.tracking_uri, config.mlflow.experiment_name)
        tracking.close_dead_runs(experiment_id)
        data_tags = _load_shared_dataset(task_cfg, config, swept)
        sweep_params = {str(k): str(v) for k, v in (config.hydra.sweeper.get("params") or {}).items()}
        task_overrides = list(config.hydra.overrides.task)
        container = OmegaConf.to_container(task_cfg, resolve=True)
        key = stable_hash(
            {
                "config": {k: v for k, v in container.items() if k not in _NOT_IDENTITY},
                # Overrides of what does not make the cells (sweep.resume=true, the store) would
                # make a restated default start a new sweep instead of resuming this one.
                "overrides": sorted(o for o in task_overrides if _override_section(o) not in _NOT_IDENTITY),
                "params": sweep_params,
            }
        )
        client = mlflow.MlflowClient()
        code_dir = Path(__file__).resolve().parents[1]  # the package, as a single run records it
        repro = {**tracking.git_state(code_dir, tracking.store.hydra_config_dirs(config.hydra)),
                 "code_fingerprint": tracking.store.code_fingerprint(), **tracking.store.environment_tags(),
                 **{f"version.{p}": v for p, v in tracking.package_versions().items()}}
        # From the moment the parent exists, an exit closes it: signals wait until the closer is set.
        _handle_stop_signals(stop_at_once=not _basic_launcher(config))
        # Finding the parent to resume and claiming it is one step for processes sharing a SQLite
        # store: two copies of a sweep started at once must not both take the same parent.
        with signals.deferred(), store_lock(config.mlflow.tracking_uri):
            previous = _parent_to_resume(experiment_id, key) if config.sweep.resume else None
            self._open_parent(client, experiment_id, previous, key, config, task_cfg, task_overrides, sweep_params, repro)
            _close_on_exit(self.parent_run_id, experiment_id)
        # preprocess.umap_components=auto gives density cells UMAP and the others none: a swept
        # clusterer group then clusters cells in different spaces.
        preprocessing_varies = any(k.startswith(PREPROCESS_PREFIX) for k in swept) or (
            "clusterer" in swept and config.preprocess.get("umap_components") == "auto"
        )
        self.plan = SweepPlan(
            parent_run_id=self.parent_run_id,
            experiment_id=experiment_id,
            total=count_cells(config),
            metric=resolve_metric(config, swept),
            max_pca_components=largest_pca(config, swept),
            preprocessing_varies=preprocessing_varies,
            resumed=previous is not None,
            tags=repro,
            swept_keys=sorted(swept),
            sweep_pid=os.getpid(),
        )
        client.set_tag(self.parent_run_id, "sweep.rank_metric", self.plan.rank_metric)
        for tag, value in data_tags.items():
            client.set_tag(self.parent_run_id, tag, value)
        self.plan.to_env()
        from embclust.sweep import shared

        shared.release_free_memory()  # the data's validation temporaries, before the cells add their own
        if self.plan.total:
            log.info("sweep: %d cell%s, ranked by %s", self.plan.total, "" if self.plan.total == 1 else "s",
                     self.plan.rank_metric)

    def _open_parent(self, client, experiment_id, previous, key, config, task_cfg, task_overrides, sweep_params, repro) -> None:
        """Resume the previous parent run of this sweep, or create one; sets ``parent_run_id``."""
        if previous is not None:
            self.parent_run_id = previous.info.run_id
            client.update_run(self.parent_run_id, status="RUNNING")
            if "error" in previous.data.tags:  # the stop it resumes from is over: no stale error on a live run
                client.delete_tag(self.parent_run_id, "error")
            client.set_tag(self.parent_run_id, OWNER_TAG, owner_token())
            close_orphans(client, experiment_id, self.parent_run_id)
            log.info("sweep: resuming parent run %s (finished cells are skipped)", self.parent_run_id)
        else:
            # where it is stored or cached (a machine's paths) says nothing of what it sweeps; tag hydra_overrides has all
            named = [o for o in task_overrides if o.split("=", 1)[0].lstrip("+~").split(".")[0] not in _NOT_NAMING]
            # the config's grid (hydra.sweeper.params) where the command line does not set the same key
            given = {o.split("=", 1)[0].lstrip("+~") for o in task_overrides}
            grid = [f"{k}={v}" for k, v in sweep_params.items() if k.lstrip("+~") not in given]
            sweep_desc = " ".join([*named, *grid])
            run = client.create_run(
                experiment_id,
                run_name=config.get("run_name") or f"sweep {sweep_desc}"[:200],
                tags={
                    "sweep_role": "parent",
                    "sweep_key": key,
                    "hydra_overrides": " ".join(task_overrides) or "(none)",
                    "sweep_params": json.dumps(sweep_params),
                    "sweep.metric": resolve_metric(config, sweep_values(config)),
                    OWNER_TAG: owner_token(),
                    **repro,
                },
            )
            self.parent_run_id = run.info.run_id
            _log_params(client, self.parent_run_id, parent_params(task_cfg, sweep_values(config), config, leave_out=_NOT_IDENTITY))
            log.info("sweep: parent run %s", self.parent_run_id)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        os.environ.pop(ENV_VAR, None)
        if self.parent_run_id is None or self.plan is None:
            return
        client = mlflow.MlflowClient()
        parent = self.parent_run_id
        if signals.received is not None:  # Hydra calls this in a finally: do not summarise a stopped sweep
            _end_stopped(client, parent, signals.received)
        try:
            complete = None
            if config.analysis.get("in_sweeps", "light") == "light":
                from embclust import pipeline

                plan = self.plan

                def complete(run_id: str):
                    return pipeline.complete_best_cell(run_id, plan)

            # A stop while the best cell is completed or the summary is written ends the parent
            # KILLED with the signal's exit code, as a stop during the cells does.
            with signals.stop_on_signals():
                summary = summarize_sweep(parent, config.mlflow.experiment_name, self.plan.rank_metric, complete)
        except signals.Stopped as stopped:
            _end_stopped(client, parent, stopped)
        except Exception as exc:  # noqa: BLE001 - the parent must still end, with the reason
            _end_failed(client, parent, exc, config.mlflow.tracking_uri)
        if signals.received is not None:  # stopped during the summary, wherever the signal was caught
            _end_stopped(client, parent, signals.received)
        failed_all = summary.n_cells > 0 and summary.n_failed == summary.n_cells
        try:
            if failed_all:
                client.set_tag(parent, "error", f"all {summary.n_cells} cells failed (see leaderboard.csv)")
            client.set_terminated(parent, "FAILED" if failed_all else "FINISHED")
        except Exception as exc:  # noqa: BLE001 - a store that refuses the last write (full disk, locked)
            _end_failed(client, parent, exc, config.mlflow.tracking_uri)
        url = tracking.runs_page_url(config.mlflow.tracking_uri, self.plan.experiment_id)
        if summary.best:
            log.info("sweep done: best %s", summary.best)
        if summary.caution:
            log.warning("sweep: caution: %s", summary.caution)
        if summary.edge:
            log.warning("sweep: %s", summary.edge)
        if summary.advice:
            log.info("sweep: %s", summary.advice)
        if url:
            log.info("compare the cells in the MLflow UI: %s", url)
        if failed_all:
            log.error("sweep: every cell failed (%d of %d), the first with: %s; fix it and re-run the same command; "
                      "parent run %s", summary.n_failed, summary.n_cells, summary.first_error or "(no error recorded)", parent)
            raise SystemExit(1)
        if summary.n_cells == 0:
            log.error("sweep: no cell ran; parent run %s", parent)
            raise SystemExit(1)
        if summary.n_scored == 0 and summary.n_failed < summary.n_cells:
            # Every finished cell scored NaN on the rank metric: there is no best cell to report.
            log.error("sweep: no cell has a value of %s to rank by (every finished cell logged NaN), so no best "
                      "cell; rank by another sweep.metric; parent run %s", self.plan.rank_metric, parent)
            with contextlib.suppress(Exception):
                client.set_tag(parent, "error", f"no cell has a value of {self.plan.rank_metric}")
            raise SystemExit(1)
        # A cell whose store could not be opened (held locked past MLflow's wait) has no run to count.
        expected = self.plan.total if "n_trials" not in config.hydra.sweeper else None
        if expected and 0 < summary.n_cells_with_runs < expected:
            log.error(
                "sweep: %d of %d cells have no run (their MLflow store or experiment could not be opened, see the lines "
                "above); re-run the same command to run them (finished cells are skipped); parent run %s",
                expected - summary.n_cells_with_runs, expected, parent,
            )
            with contextlib.suppress(Exception):
                client.set_tag(parent, "cells_without_run", str(expected - summary.n_cells_with_runs))
            raise SystemExit(1)
        if summary.n_failed and not _failures_tolerated(config):
            # As Hydra ends a multirun whose job failed with a non-zero status, after the other
            # cells and the summary: a script running the sweep must not take it for a success.
            log.error(
                "sweep: %d of %d cells FAILED, the first with: %s; fix it and re-run the same command "
                "(finished cells are skipped); parent run %s",
                summary.n_failed, summary.n_cells, summary.first_error or "(no error recorded)", parent,
            )
            raise SystemExit(1)


def _failures_tolerated(config: DictConfig) -> bool:
    """Whether the sweeper itself accepts failed jobs: an Optuna search with a max_failure_rate above 0."""
    sweeper = OmegaConf.select(config, "hydra.sweeper", default=None)
    if sweeper is None or "optuna" not in str(sweeper.get("_target_", "")).lower():
        return False
    return float(sweeper.get("max_failure_rate", 0.0) or 0.0) > 0.0


# Config keys that decide which rows a sweep's cells load (see embclust.stages.load_dataset).
_DATASET_KEYS = ("dataset", "seed", "analysis.duplicates.threshold")
_BASIC_LAUNCHER = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"


def _basic_launcher(config: DictConfig) -> bool:
    """Whether the cells run one after another in this process (Hydra's basic launcher)."""
    return str(config.hydra.launcher.get("_target_", "")) == _BASIC_LAUNCHER


def _dataset_is_shared(swept: dict) -> bool:
    """Whether every cell loads the same rows: no swept key is, holds or lies under a dataset key."""
    return not any(
        key == d or key.startswith(d + ".") or d.startswith(key + ".") for key in swept for d in _DATASET_KEYS
    )


def _load_shared_dataset(task_cfg: DictConfig, config: DictConfig, swept: dict) -> dict[str, str]:
    """Load and validate the dataset every cell shares, before any cell starts; its tags for the parent.

    A missing file or invalid data is then one error line and no run, not one FAILED cell per
    grid point. Cells of the basic launcher (this process) reuse the loaded rows; workers of other
    launchers read them from the cache, so this process lets them go. Nothing is loaded when a
    swept key changes the rows, or when workers would load it again anyway (no cache).
    """
    from embclust import stages
    from embclust.sweep import shared

    basic = _basic_launcher(config)
    cache_dir = stages.cache_dir(task_cfg, in_sweep=True)
    if not _dataset_is_shared(swept) or (not basic and cache_dir is None):
        return {}
    ds, hit = stages.load_dataset(task_cfg, cache_dir)
    if "n_trials" not in config.hydra.sweeper:  # a search records such a trial as failed and goes on
        _check_pca_sizes_fit(swept, ds)
    tags = {"data_fingerprint": ds.fingerprint, "data_n_samples": str(ds.n_samples), "data_n_features": str(ds.n_features)}
    if hit is not None:
        tags["data_cache"] = "hit" if hit else "miss"
    if not basic:
        shared.forget_dataset()
    return tags


def _check_pca_sizes_fit(swept: dict, ds) -> None:
    """Swept PCA sizes above what the shared data allows fail every such cell: one line first instead."""
    from embclust.sweep.plan import PCA_KEY

    most = min(ds.n_samples, ds.n_features)
    sizes = [v for v in (swept.get(PCA_KEY) or []) if isinstance(v, int) and not isinstance(v, bool)]
    over = [v for v in sizes if v > most]
    if over:
        fit = [v for v in sizes if v <= most]
        hint = (f"sweep sizes up to {most} ({PCA_KEY}={','.join(str(v) for v in fit)} here)" if fit
                else f"sweep sizes up to {most}")
        raise ConfigError(
            f"{PCA_KEY}={','.join(str(v) for v in over)} exceed{'s' if len(over) == 1 else ''} min(n_samples, n_features)="
            f"{most} of dataset '{ds.name}' ({ds.n_samples} x {ds.n_features}), so those cells would fail: {hint}, "
            "or use data with more columns"
        )


def _end_failed(client, parent_run_id: str, exc: BaseException, tracking_uri: str) -> None:
    """End the parent of a sweep whose summary failed as FAILED with the reason, say it in one
    line and exit 1; where the store itself refuses the writes (full disk, locked), the line says
    so and the parent stays RUNNING until the next run closes it."""
    from embclust import pipeline

    mlflow.set_tracking_uri(tracking_uri)
    message, users = pipeline.failure_message(exc)  # an artifact or the store names itself
    if not users:
        message = f"summary failed: {message}"
    try:
        with signals.ignored():
            client.set_tag(parent_run_id, "error", message[:5000])
            client.set_terminated(parent_run_id, "FAILED")
    except Exception:  # noqa: BLE001 - the store refuses writes: the line below says why
        log.error("sweep: %s (parent run %s left RUNNING: the store could not be written)", message, parent_run_id)
    else:
        log.error("sweep: %s (parent run %s)", message, parent_run_id)
    raise SystemExit(1) from None


def _end_stopped(client, parent_run_id: str, stopped) -> None:
    """End the parent of a sweep stopped by a signal as KILLED, say so, and exit 128 + signal."""
    try:
        with signals.ignored():
            client.set_tag(parent_run_id, "error", f"sweep {stopped}")
            client.set_terminated(parent_run_id, "KILLED")
    except Exception as exc:  # noqa: BLE001 - a store that refuses writes: the next run closes the parent
        log.error("sweep: %s; parent run %s left RUNNING: the store could not be written (%s)",
                  stopped, parent_run_id, first_line(exc))
    else:
        log.error("sweep: parent run %s KILLED: %s", parent_run_id, stopped)
    raise SystemExit(stopped.exit_code)


def _handle_stop_signals(stop_at_once: bool) -> None:
    """Note stop signals (SIGTERM, SIGINT, SIGHUP) that arrive between cells; the next cell (or the
    summary) ends the sweep.

    Hydra's own bookkeeping between jobs is then never cut in two; cells and the summary install
    handlers that stop at once. ``stop_at_once``: stop at the signal wherever it comes (this
    process only waits on launcher workers).
    """
    import signal

    def on_stop(signum, frame):  # noqa: ARG001
        stopped = signals.note_stop(signum)
        if stop_at_once:
            raise stopped

    on_stop.embclust_sweep = True  # an earlier sweep's handler in this process is replaced
    # SIGINT also where it was ignored at start (a script's background job): see embclust.signals.
    defaults = {signal.SIGTERM: (signal.SIG_DFL, None), signal.SIGINT: (signal.default_int_handler, signal.SIG_IGN, None)}
    if hasattr(signal, "SIGHUP") and signal.SIGHUP in signals.HANDLED:  # not under nohup
        defaults[signal.SIGHUP] = (signal.SIG_DFL, None)
    for sig, default in defaults.items():
        current = signal.getsignal(sig)
        if current in default or getattr(current, "embclust_sweep", False) or getattr(current, "embclust_early", False):
            signal.signal(sig, on_stop)
    early = signals.take_early_stop()  # a SIGINT during start-up: no cell starts, the parent ends KILLED
    if early is not None and stop_at_once:
        raise early


def _close_on_exit(parent_run_id: str, experiment_id: str) -> None:
    """End the parent, and any cell still RUNNING, as KILLED if the process exits before the summary."""
    import atexit

    def close() -> None:
        try:
            client = mlflow.MlflowClient()
            if client.get_run(parent_run_id).info.status == "RUNNING":
                stopped = signals.received
                reason = f"sweep {stopped}" if stopped else "the sweep process stopped before its summary"
                close_orphans(client, experiment_id, parent_run_id, reason, quiet=True)
                client.set_tag(parent_run_id, "error", reason)
                client.set_terminated(parent_run_id, "KILLED")
                log.error("sweep: parent run %s KILLED: %s", parent_run_id, reason)
        except Exception:  # noqa: BLE001 - best effort while the process ends
            pass

    atexit.register(close)


def end_failed_sweep(reason: str, say: bool = True) -> None:
    """End the sweep running in this process FAILED with ``reason``, its cells still RUNNING KILLED.

    For a launcher that fails as a whole (a worker process killed, out of memory): Hydra then never
    calls ``on_multirun_end``, and the runs would otherwise be closed as merely stopped. ``say=False``
    where the caller's error prints its own line.
    """
    plan = SweepPlan.from_env()
    if plan is None:
        log.error("sweep: %s", reason)
        return
    with signals.ignored():
        try:
            client = mlflow.MlflowClient()
            if client.get_run(plan.parent_run_id).info.status != "RUNNING":
                return
            close_orphans(client, plan.experiment_id, plan.parent_run_id, reason, quiet=True)
            client.set_tag(plan.parent_run_id, "error", reason[:5000])
            client.set_terminated(plan.parent_run_id, "FAILED")
        except Exception as exc:  # noqa: BLE001 - the store may be what failed; the next run closes the runs
            log.error("sweep: %s (parent run %s not closed: %s)", reason, plan.parent_run_id, first_line(exc)[:300])
            return
    if say:
        log.error("sweep: parent run %s FAILED: %s", plan.parent_run_id, reason)


class CellFailed(EmbclustError):
    """A sweep cell failed; raised only to sweepers that record failed trials (Optuna)."""


def failed_cell_value(message: str) -> float:
    """What a failed cell returns to its sweeper: NaN, or for Optuna a failure it records as FAIL.

    Hydra's grid sweeper stops at the first job that raises, so failed cells return NaN there.
    Optuna's sweeper cannot take NaN as a value, but marks a trial whose job raised as failed and
    goes on (with ``hydra.sweeper.max_failure_rate`` above the share of failures).
    """
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized() and "optuna" in str(HydraConfig.get().sweeper.get("_target_", "")).lower():
        raise CellFailed(message)
    return math.nan


def cell_metric(run: mlflow.entities.Run, metric: str) -> float:
    """The chosen metric of a finished run, NaN when it was not scored."""
    return float(run.data.metrics.get(metric, math.nan))
