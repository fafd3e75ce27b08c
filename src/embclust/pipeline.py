"""One configured pipeline, three ways to run it: a single run, a light sweep cell, the sweep's best cell.

A single run goes load -> validate -> preprocess -> cluster -> score -> map -> analyse -> plots
-> report -> log, recorded as one MLflow run (:func:`execute`). A light sweep cell fits and
scores on the sweep's shared work and logs only what tells cells apart (:func:`run_light_cell`);
the sweep's best cell then gets the full treatment from its light fit
(:func:`complete_best_cell`). The Hydra entry point is :mod:`embclust.runner`.
"""

from __future__ import annotations

import contextlib
import logging
import errno
import math
import os
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from hydra.utils import instantiate
from mlflow.entities import Metric, Param, RunTag
from omegaconf import DictConfig, OmegaConf

from embclust import blocks, cluster, data, maps, preprocess, signals, stages, tracking, validate
from embclust.errors import ARTIFACT_LOCATION, ARTIFACT_LOCATION_INSTEAD, ConfigError, DataError, first_line, path_error, user_error
from embclust.explain import steps as explain_steps
from embclust.processes import owner_token
from embclust.scoring import silhouette, stability, torch_backend
from embclust.sweep import shared
from embclust.sweep.plan import SweepPlan
from embclust.tracking import datasets, models, plots
from embclust.tracking.report import Report, score_advice
from embclust.tracking.store import flatten_config

if TYPE_CHECKING:
    from embclust.sweep.callback import SweepCell

log = logging.getLogger(__name__)

STAGES = ("load", "validate", "preprocess", "cluster", "score", "map", "analyse", "plots", "report", "log")


@dataclass
class RunResult:
    """What a finished run produced."""

    run_id: str
    labels: np.ndarray
    metrics: dict[str, float]
    stage_seconds: dict[str, float] = field(default_factory=dict)
    report: Report | None = None


@dataclass
class CellOutcome:
    """A light cell's ranking metric, and why it failed (None when it did not)."""

    value: float
    failure: str | None = None


def select_drill_cluster(ds: data.Dataset, parent_run_id: str, cluster_id: int | None) -> tuple[data.Dataset, str]:
    """Members of cluster ``cluster_id`` of an earlier run on the same data (drill-down), and that run's
    id: a sweep's parent id means its best cell, as in the ``embclust`` commands."""
    from embclust.use import runs

    if cluster_id is None or isinstance(cluster_id, bool) or not isinstance(cluster_id, int):
        raise ConfigError(f"drill.cluster={cluster_id!r}: give the cluster of run {parent_run_id} to cluster again, "
                          "e.g. +drill.cluster=3 (its ids are the cluster column of its labels.parquet)")
    try:
        parent = runs.resolve_run(str(parent_run_id))
    except (ConfigError, DataError) as exc:  # no such run, a deleted or unfinished one, a sweep without a best cell
        raise ConfigError(f"drill.parent_run={parent_run_id}: {exc}") from None
    if parent.info.run_id != str(parent_run_id):  # a sweep: the tags record the run whose labels are used
        log.info("drill-down: drill.parent_run=%s is a sweep; its best cell %s is drilled", parent_run_id, parent.info.run_id)
        mlflow.set_tag("drill_sweep", str(parent_run_id))
    parent_run_id = parent.info.run_id
    if parent.data.tags.get("data_fingerprint") != ds.fingerprint:
        raise ConfigError(
            f"drill.parent_run={parent_run_id} clustered other data (fingerprint "
            f"{parent.data.tags.get('data_fingerprint')}, this dataset {ds.fingerprint}): "
            "pass the same dataset overrides as that run (see its config.yaml)"
        )
    parent_labels = runs.load_labels(parent, ["cluster"])["cluster"].to_numpy()
    rows = np.flatnonzero(parent_labels == int(cluster_id))
    if rows.size < 2:
        available = ", ".join(str(c) for c in np.unique(parent_labels))
        raise ConfigError(f"drill.cluster={cluster_id}: {rows.size} members in run {parent_run_id} (clusters: {available})")
    log.info("drill-down: %d members of cluster %s of run %s", rows.size, cluster_id, parent_run_id)
    return data.take_rows(ds, rows), parent_run_id




