"""End to end: ``python run.py`` as a subprocess against a temporary MLflow store."""

import mlflow
import mlflow.sklearn
import numpy as np
import pandas as pd
import pytest

from embclust.pipeline import STAGES

FAST = ("reducer=pca", "analysis.explain.enabled=false")  # UMAP and XGBoost+SHAP are covered elsewhere


def _artifact_names(run):
    return {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}


def _load_labels(run, tmp_path):
    path = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="labels.parquet", dst_path=str(tmp_path))
    return pd.read_parquet(path)


def test_default_job_logs_metrics_artifacts_and_model(run_cli, tmp_path):
    res = run_cli()
    assert res.returncode == 0, res.stderr[-2000:]
    (run,) = res.runs()
    assert run.info.status == "FINISHED"
    # Quiet console: nothing on stdout (no UMAP epochs, no tqdm), on stderr one line per stage
    # and the closing line with the link to the runs page.
    assert res.stdout == ""
    lines = res.stderr.splitlines()
    assert len(lines) == len(STAGES) + 1, res.stderr
    assert all(f"[{i + 1}/{len(STAGES)}] {stage}" in line for i, (stage, line) in enumerate(zip(STAGES, lines)))
    assert lines[-1].endswith(f"runs: http://127.0.0.1:5000/#/experiments/{run.info.experiment_id}/runs")
    m = run.data.metrics
    for name in ("silhouette", "calinski_harabasz", "davies_bouldin", "n_clusters", "ari", "nmi", "v_measure", "purity"):
        assert name in m, name
    assert m["n_clusters"] == 10 and m["ari"] > 0.4
    assert {f"time/{s}_s" for s in ("load", "preprocess", "cluster", "score", "map", "plots")} <= set(m)
    assert run.data.params["clusterer.n_clusters"] == "10"
    assert run.data.params["clusterer._target_"] == "sklearn.cluster.KMeans"
    tags = run.data.tags
    assert len(tags["data_fingerprint"]) == 32 and tags["version.scikit-learn"] != "not installed"
    # every package the run's explanations import is recorded, whichever distribution installed it
    import xgboost

    assert tags["version.xgboost"] == xgboost.__version__
    # what else decides the numbers: the code itself, Python, the BLAS and the threads it had, the true labels
    import platform

    from embclust.tracking.store import code_fingerprint

    assert tags["code_fingerprint"] == code_fingerprint() and tags["version.python"] == platform.python_version()
    assert tags["blas"] and int(tags["threads"]) >= 1 and tags["version.numba"] != "not installed"
    assert len(tags["labels_fingerprint"]) == 32
    # MLflow's Dataset column: the dataset config's name, digest = the data fingerprint.
    (entry,) = run.inputs.dataset_inputs
    assert (entry.dataset.name, entry.dataset.digest) == ("digits", tags["data_fingerprint"])
    assert "float32" in entry.dataset.schema and "[-1, 64]" in entry.dataset.schema
    assert tags["model_format"] == "skops"
    names = _artifact_names(run)
    assert {
        "config.yaml", "labels.parquet", "report.html", "silhouette_per_cluster.csv", "cluster_profile.csv",
        "cluster_composition.csv", "shap_importance.csv", "near_duplicates.csv",
    } <= names
    # One report holds every figure (plotly.js once), not one HTML file per figure.
    assert [n for n in names if n.endswith(".html")] == ["report.html"]
    client = mlflow.MlflowClient()
    sizes = {a.path: a.file_size for a in client.list_artifacts(run.info.run_id) if not a.is_dir}
    assert sum(sizes.values()) < 8_000_000, sizes
    assert m["composition_purity"] == pytest.approx(m["purity"])
    assert 0.5 < m["explain_mean_f1"] <= 1
    report = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="report.html", dst_path=str(tmp_path))
    text = open(report).read()
    assert "Silhouette diagram" in text and "Composition vs true labels" in text and f"{m['silhouette']:.6g}" in text

    labels = _load_labels(run, tmp_path)
    assert list(labels.columns) == ["id", "cluster", "x", "y", "label"]
    assert len(labels) == 1797 and labels["x"].notna().all()

    model = mlflow.sklearn.load_model(f"runs:/{run.info.run_id}/model")
    from sklearn.datasets import load_digits

    X = load_digits().data.astype(np.float32)
    np.testing.assert_array_equal(model.predict(X), labels["cluster"].to_numpy())


