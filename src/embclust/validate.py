"""Checks of the configuration before any expensive stage, each failing with one line.

``validate_config`` runs before the MLflow run starts and checks every value a user can set;
``check_estimator_params`` checks a built estimator's parameters as its library would when
fitting; ``check_quadratic_work`` runs once the number of rows is known and refuses work whose
memory or time grows with the square of the rows, before it starts.
"""

from __future__ import annotations

import os

import re
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

from embclust.errors import ConfigError

# Metrics that a run logs and that can rank sweep cells (sweep.metric).
KNOWN_METRICS = (
    "silhouette",
    "calinski_harabasz",
    "davies_bouldin",
    "ari",
    "nmi",
    "v_measure",
    "purity",
    "n_clusters",
    "noise_fraction",
    "inertia",
    "dbcv",
)
BACKENDS = ("cpu", "torch", "auto")
LINKAGES = ("ward", "complete", "average", "single")
PCA_SOLVERS = ("auto", "full", "covariance_eigh", "arpack", "randomized")
# Defaults of the bounds when a config does not set them (conf/metrics/default.yaml does).
DEFAULT_MAX_QUADRATIC_ROWS = 25_000
DEFAULT_MAX_FULL_SILHOUETTE_ROWS = 50_000
# Rows of the reference-space sample (metrics.reference_sample_size): its distances, each pair
# once in float32, are 55 MB at 5,000 rows.
DEFAULT_REFERENCE_SAMPLE_SIZE = 5_000

# The largest seed numpy's RandomState (scikit-learn's random_state) takes.
SEED_MAX = 2**32 - 1

# (key, smallest allowed int, null allowed): integer options checked when the key exists.
_INT_KEYS = (
    ("seed", 0, False),
    ("dataset.sample_size", 2, True),
    ("preprocess.pca_components", 1, True),
    ("preprocess.fit_sample_size", 2, True),
    ("memory.spill_above_mb", 0, True),
    ("preprocess.umap_components", 1, True),
    ("preprocess.umap_n_neighbors", 2, False),
    ("clusterer.n_clusters", 2, False),
    ("clusterer.min_cluster_size", 2, False),
    ("clusterer.min_samples", 1, True),
    ("clusterer.n_init", 1, False),
    ("kmeans.sample_per_cluster", 1, False),
    ("kmeans.min_sample", 2, False),
    ("kmeans.restarts_per_init", 1, False),
    ("clusterer.max_iter", 1, False),
    ("clusterer.batch_size", 1, False),
    ("dataset.batch_size", 1, False),
    ("reducer.max_points", 2, True),
    ("reducer.n_neighbors", 2, False),
    ("metrics.silhouette_sample_size", 2, True),
    ("metrics.reference_sample_size", 2, True),
    ("metrics.max_quadratic_rows", 2, False),
    ("metrics.max_full_silhouette_rows", 2, False),
    ("analysis.maps.max_points", 1, True),
    ("analysis.silhouette.sample_size", 1, False),
    ("analysis.dendrogram.sample_size", 2, False),
    ("analysis.duplicates.max_rows", 2, False),
    ("analysis.duplicates.max_export", 0, False),
    ("analysis.explain.max_samples", 2, False),
    ("analysis.explain.n_estimators", 1, False),
    ("analysis.explain.max_bin", 2, False),
    ("analysis.keywords.top_n", 1, False),
    ("analysis.profile.n_nearest", 1, False),
    ("analysis.composition.top", 1, False),
    ("analysis.dendrogram.truncate_p", 1, False),
    ("analysis.explain.n_components", 1, False),
    ("analysis.explain.min_cluster_size", 1, False),
    ("analysis.explain.max_clusters", 2, False),
    ("analysis.explain.shap_samples", 1, False),
    ("analysis.feature_profile.top", 1, False),
    ("analysis.feature_profile.max_features", 1, False),
    ("analysis.feature_profile.sample_size", 2, False),
    ("analysis.routing.n_queries", 1, False),
    ("metrics.stability.n_resamples", 1, False),
    ("metrics.stability.max_samples", 2, True),
    ("reducer.n_components", 1, False),
    ("clusterer.core_dist_n_jobs", 1, False),
)
# Integer keys that also take the word auto: scikit-learn's KMeans n_init, UMAP before a
# density clusterer on embeddings (embclust.preprocess.resolve_umap_components), and KMeans
# auto's restarts per n_init (embclust.cluster.kmeans.SampleSettings.per_init).
_AUTO_INT_KEYS = ("clusterer.n_init", "preprocess.umap_components", "kmeans.restarts_per_init")
# (key, lowest, whether the lowest itself is allowed): numbers checked when the key exists.
_NUMBER_KEYS = (
    ("reducer.min_dist", 0.0, True),
    ("reducer.spread", 0.0, False),
    ("reducer.perplexity", 0.0, False),
    ("preprocess.umap_min_dist", 0.0, True),
    ("clusterer.cluster_selection_epsilon", 0.0, True),
    ("clusterer.alpha", 0.0, False),
)
# (key, allowed values): choices checked when the key exists.
_CHOICE_KEYS = (
    ("backend", BACKENDS),
    ("engine", ("local", "ray")),
    ("sweep.metric", (*KNOWN_METRICS, "auto")),
    ("dataset.on_invalid", ("error", "drop")),
    ("dataset.encoding", ("onehot", "ordinal")),
    ("preprocess.normalize", ("auto", "l2", "standard", "none")),
    ("preprocess.svd_solver", PCA_SOLVERS),
    ("clusterer.linkage", LINKAGES),
    ("analysis.in_sweeps", ("light", "full")),
)
_BOOL_KEYS = (
    "sweep.resume", "dataset.dedupe", "metrics.reference_space", "clusterer.prediction_data",
    "clusterer.gen_min_span_tree",
)
# Groups whose ``enabled`` switches (``analysis.explain.enabled``, ...) are checked as booleans.
_SWITCH_GROUPS = ("analysis", "metrics")
_SWITCH_WORDS = {"analysis.dendrogram.enabled": ("auto",)}  # switches that take a word besides true / false
_MISSING = object()


