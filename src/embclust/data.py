"""Datasets: loaders that return a validated :class:`Dataset`."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from embclust.errors import DataError

log = logging.getLogger(__name__)

# Rows hashed per step when fingerprinting, so memory-mapped files are never read whole.
_HASH_CHUNK_ROWS = 65_536


@dataclass
class Dataset:
    """An embedding matrix with its row ids and, when known, true labels.

    Parameters
    ----------
    X : float32 array of shape (n_samples, n_features)
    ids : array of shape (n_samples,), shown in hover text and written to ``labels.parquet``.
    labels : optional array of shape (n_samples,) with true classes.
    label_names : optional names for integer ``labels``.
    """

    name: str
    X: np.ndarray
    ids: np.ndarray
    labels: np.ndarray | None = None
    label_names: list[str] | None = None
    _fingerprint: str | None = field(default=None, repr=False)

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

    def label_strings(self) -> np.ndarray | None:
        """True labels as strings, mapped through ``label_names`` when given."""
        if self.labels is None:
            return None
        if self.label_names is not None and np.issubdtype(self.labels.dtype, np.integer):
            names = np.asarray(self.label_names, dtype=object)
            return names[self.labels].astype(str)
        return self.labels.astype(str)


def fingerprint_array(X: np.ndarray) -> str:
    """Return a short blake2b hex digest of ``X``'s shape, dtype and bytes."""
    h = hashlib.blake2b(digest_size=16)
    h.update(repr((X.shape, str(X.dtype))).encode())
    for start in range(0, X.shape[0], _HASH_CHUNK_ROWS):
        h.update(np.ascontiguousarray(X[start : start + _HASH_CHUNK_ROWS]).tobytes())
    return h.hexdigest()


def validate_dataset(ds: Dataset) -> Dataset:
    """Check shape, finiteness and lengths; raise :class:`DataError` naming the problem."""
    X = ds.X
    if X.ndim != 2:
        raise DataError(f"dataset '{ds.name}': expected a 2-D matrix, got shape {X.shape}")
    if X.shape[0] == 0:
        raise DataError(f"dataset '{ds.name}' is empty: 0 rows")
    if X.shape[1] == 0:
        raise DataError(f"dataset '{ds.name}' has 0 feature columns")
    if X.shape[0] == 1:
        raise DataError(f"dataset '{ds.name}' has a single row: clustering needs at least 2")
    if not np.issubdtype(X.dtype, np.number):
        raise DataError(f"dataset '{ds.name}': features must be numeric, got dtype {X.dtype}")
    for name, arr in (("ids", ds.ids), ("labels", ds.labels)):
        if arr is not None and len(arr) != X.shape[0]:
            raise DataError(
                f"dataset '{ds.name}': {name} has {len(arr)} entries but the matrix has {X.shape[0]} rows"
            )
    bad_rows = _non_finite_rows(X)
    if bad_rows.size:
        first = ", ".join(str(i) for i in ds.ids[bad_rows[:5]])
        raise DataError(
            f"dataset '{ds.name}' has NaN or inf in {bad_rows.size} of {X.shape[0]} rows "
            f"(first ids: {first}); clean the data before clustering"
        )
    return ds


def _non_finite_rows(X: np.ndarray) -> np.ndarray:
    """Indices of rows holding NaN or inf, computed chunk by chunk to bound memory."""
    bad = []
    for start in range(0, X.shape[0], _HASH_CHUNK_ROWS):
        block = X[start : start + _HASH_CHUNK_ROWS]
        rows = np.flatnonzero(~np.isfinite(block).all(axis=1))
        if rows.size:
            bad.append(rows + start)
    return np.concatenate(bad) if bad else np.empty(0, dtype=np.int64)


def _as_float32(X: np.ndarray) -> np.ndarray:
    """Return ``X`` as float32, copying only when the dtype differs."""
    return X if X.dtype == np.float32 else X.astype(np.float32)


