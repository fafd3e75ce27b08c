"""Preprocessing: row normalisation and PCA as one scikit-learn Pipeline."""

from __future__ import annotations

import logging

import numpy as np
from sklearn.decomposition import PCA
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import Normalizer, StandardScaler

from embclust.errors import ConfigError
from embclust.engine.rows import every_row
from embclust.validate import PCA_SOLVERS, named_metrics

log = logging.getLogger(__name__)

NORMALIZE_CHOICES = ("auto", "l2", "standard", "none")
# At or below this many columns data is not an embedding: L2 would project it onto a sphere
# (2-d points onto a circle) and throw away the radial information that separates clusters.
LOW_DIM_FEATURES = 16
_warned: set[str] = set()


# Median cosine similarity between random pairs of rows above which the rows all point the
# same way from the origin: L2 would keep only their small angular differences.
NARROW_CONE_COSINE = 0.9


def median_pair_cosine(X, n_pairs: int = 2000, seed: int = 0) -> float:
    """Median cosine similarity of seeded random pairs of distinct rows (rows read in file order)."""
    n = X.shape[0]
    if n < 2:
        return 0.0
    rng = np.random.default_rng(seed)
    a = rng.integers(0, n, n_pairs)
    b = (a + rng.integers(1, n, n_pairs)) % n
    rows = np.unique(np.concatenate([a, b]))
    R = np.asarray(X[rows], dtype=np.float64)
    norms = np.linalg.norm(R, axis=1)
    R /= np.where(norms > 0, norms, 1.0)[:, None]
    left, right = R[np.searchsorted(rows, a)], R[np.searchsorted(rows, b)]
    return float(np.median(np.einsum("ij,ij->i", left, right)))


def resolve_normalize(normalize: str, n_features: int, from_tabular: bool = False, X=None) -> tuple[str, str | None]:
    """The row normalisation to apply, and the line that explains it (None when nothing to say).

    ``auto`` is ``l2`` for embeddings (more than ``LOW_DIM_FEATURES`` columns, not tabular, and,
    when ``X`` is given, rows that do not all point the same way from the origin: a median cosine
    below ``NARROW_CONE_COSINE`` between random pairs) and ``standard`` otherwise. Sentence
    embeddings have a median pair cosine of about 0.1-0.5; a Gaussian mixture displaced far from
    the origin has 0.99 and more, and L2 there merges clusters that differ along the offset.
    An explicit ``l2`` on low-dimensional or tabular data is kept, with a warning naming the
    setting to use instead.
    """
    if normalize not in NORMALIZE_CHOICES:
        raise ConfigError(
            f"preprocess.normalize={normalize!r} is not allowed (allowed: {', '.join(NORMALIZE_CHOICES)})"
        )
    low = n_features <= LOW_DIM_FEATURES
    what = "tabular data" if from_tabular else f"data with {n_features} columns (<= {LOW_DIM_FEATURES})"
    if normalize == "auto":
        if low or from_tabular:
            return "standard", f"preprocess.normalize=auto: standard (StandardScaler) for {what}"
        cosine = None if X is None else median_pair_cosine(X)
        if cosine is not None and cosine >= NARROW_CONE_COSINE:
            return "standard", (
                f"preprocess.normalize=auto: standard (StandardScaler), not l2: the rows all point the same way from "
                f"the origin (median cosine {cosine:.3f} between random pairs of rows), so L2 would keep only their "
                "small angular differences; set preprocess.normalize=l2 to use it anyway"
            )
        return "l2", f"preprocess.normalize=auto: l2 for embeddings ({n_features} columns)"
    if normalize == "l2" and (low or from_tabular):
        return "l2", (
            f"preprocess.normalize=l2 on {what} puts every row on the unit sphere and discards its length; "
            "use preprocess.normalize=standard (or auto)"
        )
    return normalize, None


