"""What a logged run holds, read back from MLflow: config, labels, model, data and artifacts."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from embclust.data.dataset import Dataset, validate_dataset
from embclust.errors import ConfigError, DataError, EmbclustError, first_line

log = logging.getLogger(__name__)

# Dataset keys that name files beside the data file: they do not describe a new input file.
_COMPANION_FILES = ("labels_path", "ids_path", "label_names_path")
_DATASET_OPTIONS = ("on_invalid", "sample_size", "dedupe")


def get_run(run_id: str, what: str = ""):
    """The MLflow run ``run_id``, or :class:`ConfigError` naming the store when there is none.

    ``what`` says how the user came to this run (", the best cell of sweep ...") in the errors."""
    try:
        run = mlflow.get_run(run_id)
    except Exception as exc:  # noqa: BLE001 - MLflow raises several types for unknown or malformed ids
        uri = mlflow.get_tracking_uri()
        if not _says_no_such_run(exc):  # a store that is locked, damaged or gone: not "no run"
            from embclust.tracking.store import store_failure_message

            said = store_failure_message(exc, uri) or f"the MLflow store {uri} cannot be read: {first_line(exc)}"
            raise EmbclustError(said) from None
        raise ConfigError(f"no run {run_id!r}{what} at {uri} (set --tracking-uri or MLFLOW_TRACKING_URI)") from None
    if run.info.lifecycle_stage == "deleted":  # in the store's trash: not a run to build on unawares
        raise ConfigError(f"run {run_id}{what} is deleted: restore it first (mlflow runs restore --run-id {run_id}, "
                          "or in the MLflow UI) or pass another run")
    return run


def _says_no_such_run(exc: BaseException) -> bool:
    """Whether MLflow's error means the id names no run (unknown or malformed), not a store it cannot read."""
    from mlflow.exceptions import MlflowException

    code = getattr(exc, "error_code", "")
    if isinstance(exc, MlflowException) and code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
        return True
    return "not found" in str(exc).lower() or "does not exist" in str(exc).lower()


def _unfinished(run) -> str:
    """Why a run that did not finish has no results, or '' for a finished run."""
    status = run.info.status
    if status == "FINISHED":
        return ""
    if status in ("RUNNING", "SCHEDULED"):
        if _owner_gone(run):
            return (f"run {run.info.run_id} is RUNNING but the process that ran it is gone (stopped before it ended): "
                    "its results are not complete; run its command again (the next run marks it KILLED), or pass another run")
        return f"run {run.info.run_id} is still running: its results are not complete yet; wait until it ends, or pass another run"
    error = run.data.tags.get("error", "")
    reason = f" ({error[:200] + '...' if len(error) > 200 else error})" if error else ""
    return f"run {run.info.run_id} is {status}{reason}, so it logged no results: fix that and re-run it, or pass another run"


def _owner_gone(run) -> bool:
    from embclust.processes import owner_is_alive
    from embclust.tracking.store import PROCESS_TAG, SWEEP_OWNER_TAG

    tags = run.data.tags
    return owner_is_alive(tags.get(SWEEP_OWNER_TAG) or tags.get(PROCESS_TAG)) is False


def finished(run):
    """``run`` when it FINISHED; otherwise :class:`DataError` saying why its results cannot be used.

    A run that was stopped (KILLED) or failed may still hold some artifacts, written before it
    stopped: they are not its results. A sweep that is still running has no final best cell.
    """
    why = _unfinished(run)
    if why:
        if is_sweep_parent(run):
            why = why.replace(f"run {run.info.run_id}", f"sweep {run.info.run_id}", 1)
        raise DataError(why)
    return run


def is_sweep_parent(run) -> bool:
    return run.data.tags.get("sweep_role") == "parent"


def resolve_run(run_id: str):
    """The run itself, or for a sweep's parent run the sweep's best cell (tag ``best_run_id``)."""
    run = get_run(run_id)
    if not is_sweep_parent(run):
        return finished(run)
    if run.info.status in ("RUNNING", "SCHEDULED"):  # its best cell may still change
        finished(run)
    best = run.data.tags.get("best_run_id")
    if not best:
        raise ConfigError(f"run {run_id} is a sweep without a best cell yet (no tag best_run_id): pass a cell's run id")
    log.info("run %s is a sweep: using its best cell, run %s", run_id, best)
    return finished(get_run(best, f", the best cell of sweep {run_id},"))


