"""Sweep summary on the parent run: leaderboard, heatmaps over the grid, metric curves."""

from __future__ import annotations

import logging
import math
import tempfile
import time
from dataclasses import dataclass
from typing import Callable
from pathlib import Path

import mlflow
from mlflow.entities import Metric
import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from embclust import tracking
from embclust.sweep import advice, compare
from embclust.sweep.plan import short_override
from embclust.tracking import plots
from embclust.tracking.report import Report

log = logging.getLogger(__name__)

_HEATMAP_METRICS = ("silhouette", "calinski_harabasz", "davies_bouldin")
_K_PARAMS = ("clusterer.n_clusters", "clusterer.min_cluster_size")


@dataclass
class SweepSummary:
    """What the summary found: cell counts and the best cell (None when no cell was scored)."""

    n_cells: int = 0
    n_failed: int = 0
    n_scored: int = 0
    best_run_id: str | None = None
    best: str | None = None
    advice: str | None = None
    caution: str | None = None  # why the best cell's score is not on the same footing as the others'
    edge: str | None = None  # the best cell lies on the first or last value of a swept axis
    first_error: str | None = None  # the error of the first failed cell, in the leaderboard's order
    n_cells_with_runs: int = 0  # distinct cells that have a run (a cell rerun after a failure has two)


def summarize_sweep(
    parent_run_id: str,
    experiment_name: str,
    metric: str,
    complete_best: Callable[[str], Report | None] | None = None,
) -> SweepSummary:
    """Log the leaderboard, heatmaps, curves and best-cell tags on the parent run.

    Works whatever the cells did: with no scored cell the leaderboard still lists every cell with
    its status and error, and no best cell is named. ``complete_best(run_id)`` gives the best cell
    its full treatment; the figures it returns join the parent's ``report.html``.
    """
    runs = compare.fetch_runs(experiment_name, parent_run_id)
    client = mlflow.MlflowClient()
    if runs.empty:
        client.log_metric(parent_run_id, "n_cells", 0)
        return SweepSummary()
    swept = compare.swept_params(runs)
    table = compare.leaderboard(runs, metric, swept)
    n_failed = int((table["status"] == "FAILED").sum())
    scored = table[(table["status"] == "FINISHED") & table[metric].notna()]
    keys = runs.get("tags.sweep_cell_key")
    summary = SweepSummary(n_cells=len(table), n_failed=n_failed, n_scored=len(scored),
                           n_cells_with_runs=len(table) if keys is None else int(keys.nunique()))
    if n_failed and "error" in table:
        errors = [str(e) for e in table.loc[table["status"] == "FAILED", "error"] if str(e)]
        summary.first_error = errors[0] if errors else None
    client.log_batch(
        parent_run_id,
        metrics=[
            Metric("n_cells", len(table), _now(), 0),
            Metric("n_failed_cells", n_failed, _now(), 0),
            Metric("n_scored_cells", len(scored), _now(), 0),
        ],
    )
    if len(scored):
        best_row = scored.iloc[0]
        summary.best_run_id = str(best_row["run_id"])
        client.set_tag(parent_run_id, "best_run_id", best_row["run_id"])
        client.set_tag(parent_run_id, "best_cell", best_row["cell"])
        client.log_metric(parent_run_id, f"best_{metric}", float(best_row[metric]))
        # the swept values say which cell it is; the overrides every cell shares do not
        where = " ".join(f"{key}={best_row[key]}" for key in swept)
        summary.best = f"{metric}={best_row[metric]:.4g}{f' at {where}' if where else ''} (run {best_row['run_id']})"
        summary.caution = noise_caution(scored, metric, swept)
        if summary.caution:
            client.set_tag(parent_run_id, "best_caution", summary.caution[:5000])
        summary.edge = edge_of_grid(table, best_row, swept)
        if summary.edge:
            client.set_tag(parent_run_id, "best_at_edge", summary.edge[:5000])
    best_report = None
    if complete_best is None and summary.best_run_id:  # full cells: the best one is complete already
        client.set_tag(summary.best_run_id, "sweep_best", "true")
    if complete_best is not None and summary.best_run_id:
        # First: it is the sweep's last use of the shared work (data, projections, reference
        # distances), which it frees before its analyses; the figures below then add to less.
        log.info("sweep: full report for the best cell, run %s", summary.best_run_id)
        best_report = complete_best(summary.best_run_id)
    report = Report(title=f"Sweep {parent_run_id}: {len(table)} cells ranked by {metric}")
    if summary.best:
        report.add_text(
            "Best cell",
            f"{summary.best}. Its run holds the model and the analysis tables; its map and analyses "
            f"are at the end of this report." + (f" Caution: {summary.caution}." if summary.caution else "")
            + (f" Edge of the grid: {summary.edge}." if summary.edge else ""),
        )
    elif len(table):
        report.add_text("Best cell", f"none: no cell was scored on {metric} ({n_failed} of {len(table)} failed)")
    report.add_table("Leaderboard", shown_leaderboard(table.drop(columns=["error"]) if n_failed == 0 else table, swept))
    with tempfile.TemporaryDirectory(prefix="embclust-sweep-") as tmp:
        folder = Path(tmp)
        compare.write_leaderboard(table, folder, f"Sweep leaderboard by {metric}")
        figures = {}
        if len(scored):
            heat_metrics = tuple(dict.fromkeys((metric, *_HEATMAP_METRICS)))
            if len(swept) in (1, 2):
                figures["sweep_heatmaps"] = ("Metrics over the grid", grid_heatmaps(table, swept, heat_metrics))
            k_param = next((p for p in _K_PARAMS if p in swept), None)
            if k_param:
                group = next((p for p in swept if p != k_param), None)
                figures["sweep_curves"] = (
                    f"Metrics against {k_param} (stars: knees)", advice.metric_curves(table, k_param, group)
                )
                if "inertia" in table and table["inertia"].notna().any():
                    knees = advice.knee_points(table, k_param, group, "inertia")
                    knee_metrics = advice.knee_metric_names(knees, group)
                    if knee_metrics:
                        client.log_batch(parent_run_id, metrics=[Metric(k, v, _now(), 0) for k, v in knee_metrics.items()])
                    summary.advice = advice.knee_advice(knees, k_param, group)
                    report.add_text("Knee (advice)", summary.advice)
            variance = _pca_variance_curve(runs)
            if variance is not None:
                figures["pca_variance"] = ("PCA explained variance", variance)
                variance_by_pca = _variance_by_pca(runs)
                ranked = metric if metric.endswith("_ref") else "silhouette_ref"
                if len(variance_by_pca) > 1 and ranked in table:
                    figures["sweep_tradeoff"] = (
                        "Silhouette (reference space) against explained variance",
                        advice.tradeoff_figure(table, variance_by_pca, metric=ranked),
                    )
        for stem, (heading, fig) in figures.items():
            plots.write_html(fig, folder / f"{stem}.html")
            report.add_figure(heading, fig)
        if best_report is not None:
            report.sections.extend((f"Best cell: {h}", c) for h, c in best_report.sections)
        _fill_header(report, summary, table, scored, swept, metric, best_report)
        report.write(folder / "report.html")
        tracking.log_artifacts(folder, parent_run_id)
    if n_failed:
        log.warning("sweep: %d of %d cells FAILED (see leaderboard.csv on run %s)", n_failed, len(table), parent_run_id)
    return summary