# Clusterers that find dense regions and call the rest noise: on raw embeddings (hundreds of
# columns, distances that all look alike) they call most rows noise.
DENSITY_CLUSTERERS = ("HDBSCAN", "DBSCAN", "OPTICS")
# UMAP's dimension before a density clusterer (BERTopic's and the UMAP docs' recipe: 5).
DENSITY_UMAP_COMPONENTS = 5


def resolve_umap_components(value, clusterer_target: str | None, clustered_dims: int,
                            from_tabular: bool = False) -> tuple[int | None, str | None]:
    """UMAP's dimension before clustering (None: no UMAP), and the line that explains an ``auto`` choice.

    ``auto`` is ``DENSITY_UMAP_COMPONENTS`` before a density clusterer (HDBSCAN, DBSCAN, OPTICS)
    on embeddings: more than ``LOW_DIM_FEATURES`` columns reach the clusterer (after PCA) and the
    data is not from the tabular loader. In hundreds of dimensions every row's nearest neighbours
    are nearly as far as any other row, so a density clusterer finds few dense cores and calls
    most rows noise; UMAP keeps the neighbourhoods and makes them dense. Otherwise no UMAP.
    """
    if value != "auto":
        return value, None
    name = str(clusterer_target or "").rsplit(".", 1)[-1]
    if name not in DENSITY_CLUSTERERS or clustered_dims <= LOW_DIM_FEATURES or from_tabular:
        return None, None
    return DENSITY_UMAP_COMPONENTS, (
        f"preprocess.umap_components=auto: UMAP to {DENSITY_UMAP_COMPONENTS} dimensions before {name} on "
        f"{clustered_dims}-column data, where a density clusterer calls most rows noise; "
        "set preprocess.umap_components=null to cluster the data as it is"
    )


def choose_normalize(normalize: str, n_features: int, from_tabular: bool = False, X=None) -> str:
    """``resolve_normalize``, logging its line: INFO for ``auto``, a WARNING (once) for ``l2``."""
    choice, message = resolve_normalize(normalize, n_features, from_tabular, X)
    if message and normalize == "auto":
        # Say it when the choice is not the embeddings default.
        log.log(logging.INFO if choice != "l2" else logging.DEBUG, message)
    elif message and message not in _warned:
        _warned.add(message)
        log.warning(message)
    return choice


def build_preprocessing(
    normalize: str = "l2",
    pca_components: int | None = None,
    svd_solver: str = "auto",
    seed: int = 0,
    umap_components: int | None = None,
    umap_n_neighbors: int = 15,
    umap_min_dist: float = 0.0,
    umap_metric: str = "euclidean",
    fit_sample_size: int | None = None,
) -> Pipeline:
    """Return an unfitted ``Pipeline(normalize, pca, umap)``; unused steps are ``"passthrough"``.

    ``fit_sample_size`` is how :func:`fit_preprocessing` fits it (the rows PCA is fitted on), not
    part of the pipeline.

    ``umap_components`` adds a UMAP reduction before clustering (density clustering of tabular
    or text features, as in the UMAP -> HDBSCAN recipe); it is separate from the 2-D map.
    """
    if normalize not in NORMALIZE_CHOICES:
        raise ConfigError(
            f"preprocess.normalize={normalize!r} is not allowed (allowed: {', '.join(NORMALIZE_CHOICES)})"
        )
    if normalize == "auto":
        # auto depends on the data; choose_normalize resolves it once the data is loaded.
        raise ConfigError("preprocess.normalize=auto must be resolved against the data (choose_normalize) first")
    if pca_components is not None and (
        isinstance(pca_components, bool) or not isinstance(pca_components, int) or pca_components < 1
    ):
        raise ConfigError(f"preprocess.pca_components={pca_components!r} must be null or an integer >= 1")
    if svd_solver not in PCA_SOLVERS:
        raise ConfigError(f"preprocess.svd_solver={svd_solver!r} is not allowed (allowed: {', '.join(PCA_SOLVERS)})")
    scaler = {"l2": Normalizer(norm="l2"), "standard": StandardScaler(), "none": "passthrough"}[normalize]
    pca = (
        "passthrough"
        if pca_components is None
        else PCA(n_components=pca_components, svd_solver=svd_solver, random_state=seed)
    )
    if umap_components is not None and (not isinstance(umap_components, int) or umap_components < 1):
        raise ConfigError(f"preprocess.umap_components={umap_components!r} must be null or an integer >= 1")
    if umap_components is None:
        reduce = "passthrough"
    else:
        from embclust import compiled

        compiled.enable_umap_cache()
        from umap import UMAP

        reduce = UMAP(
            n_components=umap_components,
            n_neighbors=umap_n_neighbors,
            min_dist=umap_min_dist,
            metric=umap_metric,
            random_state=seed,
            n_jobs=1,
        )
        allowed = named_metrics(reduce)
        if isinstance(umap_metric, str) and umap_metric not in allowed:
            raise ConfigError(f"preprocess.umap_metric={umap_metric!r} is not allowed: UMAP takes one of {', '.join(allowed)}")
    return Pipeline([("normalize", scaler), ("pca", pca), ("umap", reduce)])


