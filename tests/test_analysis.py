"""Analysis artefacts hold the right numbers on small planted cases."""

import numpy as np
import pytest
from sklearn.metrics import silhouette_samples

from embclust.explain import duplicates, keywords, tables as analysis
from embclust.explain import shap_models as explain
from embclust.tracking import plots
from conftest import REPO
from embclust.errors import ConfigError


def test_composition_shares_purity_and_entropy_match_hand_counts():
    clusters = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    truth = np.array(["a", "a", "a", "b", "c", "c", "d", "e"])
    table, overall = analysis.composition_table(clusters, truth, top=5)
    row0, row1 = table.iloc[0], table.iloc[1]
    assert (row0["label_1"], row0["share_1"], row0["purity"]) == ("a", 0.75, 0.75)
    assert row1["share_1"] + row1["share_2"] + row1["share_3"] == pytest.approx(1.0)
    assert row0["entropy_bits"] == pytest.approx(-(0.75 * np.log2(0.75) + 0.25 * np.log2(0.25)))
    assert overall == pytest.approx((3 + 2) / 8)


def test_composition_leaves_unknown_labels_out_of_purity_as_the_agreement_scores_do():
    from embclust.data.dataset import MISSING_LABEL
    from embclust.scoring.metrics import agreement_scores, known_labels

    clusters = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2])
    # cluster 0: three "a" and one unlabelled row; cluster 2 has no label at all
    truth = np.array(["a", "a", "a", MISSING_LABEL, "c", "c", "d", "c", MISSING_LABEL, MISSING_LABEL])
    table, overall = analysis.composition_table(clusters, truth, top=5, known=known_labels(truth))
    row0, row2 = table.iloc[0], table.iloc[2]
    assert (row0["size"], row0["purity"], row0["unknown_share"], row0["label_1"]) == (4, 1.0, 0.25, "a")
    assert row0["entropy_bits"] == 0.0
    assert np.isnan(row2["purity"]) and row2["unknown_share"] == 1.0
    assert overall == pytest.approx((3 + 3) / 7)
    assert overall == pytest.approx(agreement_scores(truth, clusters)["purity"])
    # integer labels: a negative label is unknown
    ints = np.array([0, 0, 0, -1, 1, 1, 2, 1, -1, -1])
    _, overall_ints = analysis.composition_table(clusters, ints.astype(str), known=known_labels(ints))
    assert overall_ints == pytest.approx(agreement_scores(ints, clusters)["purity"])
    # every label known: the same columns, unknown_share 0
    full, _ = analysis.composition_table(clusters, truth, known=np.ones(truth.size, dtype=bool))
    assert list(full.columns)[:5] == list(table.columns)[:5] and (full["unknown_share"] == 0).all()


def test_silhouette_table_matches_scikit_learn():
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(0, 1, (50, 3)), rng.normal(6, 1, (50, 3))])
    labels = np.repeat([0, 1], 50)
    rows, values = analysis.silhouette_by_sample(X, labels, sample_size=None, seed=0)
    np.testing.assert_allclose(values, silhouette_samples(X, labels))
    table = analysis.silhouette_table(labels[rows], values)
    assert table["mean_silhouette"].tolist() == pytest.approx(
        [silhouette_samples(X, labels)[:50].mean(), silhouette_samples(X, labels)[50:].mean()]
    )


def test_silhouette_by_sample_has_no_value_when_every_sampled_point_is_its_own_cluster():
    # k close to n with a silhouette sample: the sample holds only singletons, which silhouette
    # does not define (scoring skips it too); the analysis must not fail on it.
    X = np.random.default_rng(0).normal(size=(300, 4))
    labels = np.arange(300) % 290
    rows, values = analysis.silhouette_by_sample(X, labels, sample_size=20, seed=1)
    assert rows.size == 20 and np.unique(labels[rows]).size == 20 and np.isnan(values).all()


def test_profile_lists_members_nearest_the_centroid():
    X = np.array([[0.0, 0], [1, 0], [0.1, 0], [10, 10], [11, 10], [10.1, 10]])
    labels = np.array([0, 0, 0, 1, 1, 1])
    ids = np.array(["a", "b", "c", "d", "e", "f"])
    table = analysis.profile_table(X, labels, ids, n_nearest=1)
    assert table["nearest_members"].tolist() == ["c", "f"]  # closest to centroids (0.37, 0), (10.37, 10)
    assert table["size"].tolist() == [3, 3]
    assert table["nearest_centroid_distance"][0] == pytest.approx(np.hypot(10, 10))


def test_keywords_of_two_topic_corpus_are_the_topic_words():
    cats = ["the cat chased the mouse", "a cat and a kitten purr", "my cat likes the kitten"]
    cars = ["the engine of the car", "a car with a diesel engine", "engine oil for my car"]
    texts = np.array(cats * 5 + cars * 5)
    labels = np.array([0] * 15 + [1] * 15)
    words = keywords.cluster_keywords(texts, labels, top_n=2)
    assert set(words[0]) == {"cat", "kitten"} and set(words[1]) == {"car", "engine"}


