"""The sweep engine: shared PCA, one scoring sample, light cells, the best cell completed, the
reference space that makes cells with different preprocessing comparable."""

import numpy as np
import mlflow
import mlflow.sklearn
import pandas as pd
import pytest
from sklearn.decomposition import PCA
from sklearn.metrics import silhouette_samples

from embclust.data import Dataset
from embclust.scoring.reference import ReferenceSpace
from embclust.sweep import shared


@pytest.mark.parametrize("solver", ["covariance_eigh", "full", "auto"])
def test_pca_fitted_at_the_largest_size_gives_each_smaller_size(solver):
    rng = np.random.default_rng(0)
    X = (rng.normal(size=(3000, 48)) @ rng.normal(size=(48, 48))).astype(np.float32)
    ds = Dataset(name="t", X=X, ids=np.arange(3000))
    shared.clear()
    pre = {"_target_": "embclust.preprocess.build_preprocessing", "normalize": "l2", "pca_components": 7,
           "svd_solver": solver, "seed": 0}
    got = shared.features(pre, ds, cache_dir=None, max_pca_components=30)
    assert got.how == "sliced from PCA 30"
    direct = PCA(7, svd_solver=solver, random_state=0).fit(got.preprocessing[:1].transform(X))
    pca = got.preprocessing.named_steps["pca"]
    np.testing.assert_allclose(pca.components_, direct.components_, atol=1e-6)
    np.testing.assert_allclose(pca.explained_variance_ratio_, direct.explained_variance_ratio_, rtol=1e-6)
    assert pca.noise_variance_ == pytest.approx(direct.noise_variance_, rel=1e-5)
    np.testing.assert_allclose(got.X, direct.transform(got.preprocessing[:1].transform(X)), atol=1e-5)
    # a second size reuses the same fit: no new PCA, only a projection
    again = shared.features({**pre, "pca_components": 12}, ds, cache_dir=None, max_pca_components=30)
    assert again.cache_hit and again.X.shape == (3000, 12)
    # Only the latest size's projection stays in memory; an earlier size comes back the same.
    assert sum(key.startswith("slice:") for key in shared._memo) == 1
    back = shared.features(pre, ds, cache_dir=None, max_pca_components=30)
    np.testing.assert_array_equal(back.X, got.X)


@pytest.mark.parametrize("solver", ["covariance_eigh", "full", "auto"])
def test_a_sliced_pca_projects_the_rows_bit_for_bit_as_the_same_size_fitted_alone(solver):
    # A sweep cell's metrics must be the lone run's: the same projection to the last bit.
    rng = np.random.default_rng(2)
    X = (rng.normal(size=(5000, 64)) @ rng.normal(size=(64, 64))).astype(np.float32)
    ds = Dataset(name="t", X=X, ids=np.arange(5000))
    pre = {"_target_": "embclust.preprocess.build_preprocessing", "normalize": "l2", "pca_components": 10,
           "svd_solver": solver, "seed": 0}
    shared.clear()
    cell = shared.features(pre, ds, cache_dir=None, max_pca_components=40)
    shared.clear()
    alone = shared.features(pre, ds, cache_dir=None)
    assert (cell.how, alone.how) == ("sliced from PCA 40", "fitted")
    np.testing.assert_array_equal(cell.preprocessing.named_steps["pca"].components_,
                                  alone.preprocessing.named_steps["pca"].components_)
    np.testing.assert_array_equal(cell.X, alone.X)
    # the logged model's own transform gives the same rows as well
    np.testing.assert_array_equal(alone.preprocessing.transform(X[:4096]), alone.X[:4096])


def test_reference_space_scores_equal_scikit_learn():
    from sklearn import metrics as skm

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 6, 2500)
    X = (rng.normal(size=(2500, 40)) + labels[:, None] * 0.4).astype(np.float32)
    labels[:30] = -1
    rows = rng.permutation(2500)[:800]
    got = ReferenceSpace(X, rows).score(labels)
    # all three on the shared sample, noise left out
    sample = rows[labels[rows] != -1]
    assert got["silhouette_ref"] == pytest.approx(silhouette_samples(X[sample], labels[sample]).mean(), abs=1e-6)
    assert got["calinski_harabasz_ref"] == pytest.approx(skm.calinski_harabasz_score(X[sample], labels[sample]), rel=1e-6)
    assert got["davies_bouldin_ref"] == pytest.approx(skm.davies_bouldin_score(X[sample], labels[sample]), rel=1e-6)
    assert got["reference_sample_size"] == sample.size


