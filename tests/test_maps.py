import re
import numpy as np
import pytest
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE

from embclust.errors import ConfigError
from embclust.maps import compute_map


@pytest.mark.parametrize("reducer", [PCA(n_components=2), TSNE(n_components=2, perplexity=5, random_state=0)])
def test_a_one_column_space_is_mapped_on_one_axis(reducer):
    X = np.random.default_rng(0).normal(size=(40, 1)).astype(np.float32)
    coords = compute_map(reducer, X)
    np.testing.assert_array_equal(coords[:, 0], X[:, 0])
    assert (coords[:, 1] == 0).all()


def test_tsne_perplexity_above_the_mapped_rows_names_the_key_and_a_value_that_works():
    X = np.random.default_rng(0).normal(size=(20, 5)).astype(np.float32)
    with pytest.raises(ConfigError, match=r"reducer.perplexity=30 must be less than the 20 rows .* reducer.perplexity=6 "):
        compute_map(TSNE(n_components=2, perplexity=30.0), X)
    # the suggested value is accepted
    assert np.isfinite(compute_map(TSNE(n_components=2, perplexity=6, random_state=0), X)).all()
    # with max_points, the rows mapped are the sample's
    X = np.random.default_rng(0).normal(size=(200, 5)).astype(np.float32)
    with pytest.raises(ConfigError, match="less than the 25 rows"):
        compute_map(TSNE(n_components=2, perplexity=30.0), X, max_points=25)


def test_umap_on_fewer_rows_than_its_start_needs_names_the_fix_and_four_rows_map():
    from umap import UMAP

    X = np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32)
    with pytest.raises(ConfigError, match=r"^reducer=umap maps at least 4 rows in 2-D; the data has 3: set reducer=pca"):
        compute_map(UMAP(n_components=2, random_state=0, n_jobs=1), X[:3])
    assert np.isfinite(compute_map(UMAP(n_components=2, random_state=0, n_jobs=1), X)).all()


def test_a_map_that_cannot_be_drawn_fails_the_run_before_the_clustering(run_cli, tmp_path):
    np.save(tmp_path / "three.npy", np.array([[0, 0], [0, 1], [5, 5]], dtype=np.float32))
    res = run_cli("dataset=npy", f"dataset.path={tmp_path / 'three.npy'}", "clusterer.n_clusters=2", "reducer=umap")
    assert res.returncode == 1 and "reducer=umap maps at least 4 rows" in res.stderr
    (run,) = res.runs()
    assert run.info.status == "FAILED" and "time/cluster_s" not in run.data.metrics


_UMAP_SCRIPT = """
import sys, numpy as np
from embclust import compiled
print(compiled.enable_umap_cache(), file=sys.stderr)
import umap
X = np.random.default_rng(0).normal(size=(300, 8)).astype(np.float32)
np.save(sys.argv[1], umap.UMAP(random_state=0, n_jobs=1, n_epochs=50).fit_transform(X))
"""


def test_umap_with_its_compiled_functions_cached_maps_exactly_as_without(tmp_path):
    import os
    import subprocess
    import sys

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    runs = {"uncached": blocker / "numba", "cold": tmp_path / "numba", "warm": tmp_path / "numba"}
    out = {}
    for name, folder in runs.items():
        env = {**os.environ, "EMBCLUST_NUMBA_CACHE_DIR": str(folder)}
        env.pop("NUMBA_CACHE_DIR", None)
        proc = subprocess.run([sys.executable, "-c", _UMAP_SCRIPT, str(tmp_path / f"{name}.npy")], env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stderr.strip().splitlines()[0] == str(name != "uncached")
        out[name] = np.load(tmp_path / f"{name}.npy")
    assert list((tmp_path / "numba").rglob("*.nbi"))  # compiled functions were written to the cache
    np.testing.assert_array_equal(out["cold"], out["uncached"])
    np.testing.assert_array_equal(out["warm"], out["uncached"])


def test_a_numba_cache_that_cannot_be_written_does_not_fail_the_map(tmp_path, monkeypatch):
    import subprocess
    import sys
    import os

    script = """
import errno, sys, numpy as np
from embclust import compiled
assert compiled.enable_umap_cache()
from numba.core.caching import IndexDataCacheFile
def full(self, *a, **k):
    raise OSError(errno.ENOSPC, "No space left on device")
IndexDataCacheFile.save = full   # every cache write now fails as on a full disk
import umap
X = np.random.default_rng(0).normal(size=(200, 6)).astype(np.float32)
Y = umap.UMAP(random_state=0, n_jobs=1, n_epochs=20).fit_transform(X)
print(np.isfinite(Y).all())
"""
    env = {**os.environ, "EMBCLUST_NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "True"
    assert proc.stderr.count("cannot be written") == 1  # one warning, not one per function


def test_umap_neighbours_above_the_rows_are_said_naming_the_key(caplog):
    # UMAP truncated n_neighbors with a warning naming its own source line, not the config key.
    import umap

    from embclust.console import EXPECTED_WARNINGS

    X = np.random.default_rng(0).normal(size=(12, 5)).astype(np.float32)
    with caplog.at_level("WARNING"):
        coords = compute_map(umap.UMAP(n_neighbors=15, random_state=0, n_epochs=20), X)
    assert np.isfinite(coords).all()
    assert "reducer.n_neighbors=15 is not below the 12 rows UMAP fits: it uses 11 neighbours" in caplog.text
    assert any(re.search(p, "n_neighbors is larger than the dataset size; truncating") for p in EXPECTED_WARNINGS)
