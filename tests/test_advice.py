"""The knee of a k sweep and the PCA trade-off chart, on planted structure."""

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs
from sklearn.decomposition import PCA
from sklearn.metrics import silhouette_score

from embclust.sweep.advice import (
    knee_advice,
    knee_metric_names,
    knee_of_curve,
    knee_points,
    metric_curves,
    tradeoff_figure,
)

K = "clusterer.n_clusters"
P = "preprocess.pca_components"


@pytest.fixture(scope="module")
def six_blob_sweep():
    """A leaderboard-shaped table: KMeans k = 2..12 on 6 blobs, full space and PCA 5 (6 centres span 5 dimensions)."""
    X, _ = make_blobs(n_samples=1200, centers=6, n_features=8, cluster_std=0.6, random_state=0)
    spaces = {"None": X, "5": PCA(5, random_state=0).fit_transform(X)}
    rows = []
    for pca, Xs in spaces.items():
        for k in range(2, 13):
            km = KMeans(k, n_init=5, random_state=0).fit(Xs)
            rows.append({"status": "FINISHED", P: pca, K: str(k), "inertia": km.inertia_,
                         "silhouette": silhouette_score(Xs, km.labels_)})
    return pd.DataFrame(rows)


def test_knee_of_inertia_is_the_planted_k_in_every_pca_size(six_blob_sweep):
    assert knee_points(six_blob_sweep, K, P) == {"5": 6, "None": 6}


def test_knee_without_a_group_and_its_mlflow_names(six_blob_sweep):
    full = six_blob_sweep[six_blob_sweep[P] == "None"]
    knees = knee_points(full, K, None)
    assert knees == {None: 6}
    assert knee_metric_names(knees, None) == {"knee_k": 6.0}
    assert knee_metric_names({"50": 6, "None": None}, P) == {"knee_k/pca_components_50": 6.0}
    assert "clusterer.n_clusters=6" in knee_advice(knees, K, None)


def test_failed_cells_nan_and_short_curves_give_no_wrong_knee(six_blob_sweep):
    table = six_blob_sweep.copy()
    # a failed cell and a NaN value in the full-space curve must not move its knee
    table.loc[(table[P] == "None") & (table[K] == "9"), "status"] = "FAILED"
    table.loc[(table[P] == "None") & (table[K] == "11"), "inertia"] = math.nan
    assert knee_points(table, K, P)["None"] == 6
    short = table[table[K].isin(["2", "3"])]
    assert knee_points(short, K, P) == {"5": None, "None": None}
    assert knee_of_curve([2, 3, 4], [math.nan, math.nan, math.nan]) is None
    assert "no knee" in knee_advice({"5": None}, K, P)


def test_a_metric_that_peaks_inside_the_range_has_no_knee(six_blob_sweep):
    # silhouette peaks at k = 6: that is an optimum the leaderboard reports, not an elbow
    assert knee_points(six_blob_sweep, K, P, metric="silhouette") == {"5": None, "None": None}
    # a silhouette that keeps rising with diminishing returns does have one
    ks = np.arange(2, 13)
    assert knee_of_curve(ks, 1 - np.exp(-(ks - 1) / 1.5), "silhouette") is not None


def test_curves_mark_the_knee_on_the_inertia_panel(six_blob_sweep):
    fig = metric_curves(six_blob_sweep, K, P)
    stars = [t for t in fig.data if t.marker is not None and t.marker.symbol == "star"]
    assert sorted((t.name, t.x[0]) for t in stars) == [(f"knee {P}=5", 6), (f"knee {P}=None", 6)]


def test_tradeoff_has_one_point_per_pca_size_and_k_with_both_in_hover():
    table = pd.DataFrame(
        {
            "status": ["FINISHED"] * 5 + ["FAILED"],
            P: ["None", "None", "10", "10", "5", "5"],
            K: ["10", "20", "10", "20", "10", "20"],
            "silhouette_ref": [0.30, 0.25, 0.28, 0.22, 0.20, math.nan],
        }
    )
    fig = tradeoff_figure(table, {5: 0.41, 10: 0.63})
    by_k = {t.name: t for t in fig.data}
    assert set(by_k) == {f"{K}=10", f"{K}=20"}
    k10 = by_k[f"{K}=10"]
    assert list(k10.x) == [0.41, 0.63, 1.0] and list(k10.y) == [0.20, 0.28, 0.30]
    assert list(by_k[f"{K}=20"].x) == [0.63, 1.0]  # the failed PCA-5 cell is left out
    assert "PCA components" in k10.hovertemplate and "cumulative explained variance" in k10.hovertemplate
    assert [c[0] for c in k10.customdata] == ["5", "10", "all (no PCA)"]
    with pytest.raises(ValueError, match="silhouette_ref"):
        tradeoff_figure(table.drop(columns=["silhouette_ref"]), {5: 0.4})


def test_finding_a_knee_leaves_matplotlib_unloaded_and_importable():
    """kneed's plots need matplotlib; a sweep never draws them, so it must not pay 0.3 s to load it."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from embclust.sweep.advice import knee_of_curve\n"
        "assert knee_of_curve([1, 2, 3, 4, 5, 6], [100, 40, 20, 15, 13, 12]) == 3\n"
        "assert 'matplotlib' not in sys.modules, 'matplotlib was loaded'\n"
        "import matplotlib.pyplot\n"
        "from kneed.knee_locator import KneeLocator\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "ok"


def test_a_best_cell_that_won_by_calling_rows_noise_gets_a_caution_naming_the_cleaner_one():
    from embclust.sweep.summary import noise_caution

    scored = pd.DataFrame({  # leaderboard order, best first
        "clusterer": ["hdbscan", "kmeans"], "silhouette": [0.246, 0.186], "noise_fraction": [0.33, 0.0],
        "run_id": ["a", "b"],
    })
    caution = noise_caution(scored, "silhouette", ["clusterer"])
    assert caution.startswith("the best cell leaves 33% of the rows as noise and is scored on the other 67%")
    assert "the best cell with 0% noise is clusterer=kmeans (silhouette=0.186)" in caution
    scored["noise_fraction"] = [0.02, 0.0]  # about as much noise as the others: nothing to say
    assert noise_caution(scored, "silhouette", ["clusterer"]) is None
    assert noise_caution(scored.drop(columns="noise_fraction"), "silhouette", ["clusterer"]) is None
