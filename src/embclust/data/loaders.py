"""File loaders: embeddings from .npy/.npz, parquet and CSV, and tabular features.

Every loader returns a :class:`~embclust.data.Dataset` with a float32 matrix; files are read
with numpy memory maps or polars, selecting only the columns that are needed.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import polars as pl

from embclust.data.dataset import Dataset, as_float32
from embclust.errors import ConfigError, DataError

log = logging.getLogger(__name__)

TABLE_SUFFIXES = (".parquet", ".csv")


def check_file(path: str | None, allowed: tuple[str, ...] | None, what: str = "dataset.path") -> Path:
    """The path of an existing, readable, non-empty file with an allowed extension, else one-line errors."""
    if not path:
        raise ConfigError(f"{what} is required (a {' or '.join(allowed or ('data',))} file)")
    p = Path(path)
    if not p.is_file():
        raise DataError(f"file not found: {path} ({what})")
    if allowed is not None and p.suffix.lower() not in allowed:
        raise DataError(f"{path}: unsupported extension '{p.suffix}' (allowed: {', '.join(allowed)})")
    try:
        fd = os.open(p, os.O_RDONLY)
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror}) ({what})") from None
    try:
        if os.fstat(fd).st_size == 0:
            raise DataError(f"{path} is empty (0 bytes) ({what})")
    finally:
        os.close(fd)
    return p


# ---------------------------------------------------------------------------- numpy files


def _load_array(path: str, what: str, mmap: bool = False, key: str | None = None) -> np.ndarray:
    p = check_file(path, (".npy", ".npz"), what)
    try:
        if p.suffix.lower() == ".npy":
            return np.load(p, mmap_mode="r" if mmap else None, allow_pickle=False)
        archive = np.load(p, allow_pickle=False)
        keys = list(archive.keys())
        if not keys:
            raise DataError(f"{path}: the .npz archive holds no arrays")
        if key is not None and key not in keys:
            raise DataError(f"{path}: no array named {key!r} (arrays: {', '.join(keys)})")
        return archive[key or keys[0]]
    except ValueError as exc:
        raise DataError(f"{path}: cannot be read as a numeric array ({exc})") from exc


def _load_names(path: str) -> list[str]:
    """Label names from a .json list, a .txt (one per line) or a .npy of strings."""
    p = check_file(path, None, "dataset.label_names_path")
    if p.suffix == ".json":
        return [str(x) for x in json.loads(p.read_text())]
    if p.suffix == ".npy":
        return [str(x) for x in np.load(p, allow_pickle=False)]
    return [line for line in p.read_text().splitlines() if line.strip()]


def load_npy(
    path: str,
    labels_path: str | None = None,
    ids_path: str | None = None,
    label_names_path: str | None = None,
    key: str | None = None,
    name: str = "npy",
) -> Dataset:
    """Embeddings from ``.npy`` (memory-mapped, never copied when float32) or ``.npz``."""
    X = _load_array(path, "dataset.path", mmap=True, key=key)
    if X.ndim != 2:
        raise DataError(f"{path}: expected a 2-D matrix (rows x dimensions), got shape {X.shape}")
    if not np.issubdtype(X.dtype, np.number):
        raise DataError(f"{path}: features must be numeric, got dtype {X.dtype}")
    ids = _load_array(ids_path, "dataset.ids_path") if ids_path else np.arange(X.shape[0])
    labels = _load_array(labels_path, "dataset.labels_path") if labels_path else None
    label_names = _load_names(label_names_path) if label_names_path else None
    if labels is not None:
        labels = _check_labels(labels, labels_path, label_names, label_names_path, ids)
    return Dataset(name=name, X=as_float32(X), ids=np.asarray(ids), labels=labels, label_names=label_names)


def _check_labels(labels: np.ndarray, path: str, names: list[str] | None, names_path: str | None, ids) -> np.ndarray:
    """Reject NaN labels and labels without a name; whole-number float labels become integers.

    Negative integer labels mean "unknown" and are kept (shown as unknown, left out of ARI/NMI/purity).
    """
    if labels.ndim != 1:
        raise DataError(f"{path}: labels must be 1-D, got shape {labels.shape} (dataset.labels_path)")
    if np.issubdtype(labels.dtype, np.floating):
        bad = np.flatnonzero(~np.isfinite(labels))
        if bad.size:
            first = ", ".join(str(i) for i in np.asarray(ids)[bad[:5]]) if len(ids) == len(labels) else ""
            raise DataError(
                f"{path}: {bad.size} of {labels.size} labels are NaN or inf (first ids: {first}) "
                "(dataset.labels_path); use -1 for unknown labels"
            )
        if np.all(labels == np.round(labels)):
            labels = labels.astype(np.int64)
    if names is not None and np.issubdtype(labels.dtype, np.integer) and labels.size:
        top = int(labels.max())
        if top >= len(names):
            raise DataError(
                f"{path}: label {top} has no name: {names_path} holds {len(names)} names "
                f"(labels 0..{len(names) - 1}; negative = unknown)"
            )
    return labels


# ---------------------------------------------------------------------------- tables


def table_schema(p: Path) -> dict[str, pl.DataType]:
    """Column names and types, read from the file's schema or header only."""
    lazy = pl.scan_parquet(p) if p.suffix.lower() == ".parquet" else pl.scan_csv(p, infer_schema_length=1000)
    try:
        return dict(lazy.collect_schema())
    except pl.exceptions.PolarsError as exc:
        raise DataError(f"{p}: cannot be read as {p.suffix[1:]} ({exc})") from exc


