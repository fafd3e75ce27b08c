"""On-disk cache shared by sweep cells: loaded datasets and fitted preprocessing.

Entries are keyed by a hash of everything that decides their content (dataset config and
file stamps; data fingerprint and preprocessing config), so changed data or config never hit
a stale entry. Each entry is written to a temporary folder and renamed into place under a file
lock, so parallel workers compute it once and never see a half-written entry. A worker whose
entry is locked by a stopped process (Ctrl-Z, ``kill -STOP``) computes the value for itself
instead of waiting for it (:mod:`embclust.locks`).

Every entry ends with ``manifest.json``, written last, holding the blake2b checksum of each of
its files; an entry whose manifest is missing or does not match its files (truncated, edited,
half-copied) is rebuilt with a warning naming it. Nothing in the cache is unpickled: arrays are
loaded with ``allow_pickle=False`` and fitted preprocessing is stored as the parameters (JSON)
and fitted arrays (npz) of a fixed list of scikit-learn classes, then rebuilt. Preprocessing
with other steps (UMAP) is not cached and is fitted again by each cell.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
from sklearn.decomposition import PCA
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import Normalizer, StandardScaler

from embclust.data.dataset import Dataset
from embclust.errors import first_line
from embclust.locks import HeldByStoppedProcess, file_lock

log = logging.getLogger(__name__)


def stable_hash(obj: Any) -> str:
    """Short hex hash of a JSON-serialisable object, independent of key order."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