def load_digits(name: str = "digits") -> Dataset:
    """scikit-learn's bundled handwritten digits (1,797 x 64) with their true digit labels."""
    from sklearn.datasets import load_digits as _sk_load_digits

    bunch = _sk_load_digits()
    labels = bunch.target.astype(np.int64)
    return Dataset(
        name=name,
        X=_as_float32(bunch.data),
        ids=np.arange(len(labels)),
        labels=labels,
        label_names=[str(t) for t in bunch.target_names],
    )


def make_synthetic(
    n_samples: int = 5000,
    n_features: int = 128,
    n_clusters: int = 10,
    seed: int = 0,
    subspace_dim: int = 16,
    cluster_std: float = 1.0,
    center_spread: float = 4.0,
    noise: float = 0.02,
    size_concentration: float = 3.0,
    chunk_size: int = 100_000,
    name: str = "synthetic",
) -> Dataset:
    """Generate embedding-like data with known clusters.

    Gaussian clusters of unequal (Dirichlet-drawn) sizes live in a ``subspace_dim``-dimensional
    subspace, are rotated into ``n_features`` dimensions, get isotropic ``noise`` and are
    L2-normalised row by row. Rows are generated in chunks so a million rows never need more
    than the float32 output plus one chunk.
    """
    if n_samples < 0 or n_features < 1 or n_clusters < 1:
        raise DataError(
            f"synthetic dataset needs n_samples >= 0, n_features >= 1, n_clusters >= 1; "
            f"got {n_samples}, {n_features}, {n_clusters}"
        )
    rng = np.random.default_rng(seed)
    sub = min(subspace_dim, n_features)
    weights = rng.dirichlet(np.full(n_clusters, size_concentration))
    counts = rng.multinomial(n_samples, weights)
    labels = rng.permutation(np.repeat(np.arange(n_clusters), counts))
    centers = rng.normal(scale=center_spread, size=(n_clusters, sub))
    basis, _ = np.linalg.qr(rng.normal(size=(n_features, sub)))  # orthonormal columns

    X = np.empty((n_samples, n_features), dtype=np.float32)
    for start in range(0, n_samples, chunk_size):
        lab = labels[start : start + chunk_size]
        z = centers[lab] + rng.normal(scale=cluster_std, size=(lab.size, sub))
        block = z @ basis.T + rng.normal(scale=noise, size=(lab.size, n_features))
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        X[start : start + lab.size] = block
    return Dataset(
        name=name,
        X=X,
        ids=np.arange(n_samples),
        labels=labels.astype(np.int64),
        label_names=[f"c{i}" for i in range(n_clusters)],
    )


def load_npy(
    path: str,
    labels_path: str | None = None,
    ids_path: str | None = None,
    mmap: bool = True,
    name: str = "npy",
) -> Dataset:
    """Load a matrix from ``.npy`` (memory-mapped) or the first array of an ``.npz``."""
    X = _load_array(path, mmap=mmap)
    ids = _load_array(ids_path) if ids_path else np.arange(X.shape[0] if X.ndim else 0)
    labels = _load_array(labels_path) if labels_path else None
    if X.ndim == 2 and X.dtype != np.float32 and np.issubdtype(X.dtype, np.number):
        X = _as_float32(np.asarray(X))
    return Dataset(name=name, X=X, ids=np.asarray(ids), labels=None if labels is None else np.asarray(labels))


def _load_array(path: str, mmap: bool = False) -> np.ndarray:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"file not found: {path}")
    suffix = p.suffix.lower()
    if suffix not in {".npy", ".npz"}:
        raise DataError(f"{path}: unsupported extension '{suffix}' (allowed: .npy, .npz)")
    try:
        loaded = np.load(p, mmap_mode="r" if mmap and suffix == ".npy" else None, allow_pickle=False)
    except ValueError as exc:
        raise DataError(f"{path}: cannot be read as a numeric array ({exc})") from exc
    if suffix == ".npz":
        keys = list(loaded.keys())
        if not keys:
            raise DataError(f"{path}: the .npz archive holds no arrays")
        return loaded[keys[0]]
    return loaded