def _now() -> int:
    return int(time.time() * 1000)


def cell_label(cell: str, swept: list[str]) -> str:
    """A cell named by what varies between cells: its swept overrides, a path by its last part."""
    overrides = cell.split()
    varied = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") in swept]
    return " ".join(short_override(o) for o in (varied or overrides))


def shown_leaderboard(table: pd.DataFrame, swept: list[str]) -> pd.DataFrame:
    """The leaderboard as the report shows it: cells named by their swept values, paths by their last part.

    ``leaderboard.csv`` and the ``best_cell`` tag keep the cells' full overrides.
    """
    if table.empty:
        return table
    shown = table.assign(cell=table["cell"].map(lambda cell: cell_label(str(cell), swept)))
    for key in swept:
        if key in shown and shown[key].dtype == object:
            shown[key] = shown[key].map(lambda v: v if pd.isna(v) else short_override(f"{key}={v}").split("=", 1)[1])
    return shown


def _fill_header(
    report: Report,
    summary: SweepSummary,
    table: pd.DataFrame,
    scored: pd.DataFrame,
    swept: list[str],
    metric: str,
    best_report: Report | None,
) -> None:
    """The sweep report's header: the data, what was swept, the best cell's scores and the advice."""
    shown = shown_leaderboard(table, swept)
    config: dict[str, object] = {}
    for key in (k for k in swept if k in shown):
        values = [str(v) for v in _axis_values(shown[key])]
        config[key] = ", ".join(values) if len(values) <= 8 else f"{values[0]} .. {values[-1]} ({len(values)} values)"
    config["ranked by"] = metric
    config["cells"] = f"{summary.n_cells} ({summary.n_scored} scored, {summary.n_failed} failed)"
    scores = {}
    if len(scored):
        best_row = scored.iloc[0]
        config["best cell"] = cell_label(str(best_row["cell"]), swept)
        scores = {m: float(best_row[m]) for m in compare.SCORE_COLUMNS if m in best_row and pd.notna(best_row[m])}
    advice_lines = [
        summary.edge,
        summary.caution and f"caution: {summary.caution}",
        summary.advice,
        summary.n_failed and f"{summary.n_failed} of {summary.n_cells} cells FAILED: their errors are in the leaderboard",
    ]
    report.set_header(config=config, scores=scores, advice=[line[:1].upper() + line[1:] for line in advice_lines if line],
                      subtitle=f"Best cell: {summary.best}" if summary.best else None)
    if best_report is not None:
        report.set_header(dataset=best_report.dataset, rows=best_report.rows, columns=best_report.columns)


