"""Tracking helpers: MLflow dataset inputs (shared per name and digest) and the runs page link."""

import mlflow
import numpy as np
import pytest
from mlflow.exceptions import MlflowException

from embclust.data import make_synthetic
from embclust.tracking.datasets import log_dataset_input


def test_runs_on_the_same_file_share_one_dataset_entry(tracking_uri, tmp_path):
    mlflow.set_tracking_uri(tracking_uri)
    experiment_id = mlflow.set_experiment("datasets").experiment_id
    ds = make_synthetic(n_samples=200, n_features=12, n_clusters=3, seed=0)
    path = tmp_path / "emb.npy"
    np.save(path, ds.X)
    run_ids = []
    for _ in range(2):
        with mlflow.start_run() as run:
            log_dataset_input(ds, str(path))
        run_ids.append(run.info.run_id)
    other = make_synthetic(n_samples=100, n_features=12, n_clusters=3, seed=1)
    with mlflow.start_run() as run:
        log_dataset_input(other, None)
    runs = [mlflow.get_run(r) for r in run_ids]
    (a,), (b,) = (r.inputs.dataset_inputs for r in runs)
    assert a.dataset.digest == b.dataset.digest == ds.fingerprint
    assert a.dataset.name == ds.name and str(path) in a.dataset.source
    assert "[-1, 12]" in a.dataset.schema and a.tags[0].value == "training"
    # One entry per (name, digest) in the experiment, so the UI groups both runs under it.
    store = mlflow.tracking._tracking_service.utils._get_store()
    found = store._search_datasets([experiment_id])
    assert sorted(d.digest for d in found) == sorted({ds.fingerprint, other.fingerprint})
    mlflow.set_tracking_uri(None)


# What an MLflow server answered when two sweep cells logged a new dataset at the same moment.
LOST_RACE = (
    "BAD_REQUEST: (sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id, datasets.name, "
    "datasets.digest"
)


def test_a_cell_that_loses_the_dataset_insert_race_is_still_linked_to_the_dataset(tracking_uri, monkeypatch):
    mlflow.set_tracking_uri(tracking_uri)
    experiment_id = mlflow.set_experiment("race").experiment_id
    client = mlflow.MlflowClient()
    ds = make_synthetic(n_samples=200, n_features=12, n_clusters=3, seed=0)
    winner, loser = (client.create_run(experiment_id).info.run_id for _ in range(2))
    real = mlflow.MlflowClient.log_inputs
    calls = []

    def racing(self, run_id, datasets=None, models=None):
        calls.append(run_id)
        if len(calls) == 1:  # a parallel cell inserts the same dataset first
            real(self, winner, datasets=datasets)
            raise MlflowException(LOST_RACE)
        return real(self, run_id, datasets=datasets)

    monkeypatch.setattr(mlflow.MlflowClient, "log_inputs", racing)
    log_dataset_input(ds, None, run_id=loser)
    assert calls == [loser, loser]
    for run_id in (winner, loser):
        (entry,) = client.get_run(run_id).inputs.dataset_inputs
        assert entry.dataset.digest == ds.fingerprint
    store = mlflow.tracking._tracking_service.utils._get_store()
    assert [d.digest for d in store._search_datasets([experiment_id])] == [ds.fingerprint]
    mlflow.set_tracking_uri(None)


def test_other_dataset_logging_errors_are_not_retried(tracking_uri, monkeypatch):
    mlflow.set_tracking_uri(tracking_uri)
    calls = []

    def refused(self, run_id, datasets=None, models=None):
        calls.append(run_id)
        raise MlflowException("RESOURCE_DOES_NOT_EXIST: run 'x' not found")

    monkeypatch.setattr(mlflow.MlflowClient, "log_inputs", refused)
    ds = make_synthetic(n_samples=50, n_features=4, n_clusters=2, seed=0)
    with pytest.raises(MlflowException, match="not found"):
        log_dataset_input(ds, None, run_id="x")
    assert calls == ["x"]
    mlflow.set_tracking_uri(None)


def test_runs_page_url_points_at_the_runs_table():
    from embclust.tracking import runs_page_url

    assert runs_page_url("http://10.0.0.5:5000/", "7") == "http://10.0.0.5:5000/#/experiments/7/runs"
    assert runs_page_url("sqlite:///mlflow.db", "1") == "http://127.0.0.1:5000/#/experiments/1/runs"
    assert runs_page_url("databricks", "1") is None


NOTEBOOK_PROBE = """
import sys, types
if sys.argv[2] == "fake-notebook":  # what a Jupyter kernel has: IPython imported, a ZMQ shell
    shell = type("ZMQInteractiveShell", (), {})()
    sys.modules["IPython"] = types.SimpleNamespace(get_ipython=lambda: shell)
import mlflow
from embclust.tracking.store import setup_tracking
setup_tracking(sys.argv[1], "probe")
with mlflow.start_run() as run:
    pass
source = mlflow.get_run(run.info.run_id).data.tags.get("mlflow.source.type")
print("IPython" in sys.modules and sys.argv[2] != "fake-notebook", source)
"""


@pytest.mark.parametrize("where, source", [("script", "LOCAL"), ("fake-notebook", "NOTEBOOK")])
def test_runs_outside_ipython_do_not_import_it_and_notebook_runs_are_still_tagged(tmp_path, where, source):
    import subprocess
    import sys

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = subprocess.run([sys.executable, "-c", NOTEBOOK_PROBE, uri, where], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", source]


def _git(cwd, *args):
    import subprocess

    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True, capture_output=True)


def test_git_state_is_the_checkout_of_the_code_and_new_configs_make_it_dirty(tmp_path):
    from embclust.tracking.store import git_state

    repo = tmp_path / "my repo"  # a space in the checkout's path
    package, conf = repo / "pkg", repo / "conf"
    package.mkdir(parents=True)
    conf.mkdir()
    (package / "__init__.py").write_text("")
    (conf / "config.yaml").write_text("seed: 0\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "code")
    state = git_state(package, (str(conf),))
    assert len(state["git_commit"]) == 40 and state["git_dirty"] == "false"
    (repo / "embeddings.npy").write_bytes(b"data")  # the user's data beside the code: not a change of the code
    assert git_state(package, (str(conf),))["git_dirty"] == "false"
    (conf / "mine.yaml").write_text("seed: 1\n")  # a config the commit does not hold
    assert git_state(package, (str(conf),))["git_dirty"] == "true"
    # a package copied into another project's checkout (pip install --target) is not that project's commit
    installed = repo / "site" / "embclust"
    installed.mkdir(parents=True)
    (installed / "__init__.py").write_text("")
    assert git_state(installed) == {}
    assert git_state(tmp_path) == {}  # no checkout at all


def test_labels_fingerprint_follows_the_true_labels_not_their_dtype():
    from embclust.data import Dataset

    X = np.zeros((4, 2), dtype=np.float32)
    a = Dataset("d", X, np.arange(4), labels=np.array([0, 1, 1, 0], dtype=np.int64))
    same = Dataset("d", X, np.arange(4), labels=np.array([0, 1, 1, 0], dtype=np.int32))
    other = Dataset("d", X, np.arange(4), labels=np.array([0, 1, 0, 1], dtype=np.int64))
    assert a.labels_fingerprint == same.labels_fingerprint != other.labels_fingerprint
    assert a.fingerprint == other.fingerprint
    assert Dataset("d", X, np.arange(4)).labels_fingerprint is None
