"""One clustering run: load -> validate -> preprocess -> cluster -> score -> map -> analyse -> plots
-> report -> log, recorded as one MLflow run."""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import polars as pl
from hydra.utils import instantiate
from mlflow.entities import Metric
from omegaconf import DictConfig, OmegaConf
from threadpoolctl import threadpool_limits

from embclust import cluster, data, maps, preprocess, tracking
from embclust.sweep import callback as sweep
from embclust.errors import ConfigError, EmbclustError
from embclust.explain import duplicates
from embclust.explain import steps as explain_steps
from embclust.scoring import metrics, torch_backend
from embclust.sweep import cache
from embclust.tracking import datasets, models, plots
from embclust.tracking.report import Report

log = logging.getLogger(__name__)

STAGES = ("load", "validate", "preprocess", "cluster", "score", "map", "analyse", "plots", "report", "log")
# Keys that embclust reads itself; the rest of the node builds the object via _target_.
_REDUCER_OPTIONS = ("max_points",)
_DATASET_OPTIONS = ("on_invalid", "sample_size", "dedupe")


@dataclass
class RunResult:
    """What a finished run produced."""

    run_id: str
    labels: np.ndarray
    metrics: dict[str, float]
    stage_seconds: dict[str, float] = field(default_factory=dict)


