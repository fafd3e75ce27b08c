"""Stability of a clustering: does refitting on other subsamples, with other seeds, agree?

A label-free check that a k is real: the cell's clusterer is refitted on a few seeded
subsamples (e.g. 3 x 80% of the points) with other random seeds, and each refit's labels are
compared with the cell's labels on the same points by the adjusted Rand index. Noise (label
-1) counts as one more cluster on both sides, as in the ``ari`` metric, so a refit that turns
clusters into noise scores lower.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.metrics import adjusted_rand_score

from embclust.cluster.fit import fit_input
from embclust.errors import ConfigError

log = logging.getLogger(__name__)

METRIC = "stability"
TIME_METRIC = "time/stability_s"


def stability_score(
    make_clusterer: Callable[[int], BaseEstimator],
    X: np.ndarray,
    labels: np.ndarray,
    n_resamples: int = 3,
    fraction: float = 0.8,
    max_samples: int | None = 20_000,
    seed: int = 0,
) -> tuple[float, float]:
    """Return ``(mean ARI of the refits with labels, seconds)``.

    ``make_clusterer(s)`` builds an unfitted clusterer seeded with ``s``. At most
    ``max_samples`` rows take part (a seeded sample, so the work is bounded whatever the data
    size); each resample draws ``fraction`` of them.
    """
    _check(n_resamples, fraction, max_samples)
    start = time.perf_counter()
    X = np.asarray(X)
    labels = np.asarray(labels)
    if X.shape[0] != labels.shape[0]:
        raise ValueError(f"X has {X.shape[0]} rows but labels has {labels.shape[0]}")
    rng = np.random.default_rng(seed)
    pool = np.arange(X.shape[0])
    if max_samples is not None and X.shape[0] > max_samples:
        pool = np.sort(rng.choice(X.shape[0], size=max_samples, replace=False))
    size = max(2, int(round(fraction * pool.size)))
    aris = []
    collapsed, all_noise = 0, False  # refits that put every row in one group (all noise, for HDBSCAN)
    for r in range(n_resamples):
        rows = np.sort(rng.choice(pool, size=size, replace=False))
        # Other seeds than the cell's own, so the refit is not the same draw again.
        clusterer = make_clusterer(seed + 1 + r)
        refit = np.asarray(clusterer.fit_predict(fit_input(clusterer, X[rows])))
        aris.append(adjusted_rand_score(labels[rows], refit))
        if np.unique(refit).size == 1 and np.unique(labels[rows]).size > 1:
            collapsed += 1
            all_noise |= bool(refit[0] == -1)
    seconds = time.perf_counter() - start
    if collapsed:
        log.warning(
            "stability: %d of %d refits on %d rows found a single group%s, each scoring ARI 0: the refits may be too "
            "small for the clusterer's sizes rather than the clusters unstable; raise metrics.stability.max_samples or "
            "metrics.stability.fraction", collapsed, n_resamples, size,
            " (every row noise)" if all_noise else "",
        )
    log.info("stability: mean ARI %.4f over %d refits on %d of %d rows (%.1f s)", np.mean(aris), n_resamples, size, X.shape[0], seconds)
    return float(np.mean(aris)), seconds


def stability_from_config(
    clusterer_cfg: Mapping, X: np.ndarray, labels: np.ndarray, stability_cfg: Mapping | None, seed: int
) -> dict[str, float]:
    """Metrics ``stability`` and ``time/stability_s`` when ``metrics.stability.enabled``, else ``{}``.

    ``clusterer_cfg`` is the run's ``clusterer`` config (a ``_target_`` node); each refit gets
    another ``random_state`` (or ``seed``) where the clusterer has one.
    """
    if not stability_cfg or not stability_cfg.get("enabled", False):
        return {}
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    node = OmegaConf.to_container(clusterer_cfg, resolve=True) if OmegaConf.is_config(clusterer_cfg) else dict(clusterer_cfg)
    params = instantiate(node).get_params(deep=False)
    seed_key = next((k for k in ("random_state", "seed") if k in params), None)

    def make_clusterer(s: int) -> BaseEstimator:
        return instantiate({**node, seed_key: s} if seed_key else node)

    value, seconds = stability_score(
        make_clusterer,
        X,
        labels,
        n_resamples=stability_cfg.get("n_resamples", 3),
        fraction=stability_cfg.get("fraction", 0.8),
        max_samples=stability_cfg.get("max_samples", 20_000),
        seed=seed,
    )
    return {METRIC: value, TIME_METRIC: seconds}


def refit_rows(n_samples: int, fraction: float, max_samples: int | None) -> int:
    """How many rows each stability refit is fitted on."""
    pool = n_samples if max_samples is None else min(n_samples, max_samples)
    return max(2, int(round(fraction * pool)))


def check_sizes(stability_cfg: Mapping | None, n_samples: int, clusterer: BaseEstimator) -> None:
    """Raise :class:`ConfigError` before any work when a refit's rows cannot hold the clusterer's sizes."""
    if not stability_cfg or stability_cfg.get("enabled", False) is not True:
        return
    fraction, max_samples = stability_cfg.get("fraction", 0.8), stability_cfg.get("max_samples", 20_000)
    _check(stability_cfg.get("n_resamples", 3), fraction, max_samples)
    rows = refit_rows(n_samples, fraction, max_samples)
    params = clusterer.get_params(deep=False)
    for key in ("n_clusters", "min_cluster_size"):
        size = params.get(key)
        if isinstance(size, int) and not isinstance(size, bool) and size > rows - (key == "n_clusters"):
            # which setting made the refits this small: the fraction, or the cap on rows
            capped = max_samples is not None and max_samples < n_samples
            why = (f"metrics.stability.fraction={fraction} of metrics.stability.max_samples={max_samples}" if capped
                   else f"metrics.stability.fraction={fraction}")
            raise ConfigError(
                f"metrics.stability refits on {rows} of {n_samples} rows ({why}), too few for clusterer.{key}={size}: "
                f"raise metrics.stability.{'max_samples' if capped else 'fraction'}, lower clusterer.{key} "
                "or set metrics.stability.enabled=false"
            )


def _check(n_resamples, fraction, max_samples) -> None:
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, int) or n_resamples < 1:
        raise ConfigError(f"metrics.stability.n_resamples={n_resamples!r} must be an integer >= 1")
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise ConfigError(f"metrics.stability.fraction={fraction!r} must be a number in (0, 1)")
    if max_samples is not None and (isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 2):
        raise ConfigError(f"metrics.stability.max_samples={max_samples!r} must be null or an integer >= 2")
