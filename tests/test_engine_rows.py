"""Rows that Ray workers read themselves: the same float32 rows the loaders give."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.decomposition import PCA
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import Normalizer

from embclust import preprocess
from embclust.data.loaders import load_npy, load_table
from embclust.engine.rows import TransformedRows


def test_a_parquet_folder_with_an_empty_file_reads_every_range_as_the_loader_does(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "parts"
    folder.mkdir()
    sizes = [5, 0, 7, 3]
    for i, n in enumerate(sizes):
        vectors = rng.normal(size=(n, 4))  # float64 lists: cast to float32 as the loader does
        table = pa.table({"v": pa.array(list(vectors), type=pa.list_(pa.float64()))})
        pq.write_table(table, folder / f"part-{i}.parquet", row_group_size=2)
    ds = load_table(str(folder), vector_column="v")
    X = np.asarray(ds.X)
    assert ds.source is not None and ds.source.n_rows == X.shape[0] == sum(sizes)
    for start in range(0, X.shape[0]):
        for stop in range(start + 1, X.shape[0] + 1):
            np.testing.assert_array_equal(ds.source.read(start, stop), X[start:stop])


def test_npy_rows_preprocessed_on_a_worker_equal_the_local_preprocessed_rows(tmp_path):
    rng = np.random.default_rng(1)
    np.save(tmp_path / "x.npy", rng.normal(size=(10_000, 12)))  # float64 on disk
    ds = load_npy(str(tmp_path / "x.npy"))
    pipeline = Pipeline([("normalize", Normalizer()), ("pca", PCA(5, random_state=0))]).fit(np.asarray(ds.X))
    local = preprocess.transform_by_blocks(pipeline, ds.X, 5)
    rows = TransformedRows(ds.source, pipeline, 5)
    for start, stop in [(0, 10_000), (4_096, 8_192), (8_192, 10_000), (100, 5_000)]:
        if start % 4_096 == 0:  # a worker reads whole groups, which start on the pieces' boundaries
            np.testing.assert_array_equal(rows.read(start, stop), local[start:stop])
        else:
            np.testing.assert_allclose(rows.read(start, stop), local[start:stop], rtol=1e-5, atol=1e-6)


def test_rows_that_were_dropped_or_sampled_have_no_source(tmp_path):
    from embclust.data.dataset import subsample

    np.save(tmp_path / "x.npy", np.random.default_rng(2).normal(size=(100, 3)).astype(np.float32))
    ds = load_npy(str(tmp_path / "x.npy"))
    assert ds.source is not None
    assert subsample(ds, 50, seed=0).source is None


@pytest.mark.parametrize("override", ["clusterer=hdbscan", "cluster_implementation=scikit-learn", "engine=spark",
                                      "dataset.ids_path=ids.npz"])
def test_engine_ray_refuses_what_it_cannot_run_before_loading(run_cli, override):
    res = run_cli("engine=ray" if override != "engine=spark" else "engine=spark", override, "dataset.path=missing.npy",
                  "dataset=npy")
    assert res.returncode != 0
    line = res.stderr.strip().splitlines()[-1]
    assert ("engine=" in line) and "Traceback" not in res.stderr
    if override.endswith(".npz"):
        assert "save the ids with numpy.save as a .npy" in line
    if override.startswith("cluster_implementation"):  # it named clusterer._target_=KMeans as the fault
        assert "this run has cluster_implementation=scikit-learn" in line


class _InProcessRows:
    """A remote row set run in this process: groups read from the source, as a Ray task reads them."""

    def __init__(self, source, labels_sink=None):
        self.source, self.labels_sink = source, labels_sink
        self.shape, self.dtype = source.shape, np.dtype(np.float32)

    def map_groups(self, block_fn, fold, block_rows, group_blocks, progress=None):
        n, group_rows = self.shape[0], block_rows * group_blocks
        out = []
        for start in range(0, n, group_rows):
            stop = min(n, start + group_rows)
            X = self.source.read(start, stop)
            out.append(fold([block_fn(slice(a, min(stop, a + block_rows)), X[a - start : min(stop, a + block_rows) - start])
                             for a in range(start, stop, block_rows)]))
        return out


def _rows_with_ids(tmp_path, n=9_000, d=4):
    rng = np.random.default_rng(7)
    X = (rng.normal(scale=5.0, size=(3, d))[rng.integers(0, 3, n)] + rng.normal(size=(n, d))).astype(np.float32)
    ids = np.array([f"doc-{i}" for i in range(n)])
    pq.write_table(pa.table({"doc": ids, "v": pa.array(list(X), type=pa.list_(pa.float32()))}), tmp_path / "rows.parquet",
                   row_group_size=1_000)
    ds = load_table(str(tmp_path / "rows.parquet"), vector_column="v", id_column="doc")
    return ds, X, ids


def test_refinement_passes_over_a_view_move_an_empty_cluster_as_over_the_array(tmp_path, monkeypatch):
    # A start with one centre twice: the copy is left empty and takes the farthest row, read from
    # the view as from the array, with the same labels, centres and inertia.
    from embclust.cluster import lloyd
    from embclust.engine.rows import LocalRows

    moved = []
    relocate = lloyd._relocate_empty
    monkeypatch.setattr(lloyd, "_relocate_empty", lambda *a: moved.append(1) or relocate(*a))
    ds, X, _ = _rows_with_ids(tmp_path)
    start = X[[0, 0, 1]]
    local = lloyd.refine(X, start, n_threads=2, block_rows=1_000)
    viewed = lloyd.refine(LocalRows(ds.source), start, n_threads=2, block_rows=1_000)
    assert len(moved) == 2  # once in each refinement
    np.testing.assert_array_equal(viewed.labels, local.labels)
    np.testing.assert_array_equal(viewed.centers, local.centers)
    assert viewed.inertia == local.inertia
    assert np.unique(local.labels).size == 3


@pytest.mark.parametrize("direct", [True, False])
def test_the_last_pass_writes_ids_labels_and_distances_one_part_per_group(tmp_path, direct):
    import pandas as pd

    from embclust.cluster import lloyd
    from embclust.engine.labels import LabelsSink

    ds, X, ids = _rows_with_ids(tmp_path)
    folder = tmp_path / "artifacts" / "labels"
    sink = LabelsSink(ds.source, str(folder) if direct else None, "test")
    rows = _InProcessRows(ds.source, sink)
    centers = X[[0, 1, 2]].copy()
    labels, total = lloyd.assign_with_inertia(rows, centers, 1, block_rows=1_000)
    # the same labels and inertia as the pass over the array in memory
    local_labels, local_total = lloyd.assign_with_inertia(X, centers, 1, block_rows=1_000)
    np.testing.assert_array_equal(labels, local_labels)
    assert total == local_total
    assert [part[0] for part in sink.parts] == ["part-000000000000.parquet"]  # 9,000 rows: one group of 64 blocks
    if not direct:
        assert not folder.exists()
        sink.save_returned(tmp_path / "artifacts")
    assert sink.size() == sum(p.stat().st_size for p in folder.glob("part-*.parquet")) > 0
    written = pd.read_parquet(folder)
    assert list(written.columns) == ["id", "cluster", "distance"]
    np.testing.assert_array_equal(written["id"].to_numpy(), ids)
    np.testing.assert_array_equal(written["cluster"].to_numpy(), labels)
    np.testing.assert_allclose(written["distance"], np.linalg.norm(X - centers[labels], axis=1), rtol=1e-5)
    assert not list(folder.glob(".*.tmp"))  # written under a temporary name, then renamed


def test_parts_name_their_first_row_so_they_read_back_in_row_order(tmp_path):
    import pandas as pd

    from embclust.cluster import lloyd
    from embclust.engine.labels import LabelsSink

    ds, X, ids = _rows_with_ids(tmp_path, n=20_000)
    sink = LabelsSink(ds.source, str(tmp_path / "labels"), "test")
    labels, _ = lloyd.assign_with_inertia(_InProcessRows(ds.source, sink), X[[0, 1, 2]].copy(), 1, block_rows=100)
    assert [part[0] for part in sink.parts] == [f"part-{start:012d}.parquet" for start in range(0, 20_000, 6_400)]
    written = pd.read_parquet(tmp_path / "labels")
    np.testing.assert_array_equal(written["id"].to_numpy(), ids)
    np.testing.assert_array_equal(written["cluster"].to_numpy(), labels)


def test_npy_ids_are_read_where_the_rows_are(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((50, 2), dtype=np.float32))
    np.save(tmp_path / "ids.npy", np.arange(1000, 1050))
    ds = load_npy(str(tmp_path / "x.npy"), ids_path=str(tmp_path / "ids.npy"))
    np.testing.assert_array_equal(ds.source.read_ids(10, 20), np.asarray(ds.ids)[10:20])
    assert load_npy(str(tmp_path / "x.npy")).source.read_ids(3, 5).tolist() == [3, 4]


@pytest.mark.parametrize("uri, here, direct", [
    ("/srv/mlruns/1/abc/artifacts", True, True),
    ("file:///srv/mlruns/1/abc/artifacts", True, True),
    ("/srv/mlruns/1/abc/artifacts", False, False),  # workers on other machines: their disks, not the driver's
    ("s3://bucket/mlruns/1/abc/artifacts", True, False),  # the workers may hold no credentials: through MLflow
    ("mlflow-artifacts:/1/abc/artifacts", True, False),
    ("http://tracking:5000/api/2.0/mlflow-artifacts/artifacts/1/abc", True, False),
])
def test_workers_write_the_artifact_folder_only_where_the_driver_sees_what_they_write(uri, here, direct):
    from embclust.engine.labels import writable_folder

    folder, how = writable_folder(uri, here)
    if direct:
        assert folder == "/srv/mlruns/1/abc/artifacts/labels" and how == "written by the Ray workers into the run's artifact folder"
    else:
        assert folder is None and how.startswith("written by the driver from the parts the Ray workers sent back")


def test_a_killed_writer_s_temporary_file_is_removed_when_the_parts_are_collected(tmp_path):
    from embclust.engine.labels import LabelsSink

    folder = tmp_path / "labels"
    folder.mkdir()
    (folder / ".part-000000000000.parquet.0123.tmp").write_bytes(b"half")
    sink = LabelsSink(None, str(folder), "test")
    sink.collect([("part-000000000000.parquet", None, 10)])
    assert not list(folder.iterdir()) and sink.size() == 10


def test_ch_and_db_over_remote_rows_label_each_block_again_and_give_the_local_bits(tmp_path):
    from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score

    from embclust.cluster import lloyd
    from embclust.scoring.metrics import ClusterStats

    ds, X, _ = _rows_with_ids(tmp_path, n=600_000, d=6)  # two groups of 64 blocks
    centers = X[[0, 1, 2, 3]].copy()
    labels = lloyd.assign(X, centers, 1)
    local = ClusterStats(X, labels, ignore_noise=True)
    remote = ClusterStats(X, labels, ignore_noise=True, passes=_InProcessRows(ds.source),
                          block_labels=lloyd.NearestCentre(centers))
    assert remote.calinski_harabasz() == local.calinski_harabasz()
    assert remote.davies_bouldin() == local.davies_bouldin()
    assert local.calinski_harabasz() == pytest.approx(calinski_harabasz_score(X, labels), rel=1e-9)
    assert local.davies_bouldin() == pytest.approx(davies_bouldin_score(X, labels), rel=1e-6)  # scikit-learn: float32 distances
    # labels given again that are not the run's labels are an error, not other scores
    with pytest.raises(RuntimeError, match="differ from the run's labels"):
        ClusterStats(X, labels, passes=_InProcessRows(ds.source), block_labels=lloyd.NearestCentre(X[[5, 6, 7, 8]]))


def _file_and_view(tmp_path, n=20_000, d=6, seed=4):
    """A float64 .npy (cast to float32 as the loader does), loaded in memory and as engine=ray's view."""
    rng = np.random.default_rng(seed)
    np.save(tmp_path / "x.npy", rng.normal(size=(n, d)) * rng.uniform(0.5, 3.0, size=d))
    return load_npy(str(tmp_path / "x.npy")), load_npy(str(tmp_path / "x.npy"), rows_on_driver=False)


