import json
import logging
import os
import shutil
import threading

import joblib
import numpy as np
import pytest

from embclust.sweep import cache as cache_module
from embclust.sweep.cache import cached_dataset, cached_preprocessing, file_stamps
from embclust.data import make_synthetic
from embclust.preprocess import build_preprocessing, fit_preprocessing


def test_preprocessing_is_fitted_once_per_key_and_invalidated_by_data_or_config(tmp_path):
    X = make_synthetic(n_samples=500, n_features=16, seed=0).X
    fits = []

    def fit(pca=4):
        def _fit():
            fits.append(pca)
            pipe = build_preprocessing("l2", pca)
            return pipe, fit_preprocessing(pipe, X)

        return _fit

    pipe, Xp, hit = cached_preprocessing("fp1", {"pca_components": 4}, tmp_path, fit())
    assert not hit and Xp.shape == (500, 4)
    pipe2, Xp2, hit2 = cached_preprocessing("fp1", {"pca_components": 4}, tmp_path, fit())
    assert hit2 and len(fits) == 1
    np.testing.assert_array_equal(Xp, Xp2)
    np.testing.assert_allclose(pipe2.transform(X[:5]), Xp[:5], rtol=1e-5)
    cached_preprocessing("fp2", {"pca_components": 4}, tmp_path, fit())  # other data
    cached_preprocessing("fp1", {"pca_components": 6}, tmp_path, fit(6))  # other config
    assert fits == [4, 4, 6]


