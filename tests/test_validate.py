"""Config checks before the expensive stages: one line naming the key and what is allowed."""

import pytest
from omegaconf import OmegaConf

from embclust.errors import ConfigError
from embclust.validate import check_quadratic_work, validate_config

FAST = ("reducer=none", "analysis.explain.enabled=false")


def _cfg():
    base = {
        "seed": 42,
        "backend": "cpu",
        "dataset": {"_target_": "x", "path": "e.npy", "sample_size": None, "on_invalid": "error"},
        "preprocess": {"normalize": "l2", "pca_components": None},
        "clusterer": {"_target_": "sklearn.cluster.KMeans", "n_clusters": 10},
        "reducer": {"max_points": 20000},
        "metrics": {"silhouette_sample_size": 10000, "max_quadratic_rows": 25000, "max_full_silhouette_rows": 50000},
        "analysis": {"maps": {"max_points": 50000}},
        "sweep": {"metric": "silhouette", "resume": True},
        "mlflow": {"tracking_uri": "sqlite:///mlflow.db", "experiment_name": "embclust"},
    }
    return OmegaConf.create(base)


def test_a_valid_config_passes():
    validate_config(_cfg())


def test_agglomerative_cut_by_distance_takes_n_clusters_null():
    # scikit-learn's AgglomerativeClustering(n_clusters=None, distance_threshold=d) was refused.
    cfg = _cfg()
    cfg.clusterer = {"_target_": "sklearn.cluster.AgglomerativeClustering", "n_clusters": None, "distance_threshold": 5.0}
    validate_config(cfg)
    cfg.clusterer.distance_threshold = None
    with pytest.raises(ConfigError, match="clusterer.n_clusters=None must be an integer >= 2"):
        validate_config(cfg)


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("clusterer.n_clusters", "abc", "clusterer.n_clusters='abc' must be an integer >= 2"),
        ("seed", "abc", "seed='abc' must be an integer >= 0"),
        ("seed", 2**40, "seed=1099511627776 must be an integer from 0 to 4294967295"),  # not 'clusterer.random_state'
        ("metrics.silhouette_sample_size", 0, "metrics.silhouette_sample_size=0 must be null or an integer >= 2"),
        ("metrics.silhouette_sample_size", 1, "metrics.silhouette_sample_size=1 must be null or an integer >= 2"),
        ("metrics.silhouette_sample_size", -3, "metrics.silhouette_sample_size=-3 must be null or an integer >= 2"),
        ("metrics.silhouette_sample_size", "abc", "metrics.silhouette_sample_size='abc' must be null"),
        ("dataset.sample_size", 1, "dataset.sample_size=1 must be null or an integer >= 2"),
        ("preprocess.pca_components", 2.5, "preprocess.pca_components=2.5 must be null or an integer >= 1"),
        ("reducer.max_points", "all", "reducer.max_points='all' must be null or an integer >= 2"),
        ("analysis.maps.max_points", 0, "analysis.maps.max_points=0 must be null or an integer >= 1"),
        ("dataset.path", "???", "dataset.path is required: pass dataset.path=FILE"),
        # =VALUE led to 'numeric_columns=a,b', which Hydra reads as a sweep
        ("dataset.numeric_columns", "???", "dataset.numeric_columns is required: pass 'dataset.numeric_columns=[a,b]'"),
        ("sweep.metric", "accuracy", "sweep.metric='accuracy' is not allowed (allowed: silhouette, calinski_harabasz"),
        ("backend", "gpu", "backend='gpu' is not allowed (allowed: cpu, torch, auto)"),
        ("sweep.resume", "maybe", "sweep.resume='maybe' is not allowed: must be true or false"),
        ("analysis.explain.enabled", "maybe", "analysis.explain.enabled='maybe' is not allowed: must be true or false"),
        ("analysis.dendrogram.enabled", "yes", "analysis.dendrogram.enabled='yes' is not allowed: must be true, false, auto"),
        ("metrics.stability.enabled", 1, "metrics.stability.enabled=1 is not allowed: must be true or false"),
        ("preprocess.svd_solver", "magic", "preprocess.svd_solver='magic' is not allowed (allowed: auto, full"),
        ("reducer.min_dist", "abc", "reducer.min_dist='abc' must be a number >= 0"),
        ("reducer.perplexity", 0, "reducer.perplexity=0 must be a number > 0"),
        ("clusterer.cluster_selection_epsilon", -1, "clusterer.cluster_selection_epsilon=-1 must be a number >= 0"),
        ("analysis.explain.max_clusters", 0, "analysis.explain.max_clusters=0 must be an integer >= 2"),
        ("dataset.batch_size", 0, "dataset.batch_size=0 must be an integer >= 1"),
        ("metrics.stability.n_resamples", 0, "metrics.stability.n_resamples=0 must be an integer >= 1"),
    ],
)
def test_bad_values_name_the_key_and_what_is_allowed(key, value, expected):
    cfg = _cfg()
    OmegaConf.update(cfg, key, value, merge=False)
    with pytest.raises(ConfigError) as info:
        validate_config(cfg)
    assert expected in str(info.value)


