"""Multiruns as subprocesses: nesting, summary, fault isolation, caching and resume."""

import numpy as np
import mlflow
from pathlib import Path
import pytest

GRID = ("-m", "reducer=pca", "analysis.explain.enabled=false", "preprocess.pca_components=5,10", "clusterer.n_clusters=8,12")


def _split(res):
    runs = res.runs()
    parents = [r for r in runs if r.data.tags.get("sweep_role") == "parent"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, children


def _check_sweep(res, n_children=4, returncode=0):
    assert res.returncode == returncode, res.stderr[-3000:]
    parents, children = _split(res)
    assert len(parents) == 1 and len(children) == n_children
    (parent,) = parents
    assert parent.info.status == "FINISHED"
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)
    return parent, children


def test_grid_sweep_nests_children_and_summarises_on_parent(run_cli):
    res = run_cli(*GRID)
    parent, children = _check_sweep(res)
    assert all(c.info.status == "FINISHED" and "silhouette" in c.data.metrics for c in children)
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(parent.info.run_id)}
    assert {"leaderboard.csv", "leaderboard.html", "sweep_heatmaps.html", "sweep_curves.html", "pca_variance.html"} <= artifacts
    # cells differ in PCA size: ranked by the reference-space silhouette
    best = max(children, key=lambda c: c.data.metrics["silhouette_ref"])
    assert parent.data.tags["best_run_id"] == best.info.run_id
    assert parent.data.metrics["best_silhouette_ref"] == pytest.approx(best.data.metrics["silhouette_ref"])
    # Data loaded once, before the first cell (and checked there); PCA fitted once, at the
    # largest size, and projected for the smaller one.
    assert parent.data.tags["data_cache"] == "miss"
    assert parent.data.tags["data_fingerprint"] == children[0].data.tags["data_fingerprint"]
    assert [c.data.tags["data_cache"] for c in children] == ["hit"] * 4
    assert sorted(c.data.tags["preprocess_source"] for c in children) == [
        "fitted (cached)", "fitted (cached)", "sliced from PCA 10", "sliced from PCA 10 (cached)"]
    assert "cell 4/4" in res.stderr + res.stdout
    # each cell records what the same run alone would: its overrides, where it ran, the code and labels
    for c in children:
        tags = c.data.tags
        assert tags["hydra_overrides"] == tags["sweep_cell"] and "clusterer.n_clusters=" in tags["hydra_overrides"]
        assert tags["working_dir"] and tags["code_fingerprint"] == parent.data.tags["code_fingerprint"]
        assert int(tags["threads"]) >= 1 and len(tags["labels_fingerprint"]) == 32
    # the parent's params say what the cells took, not the base config's default for a swept key
    assert parent.data.params["clusterer.n_clusters"] == "8,12"
    assert parent.data.params["preprocess.pca_components"] == "5,10"
    assert parent.data.params["reducer._target_"] == "sklearn.decomposition.PCA"


def test_a_parent_logs_neither_defaults_that_follow_a_swept_key_nor_keys_a_swept_group_sets(run_cli, tmp_path):
    # An option of a group swept from the user's own config folder (hydra.searchpath), of the
    # global package: it sets keys outside its group.
    (tmp_path / "extra" / "exp").mkdir(parents=True)
    for name, k in (("a", 3), ("b", 4)):
        (tmp_path / "extra" / "exp" / f"{name}.yaml").write_text(f"# @package _global_\nclusterer:\n  n_clusters: {k}\n")
    small = ("dataset=synthetic", "dataset.n_samples=300", "reducer=none", "analysis.explain.enabled=false")
    res = run_cli("-m", *small, f"hydra.searchpath=[file://{tmp_path / 'extra'}]", "+exp=a,b", "seed=1,2")
    parent, children = _check_sweep(res)
    params = parent.data.params
    assert params["exp"] == "a,b" and params["seed"] == "1,2"
    assert "clusterer.n_clusters" not in params  # 3 or 4 by cell, never the base config's 10
    assert "clusterer.random_state" not in params  # ${seed}: 1 or 2 by cell
    assert params["clusterer._target_"] == "sklearn.cluster.KMeans"  # shared by every cell
    assert sorted(c.data.params["clusterer.n_clusters"] for c in children) == ["3", "3", "4", "4"]