def test_keyword_labeler_hook_is_called_with_keywords():
    names = keywords.label_clusters({0: ["cat"]}, np.array(["cat"]), np.array([0]), lambda c, w, ex: f"{c}:{w[0]}:{ex[0]}")
    assert names == {0: "0:cat:cat"}
    assert keywords.label_clusters({0: ["cat"]}, np.array(["cat"]), np.array([0]), None) == {}


@pytest.mark.parametrize("exact_max_rows", [10_000, 10])  # exact index, then approximate index
def test_duplicate_finder_finds_planted_pairs_and_nothing_else(exact_max_rows):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 32)).astype(np.float32)
    X[10] = X[3] * 2.0  # same direction: cosine 1
    X[200] = X[150] + rng.normal(scale=1e-3, size=32)
    pairs = duplicates.near_duplicate_pairs(X, threshold=0.99, exact_max_rows=exact_max_rows)
    assert [tuple(p) for p in pairs[:, :2].astype(int)] == [(3, 10), (150, 200)]
    assert (pairs[:, 2] >= 0.99).all()
    assert duplicates.rows_to_drop(pairs, 400).tolist() == [10, 200]


def test_shap_ranks_the_informative_feature_first():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(1200, 5))
    labels = (X[:, 2] > 0.3).astype(int) + (X[:, 2] > 1.2).astype(int)  # only feature f2 matters
    ex = explain.explain_clusters(X, [f"f{i}" for i in range(5)], labels, min_cluster_size=20, seed=0)
    for c in ex.importance:
        assert int(np.argmax(ex.importance[c])) == 2
        assert ex.f1[c] > 0.8
    small = explain.explain_clusters(X, [f"f{i}" for i in range(5)], labels, min_cluster_size=10_000, seed=0)
    assert not small.importance and set(small.skipped) == {0, 1, 2}


def test_explanations_do_not_depend_on_threads_and_reload_as_saved(tmp_path):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(900, 6)).astype(np.float32)
    labels = np.digitize(X[:, 0] + 0.3 * X[:, 4], [-0.8, 0.0, 0.8])  # 4 clusters driven by f0 and f4
    one = explain.explain_clusters(X, [f"f{i}" for i in range(6)], labels, seed=3, n_threads=1)
    two = explain.explain_clusters(X, [f"f{i}" for i in range(6)], labels, seed=3, n_threads=2)
    assert sorted(one.importance) == [0, 1, 2, 3] and one.f1 == two.f1
    for c in one.importance:
        np.testing.assert_array_equal(one.importance[c], two.importance[c])
        assert int(np.argmax(one.importance[c])) == 0
    held = explain.stratified_holdout(labels, 0.25, seed=3)
    for c in range(4):  # every cluster held out in proportion
        assert abs(held[labels == c].mean() - 0.25) < 0.01
    one.save_models(tmp_path, "input columns")
    models, names, source = explain.load_models(tmp_path)
    assert sorted(models) == [0, 1, 2, 3] and names == [f"f{i}" for i in range(6)] and source == "input columns"
    np.testing.assert_allclose(
        explain.tree_shap_values(models[2], X[:40]), explain.tree_shap_values(one.models[2], X[:40]), rtol=1e-6
    )


def test_hover_text_escapes_user_html():
    hover = plots.hover_text(np.array(["<script>alert(1)</script>"]), texts=np.array(["<b>x</b>"]))
    assert "<script>" not in hover[0] and "&lt;script&gt;" in hover[0] and "&lt;b&gt;" in hover[0]
    fig = plots.cluster_map_figure(np.zeros((1, 2)), np.array([0]), np.array(["<img src=x onerror=alert(1)>"]))
    assert "<img" not in fig.to_json()


def test_dendrogram_is_bounded_by_its_sample():
    X = np.random.default_rng(0).normal(size=(5000, 4))
    fig = analysis.dendrogram_figure(X, sample_size=300, truncate_p=12)
    assert "300 points" in fig.layout.title.text and len(fig.data) == 11  # p leaves -> p-1 merges


