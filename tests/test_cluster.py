import pickle
import re

import numpy as np
import pytest
from hdbscan import HDBSCAN
from sklearn.cluster import AgglomerativeClustering, KMeans, MiniBatchKMeans
from sklearn.decomposition import PCA

from embclust.cluster import (
    FittedClustering,
    build_model,
    check_clusterer,
    fit,
    fit_clusterer,
    kmeans,
    supports_predict,
)
from embclust.cluster import lloyd
from embclust.data import make_synthetic
from embclust.errors import ConfigError
from embclust.preprocess import build_preprocessing, fit_preprocessing


def test_n_clusters_must_be_below_n_samples():
    with pytest.raises(ConfigError, match=r"n_clusters=50 must be >= 2 and < the number of samples \(50\)"):
        check_clusterer(KMeans(50), n_samples=50)


def test_min_cluster_size_must_fit():
    with pytest.raises(ConfigError, match="min_cluster_size=500"):
        check_clusterer(HDBSCAN(min_cluster_size=500), n_samples=100)


@pytest.mark.parametrize(("clusterer", "message"), [
    # hdbscan fitted, then failed building its prediction data: "k must be less than or equal to ..."
    (HDBSCAN(min_cluster_size=5, min_samples=101), r"clusterer.min_samples=101 must be <= the number of samples \(100\)"),
    (HDBSCAN(algorithm="nope"), r"clusterer.algorithm='nope' is not allowed \(allowed: best, generic, "),
    # hdbscan's own message left its '%s' unfilled
    (HDBSCAN(cluster_selection_method="foo"), r"clusterer.cluster_selection_method='foo' is not allowed \(allowed: eom, leaf\)"),
    (AgglomerativeClustering(linkage="ward", metric="cosine"), r"clusterer.metric='cosine' does not work with clusterer.linkage=ward"),
])
def test_a_clusterer_value_its_library_checks_only_when_fitting_is_named_before(clusterer, message):
    with pytest.raises(ConfigError, match=message):
        check_clusterer(clusterer, n_samples=100)
    check_clusterer(HDBSCAN(min_cluster_size=5, min_samples=100), n_samples=100)  # the bound itself fits


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


# --- KMeans through sklearnex (Intel's scikit-learn extension) -------------------------------

@pytest.fixture(scope="module")
def embeddings_pca():
    """Embedding-like rows (L2-normalised, 256-d) reduced to 20 PCA components, as a sweep cell sees them."""
    ds = make_synthetic(n_samples=4000, n_features=256, n_clusters=15, seed=2)
    return PCA(20, random_state=0).fit_transform(ds.X).astype(np.float32)


def _needs_sklearnex():
    pytest.importorskip("sklearnex", reason="scikit-learn-intelex is not installed on this platform")


def test_sklearnex_kmeans_is_seeded_and_logged_as_plain_scikit_learn(embeddings_pca):
    _needs_sklearnex()
    X = embeddings_pca
    a = fit(KMeans(12, n_init=3, random_state=7), X, implementation="sklearnex")
    b = fit(KMeans(12, n_init=3, random_state=7), X, implementation="sklearnex")
    assert isinstance(a, FittedClustering) and a.implementation == "sklearnex"
    assert a.labels.dtype == np.int64
    np.testing.assert_array_equal(a.labels, b.labels)
    # The estimator is scikit-learn's own class, so a logged model needs no sklearnex to predict.
    assert type(a.estimator) is KMeans
    restored = pickle.loads(pickle.dumps(a.estimator))
    np.testing.assert_array_equal(restored.predict(X), a.labels)
    assert restored.cluster_centers_.shape == (12, 20) and restored.n_iter_ >= 1
    np.testing.assert_allclose(-restored.score(X), a.estimator.inertia_, rtol=1e-4)


def test_sklearnex_inertia_is_within_half_a_percent_of_scikit_learn(embeddings_pca):
    _needs_sklearnex()
    X = embeddings_pca
    for k in (10, 30):
        fast = fit(KMeans(k, n_init=5, random_state=0), X, implementation="sklearnex")
        ref = fit(KMeans(k, n_init=5, random_state=0), X, implementation="scikit-learn")
        assert (fast.implementation, ref.implementation) == ("sklearnex", "scikit-learn")
        assert fast.estimator.inertia_ <= ref.estimator.inertia_ * 1.005, k


