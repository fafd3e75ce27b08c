"""Model logging: skops with the Pipeline's own trusted types, explicit cloudpickle fallback."""

import subprocess
import sys

import mlflow
import mlflow.sklearn
import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import Normalizer

from embclust.cluster import build_model, fit_clusterer
from embclust.data import make_synthetic
from embclust.preprocess import build_preprocessing, fit_preprocessing
from embclust.tracking.models import log_model


@pytest.fixture
def store(tracking_uri):
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment("models")
    yield tracking_uri
    mlflow.set_tracking_uri(None)


def _fitted(clusterer, pca=8):
    ds = make_synthetic(n_samples=400, n_features=24, n_clusters=4, seed=3)
    pre = build_preprocessing("l2", pca, seed=0)
    Xp = fit_preprocessing(pre, ds.X)
    labels = fit_clusterer(clusterer, Xp)
    return build_model(pre, clusterer), ds.X, labels


def _log(model, X, labels):
    with mlflow.start_run() as run:
        fmt = log_model(model, X[:5], labels[:5])
    return fmt, mlflow.get_run(run.info.run_id)


def test_kmeans_pipeline_is_logged_with_skops_and_predicts_its_labels(store):
    model, X, labels = _fitted(KMeans(4, n_init=2, random_state=0))
    fmt, run = _log(model, X, labels)
    assert fmt == "skops" and run.data.tags["model_format"] == "skops"
    loaded = mlflow.sklearn.load_model(f"runs:/{run.info.run_id}/model")
    np.testing.assert_array_equal(loaded.predict(X), labels)
    mlmodel = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/model/MLmodel")
    assert "serialization_format: skops" in mlmodel and "sklearn.cluster._kmeans.KMeans" in mlmodel


def test_hdbscan_pipeline_falls_back_to_cloudpickle_and_says_why(store):
    hdbscan = pytest.importorskip("hdbscan")
    model, X, labels = _fitted(hdbscan.HDBSCAN(min_cluster_size=20))
    fmt, run = _log(model, X, labels)
    tags = run.data.tags
    assert fmt == tags["model_format"]
    loaded = mlflow.sklearn.load_model(f"runs:/{run.info.run_id}/model")
    np.testing.assert_array_equal(loaded.steps[-1][1].labels_, labels)
    if fmt == "cloudpickle":
        assert "joblib.memory.Memory" in tags["model_format_reason"]


def test_accelerated_kmeans_loads_without_sklearnex(store):
    sklearnex_cluster = pytest.importorskip("sklearnex.cluster")
    X = make_synthetic(n_samples=400, n_features=16, n_clusters=4, seed=5).X
    model = Pipeline([("normalize", Normalizer()), ("pca", PCA(6, random_state=0)),
                      ("cluster", sklearnex_cluster.KMeans(4, n_init=2, random_state=0))]).fit(X)
    labels = model.predict(X)
    fmt, run = _log(model, X, labels)
    assert fmt == "skops"
    # A fresh interpreter where importing sklearnex fails must still load and predict.
    code = (
        "import sys, numpy as np, mlflow, mlflow.sklearn; sys.modules['sklearnex'] = None; sys.modules['daal4py'] = None;"
        f"mlflow.set_tracking_uri({store!r}); m = mlflow.sklearn.load_model('runs:/{run.info.run_id}/model');"
        f"X = np.load(sys.argv[1]); print(type(m.steps[-1][1]).__module__, ','.join(map(str, m.predict(X))))"
    )
    path = f"{store.removeprefix('sqlite:///').rsplit('/', 1)[0]}/X.npy"
    np.save(path, X)
    out = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    module, predicted = out.stdout.split()
    assert module.startswith("sklearn.") and predicted == ",".join(map(str, labels))


def test_saving_a_skops_model_does_not_import_torch_and_torch_still_imports_after():
    """Importing skops.io walks scikit-learn's packages; its torch adapter alone cost 2 s per run."""
    pytest.importorskip("torch")
    code = (
        "import sys; from embclust.tracking.models import import_skops_io; io = import_skops_io();"
        "assert hasattr(io, 'dumps'); print('torch' in sys.modules);"
        "import torch; print(torch.zeros(2).sum().item())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", "0.0"]


