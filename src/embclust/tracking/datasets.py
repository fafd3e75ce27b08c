"""Record a run's input data as an MLflow dataset (name, digest, source, schema)."""

from __future__ import annotations

import os
import random
import time
import warnings

import mlflow
import numpy as np
from mlflow.entities import DatasetInput, InputTag
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from embclust.data.dataset import Dataset


def dataset_entity(ds: Dataset, source: str | None):
    """MLflow's dataset entity for ``ds``: digest = data fingerprint, schema from dtype and shape.

    Nothing is hashed or copied here: the digest is the fingerprint the run already computed,
    and the schema and profile read only the arrays' dtype and shape.
    """
    import mlflow.data

    if source is not None and "://" not in str(source):  # a URI (s3://...) is kept as it is
        source = os.path.abspath(str(source))
    with warnings.catch_warnings():
        # MLflow registers two local-file source types and warns on every path that it picked one.
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        dataset = mlflow.data.from_numpy(_shape_only(ds.X), source=source, targets=ds.labels, name=ds.name,
                                         digest=ds.fingerprint)
    return dataset._to_mlflow_entity()


def _shape_only(X):
    """``X`` itself, or for rows left in their files (engine=ray) an array of their shape and
    dtype that holds no data (one broadcast zero): MLflow reads only those."""
    if isinstance(X, np.ndarray):
        return X
    return np.broadcast_to(np.zeros((), dtype=X.dtype), X.shape)


def log_dataset_input(ds: Dataset, source: str | None = None, context: str = "training", run_id: str | None = None) -> None:
    """Log ``ds`` as an input of ``run_id`` (default: the active run).

    Runs on the same data (e.g. the cells of a sweep) share one dataset entry in the experiment:
    MLflow keys it by name and digest.
    """
    run_id = run_id or mlflow.active_run().info.run_id
    entry = DatasetInput(dataset_entity(ds, source), tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])
    client = mlflow.MlflowClient()
    for attempt in range(_INSERT_RACE_RETRIES + 1):
        try:
            client.log_inputs(run_id, datasets=[entry])
            return
        except MlflowException as exc:
            # Two runs (parallel sweep cells) logging a dataset the experiment does not hold yet
            # both insert it; the store's unique key refuses the second. The entry exists now:
            # logging it again links this run to it.
            if attempt == _INSERT_RACE_RETRIES or not _lost_insert_race(exc):
                raise
            time.sleep(0.05 * (attempt + 1) + random.random() * 0.05)


_INSERT_RACE_RETRIES = 5
# How SQLite, PostgreSQL and MySQL word a unique-key violation (through SQLAlchemy or the server).
_UNIQUE_VIOLATION = ("unique constraint", "integrityerror", "duplicate key", "duplicate entry")


def _lost_insert_race(exc: MlflowException) -> bool:
    text = str(exc).lower()
    return any(marker in text for marker in _UNIQUE_VIOLATION)