def test_falls_back_to_scikit_learn_when_sklearnex_is_missing(monkeypatch, caplog, embeddings_pca):
    monkeypatch.setattr(kmeans, "_sklearnex_kmeans", lambda: (None, "sklearnex is not importable (test)"))
    monkeypatch.setattr(kmeans, "_fallbacks_logged", set())
    X = embeddings_pca
    reference = KMeans(8, n_init=2, random_state=0).fit_predict(X)
    with caplog.at_level("INFO", logger="embclust.cluster.kmeans"):
        first = fit(KMeans(8, n_init=2, random_state=0), X, implementation="sklearnex")
        fit(KMeans(8, n_init=2, random_state=0), X, implementation="sklearnex")
    assert first.implementation == "scikit-learn"
    np.testing.assert_array_equal(first.labels, reference)
    assert sum("sklearnex is not importable" in r.getMessage() for r in caplog.records) == 1  # once
    # The default on data no larger than its sample: scikit-learn's starts and Lloyd on every row.
    default = fit(KMeans(8, n_init=2, random_state=0), X)
    assert (default.implementation, default.sample_size) == (kmeans.SAMPLE_IMPLEMENTATION, None)
    np.testing.assert_array_equal(default.labels, reference)


# --- auto: restarts on a seeded sample, one Lloyd refinement over every row's block --------------

@pytest.fixture(scope="module")
def embeddings_large():
    """12,000 embedding-like rows in 20 PCA dimensions: larger than a 2,000-row restart sample."""
    ds = make_synthetic(n_samples=12_000, n_features=128, n_clusters=12, seed=5)
    return PCA(20, random_state=0).fit_transform(ds.X).astype(np.float32)


SMALL_SAMPLE = kmeans.SampleSettings(sample_per_cluster=100, min_sample=2_000)


def test_auto_restarts_on_a_sample_and_labels_every_row_by_its_nearest_centre(embeddings_large):
    X = embeddings_large
    fitted = fit(KMeans(12, n_init=5, random_state=3), X, sample=SMALL_SAMPLE)
    assert (fitted.implementation, fitted.sample_size) == (kmeans.SAMPLE_IMPLEMENTATION, 2_000)
    model = fitted.estimator
    assert type(model) is KMeans and model.cluster_centers_.shape == (12, 20)
    # Labels and inertia are those of all rows, as scikit-learn defines them from the centres.
    np.testing.assert_array_equal(model.predict(X), fitted.labels)
    np.testing.assert_allclose(-model.score(X), model.inertia_, rtol=1e-5)
    restored = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(restored.predict(X), fitted.labels)
    # As good as scikit-learn's restarts on every row.
    reference = KMeans(12, n_init=5, random_state=3).fit(X)
    assert model.inertia_ <= reference.inertia_ * 1.005
    # The restarts ran on the sample, not on all rows: a larger sample is a different fit.
    bigger = fit(KMeans(12, n_init=5, random_state=3), X, sample=kmeans.SampleSettings(100, 4_000))
    assert bigger.sample_size == 4_000


@pytest.mark.parametrize("n_init, sample_rows", [(1, 2_000), (5, 6_000)])
def test_auto_fits_every_row_as_scikit_learn_where_the_sample_would_save_no_work(embeddings_large, n_init, sample_rows):
    # n_init=1: one restart on 12,000 rows costs less than two on the sample plus refining the two
    # best on every row; n_init=5 on a 6,000-row sample: 60,000 rows of restarts plus refinement
    # against 5 x 12,000. There auto runs scikit-learn's own starts and Lloyd loop on every row:
    # its labels, as scikit-learn computes them on the threads auto gives each restart (its bits
    # follow the thread count: one per restart, exactly two for a lone one).
    from threadpoolctl import threadpool_limits

    X = embeddings_large
    fitted = fit(KMeans(12, n_init=n_init, random_state=3), X, sample=kmeans.SampleSettings(100, sample_rows))
    assert fitted.sample_size is None
    with threadpool_limits(limits=2 if n_init == 1 else 1, user_api="openmp"):
        reference = KMeans(12, n_init=n_init, random_state=3).fit(X)
    np.testing.assert_array_equal(fitted.labels, reference.labels_)
    assert fitted.estimator.inertia_ == pytest.approx(reference.inertia_, rel=1e-6)


def test_auto_does_not_fit_every_row_where_the_restart_budget_would_cut_the_restarts(embeddings_large):
    # kmeans.max_restart_work allows 3 restarts' worth on all 12,000 rows: fitting every row could
    # not run the 5 asked for, so auto keeps the sample (and its own budget there).
    budget = kmeans.SampleSettings(100, 6_000, max_restart_work=12_000 * 12 * 3)
    fitted = fit(KMeans(12, n_init=5, random_state=3), embeddings_large, sample=budget)
    assert fitted.sample_size == 6_000
    unlimited = fit(KMeans(12, n_init=5, random_state=3), embeddings_large, sample=kmeans.SampleSettings(100, 6_000))
    assert unlimited.sample_size is None