def check_preprocessing(pipeline: Pipeline, n_samples: int, n_features: int, fit_sample_size: int | None = None) -> None:
    """Raise :class:`ConfigError` when PCA or UMAP asks for more components than the data allows
    (PCA is fitted on at most ``fit_sample_size`` rows)."""
    pca = pipeline.named_steps["pca"]
    if isinstance(pca, PCA):
        if fit_sample_size is not None and fit_sample_size < min(n_samples, n_features) and pca.n_components > fit_sample_size:
            raise ConfigError(
                f"preprocess.pca_components={pca.n_components} exceeds the {fit_sample_size} rows PCA is fitted on "
                f"(preprocess.fit_sample_size={fit_sample_size}): raise preprocess.fit_sample_size or ask for fewer components"
            )
        most = min(n_samples, n_features)
        if pca.n_components > most:
            raise ConfigError(
                f"preprocess.pca_components={pca.n_components} exceeds min(n_samples, n_features)"
                f"={most} for data of shape ({n_samples}, {n_features})"
            )
        if pca.svd_solver == "arpack" and pca.n_components == most:
            raise ConfigError(
                f"preprocess.pca_components={pca.n_components} with preprocess.svd_solver=arpack must be below "
                f"min(n_samples, n_features)={most}: ask for fewer or set preprocess.svd_solver=full"
            )
    reduce = pipeline.named_steps.get("umap")
    n_components = getattr(reduce, "n_components", None)
    # UMAP's spectral start solves for n_components + 1 eigenvectors of an n_samples-square graph
    if n_components is not None and n_components > n_samples - 2:
        raise ConfigError(
            f"preprocess.umap_components={n_components} needs at least {n_components + 2} rows; the data has "
            f"{n_samples}: ask for at most {max(n_samples - 2, 1)}, or set preprocess.umap_components=null"
        )


