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


@pytest.mark.parametrize("override", ["clusterer=hdbscan", "cluster_implementation=scikit-learn", "engine=spark"])
def test_engine_ray_refuses_what_it_cannot_run_before_loading(run_cli, override):
    res = run_cli("engine=ray" if override != "engine=spark" else "engine=spark", override, "dataset.path=missing.npy",
                  "dataset=npy")
    assert res.returncode != 0
    line = res.stderr.strip().splitlines()[-1]
    assert ("engine=" in line) and "Traceback" not in res.stderr