def test_same_seed_gives_identical_labels_and_metrics(run_cli, tmp_path):
    args = (*FAST, "dataset=synthetic", "dataset.n_samples=2000", "dataset.n_features=32", "clusterer.n_clusters=6")
    assert run_cli(*args).returncode == 0
    res = run_cli(*args)
    assert res.returncode == 0, res.stderr[-2000:]
    second, first = res.runs()
    drop = lambda m: {k: v for k, v in m.items() if not k.startswith("time/")}  # noqa: E731
    assert drop(first.data.metrics) == drop(second.data.metrics)
    assert first.data.tags["data_fingerprint"] == second.data.tags["data_fingerprint"]
    a, b = _load_labels(first, tmp_path / "a"), _load_labels(second, tmp_path / "b")
    assert a["cluster"].to_list() == b["cluster"].to_list()
    assert a["x"].to_list() == b["x"].to_list()


def test_hdbscan_on_synthetic_scores_non_noise_points(run_cli, tmp_path):
    res = run_cli(
        *FAST, "dataset=synthetic", "dataset.n_samples=3000", "dataset.n_features=64", "clusterer=hdbscan",
        "metrics.silhouette_sample_size=1000", "analysis.silhouette.sample_size=300",
    )
    assert res.returncode == 0, res.stderr[-2000:]
    (run,) = res.runs()
    m = run.data.metrics
    assert 0 <= m["noise_fraction"] < 0.5 and m["n_clusters"] >= 2
    assert "silhouette" in m and m["ari"] > 0.5
    # The per-cluster silhouette table comes from the same sampled points as the metric.
    path = mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path="silhouette_per_cluster.csv", dst_path=str(tmp_path)
    )
    table = pd.read_csv(path)
    assert table["n_sampled"].sum() == m["silhouette_sample_size"] == 1000
    weighted = (table["mean_silhouette"] * table["n_sampled"]).sum() / 1000
    assert weighted == pytest.approx(m["silhouette"], abs=1e-6)
    path = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="report.html", dst_path=str(tmp_path))
    assert "seeded sample of 1000 of" in open(path).read() and "300 of them drawn" in open(path).read()
    assert run.data.tags["model_predicts"] == "false"
    assert run.data.params["clusterer._target_"] == "hdbscan.HDBSCAN"


def test_pca_then_ward_agglomerative(run_cli):
    res = run_cli(*FAST, "preprocess.pca_components=20", "clusterer=agglomerative", "clusterer.linkage=ward", "clusterer.n_clusters=12")
    assert res.returncode == 0, res.stderr[-2000:]
    (run,) = res.runs()
    assert run.data.metrics["n_clusters"] == 12
    assert run.data.params["preprocess.pca_components"] == "20"


def _assert_failed(res, expected: str):
    assert res.returncode != 0
    assert expected in res.stderr + res.stdout
    assert "Traceback" not in res.stderr
    runs = res.runs()
    assert len(runs) == 1 and runs[0].info.status == "FAILED"
    assert expected in runs[0].data.tags["error"]
    assert "silhouette" not in runs[0].data.metrics


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (("preprocess.normalize=max",), "preprocess.normalize='max' is not allowed (allowed: auto, l2, standard, none)"),
        (("clusterer.n_clusters=1797",), "clusterer.n_clusters=1797 must be >= 2 and < the number of samples (1797)"),
        (("preprocess.pca_components=100",), "preprocess.pca_components=100 exceeds min(n_samples, n_features)=64"),
        (("dataset=synthetic", "dataset.n_samples=0"), "dataset 'synthetic' is empty: 0 rows"),
        (("analysis.maps.max_points=-5",), "analysis.maps.max_points=-5 must be null or an integer >= 1"),
        (("cluster_implementation=intel",), "cluster_implementation='intel' is not allowed (allowed: auto, embclust, sklearnex, scikit-learn)"),
        (("kmeans.min_sample=1",), "kmeans.min_sample=1 must be an integer >= 2"),
        (("kmeans.sample_per_cluster=many",), "kmeans.sample_per_cluster='many' must be an integer >= 1"),
    ],
)
def test_bad_config_fails_with_one_clear_line(run_cli, overrides, expected):
    _assert_failed(run_cli(*FAST, *overrides), expected)


