"""Explain clusters: one-vs-rest XGBoost per cluster and SHAP feature importances."""

from __future__ import annotations

import gzip
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

log = logging.getLogger(__name__)

NOISE = -1


@dataclass
class Explanations:
    """Mean |SHAP| per feature for each explained cluster, its model, held-out scores and what was skipped."""

    feature_names: list[str]
    importance: dict[int, np.ndarray] = field(default_factory=dict)
    f1: dict[int, float] = field(default_factory=dict)
    skipped: dict[int, str] = field(default_factory=dict)
    models: dict[int, object] = field(default_factory=dict)
    # cluster -> held-out precision, recall, f1 and support of the cluster-vs-rest model
    scores: dict[int, dict[str, float]] = field(default_factory=dict)

    def table(self) -> pd.DataFrame:
        """Long table: cluster, feature, mean |SHAP|, rank, held-out F1."""
        rows = []
        for c, imp in self.importance.items():
            order = np.argsort(-imp, kind="stable")
            for rank, k in enumerate(order, start=1):
                rows.append(
                    {"cluster": c, "rank": rank, "feature": self.feature_names[k], "mean_abs_shap": float(imp[k]),
                     "f1_heldout": self.f1[c]}
                )
        return pd.DataFrame(rows)

    def classification_table(self) -> pd.DataFrame:
        """One row per explained cluster: held-out precision, recall, F1 and support (members held out)."""
        return pd.DataFrame([{"cluster": c, **s} for c, s in self.scores.items()])

    def save_models(self, folder: Path, source: str) -> None:
        """Write each cluster's model as gzipped XGBoost JSON (``cluster_<c>.json.gz``: no pickle, about
        a sixth of the plain JSON) and ``features.json``."""
        folder.mkdir(parents=True, exist_ok=True)
        for c, model in self.models.items():
            raw = model.get_booster().save_raw(raw_format="json")
            (folder / f"cluster_{c}.json.gz").write_bytes(gzip.compress(bytes(raw), mtime=0))
        (folder / "features.json").write_text(
            json.dumps({"feature_names": self.feature_names, "source": source, "clusters": sorted(self.models)}, indent=1)
        )


def load_models(folder: Path) -> tuple[dict[int, object], list[str], str]:
    """Read the models written by :meth:`Explanations.save_models`: (models, feature names, source)."""
    from xgboost import XGBClassifier

    meta = json.loads((folder / "features.json").read_text())
    models = {}
    for c in meta["clusters"]:
        model = XGBClassifier()
        model.load_model(bytearray(gzip.decompress((folder / f"cluster_{c}.json.gz").read_bytes())))
        models[int(c)] = model
    return models, list(meta["feature_names"]), str(meta["source"])


