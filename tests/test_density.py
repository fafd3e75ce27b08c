"""Density clusterers on embeddings: UMAP before HDBSCAN by default, the noise said, DBCV ranking."""

from __future__ import annotations

import numpy as np
import pytest
from hdbscan import HDBSCAN
from omegaconf import OmegaConf
from sklearn.metrics import normalized_mutual_info_score, silhouette_score

from embclust import preprocess, stages
from embclust.sweep.plan import resolve_metric

QUIET = ("reducer=none", "analysis.explain.enabled=false", "analysis.duplicates.enabled=false")


def embedding_like(n_clusters: int = 20, dim: int = 128, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit rows in clusters that share a common direction, each spread unevenly over the columns
    (as sentence embeddings are): at HDBSCAN's defaults about half of them are called noise."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(40, 100, n_clusters)
    common = rng.normal(size=dim)
    common /= np.linalg.norm(common)
    centres = rng.normal(size=(n_clusters, dim))
    centres = 0.5 * centres / np.linalg.norm(centres, axis=1, keepdims=True) + 0.6 * common
    X = np.vstack([
        centres[i] + rng.normal(size=(sizes[i], dim)) * np.exp(rng.normal(size=dim)) * 0.03 * np.sqrt(384 / dim)
        for i in range(n_clusters)
    ])
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32), np.repeat(np.arange(n_clusters), sizes)


@pytest.mark.parametrize(
    ("value", "target", "dims", "tabular", "expected"),
    [
        ("auto", "hdbscan.HDBSCAN", 384, False, 5),
        ("auto", "sklearn.cluster.DBSCAN", 50, False, 5),
        ("auto", "sklearn.cluster.OPTICS", 64, False, 5),
        ("auto", "hdbscan.HDBSCAN", 16, False, None),  # few columns: density works there as it is
        ("auto", "hdbscan.HDBSCAN", 40, True, None),  # tabular features
        ("auto", "sklearn.cluster.KMeans", 384, False, None),
        (None, "hdbscan.HDBSCAN", 384, False, None),  # an explicit choice stays
        (3, "sklearn.cluster.KMeans", 384, False, 3),
    ],
)
def test_umap_before_clustering_auto_is_five_before_a_density_clusterer_on_embeddings(value, target, dims, tabular, expected):
    resolved, message = preprocess.resolve_umap_components(value, target, dims, tabular)
    assert resolved == expected
    assert (message is not None) == (value == "auto" and expected is not None)
    if message:
        assert "preprocess.umap_components=null" in message and f"{dims}-column" in message


def test_dbcv_falls_where_silhouette_rises_as_more_rows_are_called_noise():
    X, y = embedding_like()
    cells = {}
    for min_samples in (5, 30):
        model = HDBSCAN(min_cluster_size=15, min_samples=min_samples, gen_min_span_tree=True).fit(X)
        labels = model.labels_
        kept = labels >= 0
        cells[min_samples] = {
            "noise": 1 - kept.mean(),
            "silhouette": silhouette_score(X[kept], labels[kept]),
            "dbcv": stages.density_validity(model),
            "nmi": normalized_mutual_info_score(y, labels),
        }
    few, many = cells[5], cells[30]
    assert many["noise"] > few["noise"] + 0.2 and many["nmi"] < few["nmi"]
    assert many["silhouette"] > few["silhouette"]  # silhouette rewards calling rows noise
    assert few["dbcv"] > many["dbcv"]  # DBCV does not
    assert stages.density_validity(HDBSCAN(min_cluster_size=15).fit(X)) is None  # no tree kept


def test_sweep_metric_auto_is_dbcv_for_hdbscan_cells_only():
    hdbscan = OmegaConf.create({"sweep": {"metric": "auto"}, "clusterer": {"_target_": "hdbscan.HDBSCAN", "gen_min_span_tree": True}})
    assert resolve_metric(hdbscan, ["clusterer.min_cluster_size"]) == "dbcv"
    assert resolve_metric(hdbscan, ["clusterer"]) == "silhouette"  # HDBSCAN against KMeans: one scale for both
    assert resolve_metric(hdbscan, ["preprocess.pca_components"]) == "silhouette"  # spaces differ: silhouette_ref
    kmeans = OmegaConf.create({"sweep": {"metric": "auto"}, "clusterer": {"_target_": "sklearn.cluster.KMeans"}})
    assert resolve_metric(kmeans, []) == "silhouette"
    hdbscan.sweep.metric = "davies_bouldin"
    assert resolve_metric(hdbscan, []) == "davies_bouldin"