def check_clusterer_on(clusterer, ds: data.Dataset) -> None:
    """:func:`embclust.cluster.check_clusterer` on ``ds``'s rows, saying where rows of the file went
    (``dataset.sample_size``, ``dataset.dedupe``, ``dataset.on_invalid=drop``) when a size does not fit."""
    try:
        cluster.check_clusterer(clusterer, ds.n_samples)
    except ConfigError as exc:
        parts = []
        if ds.sampled:
            parts.append(f"dataset.sample_size={ds.sampled[0]} kept {ds.sampled[0]} of {ds.sampled[1]} rows")
        if ds.n_dropped_duplicates:
            parts.append(f"dataset.dedupe=true dropped {ds.n_dropped_duplicates} near-duplicate rows")
        if ds.n_dropped_invalid:
            parts.append(f"dataset.on_invalid=drop dropped {ds.n_dropped_invalid} invalid rows")
        if not parts:
            raise
        raise ConfigError(f"{exc} ({'; '.join(parts)})") from None


def run_name(cfg: DictConfig) -> str:
    if cfg.get("run_name"):
        return str(cfg.run_name)
    clusterer = str(cfg.clusterer._target_).rsplit(".", 1)[-1]
    size = cfg.clusterer.get("n_clusters") or cfg.clusterer.get("min_cluster_size")
    pca = cfg.preprocess.get("pca_components")
    parts = [_dataset_label(cfg.dataset), clusterer + (f"-{size}" if size else "")]
    if pca:
        parts.append(f"pca{pca}")
    umap = cfg.preprocess.get("umap_components")
    if umap and umap != "auto":
        parts.append(f"umap{umap}")
    return " ".join(parts)


# Dataset config names that say which loader, not which data: the file names the data instead.
_LOADER_NAMES = ("npy", "parquet", "csv", "texts", "tabular", "table")


def _dataset_label(dataset: DictConfig) -> str:
    name = str(dataset.get("name", "data"))
    path = dataset.get("path")
    if name in _LOADER_NAMES and isinstance(path, str) and path:
        stem = Path(path.rstrip("/")).name
        stem = stem.rsplit(".", 1)[0] if "." in stem and not any(c in stem for c in "*?[") else stem
        return stem[:40]
    return name


def report_config(cfg: DictConfig) -> dict[str, object]:
    """The configuration a reader of ``report.html`` needs: what clustered the data, in which space, seeded how."""
    clusterer = str(cfg.clusterer._target_).rsplit(".", 1)[-1]
    sizes = [f"{k}={cfg.clusterer[k]}" for k in ("n_clusters", "min_cluster_size", "min_samples", "linkage")
             if cfg.clusterer.get(k) is not None]
    reducer = cfg.get("reducer")
    target = reducer.get("_target_") if reducer is not None else None
    config: dict[str, object] = {"clusterer": f"{clusterer}({', '.join(sizes)})" if sizes else clusterer}
    if cfg.dataset.get("path"):
        config["data file"] = Path(str(cfg.dataset.path).rstrip("/")).name
    config["normalize"] = cfg.preprocess.get("normalize")
    config["pca_components"] = cfg.preprocess.get("pca_components") or "none"
    if cfg.preprocess.get("umap_components"):
        config["umap_components"] = cfg.preprocess.umap_components
    config["map (reducer)"] = str(target).rsplit(".", 1)[-1] if target else "none"
    if cfg.get("drill"):
        config["drill-down"] = f"cluster {cfg.drill.cluster} of run {cfg.drill.parent_run}"
    config["seed"] = cfg.seed
    return config


