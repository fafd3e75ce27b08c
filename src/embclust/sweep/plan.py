"""What a sweep shares: planned once when it starts, read by every cell.

The callback builds a :class:`SweepPlan` before the sweeper launches any cell and hands it to
the cells through the environment variable ``EMBCLUST_SWEEP`` (launcher workers, Ray tasks and
joblib processes inherit it). The plan names the parent run, the grid's largest PCA size (so one
PCA fit serves every smaller size), whether cells differ in preprocessing (so they are ranked in
the shared reference space), and the reproducibility tags, computed once instead of per cell.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

from omegaconf import DictConfig

from embclust.errors import ConfigError

ENV_VAR = "EMBCLUST_SWEEP"
PCA_KEY = "preprocess.pca_components"
# Swept keys that change the space a cell is clustered in.
PREPROCESS_PREFIX = "preprocess."


@dataclass
class SweepPlan:
    """Shared facts of one sweep; JSON-serialisable so workers can read it from the environment."""

    parent_run_id: str
    experiment_id: str
    total: int | None = None
    metric: str = "silhouette"
    # Largest PCA size any cell asks for, None when unknown (e.g. an Optuna interval).
    max_pca_components: int | None = None
    # Whether cells differ in preprocessing: then they are ranked by the reference-space metric.
    preprocessing_varies: bool = False
    resumed: bool = False
    tags: dict[str, str] = field(default_factory=dict)
    # Keys the sweep varies (``clusterer.n_clusters``, ``clusterer``): they name a cell's run.
    swept_keys: list[str] = field(default_factory=list)
    # The sweep's own process: a launcher's worker that it started exits when it is gone.
    sweep_pid: int | None = None

    def cell_name(self, overrides: str) -> str:
        """A cell's run name: its swept overrides, without those every cell shares; a swept file
        path is shown by its file name (the runs list has room for what differs, not for paths)."""
        swept = [o for o in overrides.split() if o.split("=", 1)[0].lstrip("+~") in self.swept_keys]
        return " ".join(short_override(o) for o in swept) or overrides

    @property
    def rank_metric(self) -> str:
        """The metric that ranks cells: ``<metric>_ref`` when preprocessing varies."""
        return reference_metric(self.metric) if self.preprocessing_varies else self.metric

    def to_env(self) -> None:
        os.environ[ENV_VAR] = json.dumps(asdict(self))

    @classmethod
    def from_env(cls) -> SweepPlan | None:
        raw = os.environ.get(ENV_VAR)
        if not raw:
            return None
        return cls(**json.loads(raw))


def short_override(override: str, most: int = 40) -> str:
    """``key=value`` with a path-like value cut to its last part, and any value to ``most`` characters."""
    key, sep, value = override.partition("=")
    if "/" in value.rstrip("/"):
        value = value.rstrip("/").rsplit("/", 1)[-1]
    if len(value) > most:
        value = value[: most - 3] + "..."
    return f"{key}{sep}{value}"


def resolve_metric(config: DictConfig, swept) -> str:
    """``sweep.metric``, with ``auto`` resolved: ``dbcv`` when every cell is an HDBSCAN clustering
    that keeps its spanning tree in one shared space (neither the clusterer group nor a
    ``preprocess.*`` key is swept: DBCV has no reference-space form), else ``silhouette``.

    Silhouette, CH and DB leave the rows called noise out, so a cell that calls more rows noise
    scores higher on the rest; DBCV weighs each cluster by its share of all rows.
    """
    metric = str(config.sweep.metric)
    if metric != "auto":
        return metric
    clusterer = config.get("clusterer") or {}
    hdbscan = str(clusterer.get("_target_", "")).rsplit(".", 1)[-1] == "HDBSCAN"
    one_space = "clusterer" not in swept and not any(str(k).startswith(PREPROCESS_PREFIX) for k in swept)
    return "dbcv" if hdbscan and clusterer.get("gen_min_span_tree", False) and one_space else "silhouette"


# Metrics only some clusterers log: the clusterer classes that do.
_CLUSTERER_METRICS = {"dbcv": ("HDBSCAN",), "inertia": ("KMeans", "MiniBatchKMeans")}


def check_rank_metric(metric: str, config: DictConfig, swept) -> None:
    """Refuse a ``sweep.metric`` the sweep's clusterer never logs (``dbcv`` with KMeans,
    ``inertia`` with HDBSCAN): every cell would score NaN and the sweep name no best cell.
    A swept clusterer group is left to the cells (some of them may log it)."""
    logged_by = _CLUSTERER_METRICS.get(metric)
    if logged_by is None or "clusterer" in swept or any(str(k).startswith("clusterer._target_") for k in swept):
        return
    clusterer = config.get("clusterer") or {}
    name = str(clusterer.get("_target_", "")).rsplit(".", 1)[-1]
    needs_tree = metric == "dbcv" and name == "HDBSCAN" and not clusterer.get("gen_min_span_tree", False)
    if name not in logged_by or needs_tree:
        why = "clusterer.gen_min_span_tree=false" if needs_tree else f"the clusterer is {name or 'not set'}"
        raise ConfigError(
            f"sweep.metric={metric} is logged only by {' and '.join(logged_by)} clusterings"
            f"{' that keep their spanning tree' if metric == 'dbcv' else ''}, and {why}: every cell would score "
            "NaN; rank by silhouette, calinski_harabasz or davies_bouldin (or sweep.metric=auto)"
        )


# Metrics that have a reference-space counterpart ``<name>_ref``.
REFERENCE_METRICS = ("silhouette", "calinski_harabasz", "davies_bouldin")


def reference_metric(metric: str) -> str:
    """``silhouette`` -> ``silhouette_ref``; metrics without a reference version stay as they are."""
    return f"{metric}_ref" if metric in REFERENCE_METRICS else metric


def sweep_values(config: DictConfig) -> dict[str, list | None]:
    """Every swept key with its values (None when they are a range that cannot be listed)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep, Glob, RangeSweep

    hydra_cfg = config.hydra
    params = [f"{k}={v}" for k, v in (hydra_cfg.sweeper.get("params") or {}).items()]
    out: dict[str, list | None] = {}
    for override in OverridesParser.create().parse_overrides([*params, *hydra_cfg.overrides.task]):
        key = override.get_key_element().lstrip("+~")
        if not override.is_sweep_override():
            out.pop(key, None)  # a later single value wins over a sweep of the key, as in Hydra
            continue
        value = override.value()
        if isinstance(value, ChoiceSweep):
            out[key] = list(value.list)
        elif isinstance(value, RangeSweep) and value.step is not None:
            out[key] = list(override.sweep_iterator())
        elif isinstance(value, Glob) and (options := _glob_options(key, config)) is not None:
            out[key] = value.filter(options)  # reducer='glob(*,exclude=umap)': the options it matches
        else:  # interval(...) and the like: values chosen by the sweeper at run time
            out[key] = None
    return out