def download(run, artifact: str, dst: Path | None = None) -> Path:
    """Download one artifact of ``run``; :class:`DataError` when the run did not log it."""
    if not has_artifact(run, artifact):
        raise DataError(_unfinished(run) or f"run {run.info.run_id} has no artifact {artifact!r}")
    dst = dst or scratch_folder()
    return Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=artifact, dst_path=str(dst)))


_scratch: tempfile.TemporaryDirectory | None = None


def scratch_folder() -> Path:
    """A new folder for downloaded artifacts, inside one temporary folder that this process
    removes when it exits: a command that reads runs leaves nothing in TMPDIR."""
    global _scratch
    if _scratch is None:
        _scratch = tempfile.TemporaryDirectory(prefix="embclust-")
    return Path(tempfile.mkdtemp(dir=_scratch.name))


def has_artifact(run, artifact: str) -> bool:
    parent = str(Path(artifact).parent) if "/" in artifact else None
    return artifact in {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, parent)}


def _damaged(run, artifact: str, exc: BaseException) -> DataError:
    """One line for an artifact of ``run`` that no longer reads (truncated, overwritten)."""
    return DataError(f"run {run.info.run_id}: its artifact {artifact} is damaged and cannot be read ({first_line(exc)}): "
                     "re-run it with the same config (python run.py ...), or pass another run")


def load_config(run) -> DictConfig:
    """The run's resolved config (artifact ``config.yaml``)."""
    path = download(run, "config.yaml")
    try:
        cfg = OmegaConf.load(path)
    except Exception as exc:  # noqa: BLE001 - YAML's and OmegaConf's errors alike
        raise _damaged(run, "config.yaml", exc) from None
    if not isinstance(cfg, DictConfig):
        raise _damaged(run, "config.yaml", ValueError("not a mapping of config keys"))
    return cfg


def load_labels(run, columns: list[str] | None = None) -> pa.Table:
    """The run's ``labels.parquet`` (id, cluster, and x, y, label when logged)."""
    path = download(run, "labels.parquet")
    try:
        available = pq.read_schema(path).names
        return pq.read_table(path, columns=[c for c in columns if c in available] if columns else None)
    except (pa.ArrowException, OSError) as exc:
        raise _damaged(run, "labels.parquet", exc) from None


def load_model(run):
    """The run's fitted Pipeline (normalize, pca, umap, cluster), or one line on what to use instead."""
    import mlflow.sklearn
    from mlflow.exceptions import MlflowException

    from embclust.tracking.models import import_skops_io

    import_skops_io()  # before MLflow imports it for a skops model, without its walk of scikit-learn
    try:
        return mlflow.sklearn.load_model(f"runs:/{run.info.run_id}/model", dst_path=str(scratch_folder()))
    except (MlflowException, OSError):
        if _unfinished(run):
            raise DataError(_unfinished(run)) from None
        parent = run.data.tags.get("mlflow.parentRunId")
        unfinished_report = run.data.tags.get("report_error")
        if parent and unfinished_report:
            hint = (f"it is the best cell of sweep {parent}, whose full report and model were not completed "
                    f"({unfinished_report[:200]}): fix that if it names a cause, then run the sweep's command "
                    "again to complete it")
        elif parent and run.data.tags.get("sweep_best") == "true":  # its model was logged, and is gone
            hint = (f"it is the best cell of sweep {parent}, whose model was logged but is gone (deleted or moved): "
                    "run the sweep again with sweep.resume=false, or a single run with this cell's overrides")
        elif parent:
            hint = (f"it is a sweep cell logged without its model; use the sweep's best cell (pass the sweep id {parent}) "
                    "or a single run (python run.py with this cell's overrides)")
        else:
            hint = "re-run it with python run.py to log one"
        raise DataError(f"run {run.info.run_id} has no model: {hint}") from None
    except Exception as exc:  # noqa: BLE001 - a model file cut short or overwritten (zip, pickle, skops errors)
        raise _damaged(run, "model", exc) from None