def test_concurrent_workers_compute_an_entry_once(tmp_path):
    calls = []

    def load():
        calls.append(1)
        return make_synthetic(n_samples=300, n_features=8, seed=1)

    results = []
    threads = [
        threading.Thread(target=lambda: results.append(cached_dataset({"n": 300}, tmp_path, load)))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert sorted(hit for _, hit in results) == [False, True, True, True]
    assert len({ds.fingerprint for ds, _ in results}) == 1
    assert not list((tmp_path / "data").glob("*.tmp-*"))  # no half-written entries left


def test_failed_load_leaves_no_entry(tmp_path):
    def broken():
        raise ValueError("bad file")

    try:
        cached_dataset({"n": 1}, tmp_path, broken)
    except ValueError:
        pass
    assert [p.name for p in (tmp_path / "data").iterdir() if not p.name.endswith(".lock")] == []


def test_leftovers_of_a_killed_writer_are_removed_by_the_next_one(tmp_path):
    from embclust.sweep.cache import preprocess_key

    X = make_synthetic(n_samples=300, n_features=8, seed=0).X
    key = preprocess_key("fp", {"pca_components": 4})
    folder = tmp_path / "preprocess"
    # what `kill -9` leaves while writing this entry or deleting a damaged one, and another
    # key's folder that its writer may still be filling
    for name in (f"{key}.tmp-x1", f"{key}.bad-x2", "otherkey.tmp-x3"):
        (folder / name).mkdir(parents=True)
        (folder / name / "Xp.npy").write_bytes(b"partial")
    fits = []
    _, _, hit = cached_preprocessing("fp", {"pca_components": 4}, tmp_path, _fit_counter(X, fits))
    assert not hit and fits == [4]
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == sorted([key, "otherkey.tmp-x3"])


def test_file_stamps_change_when_file_changes(tmp_path):
    f = tmp_path / "x.npy"
    np.save(f, np.zeros(3))
    before = file_stamps({"path": str(f), "other": 1})
    np.save(f, np.zeros(5))
    assert before != file_stamps({"path": str(f), "other": 1})


def test_file_stamps_change_when_a_file_is_rewritten_with_its_old_size_and_mtime(tmp_path):
    # cp -p, rsync and touch -r keep size and mtime: cached data must not outlive the rewrite.
    f = tmp_path / "x.npy"
    np.save(f, np.zeros(3))
    stat = os.stat(f)
    before = file_stamps({"path": str(f)})
    new = tmp_path / "new.npy"
    np.save(new, np.ones(3))
    os.replace(new, f)
    os.utime(f, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert os.stat(f).st_size == stat.st_size and os.stat(f).st_mtime_ns == stat.st_mtime_ns
    assert before != file_stamps({"path": str(f)})
    same = file_stamps({"path": str(f)})
    assert same == file_stamps({"path": str(f)})  # an untouched file keeps its key


def _fit_counter(X, fits, pca=4, normalize="l2"):
    def _fit():
        fits.append(pca)
        pipe = build_preprocessing(normalize, pca)
        return pipe, fit_preprocessing(pipe, X)

    return _fit


def _entry(tmp_path, kind):
    (entry,) = [p for p in (tmp_path / kind).iterdir() if p.is_dir()]
    return entry


def test_cached_pipeline_is_rebuilt_from_arrays_and_transforms_like_the_fitted_one(tmp_path):
    X = make_synthetic(n_samples=400, n_features=16, seed=0).X
    fits = []
    fitted, Xp, _ = cached_preprocessing("fp", {"normalize": "standard", "pca_components": 5}, tmp_path, _fit_counter(X, fits, 5, "standard"))
    loaded, Xp2, hit = cached_preprocessing("fp", {"normalize": "standard", "pca_components": 5}, tmp_path, _fit_counter(X, fits, 5, "standard"))
    assert hit and fits == [5]
    assert type(loaded.named_steps["normalize"]).__name__ == "StandardScaler"
    np.testing.assert_allclose(loaded.transform(X[:20]), fitted.transform(X[:20]), rtol=1e-6)
    assert {p.name for p in _entry(tmp_path, "preprocess").iterdir()} == {"Xp.npy", "pipeline.json", "pipeline.npz", "manifest.json"}


@pytest.mark.parametrize(
    "damage",
    [
        lambda e: os.truncate(e / "Xp.npy", 200),  # truncated array
        lambda e: (e / "pipeline.npz").write_bytes(b"garbage"),  # corrupt pipeline file
        lambda e: _flip_byte(e / "Xp.npy"),  # one flipped byte, same size
        lambda e: (e / "manifest.json").unlink(),  # never finished writing
        lambda e: (e / "pipeline.json").unlink(),  # a file missing
        # a file where the entry's folder belongs: "cache.dir cannot be written", a part folder left each run
        lambda e: (shutil.rmtree(e), e.write_bytes(b"not a folder")),
    ],
)
def test_damaged_preprocessing_entry_is_rebuilt_with_a_warning(tmp_path, caplog, damage):
    X = make_synthetic(n_samples=300, n_features=16, seed=0).X
    fits = []
    _, Xp, _ = cached_preprocessing("fp", {"pca_components": 4}, tmp_path, _fit_counter(X, fits))
    Xp = np.array(Xp)  # a copy: Xp is a memory map of the file damaged below
    entry = _entry(tmp_path, "preprocess")
    damage(entry)
    with caplog.at_level(logging.WARNING, logger="embclust.sweep.cache"):
        pipe, Xp2, hit = cached_preprocessing("fp", {"pca_components": 4}, tmp_path, _fit_counter(X, fits))
    assert not hit and fits == [4, 4]
    np.testing.assert_array_equal(Xp, Xp2)
    (record,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert f"cache entry {entry}" in record.getMessage() and "rebuilding it" in record.getMessage()
    # The rebuilt entry is used as is next time, and nothing is left beside it.
    assert cached_preprocessing("fp", {"pca_components": 4}, tmp_path, _fit_counter(X, fits))[2] and fits == [4, 4]
    assert sorted(p.name for p in entry.parent.iterdir() if p.name.startswith(entry.name)) == [entry.name,
                                                                                               entry.name + ".lock"]


def _flip_byte(path):
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))


def test_truncated_dataset_array_is_rebuilt_not_loaded(tmp_path, caplog):
    ds = make_synthetic(n_samples=300, n_features=8, seed=1)
    cached_dataset({"n": 300}, tmp_path, lambda: ds)
    entry = _entry(tmp_path, "data")
    os.truncate(entry / "X.npy", 1000)
    with caplog.at_level(logging.WARNING, logger="embclust.sweep.cache"):
        again, hit = cached_dataset({"n": 300}, tmp_path, lambda: ds)
    assert not hit and np.array_equal(np.asarray(again.X), ds.X)
    assert any("X.npy does not match its checksum" in r.getMessage() for r in caplog.records)


class _Payload:
    """Unpickling this creates the marker file: the code an attacker would run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _forge(entry, name, payload):
    """Plant a pickle in an entry and forge a matching manifest, as someone with write access could."""
    np.save(entry / name, np.array([payload, 1], dtype=object), allow_pickle=True)
    manifest = json.loads((entry / "manifest.json").read_text())
    manifest["files"][name] = cache_module._file_hash(entry / name)
    (entry / "manifest.json").write_text(json.dumps(manifest))


def test_planted_pickles_are_never_executed(tmp_path, caplog):
    marker = tmp_path / "pwned"
    X = make_synthetic(n_samples=300, n_features=16, seed=0).X
    fits = []
    _, Xp, _ = cached_preprocessing("fp", {"pca_components": 4}, tmp_path, _fit_counter(X, fits))
    Xp = np.array(Xp)
    entry = _entry(tmp_path, "preprocess")
    joblib.dump(_Payload(marker), entry / "pipeline.joblib")  # the old pickle format: never read
    _forge(entry, "Xp.npy", _Payload(marker))
    with caplog.at_level(logging.WARNING, logger="embclust.sweep.cache"):
        _, Xp2, hit = cached_preprocessing("fp", {"pca_components": 4}, tmp_path, _fit_counter(X, fits))
    assert not marker.exists()
    assert not hit and np.array_equal(Xp, Xp2)
    assert any("damaged" in r.getMessage() for r in caplog.records)

    ds = make_synthetic(n_samples=200, n_features=8, seed=2)
    cached_dataset({"n": 200}, tmp_path, lambda: ds)
    _forge(_entry(tmp_path, "data"), "ids.npy", _Payload(marker))
    again, _ = cached_dataset({"n": 200}, tmp_path, lambda: ds)
    assert not marker.exists() and np.array_equal(again.ids, ds.ids)


def test_umap_preprocessing_is_fitted_and_not_cached(tmp_path):
    X = make_synthetic(n_samples=200, n_features=8, seed=0).X
    calls = []

    def fit():
        calls.append(1)
        pipe = build_preprocessing("l2", None)
        return pipe, fit_preprocessing(pipe, X)

    for _ in range(2):
        _, _, hit = cached_preprocessing("fp", {"umap_components": 5}, tmp_path, fit)
        assert not hit
    assert len(calls) == 2 and not (tmp_path / "preprocess").exists()


@pytest.mark.parametrize("where", ["a_file", "a_file/sub", "read_only/sub"])
def test_an_unwritable_cache_folder_is_skipped_with_one_warning_naming_the_key(tmp_path, where, caplog):
    from omegaconf import OmegaConf

    from embclust import stages

    (tmp_path / "a_file").write_text("x")
    (tmp_path / "read_only").mkdir()
    (tmp_path / "read_only").chmod(0o500)
    cfg = OmegaConf.create({"cache": {"dir": str(tmp_path / where), "enabled": None}})
    try:
        if where.startswith("read_only") and os.access(tmp_path / "read_only", os.W_OK) and os.geteuid() == 0:
            pytest.skip("root writes in read-only folders")
        with caplog.at_level("WARNING", logger="embclust.stages"):
            assert stages.cache_dir(cfg, in_sweep=True) is None  # the run goes on without it
            assert stages.cache_dir(cfg, in_sweep=True) is None
        warnings = [r.getMessage() for r in caplog.records if "cache.dir=" in r.getMessage()]
        assert len(warnings) == 1 and "cannot be written" in warnings[0] and "going on without the cache" in warnings[0]
        assert stages.cache_dir(cfg, in_sweep=False) is None  # off outside sweeps: not checked
    finally:
        (tmp_path / "read_only").chmod(0o700)
    good = OmegaConf.create({"cache": {"dir": str(tmp_path / "cache"), "enabled": True}})
    assert stages.cache_dir(good, in_sweep=False) == tmp_path / "cache" and not list((tmp_path / "cache").iterdir())


def test_a_cache_that_fills_up_midway_is_skipped_and_a_data_error_is_not(tmp_path, monkeypatch, caplog):
    """A full disk while an entry is written (numpy's 'N requested and M written') costs the cache, not the run."""
    monkeypatch.setattr(cache_module, "_unwritable_warned", set())
    ds = make_synthetic(n_samples=60, n_features=4, n_clusters=2, seed=0)
    real_save = np.save

    def full_disk_save(path, *args, **kwargs):
        if str(path).endswith("X.npy"):
            raise OSError("192000 requested and 31712 written")
        return real_save(path, *args, **kwargs)

    monkeypatch.setattr(cache_module.np, "save", full_disk_save)
    with caplog.at_level("WARNING", logger="embclust.sweep.cache"):
        for _ in range(2):
            got, hit = cached_dataset({"name": "s"}, tmp_path / "cache", lambda: ds)
            assert not hit and got is ds
    warnings = [r.getMessage() for r in caplog.records if "cache.dir=" in r.getMessage()]
    assert len(warnings) == 1 and str(tmp_path / "cache") in warnings[0] and "without the cache" in warnings[0]
    assert not [p for p in (tmp_path / "cache" / "data").iterdir() if p.is_dir()]  # no entry, whole or half

    def missing_file():
        raise FileNotFoundError(2, "No such file or directory", "emb.npy")

    with pytest.raises(FileNotFoundError):  # the data's own error is the run's, not the cache's
        cached_dataset({"name": "other"}, tmp_path / "cache", missing_file)