def test_the_view_of_rows_left_in_their_files_indexes_as_the_matrix_does(tmp_path):
    """engine=ray's driver sees rows through a view: every way the steps index a matrix gives the same rows."""
    from embclust.engine.rows import RowsView

    local, view = _file_and_view(tmp_path)
    X, V = np.asarray(local.X), view.X
    assert isinstance(V, RowsView) and V.shape == X.shape and len(V) == X.shape[0] and V.dtype == np.float32
    rng = np.random.default_rng(0)
    sample = np.sort(rng.choice(X.shape[0], 3_000, replace=False))
    shuffled_with_repeats = rng.integers(0, X.shape[0], 500)
    mask = rng.random(X.shape[0]) < 0.1
    for key in (sample, shuffled_with_repeats, mask, np.array([-1, 0, 5]), slice(100, 9_000), slice(None, None, 7),
                slice(19_990, None), (sample, 2), (slice(0, 50), slice(1, 3))):
        np.testing.assert_array_equal(V[key], X[key], err_msg=str(key)[:40])
    np.testing.assert_array_equal(V[-3], X[-3])
    assert V[np.array([], dtype=np.int64)].shape == (0, X.shape[1])
    with pytest.raises(IndexError):
        V[np.array([X.shape[0]])]
    reads = V.rows_read_here
    V[sample]  # a sample of thousands of rows comes from a pass, not read row by row here
    assert V.rows_read_here == reads