def as_run_read_them(run, cfg: DictConfig) -> DictConfig:
    """``cfg`` with relative paths of its dataset (files, the embeddings cache) made absolute from the
    run's working folder (tag ``working_dir``) where they are there: the files the run read, not
    same-named ones under the current folder."""
    base = run.data.tags.get("working_dir")
    if not base:
        return cfg
    cfg = cfg.copy()
    for key in ("path", *_COMPANION_FILES, "cache_dir"):
        value = cfg.dataset.get(key) if key in cfg.dataset else None
        if isinstance(value, str) and value and not Path(value).is_absolute() and (Path(base) / value).exists():
            cfg.dataset[key] = str(Path(base) / value)
    return cfg


def load_dataset(cfg: DictConfig, path: str | None = None, validate: bool = True) -> Dataset:
    """Instantiate the run's ``dataset`` config, reading ``path`` instead of the run's file when given.

    Only the loader and its validation run: sampling and de-duplication belong to the run's own
    rows, which :func:`align_to_labels` recovers by id.
    """
    container = OmegaConf.to_container(cfg.dataset, resolve=True)
    options = {k: container.pop(k) for k in _DATASET_OPTIONS if k in container}
    name = container.get("name", "dataset")
    if path is not None:
        if "path" not in container:
            raise ConfigError(
                f"the run used dataset '{name}', which reads no file: --input needs a run on a file dataset "
                "(npy, parquet, csv, texts, tabular)"
            )
        container["path"] = path
        for key in _COMPANION_FILES:
            if key in container:
                container[key] = None
        # The new file need not carry true labels; they are not part of an assignment.
        if "label_column" in container:
            container["label_column"] = None
        if str(container.get("_target_", "")).endswith(".load_texts"):
            container["assigning"] = True  # new documents may all be alike: nothing is clustered
    try:
        ds = instantiate(container)
    except Exception as exc:  # noqa: BLE001 - Hydra wraps the loader's own error
        cause = exc
        while cause is not None and not isinstance(cause, EmbclustError):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            if path is not None and cause.args and isinstance(cause.args[0], str):
                # the file is the command's --input, not the run's dataset.path (nor a key it cannot set)
                said = cause.args[0].replace("name the one to cluster with dataset.key=NAME",
                                             "save the one to assign alone with numpy.save (a .npy)")
                # the run's columns are fixed: the new file's must hold what the run read there
                said = said.replace(": list it in dataset.categorical_columns instead (a yes/no or text column is a "
                                    "category)", ": the run read it as numbers, so --input must hold numbers there")
                cause.args = (said.replace("dataset.path", "--input"), *cause.args[1:])
            raise cause from None
        inner = exc
        while inner.__cause__ is not None or inner.__context__ is not None:  # the loader's own error, not Hydra's wrapper
            inner = inner.__cause__ or inner.__context__
        if isinstance(inner, (ImportError, MemoryError)):  # not the file's fault: said as they are
            raise inner from None
        source = f"--input {path}" if path is not None else f"{container.get('path') or name} (the run's dataset.path)"
        raise DataError(f"{source}: cannot be read as dataset '{name}' of this run "
                        f"({type(inner).__name__}: {first_line(inner)})") from None
    if not validate:
        return ds
    return validate_dataset(ds, on_invalid=options.get("on_invalid", "error"), assigning=path is not None)


def align_to_labels(ds: Dataset, labels: pa.Table) -> np.ndarray:
    """Rows of ``ds`` in the order of the run's ``labels.parquet`` (by id when they differ)."""
    run_ids = labels["id"].to_numpy()
    if run_ids.size == ds.n_samples and np.array_equal(run_ids.astype(str), ds.ids.astype(str)):
        return np.arange(ds.n_samples)
    keys = ds.ids.astype(str)
    if np.unique(keys).size < keys.size:
        raise DataError(
            f"dataset '{ds.name}' has {ds.n_samples} rows but the run clustered {run_ids.size}, and its ids are not "
            "unique, so its rows cannot be matched to the run's labels"
        )
    position = {k: i for i, k in enumerate(keys)}
    rows = np.array([position.get(k, -1) for k in run_ids.astype(str)], dtype=np.int64)
    missing = int((rows < 0).sum())
    if missing:
        raise DataError(
            f"dataset '{ds.name}' lacks {missing} of the {run_ids.size} ids the run clustered "
            "(has the data file changed since the run?)"
        )
    return rows