def test_agglomerative_above_the_bound_is_refused_with_the_memory_it_would_need():
    cfg = _cfg()
    OmegaConf.update(cfg, "clusterer._target_", "sklearn.cluster.AgglomerativeClustering", merge=False)
    check_quadratic_work(cfg, 25_000)  # at the bound: allowed
    with pytest.raises(ConfigError) as info:
        check_quadratic_work(cfg, 40_000)
    message = str(info.value)
    assert "40000 rows needs about 6.4 GB" in message and "dataset.sample_size=25000" in message
    OmegaConf.update(cfg, "clusterer.linkage", "single", merge=False)  # holds no matrix, computes every pair:
    check_quadratic_work(cfg, 40_000)  # bounded by time, not by the memory bound
    with pytest.raises(ConfigError, match=r"linkage=single\) on 60000 rows computes all 1.8e\+09 pairwise distances"
                                          r".*above metrics.max_full_silhouette_rows=50000"):
        check_quadratic_work(cfg, 60_000)
    OmegaConf.update(cfg, "clusterer.linkage", "ward", merge=False)
    OmegaConf.update(cfg, "metrics.max_quadratic_rows", 50_000, merge=False)
    check_quadratic_work(cfg, 40_000)  # the bound is configurable
    OmegaConf.update(cfg, "clusterer._target_", "sklearn.cluster.KMeans", merge=False)
    check_quadratic_work(cfg, 1_000_000)


def test_full_silhouette_above_the_bound_points_at_the_sample_size_key():
    cfg = _cfg()
    OmegaConf.update(cfg, "metrics.silhouette_sample_size", None, merge=False)
    check_quadratic_work(cfg, 50_000)
    with pytest.raises(ConfigError, match="set metrics.silhouette_sample_size=10000"):
        check_quadratic_work(cfg, 50_001)


def _assert_one_line_failure(res, expected):
    assert res.returncode == 1, res.stderr[-2000:]
    assert expected in res.stderr
    assert "Traceback" not in res.stderr and "Error executing job" not in res.stderr
    (run,) = res.runs()
    assert run.info.status == "FAILED" and expected in run.data.tags["error"]
    assert "silhouette" not in run.data.metrics and "time/cluster_s" not in run.data.metrics


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (("clusterer.n_clusters=abc",), "clusterer.n_clusters='abc' must be an integer >= 2"),
        (("seed=abc",), "seed='abc' must be an integer >= 0"),
        (("metrics.silhouette_sample_size=1",), "metrics.silhouette_sample_size=1 must be null or an integer >= 2"),
        (("dataset=npy",), "dataset.path is required: pass dataset.path=FILE"),
        (("sweep.metric=accuracy",), "sweep.metric='accuracy' is not allowed"),
    ],
)
def test_cli_bad_config_fails_before_any_work(run_cli, overrides, expected):
    _assert_one_line_failure(run_cli(*FAST, *overrides), expected)


@pytest.mark.parametrize(
    "overrides, expected",
    [  # scikit-learn checks these only when fitting: the map's after the whole clustering
        (("reducer=tsne", "reducer.verbose=maybe"), "reducer.verbose='maybe' is not allowed: TSNE takes an int"),
        (("reducer=none", "+clusterer.algorithm=fast"), "clusterer.algorithm='fast' is not allowed: KMeans takes a str among"),
        # a map colour was checked only at the plots, after the clustering and analyses
        (("reducer=none", "analysis.maps.color_by=dept"), "analysis.maps.color_by: no metadata column 'dept' (loaded: none;"),
    ],
)
def test_cli_bad_estimator_parameter_names_its_key_before_clustering(run_cli, overrides, expected):
    _assert_one_line_failure(run_cli("analysis.explain.enabled=false", *overrides), expected)


def test_estimator_parameters_are_checked_as_scikit_learn_would_at_fit():
    from sklearn.cluster import AgglomerativeClustering, KMeans

    from embclust.validate import check_estimator_params

    check_estimator_params(KMeans(n_clusters=3, n_init="auto"), "clusterer")  # allowed values pass
    check_estimator_params(object(), "clusterer")  # not a scikit-learn estimator: left to its own fit
    with pytest.raises(ConfigError, match=r"^clusterer.linkage='median' is not allowed: AgglomerativeClustering takes"):
        check_estimator_params(AgglomerativeClustering(linkage="median"), "clusterer")


