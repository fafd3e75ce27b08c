"""The blocked silhouette kernel against scikit-learn's ``silhouette_samples`` on the same rows."""

import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA

from embclust.data import make_synthetic
from embclust.scoring import silhouette
from embclust.scoring.silhouette import silhouette_samples

TOL = 1e-6


@pytest.fixture(scope="module")
def embeddings():
    """L2-normalised 768-d embedding-like rows with their true labels."""
    ds = make_synthetic(n_samples=1500, n_features=768, n_clusters=12, seed=5)
    return ds.X, ds.labels


def _assert_matches_sklearn(X, labels, **kwargs):
    ours = silhouette_samples(X, labels, **kwargs)
    ref = skm.silhouette_samples(X, labels)
    assert ours.shape == ref.shape and ours.dtype == np.float64
    np.testing.assert_allclose(ours, ref, rtol=0, atol=TOL)
    return ours


@pytest.mark.parametrize("k", [2, 200])
def test_embeddings_768d_match_sklearn(embeddings, k):
    X, _ = embeddings
    labels = KMeans(k, n_init=1, random_state=0).fit_predict(X)
    _assert_matches_sklearn(X, labels)


@pytest.mark.parametrize("components", [5, 100])
@pytest.mark.parametrize("k", [2, 200])
def test_pca_reduced_embeddings_match_sklearn(embeddings, components, k):
    X, _ = embeddings
    Z = PCA(components, random_state=0).fit_transform(X).astype(np.float32)
    labels = KMeans(k, n_init=1, random_state=0).fit_predict(Z)
    _assert_matches_sklearn(Z, labels)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_input_dtype_and_true_labels(embeddings, dtype):
    X, y = embeddings
    _assert_matches_sklearn(X.astype(dtype), y)


def test_many_small_tiles_give_the_same_values(embeddings):
    """Tiles cut through clusters and leave a ragged last tile; the sums must not depend on it."""
    X, y = embeddings
    Z = PCA(20, random_state=0).fit_transform(X).astype(np.float32)
    whole = silhouette_samples(Z, y)
    tiled = _assert_matches_sklearn(Z, y, block_bytes=8 * 97 * 97)  # 97 x 97 tiles
    np.testing.assert_allclose(tiled, whole, rtol=0, atol=1e-9)


def test_exact_duplicates_are_at_distance_zero(embeddings):
    X, y = embeddings
    Xd = np.concatenate([X[:600], X[:600]])  # every point twice
    yd = np.concatenate([y[:600], y[:600]])
    ours = _assert_matches_sklearn(Xd, yd)
    np.testing.assert_allclose(ours[:600], ours[600:], rtol=0, atol=1e-9)
    # Two identical points in clusters of their own: a = 0 and b > 0, so silhouette 1.
    X2 = np.array([[0.0, 0.0], [0.0, 0.0], [5.0, 5.0], [5.0, 5.0], [5.0, 6.0]])
    values = silhouette_samples(X2, np.array([0, 0, 1, 1, 1]))
    np.testing.assert_allclose(values[:2], 1.0, atol=TOL)
    np.testing.assert_allclose(values, skm.silhouette_samples(X2, [0, 0, 1, 1, 1]), atol=TOL)


def test_singleton_clusters_score_zero_and_labels_need_not_be_contiguous(embeddings):
    X, y = embeddings
    labels = (y * 7 + 100).astype(np.int64)  # ids 100, 107, ...: not 0..k-1
    labels[[3, 50, 900]] = [-5, 10_000, 42]  # three singleton clusters
    ours = _assert_matches_sklearn(X, labels)
    assert ours[[3, 50, 900]].tolist() == [0.0, 0.0, 0.0]


def test_number_of_labels_is_checked_as_sklearn():
    X = np.random.default_rng(0).normal(size=(10, 3))
    with pytest.raises(ValueError, match="Number of labels is 1"):
        silhouette_samples(X, np.zeros(10, dtype=int))
    with pytest.raises(ValueError, match="Number of labels is 10"):
        silhouette_samples(X, np.arange(10))


def test_distance_tiles_stay_within_the_memory_bound(monkeypatch):
    """No distance tile larger than ``block_bytes`` is ever built, however many rows."""
    sizes = []
    real = silhouette._squared_distances

    def recording(*args):
        D = real(*args)
        sizes.append(D.nbytes)
        return D

    monkeypatch.setattr(silhouette, "_squared_distances", recording)
    X = np.random.default_rng(1).normal(size=(3000, 16)).astype(np.float32)
    labels = np.arange(3000) % 7
    silhouette_samples(X, labels, block_bytes=256 * 1024)
    assert sizes and max(sizes) <= 256 * 1024
    sizes.clear()
    silhouette_samples(X, labels)
    assert max(sizes) <= silhouette.BLOCK_BYTES


@pytest.mark.parametrize("n_threads", [1, 2, 3])
def test_threads_share_the_tiles_and_give_scikit_learns_values(embeddings, n_threads):
    """Row blocks shared out among threads (97 x 97 tiles: 16 blocks) still add every tile once."""
    X, y = embeddings
    Z = PCA(20, random_state=0).fit_transform(X).astype(np.float32)
    one = silhouette_samples(Z, y, block_bytes=8 * 97 * 97, n_threads=1)
    shared = _assert_matches_sklearn(Z, y, block_bytes=8 * 97 * 97, n_threads=n_threads)
    np.testing.assert_allclose(shared, one, rtol=0, atol=1e-12)


def test_blocks_are_shared_by_tiles_with_none_left_out():
    groups = silhouette._share_blocks(16, 2)
    assert sorted(b for g in groups for b in g) == list(range(16))
    loads = [sum(16 - b for b in g) for g in groups]
    assert max(loads) - min(loads) <= 16  # tiles per block: 16, 15, ..., 1
    assert silhouette._share_blocks(1, 4) == [[0]]