def execute(
    cfg: DictConfig,
    workdir: Path,
    timer: stages.StageTimer,
    plan: SweepPlan | None = None,
    in_sweep: bool = False,
    overrides: list[str] | None = None,
    write_report: bool = True,
    data_analyses: bool = True,
    release_shared: bool = False,
    fitted: stages.Clustering | None = None,
    known_scores: dict[str, float] | None = None,
) -> RunResult:
    """Run the whole pipeline inside an active MLflow run, writing artifacts to ``workdir``.

    In a sweep (``plan`` given) the data, PCA and scoring sample are the sweep's shared ones, so a
    cell completed here gets the labels and scores it got as a light cell. With ``write_report``
    false the report is returned in the result instead of written (the sweep's parent holds it).
    ``release_shared`` frees the sweep's shared work once this run is scored (the sweep's best
    cell, completed last). ``fitted``: the clustering already fitted for this config (the best
    cell's light fit), used instead of fitting again; ``known_scores``: the metrics that light cell
    logged, whose ``stability`` (a refit per resample, minutes on large data) is not computed again.
    """
    seed = int(cfg.seed)
    stages.configure_memory(cfg)
    cache_dir = stages.cache_dir(cfg, in_sweep=plan is not None)
    with timer("load"):
        ds, hit = stages.load_dataset(cfg, cache_dir)
        if hit is not None:
            mlflow.set_tag("data_cache", "hit" if hit else "miss")
        drill = cfg.get("drill")
        if drill:
            ds, drilled_run = select_drill_cluster(ds, drill.get("parent_run"), drill.get("cluster"))
            mlflow.set_tags({"drill_parent_run": drilled_run, "drill_cluster": str(drill.cluster)})
    with timer("validate"):
        cfg.preprocess.normalize = preprocess.choose_normalize(cfg.preprocess.normalize, ds.n_features, ds.from_tabular, ds.X)
        mlflow.set_tag("normalize", cfg.preprocess.normalize)
        umap_components = stages.resolve_umap_before_clustering(cfg, ds)
        mlflow.set_tag("umap_before_clustering", str(umap_components or "none"))
        pre_cfg = stages.preprocess_config(cfg, ds)
        preprocessing = instantiate(cfg.preprocess)
        clusterer = instantiate(cfg.clusterer)
        reducer, max_points = stages.build_reducer(cfg.get("reducer"))
        backend = torch_backend.resolve_backend(cfg.get("backend"))
        preprocess.check_preprocessing(preprocessing, ds.n_samples, ds.n_features, cfg.preprocess.get("fit_sample_size"))
        check_clusterer_on(clusterer, ds)
        stability.check_sizes(cfg.metrics.get("stability"), ds.n_samples, clusterer)
        clustered_dims = cfg.preprocess.get("umap_components") or cfg.preprocess.get("pca_components") or ds.n_features
        maps.check_reducer(reducer, ds.n_samples, max_points, clustered_dims)
        validate.check_quadratic_work(cfg, ds.n_samples)
        validate.check_in_memory_clusterer(cfg, ds.n_samples, int(clustered_dims))
        cluster.check_implementation(cfg.get("cluster_implementation"))
        plots.check_max_points(cfg.analysis.maps.max_points)
        explain_steps.check_color_by(cfg.analysis.maps.get("color_by"), ds.metadata)
        tags = tracking.reproducibility_tags(ds.fingerprint, overrides or [],
                                             Path(__file__).resolve().parent)
        tags.update({"data_n_samples": ds.n_samples, "data_n_features": ds.n_features, "backend": backend})
        if ds.labels_fingerprint is not None:
            tags["labels_fingerprint"] = ds.labels_fingerprint
        mlflow.set_tags(tags)
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
        features = stages.fit_features(pre_cfg, ds, cache_dir, plan.max_pca_components if plan else None)
        preprocessing, Xp = features.preprocessing, features.X
        mlflow.set_tag("preprocess_source", features.how + (" (cached)" if features.cache_hit else ""))
        _log_pca_variance(preprocessing)
    passes = None  # engine=ray's rows on the cluster
    if fitted is not None:  # the sweep's best cell: its light cell's fit (and time/cluster_s) stand
        clustering = fitted
    else:
        with timer("cluster"):
            passes = stages.engine_rows(cfg, ds, features, labels_artifact_uri=mlflow.active_run().info.artifact_uri)
            clustering = stages.fit_clustering(
                clusterer, Xp, backend, cfg.get("cluster_implementation", "auto"), stages.kmeans_sample(cfg), passes
            )
    clusterer, labels = clustering.estimator, clustering.labels
    mlflow.set_tags({
        **clustering.tags(),
        "silhouette_implementation": "torch" if backend == "torch" else silhouette.IMPLEMENTATION,
    })
    with timer("score"):
        scoring = stages.scoring_for(cfg, ds, pre_cfg.get("normalize", "l2"), backend)
        scored = stages.score(Xp, clustering, ds.labels, scoring, passes)
        if fitted is None:
            _log_engine(passes, workdir)
        scores = scored.values
        if known_scores and stability.METRIC in known_scores:  # the best cell's, from its light cell
            scores.update({k: known_scores[k] for k in (stability.METRIC, stability.TIME_METRIC) if k in known_scores})
        else:
            scores.update(stability.stability_from_config(cfg.clusterer, Xp, labels, cfg.metrics.get("stability"), seed))
        mlflow.log_metrics(scores)
        log.debug("scores: %s", ", ".join(f"{k}={v:.4g}" for k, v in scores.items()))
        noisy = stages.noise_warning(scores.get("noise_fraction"), cfg)
        if noisy:
            log.warning(noisy)
            mlflow.set_tag("high_noise", f"{scores['noise_fraction']:.3f}")
        if release_shared:
            # The sweep's last use of its shared work: the reference sample's distances (55 MB
            # at 5,000 rows) and the other cells' projections go before the analyses.
            del scoring
            shared.clear()
    with timer("map"):
        coords = _compute_map(cfg, reducer, max_points, Xp, ds, pre_cfg, cache_dir)
    map_title = _map_title(reducer, max_points, ds, scores)
    state = explain_steps.RunState(
        ds, Xp, labels, coords, preprocessing, clusterer, seed, map_title=map_title, silhouette=scored.silhouette
    )
    analyses = Report(title="")
    with timer("analyse"):
        explain_steps.run_analyses(state, cfg, workdir, analyses, in_sweep=in_sweep, data_analyses=data_analyses)
        mlflow.log_metrics({**state.metrics, **state.seconds, **_driver_reads(ds.X, Xp)})
        scores.update(state.metrics)
    report = Report(title=f"{run_name(cfg)} (run {mlflow.active_run().info.run_id})")
    report.set_header(
        dataset=_dataset_label(cfg.dataset), rows=ds.n_samples, columns=ds.n_features,
        config=report_config(cfg), advice=score_advice(scores),
    )
    report.add_metrics(scores)
    true_names = ds.label_strings if ds.labels is not None else None  # of the drawn rows only
    with timer("plots"):
        write_labels(workdir / "labels.parquet", ds, labels, coords)
        (workdir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        sizes = plots.cluster_sizes_figure(labels)
        figures_in_report = cfg.analysis.report.enabled or not write_report
        if not figures_in_report:  # the report holds the figures; no plotly.js per file
            plots.write_html(sizes, workdir / "cluster_sizes.html")
        if reducer is not None:
            names = {c: ", ".join(words[:3]) for c, words in state.cluster_keywords.items()}
            fig = plots.cluster_map_figure(
                coords, labels, ds.ids, true_names, map_title, ds.texts, names,
                max_points=cfg.analysis.maps.max_points, seed=seed,
            )
            if not figures_in_report:
                plots.write_html(fig, workdir / "cluster_map.html")
            report.add_figure("Map", fig)
        report.add_figure("Cluster sizes", sizes)
    with timer("report"):
        report.sections.extend(analyses.sections)
        if cfg.analysis.report.enabled and write_report:
            report.write(workdir / "report.html")
    with timer("log"):
        tracking.log_artifacts(workdir)
        _log_model(preprocessing, clusterer, ds.X, labels)
    mlflow.log_metrics(timer.as_metrics())
    return RunResult(mlflow.active_run().info.run_id, labels, scores, dict(timer.seconds), report)


LABELS_BLOCK_ROWS = 1_000_000


def write_labels(path: Path, ds: data.Dataset, labels: np.ndarray, coords: np.ndarray) -> None:
    """``labels.parquet``: id, cluster, x, y, and the true label and text where known, written a
    block of rows at a time (one row group each), so no table of every row is built in memory."""
    n = labels.shape[0]
    writer = None
    try:
        for start in range(0, n, LABELS_BLOCK_ROWS):
            rows = slice(start, min(n, start + LABELS_BLOCK_ROWS))
            table = {"id": np.asarray(ds.ids[rows]), "cluster": labels[rows], "x": coords[rows, 0], "y": coords[rows, 1]}
            if ds.labels is not None:
                table["label"] = ds.label_strings(rows)
            if ds.texts is not None:
                table["text"] = np.asarray(ds.texts[rows]).astype(str)
            block = pa.table(table)
            if writer is None:
                writer = pq.ParquetWriter(path, block.schema, compression="zstd")
            writer.write_table(block)
    finally:
        if writer is not None:
            writer.close()


def _compute_map(cfg, reducer, max_points, Xp, ds, pre_cfg: dict, cache_dir: Path | None) -> np.ndarray:
    """2-D map of the clustered space, through the cache when it is on (cells share it)."""
    from embclust.sweep import cache

    seed = int(cfg.seed)
    if reducer is None or cache_dir is None:
        return maps.compute_map(reducer, Xp, max_points=max_points, seed=seed)
    coords, hit = cache.cached_map(
        ds.fingerprint,
        pre_cfg,
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
    cumulative = preprocess.cumulative_explained_variance(pca)
    mlflow.log_metric("pca_explained_variance", float(cumulative[-1]))
    client = mlflow.MlflowClient()
    now = int(time.time() * 1000)
    client.log_batch(
        mlflow.active_run().info.run_id,
        metrics=[Metric("pca_cumulative_variance", float(v), now, i + 1) for i, v in enumerate(cumulative)],
    )


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
    try:
        models.log_model(model, X[:5], labels[:5])
    except OSError as exc:
        where = f"{mlflow.active_run().info.artifact_uri}/model"
        raise path_error(exc, where, ARTIFACT_LOCATION, instead=ARTIFACT_LOCATION_INSTEAD) from None
    mlflow.set_tag("model_predicts", str(cluster.supports_predict(model)).lower())



def failure_message(exc: BaseException) -> tuple[str, bool]:
    """The one line that says why a run failed, and whether it is the user's to fix (no traceback kept).

    A write into the run's temporary folder that the file system refused names that file and
    ``TMPDIR``, where the run's artifacts are made before they are logged.
    """
    err = user_error(exc)
    if err is not None:
        return str(err), True
    temporary = _temporary_folder_failure(exc)  # before the store's check, which takes every full disk as its own
    if temporary is not None:
        return temporary, True
    store = tracking.store_failure_message(exc, mlflow.get_tracking_uri())  # full disk, locked, server gone
    if store is not None:
        return store, True
    from hydra.errors import InstantiationException

    if isinstance(exc, InstantiationException):  # a config group's _target_ or its keys (e.g. +clusterer.n_cluster=5)
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        where = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("full_key:")), None)
        said = " ".join(line for line in lines if not line.startswith("full_key:")) or type(exc).__name__
        return said + (f"; check the keys under {where}" if where else ""), True
    return f"{type(exc).__name__}: {exc}".replace("\n", " "), False


