"""The large-data path: rows in blocks, fits on samples, matrices spilled to a temporary file.

Each test runs on small data with the thresholds lowered, so the same code paths that keep ten
million rows under a few GB run here in seconds, and are compared with the in-memory path.
"""

from __future__ import annotations

import subprocess

import mlflow
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler

from embclust import blocks, preprocess
from embclust.cluster import kmeans, lloyd
from embclust.data.loaders import load_table
from embclust.errors import DataError, PathError
from embclust.explain import tables


def _blobs(n=6000, d=24, k=8, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=3.0, size=(k, d))
    y = rng.integers(0, k, n)
    return (centers[y] + rng.normal(size=(n, d))).astype(np.float32), y


@pytest.fixture
def spill_everything():
    before = blocks.spill_above_mb()
    blocks.set_spill_above_mb(0.001)
    yield
    blocks.set_spill_above_mb(before)


# ------------------------------------------------------------------------------ spilled matrices
def test_a_matrix_above_the_limit_lives_in_an_unnamed_temporary_file(spill_everything):
    M = blocks.scratch_matrix(1000, 50, np.float32, "test rows")
    assert blocks.is_spilled(M)  # file-backed pages, not the process's anonymous memory
    M[:] = 2.0
    assert float(M.sum()) == 2.0 * 1000 * 50


def test_a_matrix_below_the_limit_stays_in_memory():
    assert not blocks.is_spilled(blocks.scratch_matrix(10, 5))


@pytest.mark.skipif(subprocess.run(["id", "-u"], capture_output=True, text=True).stdout.strip() != "0",
                    reason="mounting a small tmpfs needs root")
def test_no_room_for_the_spilled_matrix_is_one_line_naming_tmpdir_and_the_key(tmp_path, monkeypatch, spill_everything):
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        monkeypatch.setenv("TMPDIR", str(small))
        import tempfile

        monkeypatch.setattr(tempfile, "tempdir", None)
        with pytest.raises(PathError) as err:
            blocks.scratch_matrix(10_000, 100, np.float32, "preprocessed rows")
        message = str(err.value)
        assert "\n" not in message and "the disk is full" in message
        assert "TMPDIR" in message and "memory.spill_above_mb" in message and "preprocessed rows" in message
    finally:
        subprocess.run(["umount", str(small)])


def test_preprocessing_spilled_or_in_memory_gives_the_same_rows(spill_everything):
    X, _ = _blobs()
    spilled = preprocess.fit_preprocessing(preprocess.build_preprocessing("l2", pca_components=5, seed=1), X)
    blocks.set_spill_above_mb(None)
    in_memory = preprocess.fit_preprocessing(preprocess.build_preprocessing("l2", pca_components=5, seed=1), X)
    assert blocks.is_spilled(spilled) and not blocks.is_spilled(in_memory)
    np.testing.assert_array_equal(spilled, in_memory)