@pytest.mark.parametrize("where", ["in-memory", "passes", None])
def test_auto_gives_the_same_labels_and_inertia_on_one_or_two_threads(embeddings_large, where, monkeypatch):
    from threadpoolctl import threadpool_limits

    X = embeddings_large
    if where == "passes":  # data above the in-memory bound is refined by passes over row blocks
        monkeypatch.setattr(kmeans, "IN_MEMORY_MAX_WORK", 0)
    # None: n_init=1, where the sample saves no work: one restart of scikit-learn's loop on every
    # row, whose bits would follow the thread count if it ran on as many threads as allowed.
    n_init = 1 if where is None else 4
    fits = []
    for threads in (1, 2):
        with threadpool_limits(limits=threads):
            fits.append(fit(KMeans(12, n_init=n_init, random_state=1), X, sample=SMALL_SAMPLE))
    assert fits[0].refinement == fits[1].refinement == where
    assert fits[0].restarts == {"in-memory": 8, "passes": 12, None: 1}[where]  # restarts_per_init auto
    one, two = (f.estimator for f in fits)
    np.testing.assert_array_equal(fits[0].labels, fits[1].labels)
    assert one.inertia_ == two.inertia_ and one.n_iter_ == two.n_iter_
    np.testing.assert_array_equal(one.cluster_centers_, two.cluster_centers_)


@pytest.mark.parametrize("where", ["in-memory", "passes"])
def test_auto_is_not_thrown_off_by_a_large_common_offset(embeddings_large, where, monkeypatch):
    # Raw features far from the origin (around 1e4): in float32, |c|^2 / 2 - x.c on uncentred rows
    # would put rows on the wrong centre (inertia +800%); the fit centres as scikit-learn does.
    if where == "passes":
        monkeypatch.setattr(kmeans, "IN_MEMORY_MAX_WORK", 0)
    X = embeddings_large
    base = fit(KMeans(12, n_init=4, random_state=1), X, sample=SMALL_SAMPLE)
    moved = fit(KMeans(12, n_init=4, random_state=1), X + np.float32(1e4), sample=SMALL_SAMPLE)
    assert moved.refinement == where
    reference = KMeans(12, n_init=4, random_state=1).fit(X + np.float32(1e4)).inertia_
    assert moved.estimator.inertia_ <= reference * 1.005
    assert abs(moved.estimator.inertia_ / base.estimator.inertia_ - 1) < 1e-3
    assert (moved.labels == base.labels).mean() > 0.99


def test_lloyd_passes_give_an_empty_cluster_a_far_row_as_scikit_learn_does():
    # A start from a sample that missed a group holds two centres on one group: one of them
    # ends empty, and moves to the rows the sample never saw.
    rng = np.random.default_rng(0)
    groups = (rng.normal(size=(3, 8)) * 10).astype(np.float32)
    X = groups[np.repeat([0, 1, 2], [2_000, 2_000, 30])] + rng.normal(scale=0.1, size=(4_030, 8)).astype(np.float32)
    start = groups[[0, 0, 1]]
    for threads in (1, 2):
        r = lloyd.refine(X, start, n_threads=threads, block_rows=500)
        assert np.unique(r.labels).size == 3
        np.testing.assert_array_equal(np.sort(np.bincount(r.labels)), [30, 2_000, 2_000])
        sk = KMeans(3, init=start, n_init=1).fit(X)
        assert r.inertia == pytest.approx(sk.inertia_, rel=1e-4)
    assert list(lloyd.farthest_rows(X, groups[[0, 1]], 3, n_threads=2, block_rows=500)) == list(
        4_000 + np.argsort(-((X[4_000:, None] - groups[[0, 1]]) ** 2).sum(-1).min(1), kind="stable")[:3])


def test_lloyd_passes_stop_when_fewer_distinct_rows_than_centres():
    # 5 distinct rows, 8 centres: every pass leaves 3 clusters empty and moves them onto rows
    # whose own centre sits there already. Unchanged labels end the loop, as in scikit-learn's.
    rng = np.random.default_rng(0)
    points = rng.normal(size=(5, 6)).astype(np.float32)
    X = points[rng.integers(0, 5, 3_000)]
    start = np.concatenate([points, points[:3] + np.float32(0.01)])
    for threads in (1, 2):
        r = lloyd.refine(X, start, n_threads=threads, max_iter=300, block_rows=500)
        assert r.n_iter <= 3
        assert r.inertia < 1e-6
        assert np.unique(r.labels).size == 5
        np.testing.assert_array_equal(r.labels, lloyd.assign(X, r.centers, threads, 500))