@pytest.fixture
def embeddings_npy(tmp_path):
    X, y = embedding_like()
    np.save(tmp_path / "emb.npy", X)
    np.save(tmp_path / "labels.npy", y)
    return [f"dataset=npy", f"dataset.path={tmp_path / 'emb.npy'}", f"dataset.labels_path={tmp_path / 'labels.npy'}"]


def test_hdbscan_by_default_reduces_embeddings_with_umap_and_a_noisy_run_says_so(run_cli, embeddings_npy):
    recipe = run_cli(*QUIET, *embeddings_npy, "clusterer=hdbscan")
    assert recipe.returncode == 0, recipe.stderr[-2000:]
    (run,) = recipe.runs()
    assert run.data.tags["umap_before_clustering"] == "5"
    assert "UMAP to 5 dimensions before HDBSCAN on 128-column data" in recipe.stderr
    assert run.data.metrics["noise_fraction"] < 0.2 and run.data.metrics["nmi"] >= 0.75
    assert "high_noise" not in run.data.tags and "dbcv" in run.data.metrics

    raw = run_cli(*QUIET, *embeddings_npy, "clusterer=hdbscan", "preprocess.umap_components=null")
    assert raw.returncode == 0, raw.stderr[-2000:]
    run = next(r for r in raw.runs() if r.info.run_id != run.info.run_id)
    assert run.data.tags["umap_before_clustering"] == "none"
    assert run.data.metrics["noise_fraction"] > 0.3 and float(run.data.tags["high_noise"]) > 0.3
    warning = next(line for line in raw.stderr.splitlines() if "of the rows noise" in line)
    assert "preprocess.umap_components=5" in warning and "clusterer.min_samples" in warning


def test_a_hdbscan_sweep_is_ranked_by_dbcv_not_by_the_silhouette_of_its_noisiest_cell(run_cli, embeddings_npy):
    res = run_cli("-m", *QUIET, *embeddings_npy, "clusterer=hdbscan", "preprocess.umap_components=null",
                  "clusterer.min_samples=5,30")
    assert res.returncode == 0, res.stderr[-2000:]
    runs = res.runs()
    (parent,) = [r for r in runs if r.data.tags.get("sweep_role") == "parent"]
    assert parent.data.tags["sweep.rank_metric"] == "dbcv"
    cells = {r.data.params["clusterer.min_samples"]: r for r in runs if r.data.tags.get("sweep_role") != "parent"}
    assert cells["30"].data.metrics["silhouette"] > cells["5"].data.metrics["silhouette"]
    assert cells["5"].data.metrics["dbcv"] > cells["30"].data.metrics["dbcv"]
    assert "min_samples=5" in parent.data.tags["best_cell"]


def test_a_sweep_of_kmeans_against_hdbscan_is_ranked_in_the_shared_reference_space(run_cli, embeddings_npy):
    # With umap_components=auto the HDBSCAN cells are clustered after UMAP, the KMeans cells not.
    res = run_cli("-m", *QUIET, *embeddings_npy, "clusterer=kmeans,hdbscan")
    assert res.returncode == 0, res.stderr[-2000:]
    (parent,) = [r for r in res.runs() if r.data.tags.get("sweep_role") == "parent"]
    assert parent.data.tags["sweep.rank_metric"] == "silhouette_ref"
    cells = {r.data.tags["umap_before_clustering"] for r in res.runs() if r.data.tags.get("sweep_role") != "parent"}
    assert cells == {"5", "none"}


def test_umap_auto_on_too_few_rows_clusters_the_data_as_it_is(caplog):
    # "preprocess.umap_components=5 needs at least 7 rows" blamed a value the user never set.
    import numpy as np
    from omegaconf import OmegaConf

    from embclust.data.dataset import Dataset
    from embclust.stages import resolve_umap_before_clustering

    cfg = OmegaConf.create({"preprocess": {"umap_components": "auto", "pca_components": None},
                            "clusterer": {"_target_": "hdbscan.HDBSCAN"}})
    ds = Dataset(name="d", X=np.random.default_rng(0).normal(size=(6, 64)).astype(np.float32), ids=np.arange(6))
    with caplog.at_level("INFO"):
        assert resolve_umap_before_clustering(cfg, ds) is None
    assert cfg.preprocess.umap_components is None
    assert "6 rows are too few for UMAP to 5 dimensions; the data is clustered as it is" in caplog.text
    ds = Dataset(name="d", X=np.random.default_rng(0).normal(size=(60, 64)).astype(np.float32), ids=np.arange(60))
    cfg.preprocess.umap_components = "auto"
    assert resolve_umap_before_clustering(cfg, ds) == 5