@pytest.mark.parametrize(
    "implementation, extra, expected, sample",
    [
        # 1,797 digits are fewer rows than the default sample: a plain fit of every row.
        ("auto", (), "embclust-sample-restarts", "all"),
        ("auto", ("kmeans.sample_per_cluster=50", "kmeans.min_sample=600"), "embclust-sample-restarts", "600"),
        ("embclust", (), "embclust-kmeans++/scikit-learn", None),
        ("scikit-learn", (), "scikit-learn", None),
    ],
)
def test_kmeans_implementation_is_tagged_and_the_model_predicts_without_it(run_cli, tmp_path, implementation, extra,
                                                                          expected, sample):
    res = run_cli(*FAST, "reducer=none", "analysis.report.enabled=false", f"cluster_implementation={implementation}",
                  *extra)
    assert res.returncode == 0, res.stderr[-2000:]
    (run,) = res.runs()
    assert run.data.tags["cluster_implementation"] == expected
    assert run.data.tags.get("kmeans_sample_size") == sample
    model = mlflow.sklearn.load_model(f"runs:/{run.info.run_id}/model")
    assert type(model.steps[-1][1]).__module__.startswith("sklearn.")  # loads where sklearnex is absent
    from sklearn.datasets import load_digits

    X = load_digits().data.astype(np.float32)
    np.testing.assert_array_equal(model.predict(X), _load_labels(run, tmp_path)["cluster"].to_numpy())


def test_nan_in_data_fails_naming_rows(run_cli, tmp_path):
    X = np.random.default_rng(0).normal(size=(100, 8)).astype(np.float32)
    X[[3, 40], 2] = np.nan
    np.save(tmp_path / "emb.npy", X)
    res = run_cli(*FAST, "dataset=npy", f"dataset.path={tmp_path / 'emb.npy'}", "clusterer.n_clusters=3")
    _assert_failed(res, "NaN or inf in 2 of 100 rows (first ids: 3, 40)")


def test_missing_file_fails(run_cli, tmp_path):
    res = run_cli(*FAST, "dataset=npy", f"dataset.path={tmp_path / 'nope.npy'}")
    _assert_failed(res, "file not found")


def test_dedupe_drops_planted_near_duplicates(run_cli, tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 32)).astype(np.float32)
    X[[5, 6, 7]] = X[4] * np.array([[1.0], [2.0], [3.0]], dtype=np.float32)  # 3 copies of row 4
    X[100] = X[50] + 1e-4
    np.save(tmp_path / "dups.npy", X)
    res = run_cli(*FAST, "dataset=npy", f"dataset.path={tmp_path / 'dups.npy'}", "dataset.dedupe=true", "clusterer.n_clusters=4")
    assert res.returncode == 0, res.stderr[-2000:]
    (run,) = res.runs()
    assert run.data.metrics["data/dropped_duplicate_rows"] == 4
    assert run.data.tags["data_n_samples"] == "296"
    assert run.data.metrics["data/near_duplicate_pairs"] == 0  # none left after dedupe


