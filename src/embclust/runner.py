"""One clustering run: load -> validate -> preprocess -> cluster -> score -> map -> plots -> log."""

from __future__ import annotations

import logging
import math
import tempfile
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import mlflow.sklearn
import numpy as np
import polars as pl
from hydra.utils import instantiate
from mlflow.models import infer_signature
from omegaconf import DictConfig, OmegaConf

from embclust import cluster, data, maps, metrics, plots, preprocess, tracking
from embclust.errors import EmbclustError

log = logging.getLogger(__name__)

STAGES = ("load", "validate", "preprocess", "cluster", "score", "map", "plots", "log")
# Keys of the reducer config that embclust reads itself; the rest build the estimator.
_REDUCER_OPTIONS = ("max_points",)


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
        return {f"time_{stage}_s": round(sec, 4) for stage, sec in self.seconds.items()}


def _hydra_overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def _is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def build_reducer(reducer_cfg: DictConfig | None):
    """Instantiate the 2-D reducer, or None for ``reducer=none``; returns (reducer, max_points)."""
    if reducer_cfg is None:
        return None, None
    options = OmegaConf.to_container(reducer_cfg, resolve=True)
    max_points = options.get("max_points")
    estimator_cfg = {k: v for k, v in options.items() if k not in _REDUCER_OPTIONS}
    if "_target_" not in estimator_cfg:
        return None, max_points
    return instantiate(estimator_cfg), max_points


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


def execute(cfg: DictConfig, workdir: Path, timer: _StageTimer) -> RunResult:
    """Run the pipeline inside an active MLflow run, writing artifacts to ``workdir``."""
    seed = int(cfg.seed)
    with timer("load"):
        ds = instantiate(cfg.dataset)
    with timer("validate"):
        data.validate_dataset(ds)
        preprocessing = instantiate(cfg.preprocess)
        clusterer = instantiate(cfg.clusterer)
        reducer, max_points = build_reducer(cfg.get("reducer"))
        preprocess.check_preprocessing(preprocessing, ds.n_samples, ds.n_features)
        cluster.check_clusterer(clusterer, ds.n_samples)
        mlflow.set_tags(
            tracking.reproducibility_tags(ds.fingerprint, _hydra_overrides(), Path(__file__).resolve().parent)
        )
        mlflow.set_tags({"data_n_samples": ds.n_samples, "data_n_features": ds.n_features})
        log.info("dataset '%s': %d x %d, fingerprint %s", ds.name, ds.n_samples, ds.n_features, ds.fingerprint)
    with timer("preprocess"):
        Xp = preprocess.fit_preprocessing(preprocessing, ds.X)
    with timer("cluster"):
        labels = cluster.fit_clusterer(clusterer, Xp)
    with timer("score"):
        scores = metrics.score_clustering(
            Xp, labels, ds.labels, silhouette_sample_size=cfg.metrics.silhouette_sample_size, seed=seed
        )
        mlflow.log_metrics(scores)
        log.info("scores: %s", ", ".join(f"{k}={v:.4g}" for k, v in scores.items()))
    with timer("map"):
        coords = maps.compute_map(reducer, Xp, max_points=max_points, seed=seed)
    true_names = ds.label_strings()
    with timer("plots"):
        table = {"id": ds.ids, "cluster": labels, "x": coords[:, 0], "y": coords[:, 1]}
        if true_names is not None:
            table["label"] = true_names
        pl.DataFrame(table).write_parquet(workdir / "labels.parquet")
        (workdir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        plots.write_html(plots.cluster_sizes_figure(labels), workdir / "cluster_sizes.html")
        if reducer is not None:
            title = f"{type(reducer).__name__} map of {ds.name}: {int(scores['n_clusters'])} clusters"
            fig = plots.cluster_map_figure(coords, labels, ds.ids, true_names, title=title)
            plots.write_html(fig, workdir / "cluster_map.html")
    with timer("log"):
        mlflow.log_artifacts(str(workdir))
        _log_model(preprocessing, clusterer, ds.X, labels)
    mlflow.log_metrics(timer.as_metrics())
    return RunResult(mlflow.active_run().info.run_id, labels, scores, dict(timer.seconds))


def _log_model(preprocessing, clusterer, X: np.ndarray, labels: np.ndarray) -> None:
    """Log preprocessing + clusterer as one scikit-learn model under artifact path ``model``."""
    model = cluster.build_model(preprocessing, clusterer)
    example = np.asarray(X[:5])
    signature = infer_signature(example, labels[:5])
    mlflow.sklearn.log_model(
        model,
        name="model",
        signature=signature,
        serialization_format="cloudpickle",
        pip_requirements=tracking.model_requirements(model),
    )
    mlflow.set_tag("model_predicts", str(cluster.supports_predict(model)).lower())


def _user_error(exc: BaseException) -> EmbclustError | None:
    """The :class:`EmbclustError` behind ``exc`` (Hydra wraps errors raised while instantiating)."""
    while exc is not None:
        if isinstance(exc, EmbclustError):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def run(cfg: DictConfig) -> float:
    """Run one configured job as an MLflow run; return the chosen metric (NaN when failed).

    Errors end the MLflow run as FAILED with the message in tag ``error``. In a single run the
    process then exits with status 1 after one error line; in a sweep the other cells go on.
    """
    tracking.setup_tracking(cfg.mlflow.tracking_uri, cfg.mlflow.experiment_name)
    timer = _StageTimer()
    with mlflow.start_run(run_name=_run_name(cfg)) as active:
        mlflow.log_params(tracking.flatten_config(cfg))
        try:
            with tempfile.TemporaryDirectory(prefix="embclust-") as tmp:
                result = execute(cfg, Path(tmp), timer)
        except Exception as exc:  # noqa: BLE001 - every failure must be recorded before exiting
            user_error = _user_error(exc)
            message = str(user_error) if user_error else f"{type(exc).__name__}: {exc}".replace("\n", " ")
            mlflow.set_tag("error", message[:5000])
            if user_error is None:
                mlflow.log_text(traceback.format_exc(), "error.txt")
            mlflow.log_metrics(timer.as_metrics())
            mlflow.end_run(status="FAILED")
            log.error("run %s FAILED: %s", active.info.run_id, message)
            if _is_multirun():
                return math.nan
            raise SystemExit(1) from None
    log.info("run %s finished in %.1fs", result.run_id, sum(result.stage_seconds.values()))
    return result.metrics.get(cfg.get("objective", "silhouette"), math.nan)