# ----------------------------------------------------------------------------- fits on samples
def test_standard_scaler_by_blocks_equals_the_fit_on_all_rows():
    X, _ = _blobs(n=20_000)
    X[:, 1] = 7.0  # a constant column: scale 1, as scikit-learn leaves it
    whole = StandardScaler().fit(X)
    blocked = preprocess.fit_scaler_by_blocks(StandardScaler(), X, block_rows=300)  # 67 blocks: two groups merged
    np.testing.assert_allclose(blocked.mean_, whole.mean_, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(blocked.var_, whole.var_, rtol=1e-9)
    np.testing.assert_allclose(blocked.scale_, whole.scale_, rtol=1e-7)
    assert blocked.scale_[1] == 1.0 and blocked.n_samples_seen_ == whole.n_samples_seen_ == 20_000
    np.testing.assert_allclose(blocked.transform(X[:500]), whole.transform(X[:500]), rtol=1e-6, atol=1e-6)


def test_pca_fitted_on_a_sample_above_fit_sample_size_spans_the_same_space():
    X, _ = _blobs(n=20_000, d=30)
    sampled = preprocess.build_preprocessing("standard", pca_components=5, seed=3)
    Xs = preprocess.fit_preprocessing(sampled, X, fit_sample_size=4000, seed=3)
    full = PCA(5, random_state=3).fit(StandardScaler().fit_transform(X))
    # Same subspace: the principal angles between the two 5-d subspaces are all near zero.
    cosines = np.linalg.svd(sampled.named_steps["pca"].components_ @ full.components_.T, compute_uv=False)
    assert cosines.min() > 0.99
    again = preprocess.fit_preprocessing(preprocess.build_preprocessing("standard", pca_components=5, seed=3), X,
                                         fit_sample_size=4000, seed=3)
    np.testing.assert_array_equal(Xs, again)  # seeded: the same sample, the same rows


# ------------------------------------------------------------------- refinement that stops early
def test_refinement_stops_when_a_pass_gains_little_and_stays_near_the_converged_inertia():
    X, _ = _blobs(n=40_000, d=16, k=20, seed=4)
    start = X[np.random.default_rng(0).choice(X.shape[0], 20, replace=False)]
    exact = lloyd.refine(X, start, n_threads=1)
    early = lloyd.refine(X, start, n_threads=1, inertia_tol=1e-3)
    assert early.n_iter < exact.n_iter
    assert early.inertia <= exact.inertia * 1.01
    # Labels and centres agree: each row's label is its nearest centre.
    d = ((X[:, None, :] - early.centers[None]) ** 2).sum(-1)
    assert (d.argmin(1) == early.labels).mean() > 0.999
    inertia = float(((X.astype(np.float64) - early.centers[early.labels]) ** 2).sum())
    assert early.inertia == pytest.approx(inertia, rel=1e-9)


def test_auto_kmeans_with_refine_tol_is_as_good_as_scikit_learn_on_all_rows():
    X, _ = _blobs(n=60_000, d=16, k=12, seed=5)
    auto = KMeans(12, n_init=3, random_state=0)
    kmeans.fit_kmeans(auto, X, "auto", kmeans.SampleSettings(sample_per_cluster=256, min_sample=2000))
    reference = KMeans(12, n_init=3, random_state=0).fit(X)
    assert auto.inertia_ <= reference.inertia_ * 1.005


# -------------------------------------------------------------------- analyses over row blocks
def test_profile_table_by_blocks_matches_the_distances_computed_whole():
    X, y = _blobs(n=3000, d=8, k=5, seed=6)
    labels = y.copy()
    labels[:50] = -1
    table = tables.profile_table(X, labels, np.arange(X.shape[0]), n_nearest=3)
    for _, row in table[table.cluster != -1].iterrows():
        members = np.flatnonzero(labels == row.cluster)
        centroid = X[members].astype(np.float64).mean(0)
        d = np.linalg.norm(X[members].astype(np.float64) - centroid, axis=1)
        assert row["size"] == members.size
        assert row.mean_distance_to_centroid == pytest.approx(d.mean(), rel=1e-9)
        assert row.nearest_members.split(" | ")[0] == str(members[np.argsort(d, kind="stable")[0]])


# ------------------------------------------------------------------------- parquet datasets
@pytest.fixture
def parquet_parts(tmp_path):
    X, y = _blobs(n=3000, d=6)
    folder = tmp_path / "parts"
    folder.mkdir()
    for i, rows in enumerate(np.array_split(np.arange(3000), 3)):
        pq.write_table(pa.table({
            "id": rows, "label": y[rows],
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(X[rows].ravel()), 6),
            **{f"f{j}": X[rows, j] for j in range(6)},
        }), folder / f"part-{i}.parquet")
    (folder / "_SUCCESS").write_text("")  # markers of writers such as Spark are left out
    pq.write_table(pa.table({"id": np.arange(3000), "label": y, **{f"f{j}": X[:, j] for j in range(6)}}), tmp_path / "one.parquet")
    return X, y, folder, tmp_path / "one.parquet"