def fit_preprocessing(pipeline: Pipeline, X: np.ndarray, fit_sample_size: int | None = None, seed: int = 0) -> np.ndarray:
    """Fit ``pipeline`` on ``X`` and return the transformed matrix as float32.

    Row-wise pipelines (normalisation, PCA) are fitted on one BLAS thread and applied block by
    block, one BLAS thread per block: the result does not depend on the thread count, so a
    sweep cell in a parallel worker and the same run alone get the same numbers. Above
    ``fit_sample_size`` rows, a StandardScaler is fitted block by block over all rows (exact) and
    PCA on a seeded sample of ``fit_sample_size`` rows, so no full-size copy of ``X`` is made;
    the result (float32) is kept in memory or, above ``memory.spill_above_mb``, in a temporary file.
    """
    check_preprocessing(pipeline, X.shape[0], X.shape[1], fit_sample_size)
    if pipeline.named_steps.get("umap", "passthrough") != "passthrough":
        from embclust.maps import say_if_neighbours_exceed_rows

        say_if_neighbours_exceed_rows(pipeline.named_steps["umap"], min(X.shape[0], fit_sample_size or X.shape[0]),
                                      "preprocess.umap_n_neighbors")
        if fit_sample_size is not None and X.shape[0] > fit_sample_size:
            return _fit_umap_on_sample(pipeline, X, int(fit_sample_size), seed)
        # UMAP's transform of new rows is not its fitted embedding.
        return np.asarray(pipeline.fit_transform(X), dtype=np.float32)
    from embclust import blocks

    with blocks.one_blas_thread():
        if fit_sample_size is None or X.shape[0] <= fit_sample_size:
            pipeline.fit(every_row(X))  # engine=ray's view: every row is the sample, gathered by one pass
        else:
            _fit_on_sample(pipeline, X, int(fit_sample_size), seed)
    c_order_components(pipeline)
    return transform_by_blocks(pipeline, X, int(pipeline.transform(np.asarray(X[:1])).shape[1]))


def c_order_components(pipeline: Pipeline) -> None:
    """Hold a fitted PCA's components in C order, whatever its solver left.

    The projection's float32 GEMM adds in an order that depends on the matrix's layout, and
    scikit-learn leaves a slice of a wider array (its Fortran-ordered SVD or eigenvectors) whose
    layout depends on the size fitted: a sweep cell whose PCA is the first components of a larger
    fit would project its rows differently in the last bits from the same run alone.
    """
    pca = pipeline.named_steps.get("pca") if hasattr(pipeline, "named_steps") else None
    if pca is not None and pca != "passthrough" and hasattr(pca, "components_"):
        pca.components_ = np.ascontiguousarray(pca.components_)


def _fit_umap_on_sample(pipeline: Pipeline, X: np.ndarray, fit_sample_size: int, seed: int) -> np.ndarray:
    """Normalisation and PCA as for row-wise pipelines, UMAP fitted on the seeded sample's rows
    (which keep their fitted embedding) and every other row placed by UMAP's ``transform``,
    block by block: UMAP's neighbour graph of all rows would not fit in memory at scale."""
    from embclust import blocks

    with blocks.one_blas_thread():
        _fit_on_sample(pipeline, X, fit_sample_size, seed)
    rows = np.sort(np.random.default_rng(seed).choice(X.shape[0], size=fit_sample_size, replace=False))
    before = pipeline[:2]
    reducer = pipeline.named_steps["umap"]
    log.info("preprocess: UMAP fitted on a seeded sample of %d of %d rows, the rest placed by its transform "
             "(preprocess.fit_sample_size)", fit_sample_size, X.shape[0])
    embedded = np.asarray(reducer.fit_transform(before.transform(np.asarray(X[rows]))), dtype=np.float32)
    out = blocks.scratch_matrix(X.shape[0], embedded.shape[1], np.float32, "UMAP-reduced rows")
    out[rows] = embedded
    in_sample = np.zeros(X.shape[0], dtype=bool)
    in_sample[rows] = True
    tick = blocks.Progress("preprocess: rows placed by UMAP", X.shape[0])
    for start in range(0, X.shape[0], 65_536):
        rest = start + np.flatnonzero(~in_sample[start : start + 65_536])
        if rest.size:
            out[rest] = reducer.transform(before.transform(np.asarray(X[rest])))
        tick(65_536)
    return out