# Frames, innermost first, searched for the file a write that names none was writing.
_WRITING_FRAMES = 4


def _temporary_folder_failure(exc: BaseException) -> str | None:
    """The line for a write the run's temporary folder (``TMPDIR``) refused: the file the error names,
    else, for a full disk, the file under that folder that the failing code was writing."""
    chain, seen = [], exc
    while seen is not None and len(chain) < 20:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    folder = tempfile.gettempdir()
    os_error = next((e for e in chain if isinstance(e, OSError) and getattr(e, "filename", None)), None)
    if os_error is not None and str(os_error.filename).startswith(folder):
        return str(path_error(os_error, os_error.filename, "the temporary folder, TMPDIR"))
    full = next((e for e in chain if isinstance(e, OSError) and e.errno == errno.ENOSPC and not getattr(e, "filename", None)),
                None)
    if full is None:
        return None
    # The temporary folder is gone by now (and its space freed): the frames that failed say where
    # they wrote, innermost first.
    frames, tb = [], full.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    # Only the frames nearest the failed write, and only a file in a run's own folder (embclust-*):
    # outer frames hold other paths (the run's folder itself, an input file that is only read).
    ours = os.path.join(folder, "embclust-")
    written = next((os.fspath(v) for frame in reversed(frames[-_WRITING_FRAMES:]) for v in list(frame.f_locals.values())
                    if isinstance(v, (str, os.PathLike)) and os.fspath(v).startswith(ours)
                    and os.sep in os.fspath(v)[len(ours):]), None)
    if written is None:
        return None
    return (f"the disk is full: cannot write {written} (the temporary folder, TMPDIR, where a run's artifacts are "
            "made before they are logged): free some space there, or set TMPDIR to a folder on a larger disk")


