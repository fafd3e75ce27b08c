"""Sweeps: one MLflow parent run per multirun, a nested child per cell, a summary at the end.

:class:`MlflowSweepCallback` (registered in ``conf/config.yaml`` under ``hydra.callbacks``) opens
the parent run before the sweeper launches any cell and writes the summary when all cells are
done. Cells, in this process or in launcher workers, find their parent through the environment
variable ``EMBCLUST_SWEEP``, which workers inherit.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import plotly.graph_objects as go
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from plotly.subplots import make_subplots

from embclust import compare, plots, tracking
from embclust.cache import stable_hash
from embclust.report import Report

log = logging.getLogger(__name__)

ENV_VAR = "EMBCLUST_SWEEP"
# Config keys that do not change a cell's result, left out of its identity.
_NOT_IDENTITY = ("mlflow", "sweep", "cache", "run_name")
_HEATMAP_METRICS = ("silhouette", "calinski_harabasz", "davies_bouldin")
_CURVE_METRICS = ("silhouette", "calinski_harabasz", "davies_bouldin", "inertia")
_K_PARAMS = ("clusterer.n_clusters", "clusterer.min_cluster_size")


@dataclass
class SweepCell:
    """Where one cell of a sweep belongs and how it is identified."""

    parent_run_id: str
    index: int
    total: int | None
    overrides: str
    config_key: str

    @property
    def position(self) -> str:
        return f"cell {self.index + 1}/{self.total if self.total else '?'}"


def config_key(cfg: DictConfig) -> str:
    """Hash of the resolved config that decides a cell's result."""
    container = OmegaConf.to_container(cfg, resolve=True)
    return stable_hash({k: v for k, v in container.items() if k not in _NOT_IDENTITY})


def current_cell(cfg: DictConfig) -> SweepCell | None:
    """The sweep cell this job is, or None outside a sweep opened by the callback."""
    raw = os.environ.get(ENV_VAR)
    if not raw:
        return None
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    info = json.loads(raw)
    hc = HydraConfig.get()
    return SweepCell(
        parent_run_id=info["parent_run_id"],
        index=int(hc.job.num),
        total=info.get("total"),
        overrides=" ".join(sorted(hc.overrides.task)),
        config_key=config_key(cfg),
    )


def finished_run_of(cell: SweepCell, experiment_id: str) -> mlflow.entities.Run | None:
    """A FINISHED earlier run of the same cell under the same parent, if any."""
    runs = mlflow.search_runs(
        [experiment_id],
        filter_string=(
            f"tags.`{compare.PARENT_TAG}` = '{cell.parent_run_id}' and tags.sweep_cell_key = '{cell.config_key}' "
            "and attributes.status = 'FINISHED'"
        ),
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    return runs[0] if runs else None


def count_cells(config: DictConfig) -> int | None:
    """Number of cells the configured sweeper will launch, when it can be known up front."""
    hydra_cfg = config.hydra
    sweeper = hydra_cfg.sweeper
    if "n_trials" in sweeper:
        return int(sweeper.n_trials)
    try:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser

        params = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
        overrides = OverridesParser.create().parse_overrides([*params, *hydra_cfg.overrides.task])
        return sum(len(batch) for batch in BasicSweeper.split_arguments(overrides, None))
    except Exception:  # noqa: BLE001 - a progress count must never stop a sweep
        return None


class MlflowSweepCallback(Callback):
    """Open the sweep's parent MLflow run, and close it with a summary of all cells."""

    def __init__(self) -> None:
        self.parent_run_id: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            experiment_id = tracking.setup_tracking(config.mlflow.tracking_uri, config.mlflow.experiment_name)
        except tracking.TrackingServerUnreachable as exc:
            # Hydra turns a callback's exceptions into warnings; stop before any cell starts.
            log.error("%s", exc)
            raise SystemExit(1) from None
        sweep_params = {str(k): str(v) for k, v in (config.hydra.sweeper.get("params") or {}).items()}
        task_overrides = list(config.hydra.overrides.task)
        task_cfg = {k: v for k, v in config.items() if k != "hydra"}
        container = OmegaConf.to_container(OmegaConf.create(task_cfg), resolve=True)
        key = stable_hash(
            {
                "config": {k: v for k, v in container.items() if k not in _NOT_IDENTITY},
                "overrides": sorted(task_overrides),
                "params": sweep_params,
            }
        )
        client = mlflow.MlflowClient()
        previous = None
        if config.sweep.resume:
            found = mlflow.search_runs(
                [experiment_id],
                filter_string=f"tags.sweep_role = 'parent' and tags.sweep_key = '{key}'",
                order_by=["attributes.start_time DESC"],
                max_results=1,
                output_format="list",
            )
            previous = found[0] if found else None
        if previous is not None:
            self.parent_run_id = previous.info.run_id
            client.update_run(self.parent_run_id, status="RUNNING")
            log.info("sweep: resuming parent run %s (finished cells are skipped)", self.parent_run_id)
        else:
            sweep_desc = " ".join([*task_overrides, *(f"{k}={v}" for k, v in sweep_params.items())])
            run = client.create_run(
                experiment_id,
                run_name=config.get("run_name") or f"sweep {sweep_desc}"[:200],
                tags={
                    "sweep_role": "parent",
                    "sweep_key": key,
                    "hydra_overrides": " ".join(task_overrides) or "(none)",
                    "sweep_params": json.dumps(sweep_params),
                    "sweep.metric": config.sweep.metric,
                    **tracking.git_state(Path(__file__).resolve().parent),
                },
            )
            self.parent_run_id = run.info.run_id
            log.info("sweep: parent run %s", self.parent_run_id)
        total = count_cells(config)
        os.environ[ENV_VAR] = json.dumps({"parent_run_id": self.parent_run_id, "total": total})
        if total:
            log.info("sweep: %d cells", total)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        os.environ.pop(ENV_VAR, None)
        if self.parent_run_id is None:
            return
        client = mlflow.MlflowClient()
        try:
            best = summarize_sweep(self.parent_run_id, config.mlflow.experiment_name, config.sweep.metric)
        except Exception as exc:  # noqa: BLE001 - record the failure on the parent, then re-raise
            client.set_tag(self.parent_run_id, "error", f"summary failed: {type(exc).__name__}: {exc}"[:5000])
            client.set_terminated(self.parent_run_id, "FAILED")
            raise
        client.set_terminated(self.parent_run_id, "FINISHED")
        if best:
            log.info("sweep done: best %s", best)


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


def cell_metric(run: mlflow.entities.Run, metric: str) -> float:
    """The chosen metric of a finished run, NaN when it was not scored."""
    return float(run.data.metrics.get(metric, math.nan))
