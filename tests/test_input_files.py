"""Bad input files: one line naming the file, and no silently wrong results."""

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embclust.data import Dataset, validate_dataset
from embclust.data import loaders
from embclust.data.loaders import load_npy, load_table
from embclust.errors import DataError
from embclust.scoring.metrics import agreement_scores, score_clustering

FAST = ("reducer=none", "analysis.explain.enabled=false")


@pytest.fixture
def emb():
    return np.random.default_rng(0).normal(size=(40, 6)).astype(np.float32)


@pytest.mark.parametrize("name", ["e.npy", "e.csv", "e.parquet"])
def test_zero_byte_file_names_the_path(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"")
    load = load_npy if name.endswith(".npy") else lambda p: load_table(p, feature_prefix="f")
    with pytest.raises(DataError, match=f"^{path} is empty \\(0 bytes\\) \\(dataset.path\\)$"):
        load(str(path))


def test_unreadable_file_names_the_path(tmp_path, emb, monkeypatch):
    path = tmp_path / "e.npy"
    np.save(path, emb)
    if os.geteuid() == 0:  # root reads any file: make the open fail as it does for other users
        def denied(p, flags, *args):
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(loaders.os, "open", denied)
    else:
        path.chmod(0)
    with pytest.raises(DataError, match=f"^{path}: cannot be read \\(Permission denied\\) \\(dataset.path\\)$"):
        load_npy(str(path))


def test_complex_features_are_refused_not_cast(tmp_path, emb):
    # numpy would drop the imaginary parts with a warning, and the run would cluster half the data.
    path = tmp_path / "c.npy"
    np.save(path, emb.astype(np.complex64))
    with pytest.raises(DataError, match="must be real numbers .* got dtype complex64"):
        load_npy(str(path))
    with pytest.raises(DataError, match="must be real numbers"):
        validate_dataset(Dataset(name="c", X=emb.astype(np.complex64), ids=np.arange(len(emb))))


def test_a_folder_or_a_file_that_is_not_npy_is_named_as_such(tmp_path):
    with pytest.raises(DataError, match=f"^{tmp_path} is a folder, not a file \\(dataset.path\\)"):
        load_npy(str(tmp_path))
    junk = tmp_path / "junk.npy"
    junk.write_bytes(os.urandom(400))
    with pytest.raises(DataError, match=f"^{junk}: not a numeric NumPy array .*numpy.save$"):
        load_npy(str(junk))
    objects = tmp_path / "objects.npy"
    np.save(objects, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="not a numeric NumPy array"):
        load_npy(str(objects))


def test_header_only_csv_and_empty_parquet_say_0_rows(tmp_path):
    (tmp_path / "h.csv").write_text("id,f0,f1\n")
    with pytest.raises(DataError, match="h.csv: 0 rows \\(the file holds only a header\\)"):
        load_table(str(tmp_path / "h.csv"), id_column="id", feature_prefix="f")
    pq.write_table(pa.table({"id": pa.array([], pa.int64()), "f0": pa.array([], pa.float32())}), tmp_path / "e.parquet")
    with pytest.raises(DataError, match="e.parquet: 0 rows"):
        load_table(str(tmp_path / "e.parquet"), id_column="id", feature_prefix="f")


def test_nan_labels_fail_at_load_naming_the_file_and_rows(tmp_path, emb):
    np.save(tmp_path / "X.npy", emb)
    labels = (np.arange(40) % 3).astype(float)
    labels[[5, 9]] = np.nan
    np.save(tmp_path / "y.npy", labels)
    with pytest.raises(DataError, match=r"y.npy: 2 of 40 labels are NaN or inf \(first ids: 5, 9\) \(dataset.labels_path\)"):
        load_npy(str(tmp_path / "X.npy"), labels_path=str(tmp_path / "y.npy"))


def test_unknown_labels_are_shown_as_unknown_and_left_out_of_agreement(tmp_path, emb):
    np.save(tmp_path / "X.npy", emb)
    true = np.arange(40) % 2
    true[:10] = -1
    np.save(tmp_path / "y.npy", true)
    (tmp_path / "names.txt").write_text("cat\ndog\n")
    ds = load_npy(str(tmp_path / "X.npy"), labels_path=str(tmp_path / "y.npy"), label_names_path=str(tmp_path / "names.txt"))
    names = ds.label_strings()
    assert names[:10].tolist() == ["unknown"] * 10 and names[10:12].tolist() == ["cat", "dog"]
    # Clusters match the known labels exactly; the unknown rows sit in their own cluster.
    clusters = np.where(true < 0, 2, true)
    scores = agreement_scores(ds.labels, clusters)
    assert scores["purity"] == 1.0 and scores["ari"] == 1.0
    assert score_clustering(np.asarray(ds.X), clusters, ds.labels)["purity"] == 1.0