def _children(res):
    runs = res.runs()
    parent = next(r for r in runs if r.data.tags.get("sweep_role") == "parent")
    return parent, [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]


def _artifact_bytes(client, run_id, path=""):
    total = 0
    for a in client.list_artifacts(run_id, path):
        if a.is_dir:
            if a.path.rsplit("/", 1)[-1] != "model":
                total += _artifact_bytes(client, run_id, a.path)
        else:
            total += a.file_size or 0
    return total


def test_only_the_best_fit_so_far_is_kept_by_the_ranking_metric():
    shared.clear()
    shared.keep_if_best("a", 0.9, "davies_bouldin", "fit a")
    shared.keep_if_best("b", 0.5, "davies_bouldin", "fit b")  # lower is better
    shared.keep_if_best("c", float("nan"), "davies_bouldin", "fit c")  # a NaN never wins
    assert shared.fitted_clustering("b") == "fit b"
    assert shared.fitted_clustering("a") is None and shared.fitted_clustering("c") is None
    shared.clear()
    assert shared.fitted_clustering("b") is None


def test_light_cells_and_a_completed_best_cell(run_cli):
    res = run_cli("-m", "reducer=pca", "preprocess.pca_components=5,10", "clusterer.n_clusters=8,12",
                  "analysis.explain.enabled=false")
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip() == ""
    parent, cells = _children(res)
    assert parent.info.status == "FINISHED" and len(cells) == 4
    client = mlflow.MlflowClient()
    best_id = parent.data.tags["best_run_id"]
    # cells are named by what the sweep varies, not by the overrides they all share (reducer=pca)
    assert sorted(c.info.run_name for c in cells) == sorted(
        f"clusterer.n_clusters={k} preprocess.pca_components={p}" for p in (5, 10) for k in (8, 12))
    best_name = next(c.info.run_name for c in cells if c.info.run_id == best_id)
    assert "sweep done: best silhouette_ref=" in res.stderr and f" at {best_name} (run {best_id})" in res.stderr
    for cell in cells:
        names = {a.path for a in client.list_artifacts(cell.info.run_id)}
        if cell.info.run_id == best_id:
            # the full treatment: tables and the model on the cell, its figures in the parent's report
            assert {"labels.parquet", "config.yaml", "cluster_profile.csv"} <= names and "report.html" not in names
            assert _artifact_bytes(client, cell.info.run_id) < 1_000_000
            model = mlflow.sklearn.load_model(f"runs:/{best_id}/model")
            assert model.steps[-1][0] == "cluster"
            continue
        # light: labels, config and nothing else; well under the 1 MB budget
        assert names == {"labels.parquet", "config.yaml"}
        assert _artifact_bytes(client, cell.info.run_id) < 200_000
        assert {"clusterer.n_clusters", "preprocess.pca_components"} <= set(cell.data.params)
    # every cell scored its silhouette on the same rows (digits is smaller than the sample: all)
    assert {c.data.metrics["silhouette_sample_size"] for c in cells} == {1797.0}
    # the PCA is fitted once, at 10 components; size 5 is its first five
    assert sorted(c.data.tags["preprocess_source"].split(" (")[0] for c in cells) == [
        "fitted", "fitted", "sliced from PCA 10", "sliced from PCA 10"]
    # cells differ in PCA size, so they are ranked in the reference space
    assert parent.data.tags["sweep.rank_metric"] == "silhouette_ref"
    best = max(cells, key=lambda c: c.data.metrics["silhouette_ref"])
    assert best.info.run_id == best_id
    # completing the best cell reproduces the labels and scores it was ranked by
    history = client.get_metric_history(best_id, "silhouette")
    assert len(history) == 2 and history[0].value == pytest.approx(history[1].value, abs=1e-12)
    assert best.data.tags.get("sweep_best") == "true"
    # ... from the light cell's own fit, kept in the process, not from a second fit
    assert "best cell [4/10] cluster" not in res.stderr and "best cell [5/10] score" in res.stderr
    assert len(client.get_metric_history(best_id, "time/cluster_s")) == 1
    report = open(mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, artifact_path="report.html")).read()
    assert "Best cell: Cluster profiles" in report and "Best cell: Cluster sizes" in report


