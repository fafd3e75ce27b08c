"""Run names say what distinguishes a run, short enough for MLflow's runs list."""

from omegaconf import OmegaConf

from embclust.pipeline import run_name
from embclust.sweep.plan import SweepPlan, short_override


def _cfg(dataset, clusterer, preprocess=None):
    return OmegaConf.create({"dataset": dataset, "clusterer": clusterer, "preprocess": preprocess or {}})


def test_a_file_dataset_is_named_by_its_file_not_its_loader():
    kmeans = {"_target_": "sklearn.cluster.KMeans", "n_clusters": 30}
    assert run_name(_cfg({"name": "npy", "path": "/data/products/bert.npy"}, kmeans, {"pca_components": 50})) == "bert KMeans-30 pca50"
    assert run_name(_cfg({"name": "npy", "path": "/data/queries/clip.npy"}, kmeans)) == "clip KMeans-30"
    assert run_name(_cfg({"name": "parquet", "path": "/data/chunks/"}, {"_target_": "hdbscan.HDBSCAN", "min_cluster_size": 10},
                         {"umap_components": 5})) == "chunks HDBSCAN-10 umap5"
    assert run_name(_cfg({"name": "digits"}, {"_target_": "sklearn.cluster.KMeans", "n_clusters": 10})) == "digits KMeans-10"
    assert run_name(OmegaConf.create({"run_name": "mine", **_cfg({"name": "digits"}, kmeans)})) == "mine"


def test_sweep_cells_show_a_swept_path_by_its_file_name():
    plan = SweepPlan("parent", "0", swept_keys=["dataset.path", "clusterer.n_clusters"])
    name = plan.cell_name("dataset.path=/home/someone/projects/data/2024/embeddings_v2.npy clusterer.n_clusters=20 reducer=pca")
    assert name == "dataset.path=embeddings_v2.npy clusterer.n_clusters=20"
    assert len(short_override("dataset.name=" + "x" * 100)) <= len("dataset.name=") + 40
