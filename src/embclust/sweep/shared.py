"""Work every cell of a sweep shares, done once: data, PCA, the scoring sample, the reference space.

Results are kept in this process (cells of the basic launcher run one after another in the same
interpreter) and, when the cache is on, on disk (parallel workers and later sweeps). The PCA is
fitted once at the largest size in the sweep: with an exact solver (``full`` or
``covariance_eigh``) its first ``c`` components are the components a fit at ``c`` finds, so
each smaller size only projects the data.
"""

from __future__ import annotations

import copy
import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from hydra.utils import instantiate
from sklearn.decomposition import PCA
from sklearn.pipeline import Pipeline

from embclust import preprocess
from embclust.data.dataset import Dataset
from embclust.scoring import metrics
from embclust.scoring.reference import ReferenceSpace
from embclust.sweep import cache

log = logging.getLogger(__name__)

EXACT_PCA_SOLVERS = ("full", "covariance_eigh")

# Results kept in this process, by cache key. Cells of one sweep share a dataset, so only the
# entries of the most recent data fingerprint are kept.
_memo: dict[str, object] = {}
_memo_fingerprint: str | None = None


def _remember(fingerprint: str, key: str, make: Callable[[], object]) -> tuple[object, bool]:
    """Return ``(value, hit)`` for ``key``, computing it with ``make`` once per process."""
    global _memo_fingerprint
    if fingerprint != _memo_fingerprint:
        _memo.clear()
        _memo_fingerprint = fingerprint
    if key in _memo:
        return _memo[key], True
    value = make()
    _memo[key] = value
    return value, False


# The fitted clustering of the best light cell so far, by the sweep's ranking metric: the sweep
# completes its best cell from it instead of fitting the same clusterer again. One is kept.
_best_fit: tuple[str, float, object] | None = None


def keep_if_best(run_id: str, value: float, metric: str, clustering: object) -> None:
    """Keep ``clustering`` (the cell ``run_id``'s fit) when ``value`` beats the best kept so far."""
    global _best_fit
    from embclust.sweep.compare import is_better

    if _best_fit is None or is_better(value, _best_fit[1], metric):
        _best_fit = (run_id, value, clustering)


def fitted_clustering(run_id: str) -> object | None:
    """The clustering :func:`keep_if_best` kept for ``run_id``, or None (then it is fitted again)."""
    return _best_fit[2] if _best_fit is not None and _best_fit[0] == run_id else None


def clear() -> None:
    """Forget everything kept in this process and give its memory back to the system.

    Used by tests and by the sweep's last step (a new dataset clears the rest by itself).
    """
    global _memo_fingerprint, _best_fit
    _memo.clear()
    _memo_fingerprint = None
    _best_fit = None
    release_free_memory()


def release_free_memory() -> None:
    """Return freed heap pages to the system (glibc ``malloc_trim``; a no-op elsewhere).

    Arrays of a few MB come from the heap once glibc has raised its mmap threshold, and stay in
    the process's resident memory after they are freed until the heap is trimmed.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's ``malloc_trim`` from the symbols already loaded in this process, or None.

    ``ctypes.util.find_library`` is not used: it runs ``ldconfig`` in a subprocess, a fork of
    the whole sweep process.
    """
    import ctypes

    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


_dataset_memo: dict[str, tuple[Dataset, bool | None]] = {}


def forget_dataset() -> None:
    """Drop the dataset kept for the cells, and give its memory back (the sweep's summary does not need it)."""
    _dataset_memo.clear()
    release_free_memory()


def load_dataset(dataset_key: dict, cache_dir: Path | None, load: Callable[[], Dataset]) -> tuple[Dataset, bool | None]:
    """The dataset for ``dataset_key``, loaded once per process and (cache on) once per machine.

    Returns the dataset and whether it came from a cache (None when neither applies).
    """
    key = cache.stable_hash(dataset_key)
    if key in _dataset_memo:
        return _dataset_memo[key][0], True
    if cache_dir is None:
        ds, hit = load(), None
    else:
        ds, hit = cache.cached_dataset(dataset_key, cache_dir, load)
    _dataset_memo.clear()  # one dataset per process at a time
    _dataset_memo[key] = (ds, hit)
    return ds, hit


@dataclass
class Features:
    """The fitted preprocessing and the matrix it produced (the space the clusterer sees)."""

    preprocessing: Pipeline
    X: np.ndarray
    # How it was obtained: "fitted", "sliced from PCA <m>", with "(cached)" when reused.
    how: str
    cache_hit: bool


def _fit(pre_cfg: dict, ds: Dataset) -> tuple[Pipeline, np.ndarray]:
    pipeline = instantiate(pre_cfg)
    return pipeline, preprocess.fit_preprocessing(
        pipeline, ds.X, pre_cfg.get("fit_sample_size"), int(pre_cfg.get("seed") or 0)
    )


