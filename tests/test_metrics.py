import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs

from embclust.scoring.metrics import purity_score, score_clustering


@pytest.fixture(scope="module")
def blobs():
    X, y = make_blobs(n_samples=600, centers=4, n_features=8, random_state=0)
    labels = KMeans(4, n_init=3, random_state=0).fit_predict(X)
    return X.astype(np.float32), y, labels


def test_scores_equal_scikit_learn(blobs):
    X, y, labels = blobs
    s = score_clustering(X, labels, y, silhouette_sample_size=None)
    assert s["silhouette"] == pytest.approx(skm.silhouette_score(X, labels))
    assert s["calinski_harabasz"] == pytest.approx(skm.calinski_harabasz_score(X, labels))
    assert s["davies_bouldin"] == pytest.approx(skm.davies_bouldin_score(X, labels))
    assert s["ari"] == pytest.approx(skm.adjusted_rand_score(y, labels))
    assert s["nmi"] == pytest.approx(skm.normalized_mutual_info_score(y, labels))
    assert s["v_measure"] == pytest.approx(skm.v_measure_score(y, labels))
    assert s["n_clusters"] == 4 and s["silhouette_sample_size"] == 600


def test_sampled_silhouette_is_seeded_and_logged(blobs):
    X, _, labels = blobs
    a = score_clustering(X, labels, silhouette_sample_size=200, seed=7)
    b = score_clustering(X, labels, silhouette_sample_size=200, seed=7)
    assert a["silhouette"] == b["silhouette"]
    assert a["silhouette_sample_size"] == 200
    assert a["silhouette"] == pytest.approx(skm.silhouette_score(X, labels, sample_size=200, random_state=7))


def test_noise_is_excluded_from_internal_scores():
    X, _ = make_blobs(n_samples=300, centers=3, n_features=4, random_state=1)
    labels = KMeans(3, n_init=2, random_state=0).fit_predict(X)
    noisy = labels.copy()
    noisy[:30] = -1
    s = score_clustering(X, noisy)
    keep = noisy != -1
    assert s["noise_fraction"] == pytest.approx(0.1)
    assert s["silhouette"] == pytest.approx(skm.silhouette_score(X[keep], noisy[keep]))
    assert s["davies_bouldin"] == pytest.approx(skm.davies_bouldin_score(X[keep], noisy[keep]))


def test_purity_matches_hand_count():
    truth = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    pred = np.array([5, 5, 6, 6, 6, 7, 7, 5])
    # cluster 5: {0,0,2} -> 2; cluster 6: {0,1,1} -> 2; cluster 7: {2,2} -> 2  => 6/8
    assert purity_score(truth, pred) == pytest.approx(6 / 8)


def test_single_cluster_is_not_scored():
    X = np.random.default_rng(0).normal(size=(20, 3))
    s = score_clustering(X, np.zeros(20, dtype=int))
    assert s["n_clusters"] == 1 and "silhouette" not in s


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_streaming_ch_db_equal_scikit_learn_in_small_chunks(dtype):
    from embclust.scoring.metrics import calinski_harabasz, davies_bouldin

    X, _ = make_blobs(n_samples=3000, centers=7, n_features=16, cluster_std=2.0, random_state=3)
    X = X.astype(dtype)
    labels = KMeans(7, n_init=2, random_state=0).fit_predict(X) + 10  # non-contiguous label values
    ref64 = X.astype(np.float64)
    for chunk in (1, 7, 256, None):
        assert calinski_harabasz(X, labels, chunk_size=chunk) == pytest.approx(
            skm.calinski_harabasz_score(ref64, labels), rel=1e-6
        )
        assert davies_bouldin(X, labels, chunk_size=chunk) == pytest.approx(
            skm.davies_bouldin_score(ref64, labels), rel=1e-6
        )
    # and on the float32 input itself, as scikit-learn receives it
    assert calinski_harabasz(X, labels) == pytest.approx(skm.calinski_harabasz_score(X, labels), rel=1e-6)
    assert davies_bouldin(X, labels) == pytest.approx(skm.davies_bouldin_score(X, labels), rel=1e-6)


def test_streaming_scores_exclude_noise_without_copy_and_on_memmap(tmp_path):
    X, _ = make_blobs(n_samples=2000, centers=5, n_features=12, random_state=2)
    X = X.astype(np.float32)
    labels = KMeans(5, n_init=2, random_state=0).fit_predict(X)
    labels[::13] = -1
    np.save(tmp_path / "X.npy", X)
    Xm = np.load(tmp_path / "X.npy", mmap_mode="r")
    s = score_clustering(Xm, labels, silhouette_sample_size=500, seed=3)
    keep = labels != -1
    assert s["calinski_harabasz"] == pytest.approx(skm.calinski_harabasz_score(X[keep], labels[keep]), rel=1e-6)
    assert s["davies_bouldin"] == pytest.approx(skm.davies_bouldin_score(X[keep], labels[keep]), rel=1e-6)
    # the seeded sample is drawn over all rows (so every sweep cell scores the same rows), then
    # the noise among them is left out
    rows = np.random.RandomState(3).permutation(X.shape[0])[:500]
    rows = rows[keep[rows]]
    assert s["silhouette"] == pytest.approx(np.mean(skm.silhouette_samples(X[rows], labels[rows])), rel=1e-6)
    assert s["silhouette_sample_size"] == rows.size < 500


def test_degenerate_clusters_match_scikit_learn():
    from embclust.scoring.metrics import calinski_harabasz, davies_bouldin

    X = np.array([[0, 0], [0, 0], [1, 1], [1, 1]], dtype=np.float32)  # zero within-cluster spread
    labels = np.array([0, 0, 1, 1])
    assert calinski_harabasz(X, np.array([0, 0, 1, 1])) == skm.calinski_harabasz_score(X, labels)
    assert davies_bouldin(X, labels) == skm.davies_bouldin_score(X, labels)
    with pytest.raises(ValueError):
        calinski_harabasz(X, np.zeros(4, dtype=int))


@pytest.mark.parametrize("sample_size", [None, 250])
def test_per_point_silhouette_equals_scikit_learn_on_the_scored_rows(blobs, sample_size):
    X, _, labels = blobs
    scores, (rows, values) = score_clustering(
        X, labels, silhouette_sample_size=sample_size, seed=11, return_silhouette_values=True
    )
    assert rows.size == (600 if sample_size is None else 250)
    np.testing.assert_allclose(values, skm.silhouette_samples(X[rows], labels[rows]), rtol=0, atol=1e-6)
    assert scores["silhouette"] == pytest.approx(
        skm.silhouette_score(X, labels, sample_size=sample_size, random_state=11), abs=1e-6
    )


@pytest.mark.parametrize("case", ["random", "same", "one_cluster", "noise_and_strings"])
def test_agreement_scores_from_one_table_are_scikit_learns_bits(case):
    from embclust.scoring.metrics import agreement_scores

    rng = np.random.default_rng(7)
    truth = rng.integers(0, 12, 2_000)
    labels = {"random": rng.integers(0, 20, 2_000), "same": truth.copy(), "one_cluster": np.zeros(2_000, dtype=int),
              "noise_and_strings": rng.integers(-1, 9, 2_000)}[case]
    if case == "noise_and_strings":
        truth = np.array([f"class {t}" for t in truth])  # classes numbered as scikit-learn numbers them
    got = agreement_scores(truth, labels)
    assert got == {
        "ari": skm.adjusted_rand_score(truth, labels),
        "nmi": skm.normalized_mutual_info_score(truth, labels),
        "v_measure": skm.v_measure_score(truth, labels),
        "purity": purity_score(truth, labels),
    }