def record_failure(exc: BaseException, timer: stages.StageTimer, run_id: str, prefix: str) -> str:
    """Tag the active run with the error, end it FAILED and log one line; return the message."""
    message, users = failure_message(exc)
    try:
        tracking.store.write_after_lock(lambda: mlflow.set_tag("error", message[:5000]), mlflow.get_tracking_uri())
    except Exception:
        # Refused twice (a store held locked longer still): the run's end waits for the lock
        # once more, and once it is written the store is free for the error, right after it.
        # Where the end is refused too, the run is left to the next run on the store to close.
        mlflow.end_run(status="FAILED")
        mlflow.MlflowClient().set_tag(run_id, "error", message[:5000])
        raise
    if not users:
        with contextlib.suppress(OSError):  # the disk that failed the run may refuse this too
            mlflow.log_text(traceback.format_exc(), "error.txt")
    mlflow.log_metrics(timer.as_metrics())
    mlflow.end_run(status="FAILED")
    log.error("%srun %s FAILED: %s", prefix, run_id, message)
    return message


def complete_best_cell(run_id: str, plan: SweepPlan) -> Report | None:
    """Give a light cell the full treatment (map, analyses, tables, model) in its own run.

    Uses the cell's logged ``config.yaml`` and the sweep's shared work, so its labels and scores
    are the ones it was ranked by. Its figures are returned as a report for the sweep's parent
    (one self-contained ``report.html`` per sweep, not one more copy of plotly.js per cell). A
    failure here is tagged ``report_error`` on the cell, which keeps its FINISHED status and scores.
    """
    with tempfile.TemporaryDirectory(prefix="embclust-best-config-") as tmp:
        cfg = OmegaConf.load(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="config.yaml", dst_path=tmp))
    client = mlflow.MlflowClient()
    overrides = client.get_run(run_id).data.tags.get("sweep_cell", "").split()
    timer = stages.StageTimer(STAGES, prefix="best cell ")
    # Reopened by this process, which a concurrent run must not take for the gone worker that made it.
    client.set_tag(run_id, tracking.PROCESS_TAG, owner_token())
    try:
        with mlflow.start_run(run_id=run_id):
            try:
                with tempfile.TemporaryDirectory(prefix="embclust-best-") as tmp:
                    result = execute(cfg, Path(tmp), timer, plan=plan, in_sweep=False, overrides=overrides, write_report=False,
                                     data_analyses=False, release_shared=True, fitted=shared.fitted_clustering(run_id),
                                     known_scores=client.get_run(run_id).data.metrics)
                mlflow.set_tag("sweep_best", "true")
                if "report_error" in client.get_run(run_id).data.tags:  # of an earlier, stopped attempt
                    client.delete_tag(run_id, "report_error")
                return result.report
            except (signals.Stopped, Exception) as exc:
                stopped = exc if isinstance(exc, signals.Stopped) else signals.received  # or a library's error for it
                if stopped is not None:
                    # Its light result (scores, labels) was complete: it stays FINISHED, the report is what stopped.
                    with signals.ignored():
                        mlflow.set_tag("report_error", f"full report {stopped}")
                        mlflow.end_run(status="FINISHED")
                    raise stopped from None
                message, _ = failure_message(exc)
                log.error("best cell %s: full report failed: %s", run_id, message)
                try:  # the store that failed the report (full, locked) may refuse this too
                    mlflow.set_tag("report_error", message[:5000])
                except Exception as tag_error:  # noqa: BLE001 - the run must still end FINISHED below
                    log.error("best cell %s: could not record the failure: %s", run_id, first_line(tag_error))
                return None
            finally:
                # The sweep's last use of the data: the summary's figures come from the cells' runs.
                shared.forget_dataset()
    except Exception as exc:
        uri = mlflow.get_tracking_uri()
        if tracking.store.locked_store_message(exc, uri) is None:
            raise
        # Reopened above, the cell would stay RUNNING until the next run closes it: its end,
        # refused by a store another process held locked, gets one more wait.
        log.warning("the MLflow store is locked by another process: waiting once more to close the best cell %s", run_id)
        with contextlib.suppress(Exception):
            client.set_terminated(run_id, "FINISHED")
        raise