def test_label_without_a_name_is_refused(tmp_path, emb):
    np.save(tmp_path / "X.npy", emb)
    np.save(tmp_path / "y.npy", np.arange(40) % 3)
    (tmp_path / "names.txt").write_text("cat\ndog\n")
    with pytest.raises(DataError, match="label 2 has no name: .*names.txt holds 2 names"):
        load_npy(str(tmp_path / "X.npy"), labels_path=str(tmp_path / "y.npy"), label_names_path=str(tmp_path / "names.txt"))


def _huge(emb):
    X = emb.copy()
    X[[4, 17]] = 1e25  # finite in float32, but squares overflow
    return X


def test_values_overflowing_float32_are_invalid_rows(emb):
    ds = Dataset(name="big", X=_huge(emb), ids=np.arange(40))
    with pytest.raises(DataError) as info:
        validate_dataset(ds)
    assert "values too large for float32 arithmetic" in str(info.value)
    assert "in 2 of 40 rows (first ids: 4, 17); clean the data or set dataset.on_invalid=drop" in str(info.value)
    kept = validate_dataset(Dataset(name="big", X=_huge(emb), ids=np.arange(40)), on_invalid="drop")
    assert kept.n_samples == 38 and kept.n_dropped_invalid == 2
    # every row too large: said so, not "every row holds NaN or inf"
    with pytest.raises(DataError, match=r"'big': every row holds values too large for float32; nothing left"):
        validate_dataset(Dataset(name="big", X=np.full((5, 3), 1e25, np.float32), ids=np.arange(5)), on_invalid="drop")


def test_cli_overflowing_rows_and_nan_labels_fail_before_clustering(run_cli, tmp_path, emb):
    np.save(tmp_path / "X.npy", _huge(emb))
    res = run_cli(*FAST, "dataset=npy", f"dataset.path={tmp_path / 'X.npy'}", "clusterer.n_clusters=3")
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "values too large for float32 arithmetic" in res.stderr
    # Dropped, the run clusters the other rows instead of finishing with one cluster.
    res = run_cli(*FAST, "dataset=npy", f"dataset.path={tmp_path / 'X.npy'}", "clusterer.n_clusters=3", "dataset.on_invalid=drop")
    assert res.returncode == 0, res.stderr[-2000:]
    run = res.runs()[0]
    assert run.data.metrics["n_clusters"] == 3 and run.data.metrics["data/dropped_invalid_rows"] == 2


def test_values_too_small_for_float32_distances_are_refused_not_clustered_as_duplicates():
    # Rows scaled by 1e-30 clustered into one cluster with silhouette NaN and a warning about
    # duplicate rows, though every row was distinct: their float32 distances were all 0.
    X = np.random.default_rng(0).random((50, 4)).astype(np.float32)
    with pytest.raises(DataError, match=r"'tiny': values too small for float32 arithmetic \(the largest row norm is 1.\d*e-30\)"):
        validate_dataset(Dataset(name="tiny", X=X * np.float32(1e-30), ids=np.arange(50)))
    assert validate_dataset(Dataset(name="small", X=X * np.float32(1e-12), ids=np.arange(50))).n_samples == 50


def test_a_home_relative_path_is_read_from_the_home_folder(run_cli, tmp_path, monkeypatch):
    # 'dataset.path="~/e.npy"' (quoted, as Hydra's grammar needs) was "file not found: ~/e.npy".
    import numpy as np

    home = tmp_path / "home"
    home.mkdir()
    np.save(home / "e.npy", np.random.default_rng(0).normal(size=(60, 4)).astype(np.float32))
    monkeypatch.setenv("HOME", str(home))
    res = run_cli("dataset=npy", 'dataset.path="~/e.npy"', "clusterer.n_clusters=3", "reducer=none",
                  "analysis.explain.enabled=false")
    assert res.returncode == 0, res.stderr[-2000:]
    (run,) = res.runs()
    assert run.data.params["dataset.path"] == str(home / "e.npy")