def _value(cfg: DictConfig, key: str) -> Any:
    """The resolved value at dotted ``key``, ``_MISSING`` when the key is absent."""
    node: Any = cfg
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, DictConfig) or part not in node:
            return _MISSING
        try:
            node = node[part]
        except MissingMandatoryValue:
            raise ConfigError(_missing_message(".".join(parts[: i + 1]))) from None
        except InterpolationResolutionError as exc:
            raise ConfigError(f"{key}: cannot be resolved ({exc.msg if hasattr(exc, 'msg') else exc})") from None
    return node


def _missing_message(key: str) -> str:
    if key.endswith("path"):
        return f"{key} is required: pass {key}=FILE"
    if key.endswith("_columns"):  # a list: Hydra reads a=x,y as a sweep or an error, not as a list
        return f"{key} is required: pass '{key}=[a,b]' (the column names, quoted for the shell)"
    return f"{key} is required: pass {key}=VALUE"


def _skipped(key: str, skip: tuple[str, ...]) -> bool:
    """Whether ``key`` is one of ``skip`` or lies under one of them."""
    return any(key == s or key.startswith(s + ".") for s in skip)


def _check_missing(node: DictConfig, prefix: str = "", skip: tuple[str, ...] = ()) -> None:
    """Raise for the first ``???`` value, naming its key (OmegaConf would raise a raw error later)."""
    for key in node.keys():
        name = f"{prefix}{key}"
        if _skipped(name, skip):
            continue
        if OmegaConf.is_missing(node, key):
            raise ConfigError(_missing_message(name))
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            _check_missing(child, f"{name}.", skip)


