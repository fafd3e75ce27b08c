import threading

import numpy as np

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


def test_file_stamps_change_when_file_changes(tmp_path):
    f = tmp_path / "x.npy"
    np.save(f, np.zeros(3))
    before = file_stamps({"path": str(f), "other": 1})
    np.save(f, np.zeros(5))
    assert before != file_stamps({"path": str(f), "other": 1})
