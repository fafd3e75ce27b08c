"""One light sweep cell: fit and score on the sweep's shared work, log only what tells cells apart.

A light cell logs its metrics, the params that identify it, ``labels.parquet`` (id, cluster) and
``config.yaml``, through a handful of MLflow calls. The map, analyses, report and model are made
once, for the best cell, when the sweep ends (:func:`embclust.runner.complete_run`).
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
import traceback
from pathlib import Path

import mlflow
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from hydra.utils import instantiate
from mlflow.entities import Metric, Param, RunTag
from omegaconf import DictConfig, OmegaConf

from embclust import signals, stages, tracking
from embclust.scoring import silhouette, stability
from embclust.errors import user_error
from embclust.processes import owner_token
from embclust.sweep.callback import SweepCell, failed_cell_value
from embclust.sweep import shared
from embclust.sweep.plan import SweepPlan
from embclust.tracking import datasets
from embclust.tracking.store import flatten_config

log = logging.getLogger(__name__)

# Params every cell logs besides its own overrides: what a reader needs to tell cells apart.
IDENTITY_PARAMS = (
    "dataset.name",
    "preprocess.normalize",
    "preprocess.pca_components",
    "preprocess.umap_components",
    "clusterer._target_",
    "clusterer.n_clusters",
    "clusterer.min_cluster_size",
    "clusterer.n_init",
    "seed",
)
STAGES = ("load", "preprocess", "cluster", "score", "log")


def identity_params(cfg: DictConfig, overrides: list[str]) -> dict[str, str]:
    """The cell's swept keys and :data:`IDENTITY_PARAMS`, as MLflow params."""
    flat = flatten_config(cfg)
    keys = [k for k in IDENTITY_PARAMS if k in flat]
    for item in overrides:
        key = item.split("=", 1)[0].lstrip("+~")
        if key in flat and key not in keys:
            keys.append(key)
    return {k: str(flat[k])[:6000] for k in keys}


def run_light_cell(cfg: DictConfig, plan: SweepPlan, cell: SweepCell, threads: int | None = None) -> float:
    """Run one light cell under the sweep's parent; return the ranking metric (NaN when it failed)."""
    client = mlflow.MlflowClient()
    # One line per cell (when it is done); the stages are logged at DEBUG.
    timer = stages.StageTimer(STAGES, prefix=f"{cell.position} ", level=logging.DEBUG)
    # A stop signal waits until the run exists and the handlers that close it are in place.
    with signals.deferred() as release:
        run_id = _create_run(client, plan, cell).info.run_id
        return _run_cell(client, run_id, cfg, plan, cell, timer, threads, release)


def _create_run(client, plan: SweepPlan, cell: SweepCell):
    return client.create_run(
        plan.experiment_id,
        run_name=plan.cell_name(cell.overrides) or f"cell {cell.index + 1}",
        tags={
            "mlflow.parentRunId": plan.parent_run_id,
            "sweep_cell": cell.overrides,
            "sweep_cell_key": cell.config_key,
            "sweep_role": "cell",
            tracking.PROCESS_TAG: owner_token(),
            **plan.tags,
        },
    )