def _switches(cfg: DictConfig) -> list[str]:
    """Dotted keys of every ``enabled`` option under the switch groups."""
    found = []

    def walk(node: DictConfig, prefix: str) -> None:
        for key in node.keys():
            child = node._get_node(key)
            if isinstance(child, DictConfig):
                walk(child, f"{prefix}{key}.")
            elif key == "enabled":
                found.append(f"{prefix}{key}")

    for group in _SWITCH_GROUPS:
        node = cfg.get(group) if group in cfg else None
        if isinstance(node, DictConfig):
            walk(node, f"{group}.")
    return found


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate_config(cfg: DictConfig, skip: tuple[str, ...] = ()) -> None:
    """Raise :class:`ConfigError` naming the first config value that is missing or not allowed.

    ``skip``: keys (or groups, e.g. ``clusterer``) left unchecked, with everything under them: a
    sweep checks what its cells share before the first cell runs, and each cell its swept values.
    """
    if "hydra" in cfg:  # Hydra's own node is checked by Hydra
        cfg = OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k != "hydra"])

    def checked(key: str) -> Any:
        return _MISSING if _skipped(key, skip) else _value(cfg, key)

    _check_missing(cfg, skip=skip)
    for key, minimum, nullable in _INT_KEYS:
        value = checked(key)
        if value is _MISSING or (value is None and nullable):
            continue
        if value is None and key == "clusterer.n_clusters" and checked("clusterer.distance_threshold") not in (_MISSING, None):
            continue  # agglomerative cut by distance: scikit-learn takes n_clusters=None with a distance_threshold
        if value == "auto" and key in _AUTO_INT_KEYS:
            continue
        if not _is_int(value) or value < minimum:
            allowed = f"{'null or ' if nullable else ''}{'auto or ' if key in _AUTO_INT_KEYS else ''}an integer >= {minimum}"
            raise ConfigError(f"{key}={value!r} must be {allowed}")
    seed = checked("seed")
    if _is_int(seed) and seed > SEED_MAX:  # it seeds scikit-learn's random_state, numpy's legacy RandomState
        raise ConfigError(f"seed={seed!r} must be an integer from 0 to {SEED_MAX}")
    for key, lowest, closed in _NUMBER_KEYS:
        value = checked(key)
        if value is _MISSING:
            continue
        number = not isinstance(value, bool) and isinstance(value, (int, float))
        if not number or value < lowest or (value == lowest and not closed):
            raise ConfigError(f"{key}={value!r} must be a number {'>=' if closed else '>'} {lowest:g}")
    for key, choices in _CHOICE_KEYS:
        value = checked(key)
        if value is not _MISSING and value not in choices:
            raise ConfigError(f"{key}={value!r} is not allowed (allowed: {', '.join(choices)})")
    for key in (*_BOOL_KEYS, *_switches(cfg)):
        value = checked(key)
        also = _SWITCH_WORDS.get(key, ())
        if value is not _MISSING and not isinstance(value, bool) and value not in also:
            allowed = ", ".join(("true", "false", *also)) if also else "true or false"
            raise ConfigError(f"{key}={value!r} is not allowed: must be {allowed}")
    enabled = checked("cache.enabled")
    if enabled is not _MISSING and enabled is not None and not isinstance(enabled, bool):
        raise ConfigError(f"cache.enabled={enabled!r} is not allowed: must be null, true or false")
    threshold = checked("analysis.duplicates.threshold")
    if threshold is not _MISSING and (
        isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1
    ):
        raise ConfigError(f"analysis.duplicates.threshold={threshold!r} is not allowed: must be a number in (0, 1]")
    name = checked("mlflow.experiment_name")
    if name is not _MISSING and (not isinstance(name, str) or not name.strip()):
        raise ConfigError(f"mlflow.experiment_name={name!r} is not allowed: must be a non-empty name")
    uri = checked("mlflow.tracking_uri")
    if uri is not _MISSING and (not isinstance(uri, str) or not uri.strip()):
        raise ConfigError(f"mlflow.tracking_uri={uri!r} is not allowed: must be a tracking URI such as sqlite:///mlflow.db")


def _size(n_bytes: float) -> str:
    return f"{n_bytes / 1e9:.1f} GB" if n_bytes >= 1e9 else f"{n_bytes / 1e6:.0f} MB"


# Clusterers that hold every row in memory, in float64, with structures of their own besides.
IN_MEMORY_CLUSTERERS = ("HDBSCAN", "AgglomerativeClustering", "DBSCAN", "OPTICS", "SpectralClustering")


def check_in_memory_clusterer(cfg: DictConfig, n_samples: int, n_columns: int, memory_bytes: int | None = None) -> None:
    """Refuse, before any work, a clusterer that needs all rows in memory when they would not fit.

    Such clusterers copy the clustered rows to float64 and build trees or graphs over them (at
    least twice the copy); above half of this machine's memory the run is refused, naming the
    sample key that bounds it, instead of being killed by the kernel later.
    """
    target = str((cfg.get("clusterer") or {}).get("_target_", "")).rsplit(".", 1)[-1]
    if target not in IN_MEMORY_CLUSTERERS:
        return
    if memory_bytes is None:
        memory_bytes = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    need = 2 * 8 * n_samples * n_columns
    if need > memory_bytes / 2:
        rows = max(2, int(memory_bytes / 2 / (2 * 8 * n_columns)))
        raise ConfigError(
            f"clusterer={target} holds all {n_samples} rows in memory ({n_columns} columns, about {_size(need)} with its "
            f"float64 copy), more than half of this machine's {_size(memory_bytes)}: set dataset.sample_size={rows} "
            "(or fewer), reduce the columns (preprocess.pca_components), or use clusterer=kmeans, which streams the rows"
        )