# --------------------------------------------------------------------------- light sweep cells
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
CELL_STAGES = ("load", "preprocess", "cluster", "score", "log")


def identity_params(cfg: DictConfig, overrides: list[str]) -> dict[str, str]:
    """The cell's swept keys and :data:`IDENTITY_PARAMS`, as MLflow params."""
    flat = flatten_config(cfg)
    keys = [k for k in IDENTITY_PARAMS if k in flat]
    for item in overrides:
        key = item.split("=", 1)[0].lstrip("+~")
        if key in flat and key not in keys:
            keys.append(key)
    return {k: str(flat[k])[:6000] for k in keys}


def run_light_cell(cfg: DictConfig, plan: SweepPlan, cell: SweepCell, threads: int | None = None) -> CellOutcome:
    """Run one light cell under the sweep's parent; return its ranking metric, or why it failed."""
    client = mlflow.MlflowClient()
    # One line per cell (when it is done); the stages are logged at DEBUG.
    timer = stages.StageTimer(CELL_STAGES, prefix=f"{cell.position} ", level=logging.DEBUG)
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
            # what the same run alone would record: its overrides, and where relative paths are read from
            "hydra_overrides": cell.overrides or "(none)",
            "working_dir": os.getcwd(),
        },
    )


def _run_cell(client, run_id: str, cfg: DictConfig, plan: SweepPlan, cell: SweepCell, timer, threads, release) -> CellOutcome:
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
                tracking.log_artifacts(folder, run_id)
            datasets.log_dataset_input(ds, cfg.dataset.get("path"), run_id=run_id)
        client.set_terminated(run_id, "FINISHED")
        shared.keep_if_best(run_id, scores.values.get(plan.rank_metric, math.nan), plan.rank_metric, clustering)
        del clustering
        shared.release_free_memory()  # the cell's temporaries: keep the sweep's memory flat
    except Exception as exc:  # noqa: BLE001 - a failed cell is recorded and the sweep goes on
        if signals.received is not None:  # a stop signal that a library turned into an error of its own
            _end_killed(client, run_id, cell, str(signals.received))
            raise signals.received from None
        message, users = failure_message(exc)
        tracking.store.write_after_lock(
            lambda: client.log_batch(run_id, params=params, tags=[RunTag("error", message[:5000])]), mlflow.get_tracking_uri()
        )
        if not users:
            with contextlib.suppress(OSError):
                client.log_text(run_id, traceback.format_exc(), "error.txt")
        client.set_terminated(run_id, "FAILED")
        log.error("%s: run %s FAILED: %s", cell.position, run_id, message)
        return CellOutcome(math.nan, message)
    except BaseException as exc:
        _end_killed(client, run_id, cell, str(exc) if isinstance(exc, signals.Stopped) else f"stopped: {type(exc).__name__} {exc}".strip())
        raise
    value = scores.values.get(plan.rank_metric, math.nan)
    log.info(
        "%s done in %.1fs: %s=%.4g (run %s)", cell.position, sum(timer.seconds.values()), plan.rank_metric, value, run_id
    )
    return CellOutcome(value)