def grid_cells(config: DictConfig) -> list[list[str]] | None:
    """Each cell's overrides as Hydra's basic sweeper launches them, or None when it cannot tell
    (another sweeper, a range the sweeper picks from)."""
    if "n_trials" in config.hydra.sweeper:
        return None
    try:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.global_hydra import GlobalHydra
        from hydra.core.override_parser.overrides_parser import OverridesParser

        # Split as Hydra's basic sweeper splits them: the last override of a key wins, and a glob
        # over a group is matched against the group's options by the config loader.
        loader = GlobalHydra.instance().config_loader() if GlobalHydra.instance().is_initialized() else None
        params = [f"{k}={v}" for k, v in (config.hydra.sweeper.get("params") or {}).items()]
        overrides = OverridesParser.create(config_loader=loader).parse_overrides([*params, *config.hydra.overrides.task])
        return [cell for batch in BasicSweeper.split_arguments(overrides, None) for cell in batch]
    except Exception:  # noqa: BLE001 - what the cells are is known to Hydra's sweeper, which says what is wrong
        return None


def _glob_options(key: str, config: DictConfig) -> list[str] | None:  # noqa: ARG001
    """The options a glob of group ``key`` is matched against, as Hydra's sweeper looks them up
    (the config path it started with), or None outside Hydra."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.object_type import ObjectType

    if not GlobalHydra.instance().is_initialized():
        return None
    try:
        return GlobalHydra.instance().config_loader().get_group_options(key, results_filter=ObjectType.CONFIG)
    except Exception:  # noqa: BLE001 - the sweeper says what is wrong
        return None


def largest_pca(config: DictConfig, swept: dict[str, list | None]) -> int | None:
    """The largest PCA size any cell uses, or None when it cannot be known up front."""
    if PCA_KEY in swept:
        values = swept[PCA_KEY]
        if values is None:
            return None
        sizes = [int(v) for v in values if v is not None and str(v) not in ("null", "None")]
        return max(sizes) if sizes else None
    base = config.preprocess.get("pca_components") if "preprocess" in config else None
    return int(base) if base is not None else None