def test_a_folder_and_a_glob_of_parquet_files_read_as_the_single_file(parquet_parts, spill_everything):
    X, y, folder, one = parquet_parts
    single = load_table(str(one), feature_prefix="f", id_column="id", label_column="label")
    by_folder = load_table(str(folder), vector_column="vector", id_column="id", label_column="label")
    by_glob = load_table(str(folder / "part-*.parquet"), feature_prefix="f", id_column="id", label_column="label")
    for ds in (by_folder, by_glob):
        np.testing.assert_array_equal(ds.X, X)
        np.testing.assert_array_equal(ds.ids, single.ids)
        np.testing.assert_array_equal(ds.labels, single.labels)
    assert blocks.is_spilled(by_folder.X)  # above memory.spill_above_mb: in a temporary file


@pytest.mark.parametrize("make, expected", [
    (lambda f: f.parent / "empty", "holds no .parquet files"),
    (lambda f: f / "nothing-*.parquet", "no file matches this pattern"),
])
def test_a_folder_or_glob_without_parquet_files_is_one_line(parquet_parts, make, expected):
    folder = parquet_parts[2]
    (folder.parent / "empty").mkdir()
    with pytest.raises(DataError, match=expected):
        load_table(str(make(folder)), vector_column="vector")


def test_a_parquet_folder_runs_end_to_end_with_the_rows_spilled(run_cli, parquet_parts, tmp_path):
    _, _, folder, _ = parquet_parts
    common = ("dataset=parquet", f"dataset.path={folder}", "dataset.vector_column=vector", "dataset.id_column=id",
              "dataset.label_column=label", "clusterer.n_clusters=4", "reducer=pca", "analysis.explain.enabled=false")
    spilled = run_cli(*common, "memory.spill_above_mb=0")
    assert spilled.returncode == 0, spilled.stderr[-2000:]
    assert "kept in a temporary file" in spilled.stderr
    in_memory = run_cli(*common, "memory.spill_above_mb=null")
    assert in_memory.returncode == 0, in_memory.stderr[-2000:]
    runs = sorted(in_memory.runs(), key=lambda r: r.info.start_time)
    assert len(runs) == 2
    a, b = (r.data.metrics for r in runs)
    for key in ("silhouette", "calinski_harabasz", "davies_bouldin", "inertia"):
        assert a[key] == b[key], key
    labels = [pq.read_table(mlflow.artifacts.download_artifacts(run_id=r.info.run_id, artifact_path="labels.parquet",
                                                                dst_path=str(tmp_path / r.info.run_id))) for r in runs]
    assert labels[0].num_rows == 3000 and labels[0].equals(labels[1])


# ------------------------------------------------------------ clusterers that need every row
def test_a_clusterer_that_holds_every_row_is_refused_up_front_naming_the_sample_key():
    from omegaconf import OmegaConf

    from embclust.errors import ConfigError
    from embclust.validate import check_in_memory_clusterer

    cfg = OmegaConf.create({"clusterer": {"_target_": "hdbscan.HDBSCAN"}})
    check_in_memory_clusterer(cfg, 100_000, 50, memory_bytes=24 * 2**30)  # 80 MB: fine
    with pytest.raises(ConfigError) as err:
        check_in_memory_clusterer(cfg, 10_000_000, 384, memory_bytes=24 * 2**30)
    message = str(err.value)
    assert "dataset.sample_size=" in message and "10000000 rows" in message and "clusterer=kmeans" in message
    rows = int(message.split("dataset.sample_size=")[1].split()[0])
    check_in_memory_clusterer(cfg, rows, 384, memory_bytes=24 * 2**30)  # the size it names is accepted
    kmeans_cfg = OmegaConf.create({"clusterer": {"_target_": "sklearn.cluster.KMeans"}})
    check_in_memory_clusterer(kmeans_cfg, 10_000_000, 384, memory_bytes=24 * 2**30)  # streams: no limit