def test_reference_space_ranks_full_dimension_cells_fairly(run_cli, tmp_path):
    # Four clusters separated in 18 dimensions, two high-variance noise dimensions. PCA-2 keeps
    # part of the structure with a much higher in-space silhouette at the wrong k; the
    # reference space ranks the full-dimension, true-k cell first.
    rng = np.random.default_rng(0)
    n, k = 1200, 4
    truth = rng.integers(0, k, n)
    centers = rng.choice([-2.5, 2.5], size=(k, 18))
    X = np.hstack([rng.normal(scale=5, size=(n, 2)), centers[truth] + rng.normal(scale=0.7, size=(n, 18))])
    np.save(tmp_path / "X.npy", X.astype(np.float32))
    np.save(tmp_path / "y.npy", truth)
    res = run_cli("-m", "dataset=npy", f"dataset.path={tmp_path / 'X.npy'}", f"dataset.labels_path={tmp_path / 'y.npy'}",
                  "reducer=none", "preprocess.normalize=none", "preprocess.pca_components=null,2",
                  "clusterer.n_clusters=3,4,5", "clusterer.n_init=4", "analysis.explain.enabled=false")
    assert res.returncode == 0, res.stderr[-3000:]
    parent, cells = _children(res)
    by_space = max(cells, key=lambda c: c.data.metrics["silhouette"])
    assert by_space.data.params["preprocess.pca_components"] == "2"  # what in-space ranking would pick
    best = next(c for c in cells if c.info.run_id == parent.data.tags["best_run_id"])
    assert best.data.params["preprocess.pca_components"] == "None"
    assert best.data.params["clusterer.n_clusters"] == "4"
    assert best.data.metrics["ari"] == pytest.approx(1.0)
    table = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, artifact_path="leaderboard.csv"))
    assert table["run_id"][0] == best.info.run_id and "silhouette_ref" in table.columns


def test_every_cell_failing_exits_non_zero_with_a_leaderboard(run_cli):
    res = run_cli("-m", "reducer=none", "clusterer.n_clusters=5000,6000")
    assert res.returncode != 0
    parent, cells = _children(res)
    assert parent.info.status == "FAILED" and "all 2 cells failed" in parent.data.tags["error"]
    assert {c.info.status for c in cells} == {"FAILED"}
    table = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, artifact_path="leaderboard.csv"))
    assert len(table) == 2 and all("n_clusters=5000" in e or "n_clusters=6000" in e for e in table["error"])
    assert not [r for r in res.runs() if r.info.status == "RUNNING"]


def test_all_noise_cells_are_summarised_without_a_best_cell(run_cli):
    res = run_cli("-m", "reducer=none", "clusterer=hdbscan", "clusterer.min_cluster_size=1500,1700")
    parent, cells = _children(res)
    assert parent.info.status == "FINISHED", res.stderr[-2000:]
    assert "best_run_id" not in parent.data.tags
    assert all(c.data.metrics["noise_fraction"] > 0.5 for c in cells)


def test_optuna_search_goes_on_after_a_failed_trial(run_cli):
    res = run_cli("-m", "hydra/sweeper=optuna", "reducer=none", "clusterer.n_clusters=choice(5,3000)",
                  "hydra.sweeper.n_trials=4", "hydra.sweeper.sampler.seed=1", "hydra.sweeper.max_failure_rate=1.0",
                  "analysis.explain.enabled=false")
    assert res.returncode == 0, res.stderr[-3000:]
    parent, cells = _children(res)
    status = sorted(c.info.status for c in cells)
    assert len(cells) == 4 and "FAILED" in status and "FINISHED" in status
    assert parent.info.status == "FINISHED" and parent.data.tags["best_cell"]


def test_an_optuna_search_whose_every_trial_failed_ends_failed_in_one_line(run_cli):
    # Optuna's sweeper asked the study for its best trial and raised "No trials are completed yet":
    # a traceback, and the parent closed as if the sweep were stopped.
    res = run_cli("-m", "hydra/sweeper=optuna", "reducer=none", "clusterer.n_clusters=choice(3000,4000)",
                  "hydra.sweeper.n_trials=2", "hydra.sweeper.sampler.seed=1", "hydra.sweeper.max_failure_rate=1.0",
                  "analysis.explain.enabled=false")
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr[-3000:]
    last = res.stderr.strip().splitlines()[-1]
    assert "sweep: every cell failed (" in last and "), the first with: clusterer.n_clusters=" in last  # the cause, not only a count
    parent, cells = _children(res)
    assert parent.info.status == "FAILED" and cells and all(c.info.status == "FAILED" for c in cells)