def _fit_cached(pre_cfg: dict, ds: Dataset, cache_dir: Path | None) -> tuple[Pipeline, np.ndarray, bool]:
    def fit() -> tuple[Pipeline, np.ndarray]:
        return _fit(pre_cfg, ds)

    if cache_dir is None:
        (pipeline, X), hit = _remember(ds.fingerprint, "pre:" + cache.stable_hash(pre_cfg), fit)
        return pipeline, X, hit
    def fit_on_disk() -> tuple[Pipeline, np.ndarray, bool]:
        return cache.cached_preprocessing(ds.fingerprint, pre_cfg, cache_dir, fit)

    (pipeline, X, disk_hit), memo_hit = _remember(ds.fingerprint, "pre:" + cache.stable_hash(pre_cfg), fit_on_disk)
    return pipeline, X, memo_hit or disk_hit


def truncated_pca(pca: PCA, n_components: int, n_samples: int, n_features: int) -> PCA:
    """A fitted PCA with the first ``n_components`` of ``pca`` (what a fit at that size finds)."""
    small = copy.copy(pca)
    c, m = n_components, pca.n_components_
    small.n_components = c
    small.n_components_ = c
    small.components_ = pca.components_[:c].copy()
    small.explained_variance_ = pca.explained_variance_[:c].copy()
    small.explained_variance_ratio_ = pca.explained_variance_ratio_[:c].copy()
    small.singular_values_ = pca.singular_values_[:c].copy()
    # Mean variance of the discarded directions: those beyond m (noise_variance_ of the larger
    # fit) plus the ones between c and m.
    rank = min(n_samples, n_features)
    if rank > c:
        beyond = float(pca.noise_variance_) * max(rank - m, 0)
        small.noise_variance_ = (beyond + float(pca.explained_variance_[c:].sum())) / (rank - c)
    else:
        small.noise_variance_ = 0.0
    return small


def _sliceable(pre_cfg: dict, n_components: int | None, max_components: int | None) -> bool:
    return (
        n_components is not None
        and max_components is not None
        and n_components < max_components
        and pre_cfg.get("umap_components") is None
        and pre_cfg.get("svd_solver", "auto") in (*EXACT_PCA_SOLVERS, "auto")
    )


def features(pre_cfg: dict, ds: Dataset, cache_dir: Path | None, max_pca_components: int | None = None) -> Features:
    """Fit (or reuse) the preprocessing of ``pre_cfg`` on ``ds``.

    When the sweep's largest PCA size is known and larger than this one, the PCA is fitted once at
    that size and its first components reused here; the result is the same as a fit at this size
    (same components; the projection is computed the same way).
    """
    if not isinstance(ds.X, np.ndarray):
        cache_dir = None  # engine=ray: the workers preprocess the rows they read; only the fitted pipeline is here
    c = pre_cfg.get("pca_components")
    limit = min(ds.n_samples, ds.n_features)
    largest = None if max_pca_components is None else min(int(max_pca_components), limit)
    if _sliceable(pre_cfg, c, largest):
        big_cfg = {**pre_cfg, "pca_components": largest}
        big, _, hit = _fit_cached(big_cfg, ds, cache_dir)
        pca = big.named_steps["pca"]
        if getattr(pca, "_fit_svd_solver", pre_cfg.get("svd_solver")) in EXACT_PCA_SOLVERS:
            key = "slice:" + cache.stable_hash(pre_cfg)

            def project() -> tuple[Pipeline, np.ndarray]:
                # Cells of one size run one after another: the previous size's projection is
                # not needed again (the best cell projects its own once more, in a fraction of
                # a second), so only one is kept.
                for stale in [k for k in _memo if k.startswith("slice:")]:
                    del _memo[stale]
                steps = dict(big.steps)
                steps["pca"] = truncated_pca(pca, int(c), ds.n_samples, ds.n_features)
                pipeline = Pipeline(list(steps.items()))
                return pipeline, preprocess.transform_by_blocks(pipeline, ds.X, int(c))

            (pipeline, X), slice_hit = _remember(ds.fingerprint, key, project)
            return Features(pipeline, X, f"sliced from PCA {largest}", hit or slice_hit)
    pipeline, X, hit = _fit_cached(pre_cfg, ds, cache_dir)
    return Features(pipeline, X, "fitted", hit)


def scoring_rows(n_samples: int, sample_size: int | None, seed: int) -> np.ndarray:
    """The rows every cell's silhouette is scored on: a seeded sample, or all rows in order."""
    return metrics.sample_rows_for(n_samples, sample_size, seed)


def reference_space(
    ds: Dataset, normalize: str, rows: np.ndarray, max_rows: int, seed: int
) -> ReferenceSpace:
    """The space shared by every cell: the data after row normalisation, before PCA or UMAP."""

    def make() -> ReferenceSpace:
        scaler = preprocess.build_preprocessing(normalize=normalize).named_steps["normalize"]
        if scaler == "passthrough":
            return ReferenceSpace(ds.X, rows[:max_rows])
        preprocess.fit_scaler_by_blocks(scaler, ds.X)  # Normalizer: nothing to learn; StandardScaler: means, scales
        return ReferenceSpace(ds.X, rows[:max_rows], transform=scaler.transform)

    key = "ref:" + cache.stable_hash([normalize, rows[:max_rows].tolist()[:64], rows.size, max_rows, seed])
    space, _ = _remember(ds.fingerprint, key, make)
    return space
