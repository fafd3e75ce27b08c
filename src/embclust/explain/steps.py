"""Run every analysis step the ``analysis`` config enables and collect its artifacts.

Each step writes its tables (CSV) into the run's artifact folder, adds its tables and figures to
the report (figures become files of their own only when ``analysis.report.enabled=false``) and
returns metrics; its wall time is recorded as ``time/analysis_<step>_s``.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from hydra.utils import instantiate
from omegaconf import DictConfig

from embclust import preprocess
from embclust.explain import duplicates, keywords
from embclust.explain import profiles, shap_models, tables
from embclust.tracking import plots, safe_csv
from embclust.data.dataset import Dataset
from embclust.errors import ConfigError
from embclust.scoring.metrics import known_labels
from embclust.tracking.report import Report
from embclust.use import retrieval

log = logging.getLogger(__name__)


@dataclass
class RunState:
    """What the analysis steps read: data, clustered space, labels, map and fitted objects."""

    ds: Dataset
    Xp: np.ndarray
    labels: np.ndarray
    coords: np.ndarray
    preprocessing: object
    clusterer: object
    seed: int
    map_title: str = ""
    # (rows, values): per-point silhouette of the sample the silhouette score was computed on.
    silhouette: tuple[np.ndarray, np.ndarray] | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    cluster_keywords: dict[int, list[str]] = field(default_factory=dict)
    mean_silhouette: dict[int, float] = field(default_factory=dict)


def check_color_by(color_by, metadata: dict) -> list[str]:
    """The metadata columns ``analysis.maps.color_by`` names (one name alone is a list of one);
    checked when the data is loaded, not after the clustering."""
    from embclust.data.loaders import column_names

    columns = column_names(color_by, "analysis.maps.color_by")
    for column in columns:
        if column not in metadata:
            raise ConfigError(
                f"analysis.maps.color_by: no metadata column {column!r} "
                f"(loaded: {', '.join(metadata) or 'none; set dataset.metadata_columns'})"
            )
    return columns


@contextmanager
def _step(state: RunState, name: str):
    log.debug("analysis: %s", name)
    start = time.perf_counter()
    try:
        yield
    finally:
        state.seconds[f"time/analysis_{name}_s"] = round(time.perf_counter() - start, 4)


def _save_table(table: pd.DataFrame, folder: Path, stem: str) -> None:
    safe_csv.write_csv(table, folder / f"{stem}.csv")



def _add_figure(report: Report, heading: str, fig, folder: Path, stem: str, as_file: bool) -> None:
    """Put ``fig`` in the report; also write it as ``<stem>.html`` when there is no report.

    Each standalone HTML file inlines plotly.js (about 4.6 MB), so a run with a report keeps its
    figures there only.
    """
    report.add_figure(heading, fig)
    if as_file:
        plots.write_html(fig, folder / f"{stem}.html")


def explain_features(state: RunState, acfg: DictConfig) -> tuple[np.ndarray, list[str], str]:
    """The matrix and names that the explanations use (see ``analysis.explain.features``)."""
    ds = state.ds
    steps = state.preprocessing.named_steps
    pcs = None
    if steps["pca"] != "passthrough":
        # Normaliser + PCA output: the clustered space itself unless UMAP followed.
        if steps["umap"] == "passthrough":
            pcs = state.Xp
        else:
            pcs = preprocess.transform_by_blocks(state.preprocessing[:2], ds.X, int(steps["pca"].n_components_))
    wanted = acfg.features
    if wanted == "auto":
        if ds.feature_names is not None and len(ds.feature_names) <= 200:
            # the rows themselves (engine=ray: its view); the explanations take their sample of them
            return (np.asarray(ds.X) if isinstance(ds.X, np.ndarray) else ds.X), list(ds.feature_names), "input columns"
        if pcs is None:
            from sklearn.decomposition import PCA

            k = min(int(acfg.n_components), ds.n_features, ds.n_samples)
            sample = tables.seeded_sample(ds.n_samples, 20_000, state.seed)
            pca = PCA(n_components=k, random_state=state.seed).fit(ds.X[sample])
            pcs = preprocess.transform_by_blocks(pca, ds.X, int(pca.n_components_))
        return pcs, [f"pc{i + 1}" for i in range(pcs.shape[1])], "PCA components"
    names = list(wanted)
    columns = []
    for name in names:
        if ds.feature_names is not None and name in ds.feature_names:
            columns.append(np.asarray(ds.X[:, ds.feature_names.index(name)]))
        elif name.startswith("pc") and name[2:].isdigit() and pcs is not None and int(name[2:]) <= pcs.shape[1]:
            columns.append(pcs[:, int(name[2:]) - 1])
        else:
            available = [", ".join([*(ds.feature_names or [])[:20], *([f"pc1..pc{pcs.shape[1]}"] if pcs is not None else [])])]
            if pcs is None and name.startswith("pc"):
                available.append("pc<k> names need preprocess.pca_components")
            if not ds.feature_names:
                available.append("the data has no named columns; or use analysis.explain.features=auto")
            shown = "; ".join(a for a in available if a)
            raise ConfigError(f"analysis.explain.features: unknown feature {name!r} (available: {shown})")
    return np.column_stack(columns), names, "chosen features"


# Steps left out of sweep cells with analysis.in_sweeps=light: the costly ones, and near-duplicates,
# which depend on the data only and would be the same in every cell.
SWEEP_LIGHT_SKIPS = ("explain", "duplicates", "dendrogram")


def run_analyses(
    state: RunState, cfg: DictConfig, folder: Path, report: Report, in_sweep: bool = False, data_analyses: bool = True
) -> None:
    """Write every enabled analysis artifact into ``folder`` and its section into ``report``.

    ``data_analyses=False`` leaves out the steps that describe the data rather than the clustering
    (near-duplicates), as for the best cell of a sweep: its data is the same in every cell.
    """
    a = cfg.analysis
    light = in_sweep and a.get("in_sweeps", "light") == "light"
    if light:
        log.debug("analysis: sweep cell, skipping %s (analysis.in_sweeps=full runs them)", ", ".join(SWEEP_LIGHT_SKIPS))
    ds, X, labels = state.ds, state.Xp, state.labels
    as_file = not a.report.enabled
    texts = ds.texts
    true_codes = ds.label_codes()

    if a.keywords.enabled and texts is not None:
        with _step(state, "keywords"):
            state.cluster_keywords = keywords.cluster_keywords(texts, labels, top_n=int(a.keywords.top_n))
            names = {}
            if a.keywords.get("labeler"):
                names = keywords.label_clusters(state.cluster_keywords, texts, labels, instantiate(a.keywords.labeler, _partial_=True))
            table = pd.DataFrame(
                [{"cluster": c, "name": names.get(c, ""), "keywords": ", ".join(w)} for c, w in state.cluster_keywords.items()]
            )
            _save_table(table, folder, "cluster_keywords")
            report.add_table("Cluster keywords (class-based TF-IDF)", table)

    if a.silhouette.enabled:
        with _step(state, "silhouette"):
            if state.silhouette is not None:
                # The values the silhouette score was computed from: no second O(sample^2) pass.
                rows, values = state.silhouette
            else:
                rows, values = tables.silhouette_by_sample(X, labels, a.silhouette.sample_size, state.seed)
            if np.isfinite(values).any():
                table = tables.silhouette_table(labels[rows], values)
                state.mean_silhouette = dict(zip(table["cluster"], table["mean_silhouette"]))
                _save_table(table, folder, "silhouette_per_cluster")
                n_clustered = int((labels != -1).sum())
                title = f"seeded sample of {rows.size} of {n_clustered} points" if rows.size < n_clustered else "all points"
                shown = tables.seeded_sample(rows.size, a.silhouette.sample_size, state.seed)
                if shown.size < rows.size:
                    title += f"; {shown.size} of them drawn"
                fig = tables.silhouette_figure(labels[rows[shown]], values[shown], f"Silhouette per sample ({title})")
                _add_figure(report, "Silhouette diagram", fig, folder, "silhouette", as_file)

    # Each cluster's centroid in the clustered space, one pass over the rows: the profile table
    # and the centroids file `embclust assign` reads both use it.
    centroids = tables.cluster_centroids(X, labels) if (labels != -1).any() else None
    if a.profile.enabled:
        with _step(state, "profile"):
            table = tables.profile_table(
                X, labels, ds.ids, texts, state.mean_silhouette,
                state.cluster_keywords if state.cluster_keywords else None, n_nearest=int(a.profile.n_nearest),
                centroids_by_cluster=centroids,
            )
            _save_table(table, folder, "cluster_profile")
            report.add_table("Cluster profiles", table)

    if a.composition.enabled and true_codes is not None:
        with _step(state, "composition"):
            table, overall = tables.composition_table(
                labels, top=int(a.composition.top), codes=true_codes, known=known_labels(ds.labels)
            )
            state.metrics["composition_purity"] = overall
            _save_table(table, folder, "cluster_composition")
            fig = tables.contingency_figure(labels, codes=true_codes)
            report.add_table("Composition vs true labels", table, note=f"overall purity {overall:.4f}")
            _add_figure(report, "Clusters vs true labels", fig, folder, "composition_heatmap", as_file)

    linkage = getattr(state.clusterer, "linkage", None)
    want_dendrogram = not light and (
        a.dendrogram.enabled is True or (a.dendrogram.enabled == "auto" and linkage is not None)
    )
    if want_dendrogram:
        with _step(state, "dendrogram"):
            method = a.dendrogram.method or (linkage if linkage in ("ward", "average", "complete", "single") else "ward")
            fig = tables.dendrogram_figure(
                X, method=method, sample_size=int(a.dendrogram.sample_size),
                truncate_p=int(a.dendrogram.truncate_p), seed=state.seed,
            )
            _add_figure(report, "Dendrogram", fig, folder, "dendrogram", as_file)

    pca = state.preprocessing.named_steps["pca"]
    if a.pca_variance.enabled and pca != "passthrough" and len(pca.explained_variance_ratio_) > 1:
        with _step(state, "pca_variance"):
            fig = tables.pca_pareto_figure(pca.explained_variance_ratio_)
            _add_figure(report, "PCA explained variance", fig, folder, "pca_variance", as_file)

    if a.explain.enabled and not light and np.unique(labels[labels != -1]).size >= 2:
        with _step(state, "explain"):
            features, names, source = explain_features(state, a.explain)
            ex = shap_models.explain_clusters(
                features, names, labels, min_cluster_size=int(a.explain.min_cluster_size),
                max_clusters=int(a.explain.max_clusters), max_samples=int(a.explain.max_samples),
                shap_samples=int(a.explain.shap_samples), n_estimators=int(a.explain.n_estimators),
                max_bin=int(a.explain.get("max_bin", 64)), seed=state.seed,
            )
            if ex.importance:
                table = ex.table()
                _save_table(table, folder, "shap_importance")
                state.metrics["explain_mean_f1"] = float(np.mean(list(ex.f1.values())))
                bars, heat = shap_models.importance_bars_figure(ex), shap_models.importance_heatmap_figure(ex)
                _add_figure(report, f"SHAP per cluster ({source})", bars, folder, "shap_per_cluster", as_file)
                _add_figure(report, "SHAP summary", heat, folder, "shap_summary", as_file)
                # Kept so that new rows can be explained by the model of the cluster they join.
                ex.save_models(folder / "explainers", source)
                scores = ex.classification_table()
                _save_table(scores, folder, "explain_classification")
                report.add_table("Cluster-vs-rest models, held-out scores", scores)
            if ex.skipped:
                skipped = "; ".join(f"cluster {c}: {why}" for c, why in ex.skipped.items())
                (folder / "explain_skipped.txt").write_text(skipped + "\n")
                report.add_text("Clusters not explained", skipped)

    skip_duplicates = (
        duplicates.skip_reason(ds.n_features, ds.X, float(a.duplicates.threshold), ds.from_tabular, state.seed)
        if a.duplicates.enabled and not light and data_analyses else None
    )
    if a.duplicates.enabled and not light and not data_analyses:
        skip_duplicates = (
            "near-duplicates: not searched for the best cell of a sweep (a property of the data, not of the "
            "clustering); a single run, or dataset.dedupe=true, finds them"
        )
    if skip_duplicates:
        log.info(skip_duplicates)
        report.add_text("Near-duplicates", skip_duplicates)
    if a.duplicates.enabled and not light and not skip_duplicates:
        with _step(state, "duplicates"):
            rows = tables.seeded_sample(ds.n_samples, int(a.duplicates.max_rows), state.seed)
            pairs = duplicates.near_duplicate_pairs(ds.X[rows], threshold=float(a.duplicates.threshold), seed=state.seed)
            state.metrics["data/near_duplicate_pairs"] = float(len(pairs))
            state.metrics["data/near_duplicate_rows_checked"] = float(rows.size)
            shown = pairs[np.argsort(-pairs[:, 2], kind="stable")[: int(a.duplicates.max_export)]] if len(pairs) else pairs
            table = pd.DataFrame(
                {
                    "id_a": ds.ids[rows[shown[:, 0].astype(int)]] if len(shown) else [],
                    "id_b": ds.ids[rows[shown[:, 1].astype(int)]] if len(shown) else [],
                    "cosine": shown[:, 2] if len(shown) else [],
                }
            )
            safe_csv.write_csv(table, folder / "near_duplicates.csv")
            report.add_text(
                "Near-duplicates",
                f"{len(pairs)} pairs with cosine >= {a.duplicates.threshold} among {rows.size} rows; the "
                f"{len(shown)} most similar are in near_duplicates.csv (dataset.dedupe=true drops them before clustering)",
            )

    for column in check_color_by(a.maps.get("color_by"), ds.metadata):
        with _step(state, f"map_{column}"):
            fig = plots.category_map_figure(
                state.coords, np.asarray(ds.metadata[column]).astype(str), ds.ids, texts,
                title=f"{state.map_title} coloured by {column}", legend_title=column,
                max_points=a.maps.max_points, seed=state.seed,
            )
            _add_figure(report, f"Map coloured by {column}", fig, folder, f"map_by_{column}", as_file)

    # What `embclust assign` needs to place new rows: the feature order and the centroids in the
    # clustered space (agglomerative and HDBSCAN models keep no centres of their own).
    if ds.feature_names is not None:
        (folder / "feature_names.json").write_text(json.dumps(list(ds.feature_names)))
    if centroids is not None:
        np.savez(folder / "cluster_centroids.npz", cluster=centroids[0], centroid=centroids[1].astype(np.float32))

    fp = a.get("feature_profile")
    # auto: input columns only (wide embedding tables would be profiled as PCA components, not columns).
    columns = ds.feature_names is not None and len(ds.feature_names) <= 200
    if fp is not None and fp.enabled and (columns or a.explain.features != "auto"):
        features, names, source = explain_features(state, a.explain)
        if source != "PCA components":
            with _step(state, "feature_profile"):
                profile = profiles.feature_profile_table(features, names, labels)
                _save_table(profile, folder, "feature_profile")
                top = profiles.top_features_table(profile, top=int(fp.top))
                _save_table(top, folder, "feature_profile_top")
                fig = profiles.distributions_figure(
                    features, names, labels, profile, max_features=int(fp.max_features),
                    sample_size=int(fp.sample_size), seed=state.seed,
                )
                report.add_table(
                    f"Features that differ most per cluster ({source})", top,
                    note="standardised mean difference: (cluster mean - overall mean) / overall std",
                )
                _add_figure(report, "Feature distributions per cluster", fig, folder, "feature_distributions", as_file)

    routing = a.get("routing")
    if routing is not None and routing.enabled and texts is not None and (labels != -1).any():
        with _step(state, "routing"):
            state.metrics.update(
                retrieval.routing_recall(ds.X, labels, probes=(1, 3), k=10, n_queries=int(routing.n_queries), seed=state.seed)
            )
