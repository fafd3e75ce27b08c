"""The optional torch backend, run on the CPU device, against scikit-learn."""

import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs
from sklearn.decomposition import PCA

torch = pytest.importorskip("torch")

from embclust.scoring import torch_backend as tb  # noqa: E402
from embclust.errors import ConfigError  # noqa: E402


@pytest.fixture(scope="module")
def blobs():
    X, y = make_blobs(n_samples=1500, centers=6, n_features=10, cluster_std=1.5, random_state=4)
    X = X.astype(np.float32)
    labels = KMeans(6, n_init=3, random_state=0).fit_predict(X)
    return X, y, labels


def test_scores_equal_scikit_learn(blobs):
    X, _, labels = blobs
    assert tb.silhouette(X, labels, device="cpu", block_rows=256) == pytest.approx(
        skm.silhouette_score(X, labels), rel=1e-5
    )
    assert tb.calinski_harabasz(X, labels, device="cpu", chunk_rows=100) == pytest.approx(
        skm.calinski_harabasz_score(X.astype(np.float64), labels), rel=1e-5
    )
    assert tb.davies_bouldin(X, labels, device="cpu", chunk_rows=100) == pytest.approx(
        skm.davies_bouldin_score(X.astype(np.float64), labels), rel=1e-5
    )


def test_davies_bouldin_equals_scikit_learn_with_many_clusters():
    # Above 25 centroids torch.cdist takes its matrix-product path, where a centroid's distance
    # to itself is not exactly 0.
    X, _ = make_blobs(n_samples=2_000, centers=40, n_features=16, random_state=1)
    labels = KMeans(40, n_init=1, random_state=0).fit_predict(X)
    assert tb.davies_bouldin(X.astype(np.float32), labels, device="cpu") == pytest.approx(
        skm.davies_bouldin_score(X.astype(np.float32).astype(np.float64), labels), rel=1e-5
    )


def test_sampled_silhouette_uses_scikit_learns_sample(blobs):
    X, _, labels = blobs
    got = tb.silhouette(X, labels, sample_size=400, seed=9, device="cpu")
    assert got == pytest.approx(skm.silhouette_score(X, labels, sample_size=400, random_state=9), rel=1e-5)


def test_singleton_cluster_scores_zero_like_scikit_learn():
    X = np.array([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.1, 5.0], [9.0, 0.0]], dtype=np.float32)
    labels = np.array([0, 0, 1, 1, 2])
    assert tb.silhouette(X, labels, device="cpu") == pytest.approx(skm.silhouette_score(X, labels), rel=1e-6)


def test_kmeans_matches_scikit_learn_on_separated_blobs():
    X, _ = make_blobs(n_samples=3000, centers=8, n_features=16, cluster_std=1.0, random_state=1)
    X = X.astype(np.float32)
    ref = KMeans(8, n_init=10, random_state=0).fit(X)
    labels, centers, inertia, _ = tb.kmeans(X, 8, n_init=10, seed=0, device="cpu", chunk_rows=512)
    assert skm.adjusted_rand_score(ref.labels_, labels) >= 0.99
    assert inertia == pytest.approx(ref.inertia_, rel=1e-3)
    again = tb.kmeans(X, 8, n_init=10, seed=0, device="cpu", chunk_rows=512)[0]
    assert np.array_equal(labels, again)  # seeded


def test_kmeans_estimator_predicts_like_a_fitted_one(blobs):
    X, _, _ = blobs
    est = KMeans(6, n_init=2, random_state=0)
    labels = tb.fit_kmeans_estimator(est, X, device="cpu")
    assert np.array_equal(est.predict(X), labels)


def test_pca_equals_scikit_learn_up_to_sign(blobs):
    X, _, _ = blobs
    Xt, components, mean, var = tb.pca(X, 4, device="cpu", chunk_rows=333)
    ref = PCA(4, svd_solver="covariance_eigh").fit(X)
    Xr = ref.transform(X)
    signs = np.sign((Xt * Xr).sum(0))
    np.testing.assert_allclose(Xt * signs, Xr, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(var, ref.explained_variance_, rtol=1e-5)
    np.testing.assert_allclose(mean, ref.mean_, rtol=1e-5, atol=1e-6)


def test_score_clustering_matches_cpu_path(blobs):
    from embclust.scoring.metrics import score_clustering

    X, y, labels = blobs
    noisy = labels.copy()
    noisy[::10] = -1
    cpu = score_clustering(X, noisy, y, silhouette_sample_size=None)
    gpu = tb.score_clustering(X, noisy, y, silhouette_sample_size=None)
    assert gpu.keys() == cpu.keys()
    for key in cpu:
        assert gpu[key] == pytest.approx(cpu[key], rel=1e-5), key


def test_a_silhouette_sample_missing_a_cluster_skips_only_the_silhouette_on_both_backends():
    from embclust.scoring.metrics import score_clustering

    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(0, 1, (595, 4)), rng.normal(9, 1, (5, 4))]).astype(np.float32)
    labels = np.repeat([0, 1], [595, 5])
    rows = np.arange(20)  # the sample holds only cluster 0
    for scorer in (score_clustering, tb.score_clustering):
        scores = scorer(X, labels, sample_rows=rows)
        assert "silhouette" not in scores
        assert scores["calinski_harabasz"] == pytest.approx(skm.calinski_harabasz_score(X.astype(np.float64), labels), rel=1e-6)
        assert scores["davies_bouldin"] == pytest.approx(skm.davies_bouldin_score(X.astype(np.float64), labels), rel=1e-6)


def test_per_point_silhouette_matches_cpu_path(blobs):
    """The silhouette diagram gets the same sampled rows and values from either backend."""
    from embclust.scoring.metrics import score_clustering

    X, y, labels = blobs
    noisy = labels.copy()
    noisy[::10] = -1
    cpu_scores, (cpu_rows, cpu_values) = score_clustering(
        X, noisy, y, silhouette_sample_size=300, seed=4, return_silhouette_values=True
    )
    gpu_scores, (gpu_rows, gpu_values) = tb.score_clustering(
        X, noisy, y, silhouette_sample_size=300, seed=4, return_silhouette_values=True
    )
    np.testing.assert_array_equal(gpu_rows, cpu_rows)
    assert (noisy[gpu_rows] != -1).all()
    np.testing.assert_allclose(gpu_values, cpu_values, rtol=1e-5, atol=1e-7)
    assert gpu_scores["silhouette"] == pytest.approx(cpu_values.mean(), rel=1e-5)


def test_resolve_backend():
    assert tb.resolve_backend("cpu") == "cpu"
    assert tb.resolve_backend("torch") == "torch"
    assert tb.resolve_backend("auto") == ("torch" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError):
        tb.resolve_backend("tpu")