def _start_sweep(tmp_path, tracking_uri, *overrides, sweep_dir="multirun"):
    import os
    import subprocess
    import sys

    from conftest import RUN_PY

    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    cmd = [sys.executable, str(RUN_PY), "-m", *overrides, f"mlflow.tracking_uri={tracking_uri}",
           f"hydra.sweep.dir={tmp_path / sweep_dir}"]
    return subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_running_cell(tracking_uri, proc, timeout=180):
    import time

    from embclust.tracking.store import sqlite_path

    mlflow.set_tracking_uri(tracking_uri)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:  # ended before a cell was seen running: the grid is too fast, or it failed
            out, err = proc.communicate()
            raise AssertionError(f"the sweep ended (rc {proc.returncode}) before a cell was seen running: {err[-2000:]}")
        # Open the store only once the sweep has made it: embclust creates a SQLite store whole and
        # renames it into place, whereas a plain MLflow client opening a missing file would create
        # and migrate it itself, racing the sweep's own creation.
        db = sqlite_path(tracking_uri)
        runs = []
        if db is None or db.exists():
            runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
        if any(r.data.tags.get("sweep_role") == "cell" and r.info.status == "RUNNING" for r in runs):
            return
        time.sleep(0.3)
    raise AssertionError("no cell started")


# Cells of several seconds each (scikit-learn's own KMeans, every restart on all 120,000 rows), so
# that a poll of the store sees one RUNNING: embclust's default KMeans ends such a cell in ~1 s.
SLOW_GRID = ("dataset=synthetic", "dataset.n_samples=120000", "dataset.n_features=64", "reducer=none",
             "clusterer.n_clusters=30,40", "clusterer.n_init=5", "cluster_implementation=scikit-learn",
             "analysis.explain.enabled=false")


def _signal_slow_sweep_mid_cell(tmp_path, tracking_uri, sig, timeout: float):
    """Start the slow sweep, send ``sig`` once a cell runs, and wait for the process to end."""
    proc = _start_sweep(tmp_path, tracking_uri, *SLOW_GRID)
    _wait_for_running_cell(tracking_uri, proc)
    proc.send_signal(sig)
    proc.communicate(timeout=timeout)
    return proc


@pytest.mark.slow
def test_sigterm_ends_the_cell_and_the_parent(tmp_path, tracking_uri):
    import signal

    proc = _signal_slow_sweep_mid_cell(tmp_path, tracking_uri, signal.SIGTERM, timeout=120)
    assert proc.returncode != 0
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert runs and not [r for r in runs if r.info.status == "RUNNING"]
    assert {r.info.status for r in runs} <= {"KILLED", "FINISHED"}
    # a stopped sweep is not summarised as if it had finished
    parents = [r for r in runs if r.data.tags.get("sweep_role") == "parent"]
    assert [p.info.status for p in parents] == ["KILLED"] and parents[0].data.tags.get("error")
    # run again, it resumes that parent and finishes it without the stop's error left on it
    again = _start_sweep(tmp_path, tracking_uri, *SLOW_GRID)
    out, err = again.communicate(timeout=900)
    assert again.returncode == 0, err[-3000:]
    resumed = mlflow.get_run(parents[0].info.run_id)
    assert resumed.info.status == "FINISHED" and "error" not in resumed.data.tags


@pytest.mark.slow
def test_resume_after_kill_9_closes_the_orphaned_cell(tmp_path, tracking_uri):
    import signal

    _signal_slow_sweep_mid_cell(tmp_path, tracking_uri, signal.SIGKILL, timeout=60)
    orphan = next(r for r in mlflow.search_runs(search_all_experiments=True, output_format="list")
                  if r.info.status == "RUNNING" and r.data.tags.get("sweep_role") == "cell")
    again = _start_sweep(tmp_path, tracking_uri, *SLOW_GRID)
    out, err = again.communicate(timeout=900)
    assert again.returncode == 0, err[-3000:]
    # re-running the interrupted sweep closes the orphan and runs its cell again
    closed = mlflow.get_run(orphan.info.run_id)
    assert closed.info.status == "KILLED" and "orphaned" in closed.data.tags["error"]
    assert not [r for r in mlflow.search_runs(search_all_experiments=True, output_format="list")
                if r.info.status == "RUNNING"]


def test_a_parents_owner_is_alive_only_while_its_process_runs():
    import subprocess
    import sys

    from embclust.processes import owner_is_alive, owner_token

    assert owner_is_alive(owner_token()) is True
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        token = owner_token(child.pid)
        assert owner_is_alive(token) is True
        host, pid, start = token.rsplit(":", 2)
        # the same pid with another start time is another process (a reused pid)
        assert owner_is_alive(f"{host}:{pid}:{int(start or 0) + 1}") is False
    finally:
        child.kill()
        child.wait()
    assert owner_is_alive(token) is False
    assert owner_is_alive(f"another-host-{token}") is None
    assert owner_is_alive(None) is None and owner_is_alive("") is None