def _end_killed(client, run_id: str, cell: SweepCell, reason: str) -> None:
    with signals.ignored():  # a second signal while this is recorded must not leave the run RUNNING
        client.set_tag(run_id, "error", reason[:5000])
        client.set_terminated(run_id, "KILLED")
        log.error("%s: run %s KILLED: %s", cell.position, run_id, reason)


def _fit_and_score(cfg: DictConfig, plan: SweepPlan, timer: stages.StageTimer):
    from embclust import cluster, validate

    validate.validate_config(cfg)
    stages.check_engine(cfg)
    stages.configure_memory(cfg)
    cache_dir = stages.cache_dir(cfg, in_sweep=True)
    with timer("load"):
        ds, hit = stages.load_dataset(cfg, cache_dir)
        umap_components = stages.resolve_umap_before_clustering(cfg, ds)
        clusterer = instantiate(cfg.clusterer)
        check_clusterer_on(clusterer, ds)
        stability.check_sizes(cfg.metrics.get("stability"), ds.n_samples, clusterer)
        cluster.check_implementation(cfg.get("cluster_implementation"))
        validate.check_quadratic_work(cfg, ds.n_samples)
        validate.check_in_memory_clusterer(
            cfg, ds.n_samples, int(cfg.preprocess.get("umap_components") or cfg.preprocess.get("pca_components") or ds.n_features)
        )
    with timer("preprocess"):
        pre_cfg = stages.preprocess_config(cfg, ds)
        features = stages.fit_features(pre_cfg, ds, cache_dir, plan.max_pca_components)
    with timer("cluster"):
        backend = _backend(cfg)
        passes = stages.engine_rows(cfg, ds, features)
        clustering = stages.fit_clustering(
            clusterer, features.X, backend, cfg.get("cluster_implementation", "auto"), stages.kmeans_sample(cfg), passes
        )
    with timer("score"):
        scoring = stages.scoring_for(cfg, ds, pre_cfg.get("normalize", "l2"), backend)
        scores = stages.score(features.X, clustering, ds.labels, scoring, passes)
        scores.values.update(
            stability.stability_from_config(cfg.clusterer, features.X, clustering.labels, cfg.metrics.get("stability"), int(cfg.seed))
        )
        pca = features.preprocessing.named_steps.get("pca")
        if pca is not None and pca != "passthrough":
            scores.values["pca_explained_variance"] = float(preprocess.cumulative_explained_variance(pca)[-1])
    tags = {
        "data_fingerprint": ds.fingerprint,
        **({} if ds.labels_fingerprint is None else {"labels_fingerprint": ds.labels_fingerprint}),
        "threads": str(blocks.threads_now()),
        "data_n_samples": ds.n_samples,
        "data_n_features": ds.n_features,
        "preprocess_source": features.how + (" (cached)" if features.cache_hit else ""),
        **clustering.tags(),
        "silhouette_implementation": "torch" if backend == "torch" else silhouette.IMPLEMENTATION,
        "backend": backend,
        "normalize": pre_cfg["normalize"],
        "umap_before_clustering": str(umap_components or "none"),
        **_engine_tags(passes),
    }
    scores.values.update(_driver_reads(ds.X, features.X))
    if hit is not None:
        tags["data_cache"] = "hit" if hit else "miss"
    if stages.noise_warning(scores.values.get("noise_fraction"), cfg):
        tags["high_noise"] = f"{scores.values['noise_fraction']:.3f}"
    return scores, tags, ds, clustering