class _StageTimer:
    """Times each pipeline stage and reports progress as ``[k/n] stage``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str):
        log.info("[%d/%d] %s", STAGES.index(stage) + 1, len(STAGES), stage)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = time.perf_counter() - start

    def as_metrics(self) -> dict[str, float]:
        return {f"time/{stage}_s": round(sec, 4) for stage, sec in self.seconds.items()}


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


def instantiate_with_options(node: DictConfig, option_keys: tuple[str, ...]) -> tuple[Any, dict]:
    """Instantiate ``node`` without ``option_keys``; return (object or None, options)."""
    container = OmegaConf.to_container(node, resolve=True)
    options = {k: container.pop(k) for k in option_keys if k in container}
    return (instantiate(container) if "_target_" in container else None), options


def build_reducer(reducer_cfg: DictConfig | None):
    """Instantiate the 2-D reducer, or None for ``reducer=none``; returns (reducer, max_points)."""
    if reducer_cfg is None:
        return None, None
    reducer, options = instantiate_with_options(reducer_cfg, _REDUCER_OPTIONS)
    return reducer, options.get("max_points")


def _run_name(cfg: DictConfig) -> str:
    if cfg.get("run_name"):
        return str(cfg.run_name)
    clusterer = str(cfg.clusterer._target_).rsplit(".", 1)[-1]
    size = cfg.clusterer.get("n_clusters") or cfg.clusterer.get("min_cluster_size")
    pca = cfg.preprocess.get("pca_components")
    parts = [str(cfg.dataset.get("name", "data")), clusterer + (f"-{size}" if size else "")]
    if pca:
        parts.append(f"pca{pca}")
    return " ".join(parts)


def _cache_dir(cfg: DictConfig) -> Path | None:
    """Cache folder when caching is on (``cache.enabled``; null = only in sweeps), else None."""
    enabled = cfg.cache.enabled
    if enabled is None:
        enabled = _is_multirun()
    return Path(cfg.cache.dir) if enabled else None


def load_dataset(cfg: DictConfig) -> tuple[data.Dataset, bool | None]:
    """Load and validate the configured dataset, through the cache when it is on.

    Returns the dataset and whether it came from the cache (None when caching is off).
    """

    def load() -> data.Dataset:
        ds, options = instantiate_with_options(cfg.dataset, _DATASET_OPTIONS)
        ds = data.validate_dataset(ds, on_invalid=options.get("on_invalid", "error"))
        ds = data.subsample(ds, options.get("sample_size"), seed=int(cfg.seed))
        if options.get("dedupe"):
            ds = drop_near_duplicates(ds, float(cfg.analysis.duplicates.threshold), int(cfg.seed))
        return ds

    cache_dir = _cache_dir(cfg)
    if cache_dir is None:
        return load(), None
    key = {
        **OmegaConf.to_container(cfg.dataset, resolve=True),
        "_seed": int(cfg.seed),
        "_dedupe_threshold": float(cfg.analysis.duplicates.threshold),
    }
    return cache.cached_dataset(key, cache_dir, load)


def drop_near_duplicates(ds: data.Dataset, threshold: float, seed: int) -> data.Dataset:
    """Keep the first row of each group of rows with cosine similarity >= ``threshold``."""
    pairs = duplicates.near_duplicate_pairs(ds.X, threshold=threshold, seed=seed)
    drop = duplicates.rows_to_drop(pairs, ds.n_samples)
    if drop.size == 0:
        return ds
    log.info("dataset '%s': dropping %d near-duplicate rows (cosine >= %s)", ds.name, drop.size, threshold)
    keep = np.setdiff1d(np.arange(ds.n_samples), drop, assume_unique=True)
    out = data.take_rows(ds, keep)
    out.n_dropped_duplicates = ds.n_dropped_duplicates + int(drop.size)
    return out


def select_drill_cluster(ds: data.Dataset, parent_run_id: str, cluster_id: int) -> data.Dataset:
    """Members of cluster ``cluster_id`` of an earlier run on the same data (drill-down)."""
    try:
        parent = mlflow.get_run(str(parent_run_id))
    except Exception:  # noqa: BLE001 - MLflow raises several types for unknown ids
        raise ConfigError(f"drill.parent_run={parent_run_id}: no such run at {mlflow.get_tracking_uri()}") from None
    if parent.data.tags.get("data_fingerprint") != ds.fingerprint:
        raise ConfigError(
            f"drill.parent_run={parent_run_id} clustered other data (fingerprint "
            f"{parent.data.tags.get('data_fingerprint')}, this dataset {ds.fingerprint}): "
            "pass the same dataset overrides as that run (see its config.yaml)"
        )
    path = mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, artifact_path="labels.parquet")
    parent_labels = pl.read_parquet(path, columns=["cluster"])["cluster"].to_numpy()
    rows = np.flatnonzero(parent_labels == int(cluster_id))
    if rows.size < 2:
        available = ", ".join(str(c) for c in np.unique(parent_labels))
        raise ConfigError(f"drill.cluster={cluster_id}: {rows.size} members in run {parent_run_id} (clusters: {available})")
    log.info("drill-down: %d members of cluster %s of run %s", rows.size, cluster_id, parent_run_id)
    return data.take_rows(ds, rows)


def fit_preprocessing(cfg: DictConfig, preprocessing, ds: data.Dataset):
    """Fit the preprocessing on the dataset, through the cache when it is on."""
    cache_dir = _cache_dir(cfg)
    if cache_dir is None:
        return preprocessing, preprocess.fit_preprocessing(preprocessing, ds.X)
    pre_cfg = OmegaConf.to_container(cfg.preprocess, resolve=True)
    fitted, Xp, hit = cache.cached_preprocessing(
        ds.fingerprint, pre_cfg, cache_dir, lambda: (preprocessing, preprocess.fit_preprocessing(preprocessing, ds.X))
    )
    mlflow.set_tag("preprocess_cache", "hit" if hit else "miss")
    return fitted, Xp


def compute_map(cfg: DictConfig, reducer, max_points: int | None, Xp: np.ndarray, ds: data.Dataset) -> np.ndarray:
    """2-D map of the clustered space, through the cache when it is on (cells share it)."""
    seed = int(cfg.seed)
    cache_dir = _cache_dir(cfg)
    if reducer is None or cache_dir is None:
        return maps.compute_map(reducer, Xp, max_points=max_points, seed=seed)
    coords, hit = cache.cached_map(
        ds.fingerprint,
        OmegaConf.to_container(cfg.preprocess, resolve=True),
        {**OmegaConf.to_container(cfg.reducer, resolve=True), "seed": seed},
        cache_dir,
        lambda: maps.compute_map(reducer, Xp, max_points=max_points, seed=seed),
    )
    mlflow.set_tag("map_cache", "hit" if hit else "miss")
    return coords


def _log_pca_variance(preprocessing) -> None:
    """Log PCA's cumulative explained variance, one step per component."""
    pca = preprocessing.named_steps["pca"]
    if pca == "passthrough":
        return
    cumulative = np.cumsum(pca.explained_variance_ratio_)
    mlflow.log_metric("pca_explained_variance", float(cumulative[-1]))
    client = mlflow.MlflowClient()
    now = int(time.time() * 1000)
    client.log_batch(
        mlflow.active_run().info.run_id,
        metrics=[Metric("pca_cumulative_variance", float(v), now, i + 1) for i, v in enumerate(cumulative)],
    )