def _fit_on_sample(pipeline: Pipeline, X: np.ndarray, fit_sample_size: int, seed: int) -> None:
    """The scaler over all rows' blocks, in block order; PCA on the scaled rows of a seeded sample."""
    scaler, pca = pipeline.named_steps["normalize"], pipeline.named_steps["pca"]
    if scaler != "passthrough":
        fit_scaler_by_blocks(scaler, X)
    if pca == "passthrough":
        return
    rows = np.sort(np.random.default_rng(seed).choice(X.shape[0], size=fit_sample_size, replace=False))
    sample = np.asarray(X[rows])
    if scaler != "passthrough":
        sample = scaler.transform(sample)
    log.info("preprocess: PCA fitted on a seeded sample of %d of %d rows (preprocess.fit_sample_size)",
             fit_sample_size, X.shape[0])
    pca.fit(sample)


def fit_scaler_by_blocks(scaler, X: np.ndarray, block_rows: int | None = None):
    """Fit a Normalizer (nothing to learn) or StandardScaler (count, mean and variance of each
    block, merged in row order) in one pass over the rows' blocks, without a full-size
    temporary of ``X`` (and where the rows lie, with engine=ray)."""
    from embclust import blocks

    if not hasattr(scaler, "partial_fit"):
        return scaler.fit(np.asarray(X[:1]))

    def moments(rows: slice, block: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
        block = np.asarray(block, dtype=np.float64)
        mean = block.mean(axis=0)
        return block.shape[0], mean, ((block - mean) ** 2).sum(axis=0)

    def merge(parts) -> tuple[int, np.ndarray, np.ndarray]:
        total = None
        for part in parts:
            total = part if total is None else _merge_moments(total, part)
        return total

    n, mean, m2 = merge(blocks.map_groups(X, moments, merge, blocks.available_threads(), block_rows or blocks.BLOCK_ROWS,
                                          progress="preprocess: scaler fitted"))
    var = m2 / n
    # scikit-learn's StandardScaler state after a fit of these rows (its rule for constant columns)
    eps = np.finfo(np.float64).eps
    constant = var <= n * eps * var + (n * mean * eps) ** 2
    scaler.n_features_in_ = int(X.shape[1])
    scaler.n_samples_seen_ = np.int64(n)
    scaler.mean_ = mean if (scaler.with_mean or scaler.with_std) else None
    scaler.var_ = var if scaler.with_std else None
    scaler.scale_ = np.where(constant, 1.0, np.sqrt(var)) if scaler.with_std else None
    return scaler


def _merge_moments(a: tuple, b: tuple) -> tuple[int, np.ndarray, np.ndarray]:
    """Count, mean and sum of squared deviations of two row sets together (Chan et al.)."""
    n_a, mean_a, m2_a = a
    n_b, mean_b, m2_b = b
    n = n_a + n_b
    delta = mean_b - mean_a
    return n, mean_a + delta * (n_b / n), m2_a + m2_b + delta**2 * (n_a * n_b / n)


def cumulative_explained_variance(pca) -> np.ndarray:
    """Cumulative explained variance ratio of a fitted PCA, summed in float64 in component order."""
    return np.cumsum(np.asarray(pca.explained_variance_ratio_, dtype=np.float64))


def transform_by_blocks(pipeline: Pipeline, X: np.ndarray, n_out: int, block_rows: int = 4096) -> np.ndarray:
    """``pipeline.transform(X)`` as float32, block by block: no full-size normalised copy of ``X``.

    The steps are row-wise (normalisation, a fitted projection), so each block gives the rows a
    transform of the whole matrix gives; blocks run on the available threads, one BLAS thread
    each. A block's temporaries (its normalised and centred copies) are 25 MB at 768 columns.
    """
    from embclust import blocks

    if hasattr(X, "transformed"):  # engine=ray: the workers transform each block they read, in these pieces
        return X.transformed(pipeline, n_out, block_rows)
    out = blocks.scratch_matrix(X.shape[0], n_out, np.float32, "preprocessed rows")

    def one(rows: slice) -> None:
        out[rows] = pipeline.transform(np.asarray(X[rows]))

    blocks.map_blocks(one, X.shape[0], blocks.available_threads(), block_rows, progress="preprocess: rows transformed")
    return out
