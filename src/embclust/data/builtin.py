"""Bundled and generated datasets: scikit-learn's digits, embedding-like synthetic clusters."""

from __future__ import annotations

import numpy as np

from embclust.data.dataset import Dataset, as_float32
from embclust.errors import ConfigError


def load_digits(name: str = "digits") -> Dataset:
    """scikit-learn's bundled handwritten digits (1,797 x 64) with their true digit labels."""
    from sklearn.datasets import load_digits as _sk_load_digits

    bunch = _sk_load_digits()
    labels = bunch.target.astype(np.int64)
    return Dataset(
        name=name,
        X=as_float32(bunch.data),
        ids=np.arange(len(labels)),
        labels=labels,
        label_names=[str(t) for t in bunch.target_names],
    )


def _check_synthetic(**values) -> None:
    """One line naming the first ``dataset.<key>`` of the generator that is not a number in its range."""
    whole = {"n_samples": 0, "n_features": 1, "n_clusters": 1, "subspace_dim": 1, "chunk_size": 1}  # at least
    for key, value in values.items():
        if key in whole:
            ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= whole[key]
            need = f"a whole number >= {whole[key]}"
        else:
            ok = (isinstance(value, (int, float, np.number)) and not isinstance(value, bool) and np.isfinite(value)
                  and (value > 0 if key == "size_concentration" else value >= 0))
            need = "a number > 0" if key == "size_concentration" else "a number >= 0"
        if not ok:
            raise ConfigError(f"dataset.{key}={value!r} must be {need} (dataset=synthetic)")


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
    _check_synthetic(n_samples=n_samples, n_features=n_features, n_clusters=n_clusters, subspace_dim=subspace_dim,
                     cluster_std=cluster_std, center_spread=center_spread, noise=noise,
                     size_concentration=size_concentration, chunk_size=chunk_size)
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