def test_a_glob_over_a_group_is_logged_and_counted_as_the_options_it_matches(run_cli):
    # They were logged as "chosen by the sweeper" and counted as "cell 1/?".
    res = run_cli("-m", "dataset=synthetic", "dataset.n_samples=300", "analysis.explain.enabled=false",
                  "reducer=glob(*,exclude=[umap,tsne])")
    matched = sorted(p.stem for p in (Path(__file__).parents[1] / "conf" / "reducer").glob("*.yaml")
                     if p.stem not in ("umap", "tsne"))
    parent, children = _check_sweep(res, n_children=len(matched))
    assert parent.data.params["reducer"] == ",".join(matched) and f"cell {len(matched)}/{len(matched)}" in res.stderr


def test_a_swept_key_set_again_to_one_value_is_that_value_as_hydra_runs_it(run_cli):
    # The last override of a key wins in Hydra: one cell. Counted as two, the sweep said
    # "1 of 2 cells have no run" and exited 1 although its only cell finished.
    res = run_cli("-m", "dataset=synthetic", "dataset.n_samples=300", "reducer=none", "analysis.explain.enabled=false",
                  "clusterer.n_clusters=3,4", "clusterer.n_clusters=5")
    parent, children = _check_sweep(res, n_children=1)
    assert "sweep: 1 cell, ranked by" in res.stderr and "cell 1/1" in res.stderr
    assert parent.data.params["clusterer.n_clusters"] == "5" == children[0].data.params["clusterer.n_clusters"]


def test_a_swept_group_replaces_the_default_options_keys_in_the_parents_params():
    from omegaconf import OmegaConf

    from embclust.sweep.params import parent_params

    cfg = OmegaConf.create({"clusterer": {"name": "kmeans", "n_clusters": 10}, "seed": 0, "sweep": {"metric": "auto"}})
    params = parent_params(cfg, {"clusterer": ["kmeans", "hdbscan"], "seed": None}, leave_out=("sweep",))
    assert params == {"clusterer": "kmeans,hdbscan", "seed": "chosen by the sweeper"}


def test_davies_bouldin_picks_the_lowest(run_cli):
    res = run_cli(*GRID, "sweep.metric=davies_bouldin")
    parent, children = _check_sweep(res)
    best = min(children, key=lambda c: c.data.metrics["davies_bouldin_ref"])
    assert parent.data.tags["best_run_id"] == best.info.run_id


def test_joblib_launcher_nests_children(run_cli):
    # reducer=umap: the best cell's map is drawn in the sweep's own process, where UMAP's expected
    # warnings ("n_jobs value 1 overridden") were not turned off as they are in a run
    res = run_cli(*GRID, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "reducer=umap")
    parent, children = _check_sweep(res)
    assert all(c.info.status == "FINISHED" for c in children)
    assert {c.data.tags["preprocess_source"].split(" (")[0] for c in children} == {"fitted", "sliced from PCA 10"}
    assert "database is locked" not in res.stderr and "UserWarning" not in res.stderr


def test_impossible_cell_fails_alone_and_is_marked(run_cli, tmp_path):
    res = run_cli("-m", "reducer=pca", "preprocess.pca_components=5", "clusterer.n_clusters=8,5000")
    # the other cell and the summary are done, and the command still says a cell failed
    parent, children = _check_sweep(res, n_children=2, returncode=1)
    last = res.stderr.strip().splitlines()[-1]
    assert "1 of 2 cells FAILED" in last and "n_clusters=5000" in last and parent.info.run_id in last
    status = {c.data.params["clusterer.n_clusters"]: c.info.status for c in children}
    assert status == {"8": "FINISHED", "5000": "FAILED"}
    failed = next(c for c in children if c.info.status == "FAILED")
    assert "n_clusters=5000" in failed.data.tags["error"]
    board = mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, artifact_path="leaderboard.csv", dst_path=str(tmp_path))
    text = open(board).read()
    assert "FAILED" in text and "n_clusters=5000" in text
    assert parent.data.metrics["n_failed_cells"] == 1
    done = next(c for c in children if c.info.status == "FINISHED")
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(done.info.run_id)}
    assert "silhouette_per_cluster.csv" in artifacts
    # the only scored cell is the best one: it gets the full report after the sweep
    assert parent.data.tags["best_run_id"] == done.info.run_id


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("sweep.metric=silhouete", "sweep.metric='silhouete' is not allowed (allowed: silhouette"),
        ("dataset=npy", "dataset.path is required"),
        ("dataset=npy dataset.path=missing.npy", "file not found: missing.npy (dataset.path)"),
    ],
)
def test_what_every_cell_shares_is_checked_before_the_first_cell(run_cli, override, message):
    # A typo in a value the cells share would fail each of them the same way: one line, no run.
    res = run_cli("-m", "reducer=none", *override.split(), "clusterer.n_clusters=3,4,5")
    assert res.returncode == 1
    errors = [line for line in res.stderr.splitlines() if message in line]
    assert len(errors) == 1 and "no cell was run" in errors[0], res.stderr[-2000:]
    assert "cell 1/3" not in res.stderr
    assert res.runs() == []