def test_skops_default_trust_is_the_loaded_estimators_not_a_walk_of_scikit_learn():
    """skops' import-time walk of every scikit-learn module cost about 2 s of each logged model."""
    code = (
        "import sys; from embclust.tracking.models import import_skops_io; import_skops_io();"
        "from skops.io._trusted_types import SKLEARN_ESTIMATOR_TYPE_NAMES as T;"
        "print('sklearn.gaussian_process' in sys.modules, 'sklearn.cluster._kmeans.KMeans' in T,"
        " 'sklearn.pipeline.Pipeline' in T, 'sklearn.gaussian_process._gpc.GaussianProcessClassifier' in T)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", "True", "True", "False"]


def test_a_logged_model_names_its_pipeline_among_its_trusted_types():
    from embclust.tracking.models import skops_trusted_types

    X = make_synthetic(n_samples=200, n_features=8, n_clusters=3, seed=1).X
    model = Pipeline([("normalize", Normalizer()), ("cluster", KMeans(3, n_init=1, random_state=0))]).fit(X)
    trusted, why = skops_trusted_types(model)
    assert why == "" and {"sklearn.pipeline.Pipeline", "sklearn.cluster._kmeans.KMeans"} <= set(trusted)


def test_skops_module_lookup_names_every_ufunc_as_skops_own_does():
    import types

    import scipy.special
    from skops.io import _utils

    from embclust.tracking.models import import_skops_io, whichmodule

    import_skops_io()
    assert _utils.whichmodule is not whichmodule  # skops keeps its own after the import
    objects = [getattr(mod, a) for mod in (scipy.special, np) for a in dir(mod) if isinstance(getattr(mod, a), np.ufunc)]
    assert len(objects) > 100
    lazy = types.ModuleType("embclust_test_lazy_module")
    lazy.__getattr__ = lambda attr: scipy.special.gamma if attr == "lazy_gamma" else (_ for _ in ()).throw(AttributeError(attr))
    sys.modules[lazy.__name__] = lazy
    try:
        cases = [(obj, obj.__name__) for obj in objects] + [(scipy.special.gamma, "lazy_gamma"), (np.add, "add.reduce")]
        assert [whichmodule(o, n) for o, n in cases] == [_utils.whichmodule(o, n) for o, n in cases]
        assert whichmodule(scipy.special.gamma, "lazy_gamma") == lazy.__name__
    finally:
        del sys.modules[lazy.__name__]


@pytest.mark.slow  # on a new machine the search index's code is compiled (about a minute)
def test_a_model_with_umap_says_it_prepares_the_search_index_and_transforms_after_loading(store, caplog):
    # The first save of a UMAP on a machine waited about a minute in silence (its search index is
    # compiled); the search function pickling compiled only to drop it is not built for the save.
    pytest.importorskip("umap")
    ds = make_synthetic(n_samples=300, n_features=24, n_clusters=4, seed=3)
    pre = build_preprocessing("l2", None, seed=0, umap_components=3)
    pre.named_steps["umap"].set_params(force_approximation_algorithm=True)  # NNDescent, as above 4,096 rows
    Xp = fit_preprocessing(pre, ds.X)
    clusterer = KMeans(4, n_init=2, random_state=0)
    labels = fit_clusterer(clusterer, Xp)
    model = build_model(pre, clusterer)
    index = pre.named_steps["umap"]._knn_search_index
    with caplog.at_level("INFO"):
        fmt, run = _log(model, ds.X, labels)
    assert fmt == "cloudpickle" and "model: preparing UMAP's search index" in caplog.text
    assert not hasattr(index, "_search_function")  # no stand-in left behind in this process
    loaded = mlflow.sklearn.load_model(f"runs:/{run.info.run_id}/model")
    np.testing.assert_allclose(loaded[:-1].transform(ds.X[:20]), model[:-1].transform(ds.X[:20]), atol=1e-4)


def test_a_model_save_stopped_by_a_signal_leaves_the_model_failed_not_pending(store, monkeypatch):
    from mlflow.entities import LoggedModelStatus

    from embclust import signals

    def stopped(*args, **kwargs):  # the stop arrives while the model's files are uploaded
        raise signals.Stopped(15)

    monkeypatch.setattr(mlflow.MlflowClient, "log_model_artifacts", stopped)
    model, X, labels = _fitted(KMeans(4, n_init=2, random_state=0))
    with pytest.raises(signals.Stopped):
        _log(model, X, labels)
    models = mlflow.search_logged_models(output_format="list")
    assert [m.status for m in models] == [LoggedModelStatus.FAILED]