def _stop_outside_a_store_write(proc, tracking_uri, attempts=50):
    """SIGSTOP ``proc`` at a moment it holds no SQLite write lock on the store.

    A process stopped inside a write keeps the store locked; others then fail after MLflow's 20 s
    wait, which is its own test (test_locks). Here it must hold, at most, its cache locks.
    """
    import signal
    import sqlite3
    import time
    from pathlib import Path

    db = tracking_uri[len("sqlite:///"):]
    for _ in range(attempts):
        proc.send_signal(signal.SIGSTOP)
        while (stat := Path(f"/proc/{proc.pid}/stat").read_text())[stat.rfind(")") + 2] != "T":
            time.sleep(0.01)
        connection = sqlite3.connect(db, timeout=0, isolation_level=None)
        try:
            connection.execute("BEGIN IMMEDIATE")
            connection.execute("ROLLBACK")
            return
        except sqlite3.OperationalError:  # stopped inside a write: let it finish, stop it again
            proc.send_signal(signal.SIGCONT)
            time.sleep(0.05)
        finally:
            connection.close()
    raise AssertionError("the sweep kept the store locked")


@pytest.mark.slow
def test_the_same_sweep_started_while_it_runs_gets_its_own_parent(tmp_path, tracking_uri):
    import signal

    first = _start_sweep(tmp_path, tracking_uri, *SLOW_GRID)
    _wait_for_running_cell(tracking_uri, first)
    _stop_outside_a_store_write(first, tracking_uri)  # alive, mid-cell, for as long as the second sweep runs
    try:
        second = _start_sweep(tmp_path, tracking_uri, *SLOW_GRID, sweep_dir="second")
        out2, err2 = second.communicate(timeout=900)
    finally:
        first.send_signal(signal.SIGCONT)
    out1, err1 = first.communicate(timeout=900)
    assert first.returncode == 0, err1[-3000:]
    assert second.returncode == 0, err2[-3000:]
    assert "still being run" in err2
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    parents = [r for r in runs if r.data.tags.get("sweep_role") == "parent"]
    cells = [r for r in runs if r.data.tags.get("sweep_role") == "cell"]
    # two parents, each with its own two finished cells: neither sweep closed the other's cells
    assert len(parents) == 2 and {p.info.status for p in parents} == {"FINISHED"}
    assert len(cells) == 4 and {c.info.status for c in cells} == {"FINISHED"}
    assert {c.data.tags["mlflow.parentRunId"] for c in cells} == {p.info.run_id for p in parents}


def test_knee_of_a_k_sweep_is_logged_on_the_parent(run_cli, tmp_path):
    from sklearn.datasets import make_blobs

    # six equally separated clusters: the elbow of inertia is unambiguous
    X, y = make_blobs(n_samples=1500, centers=np.eye(10)[:6] * 8, cluster_std=0.8, random_state=3)
    np.save(tmp_path / "X.npy", X.astype(np.float32))
    res = run_cli("-m", "dataset=npy", f"dataset.path={tmp_path / 'X.npy'}", "reducer=none",
                  "preprocess.normalize=none", "clusterer.n_clusters=2,3,4,5,6,7,8,9,10", "clusterer.n_init=3",
                  "analysis.explain.enabled=false")
    assert res.returncode == 0, res.stderr[-3000:]
    parent, cells = _children(res)
    assert parent.data.metrics["knee_k"] == 6
    assert "knee of inertia" in res.stderr
    names = {a.path for a in mlflow.MlflowClient().list_artifacts(parent.info.run_id)}
    assert "sweep_curves.html" in names


def test_reference_distances_store_each_pair_once_and_sum_like_the_full_matrix():
    from sklearn.metrics import pairwise_distances

    from embclust.scoring.reference import TriangularDistances

    rng = np.random.default_rng(3)
    X = rng.normal(size=(1003, 24)).astype(np.float32)
    D = TriangularDistances(X, block_rows=128)  # 1003 rows: the last block is short
    full = pairwise_distances(X.astype(np.float64))
    np.testing.assert_allclose(D.full(), full, rtol=1e-6, atol=1e-6)
    assert np.all(np.diag(D.full()) == 0)
    # about half of the full float32 matrix
    assert D.nbytes < 0.6 * X.shape[0] ** 2 * 4
    indicator = np.eye(7, dtype=np.float32)[rng.integers(0, 7, X.shape[0])]
    np.testing.assert_allclose(D.sums_by_cluster(indicator), full @ indicator, rtol=1e-5)
    # A cell's reference scores do not depend on how many threads its worker got.
    sums = [D.sums_by_cluster(indicator, n_threads=n) for n in (1, 2, 3)]
    assert np.array_equal(sums[0], sums[1]) and np.array_equal(sums[0], sums[2])