def explain_clusters(
    features: np.ndarray,
    feature_names: list[str],
    labels: np.ndarray,
    min_cluster_size: int = 20,
    max_clusters: int = 30,
    max_samples: int = 5000,
    shap_samples: int = 500,
    n_estimators: int = 100,
    max_depth: int = 4,
    seed: int = 0,
) -> Explanations:
    """Fit one XGBoost classifier per cluster (cluster vs rest) and rank features by mean |SHAP|.

    Training uses a seeded sample of at most ``max_samples`` rows split 75/25 (stratified); F1 is
    measured on the held-out quarter; SHAP values on at most ``shap_samples`` held-out rows.
    Clusters smaller than ``min_cluster_size``, noise, and clusters beyond the ``max_clusters``
    largest are skipped with the reason recorded.
    """
    from sklearn.metrics import precision_recall_fscore_support
    from sklearn.model_selection import train_test_split
    from xgboost import XGBClassifier

    out = Explanations(feature_names=list(feature_names))
    rng = np.random.default_rng(seed)
    rows = np.arange(labels.size) if labels.size <= max_samples else np.sort(rng.choice(labels.size, max_samples, replace=False))
    X, y_all = np.asarray(features[rows], dtype=np.float32), labels[rows]
    clusters, sizes = np.unique(labels[labels != NOISE], return_counts=True)
    order = np.argsort(-sizes, kind="stable")
    for rank, idx in enumerate(order):
        c, size = int(clusters[idx]), int(sizes[idx])
        if size < min_cluster_size:
            out.skipped[c] = f"{size} points < analysis.explain.min_cluster_size={min_cluster_size}"
            continue
        if rank >= max_clusters:
            out.skipped[c] = f"beyond the {max_clusters} largest clusters (analysis.explain.max_clusters)"
            continue
        y = (y_all == c).astype(int)
        if y.sum() < 4 or (1 - y).sum() < 4:
            out.skipped[c] = "too few sampled points on one side for a held-out split"
            continue
        log.debug("explain: cluster %d (%d/%d)", c, len(out.importance) + 1, min(max_clusters, len(order)))
        X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.25, stratify=y, random_state=seed)
        model = XGBClassifier(
            n_estimators=n_estimators, max_depth=max_depth, learning_rate=0.1, random_state=seed,
            n_jobs=None, tree_method="hist", eval_metric="logloss",  # all cores: deterministic with hist
        )
        model.fit(X_tr, y_tr)
        precision, recall, f1, _ = precision_recall_fscore_support(
            y_te, model.predict(X_te), average="binary", zero_division=0
        )
        out.f1[c] = float(f1)
        out.scores[c] = {"precision": float(precision), "recall": float(recall), "f1": float(f1), "support": int(y_te.sum())}
        out.models[c] = model
        out.importance[c] = np.abs(tree_shap_values(model, X_te[:shap_samples])).mean(axis=0)
    return out


def tree_shap_values(model, X: np.ndarray) -> np.ndarray:
    """Exact TreeSHAP values of an XGBoost model, one row per sample and column per feature.

    XGBoost computes them itself (``pred_contribs``, the algorithm ``shap.TreeExplainer`` runs);
    the last column it returns, the expected value, is dropped.
    """
    from xgboost import DMatrix

    contributions = model.get_booster().predict(DMatrix(np.asarray(X, dtype=np.float32)), pred_contribs=True)
    return np.asarray(contributions)[:, :-1]


def importance_bars_figure(ex: Explanations, top: int = 10) -> go.Figure:
    """One bar chart of mean |SHAP| per explained cluster (top features), with held-out F1."""
    clusters = list(ex.importance)
    cols = 3
    nrows = max(1, -(-len(clusters) // cols))
    fig = make_subplots(
        rows=nrows, cols=cols,
        subplot_titles=[f"cluster {c} (F1 {ex.f1[c]:.2f})" for c in clusters],
        horizontal_spacing=0.15, vertical_spacing=min(0.08, 0.5 / nrows),
    )
    for i, c in enumerate(clusters):
        imp = ex.importance[c]
        order = np.argsort(-imp, kind="stable")[:top][::-1]
        fig.add_trace(
            go.Bar(x=imp[order], y=[ex.feature_names[k] for k in order], orientation="h", showlegend=False),
            row=i // cols + 1, col=i % cols + 1,
        )
    fig.update_layout(title="Mean |SHAP| per cluster (one-vs-rest XGBoost)", height=max(400, 300 * nrows))
    return fig


def importance_heatmap_figure(ex: Explanations, top: int = 20) -> go.Figure:
    """Clusters x features heatmap of mean |SHAP|, features ranked by their total importance."""
    clusters = list(ex.importance)
    matrix = np.vstack([ex.importance[c] for c in clusters]) if clusters else np.zeros((0, len(ex.feature_names)))
    order = np.argsort(-matrix.sum(0), kind="stable")[:top] if clusters else []
    fig = go.Figure(
        go.Heatmap(
            z=matrix[:, order] if clusters else [[]],
            x=[ex.feature_names[k] for k in order],
            y=[f"cluster {c}" for c in clusters],
            colorscale="Reds",
            hovertemplate="%{y} / %{x}: %{z:.4f}<extra></extra>",
        )
    )
    fig.update_layout(title="SHAP summary: mean |SHAP| by cluster and feature", height=max(400, 25 * len(clusters) + 200))
    return fig