def execute(cfg: DictConfig, workdir: Path, timer: _StageTimer) -> RunResult:
    """Run the pipeline inside an active MLflow run, writing artifacts to ``workdir``."""
    seed = int(cfg.seed)
    with timer("load"):
        ds, hit = load_dataset(cfg)
        if hit is not None:
            mlflow.set_tag("data_cache", "hit" if hit else "miss")
        drill = cfg.get("drill")
        if drill:
            ds = select_drill_cluster(ds, drill.parent_run, drill.cluster)
            mlflow.set_tags({"drill_parent_run": str(drill.parent_run), "drill_cluster": str(drill.cluster)})
    with timer("validate"):
        preprocessing = instantiate(cfg.preprocess)
        clusterer = instantiate(cfg.clusterer)
        reducer, max_points = build_reducer(cfg.get("reducer"))
        backend = torch_backend.resolve_backend(cfg.get("backend"))
        mlflow.set_tag("backend", backend)
        preprocess.check_preprocessing(preprocessing, ds.n_samples, ds.n_features)
        cluster.check_clusterer(clusterer, ds.n_samples)
        plots.check_max_points(cfg.analysis.maps.max_points)
        mlflow.set_tags(
            tracking.reproducibility_tags(ds.fingerprint, _hydra_overrides(), Path(__file__).resolve().parent)
        )
        mlflow.set_tags({"data_n_samples": ds.n_samples, "data_n_features": ds.n_features})
        datasets.log_dataset_input(ds, cfg.dataset.get("path"))
        mlflow.log_metrics(
            {
                "data/dropped_invalid_rows": ds.n_dropped_invalid,
                "data/dropped_duplicate_rows": ds.n_dropped_duplicates,
                "data/duplicate_ids": ds.n_duplicate_ids,
            }
        )
        log.debug("dataset '%s': %d x %d, fingerprint %s", ds.name, ds.n_samples, ds.n_features, ds.fingerprint)
    with timer("preprocess"):
        preprocessing, Xp = fit_preprocessing(cfg, preprocessing, ds)
        _log_pca_variance(preprocessing)
    with timer("cluster"):
        labels = (torch_backend.fit_clusterer if backend == "torch" else cluster.fit_clusterer)(clusterer, Xp)
    with timer("score"):
        score = torch_backend.score_clustering if backend == "torch" else metrics.score_clustering
        # silhouette: per-point values of the scored sample, reused by the silhouette diagram
        scores, silhouette = score(
            Xp, labels, ds.labels, silhouette_sample_size=cfg.metrics.silhouette_sample_size, seed=seed,
            return_silhouette_values=True,
        )
        if hasattr(clusterer, "inertia_"):
            scores["inertia"] = float(clusterer.inertia_)
        mlflow.log_metrics(scores)
        log.debug("scores: %s", ", ".join(f"{k}={v:.4g}" for k, v in scores.items()))
    with timer("map"):
        coords = compute_map(cfg, reducer, max_points, Xp, ds)
    map_title = _map_title(reducer, max_points, ds, scores)
    state = explain_steps.RunState(
        ds, Xp, labels, coords, preprocessing, clusterer, seed, map_title=map_title, silhouette=silhouette
    )
    analyses = Report(title="")
    with timer("analyse"):
        explain_steps.run_analyses(state, cfg, workdir, analyses, in_sweep=_is_multirun())
        mlflow.log_metrics({**state.metrics, **state.seconds})
        scores.update(state.metrics)
    report = Report(title=f"{_run_name(cfg)} (run {mlflow.active_run().info.run_id})")
    report.add_metrics(scores)
    true_names = ds.label_strings()
    with timer("plots"):
        table = {"id": ds.ids, "cluster": labels, "x": coords[:, 0], "y": coords[:, 1]}
        if true_names is not None:
            table["label"] = true_names
        pl.DataFrame(table).write_parquet(workdir / "labels.parquet")
        (workdir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        sizes = plots.cluster_sizes_figure(labels)
        if not cfg.analysis.report.enabled:  # the report holds the figures; no plotly.js per file
            plots.write_html(sizes, workdir / "cluster_sizes.html")
        if reducer is not None:
            names = {c: ", ".join(words[:3]) for c, words in state.cluster_keywords.items()}
            fig = plots.cluster_map_figure(
                coords, labels, ds.ids, true_names, map_title, ds.texts, names,
                max_points=cfg.analysis.maps.max_points, seed=seed,
            )
            if not cfg.analysis.report.enabled:
                plots.write_html(fig, workdir / "cluster_map.html")
            report.add_figure("Map", fig)
        report.add_figure("Cluster sizes", sizes)
    with timer("report"):
        report.sections.extend(analyses.sections)
        if cfg.analysis.report.enabled:
            report.write(workdir / "report.html")
    with timer("log"):
        mlflow.log_artifacts(str(workdir))
        _log_model(preprocessing, clusterer, ds.X, labels)
    mlflow.log_metrics(timer.as_metrics())
    return RunResult(mlflow.active_run().info.run_id, labels, scores, dict(timer.seconds))


def _map_title(reducer, max_points: int | None, ds: data.Dataset, scores: dict) -> str:
    if reducer is None:
        return ""
    title = f"{type(reducer).__name__} map of {ds.name}: {int(scores['n_clusters'])} clusters"
    if max_points is not None and ds.n_samples > max_points:
        placed = "the rest placed by transform" if hasattr(reducer, "transform") else "only the sample shown"
        title += f" (fitted on a seeded sample of {max_points} of {ds.n_samples} points; {placed})"
    return title


def _log_model(preprocessing, clusterer, X: np.ndarray, labels: np.ndarray) -> None:
    """Log preprocessing + clusterer as one scikit-learn model under artifact path ``model``."""
    model = cluster.build_model(preprocessing, clusterer)
    models.log_model(model, X[:5], labels[:5])
    mlflow.set_tag("model_predicts", str(cluster.supports_predict(model)).lower())


def _user_error(exc: BaseException) -> EmbclustError | None:
    """The :class:`EmbclustError` behind ``exc`` (Hydra wraps errors raised while instantiating)."""
    while exc is not None:
        if isinstance(exc, EmbclustError):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _resumed_metric(cfg: DictConfig, cell: sweep.SweepCell, experiment_id: str) -> float | None:
    """The chosen metric of an earlier FINISHED run of this cell on the same data, else None."""
    previous = sweep.finished_run_of(cell, experiment_id)
    if previous is None:
        return None
    try:
        ds, _ = load_dataset(cfg)
    except Exception:  # noqa: BLE001 - let the real run report the error
        return None
    if previous.data.tags.get("data_fingerprint") != ds.fingerprint:
        return None
    value = sweep.cell_metric(previous, cfg.sweep.metric)
    log.info("%s: skipped, finished earlier as run %s (%s=%.4g)", cell.position, previous.info.run_id, cfg.sweep.metric, value)
    return value


def run(cfg: DictConfig) -> float:
    """Run one configured job as an MLflow run; return ``sweep.metric`` (NaN when failed).

    Errors end the MLflow run as FAILED with the message in tag ``error``. In a single run the
    process then exits with status 1 after one error line; in a sweep the other cells go on.
    Sweep cells nest under the sweep's parent run and, with ``sweep.resume``, are skipped when
    the same cell already FINISHED on the same data.
    """
    try:
        experiment_id = tracking.setup_tracking(cfg.mlflow.tracking_uri, cfg.mlflow.experiment_name)
    except tracking.TrackingServerUnreachable as exc:
        log.error("%s", exc)
        if _is_multirun():
            return math.nan
        raise SystemExit(1) from None
    cell = sweep.current_cell(cfg)
    tags = {}
    if cell is not None:
        if cfg.sweep.resume:
            resumed = _resumed_metric(cfg, cell, experiment_id)
            if resumed is not None:
                return resumed
        log.info("%s: %s", cell.position, cell.overrides or "(no overrides)")
        tags = {"sweep_cell": cell.overrides, "sweep_cell_key": cell.config_key}
    timer = _StageTimer()
    with mlflow.start_run(
        run_name=_run_name(cfg), parent_run_id=cell.parent_run_id if cell else None, tags=tags
    ) as active:
        mlflow.log_params(tracking.flatten_config(cfg))
        try:
            threads = _threads_per_cell()
            with tempfile.TemporaryDirectory(prefix="embclust-") as tmp, threadpool_limits(limits=threads):
                result = execute(cfg, Path(tmp), timer)
        except Exception as exc:  # noqa: BLE001 - every failure must be recorded before exiting
            user_error = _user_error(exc)
            message = str(user_error) if user_error else f"{type(exc).__name__}: {exc}".replace("\n", " ")
            mlflow.set_tag("error", message[:5000])
            if user_error is None:
                mlflow.log_text(traceback.format_exc(), "error.txt")
            mlflow.log_metrics(timer.as_metrics())
            mlflow.end_run(status="FAILED")
            log.error("%srun %s FAILED: %s", f"{cell.position}: " if cell else "", active.info.run_id, message)
            if _is_multirun():
                return math.nan
            raise SystemExit(1) from None
    value = result.metrics.get(cfg.sweep.metric, math.nan)
    prefix = f"{cell.position} done: " if cell else ""
    url = None if cell else tracking.runs_page_url(cfg.mlflow.tracking_uri, experiment_id)
    log.info(
        "%srun %s finished in %.1fs, %s=%.4g%s",
        prefix,
        result.run_id,
        sum(result.stage_seconds.values()),
        cfg.sweep.metric,
        value,
        f"; runs: {url}" if url else "",
    )
    return value
