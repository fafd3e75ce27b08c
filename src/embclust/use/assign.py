"""Assign the rows of a new file to the clusters of a logged run."""

from __future__ import annotations

import csv
import json
import logging
import os
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from embclust.data.dataset import Dataset
from embclust.data.loaders import as_strings
from embclust.errors import ConfigError, DataError, path_error
from embclust.use import runs

log = logging.getLogger(__name__)

NOISE = -1
OUTPUT_SUFFIXES = (".parquet", ".csv")
CENTROIDS_ARTIFACT = "cluster_centroids.npz"
FEATURE_NAMES_ARTIFACT = "feature_names.json"
EXPLAINERS_FOLDER = "explainers"
TOP_DRIVERS = 3


def check_output(path: str) -> Path:
    """``path`` as a Path when its extension is one embclust writes, else :class:`ConfigError`."""
    p = Path(path)
    if p.suffix.lower() not in OUTPUT_SUFFIXES:
        raise ConfigError(f"--output {path}: unsupported extension '{p.suffix}' (allowed: {', '.join(OUTPUT_SUFFIXES)})")
    return p


def _same_file(a: str, b: Path) -> bool:
    """Whether ``a`` and ``b`` name one file (through links, ``./`` or another spelling)."""
    try:
        return Path(a).resolve() == b.resolve() or (b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def write_table(table: pa.Table, path: Path, setting: str = "--output") -> None:
    """Write ``table`` as parquet or CSV, by the file's extension (CSV: missing values empty, quotes only
    where needed, floats as 1.0 / 0.2505928 / NaN).

    An operating-system error (a parent that is a file, a read-only or full disk, no permission)
    is a :class:`PathError` naming ``path`` and ``setting``; nothing is left behind.
    """
    try:
        _write_table(table, path)
    except OSError as exc:
        raise path_error(exc, path, setting) from None


def _write_table(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written beside it and renamed when complete: an error or Ctrl-C midway leaves no half-written
    # file that looks like a result, and an earlier output of the same name stays whole.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        if path.suffix.lower() == ".csv":
            with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
                writer = csv.writer(f, lineterminator="\n")
                writer.writerow(table.column_names)
                writer.writerows(zip(*(as_strings(column, missing="") for column in table.columns)))
        else:
            os.close(fd)
            pq.write_table(table, tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def align_features(ds: Dataset, trained: list[str], categorical: list[str] = (), source: str = "the new file") -> np.ndarray:
    """Columns of ``ds`` in the order the run was fitted on, by feature name.

    One-hot columns (``<categorical column>_<category>``) of categories the new file lacks are
    zero, as no row has them; columns for categories the run never saw are dropped, as the
    fitted encoder would ignore them. Any other missing column is an error.
    """
    names = ds.feature_names or []
    position = {n: i for i, n in enumerate(names)}
    one_hot = tuple(f"{c}_" for c in categorical)
    missing = [n for n in trained if n not in position and not (one_hot and n.startswith(one_hot))]
    if missing:
        raise DataError(f"{source} lacks feature columns the run used: {', '.join(missing[:10])} (it needs the columns "
                        f"of the run's dataset '{ds.name}')")
    unseen = [n for n in names if n not in set(trained)]
    if unseen:
        log.warning("ignoring %d columns the run never saw (new categories?): %s", len(unseen), ", ".join(unseen[:10]))
    X = np.zeros((ds.n_samples, len(trained)), dtype=np.float32)
    for j, name in enumerate(trained):
        if name in position:
            X[:, j] = ds.X[:, position[name]]
    return X


def _expected_features(model) -> int | None:
    for _, step in model.steps:
        if step != "passthrough" and hasattr(step, "n_features_in_"):
            return int(step.n_features_in_)
    return None


def _centroids(run, clusterer) -> tuple[np.ndarray, np.ndarray] | None:
    """(cluster ids, centroids in the clustered space) from the run's artifact or the fitted clusterer."""
    if runs.has_artifact(run, CENTROIDS_ARTIFACT):
        with np.load(runs.download(run, CENTROIDS_ARTIFACT)) as saved:
            return saved["cluster"], saved["centroid"]
    if hasattr(clusterer, "cluster_centers_"):
        return np.arange(clusterer.cluster_centers_.shape[0]), np.asarray(clusterer.cluster_centers_, dtype=np.float32)
    raw = getattr(clusterer, "_raw_data", None)
    if raw is not None:
        from embclust.use.retrieval import cluster_centroids

        return cluster_centroids(np.asarray(raw), np.asarray(clusterer.labels_))
    return None


def _distance_to(Xp: np.ndarray, cluster: np.ndarray, ids: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Euclidean distance of each row to the centroid of its cluster (NaN for noise)."""
    out = np.full(Xp.shape[0], np.nan, dtype=np.float32)
    rows = np.flatnonzero(cluster != NOISE)
    index = np.searchsorted(ids, cluster[rows])
    out[rows] = np.linalg.norm(Xp[rows] - centroids[index], axis=1)
    return out


def assign_rows(run, ds: Dataset, model, explain: bool = False, categorical: list[str] = (),
                source: str = "the new file") -> pa.Table:
    """Cluster, distance to its centroid and how it was assigned, for every row of ``ds``."""
    if runs.has_artifact(run, FEATURE_NAMES_ARTIFACT) and ds.feature_names is not None:
        trained = json.loads(runs.download(run, FEATURE_NAMES_ARTIFACT).read_text())
        X = align_features(ds, trained, categorical, source)
    else:
        X = np.asarray(ds.X, dtype=np.float32)
    expected = _expected_features(model)
    if expected is not None and X.shape[1] != expected:
        raise DataError(f"{source} has {X.shape[1]} features, the run was fitted on {expected} (dataset '{ds.name}')")
    Xp = np.asarray(model[:-1].transform(X), dtype=np.float32)
    clusterer = model.steps[-1][1]
    centroids = _centroids(run, clusterer)
    table: dict[str, object] = {"id": ds.ids}
    if type(clusterer).__name__ == "HDBSCAN":
        import hdbscan

        if getattr(clusterer, "_prediction_data", None) is None:
            # Runs fitted without prediction_data=True: build it now from the data the model kept.
            clusterer.generate_prediction_data()
        cluster, strength = hdbscan.approximate_predict(clusterer, Xp)
        cluster = np.asarray(cluster, dtype=np.int64)
        table["cluster"] = cluster
        table["membership_strength"] = np.asarray(strength, dtype=np.float32)
        method = "hdbscan_approximate_predict"
    elif hasattr(clusterer, "predict"):
        cluster = np.asarray(clusterer.predict(Xp), dtype=np.int64)
        table["cluster"] = cluster
        method = "predict"
    else:
        if centroids is None and run.data.metrics.get("n_clusters") == 0:
            raise DataError(f"run {run.info.run_id} found no cluster (every row was noise), so there is none to assign "
                            "new rows to: re-run it with other clusterer settings")
        if centroids is None:
            raise DataError(
                f"run {run.info.run_id} logged no {CENTROIDS_ARTIFACT} and its {type(clusterer).__name__} cannot "
                "predict: re-run it to log the centroids"
            )
        cluster = _nearest(Xp, *centroids)
        table["cluster"] = cluster
        method = "nearest_centroid"
    table["distance"] = _distance_to(Xp, cluster, *centroids) if centroids is not None else np.full(len(cluster), np.nan)
    table["method"] = np.full(len(cluster), method)
    out = pa.table(table)
    if explain:
        explained = explain_rows(run, ds, X, cluster)
        out = pa.Table.from_arrays(out.columns + explained.columns, names=out.column_names + explained.column_names)
    return out


def _nearest(Xp: np.ndarray, ids: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Id of the nearest centroid (Euclidean) of each row."""
    # |x - c|^2 = |x|^2 - 2 x.c + |c|^2; |x|^2 does not change the argmin, so rank by 2 x.c - |c|^2.
    scores = 2 * Xp @ centroids.T - (centroids**2).sum(axis=1)[None, :]
    return ids[np.argmax(scores, axis=1)].astype(np.int64)


def explain_rows(run, ds: Dataset, X: np.ndarray, cluster: np.ndarray) -> pa.Table:
    """Top features (SHAP of the assigned cluster's one-vs-rest model) of each row; empty for noise
    and clusters that were not explained."""
    from embclust.explain.shap_models import load_models, tree_shap_values

    if not runs.has_artifact(run, f"{EXPLAINERS_FOLDER}/features.json"):
        raise DataError(
            f"run {run.info.run_id} kept no per-cluster explainers (artifact {EXPLAINERS_FOLDER}/): "
            "--explain needs a tabular run with analysis.explain.enabled=true"
        )
    folder = Path(mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path=EXPLAINERS_FOLDER, dst_path=str(runs.scratch_folder())
    ))
    models, names, source = load_models(folder)
    # Columns of X: the run's feature order when it was logged, else the input file's own.
    trained = list(ds.feature_names or []) if not runs.has_artifact(run, FEATURE_NAMES_ARTIFACT) else json.loads(
        runs.download(run, FEATURE_NAMES_ARTIFACT).read_text()
    )
    if source == "PCA components" or any(n not in trained for n in names):
        raise DataError(
            f"run {run.info.run_id} explained {source} ({', '.join(names[:5])}...), not columns of the input: "
            "--explain works for tabular runs explained on their input columns"
        )
    features = X[:, [trained.index(n) for n in names]]
    columns = {f"{kind}_{i}": [None] * len(cluster) for i in range(1, TOP_DRIVERS + 1) for kind in ("feature", "shap")}
    for c, model in models.items():
        rows = np.flatnonzero(cluster == c)
        if rows.size == 0:
            continue
        values = tree_shap_values(model, features[rows])
        order = np.argsort(-np.abs(values), axis=1, kind="stable")[:, :TOP_DRIVERS]
        for i in range(order.shape[1]):
            for r, row in enumerate(rows):
                columns[f"feature_{i + 1}"][row] = names[order[r, i]]
                columns[f"shap_{i + 1}"][row] = round(float(values[r, order[r, i]]), 4)
    ordered = {k: columns[k] for i in range(1, TOP_DRIVERS + 1) for k in (f"feature_{i}", f"shap_{i}")}
    schema = pa.schema([(k, pa.string() if k.startswith("feature") else pa.float64()) for k in ordered])
    return pa.table(ordered, schema=schema)


def assign(run_id: str, input_path: str, output: str, explain: bool = False) -> pa.Table:
    """Assign the rows of ``input_path`` to the clusters of run ``run_id`` (a sweep: its best cell)
    and write the table to ``output``."""
    out_path = check_output(output)
    if _same_file(input_path, out_path):
        raise ConfigError(f"--output {output} is the --input file: writing it would replace the rows being assigned; "
                          "choose another --output")
    run = runs.resolve_run(run_id)
    model = runs.load_model(run)
    cfg = runs.load_config(run)
    if cfg.dataset.get("encoding") == "ordinal" and cfg.dataset.get("categorical_columns"):
        # Ordinal codes come from the categories present in a file, so a new file's codes would
        # silently mean other categories than the run's.
        raise ConfigError(
            f"run {run.info.run_id} encoded its categorical columns as ordinal codes, which a new file cannot "
            "reproduce: assign needs a run with dataset.encoding=onehot"
        )
    ds = runs.load_dataset(cfg, input_path)
    categorical = list(cfg.dataset.get("categorical_columns") or [])
    table = assign_rows(run, ds, model, explain=explain, categorical=categorical, source=f"--input {input_path}")
    write_table(table, out_path)
    clusters = np.unique(table["cluster"].to_numpy())
    log.info("assigned %d rows to %d clusters, wrote %s", table.num_rows, clusters.size, out_path)
    return table
