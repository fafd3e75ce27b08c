"""Datasets: loaders that return a validated :class:`Dataset`."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from embclust.errors import ConfigError, DataError
from embclust.engine.rows import is_rows_view

log = logging.getLogger(__name__)

# Shown for negative (unknown) integer labels.
UNKNOWN_LABEL = "unknown"
MISSING_LABEL = "(missing)"  # an empty cell of a text label column: left out of agreement scores
# Largest squared row norm float32 arithmetic holds (normalising, distances); above it, inf.
FLOAT32_MAX = float(np.finfo(np.float32).max)
# Rows per step when hashing or checking values, so large matrices need no full-size temporaries.
_HASH_CHUNK_ROWS = 16_384


@dataclass
class Dataset:
    """An embedding matrix with its row ids and, when known, true labels.

    Parameters
    ----------
    X : float32 array of shape (n_samples, n_features)
    ids : array of shape (n_samples,), shown in hover text and written to ``labels.parquet``.
    labels : optional array of shape (n_samples,) with true classes.
    label_names : optional names for integer ``labels``.
    texts : optional array of shape (n_samples,) of documents, for hover text and keywords.
    feature_names : optional names of the columns of ``X`` (tabular data).
    metadata : extra per-row columns (e.g. a category) to colour maps by.
    from_tabular : built from user features by the ``tabular`` loader, not an embedding model.
    """

    name: str
    X: np.ndarray
    ids: np.ndarray
    labels: np.ndarray | None = None
    label_names: list[str] | None = None
    texts: np.ndarray | None = None
    feature_names: list[str] | None = None
    metadata: dict[str, np.ndarray] = field(default_factory=dict)
    n_dropped_invalid: int = 0
    n_duplicate_ids: int = 0
    n_dropped_duplicates: int = 0
    # (rows kept, rows read) when dataset.sample_size took a sample; None when it did not.
    sampled: tuple[int, int] | None = None
    from_tabular: bool = False
    # Where the rows of X are on disk, for engine=ray's workers to read themselves
    # (embclust.engine.rows); None once rows were dropped, sampled or reordered.
    source: Any = field(default=None, repr=False)
    _fingerprint: str | None = field(default=None, repr=False)
    _labels_fingerprint: str | None = field(default=None, repr=False)

    @property
    def n_samples(self) -> int:
        return int(self.X.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.X.shape[1]) if self.X.ndim == 2 else 0

    @property
    def fingerprint(self) -> str:
        """Hash of the matrix (shape, dtype and values); identical data gives the same value."""
        if self._fingerprint is None:
            self._fingerprint = fingerprint_array(self.X)
        return self._fingerprint

    @property
    def labels_fingerprint(self) -> str | None:
        """Hash of the true labels (each row's class name), None without them: scores against
        them (ARI, NMI, purity) change with the labels while the matrix's fingerprint does not."""
        if self.labels is None:
            return None
        if self._labels_fingerprint is None:
            h = hashlib.blake2b(digest_size=16)
            if np.issubdtype(self.labels.dtype, np.integer):  # the codes and their names: no sort of every row
                h.update(b"codes\0" + "\0".join(self.label_names or []).encode("utf-8", "surrogatepass"))
                h.update(np.ascontiguousarray(self.labels, dtype=np.int64))
            else:
                classes, index = self.label_codes()
                h.update(b"names\0" + "\0".join(classes.tolist()).encode("utf-8", "surrogatepass"))
                h.update(np.ascontiguousarray(index, dtype=np.int64))
            self._labels_fingerprint = h.hexdigest()
        return self._labels_fingerprint

    def label_strings(self, rows: slice | np.ndarray | None = None) -> np.ndarray | None:
        """True labels (of ``rows``, else all) as strings, mapped through ``label_names`` when given."""
        if self.labels is None:
            return None
        labels = self.labels if rows is None else np.asarray(self.labels[rows])
        if np.issubdtype(labels.dtype, np.integer):
            if self.label_names is not None:
                # Negative labels mean unknown; indexing with them would pick the last names.
                names = np.asarray([*self.label_names, UNKNOWN_LABEL], dtype=object)
                codes = np.where(labels < 0, len(self.label_names), labels)
                return names[codes].astype(str)
            text = labels.astype(str)
            if (labels < 0).any():
                text = np.where(labels < 0, UNKNOWN_LABEL, text.astype(object)).astype(str)
            return text
        return labels.astype(str)

    def label_codes(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(class names sorted as strings, each row's index into them): the true labels without a
        string per row (integer labels are named once per distinct value)."""
        if self.labels is None:
            return None
        if np.issubdtype(self.labels.dtype, np.integer):
            values, inverse = np.unique(self.labels, return_inverse=True)
            names = Dataset(self.name, np.empty((values.size, 0)), values, values, self.label_names).label_strings()
            classes, name_index = np.unique(names, return_inverse=True)  # unknown labels share one name
            return classes, name_index[inverse]
        import pandas as pd

        codes, uniques = pd.factorize(self.labels)  # a hash pass, not a sort of every row's string
        names = np.asarray(uniques).astype(str)
        classes, name_index = np.unique(names, return_inverse=True)
        return classes, name_index[codes]


def fingerprint_array(X: np.ndarray) -> str:
    """A short blake2b hex digest of ``X``'s shape, dtype and bytes.

    Each block of rows is hashed on its own and the blocks' digests, in row order, make the
    digest: the same value whether the blocks are hashed on this machine's threads or, with
    engine=ray, where the rows lie.
    """
    from embclust import blocks

    def block_digest(rows: slice, block: np.ndarray) -> bytes:
        return hashlib.blake2b(memoryview(np.ascontiguousarray(block)), digest_size=16).digest()

    h = hashlib.blake2b(digest_size=16)
    h.update(repr((tuple(int(n) for n in X.shape), str(X.dtype))).encode())
    for group in blocks.map_groups(X, block_digest, b"".join, blocks.available_threads(), progress="data fingerprint"):
        h.update(group)
    return h.hexdigest()


ON_INVALID_CHOICES = ("error", "drop")


# Below this largest squared row norm (row norms below 1e-18), squared norms and distances come
# within 100x of float32's smallest normal number (1.2e-38): they lose their digits, then are 0.
FLOAT32_TINY_SQUARED_NORM = 1e-36


def validate_dataset(ds: Dataset, on_invalid: str = "error", assigning: bool = False) -> Dataset:
    """Check shape, lengths and finiteness; raise :class:`DataError` naming the problem.

    Rows holding NaN or inf raise an error, or with ``on_invalid="drop"`` are removed (the count
    is kept in ``n_dropped_invalid``). Duplicate ids are counted and logged as a warning.
    ``assigning``: new rows to assign to a fitted clustering (``embclust assign``), where one row,
    or rows all alike, are fine.
    """
    if on_invalid not in ON_INVALID_CHOICES:
        raise ConfigError(f"dataset.on_invalid={on_invalid!r} is not allowed (allowed: error, drop)")
    X = ds.X
    if X.ndim != 2:
        raise DataError(f"dataset '{ds.name}': expected a 2-D matrix, got shape {X.shape}")
    if X.shape[0] == 0:
        raise DataError(f"dataset '{ds.name}' is empty: 0 rows")
    if X.shape[1] == 0:
        raise DataError(f"dataset '{ds.name}' has 0 feature columns")
    if not is_real_dtype(X.dtype):
        raise DataError(f"dataset '{ds.name}': features must be real numbers (integer or float), got dtype {X.dtype}")
    for name, arr in (("ids", ds.ids), ("labels", ds.labels), ("texts", ds.texts)):
        if arr is not None and len(arr) != X.shape[0]:
            raise DataError(
                f"dataset '{ds.name}': {name} has {len(arr)} entries but the matrix has {X.shape[0]} rows"
            )
    bad_rows, huge_rows, largest_squared_norm = _invalid_rows(X)
    if bad_rows.size or huge_rows.size:
        parts = []
        if bad_rows.size:
            first = ", ".join(str(i) for i in ds.ids[bad_rows[:5]])
            parts.append(f"NaN or inf in {bad_rows.size} of {X.shape[0]} rows (first ids: {first})")
        if huge_rows.size:
            first = ", ".join(str(i) for i in ds.ids[huge_rows[:5]])
            parts.append(
                f"values too large for float32 arithmetic (squared norm above {FLOAT32_MAX:.3g}) in "
                f"{huge_rows.size} of {X.shape[0]} rows (first ids: {first})"
            )
        where = " and ".join(parts)
        why = ("holds NaN, inf or values too large for float32" if bad_rows.size and huge_rows.size else
               "holds values too large for float32" if huge_rows.size else "holds NaN or inf")
        bad_rows = np.union1d(bad_rows, huge_rows)
        if on_invalid == "error":
            fix = "clean those rows before assigning them" if assigning else "clean the data or set dataset.on_invalid=drop"
            raise DataError(f"dataset '{ds.name}' has {where}; {fix}")
        if is_rows_view(X):
            raise DataError(f"dataset '{ds.name}' has {where}; engine=ray clusters every row of the files: clean the "
                            "data, or drop those rows with engine=local")
        log.warning("dataset '%s': dropping %s", ds.name, where)
        ds = _drop_rows(ds, bad_rows, why)
    if assigning:
        return ds
    if ds.X.shape[0] == 1:
        raise DataError(f"dataset '{ds.name}' has a single row: clustering needs at least 2")
    if 0 < largest_squared_norm < FLOAT32_TINY_SQUARED_NORM:
        # every distance would be 0 or digits of noise: one cluster, NaN scores, a false 'duplicate rows' warning
        raise DataError(
            f"dataset '{ds.name}': values too small for float32 arithmetic (the largest row norm is "
            f"{np.sqrt(largest_squared_norm):.3g}): distances between rows underflow to 0; rescale the features "
            "(multiply them by a constant) before clustering"
        )
    if _all_rows_equal(ds.X):
        raise DataError(
            f"dataset '{ds.name}': all {ds.X.shape[0]} rows are the same vector, so there is nothing to cluster; "
            "check how the embeddings were written (e.g. one vector repeated, or all zeros)"
        )
    n_unique = np.unique(ds.ids).size
    if n_unique < ds.ids.size:
        ds.n_duplicate_ids = int(ds.ids.size - n_unique)
        log.warning("dataset '%s': %d duplicate ids (rows kept)", ds.name, ds.n_duplicate_ids)
    return ds


def subsample(ds: Dataset, n: int | None, seed: int = 0) -> Dataset:
    """A seeded random sample of ``n`` rows (in file order), or ``ds`` itself when it is smaller."""
    if n is None or n >= ds.n_samples:
        return ds
    if n < 2:
        raise ConfigError(f"dataset.sample_size={n} must be >= 2")
    rows = np.sort(np.random.default_rng(seed).choice(ds.n_samples, size=n, replace=False))
    log.info("dataset '%s': using a seeded sample of %d of %d rows", ds.name, n, ds.n_samples)
    out = take_rows(ds, rows)
    out.sampled = (n, ds.n_samples)
    return out


def _drop_rows(ds: Dataset, rows: np.ndarray, why: str = "holds NaN or inf") -> Dataset:
    keep = np.ones(ds.X.shape[0], dtype=bool)
    keep[rows] = False
    if keep.sum() == 0:
        raise DataError(f"dataset '{ds.name}': every row {why}; nothing left to cluster")
    out = take_rows(ds, np.flatnonzero(keep))
    out.n_dropped_invalid = ds.n_dropped_invalid + int(rows.size)
    return out


def take_rows(ds: Dataset, rows: np.ndarray) -> Dataset:
    """A dataset of the given rows (every per-row field follows)."""
    take = lambda a: None if a is None else np.asarray(a)[rows]  # noqa: E731
    return Dataset(
        name=ds.name,
        X=_take_matrix_rows(ds.X, np.asarray(rows)),
        ids=take(ds.ids),
        labels=take(ds.labels),
        label_names=ds.label_names,
        texts=take(ds.texts),
        feature_names=ds.feature_names,
        metadata={k: take(v) for k, v in ds.metadata.items()},
        n_dropped_invalid=ds.n_dropped_invalid,
        n_duplicate_ids=ds.n_duplicate_ids,
        n_dropped_duplicates=ds.n_dropped_duplicates,
        sampled=ds.sampled,
        from_tabular=ds.from_tabular,
    )


def _take_matrix_rows(X: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``X[rows]`` gathered a block at a time into memory or, above ``memory.spill_above_mb``, a
    temporary file: a large sample of a memory-mapped file is never a second copy in RAM."""
    from embclust import blocks

    if rows.dtype == bool:
        rows = np.flatnonzero(rows)
    if X.ndim != 2:
        return np.ascontiguousarray(X[rows])
    out = blocks.scratch_matrix(rows.size, X.shape[1], X.dtype, "sampled rows")
    for start in range(0, rows.size, _HASH_CHUNK_ROWS):
        out[start : start + _HASH_CHUNK_ROWS] = X[rows[start : start + _HASH_CHUNK_ROWS]]
    return out


def _all_rows_equal(X: np.ndarray) -> bool:
    """Whether every row equals the first, read chunk by chunk and stopping at the first that differs."""
    first = np.asarray(X[0])
    start, size = 0, 16  # real data differs within its first rows: read few (engine=ray reads them on the driver)
    while start < X.shape[0]:
        if not (np.asarray(X[start : start + size]) == first).all():
            return False
        start, size = start + size, min(2 * size, _HASH_CHUNK_ROWS)
    return True


def _invalid_rows(X: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Rows holding NaN or inf, finite rows whose squared norm overflows float32, and the largest
    squared norm of the other rows.

    The second kind (values near 1e20 and above) turn into inf while normalising or computing
    distances and silently collapse the clustering. One pass over blocks of rows (where the rows
    lie, with engine=ray); only the row numbers and one number come back.
    """
    from embclust import blocks

    def check(rows: slice, block: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        finite = np.isfinite(block).all(axis=1)
        with np.errstate(over="ignore", invalid="ignore"):
            squared = np.einsum("ij,ij->i", block, block, dtype=np.float64)
        huge = finite & (squared > FLOAT32_MAX)
        valid = squared[finite & ~huge]
        return (np.flatnonzero(~finite) + rows.start, np.flatnonzero(huge) + rows.start,
                float(valid.max()) if valid.size else 0.0)

    def fold(parts) -> tuple[np.ndarray, np.ndarray, float]:
        bad, huge, largest = zip(*parts)
        return np.concatenate(bad), np.concatenate(huge), max(largest)

    groups = blocks.map_groups(X, check, fold, blocks.available_threads(),
                               progress="validate: rows checked for NaN, inf and overflow")
    empty = np.empty(0, dtype=np.int64)
    if not groups:
        return empty, empty, 0.0
    return (np.concatenate([g[0] for g in groups]), np.concatenate([g[1] for g in groups]),
            max(g[2] for g in groups))


def is_real_dtype(dtype) -> bool:
    """Whether features of ``dtype`` can be clustered: integers or floats (not complex, bool, text)."""
    return bool(np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating))


def as_float32(X: np.ndarray, what: str = "the data") -> np.ndarray:
    """Return ``X`` as float32, copying only when the dtype differs.

    A finite value beyond float32's range (float64 above 3.4e38) would become inf and be reported
    as "NaN or inf", which the file does not hold: it raises :class:`DataError` saying so, naming
    ``what`` (the file and its key) and the first rows.
    """
    if X.dtype == np.float32:
        return X
    with np.errstate(over="ignore"):
        out = X.astype(np.float32)
    if out.dtype.kind == "f" and X.dtype.kind == "f" and X.dtype.itemsize > 4:
        rows = []
        for start in range(0, out.shape[0], 65_536):
            block = out[start : start + 65_536]
            suspect = np.flatnonzero(~np.isfinite(block).all(axis=tuple(range(1, block.ndim))))
            if suspect.size == 0:
                continue
            source = np.asarray(X[start : start + 65_536][suspect])
            over = np.isinf(block[suspect]) & np.isfinite(source)
            rows.extend((start + suspect[over.reshape(len(suspect), -1).any(axis=1)]).tolist())
        if rows:
            first = ", ".join(str(r) for r in rows[:5])
            raise DataError(
                f"{what}: values beyond float32's range (magnitude above {FLOAT32_MAX:.3g}) in {len(rows)} of "
                f"{out.shape[0]} rows (first rows, from 0: {first}); embclust computes in float32: rescale the "
                "features or clean those rows"
            )
    return out