@pytest.mark.parametrize(("grid", "said"), [
    # Hydra's traceback came after the parent run was made, which was then left KILLED
    ("clusterer.n_clusters=int(interval(3,5))", "clusterer.n_clusters is given as a range to search"),
    # an empty range made a parent run holding no cell
    ("clusterer.n_clusters=range(5,3)", "clusterer.n_clusters is swept over no value, so the grid has no cell"),
])
def test_a_grid_the_grid_sweeper_cannot_run_is_one_line_before_any_run(run_cli, grid, said):
    res = run_cli("-m", "reducer=none", grid)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    (line,) = res.stderr.strip().splitlines()[-1:]
    assert "sweep: no cell was run: " + said in line
    assert "hydra/sweeper=optuna" in line or "range" in grid
    assert res.runs() == []


def test_a_swept_config_group_that_does_not_exist_fails_the_sweep_with_hydras_options(run_cli):
    res = run_cli("-m", "reducer=none", "clusterer=kmeans,kmeanz")
    assert res.returncode == 1
    (line,) = res.stderr.strip().splitlines()  # one line, with the options there are
    assert "no cell was run: Could not find 'clusterer/kmeanz'" in line and "minibatch_kmeans" in line
    assert res.runs() == []  # found before the sweep's parent run was made


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["clusterer.n_clusterz=3,4"], "the grid sets clusterer.n_clusterz on the command line, which clusterer=kmeans "
                                       "does not have (its keys: n_clusters, "),
        (["clusterer=kmeans,hdbscan", "clusterer.n_clusters=3"], "the grid sets clusterer.n_clusters on the command line, "
                                                                 "which clusterer=hdbscan does not have"),
        # The experiment's own grid of k, with a clusterer that has no k: the texts were embedded
        # and the parent run made before Hydra's "Could not override" with advice to add the key.
        (["+experiment=rag_documents", "dataset.path=chunks.csv", "clusterer=hdbscan"],
         "the grid sets clusterer.n_clusters in hydra.sweeper.params (the grid of an experiment or sweep config), which "
         "clusterer=hdbscan does not have"),
    ],
)
def test_a_swept_key_a_cell_does_not_have_stops_the_sweep_before_its_parent_run(run_cli, overrides, expected):
    res = run_cli("-m", "reducer=none", *overrides)
    assert res.returncode == 1
    (line,) = res.stderr.strip().splitlines()[-1:]
    assert "sweep: no cell was run: " + expected in line, res.stderr[-2000:]
    assert "Traceback" not in res.stderr and "+clusterer.n_cluster" not in line
    if "n_clusterz" in expected:
        assert "did you mean clusterer.n_clusters?" in line
    if "hydra.sweeper.params (" in expected:
        assert line.endswith("or drop that grid with hydra.sweeper.params=null")
    assert res.runs() == []


def test_a_swept_dataset_fails_only_its_own_cell(run_cli, tmp_path):
    import numpy as np

    np.save(tmp_path / "ok.npy", np.random.default_rng(0).normal(size=(120, 8)).astype(np.float32))
    res = run_cli("-m", "reducer=none", "dataset=npy", "clusterer.n_clusters=3", "dataset.path=ok.npy,missing.npy")
    parent, children = _check_sweep(res, n_children=2, returncode=1)
    status = {c.data.params["dataset.path"]: c.info.status for c in children}
    assert status == {"ok.npy": "FINISHED", "missing.npy": "FAILED"}
    assert "data_fingerprint" not in parent.data.tags  # not one dataset: the cells load their own