def test_auto_refuses_a_nan_outside_its_sample(embeddings_large):
    X = embeddings_large.copy()
    sampled = kmeans.sample_rows(X.shape[0], SMALL_SAMPLE.size(12), 1)
    X[np.setdiff1d(np.arange(X.shape[0]), sampled)[0], 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fit(KMeans(12, n_init=2, random_state=1), X, sample=SMALL_SAMPLE)


def test_a_restart_budget_runs_fewer_restarts_each_on_every_thread_with_the_same_result(embeddings_large):
    from threadpoolctl import threadpool_limits

    # 2,000 sample rows x 12 centres = 24,000 per restart: a budget of 50,000 leaves 2 of 12.
    budget = kmeans.SampleSettings(sample_per_cluster=100, min_sample=2_000, max_restart_work=50_000)
    assert budget.restarts(8, 2_000, 12) == 2 and budget.restarts(8, 10**6, 12) == 1
    assert kmeans.SampleSettings(max_restart_work=None).restarts(8, 10**9, 1000) == 8
    assert kmeans.SampleSettings(max_restart_work=float("inf")).restarts(8, 10**9, 1000) == 8
    fits = []
    for threads in (1, 2):
        with threadpool_limits(limits=threads):
            fits.append(fit(KMeans(12, n_init=4, random_state=1), embeddings_large, sample=budget))
    assert fits[0].restarts == fits[1].restarts == 2
    np.testing.assert_array_equal(fits[0].labels, fits[1].labels)
    assert fits[0].estimator.inertia_ == fits[1].estimator.inertia_
    full = fit(KMeans(12, n_init=4, random_state=1), embeddings_large, sample=SMALL_SAMPLE)
    assert full.restarts == 8  # n_init x restarts_per_init (auto: 2 in memory)
    assert fits[0].estimator.inertia_ <= full.estimator.inertia_ * 1.01
    # 200 rows per centre and a small min_sample: k-means++ seeds from every 6th sample row
    # (about 32 per centre), Lloyd runs on all 2,400.
    seeded = kmeans.SampleSettings(sample_per_cluster=200, min_sample=100, max_restart_work=50_000)
    thin = [fit(KMeans(12, n_init=4, random_state=1), embeddings_large, sample=seeded) for _ in range(2)]
    assert thin[0].restarts == 1 and thin[0].sample_size == 2_400
    np.testing.assert_array_equal(thin[0].labels, thin[1].labels)
    assert thin[0].estimator.inertia_ <= full.estimator.inertia_ * 1.02


def test_auto_same_seed_same_fit_other_seed_other_sample(embeddings_large):
    a = fit(KMeans(12, n_init=2, random_state=4), embeddings_large, sample=SMALL_SAMPLE).estimator
    b = fit(KMeans(12, n_init=2, random_state=4), embeddings_large, sample=SMALL_SAMPLE).estimator
    assert a.inertia_ == b.inertia_
    np.testing.assert_array_equal(a.cluster_centers_, b.cluster_centers_)
    rows = kmeans.sample_rows(12_000, 2_000, 4)
    assert rows.size == 2_000 and np.all(np.diff(rows) > 0)
    np.testing.assert_array_equal(rows, kmeans.sample_rows(12_000, 2_000, 4))
    assert not np.array_equal(rows, kmeans.sample_rows(12_000, 2_000, 5))
    assert kmeans.sample_rows(2_000, 2_000, 4) is None  # no smaller than the data: every row


def test_the_rows_in_a_memory_map_or_an_array_give_the_same_fit(embeddings_large, tmp_path):
    # A sweep cell reads its cached rows memory-mapped; the same run alone holds an array.
    np.save(tmp_path / "x.npy", embeddings_large)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    a, b = (fit(KMeans(12, n_init=3, random_state=1), X, sample=SMALL_SAMPLE) for X in (embeddings_large, mapped))
    assert a.refinement == b.refinement == "in-memory" and a.restarts == b.restarts
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.estimator.inertia_ == b.estimator.inertia_


def test_in_memory_refinement_is_scikit_learns_lloyd_from_each_candidate_keeping_the_lower(embeddings_large):
    from embclust.cluster import lloyd

    X = embeddings_large
    rng = np.random.default_rng(2)
    starts = [X[rng.choice(len(X), 12, replace=False)] for _ in range(2)]
    theirs = [KMeans(12, init=start, n_init=1, max_iter=300, tol=1e-4).fit(X) for start in starts]
    assert theirs[0].inertia_ != pytest.approx(theirs[1].inertia_, rel=1e-6)  # two different optima
    better = min(theirs, key=lambda km: km.inertia_)
    ours = kmeans._refine_in_memory(X, starts, 300, 1e-4, 2)
    # scikit-learn centres the data first and sums on its threads: the same optimum up to rounding.
    assert np.mean(ours.labels == better.labels_) > 0.999
    np.testing.assert_allclose(ours.inertia, better.inertia_, rtol=1e-5)
    # Labels are the rows' nearest centres, and the exact inertia to them.
    np.testing.assert_array_equal(lloyd.assign(X, ours.centers, 1), ours.labels)
    np.testing.assert_allclose(ours.inertia, lloyd.inertia(X, ours.labels, ours.centers, 1), rtol=0)
    assert ours.inertia < max(km.inertia_ for km in theirs) * (1 - 1e-4)


def test_restarts_per_init_takes_auto_or_a_positive_integer():
    from omegaconf import OmegaConf

    from embclust import stages
    from embclust.validate import validate_config

    assert stages.kmeans_sample(OmegaConf.create({"kmeans": {"restarts_per_init": "auto"}})).restarts_per_init is None
    assert stages.kmeans_sample(OmegaConf.create({"kmeans": {"restarts_per_init": 4}})).per_init(True) == 4
    assert kmeans.SampleSettings().per_init(True) == 2 and kmeans.SampleSettings().per_init(False) == 3
    with pytest.raises(ConfigError, match=r"kmeans.restarts_per_init=0 .*auto or an integer >= 1"):
        validate_config(OmegaConf.create({"kmeans": {"restarts_per_init": 0}}))


def test_lloyd_refinement_matches_scikit_learns_lloyd_from_the_same_start(embeddings_large):
    from embclust.cluster import lloyd

    X = embeddings_large
    start = X[np.random.default_rng(0).choice(len(X), 12, replace=False)]
    ours = lloyd.refine(X, start, n_threads=2, block_rows=1_000)
    theirs = KMeans(12, init=start, n_init=1, max_iter=300, tol=1e-4).fit(X)
    np.testing.assert_array_equal(ours.labels, theirs.labels_)
    np.testing.assert_allclose(ours.centers, theirs.cluster_centers_, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ours.inertia, theirs.inertia_, rtol=1e-5)
    assert abs(ours.n_iter - theirs.n_iter_) <= 1
    # Block size changes how rows are grouped, not the result.
    again = lloyd.refine(X, start, n_threads=1, block_rows=4_096)
    np.testing.assert_array_equal(again.labels, ours.labels)


def test_unsupported_parameter_falls_back(embeddings_pca):
    _needs_sklearnex()
    fitted = fit(KMeans(6, n_init=2, random_state=0, algorithm="elkan"), embeddings_pca)
    assert fitted.implementation == "scikit-learn"
    assert fitted.estimator._algorithm == "elkan"


def test_other_clusterers_are_fitted_by_their_own_library(embeddings_pca):
    X = embeddings_pca[:600]
    mb = fit(MiniBatchKMeans(5, n_init=2, random_state=0), X)
    assert mb.implementation == "scikit-learn" and type(mb.estimator) is MiniBatchKMeans
    np.testing.assert_array_equal(mb.labels, MiniBatchKMeans(5, n_init=2, random_state=0).fit_predict(X))
    agg = fit(AgglomerativeClustering(4), X, implementation="sklearnex")
    assert agg.implementation == "scikit-learn"
    np.testing.assert_array_equal(agg.labels, AgglomerativeClustering(4).fit_predict(X))
    hdbscan = pytest.importorskip("hdbscan")
    assert fit(hdbscan.HDBSCAN(min_cluster_size=20), X).implementation == "hdbscan"  # the hdbscan package's code ran


def test_unknown_implementation_is_a_config_error(embeddings_pca):
    with pytest.raises(ConfigError, match=r"cluster_implementation='cuml' is not allowed \(allowed: auto, embclust, sklearnex, scikit-learn\)"):
        fit(KMeans(3), embeddings_pca, implementation="cuml")


def test_limit_threads_bounds_onedal_and_restores_it():
    _needs_sklearnex()
    import daal4py

    before = daal4py.num_threads()
    with kmeans.limit_threads(1):
        assert daal4py.num_threads() == 1
    assert daal4py.num_threads() == before


# --- embclust's k-means++: scikit-learn's starts, drawn faster ---------------------------------

@pytest.mark.parametrize("k", [2, 9, 40])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kmeans_plusplus_draws_scikit_learns_starts(embeddings_pca, k, dtype):
    from sklearn.cluster import kmeans_plusplus as sklearn_kmeans_plusplus

    from embclust.cluster.kmeans_plusplus import kmeans_plusplus

    X = embeddings_pca.astype(dtype)
    X = X - X.mean(axis=0)  # what KMeans.fit seeds on
    ours_rs, ref_rs = np.random.RandomState(3), np.random.RandomState(3)
    same = 0
    for _ in range(6):  # consecutive starts on one RandomState, as KMeans(n_init=6) draws them
        centers, ids = kmeans_plusplus(X, k, ours_rs)
        ref_centers, ref_ids = sklearn_kmeans_plusplus(X, k, random_state=ref_rs)
        assert centers.dtype == X.dtype and centers.shape == (k, X.shape[1])
        np.testing.assert_array_equal(centers, X[ids])
        same += int(np.array_equal(ids, ref_ids))
    assert same == 6, f"{same} of 6 starts identical"
    assert ours_rs.randint(1 << 30) == ref_rs.randint(1 << 30)  # the random stream advanced alike


def test_kmeans_plusplus_draws_scikit_learns_starts_on_20000_rows_in_100_dimensions():
    """Where float32 rounding of the row norms already moves draws (as it did before the fix)."""
    from sklearn.cluster import kmeans_plusplus as sklearn_kmeans_plusplus

    from embclust.cluster.kmeans_plusplus import kmeans_plusplus

    ds = make_synthetic(n_samples=20_000, n_features=256, n_clusters=15, seed=2)
    X = PCA(100, random_state=0).fit_transform(ds.X).astype(np.float32)
    X -= X.mean(axis=0)
    ours_rs, ref_rs = np.random.RandomState(3), np.random.RandomState(3)
    for start in range(4):
        ids = kmeans_plusplus(X, 30, ours_rs)[1]
        np.testing.assert_array_equal(ids, sklearn_kmeans_plusplus(X, 30, random_state=ref_rs)[1], err_msg=f"start {start}")


@pytest.mark.parametrize("lockstep_bytes", [None, 1])  # all starts in one block; one start per block
def test_lockstep_starts_are_scikit_learns_n_init_starts(embeddings_pca, monkeypatch, lockstep_bytes):
    """The starts of KMeans(n_init=7): drawn together, each one is scikit-learn's, in order."""
    from sklearn.cluster import kmeans_plusplus as sklearn_kmeans_plusplus

    from embclust.cluster import kmeans_plusplus as kpp

    if lockstep_bytes is not None:
        monkeypatch.setattr(kpp, "MAX_LOCKSTEP_BYTES", lockstep_bytes)
    X = embeddings_pca - embeddings_pca.mean(axis=0)
    ours_rs, ref_rs = np.random.RandomState(11), np.random.RandomState(11)
    starts = kpp.kmeans_plusplus_starts(X, 25, ours_rs, 7)
    assert len(starts) == 7
    for i, centers in enumerate(starts):
        ref_centers, _ = sklearn_kmeans_plusplus(X, 25, random_state=ref_rs)
        np.testing.assert_array_equal(centers, ref_centers, err_msg=f"start {i}")
    assert len({c.tobytes() for c in starts}) == 7  # seven different starts, not one repeated
    assert ours_rs.randint(1 << 30) == ref_rs.randint(1 << 30)


@pytest.mark.parametrize("float64_copy", [True, False])
def test_lockstep_starts_on_uncentred_rows_with_their_mean(embeddings_pca, monkeypatch, float64_copy):
    """Seeding on X with mean= (no centred copy held) gives the starts of X - mean, in either memory path."""
    from embclust.cluster import kmeans_plusplus as kpp

    if not float64_copy:
        monkeypatch.setattr(kpp, "MAX_FLOAT64_COPY_BYTES", 0)
        monkeypatch.setattr(kpp, "_BLOCK_ROWS", 1000)
    X = embeddings_pca + np.float32(3.0)  # far from the origin, as un-centred embeddings are
    mean = X.mean(axis=0)
    centred = kpp.kmeans_plusplus_starts(X - mean, 15, np.random.RandomState(4), 3)
    from_mean = kpp.kmeans_plusplus_starts(X, 15, np.random.RandomState(4), 3, mean=mean)
    for a, b in zip(centred, from_mean):
        assert b.dtype == np.float32
        np.testing.assert_array_equal(a, b)


def test_kmeans_plusplus_bounded_memory_path_gives_the_same_starts(embeddings_pca, monkeypatch):
    from embclust.cluster import kmeans_plusplus as kpp

    X = embeddings_pca - embeddings_pca.mean(axis=0)
    full = kpp.kmeans_plusplus(X, 12, np.random.RandomState(0))[1]
    monkeypatch.setattr(kpp, "MAX_FLOAT64_COPY_BYTES", 0)
    monkeypatch.setattr(kpp, "_BLOCK_ROWS", 1000)
    blocked = kpp.kmeans_plusplus(X, 12, np.random.RandomState(0))[1]
    np.testing.assert_array_equal(full, blocked)


@pytest.mark.parametrize("implementation", ["auto", "embclust"])
@pytest.mark.parametrize("k", [10, 30])
def test_embclust_implementation_lands_where_scikit_learn_lands(embeddings_pca, k, implementation):
    X = embeddings_pca
    ours = fit(KMeans(k, n_init=4, random_state=5), X, implementation=implementation)
    ref = fit(KMeans(k, n_init=4, random_state=5), X, implementation="scikit-learn")
    # auto on data no larger than its sample fits every row with scikit-learn's starts too.
    assert ours.implementation == {"auto": kmeans.SAMPLE_IMPLEMENTATION, "embclust": "embclust-kmeans++/scikit-learn"}[implementation]
    assert type(ours.estimator) is KMeans
    # scikit-learn's starts refined by scikit-learn's own Lloyd loop: scikit-learn's answer.
    np.testing.assert_allclose(ours.estimator.inertia_, ref.estimator.inertia_, rtol=1e-5)
    np.testing.assert_array_equal(ours.labels, ref.labels)
    assert ours.estimator.n_iter_ == ref.estimator.n_iter_
    # Centres are in the data's own coordinates (not the centred ones the fit ran on).
    np.testing.assert_array_equal(ours.estimator.predict(X), ours.labels)
    np.testing.assert_allclose(-ours.estimator.score(X), ours.estimator.inertia_, rtol=1e-4)
    again = fit(KMeans(k, n_init=4, random_state=5), X, implementation=implementation)
    np.testing.assert_array_equal(again.labels, ours.labels)


def test_embclust_implementation_without_sklearnex_refines_in_scikit_learn(monkeypatch, embeddings_pca):
    monkeypatch.setattr(kmeans, "_sklearnex_kmeans", lambda: (None, "sklearnex is not importable (test)"))
    monkeypatch.setattr(kmeans, "_fallbacks_logged", set())
    X = embeddings_pca
    ours = fit(KMeans(8, n_init=3, random_state=1), X, implementation="embclust")
    assert ours.implementation == "embclust-kmeans++/scikit-learn"
    ref = KMeans(8, n_init=3, random_state=1).fit(X)
    np.testing.assert_allclose(ours.estimator.inertia_, ref.inertia_, rtol=1e-5)


@pytest.mark.parametrize("implementation", ["auto", "embclust"])
def test_embclust_implementation_leaves_other_inits_to_the_libraries(embeddings_pca, implementation):
    fitted = fit(KMeans(5, init="random", n_init=2, random_state=0), embeddings_pca, implementation=implementation)
    assert fitted.implementation in ("sklearnex", "scikit-learn")
    assert np.unique(fitted.labels).size == 5 and fitted.estimator.init == "random"


@pytest.mark.parametrize("private_loop", [True, False])
def test_lloyd_refinements_equal_scikit_learn_fits_from_the_same_starts(embeddings_pca, monkeypatch, private_loop):
    from embclust.cluster import kmeans_plusplus as kpp

    if not private_loop:  # another scikit-learn release without the private loop: public fits
        monkeypatch.setattr(kmeans, "_private_lloyd_loop", lambda: None)
    X = embeddings_pca
    mean = X.mean(axis=0)
    starts = kpp.kmeans_plusplus_starts(X, 9, np.random.RandomState(3), 3, mean=mean)
    kept = [s.copy() for s in starts]
    Xc = X - mean
    for (labels, inertia, centers, n_iter), start in zip(kmeans.lloyd_refinements(Xc, starts), kept):
        ref = KMeans(9, init=start, n_init=1).fit(Xc)
        np.testing.assert_array_equal(labels, ref.labels_)
        np.testing.assert_allclose(inertia, ref.inertia_, rtol=1e-6)
        np.testing.assert_allclose(centers, ref.cluster_centers_, rtol=1e-5, atol=1e-6)
        assert n_iter == ref.n_iter_
    for start, before in zip(starts, kept):  # the caller's starts are not overwritten
        np.testing.assert_array_equal(start, before)


def test_more_clusters_than_distinct_points_is_said_in_one_log_line(caplog):
    X = np.repeat(np.random.default_rng(0).normal(size=(3, 6)), 40, axis=0).astype(np.float32)
    with caplog.at_level("WARNING", logger="embclust.cluster.kmeans"):
        fitted = fit(KMeans(5, n_init=2, random_state=0), X)
    assert np.unique(fitted.labels).size == 3
    assert any("3 distinct clusters for clusterer.n_clusters=5" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("refine_tol", "x", "kmeans.refine_tol='x' must be null or a fraction in [0, 1)"),
        ("refine_tol", 1.5, "kmeans.refine_tol=1.5 must be null or a fraction in [0, 1)"),
        ("max_restart_work", 0, "kmeans.max_restart_work=0 must be null or a number >= 1"),
        ("max_restart_work", "lots", "kmeans.max_restart_work='lots' must be null or a number >= 1"),
    ],
)
def test_kmeans_sample_settings_out_of_range_name_the_key(key, value, message):
    from omegaconf import OmegaConf

    from embclust import stages
    from embclust.errors import ConfigError

    with pytest.raises(ConfigError, match=re.escape(message)):
        stages.kmeans_sample(OmegaConf.create({"kmeans": {key: value}}))
    assert stages.kmeans_sample(OmegaConf.create({"kmeans": {key: None}})) is not None


