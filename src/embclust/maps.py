"""2-D maps of the clustered space, for plots only."""

from __future__ import annotations

import logging

import numpy as np

from embclust.errors import ConfigError
from embclust.engine.rows import every_row, is_rows_view

log = logging.getLogger(__name__)


def compute_map(reducer, X: np.ndarray, max_points: int | None = None, seed: int = 0) -> np.ndarray:
    """Project ``X`` to 2-D with ``reducer`` (any estimator with ``fit_transform``).

    Above ``max_points`` rows the reducer is fitted on a seeded sample; the other rows are placed
    with ``transform`` when the reducer has one (PCA, UMAP) and left NaN otherwise (t-SNE).
    Returns float32 coordinates of shape (n_samples, 2), all NaN when ``reducer`` is None.
    """
    n = X.shape[0]
    coords = np.full((n, 2), np.nan, dtype=np.float32)
    if reducer is None:
        return coords
    if X.shape[1] == 1:  # nothing to project: the values on one axis
        log.info("map: the clustered space has 1 column, plotted on the x axis (%s not fitted)", type(reducer).__name__)
        coords[:, 0], coords[:, 1] = X[:, 0], 0.0
        return coords
    check_reducer(reducer, n, max_points, X.shape[1])
    if type(reducer).__name__ == "UMAP":
        say_if_neighbours_exceed_rows(reducer, n if max_points is None else min(n, max_points), "reducer.n_neighbors")
    remote = is_rows_view(X)  # engine=ray: rows read where the passes run
    if max_points is None or n <= max_points:
        coords[:] = reducer.fit_transform(every_row(X))
        return coords
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, size=max_points, replace=False))
    log.info("map: fitting %s on a seeded sample of %d of %d points", type(reducer).__name__, max_points, n)
    coords[sample] = reducer.fit_transform(X[sample])
    if hasattr(reducer, "transform"):
        (_place_rest_by_pass if remote else _place_rest)(reducer, X, coords, sample)
    return coords


def _place_rest_by_pass(reducer, X, coords: np.ndarray, sample: np.ndarray) -> None:
    """:func:`_place_rest` as one pass over the rows where they lie (engine=ray): the fitted
    reducer goes to the rows, two coordinates per row come back."""
    from embclust import blocks

    def place(rows: slice, block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = np.searchsorted(sample, (rows.start, rows.stop))
        keep = np.ones(block.shape[0], dtype=bool)
        keep[sample[lo:hi] - rows.start] = False
        where = np.flatnonzero(keep)
        return where + rows.start, (reducer.transform(block[where]) if where.size else np.empty((0, 2)))

    def fold(parts) -> tuple[np.ndarray, np.ndarray]:
        where, placed = zip(*parts)
        return np.concatenate(where), np.concatenate(placed)

    for where, placed in blocks.map_groups(X, place, fold, blocks.available_threads(), progress="map: rows placed"):
        coords[where] = placed


def _place_rest(reducer, X: np.ndarray, coords: np.ndarray, sample: np.ndarray, block_rows: int = 65_536) -> None:
    """Place the rows outside the fitted sample with ``reducer.transform``, block by block (one
    block's rows in memory at a time), reporting progress on stderr for large data."""
    import time

    in_sample = np.zeros(X.shape[0], dtype=bool)
    in_sample[sample] = True
    n_rest, done, started, last = X.shape[0] - sample.size, 0, time.perf_counter(), time.perf_counter()
    for start in range(0, X.shape[0], block_rows):
        rows = start + np.flatnonzero(~in_sample[start : start + block_rows])
        if rows.size:
            coords[rows] = reducer.transform(np.asarray(X[rows]))
            done += rows.size
        if time.perf_counter() - last > 10:
            last = time.perf_counter()
            log.info("map: %d / %d rows placed (%.0f s)", done, n_rest, last - started)


def check_reducer(reducer, n_samples: int, max_points: int | None, n_features: int = 2) -> None:
    """Raise :class:`ConfigError` naming the key when ``reducer`` cannot map this many rows.

    Called before the clustering as well, so a map that cannot be drawn does not fail the run
    after it: t-SNE needs a perplexity below the rows it maps, UMAP's spectral start at least
    ``n_components + 2`` rows (scipy's ``k >= N`` error otherwise).
    """
    if reducer is None or n_features == 1:  # a one-column space is plotted as it is
        return
    n_fit = n_samples if max_points is None else min(n_samples, max_points)
    _check_perplexity(reducer, n_fit)
    n_components = getattr(reducer, "n_components", 2)
    if type(reducer).__name__ == "UMAP" and isinstance(n_components, int) and n_fit < n_components + 2:
        raise ConfigError(
            f"reducer=umap maps at least {n_components + 2} rows in {n_components}-D; the data has {n_fit}: "
            "set reducer=pca or reducer=none"
        )


def say_if_neighbours_exceed_rows(umap, n_rows: int, key: str) -> None:
    """UMAP truncates ``n_neighbors`` to the rows it fits, with a warning that names no key; say it once
    in a line that does (the library's own is in :data:`embclust.console.EXPECTED_WARNINGS`)."""
    n_neighbors = getattr(umap, "n_neighbors", None)
    if isinstance(n_neighbors, int) and n_neighbors >= n_rows > 1:
        log.warning("%s=%d is not below the %d rows UMAP fits: it uses %d neighbours (every other row)",
                    key, n_neighbors, n_rows, n_rows - 1)


def _check_perplexity(reducer, n_fit: int) -> None:
    """t-SNE needs a perplexity below the rows it maps; say which key to lower instead of its ValueError."""
    perplexity = getattr(reducer, "perplexity", None)
    if type(reducer).__name__ == "TSNE" and isinstance(perplexity, (int, float)) and perplexity >= n_fit:
        raise ConfigError(
            f"reducer.perplexity={perplexity:g} must be less than the {n_fit} rows mapped by t-SNE: set "
            f"reducer.perplexity={max(1, (n_fit - 1) // 3)} (or less), or reducer=pca"
        )