def test_rerun_resumes_only_missing_or_failed_cells(run_cli):
    args = ("-m", "reducer=pca", "preprocess.pca_components=5", "clusterer.n_clusters=8,12,5000")
    _check_sweep(run_cli(*args), n_children=3, returncode=1)
    res = run_cli(*args)
    parent, children = _check_sweep(res, n_children=4, returncode=1)  # only the failed cell ran again
    assert res.stderr.count("skipped, finished earlier") + res.stdout.count("skipped, finished earlier") == 2
    assert [c.info.status for c in children].count("FAILED") == 2
    # the default said out loud resumes the same sweep (it started a new one, re-running every cell)
    res = run_cli(*args, "sweep.resume=true")
    parent, children = _check_sweep(res, n_children=5, returncode=1)
    assert res.stderr.count("skipped, finished earlier") + res.stdout.count("skipped, finished earlier") == 2
    res = run_cli(*args, "sweep.resume=false")
    parents, children = _split(res)
    assert len(parents) == 2 and len(children) == 8


def test_a_resumed_sweep_runs_again_a_finished_cell_whose_artifacts_are_gone(run_cli):
    # The summary then failed on "Failed to download artifacts from path 'config.yaml'", on every re-run.
    from urllib.parse import urlparse

    args = ("-m", "reducer=none", "analysis.explain.enabled=false", "clusterer.n_clusters=3,4")
    parent, children = _check_sweep(run_cli(*args), n_children=2)
    best = mlflow.get_run(parent.data.tags["best_run_id"])
    (Path(urlparse(best.info.artifact_uri).path) / "config.yaml").unlink()
    res = run_cli(*args)
    parent, children = _check_sweep(res, n_children=3)
    assert f"run {best.info.run_id} finished earlier but its artifacts config.yaml is gone: the cell runs again" in res.stderr
    assert res.stderr.count("skipped, finished earlier") == 1
    assert mlflow.get_run(parent.data.tags["best_run_id"]).info.run_id != best.info.run_id  # the new run of the cell


def test_a_rank_metric_the_clusterer_never_logs_is_refused_before_any_cell(run_cli):
    # Every cell scored NaN, no best cell was named and the sweep exited 0 (Optuna: a traceback).
    res = run_cli("-m", "reducer=none", "clusterer.n_clusters=3,5", "sweep.metric=dbcv")
    assert res.returncode == 1 and res.runs() == []
    assert "sweep: no cell was run: sweep.metric=dbcv is logged only by HDBSCAN clusterings" in res.stderr
    # with the clusterer swept, cells are run (some might log it); none did: no best, exit 1
    res = run_cli("-m", "reducer=none", "clusterer=kmeans,agglomerative", "sweep.metric=dbcv")
    parent, children = _check_sweep(res, n_children=2, returncode=1)
    assert "sweep: no cell has a value of dbcv to rank by" in res.stderr.strip().splitlines()[-1]
    assert "best_run_id" not in parent.data.tags