def test_the_model_predicts_the_fits_labels_where_features_share_a_large_offset():
    # normalize=none, no PCA, features near 1e4: scikit-learn's float32 distances on raw rows put
    # most rows on another centre; the logged model centres them first, as the fit's passes do.
    from sklearn.pipeline import Pipeline

    from embclust.cluster import build_model

    rng = np.random.default_rng(0)
    X = (rng.normal(size=(20, 16))[rng.integers(0, 20, 6_000)] + rng.normal(scale=0.5, size=(6_000, 16))).astype(np.float32)
    preprocessing = Pipeline([("pca", "passthrough")])
    for offset, steps in ((1e4, ["pca", "centre", "cluster"]), (0.0, ["pca", "cluster"])):
        moved = X + np.float32(offset)
        fitted = fit(KMeans(20, n_init=2, random_state=0), moved)
        model = build_model(preprocessing, fitted.estimator)
        assert [name for name, _ in model.steps] == steps
        assert (model.predict(moved) == fitted.labels).mean() > 0.999
        np.testing.assert_allclose(model.transform(moved[:50]), fitted.estimator.transform(moved[:50]), rtol=1e-3, atol=1e-2)


def test_a_size_that_does_not_fit_the_rows_says_where_rows_went():
    from embclust.data.dataset import Dataset
    from embclust.pipeline import check_clusterer_on

    ds = Dataset(name="d", X=np.zeros((5, 2), np.float32), ids=np.arange(5))
    ds.n_dropped_duplicates = 95  # dataset.dedupe=true kept 5 of 100 rows
    with pytest.raises(ConfigError, match=r"< the number of samples \(5\) \(dataset.dedupe=true dropped 95 near-duplicate rows\)"):
        check_clusterer_on(KMeans(10), ds)


