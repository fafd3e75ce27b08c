import numpy as np
import pytest

from embclust.errors import ConfigError
from embclust.preprocess import build_preprocessing, check_preprocessing, fit_preprocessing


def test_l2_then_pca_outputs_float32_components():
    X = np.random.default_rng(0).normal(size=(200, 20)).astype(np.float32)
    pipe = build_preprocessing(normalize="l2", pca_components=5, seed=0)
    Xt = fit_preprocessing(pipe, X)
    assert Xt.shape == (200, 5) and Xt.dtype == np.float32
    # PCA components are uncorrelated and ordered by variance.
    var = Xt.var(axis=0)
    assert np.all(np.diff(var) <= 1e-6)


def test_no_preprocessing_is_identity():
    X = np.random.default_rng(0).normal(size=(30, 4)).astype(np.float32)
    np.testing.assert_array_equal(fit_preprocessing(build_preprocessing("none", None), X), X)


def test_l2_rows_have_unit_norm():
    X = np.random.default_rng(0).normal(size=(30, 4)).astype(np.float32) * 7
    Xt = fit_preprocessing(build_preprocessing("l2", None), X)
    np.testing.assert_allclose(np.linalg.norm(Xt, axis=1), 1.0, rtol=1e-5)


def test_unknown_normalize_names_allowed_values():
    with pytest.raises(ConfigError, match=r"preprocess.normalize='max' is not allowed \(allowed: auto, l2, standard, none\)"):
        build_preprocessing(normalize="max")


@pytest.mark.parametrize("bad", [0, -3, 2.5, "ten"])
def test_bad_pca_components(bad):
    with pytest.raises(ConfigError, match="pca_components"):
        build_preprocessing(pca_components=bad)


def test_pca_components_above_data_rank_is_rejected():
    pipe = build_preprocessing(pca_components=100)
    with pytest.raises(ConfigError, match=r"pca_components=100 exceeds min\(n_samples, n_features\)=64"):
        check_preprocessing(pipe, n_samples=1797, n_features=64)


def test_pca_components_above_the_fit_sample_name_preprocess_fit_sample_size():
    # It was scikit-learn's "n_components=10 must be between 0 and min(n_samples, n_features)=5",
    # as if the data had 5 rows.
    X = np.random.default_rng(0).normal(size=(300, 64)).astype(np.float32)
    with pytest.raises(ConfigError, match=r"pca_components=10 exceeds the 5 rows PCA is fitted on \(preprocess.fit_sample_size=5\)"):
        fit_preprocessing(build_preprocessing("none", 10), X, fit_sample_size=5)
    assert fit_preprocessing(build_preprocessing("none", 10), X, fit_sample_size=20).shape == (300, 10)


def test_auto_normalisation_picks_by_data_shape():
    from embclust.preprocess import resolve_normalize

    choice, why = resolve_normalize("auto", 384, from_tabular=False)
    assert choice == "l2" and "embeddings (384 columns)" in why
    choice, why = resolve_normalize("auto", 2)
    assert choice == "standard" and "data with 2 columns (<= 16)" in why
    assert resolve_normalize("auto", 300, from_tabular=True)[0] == "standard"
    assert resolve_normalize("none", 2) == ("none", None)
    assert resolve_normalize("l2", 384) == ("l2", None)


def test_explicit_l2_on_low_dimensional_data_warns_once_with_the_fix(caplog):
    from embclust.preprocess import choose_normalize

    with caplog.at_level("WARNING", logger="embclust.preprocess"):
        assert choose_normalize("l2", 3) == "l2"
        assert choose_normalize("l2", 3) == "l2"
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert "preprocess.normalize=l2 on data with 3 columns" in warnings[0]
    assert "use preprocess.normalize=standard" in warnings[0]


def test_auto_must_be_resolved_before_building():
    with pytest.raises(ConfigError, match="preprocess.normalize=auto must be resolved"):
        build_preprocessing(normalize="auto")


def test_unknown_svd_solver_names_allowed_values():
    with pytest.raises(ConfigError, match=r"preprocess.svd_solver='magic' is not allowed \(allowed: auto, full, covariance_eigh"):
        build_preprocessing(pca_components=4, svd_solver="magic")


def test_arpack_at_the_data_rank_is_refused_with_the_fix():
    pipe = build_preprocessing(pca_components=16, svd_solver="arpack")
    with pytest.raises(ConfigError, match=r"pca_components=16 with preprocess.svd_solver=arpack must be below .*=16"):
        check_preprocessing(pipe, n_samples=300, n_features=16)


def test_umap_components_beyond_what_the_rows_allow_are_refused_and_the_most_that_runs_runs():
    X = np.random.default_rng(0).normal(size=(60, 16)).astype(np.float32)
    with pytest.raises(ConfigError, match=r"umap_components=59 needs at least 61 rows; the data has 60: ask for at most 58"):
        fit_preprocessing(build_preprocessing("l2", umap_components=59, seed=0), X)
    assert fit_preprocessing(build_preprocessing("l2", umap_components=58, seed=0), X).shape == (60, 58)


@pytest.mark.parametrize("d", [20, 64, 200])
def test_auto_normalisation_looks_at_the_data_not_only_its_width(d):
    """Two Gaussian clusters far from the origin, their means pointing the same way (cosine ~0.9998):
    L2 merges them; auto must see that and standardise instead."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    from embclust.preprocess import build_preprocessing, fit_preprocessing, resolve_normalize

    rng = np.random.default_rng(d)
    direction = rng.normal(size=d)
    direction /= np.linalg.norm(direction)
    y = np.repeat([0, 1], 600)
    X = (rng.normal(size=(1200, d)) + (60.0 + 6.0 * y)[:, None] * direction).astype(np.float32)
    choice, message = resolve_normalize("auto", d, X=X)
    assert choice == "standard" and "median cosine" in message and "preprocess.normalize=l2" in message
    ari = {}
    for how in ("standard", "l2"):
        Xp = fit_preprocessing(build_preprocessing(how), X)
        ari[how] = adjusted_rand_score(y, KMeans(2, n_init=3, random_state=0).fit_predict(Xp))
    assert ari["standard"] > 0.9 > ari["l2"] + 0.3  # the choice matters, and auto made the right one
    # Embedding-like rows (a shared offset, median pair cosine ~0.3) keep L2.
    E = rng.normal(size=(1200, d)) + 0.5 * direction * np.sqrt(d) / 3
    assert resolve_normalize("auto", d, X=E.astype(np.float32))[0] == "l2"