def test_the_view_through_the_preprocessing_holds_the_bits_of_the_local_preprocessed_matrix(tmp_path):
    local, view = _file_and_view(tmp_path, n=13_000)
    pipeline = Pipeline([("normalize", Normalizer()), ("pca", PCA(4, random_state=0))]).fit(np.asarray(local.X)[:5_000])
    Xp = preprocess.transform_by_blocks(pipeline, local.X, 4)
    Vp = preprocess.transform_by_blocks(pipeline, view.X, 4)
    assert Vp.shape == Xp.shape and not isinstance(Vp, np.ndarray)
    rows = np.sort(np.random.default_rng(1).choice(13_000, 2_000, replace=False))
    np.testing.assert_array_equal(Vp[rows], Xp[rows])
    for key in (slice(100, 5_000), slice(4_095, 4_097), np.array([3, 9_000, 12_999]), 8_191):
        np.testing.assert_array_equal(Vp[key], Xp[key])  # unaligned slices and single rows too: whole pieces read


def test_fingerprint_and_validation_of_the_view_match_the_matrix(tmp_path):
    from embclust.data import fingerprint_array, validate_dataset
    from embclust.errors import DataError

    local, view = _file_and_view(tmp_path, n=70_000, d=3)
    assert fingerprint_array(view.X) == fingerprint_array(local.X) == local.fingerprint
    X = np.load(tmp_path / "x.npy")
    X[[12, 65_000]] = np.nan
    np.save(tmp_path / "x.npy", X)
    local, view = load_npy(str(tmp_path / "x.npy")), load_npy(str(tmp_path / "x.npy"), rows_on_driver=False)
    messages = []
    for ds in (local, view):
        with pytest.raises(DataError) as err:
            validate_dataset(ds)
        messages.append(str(err.value))
    assert messages[0] == messages[1] and "NaN or inf in 2 of 70000 rows (first ids: 12, 65000)" in messages[0]
    with pytest.raises(DataError, match="engine=ray clusters every row of the files"):
        validate_dataset(view, on_invalid="drop")
    assert validate_dataset(local, on_invalid="drop").n_samples == 69_998