def test_compare_prints_the_leaderboard_of_the_latest_sweep(run_cli, tmp_path):
    import subprocess
    import sys

    res = run_cli(*GRID)
    parent, children = _check_sweep(res)
    out = subprocess.run(
        [sys.executable, "-m", "embclust.compare", "--experiment", "embclust", "--tracking-uri", res.tracking_uri,
         "--metric", "davies_bouldin", "--html", str(tmp_path / "board.html")],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert parent.info.run_id in lines[0] and "davies_bouldin" in lines[0]
    best = min(children, key=lambda c: c.data.metrics["davies_bouldin"])
    assert best.info.run_id in lines[2]  # header, then the best row first
    # a column per swept key, not each cell's whole command line (the store's path, ...)
    header = lines[1].split()
    assert header[:2] == ["rank", "status"] and set(header[2:4]) == {"preprocess.pca_components", "clusterer.n_clusters"}
    assert "tracking_uri" not in out.stdout
    # a metric the runs never logged is an error naming the ones they did, not a table in no order
    typo = subprocess.run(
        [sys.executable, "-m", "embclust.compare", "--tracking-uri", res.tracking_uri, "--metric", "silhouete"],
        capture_output=True, text=True, timeout=120,
    )
    assert typo.returncode == 1 and typo.stdout == ""
    # any metric the cells logged ranks them, not only the columns the table shows by default
    by_v = subprocess.run(
        [sys.executable, "-m", "embclust.compare", "--tracking-uri", res.tracking_uri, "--metric", "v_measure"],
        capture_output=True, text=True, timeout=120,
    )
    assert by_v.returncode == 0, by_v.stderr
    ranked = [c.info.run_id for c in sorted(children, key=lambda c: -c.data.metrics["v_measure"])]
    printed = [next(r for r in ranked if r in line) for line in by_v.stdout.splitlines()[2:6]]
    assert printed == ranked and "NaN" not in by_v.stdout
    assert typo.stderr.startswith("error: --metric='silhouete' is not logged") and "silhouette" in typo.stderr
    # without --metric, cells rank as the sweep ranked them: its best cell first, not silhouette's
    default = subprocess.run([sys.executable, "-m", "embclust.compare", "--tracking-uri", res.tracking_uri],
                             capture_output=True, text=True, timeout=120)
    assert default.returncode == 0, default.stderr
    assert default.stdout.splitlines()[0].endswith(f"ranked by {parent.data.tags['sweep.rank_metric']}")
    assert parent.data.tags["sweep.rank_metric"] == "silhouette_ref"
    assert parent.data.tags["best_run_id"] in default.stdout.splitlines()[2]
    unknown = subprocess.run([sys.executable, "-m", "embclust.compare", "--tracking-uri", res.tracking_uri, "--parent-run",
                              "bogus123"], capture_output=True, text=True, timeout=120)
    assert unknown.returncode == 1 and "there is no run 'bogus123'" in unknown.stderr  # not MLflow's own "not found"
    assert sum(c.info.run_id in out.stdout for c in children) == 4
    assert "<table" in (tmp_path / "board.html").read_text()
    # a cell's id where the parent's belongs says which id to pass
    cell_id = children[0].info.run_id
    wrong = subprocess.run(
        [sys.executable, "-m", "embclust.compare", "--tracking-uri", res.tracking_uri, "--parent-run", cell_id],
        capture_output=True, text=True, timeout=120,
    )
    assert wrong.returncode == 1
    assert f"run {cell_id} is a cell of the sweep {parent.info.run_id}: pass that as --parent-run" in wrong.stderr


def test_a_joblib_cell_and_the_same_run_alone_log_identical_metrics_and_labels(run_cli, tmp_path):
    """A cell in a parallel worker (one thread) and the same config alone (all threads): the same numbers."""
    import pandas as pd

    common = ("reducer=none", "analysis.explain.enabled=false", "preprocess.pca_components=20")
    alone = run_cli(*common, "clusterer.n_clusters=10")
    assert alone.returncode == 0, alone.stderr[-2000:]
    swept = run_cli("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *common, "clusterer.n_clusters=10,12")
    assert swept.returncode == 0, swept.stderr[-2000:]
    runs = swept.runs()
    single = next(r for r in runs if "sweep_role" not in r.data.tags)
    cell = next(r for r in runs if r.data.tags.get("sweep_role") == "cell" and r.data.params["clusterer.n_clusters"] == "10")
    shared = [k for k in single.data.metrics if k in cell.data.metrics and not k.startswith("time/")]
    assert {"inertia", "silhouette", "calinski_harabasz", "davies_bouldin", "silhouette_ref", "ari"} <= set(shared)
    assert {k: single.data.metrics[k] for k in shared} == {k: cell.data.metrics[k] for k in shared}

    def labels(run):
        path = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="labels.parquet",
                                                   dst_path=str(tmp_path / run.info.run_id))
        return pd.read_parquet(path)["cluster"].to_numpy()

    np.testing.assert_array_equal(labels(single), labels(cell))


def test_a_best_cell_at_the_edge_of_the_grid_is_said_on_stderr_in_a_tag_and_the_report(run_cli, tmp_path):
    # Inertia always falls as k grows: ranked by it, the best cell is the largest k tried.
    res = run_cli(
        "-m", "reducer=none", "analysis.explain.enabled=false", "sweep.metric=inertia", "clusterer.n_clusters=4,6,8",
    )
    assert res.returncode == 0, res.stderr[-2000:]
    parent = next(r for r in res.runs() if r.data.tags.get("sweep_role") == "parent")
    expected = "clusterer.n_clusters=8 is the largest value tried (4..8)"
    assert expected in parent.data.tags["best_at_edge"]
    assert f"sweep: the best cell lies at the edge of the grid: {expected}" in res.stderr
    report = mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, artifact_path="report.html",
                                                 dst_path=str(tmp_path))
    assert expected in open(report, encoding="utf-8").read()


