"""On-disk cache shared by sweep cells: loaded datasets and fitted preprocessing.

Entries are keyed by a hash of everything that decides their content (dataset config and
file stamps; data fingerprint and preprocessing config), so changed data or config never hit
a stale entry. Each entry is written to a temporary folder and renamed into place under a file
lock, so parallel workers compute it once and never see a half-written entry.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import joblib
import numpy as np

from embclust.data.dataset import Dataset

log = logging.getLogger(__name__)


def stable_hash(obj: Any) -> str:
    """Short hex hash of a JSON-serialisable object, independent of key order."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


def file_stamps(config: dict) -> dict[str, list]:
    """Size and mtime of every existing file named by a ``*path`` key, so edits invalidate."""
    stamps = {}
    for key, value in config.items():
        if key.endswith("path") and isinstance(value, str) and os.path.isfile(value):
            st = os.stat(value)
            stamps[key] = [os.path.abspath(value), st.st_size, st.st_mtime_ns]
    return stamps


@contextmanager
def _locked(lock_path: Path):
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _get_or_create(entry: Path, create: Callable[[Path], None]) -> bool:
    """Make sure ``entry`` exists, calling ``create(tmpdir)`` once if not; True on a hit."""
    if entry.is_dir():
        return True
    with _locked(entry.with_name(entry.name + ".lock")):
        if entry.is_dir():
            return True
        tmp = Path(tempfile.mkdtemp(prefix=entry.name + ".tmp-", dir=entry.parent))
        try:
            create(tmp)
            os.rename(tmp, entry)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return False


def cached_dataset(dataset_config: dict, cache_dir: Path, load: Callable[[], Dataset]) -> tuple[Dataset, bool]:
    """Return the dataset from the cache, loading (and validating) it with ``load`` on a miss."""
    key = stable_hash({"dataset": dataset_config, "files": file_stamps(dataset_config)})
    entry = Path(cache_dir) / "data" / key

    def create(tmp: Path) -> None:
        ds = load()
        np.save(tmp / "X.npy", np.ascontiguousarray(ds.X, dtype=np.float32))
        ids = ds.ids if ds.ids.dtype != object else ds.ids.astype(str)
        np.save(tmp / "ids.npy", ids)
        for field in ("labels", "texts"):
            arr = getattr(ds, field)
            if arr is not None:
                np.save(tmp / f"{field}.npy", arr if arr.dtype != object else arr.astype(str))
        for i, values in enumerate(ds.metadata.values()):
            np.save(tmp / f"metadata_{i}.npy", values if values.dtype != object else values.astype(str))
        meta = {
            "metadata": list(ds.metadata),
            "name": ds.name,
            "fingerprint": ds.fingerprint,
            "label_names": ds.label_names,
            "feature_names": ds.feature_names,
            "n_dropped_invalid": ds.n_dropped_invalid,
            "n_duplicate_ids": ds.n_duplicate_ids,
            "n_dropped_duplicates": ds.n_dropped_duplicates,
            "from_tabular": ds.from_tabular,
        }
        (tmp / "meta.json").write_text(json.dumps(meta))

    hit = _get_or_create(entry, create)
    meta = json.loads((entry / "meta.json").read_text())
    optional = {f: np.load(entry / f"{f}.npy") if (entry / f"{f}.npy").exists() else None for f in ("labels", "texts")}
    ds = Dataset(
        name=meta["name"],
        X=np.load(entry / "X.npy", mmap_mode="r"),
        ids=np.load(entry / "ids.npy"),
        label_names=meta["label_names"],
        feature_names=meta["feature_names"],
        metadata={name: np.load(entry / f"metadata_{i}.npy") for i, name in enumerate(meta["metadata"])},
        n_dropped_invalid=meta["n_dropped_invalid"],
        n_duplicate_ids=meta["n_duplicate_ids"],
        n_dropped_duplicates=meta["n_dropped_duplicates"],
        from_tabular=meta.get("from_tabular", False),
        _fingerprint=meta["fingerprint"],
        **optional,
    )
    return ds, hit


def cached_preprocessing(
    data_fingerprint: str, preprocess_config: dict, cache_dir: Path, fit: Callable[[], tuple[Any, np.ndarray]]
) -> tuple[Any, np.ndarray, bool]:
    """Return ``(fitted pipeline, transformed matrix, hit)``, fitting with ``fit`` on a miss."""
    key = stable_hash({"data": data_fingerprint, "preprocess": preprocess_config})
    entry = Path(cache_dir) / "preprocess" / key

    def create(tmp: Path) -> None:
        pipeline, Xp = fit()
        np.save(tmp / "Xp.npy", np.ascontiguousarray(Xp, dtype=np.float32))
        joblib.dump(pipeline, tmp / "pipeline.joblib")

    hit = _get_or_create(entry, create)
    return joblib.load(entry / "pipeline.joblib"), np.load(entry / "Xp.npy", mmap_mode="r"), hit


def cached_map(
    data_fingerprint: str, preprocess_config: dict, reducer_config: dict, cache_dir: Path, compute: Callable[[], np.ndarray]
) -> tuple[np.ndarray, bool]:
    """Return ``(2-D coordinates, hit)``: the map depends on the data, preprocessing and reducer only,
    so sweep cells that differ in the clusterer share it."""
    key = stable_hash({"data": data_fingerprint, "preprocess": preprocess_config, "reducer": reducer_config})
    entry = Path(cache_dir) / "map" / key

    def create(tmp: Path) -> None:
        np.save(tmp / "coords.npy", np.asarray(compute(), dtype=np.float32))

    hit = _get_or_create(entry, create)
    return np.load(entry / "coords.npy"), hit