def file_stamps(config: dict) -> dict[str, list]:
    """Size, mtime, ctime and inode of every existing file named by a ``*path`` key (each parquet file of a
    folder or glob), so edits invalidate."""
    from embclust.data.loaders import dataset_files

    stamps = {}
    for key, value in config.items():
        if not (key.endswith("path") and isinstance(value, str)):
            continue
        if "://" in value:  # a URI (s3://...): its files' sizes and times as its filesystem reports them
            stamps[key] = _uri_stamps(value)
            continue
        if os.path.isfile(value):
            files = [value]
        elif os.path.isdir(value) or any(c in value for c in "*?["):
            try:
                files = [str(f) for f in dataset_files(value)]
            except Exception:  # noqa: BLE001 - the loader reports what is wrong with the path
                continue
        else:
            continue
        # ctime too: a file rewritten with its old size and mtime (cp -p, rsync, touch -r) keeps
        # those two, and no tool can set ctime back. A chmod also moves it: a miss, never stale data.
        stamps[key] = [[os.path.abspath(f), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
                       for f, st in ((f, os.stat(f)) for f in files)]
    return stamps


def _uri_stamps(uri: str) -> list:
    import pyarrow.fs as pafs

    from embclust.data.loaders import dataset_files

    try:
        files = [str(f) for f in dataset_files(uri)]
        filesystem, _ = pafs.FileSystem.from_uri(files[0])
        infos = filesystem.get_file_info([pafs.FileSystem.from_uri(f)[1] for f in files])
    except Exception:  # noqa: BLE001 - the loader reports what is wrong with the location
        return []
    return [[f, info.size, None if info.mtime_ns is None else int(info.mtime_ns)] for f, info in zip(files, infos)]


def _locked(entry: Path):
    return file_lock(entry.with_name(entry.name + ".lock"), f"cache entry {entry}")


MANIFEST = "manifest.json"
# Part of a preprocessing entry's key: raised when what a fit stores changes (2: PCA components
# held in C order), so an entry written before is not read as this version's result.
PREPROCESS_FORMAT = 2
_READ_CHUNK = 1 << 22


def _file_hash(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        while chunk := fh.read(_READ_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _write_manifest(folder: Path) -> None:
    """Record the checksum of every file of an entry; written last, so it vouches for complete files."""
    files = {p.name: _file_hash(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST}
    (folder / MANIFEST).write_text(json.dumps({"files": files}))


def entry_problem(entry: Path) -> str | None:
    """Why ``entry`` cannot be used (missing, no manifest, a file missing or changed), or None."""
    if not entry.is_dir():
        return "damaged (a file, not a cache folder)" if entry.exists() or entry.is_symlink() else "missing"
    try:
        files = json.loads((entry / MANIFEST).read_text())["files"]
    except FileNotFoundError:
        return "incomplete (no manifest)"
    except (ValueError, KeyError, TypeError):
        return "damaged (unreadable manifest)"
    for name, digest in files.items():
        path = entry / name
        if not path.is_file() or Path(name).name != name:
            return f"damaged ({name} is missing)"
        if _file_hash(path) != digest:
            return f"damaged ({name} does not match its checksum)"
    return None


def _get_or_create(entry: Path, create: Callable[[Path], None]) -> tuple[Path, bool]:
    """``(folder, hit)``: a verified ``entry``, made by calling ``create(tmpdir)`` once if missing.

    A damaged entry is moved aside and rebuilt, with a warning naming it. When another process
    that is stopped holds the entry's lock, the value is made in a private folder instead (the
    caller reads it and deletes it): waiting would last as long as that process stays stopped.
    """
    if entry_problem(entry) is None:
        return entry, True
    try:
        with _locked(entry):
            problem = entry_problem(entry)
            if problem is None:
                return entry, True
            if problem != "missing":
                log.warning("cache entry %s is %s: rebuilding it", entry, problem)
                _discard(entry)
            _remove_leftovers(entry)
            tmp = _make(entry, create, _TMP)
            try:
                os.rename(tmp, entry)
            except OSError:
                shutil.rmtree(tmp, ignore_errors=True)  # not left beside the entry run after run
                raise
            return entry, False
    except HeldByStoppedProcess as exc:
        log.warning("%s: computing it in this process, without the cache", exc)
        return _make(entry, create, _PRIVATE), False


# Folders beside an entry: ``.tmp-`` and ``.bad-`` are made only by the lock's holder, so one
# found by the next holder was left by a process killed halfway; ``.own-`` are private copies.
_TMP, _TRASH, _PRIVATE = ".tmp-", ".bad-", ".own-"


def _remove_leftovers(entry: Path) -> None:
    """Delete what holders of ``entry``'s lock killed halfway (``kill -9``, power loss) left beside it."""
    for suffix in (_TMP, _TRASH):
        for leftover in entry.parent.glob(f"{entry.name}{suffix}*"):
            shutil.rmtree(leftover, ignore_errors=True)


def _make(entry: Path, create: Callable[[Path], None], suffix: str) -> Path:
    """A new folder beside ``entry`` holding what ``create`` wrote and its manifest."""
    tmp = Path(tempfile.mkdtemp(prefix=entry.name + suffix, dir=entry.parent))
    try:
        create(tmp)
        _write_manifest(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp


def _discard(entry: Path) -> None:
    """Move a damaged entry aside (atomically, so readers never see it half-deleted) and delete it."""
    trash = Path(tempfile.mkdtemp(prefix=entry.name + _TRASH, dir=entry.parent))
    os.rename(entry, trash / "entry")
    shutil.rmtree(trash, ignore_errors=True)


# What reading an entry that passed its checksum may still raise when its files were forged
# with a matching manifest (object arrays, which are refused, or an unexpected layout).
_READ_ERRORS = (ValueError, KeyError, TypeError, OSError)


_NOTHING = object()
_unwritable_warned: set[str] = set()


def _cached(
    entry: Path, compute: Callable[[], Any], write: Callable[[Any, Path], None], read: Callable[[Path], Any]
) -> tuple[Any, bool]:
    """``(value, hit)``: ``read(entry)`` for a verified entry, else ``compute()`` stored by ``write``.

    A cache is an optimisation: where its folder cannot be written (full, read-only, not a
    folder, no permission) the value is computed without it, after one warning naming
    ``cache.dir``. Errors of ``compute`` itself (a missing data file) are raised as they are.
    """
    state = {"computing": False, "value": _NOTHING}

    def create(tmp: Path) -> None:
        state["computing"] = True
        value = compute()
        state["computing"], state["value"] = False, value
        write(value, tmp)

    try:
        return _verified_read(entry, create, read)
    except OSError as exc:
        if state["computing"]:
            raise
        _warn_unwritable(entry.parent.parent, exc)
        value = state["value"]
        return (compute() if value is _NOTHING else value), False


def _warn_unwritable(cache_dir: Path, exc: OSError) -> None:
    key = str(cache_dir)
    if key in _unwritable_warned:
        return
    _unwritable_warned.add(key)
    reason = exc.strerror or first_line(exc)
    where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
    log.warning(
        "cache.dir=%s cannot be written (%s%s): going on without the cache; free some space there or set "
        "cache.dir to a writable folder to share work between runs", cache_dir, reason, where,
    )


def _verified_read(entry: Path, create: Callable[[Path], None], read: Callable[[Path], Any]) -> tuple[Any, bool]:
    """``(read(entry), hit)`` for a verified entry, rebuilding once when it cannot be read."""
    folder, hit = _get_or_create(entry, create)
    try:
        return _read(folder, entry, read), hit
    except _READ_ERRORS as exc:
        log.warning("cache entry %s is damaged (%s): rebuilding it", entry, first_line(exc))
        try:
            with _locked(entry):
                if entry.is_dir():
                    _discard(entry)
        except HeldByStoppedProcess:
            pass  # the rebuild below goes on without the cache too
    folder, hit = _get_or_create(entry, create)
    return _read(folder, entry, read), hit


def _read(folder: Path, entry: Path, read: Callable[[Path], Any]) -> Any:
    """``read(folder)``, deleting ``folder`` afterwards when it is a private one (not ``entry``).

    Arrays read memory-mapped stay readable after their file is deleted.
    """
    try:
        return read(folder)
    finally:
        if folder != entry:
            shutil.rmtree(folder, ignore_errors=True)


def _load(path: Path, mmap: bool = False) -> np.ndarray:
    return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)


def cached_dataset(dataset_config: dict, cache_dir: Path, load: Callable[[], Dataset]) -> tuple[Dataset, bool]:
    """Return the dataset from the cache, loading (and validating) it with ``load`` on a miss."""
    key = stable_hash({"dataset": dataset_config, "files": file_stamps(dataset_config)})
    entry = Path(cache_dir) / "data" / key

    loaded: list = []

    def compute() -> Dataset:
        loaded.append(load())
        return loaded[-1]

    def write(ds: Dataset, tmp: Path) -> None:
        _refuse_large(ds.X, "the dataset")
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

    try:
        return _cached(entry, compute, write, _read_dataset)
    except _Uncached as exc:
        log.info("dataset not cached (%s): loaded in this run", exc)
        return loaded[-1], False


def _refuse_large(X: np.ndarray, what: str) -> None:
    """No copy in the cache of a matrix above ``memory.spill_above_mb``: it is read where it lies."""
    from embclust import blocks

    limit = blocks.spill_above_mb()
    if limit is not None and X.nbytes > limit * 2**20:
        raise _Uncached(f"{what} is {X.nbytes / 2**30:.1f} GB, above memory.spill_above_mb={limit:g}")


def _read_dataset(entry: Path) -> Dataset:
    meta = json.loads((entry / "meta.json").read_text())
    optional = {f: _load(entry / f"{f}.npy") if (entry / f"{f}.npy").exists() else None for f in ("labels", "texts")}
    return Dataset(
        name=meta["name"],
        X=_load(entry / "X.npy", mmap=True),
        ids=_load(entry / "ids.npy"),
        label_names=meta["label_names"],
        feature_names=meta["feature_names"],
        metadata={name: _load(entry / f"metadata_{i}.npy") for i, name in enumerate(meta["metadata"])},
        n_dropped_invalid=meta["n_dropped_invalid"],
        n_duplicate_ids=meta["n_duplicate_ids"],
        n_dropped_duplicates=meta["n_dropped_duplicates"],
        from_tabular=meta.get("from_tabular", False),
        _fingerprint=meta["fingerprint"],
        **optional,
    )


def preprocess_key(data_fingerprint: str, preprocess_config: dict) -> str:
    """The name of the cache entry of ``preprocess_config`` fitted on the data ``data_fingerprint``."""
    return stable_hash({"data": data_fingerprint, "preprocess": preprocess_config, "format": PREPROCESS_FORMAT})


def cached_preprocessing(
    data_fingerprint: str, preprocess_config: dict, cache_dir: Path, fit: Callable[[], tuple[Any, np.ndarray]]
) -> tuple[Any, np.ndarray, bool]:
    """Return ``(fitted pipeline, transformed matrix, hit)``, fitting with ``fit`` on a miss.

    Pipelines with a step that cannot be stored as arrays (UMAP) are fitted and not cached.
    """
    if preprocess_config.get("umap_components") is not None:
        # UMAP is not storable as arrays; fitting it here, outside the lock, lets workers run in parallel.
        log.info("preprocessing with UMAP is not cached: fitted in this run")
        pipeline, Xp = fit()
        return pipeline, Xp, False
    key = preprocess_key(data_fingerprint, preprocess_config)
    entry = Path(cache_dir) / "preprocess" / key
    fitted: list = []

    def compute() -> tuple[Any, np.ndarray]:
        fitted.append(fit())
        return fitted[-1]

    def write(value: tuple[Any, np.ndarray], tmp: Path) -> None:
        pipeline, Xp = value
        try:
            save_pipeline(pipeline, tmp)
        except NotStorable as exc:
            raise _Uncached(str(exc)) from None
        _refuse_large(Xp, "the preprocessed matrix")
        np.save(tmp / "Xp.npy", np.ascontiguousarray(Xp, dtype=np.float32))

    try:
        (pipeline, Xp), hit = _cached(entry, compute, write, lambda e: (load_pipeline(e), _load(e / "Xp.npy", mmap=True)))
    except _Uncached as exc:
        log.info("preprocessing not cached (%s): fitted in this run", exc)
        pipeline, Xp = fitted[-1]
        return pipeline, Xp, False
    return pipeline, Xp, hit


class NotStorable(Exception):
    """A fitted step that cannot be stored as parameters and arrays."""


class _Uncached(Exception):
    """The entry is not cached; the freshly fitted value is used instead."""


# The only classes rebuilt from the cache: plain parameters and arrays, no code.
TRUSTED_STEPS = {cls.__name__: cls for cls in (Normalizer, StandardScaler, PCA)}
_JSON_SCALARS = (bool, int, float, str, type(None))


def save_pipeline(pipeline: Pipeline, folder: Path) -> None:
    """Write a fitted preprocessing Pipeline as ``pipeline.json`` plus ``pipeline.npz`` (no pickle)."""
    steps, arrays = [], {}
    for name, step in pipeline.steps:
        if isinstance(step, str):
            steps.append({"name": name, "passthrough": step})
            continue
        cls = type(step)
        if TRUSTED_STEPS.get(cls.__name__) is not cls:
            raise NotStorable(f"step {name!r} is {cls.__name__}, not one of {', '.join(TRUSTED_STEPS)}")
        params, attrs = step.get_params(deep=False), {}
        for attr, value in vars(step).items():
            if attr in params:
                continue
            if isinstance(value, (np.ndarray, np.generic)) and np.asarray(value).dtype != object:
                arrays[f"{name}.{attr}"] = np.asarray(value)
            elif isinstance(value, _JSON_SCALARS):
                attrs[attr] = value
            else:
                raise NotStorable(f"step {name!r} attribute {attr} is {type(value).__name__}")
        if not all(isinstance(v, _JSON_SCALARS) for v in params.values()):
            raise NotStorable(f"step {name!r} has parameters that are not plain values")
        steps.append({"name": name, "class": cls.__name__, "params": params, "attrs": attrs})
    (folder / "pipeline.json").write_text(json.dumps({"steps": steps}))
    np.savez(folder / "pipeline.npz", **arrays)


def load_pipeline(folder: Path) -> Pipeline:
    """Rebuild a Pipeline written by :func:`save_pipeline`; only :data:`TRUSTED_STEPS` classes."""
    spec = json.loads((folder / "pipeline.json").read_text())
    with np.load(folder / "pipeline.npz", allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    steps = []
    for item in spec["steps"]:
        if "passthrough" in item:
            steps.append((item["name"], item["passthrough"]))
            continue
        if item["class"] not in TRUSTED_STEPS:
            raise ValueError(f"step class {item['class']!r} is not one of {', '.join(TRUSTED_STEPS)}")
        step = TRUSTED_STEPS[item["class"]](**item["params"])
        for attr, value in item["attrs"].items():
            setattr(step, attr, value)
        prefix = item["name"] + "."
        for key, value in arrays.items():
            if key.startswith(prefix):
                setattr(step, key[len(prefix):], value[()] if value.ndim == 0 else value)
        steps.append((item["name"], step))
    return Pipeline(steps)


def cached_map(
    data_fingerprint: str, preprocess_config: dict, reducer_config: dict, cache_dir: Path, compute: Callable[[], np.ndarray]
) -> tuple[np.ndarray, bool]:
    """Return ``(2-D coordinates, hit)``: the map depends on the data, preprocessing and reducer only,
    so sweep cells that differ in the clusterer share it."""
    key = stable_hash({"data": data_fingerprint, "preprocess": preprocess_config, "reducer": reducer_config})
    entry = Path(cache_dir) / "map" / key

    def write(coords: np.ndarray, tmp: Path) -> None:
        np.save(tmp / "coords.npy", np.asarray(coords, dtype=np.float32))

    return _cached(entry, compute, write, lambda e: _load(e / "coords.npy"))
