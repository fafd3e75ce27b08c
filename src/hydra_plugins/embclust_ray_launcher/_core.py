"""Run Hydra jobs as Ray tasks through Ray's public API (``ray.init``, ``ray.remote``, ``ray.get``)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Dict, Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from embclust.engine.address import answers, without_explicit_address

log = logging.getLogger(__name__)


def _import_ray():
    # Ray folds log lines that differ only in numbers ("[repeated 2x across cluster]"), which
    # hides each cell's "cell i/n done" line; keep them unless the user chose otherwise.
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    try:
        import ray
    except ImportError:
        raise ImportError("hydra/launcher=ray needs Ray: pip install 'embclust[ray]'") from None
    return ray


def _execute_job(
    hydra_context: HydraContext,
    sweep_config: DictConfig,
    task_function: TaskFunction,
    singleton_state: Dict[Any, Any],
    driver_cwd: str,
) -> JobReturn:
    """Body of one Ray task: the job runs as Hydra's own launchers run it."""
    setup_globals()
    Singleton.set_state(singleton_state)
    HydraConfig.instance().set_config(sweep_config)
    # Relative paths (outputs, cache, a SQLite store, data files) mean the same as in the driver
    # when its folder exists here (same machine or shared disk); elsewhere the worker's own.
    previous = os.getcwd()
    if os.path.isdir(driver_cwd):
        os.chdir(driver_cwd)
    try:
        return run_job(
            hydra_context=hydra_context,
            task_function=task_function,
            config=sweep_config,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )
    finally:
        os.chdir(previous)


def _cluster_address(address: str | None) -> str | None:
    """The address to give ``ray.init``, checked first: Ray waits minutes on a dead one.

    An address (``hydra.launcher.address`` or $RAY_ADDRESS) that does not answer is one line and
    exit 1; with none, see :func:`embclust.engine.address.without_explicit_address`.
    """
    explicit = address or os.environ.get("RAY_ADDRESS")
    if explicit:
        if not answers(explicit):
            log.error(
                "Ray cluster %s is unreachable: start it with `ray start --head` or set hydra.launcher.address",
                explicit,
            )
            raise SystemExit(1)
        return address
    return without_explicit_address()


def _forwarded_env(prefixes: Sequence[str]) -> Dict[str, str]:
    return {k: v for k, v in os.environ.items() if any(k.startswith(p) for p in prefixes)}


def launch(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
    ray = _import_ray()
    setup_globals()
    assert launcher.config is not None and launcher.task_function is not None and launcher.hydra_context is not None
    configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    opts = OmegaConf.to_container(OmegaConf.create(dict(launcher.ray)), resolve=True)
    sweep_dir = Path(str(launcher.config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)

    if not ray.is_initialized():
        ray.init(address=_cluster_address(opts.get("address")), **(opts.get("init") or {}))
    resources = ray.cluster_resources()
    log.info(
        "Ray launcher: %d jobs on a cluster of %g CPUs, %g GPUs (%g CPUs per job), sweep output dir: %s",
        len(job_overrides),
        resources.get("CPU", 0),
        resources.get("GPU", 0),
        opts.get("num_cpus", 1),
        sweep_dir,
    )
    # Environment variables are set per task: workers of a running cluster were started
    # before this sweep and do not inherit the driver's environment.
    remote_opts: Dict[str, Any] = {"num_cpus": opts.get("num_cpus", 1), "num_gpus": opts.get("num_gpus", 0)}
    remote_opts.update(opts.get("remote") or {})
    runtime_env = dict(remote_opts.pop("runtime_env", None) or {})
    env_vars = {**_forwarded_env(opts.get("env_prefixes") or []), **(runtime_env.get("env_vars") or {})}
    if env_vars:
        runtime_env["env_vars"] = env_vars
    if runtime_env:
        remote_opts["runtime_env"] = runtime_env
    task = ray.remote(_execute_job).options(**remote_opts)

    # Shared by every task: stored once in Ray's object store, not pickled per task.
    context, function, state = (ray.put(x) for x in (launcher.hydra_context, launcher.task_function, Singleton.get_state()))
    driver_cwd = os.getcwd()
    jobs = []
    for offset, overrides in enumerate(job_overrides):
        idx = initial_job_idx + offset
        sweep_config = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, list(overrides))
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = f"{sweep_config.hydra.job.name}_{idx}"
            sweep_config.hydra.job.num = idx
        jobs.append((idx, overrides, sweep_config))
    at_once = cells_at_once(jobs, resources.get("CPU", 0), float(remote_opts["num_cpus"] or 0))
    results: list = [None] * len(jobs)
    running: Dict[Any, int] = {}
    waiting = list(enumerate(jobs))
    while waiting or running:
        while waiting and (at_once is None or len(running) < at_once):
            position, (idx, overrides, sweep_config) = waiting.pop(0)
            log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
            running[task.remote(context, sweep_config, function, state, driver_cwd)] = position
        done, _ = ray.wait(list(running), num_returns=1)
        for ref in done:
            results[running.pop(ref)] = ray.get(ref)
    return results


def cells_at_once(jobs: Sequence[Any], cluster_cpus: float, cell_cpus: float) -> int | None:
    """How many cells may run at once (None: as many as Ray schedules).

    A cell with ``engine=ray`` holds its CPUs while its passes over the rows run as further Ray
    tasks of one CPU each; were every CPU held by a cell, no pass could start and the sweep
    would wait for ever. Such cells run at most ``(cluster CPUs - 1) / num_cpus`` at a time, so
    at least one CPU is left to their passes.
    """
    if not any(str(job[2].get("engine") or "local") == "ray" for job in jobs) or cell_cpus <= 0:
        return None
    at_once = int((cluster_cpus - 1) // cell_cpus)
    if at_once < 1:
        log.error(
            "engine=ray with hydra/launcher=ray: each cell reserves hydra.launcher.num_cpus=%g of the cluster's %g CPUs, "
            "which leaves none to its passes over the rows: add CPUs to the cluster, or lower hydra.launcher.num_cpus",
            cell_cpus, cluster_cpus,
        )
        raise SystemExit(1)
    log.info("Ray launcher: engine=ray cells run at most %d at a time, so that their passes over the rows have "
             "%g of the cluster's %g CPUs", at_once, cluster_cpus - at_once * cell_cpus, cluster_cpus)
    return at_once