def _descendants(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of every process below ``pid``, read from /proc."""
    from pathlib import Path

    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            try:
                cmd = (Path("/proc") / str(child) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            found.append((child, cmd))
            todo.append(child)
    return found


@pytest.mark.slow
def test_a_killed_launcher_worker_fails_the_sweep_in_one_line_and_closes_its_runs(tmp_path, tracking_uri):
    import os
    import signal
    import time

    # what the system's out-of-memory killer does to a joblib worker in the middle of a cell
    proc = _start_sweep(tmp_path, tracking_uri, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *SLOW_GRID)
    _wait_for_running_cell(tracking_uri, proc)
    deadline = time.time() + 60
    while not (workers := [p for p, cmd in _descendants(proc.pid) if "loky" in cmd and "popen" in cmd]):
        assert time.time() < deadline, "no joblib worker found"
        time.sleep(0.2)
    os.kill(workers[0], signal.SIGKILL)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 1, err[-3000:]
    assert "Traceback" not in err and "TerminatedWorkerError" not in err
    assert "a worker process of the launcher ended while it ran a cell (exit codes {SIGKILL(-9)})" in err
    assert "run the same command again to resume" in err
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert not [r for r in runs if r.info.status == "RUNNING"]
    (parent,) = [r for r in runs if r.data.tags.get("sweep_role") == "parent"]
    assert parent.info.status == "FAILED" and "worker process of the launcher" in parent.data.tags["error"]
    killed = [r for r in runs if r.info.status == "KILLED"]
    assert killed and all("worker process of the launcher" in r.data.tags["error"] for r in killed)


def test_swept_keys_are_those_whose_override_differs_between_cells():
    from embclust.sweep.compare import swept_params

    runs = pd.DataFrame({
        "tags.sweep_cell": ["clusterer.n_clusters=20 clusterer.n_init=20", "clusterer.n_clusters=30 clusterer.n_init=20",
                            "clusterer.n_clusters=40 clusterer.n_init=20"],
        "params.clusterer.n_clusters": ["20", "30", None],  # the third was KILLED before it logged any
        "params.clusterer.n_init": ["20", "20", None],
    })
    assert swept_params(runs) == ["clusterer.n_clusters"]
    groups = pd.DataFrame({"tags.sweep_cell": ["clusterer=kmeans reducer=none", "clusterer=hdbscan reducer=none"]})
    assert swept_params(groups) == ["clusterer"]  # a config group is swept, though it is no param


def test_the_parent_is_named_by_the_grid_its_cells_take_not_a_config_grid_the_command_line_replaced(run_cli):
    # +sweep=pca_x_k's 12 PCA sizes were in the name though the command line swept two.
    res = run_cli("-m", "reducer=none", "+sweep=pca_x_k", "preprocess.pca_components=5,10", "clusterer.n_clusters=3")
    assert res.returncode == 0, res.stderr[-2000:]
    (parent,) = [r for r in res.runs() if r.data.tags.get("sweep_role") == "parent"]
    assert parent.info.run_name == "sweep reducer=none +sweep=pca_x_k preprocess.pca_components=5,10 clusterer.n_clusters=3"
    assert len([r for r in res.runs() if r.data.tags.get("sweep_role") == "cell"]) == 2


def test_the_best_cell_of_a_group_sweep_is_named_by_its_group(run_cli):
    res = run_cli("-m", "reducer=none", "clusterer=kmeans,agglomerative", "clusterer.n_clusters=10")
    assert res.returncode == 0, res.stderr[-2000:]
    done = next(line for line in res.stderr.splitlines() if "sweep done: best" in line)
    assert " at clusterer=" in done and "reducer=none" not in done and "tracking_uri" not in done
    (parent,) = [r for r in res.runs() if r.data.tags.get("sweep_role") == "parent"]
    # the parent is named by what it sweeps, not by the store's path on this machine
    assert parent.info.run_name == "sweep reducer=none clusterer=kmeans,agglomerative clusterer.n_clusters=10"
