"""Stability (mean ARI of seeded refits) separates a real k from a wrong one."""

import numpy as np
import pytest
from omegaconf import OmegaConf
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs

from conftest import REPO
from embclust.errors import ConfigError
from embclust.scoring.stability import stability_from_config, stability_score


@pytest.fixture(scope="module")
def blobs():
    X, _ = make_blobs(n_samples=1500, centers=5, n_features=10, cluster_std=1.0, random_state=3)
    return X.astype(np.float32)


def _kmeans_cfg(k):
    return OmegaConf.create({"_target_": "sklearn.cluster.KMeans", "n_clusters": k, "n_init": 1, "random_state": 0})


def _cell(X, k):
    return KMeans(k, n_init=1, random_state=0).fit_predict(X)


STABILITY = {"enabled": True, "n_resamples": 3, "fraction": 0.8, "max_samples": 20000}


def test_true_k_is_stable_and_a_wrong_k_is_not(blobs):
    right = stability_from_config(_kmeans_cfg(5), blobs, _cell(blobs, 5), STABILITY, seed=0)
    wrong = stability_from_config(_kmeans_cfg(13), blobs, _cell(blobs, 13), STABILITY, seed=0)
    assert right["stability"] >= 0.95
    assert wrong["stability"] < right["stability"] - 0.1
    assert right["time/stability_s"] > 0


def test_disabled_by_default_logs_nothing(blobs):
    cfg = OmegaConf.load(REPO / "conf/metrics/default.yaml").stability
    assert cfg.enabled is False
    assert stability_from_config(_kmeans_cfg(5), blobs, _cell(blobs, 5), cfg, seed=0) == {}


def test_refits_use_other_seeds_and_at_most_max_samples_rows(blobs):
    seen = []

    class Recorder(KMeans):
        def fit_predict(self, X, y=None, sample_weight=None):
            seen.append((self.random_state, X.shape[0]))
            return super().fit_predict(X)

    stability_score(lambda s: Recorder(5, n_init=1, random_state=s), blobs, _cell(blobs, 5),
                    n_resamples=3, fraction=0.5, max_samples=400, seed=7)
    assert seen == [(8, 200), (9, 200), (10, 200)]


def test_noise_counts_as_its_own_cluster(blobs):
    labels = _cell(blobs, 5)

    class AllNoise:
        def fit_predict(self, X):
            return np.full(X.shape[0], -1)

    score, _ = stability_score(lambda s: AllNoise(), blobs, labels, n_resamples=2)
    assert score == pytest.approx(0.0, abs=1e-9)


def test_refits_that_find_one_group_say_the_zero_may_be_their_size(blobs, caplog):
    # HDBSCAN refitted on a small sample called every row noise: stability 0 was logged without a word.
    from hdbscan import HDBSCAN

    labels = _cell(blobs, 5)
    with caplog.at_level("WARNING"):
        score, _ = stability_score(lambda s: HDBSCAN(min_cluster_size=40), blobs, labels, n_resamples=2, max_samples=60)
    assert score == pytest.approx(0.0, abs=1e-9)
    assert "stability: 2 of 2 refits on 48 rows found a single group (every row noise), each scoring ARI 0" in caplog.text
    assert "raise metrics.stability.max_samples or metrics.stability.fraction" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        stability_score(lambda s: KMeans(5, n_init=1, random_state=s), blobs, labels, n_resamples=2)
    assert "single group" not in caplog.text


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("n_resamples", 0, "metrics.stability.n_resamples=0 must be an integer >= 1"),
        ("fraction", 1.0, r"metrics.stability.fraction=1.0 must be a number in \(0, 1\)"),
        ("max_samples", 1, "metrics.stability.max_samples=1 must be null or an integer >= 2"),
    ],
)
def test_bad_settings_name_the_key(blobs, key, value, message):
    with pytest.raises(ConfigError, match=message):
        stability_from_config(_kmeans_cfg(5), blobs, _cell(blobs, 5), {**STABILITY, key: value}, seed=0)


def test_run_logs_stability_when_enabled(run_cli):
    res = run_cli(
        "reducer=pca", "analysis.explain.enabled=false", "dataset=synthetic", "dataset.n_samples=1500",
        "dataset.n_features=32", "dataset.n_clusters=5", "clusterer.n_clusters=5", "metrics.stability.enabled=true",
    )
    assert res.returncode == 0, res.stderr[-2000:]
    (run,) = res.runs()
    assert run.data.metrics["stability"] >= 0.95 and run.data.metrics["time/stability_s"] > 0


def test_refits_too_small_for_k_fail_before_any_work_naming_the_keys(run_cli):
    # 20 rows x 0.8 = 16 rows per refit cannot hold 18 clusters: said before clustering, not by
    # scikit-learn's "n_samples=16 should be >= n_clusters=18" after the run's work.
    res = run_cli(
        "reducer=none", "analysis.explain.enabled=false", "dataset=synthetic", "dataset.n_samples=20",
        "dataset.n_features=4", "clusterer.n_clusters=18", "metrics.stability.enabled=true",
    )
    assert res.returncode == 1
    line = res.stderr.strip().splitlines()[-1]
    assert "metrics.stability refits on 16 of 20 rows (metrics.stability.fraction=0.8), too few for clusterer.n_clusters=18" in line
    assert "[4/10] cluster" not in res.stderr
    (run,) = res.runs()
    assert run.info.status == "FAILED" and "metrics.stability.fraction" in run.data.tags["error"]


def test_a_sweeps_best_cell_keeps_its_stability_instead_of_computing_it_again(run_cli):
    res = run_cli(
        "-m", "reducer=none", "analysis.explain.enabled=false", "dataset=synthetic", "dataset.n_samples=600",
        "dataset.n_features=8", "dataset.n_clusters=4", "clusterer.n_clusters=3,4", "metrics.stability.enabled=true",
    )
    assert res.returncode == 0, res.stderr[-2000:]
    # One "stability:" line per cell, none more for the best cell's report.
    assert res.stderr.count("stability: mean ARI") == 2, res.stderr[-3000:]
    best = next(r for r in res.runs() if r.data.tags.get("sweep_best") == "true")
    assert best.data.metrics["stability"] > 0.9 and best.data.metrics["time/stability_s"] > 0


def test_refits_capped_by_max_samples_name_that_key_not_the_fraction():
    from sklearn.cluster import KMeans

    from embclust.errors import ConfigError
    from embclust.scoring.stability import check_sizes

    cfg = {"enabled": True, "n_resamples": 3, "fraction": 0.8, "max_samples": 5}
    with pytest.raises(ConfigError, match=r"refits on 4 of 300 rows \(metrics.stability.fraction=0.8 of "
                                          r"metrics.stability.max_samples=5\), too few .*: raise metrics.stability.max_samples,"):
        check_sizes(cfg, 300, KMeans(5))
