import numpy as np
import pytest

from embclust.data import Dataset, fingerprint_array, load_digits, make_synthetic, validate_dataset
from embclust.errors import DataError


def test_digits_shape_and_labels():
    ds = load_digits()
    assert ds.X.shape == (1797, 64) and ds.X.dtype == np.float32
    assert set(np.unique(ds.labels)) == set(range(10))


def test_synthetic_is_embedding_like_and_seeded():
    ds = make_synthetic(n_samples=3000, n_features=64, n_clusters=6, seed=3)
    assert ds.X.shape == (3000, 64) and ds.X.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(ds.X, axis=1), 1.0, rtol=1e-5)
    sizes = np.bincount(ds.labels, minlength=6)
    assert sizes.sum() == 3000 and sizes.min() != sizes.max()  # unequal cluster sizes
    # Points lie near a 16-dim subspace: top 16 singular values carry almost all energy.
    s = np.linalg.svd(ds.X - ds.X.mean(0), compute_uv=False)
    assert (s[:16] ** 2).sum() / (s**2).sum() > 0.9
    again = make_synthetic(n_samples=3000, n_features=64, n_clusters=6, seed=3)
    assert ds.fingerprint == again.fingerprint
    assert make_synthetic(n_samples=3000, n_features=64, n_clusters=6, seed=4).fingerprint != ds.fingerprint


def test_synthetic_chunking_gives_same_data():
    a = make_synthetic(n_samples=1000, n_features=32, seed=1, chunk_size=1000)
    b = make_synthetic(n_samples=1000, n_features=32, seed=1, chunk_size=1000)
    np.testing.assert_array_equal(a.X, b.X)


def test_fingerprint_depends_on_values_and_shape():
    X = np.arange(12, dtype=np.float32).reshape(6, 2)
    assert fingerprint_array(X) != fingerprint_array(X.reshape(3, 4))
    Y = X.copy()
    Y[5, 1] += 1
    assert fingerprint_array(X) != fingerprint_array(Y)


def _ds(X, **kw):
    return Dataset(name="t", X=np.asarray(X, dtype=np.float32), ids=np.arange(len(X)), **kw)


@pytest.mark.parametrize(
    "X, match",
    [
        (np.empty((0, 3)), "empty: 0 rows"),
        (np.ones((1, 3)), "single row"),
        (np.empty((4, 0)), "0 feature columns"),
    ],
)
def test_validate_rejects_bad_shapes(X, match):
    with pytest.raises(DataError, match=match):
        validate_dataset(_ds(X))


@pytest.mark.parametrize("X", [np.zeros((50, 4)), np.tile([0.5, -1.0, 2.0], (3000, 1))])
def test_validate_rejects_data_whose_rows_are_all_one_vector(X):
    with pytest.raises(DataError, match=rf"all {len(X)} rows are the same vector, so there is nothing to cluster"):
        validate_dataset(_ds(X))


def test_validate_accepts_data_where_only_the_last_row_differs():
    X = np.zeros((20_000, 4))  # more rows than one read chunk
    X[-1, 2] = 1.0
    assert validate_dataset(_ds(X)).X.shape == (20_000, 4)


def test_validate_reports_non_finite_rows_with_ids():
    X = np.ones((10, 3))
    X[2, 1] = np.nan
    X[7, 0] = np.inf
    with pytest.raises(DataError, match=r"NaN or inf in 2 of 10 rows \(first ids: 2, 7\); .*on_invalid=drop"):
        validate_dataset(_ds(X))


def test_drop_invalid_rows_keeps_the_rest_aligned():
    X = np.arange(30, dtype=np.float32).reshape(10, 3)
    X[2, 1] = np.nan
    ds = validate_dataset(_ds(X, labels=np.arange(10) % 2), on_invalid="drop")
    assert ds.n_samples == 9 and ds.n_dropped_invalid == 1
    assert 2 not in ds.ids.tolist() and ds.labels.tolist() == [i % 2 for i in range(10) if i != 2]


def test_duplicate_ids_are_counted_not_fatal():
    ds = Dataset(name="t", X=np.arange(8, dtype=np.float32).reshape(4, 2), ids=np.array(["a", "b", "a", "a"]))
    assert validate_dataset(ds).n_duplicate_ids == 2


def test_validate_rejects_label_length_mismatch():
    with pytest.raises(DataError, match="labels has 3 entries but the matrix has 5 rows"):
        validate_dataset(_ds(np.ones((5, 2)), labels=np.zeros(3)))


@pytest.mark.parametrize(("key", "value", "need"), [
    ("cluster_std", -1.0, "a number >= 0"), ("noise", -0.1, "a number >= 0"), ("n_samples", "abc", "a whole number >= 0"),
    ("subspace_dim", 0, "a whole number >= 1"), ("n_clusters", 2.5, "a whole number >= 1"),
    ("center_spread", float("nan"), "a number >= 0"),
])
def test_synthetic_settings_out_of_range_name_the_key(key, value, need):
    # numpy's ValueError('scale < 0') or a TypeError comparing str and int reached the user.
    from embclust.errors import ConfigError

    with pytest.raises(ConfigError, match=rf"^dataset.{key}=.* must be {need} \(dataset=synthetic\)$"):
        make_synthetic(**{"n_samples": 50, "n_features": 8, key: value})