def _run_cell(client, run_id: str, cfg: DictConfig, plan: SweepPlan, cell: SweepCell, timer, threads, release) -> float:
    try:
        params = [Param(k, v) for k, v in identity_params(cfg, cell.overrides.split()).items()]
    except Exception:  # noqa: BLE001 - an unresolvable config is reported by the run itself
        params = []
    try:
        release()  # signals held while the run was created arrive here, inside the handlers
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=threads):
            scores, tags, ds, clustering = _fit_and_score(cfg, plan, timer)
            labels = clustering.labels
        with timer("log"):
            now = int(time.time() * 1000)
            metrics = {**scores.values, **timer.as_metrics()}
            client.log_batch(
                run_id,
                metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items() if v is not None],
                params=params,
                tags=[RunTag(k, str(v)) for k, v in tags.items()],
            )
            with tempfile.TemporaryDirectory(prefix="embclust-cell-") as tmp:
                folder = Path(tmp)
                pq.write_table(pa.table({"id": np.asarray(ds.ids), "cluster": labels}), folder / "labels.parquet", compression="zstd")
                (folder / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
                client.log_artifacts(run_id, str(folder))
            datasets.log_dataset_input(ds, cfg.dataset.get("path"), run_id=run_id)
        client.set_terminated(run_id, "FINISHED")
        shared.keep_if_best(run_id, scores.values.get(plan.rank_metric, math.nan), plan.rank_metric, clustering)
        del clustering
        shared.release_free_memory()  # the cell's temporaries: keep the sweep's memory flat
    except Exception as exc:  # noqa: BLE001 - a failed cell is recorded and the sweep goes on
        if signals.received is not None:  # a stop signal that a library turned into an error of its own
            _end_killed(client, run_id, cell, str(signals.received))
            raise signals.received from None
        err = user_error(exc)
        message = str(err) if err else f"{type(exc).__name__}: {exc}".replace("\n", " ")
        client.log_batch(run_id, params=params, tags=[RunTag("error", message[:5000])])
        if err is None:
            client.log_text(run_id, traceback.format_exc(), "error.txt")
        client.set_terminated(run_id, "FAILED")
        log.error("%s: run %s FAILED: %s", cell.position, run_id, message)
        return failed_cell_value(message)
    except BaseException as exc:
        _end_killed(client, run_id, cell, str(exc) if isinstance(exc, signals.Stopped) else f"stopped: {type(exc).__name__} {exc}".strip())
        raise
    value = scores.values.get(plan.rank_metric, math.nan)
    log.info(
        "%s done in %.1fs: %s=%.4g (run %s)", cell.position, sum(timer.seconds.values()), plan.rank_metric, value, run_id
    )
    return value


def _end_killed(client, run_id: str, cell: SweepCell, reason: str) -> None:
    with signals.ignored():  # a second signal while this is recorded must not leave the run RUNNING
        client.set_tag(run_id, "error", reason[:5000])
        client.set_terminated(run_id, "KILLED")
        log.error("%s: run %s KILLED: %s", cell.position, run_id, reason)


def _fit_and_score(cfg: DictConfig, plan: SweepPlan, timer: stages.StageTimer):
    from embclust import cluster, validate

    validate.validate_config(cfg)
    cache_dir = stages.cache_dir(cfg, in_sweep=True)
    with timer("load"):
        ds, hit = stages.load_dataset(cfg, cache_dir)
        clusterer = instantiate(cfg.clusterer)
        cluster.check_clusterer(clusterer, ds.n_samples)
        cluster.check_implementation(cfg.get("cluster_implementation"))
        validate.check_quadratic_work(cfg, ds.n_samples)
    with timer("preprocess"):
        pre_cfg = stages.preprocess_config(cfg, ds)
        features = stages.fit_features(pre_cfg, ds, cache_dir, plan.max_pca_components)
    with timer("cluster"):
        backend = _backend(cfg)
        clustering = stages.fit_clustering(
            clusterer, features.X, backend, cfg.get("cluster_implementation", "auto"), stages.kmeans_sample(cfg)
        )
    with timer("score"):
        scoring = stages.scoring_for(cfg, ds, pre_cfg.get("normalize", "l2"), backend)
        scores = stages.score(features.X, clustering, ds.labels, scoring)
        scores.values.update(
            stability.stability_from_config(cfg.clusterer, features.X, clustering.labels, cfg.metrics.get("stability"), int(cfg.seed))
        )
        pca = features.preprocessing.named_steps.get("pca")
        if pca is not None and pca != "passthrough":
            scores.values["pca_explained_variance"] = float(np.sum(pca.explained_variance_ratio_))
    tags = {
        "data_fingerprint": ds.fingerprint,
        "data_n_samples": ds.n_samples,
        "data_n_features": ds.n_features,
        "preprocess_source": features.how + (" (cached)" if features.cache_hit else ""),
        **clustering.tags(),
        "silhouette_implementation": "torch" if backend == "torch" else silhouette.IMPLEMENTATION,
        "backend": backend,
        "normalize": pre_cfg["normalize"],
    }
    if hit is not None:
        tags["data_cache"] = "hit" if hit else "miss"
    return scores, tags, ds, clustering


def _backend(cfg: DictConfig) -> str:
    from embclust.scoring import torch_backend

    return torch_backend.resolve_backend(cfg.get("backend"))