def check_quadratic_work(cfg: DictConfig, n_samples: int) -> None:
    """Refuse agglomerative linkage, full silhouette and a large reference sample above their row bounds.

    Agglomerative clustering (all linkages but single) holds the condensed distance matrix,
    n (n - 1) / 2 float64 values; single linkage and silhouette on all points compute n^2 distances.
    """
    metrics_cfg = cfg.get("metrics") or {}
    max_rows = int(metrics_cfg.get("max_quadratic_rows", DEFAULT_MAX_QUADRATIC_ROWS))
    clusterer = cfg.get("clusterer") or {}
    target = str(clusterer.get("_target_", ""))
    linkage = clusterer.get("linkage", "ward")
    max_full = int(metrics_cfg.get("max_full_silhouette_rows", DEFAULT_MAX_FULL_SILHOUETTE_ROWS))
    if target.rsplit(".", 1)[-1] == "AgglomerativeClustering" and linkage == "single" and n_samples > max_full:
        # A minimum spanning tree: no distance matrix held (so not the memory bound), but every pair
        # computed: bounded like the other O(n^2)-time step, 17 s at 30,000 rows, hours at 1,000,000.
        raise ConfigError(
            f"clusterer=agglomerative (linkage=single) on {n_samples} rows computes all {float(n_samples) ** 2 / 2:.2g} "
            f"pairwise distances (time grows with rows^2); refused above metrics.max_full_silhouette_rows={max_full}: "
            f"set dataset.sample_size={max_full} (or fewer), raise metrics.max_full_silhouette_rows, or use clusterer=hdbscan"
        )
    if target.rsplit(".", 1)[-1] == "AgglomerativeClustering" and linkage != "single":
        if n_samples > max_rows:
            need = bytes_needed_for_linkage(n_samples)
            raise ConfigError(
                f"clusterer=agglomerative (linkage={clusterer.get('linkage', 'ward')}) on {n_samples} rows needs "
                f"about {_size(need)} for its distance matrix; refused above metrics.max_quadratic_rows="
                f"{max_rows}: set dataset.sample_size={max_rows} (or fewer) or use clusterer=kmeans"
            )
    if target.rsplit(".", 1)[-1] == "HDBSCAN" and clusterer.get("algorithm") == "generic" and n_samples > max_rows:
        raise ConfigError(
            f"clusterer.algorithm=generic (HDBSCAN) on {n_samples} rows computes all {float(n_samples) ** 2:.2g} pairwise "
            f"distances (about {_size(8.0 * n_samples * n_samples)}); refused above metrics.max_quadratic_rows={max_rows}: "
            f"set dataset.sample_size={max_rows} (or fewer), or use the default algorithm with metric=euclidean"
        )
    ref_rows = metrics_cfg.get("reference_sample_size", DEFAULT_REFERENCE_SAMPLE_SIZE)
    if metrics_cfg.get("reference_space", True) and ref_rows:
        sample = metrics_cfg.get("silhouette_sample_size", n_samples)
        rows = min(int(ref_rows), n_samples, n_samples if sample is None else int(sample))
        if rows > max_rows:
            raise ConfigError(
                f"metrics.reference_sample_size={ref_rows} keeps the distances of {rows} rows (about "
                f"{_size(2.0 * rows * rows)}) for the reference-space scores; refused above "
                f"metrics.max_quadratic_rows={max_rows}: set metrics.reference_sample_size={DEFAULT_REFERENCE_SAMPLE_SIZE} (or fewer)"
            )
    if "silhouette_sample_size" in metrics_cfg and metrics_cfg.get("silhouette_sample_size") is None and n_samples > max_full:
        pairs = float(n_samples) ** 2
        raise ConfigError(
            f"metrics.silhouette_sample_size=null scores silhouette on all {n_samples} rows "
            f"({pairs:.2g} distances); refused above metrics.max_full_silhouette_rows={max_full}: "
            f"set metrics.silhouette_sample_size={min(10_000, max_full)} (a seeded sample)"
        )


