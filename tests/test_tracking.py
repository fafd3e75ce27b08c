"""Tracking helpers: MLflow dataset inputs (shared per name and digest) and the runs page link."""

import mlflow
import numpy as np

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


def test_runs_page_url_points_at_the_runs_table():
    from embclust.tracking import runs_page_url

    assert runs_page_url("http://10.0.0.5:5000/", "7") == "http://10.0.0.5:5000/#/experiments/7/runs"
    assert runs_page_url("sqlite:///mlflow.db", "1") == "http://127.0.0.1:5000/#/experiments/1/runs"
    assert runs_page_url("databricks", "1") is None