def test_a_size_that_does_not_fit_a_sample_names_dataset_sample_size():
    # dataset.sample_size=5 with n_clusters=10 named only n_clusters and "5 samples", not the sample.
    from embclust.data.dataset import Dataset, subsample
    from embclust.pipeline import check_clusterer_on

    X = np.random.default_rng(0).normal(size=(100, 2)).astype(np.float32)
    ds = subsample(Dataset(name="d", X=X, ids=np.arange(100)), 5, seed=0)
    with pytest.raises(ConfigError, match=r"\(dataset.sample_size=5 kept 5 of 100 rows\)"):
        check_clusterer_on(KMeans(10), ds)
    check_clusterer_on(KMeans(3), ds)


def test_an_implementation_for_kmeans_only_asked_of_another_clusterer_is_said_once(caplog):
    # cluster_implementation=embclust with MiniBatchKMeans was accepted without a word.
    from embclust.cluster.fit import fit

    X = np.random.default_rng(0).normal(size=(200, 4)).astype(np.float32)
    with caplog.at_level("WARNING"):
        ran = fit(MiniBatchKMeans(3, n_init=1, random_state=0), X, implementation="embclust")
    assert ran.implementation == "scikit-learn"
    assert "cluster_implementation=embclust applies to clusterer=kmeans only: MiniBatchKMeans" in caplog.text


@pytest.mark.parametrize(("clusterer", "said"), [
    (MiniBatchKMeans(5, n_init=1, random_state=0), "MiniBatchKMeans found 3 clusters for clusterer.n_clusters=5"),
    (AgglomerativeClustering(5), "AgglomerativeClustering split identical rows between clusters: the data has 3 distinct "
                                 "rows for clusterer.n_clusters=5"),
])
def test_more_clusters_than_distinct_rows_is_said_for_every_clusterer_with_a_k(clusterer, said, caplog):
    # KMeans said it; MiniBatchKMeans and agglomerative gave silhouette 1 or split duplicates without a word.
    from embclust.cluster.fit import fit

    rng = np.random.default_rng(0)
    X = rng.normal(size=(3, 6)).astype(np.float32)[rng.integers(0, 3, 120)]
    with caplog.at_level("WARNING"):
        fit(clusterer, X)
    assert said in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        fit(type(clusterer)(**{**clusterer.get_params(), "n_clusters": 3}), X)
    assert "clusterer.n_clusters" not in caplog.text