def test_map_draws_a_seeded_sample_of_at_most_max_points():
    rng = np.random.default_rng(0)
    coords = rng.normal(size=(1000, 2))
    coords[:10] = np.nan  # points outside a t-SNE sample are never drawn
    clusters, ids = rng.integers(0, 4, 1000), np.arange(1000)
    true = clusters.astype(str)

    def drawn(fig):
        return sorted(int(h.split("<br>")[0][4:]) for t in fig.data if t.legend == "legend" for h in t.text)

    fig = plots.cluster_map_figure(coords, clusters, ids, true, "map", max_points=100, seed=3)
    points = drawn(fig)
    assert len(points) == 100 and min(points) >= 10
    assert sum(len(t.x) for t in fig.data if t.legend == "legend2") == 100  # true-label panel: same points
    assert "100 of 990 points drawn" in fig.layout.title.text
    assert drawn(plots.cluster_map_figure(coords, clusters, ids, true, "map", max_points=100, seed=3)) == points
    everything = plots.cluster_map_figure(coords, clusters, ids, true, "map", max_points=None)
    assert len(drawn(everything)) == 990 and everything.layout.title.text == "map"
    meta = plots.category_map_figure(coords, true, ids, None, "by label", "label", max_points=50, seed=3)
    assert sum(len(t.x) for t in meta.data) == 50 and "50 of 990 points drawn" in meta.layout.title.text
    with pytest.raises(ConfigError, match=r"analysis.maps.max_points=0 must be null or an integer >= 1"):
        plots.cluster_map_figure(coords, clusters, ids, max_points=0)


def test_duplicate_search_is_bounded_per_row_on_clumped_data():
    # 3,000 copies of one direction: a radius search would return ~4.5 million pairs
    X = np.tile(np.array([[1.0, 2.0, 0.5] * 6], dtype=np.float32), (3000, 1))
    X *= np.random.default_rng(0).uniform(1, 5, size=(3000, 1)).astype(np.float32)
    pairs = duplicates.near_duplicate_pairs(X, threshold=0.98, n_neighbors=10)
    assert 0 < len(pairs) <= 3000 * 11
    assert duplicates.rows_to_drop(pairs, 3000).size > 0


def test_duplicates_step_skips_low_dimensional_data_quickly_and_writes_nothing(tmp_path):
    import time

    from omegaconf import OmegaConf

    from embclust.data.dataset import Dataset
    from embclust.explain.steps import RunState, run_analyses
    from embclust.preprocess import build_preprocessing
    from embclust.tracking.report import Report

    X = np.random.default_rng(0).normal(size=(5000, 2)).astype(np.float32)
    ds = Dataset(name="xy", X=X, ids=np.arange(5000))
    labels = (X[:, 0] > 0).astype(np.int64)
    cfg = OmegaConf.load(REPO / "conf/analysis/default.yaml")
    for step in ("silhouette", "profile", "composition", "pca_variance", "explain", "keywords"):
        cfg[step].enabled = False
    cfg.dendrogram.enabled = False
    state = RunState(ds, X, labels, X, build_preprocessing("none"), None, seed=0)
    report = Report(title="")
    start = time.perf_counter()
    run_analyses(state, OmegaConf.create({"analysis": cfg}), tmp_path, report, in_sweep=False)
    assert time.perf_counter() - start < 2.0
    assert not (tmp_path / "near_duplicates.csv").exists()
    assert "data/near_duplicate_pairs" not in state.metrics and "near_duplicate_pairs" not in state.metrics
    assert any("near-duplicates skipped: data with 2 columns" in str(section) for section in report.sections)


def test_xgboost_tree_shap_equals_the_shap_library():
    import shap
    from xgboost import XGBClassifier

    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 6)).astype(np.float32)
    y = (X[:, 2] + 0.3 * X[:, 4] > 0).astype(int)
    model = XGBClassifier(n_estimators=30, max_depth=3, random_state=0, n_jobs=1).fit(X, y)
    ours = explain.tree_shap_values(model, X[:50])
    theirs = np.asarray(shap.TreeExplainer(model).shap_values(X[:50]))
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
    assert np.abs(ours).mean(axis=0).argmax() == 2


def test_near_duplicates_are_skipped_by_what_the_data_is_not_by_width_alone():
    from embclust.explain import duplicates

    rng = np.random.default_rng(0)
    # Tabular-like: 19 positive columns on large offsets, so unrelated rows point the same way.
    tabular = (rng.normal(size=(2000, 19)) + 50.0).astype(np.float32)
    reason = duplicates.skip_reason(19, tabular, 0.98)
    assert reason is not None and "the rows all point the same way from the origin" in reason
    assert "analysis.duplicates.threshold" in reason
    # Embedding-like: unrelated rows are far below the threshold; the check runs.
    embeddings = rng.normal(size=(2000, 64)).astype(np.float32)
    assert duplicates.skip_reason(64, embeddings, 0.98) is None
    # Tight clusters in random directions: pairs within a cluster are near-duplicates, the check runs.
    centres = rng.normal(size=(3, 20)) * 5
    clusters = (np.repeat(centres, 200, axis=0) + rng.normal(size=(600, 20)) * 0.1).astype(np.float32)
    assert duplicates.skip_reason(20, clusters, 0.98) is None
    assert "dataset=tabular" in duplicates.skip_reason(64, embeddings, 0.98, from_tabular=True)
    assert "columns" in duplicates.skip_reason(8, embeddings[:, :8], 0.98)
