"""The core stages every run and every sweep cell goes through: load, preprocess, cluster, score.

Config is read here, at the edge, and turned into typed values (:class:`~embclust.data.Dataset`,
:class:`~embclust.sweep.shared.Features`, :class:`Clustering`, a scores dict) that the later
stages take. A single run adds maps, analyses and the report on top (``runner``); a light sweep
cell logs these results and stops (``sweep.cell``).
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from embclust import cluster, data, signals, validate
from embclust.cluster import kmeans
from embclust.errors import ConfigError
from embclust.explain import duplicates
from embclust.scoring import metrics
from embclust.sweep import shared
from embclust.sweep.shared import Features

log = logging.getLogger(__name__)

# Keys that embclust reads itself; the rest of the node builds the object via _target_.
REDUCER_OPTIONS = ("max_points",)
DATASET_OPTIONS = ("on_invalid", "sample_size", "dedupe")


# A stage that takes longer says so on stderr this often, so a long step is never silent.
STILL_RUNNING_S = 20.0


class StageTimer:
    """Times each stage and reports progress as ``[k/n] stage`` on stderr (logging)."""

    def __init__(self, stages: tuple[str, ...], prefix: str = "", level: int = logging.INFO) -> None:
        self.stages = stages
        self.prefix = prefix
        self.level = level
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str):
        signals.checkpoint()  # a stop signal lost in a finaliser during the last stage ends the run here
        log.log(
            self.level,"%s[%d/%d] %s", self.prefix, self.stages.index(stage) + 1, len(self.stages), stage)
        start = time.perf_counter()
        done = threading.Event()
        threading.Thread(target=self._still_running, args=(stage, start, done), daemon=True,
                         name=f"embclust-progress-{stage}").start()
        try:
            yield
        finally:
            done.set()
            self.seconds[stage] = time.perf_counter() - start

    def _still_running(self, stage: str, start: float, done: threading.Event) -> None:
        """Say every STILL_RUNNING_S that a long stage (a UMAP fit, a large load) is still at work."""
        while not done.wait(STILL_RUNNING_S):
            log.log(self.level, "%s%s: still running (%.0f s)", self.prefix, stage, time.perf_counter() - start)

    def as_metrics(self) -> dict[str, float]:
        return {f"time/{stage}_s": round(sec, 4) for stage, sec in self.seconds.items()}


def instantiate_with_options(node: DictConfig, option_keys: tuple[str, ...], **kwargs) -> tuple[Any, dict]:
    """Instantiate ``node`` (with ``kwargs``) without ``option_keys``; return (object or None, options)."""
    container = OmegaConf.to_container(node, resolve=True)
    options = {k: container.pop(k) for k in option_keys if k in container}
    return (instantiate(container, **kwargs) if "_target_" in container else None), options


def build_reducer(reducer_cfg: DictConfig | None):
    """Instantiate the 2-D reducer, or None for ``reducer=none``; returns (reducer, max_points)."""
    if reducer_cfg is None:
        return None, None
    if str(reducer_cfg.get("_target_", "")).startswith("umap."):
        from embclust import compiled

        compiled.enable_umap_cache()
    reducer, options = instantiate_with_options(reducer_cfg, REDUCER_OPTIONS)
    if reducer is not None:
        validate.check_estimator_params(reducer, "reducer")
    return reducer, options.get("max_points")


def expand_home_paths(cfg: DictConfig) -> None:
    """``~`` in the dataset's and the cache's paths means the home folder, as in a shell (Hydra
    passes ``dataset.path="~/emb.npy"`` on as it is)."""
    for section in ("dataset", "cache"):
        node = cfg.get(section)
        if not isinstance(node, DictConfig):
            continue
        for key, value in OmegaConf.to_container(node, resolve=False).items():  # interpolations stay
            if isinstance(value, str) and (value == "~" or value.startswith("~/")):
                node[key] = os.path.expanduser(value)


def cache_dir(cfg: DictConfig, in_sweep: bool) -> Path | None:
    """Cache folder when caching is on (``cache.enabled``; null = only in sweeps), else None."""
    enabled = cfg.cache.enabled
    if enabled is None:
        enabled = in_sweep
    if not enabled:
        return None
    folder = Path(cfg.cache.dir)
    try:  # a write probe: permissions alone say nothing for root or a read-only file system
        folder.mkdir(parents=True, exist_ok=True)
        os.rmdir(tempfile.mkdtemp(prefix=".probe-", dir=folder))
    except OSError as exc:
        # A cache is an optimisation: the run goes on without it, once warned.
        reason = "a file, not a folder" if folder.is_file() else exc.strerror or str(exc)
        if str(folder) not in _unwritable_cache_dirs:
            _unwritable_cache_dirs.add(str(folder))
            log.warning(
                "cache.dir=%r cannot be written (%s): going on without the cache; point cache.dir (or "
                "EMBCLUST_CACHE_DIR) at a folder you can write to, or set cache.enabled=false",
                str(cfg.cache.dir), reason,
            )
        return None
    return folder


_unwritable_cache_dirs: set[str] = set()


def load_dataset(cfg: DictConfig, cache_dir: Path | None) -> tuple[data.Dataset, bool | None]:
    """Load and validate the configured dataset, once per process and (cache on) once per machine.

    Returns the dataset and whether it came from a cache (None when caching is off).
    """
    seed = int(cfg.seed)
    threshold = float(cfg.analysis.duplicates.threshold)

    on_ray = str(cfg.get("engine") or "local") == "ray"

    def load() -> data.Dataset:
        if on_ray:  # the rows stay in their files, read where the passes run
            ds, options = _dataset_on_ray(cfg.dataset)
        else:
            ds, options = instantiate_with_options(cfg.dataset, DATASET_OPTIONS)
        ds = data.validate_dataset(ds, on_invalid=options.get("on_invalid", "error"))
        ds = data.subsample(ds, options.get("sample_size"), seed=seed)
        if options.get("dedupe"):
            ds = drop_near_duplicates(ds, threshold, seed)
        return ds

    key = {**OmegaConf.to_container(cfg.dataset, resolve=True), "_seed": seed, "_dedupe_threshold": threshold,
           "_engine": "ray" if on_ray else "local"}
    if on_ray:
        cache_dir = None  # the workers read the data's own files: a cached copy would lose where they are
    return shared.load_dataset(key, cache_dir, load)


# The loaders that can leave a file's rows where they are (rows_on_driver=False).
_ROWS_IN_FILES = ("embclust.data.loaders.load_npy", "embclust.data.loaders.load_table")
_ENGINE_RAY_DATA = ("engine=ray needs rows that workers read from the files themselves: dataset=npy (.npy) or "
                    "dataset=parquet (a file, folder or glob), every row (no dataset.sample_size, dedupe or rows "
                    "dropped by on_invalid=drop); use engine=local")


def _dataset_on_ray(node: DictConfig) -> tuple[data.Dataset, dict]:
    """The dataset of ``node`` for engine=ray: ids, labels and texts here, the rows a view of their
    files (:class:`embclust.engine.ray_rows.RayRows`) that no step reads whole on the driver."""
    from embclust.engine.ray_rows import RayRows

    target = str(node.get("_target_", ""))
    if target not in _ROWS_IN_FILES or node.get("sample_size") or node.get("dedupe"):
        raise ConfigError(_ENGINE_RAY_DATA)
    ds, options = instantiate_with_options(node, DATASET_OPTIONS, rows_on_driver=False)
    if ds.source is None:
        raise ConfigError(_ENGINE_RAY_DATA)
    ds.X = RayRows(ds.source)
    return ds, options


def drop_near_duplicates(ds: data.Dataset, threshold: float, seed: int) -> data.Dataset:
    """Keep the first row of each group of rows with cosine similarity >= ``threshold``.

    It needs every row in memory at once (unit rows and a nearest-neighbour index over them,
    about three copies of the data): refused before any work above half the machine's memory.
    """
    memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    per_row = 3 * 4 * max(ds.n_features, 1)
    if ds.n_samples * per_row > memory / 2:
        rows = int(memory / 2 / per_row)
        raise ConfigError(
            f"dataset.dedupe=true on {ds.n_samples} rows builds a nearest-neighbour index over all of them (about "
            f"{ds.n_samples * per_row / 1e9:.1f} GB), more than half of this machine's {memory / 1e9:.1f} GB: set "
            f"dataset.sample_size={rows} (or fewer) or dataset.dedupe=false"
        )
    pairs = duplicates.near_duplicate_pairs(ds.X, threshold=threshold, seed=seed)
    drop = duplicates.rows_to_drop(pairs, ds.n_samples)
    if drop.size == 0:
        return ds
    log.info("dataset '%s': dropping %d near-duplicate rows (cosine >= %s)", ds.name, drop.size, threshold)
    keep = np.setdiff1d(np.arange(ds.n_samples), drop, assume_unique=True)
    out = data.take_rows(ds, keep)
    out.n_dropped_duplicates = ds.n_dropped_duplicates + int(drop.size)
    return out


def resolve_umap_before_clustering(cfg: DictConfig, ds: data.Dataset) -> int | None:
    """Turn ``preprocess.umap_components: auto`` into this run's value (in ``cfg``), saying why on stderr.

    See :func:`embclust.preprocess.resolve_umap_components`: UMAP to 5 dimensions before a density
    clusterer on embeddings, no UMAP otherwise.
    """
    from embclust import preprocess

    value = cfg.preprocess.get("umap_components")
    clustered = cfg.preprocess.get("pca_components") or ds.n_features
    resolved, message = preprocess.resolve_umap_components(
        value, cfg.clusterer.get("_target_"), int(min(int(clustered), ds.n_features)), ds.from_tabular
    )
    if value == "auto":
        if resolved is not None and ds.n_samples < int(resolved) + 2:  # UMAP's spectral start needs n_components + 2 rows
            log.info("preprocess.umap_components=auto: %d rows are too few for UMAP to %d dimensions; the data is "
                     "clustered as it is", ds.n_samples, resolved)
            resolved = message = None
        cfg.preprocess.umap_components = resolved
        if message:
            log.info(message)
    return resolved


# Above this fraction of rows called noise a run says so (stderr and tag ``high_noise``).
HIGH_NOISE_FRACTION = 0.3


def noise_warning(noise_fraction: float | None, cfg: DictConfig) -> str | None:
    """One line when a density clusterer called more than ``HIGH_NOISE_FRACTION`` of the rows noise."""
    if noise_fraction is None or not noise_fraction > HIGH_NOISE_FRACTION:
        return None
    name = str(cfg.clusterer.get("_target_", "")).rsplit(".", 1)[-1]
    fixes = []
    if not cfg.preprocess.get("umap_components"):
        fixes.append("preprocess.umap_components=5 (UMAP before clustering)")
    for key in ("min_samples", "min_cluster_size"):
        if cfg.clusterer.get(key) is not None:
            fixes.append(f"a smaller clusterer.{key} (now {cfg.clusterer[key]})")
    if noise_fraction >= 1.0:
        called, scored = "every row", "no cluster: nothing to score"
    elif noise_fraction > 0.99:
        called, scored = "over 99% of the rows", "its scores describe the other under 1% only"
    else:
        called, scored = f"{noise_fraction:.0%} of the rows", f"its scores describe the other {1 - noise_fraction:.0%} only"
    return (
        f"{name} called {called} noise (label -1); {scored}"
        + (f". To cluster more of them: {', or '.join(fixes)}" if fixes else "")
    )


def preprocess_config(cfg: DictConfig, ds: data.Dataset) -> dict:
    """The resolved ``preprocess`` node as a plain dict (what decides the clustered space).

    ``normalize: auto`` becomes the normalisation chosen for this data (see
    :func:`embclust.preprocess.resolve_normalize`).
    """
    from embclust import preprocess

    pre_cfg = OmegaConf.to_container(cfg.preprocess, resolve=True)
    pre_cfg["normalize"], _ = preprocess.resolve_normalize(pre_cfg.get("normalize", "l2"), ds.n_features, ds.from_tabular, ds.X)
    return pre_cfg


def fit_features(
    pre_cfg: dict, ds: data.Dataset, cache_dir: Path | None, max_pca_components: int | None = None
) -> Features:
    """Fit the preprocessing (or reuse the sweep's shared PCA); see :func:`shared.features`."""
    return shared.features(pre_cfg, ds, cache_dir, max_pca_components)


@dataclass
class Clustering:
    """A fitted clusterer, its labels (-1 = noise) and which implementation fitted it."""

    estimator: Any
    labels: np.ndarray
    implementation: str
    sample_size: int | None = None  # rows KMeans's restarts ran on; None: all rows
    restarts: int | None = None  # KMeans restarts run on the sample (auto)
    refinement: str | None = None  # how auto refined on all rows (kmeans.IN_MEMORY or PASSES)

    def tags(self) -> dict[str, str]:
        """MLflow tags saying how the clustering was fitted."""
        tags = {"cluster_implementation": self.implementation}
        if self.implementation == kmeans.SAMPLE_IMPLEMENTATION:
            tags["kmeans_sample_size"] = "all" if self.sample_size is None else str(self.sample_size)
            if self.restarts is not None:
                tags["kmeans_restarts"] = str(self.restarts)
            if self.refinement is not None:
                tags["kmeans_refinement"] = self.refinement
        return tags


def check_engine(cfg: DictConfig) -> str:
    """``engine`` (local or ray), and for ray what the config must be, before any work."""
    from embclust.engine import ENGINES

    engine = str(cfg.get("engine") or "local")
    if engine not in ENGINES:
        raise ConfigError(f"engine={engine!r} is not allowed (allowed: {', '.join(ENGINES)})")
    if engine == "ray":
        target = str(cfg.clusterer.get("_target_", ""))
        implementation = str(cfg.get("cluster_implementation") or "auto")
        if target != "sklearn.cluster.KMeans" or implementation != "auto":
            has = (f"clusterer._target_={target}" if target != "sklearn.cluster.KMeans"
                   else f"cluster_implementation={implementation}")
            raise ConfigError("engine=ray runs KMeans's passes over the rows (clusterer=kmeans, cluster_implementation=auto); "
                              f"this run has {has}: use engine=local")
        umap = cfg.preprocess.get("umap_components")
        if umap not in (None, "auto"):
            raise ConfigError("engine=ray applies row-wise preprocessing on the workers; UMAP before clustering is not: "
                              "set preprocess.umap_components=null, or use engine=local")
        ids_path = str(cfg.dataset.get("ids_path") or "")
        if ids_path.lower().endswith(".npz"):
            raise ConfigError(f"engine=ray reads a block's ids where it reads its rows: dataset.ids_path={ids_path} is a "
                              ".npz, which every task would decompress whole; save the ids with numpy.save as a .npy")
    return engine


def engine_rows(cfg: DictConfig, ds: data.Dataset, features: Features, labels_artifact_uri: str | None = None):
    """The rows KMeans's passes run on: None for ``engine=local``; for ``engine=ray`` a remote row
    set that Ray workers read from the data's files and preprocess themselves, or one line
    saying why this run cannot use it. ``labels_artifact_uri``: the run's artifact location, under
    which the last pass's workers write the ``labels/`` dataset (id, cluster, distance)."""
    if check_engine(cfg) == "local":
        return None
    from embclust.engine.ray_rows import RayRows
    from embclust.engine.rows import TransformedRows

    if ds.source is None or ds.source.n_rows != ds.n_samples:
        raise ConfigError(_ENGINE_RAY_DATA)
    if features.preprocessing.named_steps.get("umap", "passthrough") != "passthrough":
        raise ConfigError("engine=ray applies row-wise preprocessing on the workers; UMAP before clustering is not: "
                          "set preprocess.umap_components=null, or use engine=local")
    rows = getattr(features.X, "source", None)
    if rows is None:
        rows = TransformedRows(ds.source, features.preprocessing, int(features.X.shape[1]))
    sink = None
    if labels_artifact_uri is not None:
        from embclust.engine.labels import LabelsSink, writable_folder
        from embclust.engine.ray_rows import connect, workers_on_this_machine

        connect()
        sink = LabelsSink(rows, *writable_folder(labels_artifact_uri, workers_on_this_machine()))
    return RayRows(rows, sink)


def configure_memory(cfg: DictConfig) -> None:
    """Apply ``memory.spill_above_mb`` (where row-sized matrices live) for this run."""
    from embclust import blocks

    node = cfg.get("memory") or {}
    blocks.set_spill_above_mb(node.get("spill_above_mb", blocks.DEFAULT_SPILL_ABOVE_MB))


def kmeans_sample(cfg: DictConfig) -> kmeans.SampleSettings:
    """The ``kmeans`` settings of ``cluster_implementation=auto`` (defaults where a config lacks them)."""
    node = cfg.get("kmeans") or {}
    defaults = kmeans.SampleSettings()
    return kmeans.SampleSettings(
        int(node.get("sample_per_cluster", defaults.sample_per_cluster)),
        int(node.get("min_sample", defaults.min_sample)),
        _restarts_per_init(node.get("restarts_per_init", "auto")),
        _optional_number(node.get("refine_tol", defaults.refine_tol), "kmeans.refine_tol",
                         lambda x: 0 <= x < 1, "a fraction in [0, 1), e.g. 1e-4"),
        _optional_number(node.get("max_restart_work", defaults.max_restart_work), "kmeans.max_restart_work",
                         lambda x: x >= 1, "a number >= 1, e.g. 5e8"),
    )


def _restarts_per_init(value) -> int | None:
    """``kmeans.restarts_per_init``: None for auto (or null), else the int (validate_config checked it)."""
    return None if value is None or str(value) == "auto" else int(value)


def _optional_number(value, key: str, allowed, wanted: str) -> float | None:
    """``value`` as a float, or None; :class:`ConfigError` naming ``key`` unless ``allowed(number)``."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not allowed(number):
        raise ConfigError(f"{key}={value!r} must be null or {wanted}")
    return number


def fit_clustering(
    clusterer, X: np.ndarray, backend: str, implementation: str = "auto", sample: kmeans.SampleSettings | None = None,
    passes=None,
) -> Clustering:
    """Fit ``clusterer`` on ``X`` with the chosen backend (torch for KMeans, else the CPU path);
    ``passes``: the remote rows KMeans's passes over all rows run on (engine=ray)."""
    if backend == "torch":
        from embclust.scoring import torch_backend

        labels = torch_backend.fit_clusterer(clusterer, X)
        return Clustering(clusterer, labels, "torch")
    fitted = cluster.fit(clusterer, X, implementation, sample, passes)
    shared.release_free_memory()  # the fit's temporaries (seeding copies), before scoring adds its own
    return Clustering(fitted.estimator, fitted.labels, fitted.implementation, fitted.sample_size, fitted.restarts,
                      fitted.refinement)


@dataclass
class Scoring:
    """How a run is scored: the shared sample and, when wanted, the shared reference space."""

    sample_rows: np.ndarray
    reference: Any = None  # scoring.reference.ReferenceSpace or None
    backend: str = "cpu"


def scoring_for(cfg: DictConfig, ds: data.Dataset, normalize: str, backend: str) -> Scoring:
    """The scoring sample (same rows in every cell) and reference space for this data."""
    seed = int(cfg.seed)
    rows = shared.scoring_rows(ds.n_samples, cfg.metrics.silhouette_sample_size, seed)
    reference = None
    ref_rows = cfg.metrics.get("reference_sample_size", validate.DEFAULT_REFERENCE_SAMPLE_SIZE)
    if cfg.metrics.get("reference_space", True) and ref_rows:
        reference = shared.reference_space(ds, normalize, rows, int(ref_rows), seed)
    return Scoring(rows, reference, backend)


@dataclass
class Scores:
    """Metrics of one clustering and the per-point silhouette they were computed from."""

    values: dict[str, float] = field(default_factory=dict)
    silhouette: tuple[np.ndarray, np.ndarray] | None = None


def score(X: np.ndarray, clustering: Clustering, true_labels: np.ndarray | None, scoring: Scoring,
          passes=None) -> Scores:
    """Silhouette / CH / DB in the clustered space and the reference space, and agreement scores.
    ``passes``: the remote rows of engine=ray, where CH and DB's passes then run (each block's
    labels given again by the fitted KMeans's centres, not shipped)."""
    if scoring.backend == "torch":
        from embclust.scoring import torch_backend

        values, silhouette = torch_backend.score_clustering(
            X, clustering.labels, true_labels, sample_rows=scoring.sample_rows, return_silhouette_values=True
        )
    else:
        block_labels = None
        if passes is not None and passes.passes == 0:  # the fit ran no pass there (data no larger than its sample)
            passes = None
        if passes is not None:
            from embclust.cluster.lloyd import NearestCentre

            block_labels = NearestCentre(clustering.estimator.cluster_centers_)
        values, silhouette = metrics.score_clustering(
            X, clustering.labels, true_labels, sample_rows=scoring.sample_rows, return_silhouette_values=True,
            passes=passes, block_labels=block_labels,
        )
    if scoring.reference is not None:
        values.update(scoring.reference.score(clustering.labels))
    inertia = getattr(clustering.estimator, "inertia_", None)
    if inertia is not None:
        values["inertia"] = float(inertia)
    dbcv = density_validity(clustering.estimator)
    if dbcv is not None:
        values["dbcv"] = dbcv
    return Scores(values, silhouette)


def density_validity(estimator) -> float | None:
    """HDBSCAN's ``relative_validity_``: DBCV (density-based clustering validation, Moulavi et al.
    2014) computed on its minimum spanning tree, in [-1, 1], higher is better. Unlike silhouette
    it counts the rows called noise (each cluster's term is weighted by its share of all rows),
    so calling rows noise does not raise it. None for other clusterers, or without the tree
    (``gen_min_span_tree: false``) or with fewer than two clusters."""
    if type(estimator).__name__ != "HDBSCAN" or not getattr(estimator, "gen_min_span_tree", False):
        return None
    labels = np.asarray(getattr(estimator, "labels_", []))
    if np.unique(labels[labels >= 0]).size < 2:
        return None
    try:
        value = float(estimator.relative_validity_)
    except (AttributeError, ValueError, IndexError):  # no tree kept, or a degenerate one
        return None
    return value if np.isfinite(value) else None