def test_metric_names_that_umap_and_hdbscan_check_only_when_fitting_are_checked_first():
    import hdbscan
    from umap import UMAP

    from embclust.validate import check_estimator_params

    with pytest.raises(ConfigError, match=r"^reducer.metric='cosin' is not allowed: UMAP takes one of .*cosine"):
        check_estimator_params(UMAP(metric="cosin"), "reducer")
    with pytest.raises(ConfigError, match=r"^clusterer.metric='bogus' is not allowed: HDBSCAN takes one of .*euclidean"):
        check_estimator_params(hdbscan.HDBSCAN(metric="bogus"), "clusterer")
    # the usual wish for embeddings: hdbscan's trees fail on it with "Unrecognized metric 'cosine'"
    with pytest.raises(ConfigError, match=r"clusterer.metric='cosine' does not work with clusterer.algorithm='best'.*"
                                          r"euclidean on L2-normalised rows.*clusterer.algorithm=generic"):
        check_estimator_params(hdbscan.HDBSCAN(metric="cosine"), "clusterer")
    check_estimator_params(hdbscan.HDBSCAN(metric="cosine", algorithm="generic"), "clusterer")
    check_estimator_params(UMAP(metric="cosine"), "reducer")


def test_hdbscan_generic_clusters_float32_rows_and_is_bounded_like_other_quadratic_work():
    import hdbscan

    from embclust.cluster import fit
    from embclust.data import make_synthetic

    X = make_synthetic(n_samples=600, n_features=16, seed=0).X  # float32, as every clustered space
    fitted = fit(hdbscan.HDBSCAN(metric="cosine", algorithm="generic", min_cluster_size=15), X)
    assert len(set(fitted.labels.tolist()) - {-1}) >= 2  # it ran (its generic path takes float64 only)
    cfg = OmegaConf.create({"clusterer": {"_target_": "hdbscan.HDBSCAN", "algorithm": "generic"},
                            "metrics": {"max_quadratic_rows": 25000}})
    check_quadratic_work(cfg, 25000)
    with pytest.raises(ConfigError, match=r"clusterer.algorithm=generic \(HDBSCAN\) on 30000 rows .*about 7.2 GB"):
        check_quadratic_work(cfg, 30000)


def test_cli_refuses_agglomerative_above_the_bound(run_cli):
    res = run_cli(
        *FAST, "dataset=synthetic", "dataset.n_samples=3000", "dataset.n_features=8", "clusterer=agglomerative",
        "metrics.max_quadratic_rows=2000",
    )
    _assert_one_line_failure(res, "clusterer=agglomerative (linkage=ward) on 3000 rows needs about 36 MB")


def test_a_reference_sample_above_the_bound_is_refused_with_the_memory_it_would_keep():
    cfg = _cfg()
    OmegaConf.update(cfg, "metrics.silhouette_sample_size", 60_000, merge=False)
    OmegaConf.update(cfg, "metrics.reference_sample_size", 40_000, merge=False)
    check_quadratic_work(cfg, 20_000)  # only 20,000 rows exist: under the bound
    with pytest.raises(ConfigError) as info:
        check_quadratic_work(cfg, 1_000_000)
    message = str(info.value)
    assert "metrics.reference_sample_size=40000" in message and "about 3.2 GB" in message
    assert "set metrics.reference_sample_size=5000" in message
    OmegaConf.update(cfg, "metrics.reference_space", False, merge=False)
    check_quadratic_work(cfg, 1_000_000)  # off: nothing kept


def test_reference_keys_are_checked_like_the_other_sizes():
    cfg = _cfg()
    OmegaConf.update(cfg, "metrics.reference_sample_size", 1, merge=False)
    with pytest.raises(ConfigError, match="metrics.reference_sample_size"):
        validate_config(cfg)
    cfg = _cfg()
    OmegaConf.update(cfg, "metrics.reference_space", "yes", merge=False)
    with pytest.raises(ConfigError, match="metrics.reference_space"):
        validate_config(cfg)


def test_a_map_colour_given_as_one_name_is_that_column_not_its_letters():
    from embclust.explain.steps import check_color_by

    assert check_color_by("dept", {"dept": []}) == ["dept"]  # was read as 'd', 'e', 'p', 't'
    assert check_color_by(["dept"], {"dept": []}) == ["dept"] and check_color_by(None, {}) == []