def read_columns(p: Path, columns: list[str], feature_columns: list[str]) -> pl.DataFrame:
    """Read only ``columns``; feature columns are cast to float32 while reading."""
    lazy = pl.scan_parquet(p) if p.suffix.lower() == ".parquet" else pl.scan_csv(p, infer_schema_length=1000)
    lazy = lazy.select(columns)
    if feature_columns:
        lazy = lazy.with_columns(pl.col(feature_columns).cast(pl.Float32))
    try:
        return lazy.collect()
    except pl.exceptions.PolarsError as exc:
        raise DataError(f"{p}: failed to read columns ({exc})") from exc


def open_table(path: str, columns: dict[str, str | None]) -> tuple[Path, dict[str, pl.DataType]]:
    """Check a parquet/CSV file and that each named column exists; return (path, schema).

    ``columns`` maps the config key (``dataset.id_column``) to the column it names (or None).
    """
    p = check_file(path, TABLE_SUFFIXES)
    schema = table_schema(p)
    for key, column in columns.items():
        require_column(schema, column, key, p)
    if _first_rows(p).height == 0:
        # Checked before column types: a header-only CSV has no values to infer them from.
        raise DataError(f"{p}: 0 rows (the file holds {'only a header' if p.suffix.lower() == '.csv' else 'no rows'})")
    return p, schema


def _first_rows(p: Path) -> pl.DataFrame:
    lazy = pl.scan_parquet(p) if p.suffix.lower() == ".parquet" else pl.scan_csv(p, infer_schema_length=1000)
    try:
        return lazy.head(1).collect()
    except pl.exceptions.PolarsError as exc:
        raise DataError(f"{p}: cannot be read as {p.suffix[1:]} ({exc})") from exc


def as_strings(series: pl.Series) -> np.ndarray:
    """A column as strings, nulls shown as ``(missing)``: labels, categories, metadata."""
    return series.cast(pl.String).fill_null("(missing)").to_numpy()


def ids_and_labels(df: pl.DataFrame, id_column: str | None, label_column: str | None):
    """Row ids (the id column, else 0..n-1) and labels (None without a label column)."""
    ids = df[id_column].to_numpy() if id_column else np.arange(df.height)
    return ids, (as_strings(df[label_column]) if label_column else None)


def require_column(schema: dict, column: str | None, key: str, p: Path) -> None:
    if column is not None and column not in schema:
        seen = ", ".join(list(schema)[:20]) + (" ..." if len(schema) > 20 else "")
        raise DataError(f"{p}: column {column!r} ({key}) not found; columns: {seen}")


def _select_features(
    schema: dict, p: Path, feature_prefix: str | None, feature_columns: list[str] | None
) -> list[str]:
    if feature_columns:
        missing = [c for c in feature_columns if c not in schema]
        if missing:
            raise DataError(f"{p}: feature columns not found: {', '.join(missing[:10])}")
        features = list(feature_columns)
    elif feature_prefix:
        features = [c for c in schema if c.startswith(feature_prefix)]
    else:
        raise ConfigError("set dataset.feature_prefix, dataset.feature_columns or dataset.vector_column")
    if not features:
        seen = ", ".join(list(schema)[:20]) + (" ..." if len(schema) > 20 else "")
        raise DataError(f"{p}: no feature columns match prefix {feature_prefix!r}; columns: {seen}")
    for col in features:
        if not schema[col].is_numeric():
            raise DataError(f"{p}: feature column {col!r} is not numeric (type {schema[col]})")
    return features