def test_drill_down_reclusters_one_cluster_of_an_earlier_run(run_cli, tmp_path):
    first = run_cli(*FAST, "analysis.explain.enabled=false")
    assert first.returncode == 0, first.stderr[-2000:]
    (parent,) = first.runs()
    labels = _load_labels(parent, tmp_path)
    size = int((labels["cluster"] == 3).sum())
    res = run_cli(*FAST, "analysis.explain.enabled=false", f"+drill.parent_run={parent.info.run_id}", "+drill.cluster=3", "clusterer.n_clusters=2")
    assert res.returncode == 0, res.stderr[-2000:]
    child = next(r for r in res.runs() if r.info.run_id != parent.info.run_id)
    assert child.data.tags["drill_parent_run"] == parent.info.run_id and child.data.tags["drill_cluster"] == "3"
    assert child.data.tags["data_n_samples"] == str(size)
    bad = run_cli(*FAST, f"+drill.parent_run={parent.info.run_id}", "+drill.cluster=99")
    assert bad.returncode == 1 and "drill.cluster=99: 0 members" in bad.stderr
    # without drill.cluster: Hydra's ConfigAttributeError, not a line saying what to add
    unsaid = run_cli(*FAST, f"+drill.parent_run={parent.info.run_id}")
    assert unsaid.returncode == 1 and "drill.cluster=None: give the cluster of run" in unsaid.stderr
    assert "ConfigAttributeError" not in unsaid.stderr


def test_drill_down_from_a_sweep_reclusters_a_cluster_of_its_best_cell(run_cli):
    # A sweep's id (as assign, search and export take) failed downloading the parent's labels.parquet.
    sweep = run_cli("-m", *FAST, "analysis.explain.enabled=false", "clusterer.n_clusters=4,6")
    assert sweep.returncode == 0, sweep.stderr[-2000:]
    (parent,) = [r for r in sweep.runs() if r.data.tags.get("sweep_role") == "parent"]
    res = run_cli(*FAST, "analysis.explain.enabled=false", f"+drill.parent_run={parent.info.run_id}", "+drill.cluster=1",
                  "clusterer.n_clusters=2")
    assert res.returncode == 0, res.stderr[-2000:]
    best = parent.data.tags["best_run_id"]
    child = next(r for r in res.runs() if r.data.tags.get("drill_cluster"))
    # the tags say whose labels were drilled (the best cell), and from which sweep
    assert child.data.tags["drill_parent_run"] == best and child.data.tags["drill_sweep"] == parent.info.run_id
    mlflow.MlflowClient().delete_run(best)
    deleted = run_cli(*FAST, f"+drill.parent_run={best}", "+drill.cluster=1")
    assert deleted.returncode == 1 and f"drill.parent_run={best}: run {best} is deleted: restore it first" in deleted.stderr


@pytest.fixture
def rings_on_a_ray(tmp_path):
    """2-d blobs, three of them on one ray from the origin: L2 maps those onto one point."""
    rng = np.random.default_rng(0)
    centers = np.array([[2, 2], [6, 6], [10, 10], [6, -2]], dtype=float)
    y = np.repeat(np.arange(4), 150)
    np.save(tmp_path / "xy.npy", (centers[y] + rng.normal(scale=0.6, size=(600, 2))).astype(np.float32))
    np.save(tmp_path / "y.npy", y)
    return ("dataset=npy", f"dataset.path={tmp_path / 'xy.npy'}", f"dataset.labels_path={tmp_path / 'y.npy'}",
            "clusterer.n_clusters=4", "analysis.duplicates.enabled=false")


def test_low_dimensional_data_is_standardised_and_says_so(run_cli, rings_on_a_ray):
    res = run_cli(*FAST, *rings_on_a_ray)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "preprocess.normalize=auto: standard (StandardScaler) for data with 2 columns (<= 16)" in res.stderr
    (run,) = res.runs()
    assert run.data.tags["normalize"] == "standard"
    assert run.data.metrics["ari"] > 0.95


def test_explicit_l2_on_low_dimensional_data_warns(run_cli, rings_on_a_ray):
    res = run_cli(*FAST, *rings_on_a_ray, "preprocess.normalize=l2")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "preprocess.normalize=l2 on data with 2 columns (<= 16) puts every row on the unit sphere" in res.stderr
    assert "use preprocess.normalize=standard" in res.stderr
    (run,) = res.runs()
    assert run.data.tags["normalize"] == "l2" and run.data.metrics["ari"] < 0.6