def test_a_parquet_folder_left_in_its_files_reads_only_ids_and_labels_here(tmp_path):
    rng = np.random.default_rng(5)
    folder = tmp_path / "parts"
    folder.mkdir()
    X = rng.normal(size=(3_000, 5)).astype(np.float32)
    for i in range(3):
        part = slice(i * 1_000, (i + 1) * 1_000)
        pq.write_table(pa.table({"doc": [f"d{j}" for j in range(part.start, part.stop)], "topic": rng.integers(0, 4, 1_000),
                                 "v": pa.array(list(X[part]), type=pa.list_(pa.float32()))}), folder / f"p{i}.parquet")
    kwargs = dict(vector_column="v", id_column="doc", label_column="topic")
    local = load_table(str(folder), **kwargs)
    view = load_table(str(folder), rows_on_driver=False, **kwargs)
    single = load_table(str(folder / "p1.parquet"), rows_on_driver=False, **kwargs)
    assert not isinstance(view.X, np.ndarray) and not isinstance(single.X, np.ndarray) and single.n_samples == 1_000
    np.testing.assert_array_equal(view.ids, local.ids)
    np.testing.assert_array_equal(view.labels, local.labels)
    np.testing.assert_array_equal(view.X[np.arange(3_000)], X)
    np.testing.assert_array_equal(single.X[np.arange(1_000)], X[1_000:2_000])
    assert view.fingerprint == local.fingerprint