def _vectors_from_list_column(series: pl.Series, p: Path, ids: np.ndarray) -> np.ndarray:
    """Stack a list/array column into an (n, d) float32 matrix, rejecting ragged rows."""
    if isinstance(series.dtype, pl.Array):
        return series.cast(pl.Array(pl.Float32, series.dtype.size)).to_numpy()
    if not isinstance(series.dtype, pl.List):
        raise DataError(f"{p}: vector column {series.name!r} is {series.dtype}, expected a list of numbers")
    lengths = series.list.len().fill_null(0).to_numpy()
    if lengths.size and (lengths != lengths[0]).any():
        dim = int(np.bincount(lengths).argmax())
        bad = np.flatnonzero(lengths != dim)
        first = ", ".join(str(i) for i in ids[bad[:5]])
        raise DataError(
            f"{p}: vector column {series.name!r} is ragged: {bad.size} rows differ from length {dim} "
            f"(first ids: {first})"
        )
    dim = int(lengths[0]) if lengths.size else 0
    flat = series.explode().cast(pl.Float32).to_numpy()
    return flat.reshape(len(series), dim)


def load_table(
    path: str,
    id_column: str | None = None,
    feature_prefix: str | None = None,
    feature_columns: list[str] | None = None,
    vector_column: str | None = None,
    label_column: str | None = None,
    text_column: str | None = None,
    metadata_columns: list[str] | None = None,
    name: str = "table",
) -> Dataset:
    """Embeddings stored as columns (``bert_0..``, ``feature_0..``) or one list column of a parquet/CSV."""
    p, schema = open_table(
        path,
        {
            "dataset.id_column": id_column,
            "dataset.label_column": label_column,
            "dataset.text_column": text_column,
            "dataset.vector_column": vector_column,
        },
    )
    metadata_columns = list(metadata_columns or [])
    for column in metadata_columns:
        require_column(schema, column, "dataset.metadata_columns", p)
    features = [] if vector_column else _select_features(schema, p, feature_prefix, feature_columns)
    extra = [c for c in (id_column, label_column, text_column, vector_column, *metadata_columns) if c]
    df = read_columns(p, list(dict.fromkeys(extra + features)), features)
    ids, labels = ids_and_labels(df, id_column, label_column)
    if vector_column:
        X = _vectors_from_list_column(df[vector_column], p, ids)
    else:
        X = df.select(features).to_numpy(order="c")
    texts = df[text_column].cast(pl.String).fill_null("").to_numpy() if text_column else None
    return Dataset(
        name=name,
        X=as_float32(X),
        ids=ids,
        labels=labels,
        texts=texts,
        feature_names=None if vector_column else features,
        metadata={c: as_strings(df[c]) for c in metadata_columns},
    )


def load_tabular(
    path: str,
    numeric_columns: list[str],
    categorical_columns: list[str] | None = None,
    encoding: str = "onehot",
    id_column: str | None = None,
    label_column: str | None = None,
    name: str = "tabular",
) -> Dataset:
    """Numeric plus categorical columns (one-hot or ordinal encoded) as one feature matrix."""
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder

    if encoding not in ("onehot", "ordinal"):
        raise ConfigError(f"dataset.encoding={encoding!r} is not allowed (allowed: onehot, ordinal)")
    p, schema = open_table(path, {"dataset.id_column": id_column, "dataset.label_column": label_column})
    categorical_columns = list(categorical_columns or [])
    if not numeric_columns and not categorical_columns:
        raise ConfigError("dataset.numeric_columns and dataset.categorical_columns are both empty")
    for col in [*numeric_columns, *categorical_columns]:
        require_column(schema, col, "dataset.numeric_columns/categorical_columns", p)
    for col in numeric_columns:
        if not schema[col].is_numeric():
            raise DataError(f"{p}: numeric column {col!r} is not numeric (type {schema[col]})")
    extra = [c for c in (id_column, label_column) if c]
    df = read_columns(p, list(dict.fromkeys(extra + list(numeric_columns) + categorical_columns)), list(numeric_columns))
    parts = [df.select(numeric_columns).to_numpy(order="c")] if numeric_columns else []
    names = list(numeric_columns)
    if categorical_columns:
        cats = df.select(pl.col(categorical_columns).cast(pl.String).fill_null("(missing)")).to_numpy()
        if encoding == "onehot":
            enc = OneHotEncoder(sparse_output=False, dtype=np.float32, handle_unknown="ignore").fit(cats)
        else:
            enc = OrdinalEncoder(dtype=np.float32).fit(cats)
        parts.append(enc.transform(cats))
        names += [str(n) for n in enc.get_feature_names_out(categorical_columns)]
    X = np.hstack(parts) if len(parts) > 1 else parts[0]
    ids, labels = ids_and_labels(df, id_column, label_column)
    return Dataset(name=name, X=as_float32(X), ids=ids, labels=labels, feature_names=names, from_tabular=True)
