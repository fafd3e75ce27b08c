"""Sweep summary on the parent run: leaderboard, heatmaps over the grid, metric curves."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from embclust.sweep import compare
from embclust.tracking import plots
from embclust.tracking.report import Report

log = logging.getLogger(__name__)

_HEATMAP_METRICS = ("silhouette", "calinski_harabasz", "davies_bouldin")
_CURVE_METRICS = ("silhouette", "calinski_harabasz", "davies_bouldin", "inertia")
_K_PARAMS = ("clusterer.n_clusters", "clusterer.min_cluster_size")


def summarize_sweep(parent_run_id: str, experiment_name: str, metric: str) -> str | None:
    """Log the leaderboard, heatmaps, curves and best-cell tags on the parent run."""
    runs = compare.fetch_runs(experiment_name, parent_run_id)
    if runs.empty:
        return None
    swept = compare.swept_params(runs)
    table = compare.leaderboard(runs, metric, swept)
    client = mlflow.MlflowClient()
    n_failed = int((table["status"] == "FAILED").sum())
    client.log_metric(parent_run_id, "n_cells", len(table))
    client.log_metric(parent_run_id, "n_failed_cells", n_failed)
    best_row = table.iloc[0] if len(table) and table.iloc[0]["status"] == "FINISHED" else None
    best = None
    if best_row is not None and not pd.isna(best_row[metric]):
        client.set_tag(parent_run_id, "best_run_id", best_row["run_id"])
        client.set_tag(parent_run_id, "best_cell", best_row["cell"])
        client.log_metric(parent_run_id, f"best_{metric}", float(best_row[metric]))
        best = f"{metric}={best_row[metric]:.4g} at {best_row['cell']} (run {best_row['run_id']})"
    report = Report(title=f"Sweep {parent_run_id}: {len(table)} cells ranked by {metric}")
    if best:
        report.add_text("Best cell", best)
    report.add_table("Leaderboard", table.drop(columns=["error"]) if n_failed == 0 else table)
    with tempfile.TemporaryDirectory(prefix="embclust-sweep-") as tmp:
        folder = Path(tmp)
        compare.write_leaderboard(table, folder, f"Sweep leaderboard by {metric}")
        figures = {}
        if len(swept) in (1, 2):
            figures["sweep_heatmaps"] = ("Metrics over the grid", grid_heatmaps(table, swept))
        k_param = next((p for p in _K_PARAMS if p in swept), None)
        if k_param:
            group = next((p for p in swept if p != k_param), None)
            figures["sweep_curves"] = (f"Metrics against {k_param}", metric_curves(table, k_param, group))
        variance = _pca_variance_curve(runs)
        if variance is not None:
            figures["pca_variance"] = ("PCA explained variance", variance)
        for stem, (heading, fig) in figures.items():
            plots.write_html(fig, folder / f"{stem}.html")
            report.add_figure(heading, fig)
        report.write(folder / "report.html")
        client.log_artifacts(parent_run_id, str(folder))
    if n_failed:
        log.warning("sweep: %d of %d cells FAILED (see leaderboard.html on run %s)", n_failed, len(table), parent_run_id)
    return best


def _axis_values(series: pd.Series) -> list:
    values = series.dropna().unique().tolist()
    try:
        return sorted(values, key=float)
    except (TypeError, ValueError):
        return sorted(values, key=str)


def grid_heatmaps(table: pd.DataFrame, swept: list[str]) -> go.Figure:
    """Silhouette, CH and DB over the grid; failed cells are marked FAILED."""
    x_key = next((p for p in _K_PARAMS if p in swept), swept[-1])
    y_key = next((p for p in swept if p != x_key), None)
    xs = _axis_values(table[x_key])
    ys = _axis_values(table[y_key]) if y_key else ["all"]
    metrics = [m for m in _HEATMAP_METRICS if m in table]
    fig = make_subplots(rows=1, cols=len(metrics), subplot_titles=metrics, horizontal_spacing=0.08)
    for col, metric in enumerate(metrics, start=1):
        z = np.full((len(ys), len(xs)), np.nan)
        text = np.full((len(ys), len(xs)), "", dtype=object)
        for _, row in table.iterrows():
            i = ys.index(row[y_key]) if y_key else 0
            j = xs.index(row[x_key])
            if row["status"] == "FINISHED" and not pd.isna(row[metric]):
                z[i, j] = row[metric]
                text[i, j] = f"{row[metric]:.3g}"
            else:
                text[i, j] = row["status"]
        fig.add_trace(
            go.Heatmap(
                z=z,
                x=[str(v) for v in xs],
                y=[str(v) for v in ys],
                text=text,
                texttemplate="%{text}",
                colorscale="Viridis_r" if metric in compare.LOWER_IS_BETTER else "Viridis",
                showscale=False,
                hovertemplate=f"{x_key}=%{{x}}<br>{y_key}=%{{y}}<br>{metric}=%{{z:.4g}}<extra></extra>",
            ),
            row=1,
            col=col,
        )
        fig.update_xaxes(title_text=x_key, type="category", row=1, col=col)
        fig.update_yaxes(title_text=y_key or "", type="category", row=1, col=col)
    fig.update_layout(title="Sweep grid (darker/brighter = better per metric; DB: lower is better)", height=500)
    return fig


def metric_curves(table: pd.DataFrame, k_param: str, group: str | None) -> go.Figure:
    """Each metric against k, one line per value of ``group`` (e.g. PCA size): elbow plots."""
    metrics = [m for m in _CURVE_METRICS if m in table and table[m].notna().any()]
    fig = make_subplots(rows=1, cols=len(metrics), subplot_titles=metrics, horizontal_spacing=0.06)
    done = table[table["status"] == "FINISHED"].copy()
    done["_k"] = done[k_param].astype(float)
    groups = _axis_values(done[group]) if group else [None]
    for g in groups:
        part = done if g is None else done[done[group] == g]
        part = part.sort_values("_k")
        for col, metric in enumerate(metrics, start=1):
            fig.add_trace(
                go.Scatter(
                    x=part["_k"],
                    y=part[metric],
                    mode="lines+markers",
                    name=f"{group}={g}" if group else metric,
                    legendgroup=str(g),
                    showlegend=col == 1,
                ),
                row=1,
                col=col,
            )
            fig.update_xaxes(title_text=k_param, row=1, col=col)
    fig.update_layout(title=f"Metrics against {k_param}", height=450)
    return fig


def _pca_variance_curve(runs: pd.DataFrame) -> go.Figure | None:
    """Cumulative explained variance of the largest PCA fitted in the sweep."""
    col = "params.preprocess.pca_components"
    if col not in runs:
        return None
    done = runs[(runs["status"] == "FINISHED") & runs[col].notna() & (runs[col] != "None")]
    if done.empty:
        return None
    largest = done.loc[done[col].astype(int).idxmax()]
    history = mlflow.MlflowClient().get_metric_history(largest["run_id"], "pca_cumulative_variance")
    if not history:
        return None
    history = sorted(history, key=lambda m: m.step)
    fig = go.Figure(go.Scatter(x=[m.step for m in history], y=[m.value for m in history], mode="lines+markers"))
    fig.update_layout(
        title=f"PCA cumulative explained variance ({largest[col]} components)",
        xaxis_title="components",
        yaxis_title="cumulative explained variance",
        yaxis_range=[0, 1.02],
        height=450,
    )
    return fig