def _engine_tags(passes) -> dict[str, str]:
    """Where the passes over the rows ran (and how many ran on Ray)."""
    return {"engine": "local"} if passes is None else {"engine": "ray", "engine_passes": str(passes.passes)}


def _driver_reads(*views) -> dict[str, float]:
    """``engine/driver_rows_read``: rows of engine=ray's row views that the driver read itself
    (a few rows; every other read is a pass on the cluster); nothing for engine=local."""
    counted = [v.rows_read_here for v in views if not isinstance(v, np.ndarray) and hasattr(v, "rows_read_here")]
    return {"engine/driver_rows_read": float(sum(counted))} if counted else {}


def _log_engine(passes, workdir: Path) -> None:
    """Tag where the passes over the rows ran, what engine=ray's passes took, and where its
    workers' labels dataset went (parts they sent back are saved into ``workdir`` for logging)."""
    mlflow.set_tags(_engine_tags(passes))
    if passes is None:
        return
    mlflow.log_metric("time/engine_passes_s", passes.seconds)
    sink = passes.labels_sink
    if sink is None or not sink.parts:
        return
    sink.save_returned(workdir)
    size = sink.size()
    mlflow.set_tag("labels_dataset", f"labels/: {len(sink.parts)} parquet parts (id, cluster, distance), "
                                     f"{size / 1e6:.1f} MB, {sink.how}")
    log.info("labels: %d rows in %d parquet parts (%.1f MB), %s", passes.shape[0], len(sink.parts), size / 1e6, sink.how)


def _backend(cfg: DictConfig) -> str:
    return torch_backend.resolve_backend(cfg.get("backend"))