def bytes_needed_for_linkage(n_samples: int) -> float:
    """Bytes of the condensed float64 distance matrix of ``n_samples`` rows."""
    return n_samples * (n_samples - 1) / 2 * 8 if n_samples > 1 else 0.0


_PARAM_MESSAGE = re.compile(r"The '(?P<param>\w+)' parameter of (?P<cls>\w+) must be (?P<must>.*)\. Got (?P<got>.*) instead\.$", re.S)


def check_estimator_params(estimator: Any, group: str) -> None:
    """Check a scikit-learn estimator's parameters now, as its ``fit`` would, naming the config key.

    scikit-learn checks them only when fitting: a bad ``reducer.*`` value would surface after the
    clustering, a bad ``clusterer.*`` one as a scikit-learn error without the key to change.
    """
    metric = getattr(estimator, "metric", None)
    allowed = named_metrics(estimator)
    if allowed and isinstance(metric, str) and metric not in allowed:
        raise ConfigError(
            f"{group}.metric={metric!r} is not allowed: {type(estimator).__name__} takes one of {', '.join(allowed)}"
        )
    algorithm = getattr(estimator, "algorithm", None)
    if allowed and metric in _NO_TREE_METRICS and algorithm not in (None, "generic"):
        # hdbscan's trees take no cosine; 'generic' holds all n^2 distances (bounded like agglomerative)
        raise ConfigError(
            f"{group}.metric={metric!r} does not work with {group}.algorithm={algorithm!r} (hdbscan's trees take "
            f"no {metric}): keep {group}.metric=euclidean on L2-normalised rows (preprocess.normalize=l2), which "
            f"orders neighbours as {metric} does, or set {group}.algorithm=generic (all pairwise distances)"
        )
    if type(estimator).__module__.split(".")[0] == "hdbscan":  # checked by hdbscan only when fitting
        for key, choices in (("algorithm", HDBSCAN_ALGORITHMS), ("cluster_selection_method", ("eom", "leaf"))):
            value = getattr(estimator, key, None)
            if value is not None and value not in choices:
                raise ConfigError(f"{group}.{key}={value!r} is not allowed (allowed: {', '.join(choices)})")
    linkage, metric = getattr(estimator, "linkage", None), getattr(estimator, "metric", None)
    if linkage == "ward" and metric not in (None, "euclidean"):
        raise ConfigError(
            f"{group}.metric={metric!r} does not work with {group}.linkage=ward (Ward's merges minimise euclidean "
            f"variance): set {group}.linkage to average, complete or single, or keep euclidean on L2-normalised "
            "rows (preprocess.normalize=l2), which orders pairs as cosine does"
        )
    if not hasattr(estimator, "_parameter_constraints") or not hasattr(estimator, "_validate_params"):
        return
    try:  # scikit-learn's own checker (private: a release without it leaves the check to fit)
        from sklearn.utils._param_validation import InvalidParameterError
    except ImportError:
        return

    try:
        estimator._validate_params()
    except InvalidParameterError as exc:
        found = _PARAM_MESSAGE.match(str(exc))
        if found is None:
            raise ConfigError(f"{group}: {exc}") from None
        raise ConfigError(
            f"{group}.{found['param']}={found['got']} is not allowed: {found['cls']} takes {found['must']}"
        ) from None


HDBSCAN_ALGORITHMS = ("best", "generic", "prims_kdtree", "prims_balltree", "boruvka_kdtree", "boruvka_balltree")
# Metrics hdbscan computes only with algorithm='generic' (the full distance matrix).
_NO_TREE_METRICS = ("cosine", "arccos")


def named_metrics(estimator: Any) -> tuple[str, ...]:
    """Metric names that UMAP or hdbscan's HDBSCAN take (they check them only when fitting); () for others."""
    module = type(estimator).__module__.split(".")[0]
    if module == "umap":
        from umap.distances import named_distances

        return (*sorted(named_distances), "precomputed")
    if module == "hdbscan":
        from hdbscan.dist_metrics import METRIC_MAPPING

        return (*sorted(m for m in METRIC_MAPPING if m not in ("p", "pyfunc")), "precomputed")
    return ()