def _axis_values(series: pd.Series) -> list:
    values = series.dropna().unique().tolist()
    try:
        return sorted(values, key=float)
    except (TypeError, ValueError):
        return sorted(values, key=str)


# Noise share of the best cell, above that of the least noisy scored cell, worth a caution.
NOISE_CAUTION = 0.05


def noise_caution(scored: pd.DataFrame, metric: str, swept: list[str]) -> str | None:
    """A caution when the best cell (first row) won on its non-noise rows over cells that cluster more of them.

    Scores leave noise rows (HDBSCAN's -1) out, so a cell that calls many rows noise can outscore
    one that has to place every row; the ranking alone does not say so.
    """
    if "noise_fraction" not in scored or len(scored) < 2:
        return None
    noise = pd.to_numeric(scored["noise_fraction"], errors="coerce").fillna(0.0)
    best = float(noise.iloc[0])
    if best - float(noise.min()) < NOISE_CAUTION:
        return None
    cleaner = scored[noise <= noise.min() + 1e-12].iloc[0]
    where = " ".join(f"{key}={cleaner[key]}" for key in swept) or str(cleaner["run_id"])
    return (
        f"the best cell leaves {best:.0%} of the rows as noise and is scored on the other {1 - best:.0%}; "
        f"the best cell with {float(noise.min()):.0%} noise is {where} ({metric}={cleaner[metric]:.4g}): "
        "compare noise_fraction in the leaderboard before taking it"
    )


# The lowest value a swept key takes: a best cell there is not at an edge the grid can widen.
_LOWEST_ALLOWED = {"n_clusters": 2, "min_cluster_size": 2, "pca_components": 1, "umap_components": 1}


def edge_of_grid(table: pd.DataFrame, best_row: pd.Series, swept: list[str]) -> str | None:
    """Advice when the best cell sits on the first or last value of a numeric swept axis of 3+ values.

    A score that keeps rising (silhouette in the reference space with k on text embeddings) puts
    the best cell on the grid's edge, where the optimum may lie outside what was tried.
    """
    edges = []
    for key in swept:
        values = pd.to_numeric(table[key], errors="coerce").dropna().unique()
        best = pd.to_numeric(pd.Series([best_row[key]]), errors="coerce").iloc[0]
        if values.size < 3 or pd.isna(best):
            continue
        low, high = float(values.min()), float(values.max())
        if float(best) == low != high and low <= _LOWEST_ALLOWED.get(key.rsplit(".", 1)[-1], -math.inf):
            continue  # nothing lower can be tried (k = 2): not an edge to widen
        if float(best) in (low, high):
            side = "largest" if float(best) == high else "smallest"
            edges.append(f"{key}={best_row[key]} is the {side} value tried ({_number(low)}..{_number(high)})")
    if not edges:
        return None
    return (
        f"the best cell lies at the edge of the grid: {'; '.join(edges)}; the optimum may lie outside it: "
        "widen the grid that way, or read the knee and stability before taking it"
    )


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def grid_heatmaps(table: pd.DataFrame, swept: list[str], metrics: tuple[str, ...] = _HEATMAP_METRICS) -> go.Figure:
    """Metrics (silhouette, CH, DB, ...) over the grid; failed cells are marked FAILED."""
    x_key = next((p for p in _K_PARAMS if p in swept), swept[-1])
    y_key = next((p for p in swept if p != x_key), None)
    xs = _axis_values(table[x_key])
    ys = _axis_values(table[y_key]) if y_key else ["all"]
    metrics = [m for m in metrics if m in table and table[m].notna().any()]
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
                colorscale="Viridis_r" if compare.lower_is_better(metric) else "Viridis",
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


def _variance_by_pca(runs: pd.DataFrame) -> dict[int, float]:
    """Cumulative explained variance of each PCA size the sweep's cells logged."""
    col, metric = "params.preprocess.pca_components", "metrics.pca_explained_variance"
    if col not in runs or metric not in runs:
        return {}
    done = runs[runs[col].notna() & (runs[col] != "None") & runs[metric].notna()]
    return {int(k): float(v) for k, v in done.groupby(done[col].astype(int))[metric].first().items()}


def _pca_variance_curve(runs: pd.DataFrame) -> go.Figure | None:
    """Cumulative explained variance at each PCA size of the sweep (metric ``pca_explained_variance``)."""
    col, metric = "params.preprocess.pca_components", "metrics.pca_explained_variance"
    if col not in runs or metric not in runs:
        return None
    done = runs[(runs["status"] == "FINISHED") & runs[col].notna() & (runs[col] != "None") & runs[metric].notna()]
    if done.empty:
        return None
    points = done.groupby(done[col].astype(int))[metric].first().sort_index()
    if len(points) < 2:  # one PCA size: one point is no curve
        return None
    fig = go.Figure(go.Scatter(x=points.index, y=points.values, mode="lines+markers"))
    fig.update_layout(
        title="PCA cumulative explained variance at each size in the sweep",
        xaxis_title="components",
        yaxis_title="cumulative explained variance",
        yaxis_range=[0, 1.02],
        height=450,
    )
    return fig
