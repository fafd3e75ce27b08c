"""scripts/bench_sweep.py: its data looks like embeddings, and its quality yardstick is KMeans inertia."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from sklearn.cluster import KMeans

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_sweep.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_sweep", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("n, d", [(1_500, 32), (5_000, 128)])
def test_embedding_like_data_overlaps_like_real_embeddings(bench, n, d):
    X, labels = bench.make_embedding_like(n, d, seed=42)
    assert X.shape == (n, d) and X.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0, rtol=1e-5)
    # Overlapping clusters, neither separated blobs (> 0.5) nor noise (< 0.05).
    assert 0.1 <= bench.true_label_silhouette(X, labels, seed=42) <= 0.2
    sizes = np.bincount(labels, minlength=40)
    assert sizes.size == 40 and sizes.max() >= 3 * sizes.min()
    # A shared direction: random pairs are positively correlated, as with sentence embeddings.
    assert 0.1 < float((X[: n // 2] * X[n // 2 : 2 * (n // 2)]).sum(axis=1).mean()) < 0.6


def test_embedding_like_data_is_seeded(bench):
    X1, y1 = bench.make_embedding_like(800, 48, seed=3)
    X2, y2 = bench.make_embedding_like(800, 48, seed=3)
    X3, y3 = bench.make_embedding_like(800, 48, seed=4)
    np.testing.assert_array_equal(X1, X2)
    np.testing.assert_array_equal(y1, y2)
    assert not np.allclose(X1, X3) and not np.array_equal(y1, y3)


def test_within_cluster_ss_equals_kmeans_inertia(bench):
    X, _ = bench.make_embedding_like(1_000, 32, seed=0)
    Xp = bench.reduce(X, 10, seed=0)
    km = KMeans(n_clusters=15, n_init=1, random_state=0).fit(Xp)
    assert bench.within_cluster_ss(Xp, km.labels_) == pytest.approx(km.inertia_, rel=1e-4)


def test_compare_reports_a_missing_inertia_as_na(bench, tmp_path):
    X, _ = bench.make_embedding_like(600, 16, seed=1)
    Xp = bench.reduce(X, 5, seed=1)
    km = KMeans(n_clusters=8, n_init=2, random_state=1).fit(Xp)
    np.save(tmp_path / "labels_pca5_k8.npy", km.labels_)
    notebook = {(5, 8): {"inertia": km.inertia_, "silhouette": 0.20}}
    # A sweep cell that logged no inertia and a silhouette 0.005 off (its sample).
    metrics = {"silhouette": 0.205, "calinski_harabasz": 1.0, "davies_bouldin": 1.0}
    cells = {(5, 8): {"metrics": metrics, "ids": np.arange(600), "labels": km.labels_}}
    rows, lines = bench.compare(X, notebook, cells, tmp_path, seed=1)
    assert rows[0]["gap_logged"] is None
    assert rows[0]["gap_labels"] == pytest.approx(0.0, abs=1e-6)
    assert rows[0]["dsil"] == pytest.approx(0.005)
    assert lines[-1].startswith("| 5 | 8 | n/a | +0.000 | 1.000 |")