def test_edge_of_grid_needs_three_values_and_names_each_axis():
    import pandas as pd

    from embclust.sweep.summary import edge_of_grid

    table = pd.DataFrame({"preprocess.pca_components": [5, 5, 5, 20, 20, 20], "clusterer.n_clusters": [10, 20, 30] * 2})
    swept = ["preprocess.pca_components", "clusterer.n_clusters"]
    inside = edge_of_grid(table, table.iloc[1], swept)
    assert inside is None  # k = 20 is inside; PCA has only two values, every cell is on its edge
    low = edge_of_grid(table, table.iloc[0], swept)
    assert "clusterer.n_clusters=10 is the smallest value tried (10..30)" in low and "pca_components" not in low


def test_a_best_cell_at_k_2_is_not_an_edge_to_widen():
    import pandas as pd

    from embclust.sweep.summary import edge_of_grid

    table = pd.DataFrame({"clusterer.n_clusters": [2, 3, 4, 5]})
    assert edge_of_grid(table, table.iloc[0], ["clusterer.n_clusters"]) is None  # nothing below 2 to try
    assert "largest value tried (2..5)" in edge_of_grid(table, table.iloc[3], ["clusterer.n_clusters"])
    table = pd.DataFrame({"clusterer.n_clusters": [3, 4, 5]})
    assert "smallest value tried (3..5)" in edge_of_grid(table, table.iloc[0], ["clusterer.n_clusters"])


def test_cells_whose_store_cannot_be_opened_fail_the_sweep_though_they_have_no_run(run_cli, tracking_uri):
    # A cell that cannot open its store or experiment (here: an experiment that was deleted; a
    # store held locked by another process does the same) makes no run for the summary to count.
    client = mlflow.MlflowClient(tracking_uri)
    client.delete_experiment(client.create_experiment("gone"))
    res = run_cli("-m", "dataset=synthetic", "dataset.n_samples=300", "reducer=none", "analysis.explain.enabled=false",
                  "mlflow.experiment_name=embclust,gone")
    assert res.returncode == 1, res.stderr[-2000:]
    assert "1 of 2 cells have no run" in res.stderr
    (parent,) = [r for r in res.runs() if r.data.tags.get("sweep_role") == "parent"]
    assert parent.data.tags["cells_without_run"] == "1"


def test_full_cells_carry_the_documented_cell_and_best_tags(run_cli):
    # analysis.in_sweeps=full cells had no sweep_role=cell, and the best none of sweep_best=true.
    res = run_cli("-m", "dataset=synthetic", "dataset.n_samples=300", "reducer=none", "analysis.explain.enabled=false",
                  "analysis.in_sweeps=full", "clusterer.n_clusters=3,4")
    parent, children = _check_sweep(res, n_children=2)
    assert {c.data.tags.get("sweep_role") for c in children} == {"cell"}
    best = [c.info.run_id for c in children if c.data.tags.get("sweep_best") == "true"]
    assert best == [parent.data.tags["best_run_id"]]


def test_a_named_grid_without_multirun_says_it_ran_one_run(run_cli):
    # +sweep=NAME without -m ran one run with the config's values and no word about the grid.
    res = run_cli("+sweep=pca_x_k", "reducer=none", "analysis.explain.enabled=false")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "+sweep=pca_x_k is a grid, run only with -m: this is one run" in res.stderr
    assert len(res.runs()) == 1
    plain = run_cli("reducer=none", "analysis.explain.enabled=false")
    assert "run only with -m" not in plain.stderr


def test_swept_pca_sizes_above_the_data_s_columns_stop_the_sweep_before_its_parent_run(run_cli):
    # +sweep=pca_x_k on the 64-column digits failed 14 of its 24 cells, each with the same line.
    res = run_cli("-m", "+sweep=pca_x_k", "reducer=none")
    assert res.returncode == 1
    (line,) = res.stderr.strip().splitlines()[-1:]
    assert ("sweep: no cell was run: preprocess.pca_components=80,100,120,140,160,180,200 exceed min(n_samples, "
            "n_features)=64 of dataset 'digits' (1797 x 64)") in line
    assert "preprocess.pca_components=5,10,20,40,60 here" in line
    assert res.runs() == []
