import numpy as np
import pytest
from hdbscan import HDBSCAN
from sklearn.cluster import AgglomerativeClustering, KMeans

from embclust.cluster import build_model, check_clusterer, fit_clusterer, supports_predict
from embclust.errors import ConfigError
from embclust.preprocess import build_preprocessing, fit_preprocessing


def test_n_clusters_must_be_below_n_samples():
    with pytest.raises(ConfigError, match=r"n_clusters=50 must be >= 2 and < the number of samples \(50\)"):
        check_clusterer(KMeans(50), n_samples=50)


def test_min_cluster_size_must_fit():
    with pytest.raises(ConfigError, match="min_cluster_size=500"):
        check_clusterer(HDBSCAN(min_cluster_size=500), n_samples=100)


def test_same_seed_same_labels():
    X = np.random.default_rng(0).normal(size=(300, 6)).astype(np.float32)
    a = fit_clusterer(KMeans(5, n_init=3, random_state=1), X)
    b = fit_clusterer(KMeans(5, n_init=3, random_state=1), X)
    np.testing.assert_array_equal(a, b)


def test_model_chains_preprocessing_and_predicts_fitted_labels():
    X = np.random.default_rng(0).normal(size=(300, 6)).astype(np.float32)
    pre = build_preprocessing("l2", 3)
    Xp = fit_preprocessing(pre, X)
    km = KMeans(4, n_init=2, random_state=0)
    labels = fit_clusterer(km, Xp)
    model = build_model(pre, km)
    assert supports_predict(model)
    np.testing.assert_array_equal(model.predict(X), labels)
    assert not supports_predict(build_model(pre, AgglomerativeClustering(3)))


@pytest.mark.parametrize("max_bytes", [512 * 2**20, 0])  # one float64 copy, or chunks
def test_fast_kmeans_seeding_gives_scikit_learns_fit(monkeypatch, max_bytes):
    import numpy as np

    from embclust import cluster

    monkeypatch.setattr(cluster, "_SEEDING_MAX_BYTES", max_bytes)
    monkeypatch.setattr(cluster, "_SEEDING_CHUNK_BYTES", 20 * 8 * 700)
    from sklearn.cluster import KMeans
    from sklearn.datasets import make_blobs

    from embclust.cluster import fit_clusterer

    X, _ = make_blobs(n_samples=3000, centers=12, n_features=20, cluster_std=3.0, random_state=0)
    X = X.astype(np.float32)
    reference = KMeans(12, n_init=4, random_state=3).fit(X)
    fitted = KMeans(12, n_init=4, random_state=3)
    labels = fit_clusterer(fitted, X)
    assert np.array_equal(labels, reference.labels_)
    assert np.array_equal(fitted.cluster_centers_, reference.cluster_centers_)
    assert fitted.inertia_ == reference.inertia_
    assert fitted.get_params()["init"] == "k-means++"  # the logged model keeps its public config