def test_a_map_placed_by_a_pass_over_the_view_matches_the_local_map(tmp_path):
    from embclust.maps import compute_map

    local, view = _file_and_view(tmp_path, n=30_000)
    coords = {name: compute_map(PCA(2, random_state=0), ds.X, max_points=2_000, seed=3) for name, ds in
              (("local", local), ("view", view))}
    assert np.isfinite(coords["view"]).all()
    np.testing.assert_allclose(coords["view"], coords["local"], rtol=1e-4, atol=1e-4)


def test_parquet_at_a_uri_loads_as_the_same_files_on_disk(tmp_path):
    """``file://`` goes through pyarrow's filesystem layer, as ``s3://`` or ``gs://`` do."""
    from embclust.errors import DataError

    rng = np.random.default_rng(6)
    (tmp_path / "parts" / "more").mkdir(parents=True)
    (tmp_path / "parts" / "_tmp").mkdir()
    X = rng.normal(size=(900, 3)).astype(np.float32)
    for i, name in enumerate(["a.parquet", "b.parquet", "more/c.parquet"]):
        pq.write_table(pa.table({"v": pa.array(list(X[i * 300 : (i + 1) * 300]), type=pa.list_(pa.float32()))}),
                       tmp_path / "parts" / name)
    pq.write_table(pa.table({"v": pa.array([[9.0, 9.0, 9.0]], type=pa.list_(pa.float32()))}), tmp_path / "parts" / "_tmp" / "x.parquet")
    uri = (tmp_path / "parts").as_uri()
    on_disk = load_table(str(tmp_path / "parts"), vector_column="v")
    for engine_ray in (False, True):
        ds = load_table(uri + "/", vector_column="v", rows_on_driver=not engine_ray)
        np.testing.assert_array_equal(ds.X[np.arange(900)] if engine_ray else ds.X, X)
        assert ds.fingerprint == on_disk.fingerprint and ds.source.files[0].startswith("file://")
    globbed = load_table(uri + "/*.parquet", vector_column="v")
    np.testing.assert_array_equal(globbed.X, X[:600])
    with pytest.raises(DataError, match="not found: file://"):
        load_table(uri + "/missing", vector_column="v")
    with pytest.raises(DataError, match=r"no \.parquet file there"):
        load_table(uri + "/*.json", vector_column="v")
    with pytest.raises(DataError, match="only parquet data is read from a URI"):
        load_npy("s3://bucket/x.npy")
    with pytest.raises(DataError, match="only parquet data is read from a URI"):
        load_table("s3://bucket/x.csv")