# ------------------------------------------------------------------ true labels without strings
@pytest.mark.parametrize("labels, names", [
    (np.array([3, 10, 2, -1, 10, 3, -2, 2]), None),
    (np.array([0, 2, 1, -1, 2, 0]), ["b", "a", "c"]),
    (np.array(["x", "y", "x", "z"], dtype=object), None),
])
def test_label_codes_name_the_same_classes_as_a_string_per_row(labels, names):
    from embclust.data.dataset import Dataset

    ds = Dataset("t", np.zeros((labels.size, 2), np.float32), np.arange(labels.size), labels, names)
    classes, codes = ds.label_codes()
    expected_classes, expected_codes = np.unique(ds.label_strings(), return_inverse=True)
    np.testing.assert_array_equal(classes, expected_classes)
    np.testing.assert_array_equal(codes, expected_codes)
    clusters = np.arange(labels.size) % 3
    by_codes, purity = tables.composition_table(clusters, codes=(classes, codes))
    by_strings, purity_strings = tables.composition_table(clusters, ds.label_strings())
    assert by_codes.equals(by_strings) and purity == purity_strings


def test_a_long_pass_reports_rows_done_on_stderr(caplog, monkeypatch):
    import logging

    monkeypatch.setattr(blocks, "PROGRESS_ROWS", 1000)
    monkeypatch.setattr(blocks, "PROGRESS_SECONDS", 0.0)
    X, _ = _blobs(n=5000, d=4)
    with caplog.at_level(logging.INFO, logger="embclust.blocks"):
        lloyd.assign(X, X[:3], n_threads=2, block_rows=1000)
    lines = [r.getMessage() for r in caplog.records if "rows assigned" in r.getMessage()]
    assert lines and lines[0].startswith("kmeans: rows assigned: 1000 / 5000 rows")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="embclust.blocks"):
        lloyd.assign(X[:900], X[:3], n_threads=1, block_rows=100)  # below PROGRESS_ROWS: silent
    assert not caplog.records


def test_umap_before_clustering_above_fit_sample_size_is_fitted_on_the_sample_and_places_the_rest():
    X, y = _blobs(n=3000, d=20, k=4, seed=8)
    pipeline = preprocess.build_preprocessing("l2", pca_components=10, umap_components=3, seed=0)
    Xu = preprocess.fit_preprocessing(pipeline, X, fit_sample_size=800, seed=0)
    assert Xu.shape == (3000, 3) and np.isfinite(Xu).all()
    rows = np.sort(np.random.default_rng(0).choice(3000, size=800, replace=False))
    np.testing.assert_array_equal(Xu[rows], pipeline.named_steps["umap"].embedding_)  # the sample keeps its fit
    assert pipeline.named_steps["pca"].n_samples_ == 800
    # The placed rows land with their own blob: KMeans on the reduced rows recovers the blobs.
    from sklearn.metrics import adjusted_rand_score

    assert adjusted_rand_score(y, KMeans(4, n_init=3, random_state=0).fit_predict(Xu)) > 0.9


def test_dedupe_on_more_rows_than_memory_holds_is_refused_up_front_naming_the_sample_key(tmp_path):
    import os

    from embclust import data, stages
    from embclust.errors import ConfigError

    memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    rows = int(memory / 2 / (3 * 4 * 384)) + 1000  # just above the bound; a sparse file, nothing written
    X = np.lib.format.open_memmap(tmp_path / "big.npy", mode="w+", dtype=np.float32, shape=(rows, 384))
    with pytest.raises(ConfigError) as err:
        stages.drop_near_duplicates(data.Dataset("big", X, np.arange(rows)), 0.98, 0)
    suggested = int(str(err.value).split("dataset.sample_size=")[1].split()[0])
    assert f"on {rows} rows" in str(err.value) and "dataset.dedupe=false" in str(err.value)
    assert suggested < rows
