"""Leaderboards of runs from MLflow: ``python -m embclust.compare --experiment NAME``."""

from __future__ import annotations

import argparse
import html
import math
import sys
from pathlib import Path

import mlflow
import pandas as pd

from embclust.tracking import safe_csv

# Metrics where smaller is better; every other metric is maximised.
LOWER_IS_BETTER = frozenset({"davies_bouldin", "davies_bouldin_ref", "inertia", "noise_fraction"})
SCORE_COLUMNS = (
    "silhouette",
    "calinski_harabasz",
    "davies_bouldin",
    "silhouette_ref",
    "calinski_harabasz_ref",
    "davies_bouldin_ref",
    "stability",
    "ari",
    "nmi",
    "purity",
    "n_clusters",
    "dbcv",
    "noise_fraction",
    "inertia",
)
PARENT_TAG = "mlflow.parentRunId"


def lower_is_better(metric: str) -> bool:
    """Whether smaller values of ``metric`` are better (Davies-Bouldin, inertia, noise)."""
    return metric in LOWER_IS_BETTER


def is_better(a: float, b: float, metric: str) -> bool:
    """Whether metric value ``a`` beats ``b`` (NaN never wins)."""
    if a is None or (isinstance(a, float) and math.isnan(a)):
        return False
    if b is None or (isinstance(b, float) and math.isnan(b)):
        return True
    return a < b if metric in LOWER_IS_BETTER else a > b


def fetch_runs(experiment_name: str, parent_run_id: str | None = None) -> pd.DataFrame:
    """Runs of an experiment (only the children of ``parent_run_id`` when given), as a DataFrame."""
    experiment = mlflow.get_experiment_by_name(experiment_name)
    if experiment is None:
        raise SystemExit(f"error: no MLflow experiment named {experiment_name!r} at {mlflow.get_tracking_uri()}")
    query = f"tags.`{PARENT_TAG}` = '{parent_run_id}'" if parent_run_id else ""
    return mlflow.search_runs([experiment.experiment_id], filter_string=query, output_format="pandas")


def latest_sweep_parent(experiment_name: str) -> str | None:
    """Id of the most recent sweep parent run in the experiment, or None."""
    experiment = mlflow.get_experiment_by_name(experiment_name)
    if experiment is None:
        return None
    runs = mlflow.search_runs(
        [experiment.experiment_id],
        filter_string="tags.sweep_role = 'parent'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    return runs[0].info.run_id if runs else None


def cell_overrides(cell: str) -> dict[str, str]:
    """A cell's overrides (its ``sweep_cell`` tag) as ``{key: value}``; ``+``/``~`` prefixes dropped."""
    found = {}
    for item in cell.split():
        key, _, value = item.partition("=")
        found[key.lstrip("+~")] = value
    return found


# Config sections that do not make a cell (where runs are stored, the sweep's own settings): a
# resumed sweep's new cells may set them otherwise (sweep.resume=true) without being another cell.
NOT_CELL_IDENTITY = ("mlflow", "sweep", "cache", "run_name")


def swept_params(runs: pd.DataFrame) -> list[str]:
    """Config keys whose override differs between a sweep's cells, in override order.

    Read from the cells' overrides, not their params: a config group (``clusterer=kmeans,hdbscan``)
    is no param, and a cell stopped before it logged its params has none. Keys of the sections in
    :data:`NOT_CELL_IDENTITY` are not cell axes.
    """
    cells = runs["tags.sweep_cell"].dropna().unique() if "tags.sweep_cell" in runs else []
    parsed = [cell_overrides(cell) for cell in cells]
    keys: list[str] = []
    for overrides in parsed:
        for key in overrides:
            section = key.split(".", 1)[0].split("@", 1)[0]
            if key not in keys and section not in NOT_CELL_IDENTITY and len({o.get(key) for o in parsed}) > 1:
                keys.append(key)
    return keys


def _swept_values(runs: pd.DataFrame, key: str) -> pd.Series:
    """Each cell's value of ``key``: its logged param, else its override (config groups, stopped cells)."""
    overridden = runs["cell"].map(lambda cell: cell_overrides(cell).get(key))
    if f"params.{key}" not in runs:
        return overridden
    return runs[f"params.{key}"].where(runs[f"params.{key}"].notna(), overridden)


def leaderboard(runs: pd.DataFrame, metric: str = "silhouette", swept: list[str] | None = None) -> pd.DataFrame:
    """One row per cell (its latest run), best first by ``metric``; failed cells last."""
    if runs.empty:
        return pd.DataFrame()
    runs = runs[runs.get("tags.sweep_role", pd.Series(index=runs.index, dtype=object)) != "parent"]
    cell = runs["tags.sweep_cell"] if "tags.sweep_cell" in runs else runs["tags.mlflow.runName"]
    runs = runs.assign(cell=cell.fillna(runs["tags.mlflow.runName"]))
    # Latest attempt of each cell wins, so a resumed sweep shows the retried result; a cell is its
    # config (tag sweep_cell_key), whatever else its command line said (sweep.resume=true).
    key = runs["tags.sweep_cell_key"].fillna(runs["cell"]) if "tags.sweep_cell_key" in runs else runs["cell"]
    runs = runs.assign(_cell_key=key).sort_values("start_time").groupby("_cell_key", as_index=False, sort=False).last()
    table = pd.DataFrame(
        {
            "cell": runs["cell"],
            "status": runs["status"],
            **{p: _swept_values(runs, p) for p in (swept or [])},
            **{m: runs[f"metrics.{m}"] for m in SCORE_COLUMNS if f"metrics.{m}" in runs},
            "run_id": runs["run_id"],
            "error": runs.get("tags.error", pd.Series("", index=runs.index)).fillna(""),
        }
    )
    if metric not in table:  # a logged metric outside the usual columns (v_measure, ...) ranks too
        table[metric] = runs[f"metrics.{metric}"].to_numpy() if f"metrics.{metric}" in runs else math.nan
    ascending = lower_is_better(metric)
    table = table.sort_values(metric, ascending=ascending, na_position="last", kind="stable")
    table.insert(0, "rank", range(1, len(table) + 1))
    return table.reset_index(drop=True)


def write_leaderboard(table: pd.DataFrame, folder: Path, title: str) -> list[Path]:
    """Write ``leaderboard.csv`` and ``leaderboard.html`` into ``folder``."""
    csv_path, html_path = folder / "leaderboard.csv", folder / "leaderboard.html"
    safe_csv.write_csv(table, csv_path)
    body = table.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="", escape=True, border=0)
    html_path.write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>leaderboard</title>"
        "<style>body{font-family:sans-serif}table{border-collapse:collapse}"
        "td,th{padding:4px 10px;border-bottom:1px solid #ddd;text-align:right}</style></head>"
        f"<body><h2>{html.escape(title)}</h2>{body}</body></html>"
    )
    return [csv_path, html_path]


def _what_run_it_is(run_id: str | None) -> str:
    """For a --parent-run that leads nowhere: what that id is, and the id to pass instead."""
    if not run_id:
        return ""
    try:
        run = mlflow.MlflowClient().get_run(run_id)
    except Exception:  # noqa: BLE001 - MLflow raises its own error for an unknown or malformed id
        return f": there is no run {run_id!r} (pass a sweep's parent run id, or leave --parent-run out for the latest)"
    if run.data.tags.get("sweep_role") == "cell":
        return f": run {run_id} is a cell of the sweep {run.data.tags.get(PARENT_TAG, '?')}: pass that as --parent-run"
    return f": run {run_id} is not a sweep's parent (pass a parent run id, or --all to rank every run)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="embclust compare", description=__doc__)
    parser.add_argument("--experiment", default="embclust", help="MLflow experiment name")
    parser.add_argument("--tracking-uri", default=None, help="default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    parser.add_argument("--metric", default=None,
                        help="metric to rank by (DB and inertia: lower is better); default: the one the sweep ranked by "
                             "(its tag sweep.rank_metric), silhouette for --all")
    parser.add_argument("--parent-run", default=None, help="rank the cells of this sweep (default: latest sweep)")
    parser.add_argument("--all", action="store_true", help="rank every run of the experiment, not one sweep")
    parser.add_argument("--top", type=int, default=20, help="rows to print")
    parser.add_argument("--html", type=lambda s: Path(s).expanduser(), default=None, help="also write the table as HTML to this file")
    args = parser.parse_args(argv)
    if args.top < 1:
        parser.error(f"--top={args.top}: the number of rows to print must be at least 1")

    from mlflow.exceptions import MlflowException

    from embclust.errors import EmbclustError, first_line

    try:
        return _compare(args)
    except (EmbclustError, MlflowException) as exc:  # a store MLflow cannot read: one line, not a traceback
        print(f"error: {first_line(exc)}", file=sys.stderr)
        return 1
    except Exception as exc:  # a damaged or locked store surfaces as SQLAlchemy's or the driver's error
        from embclust.tracking.store import store_failure_message

        uri = mlflow.get_tracking_uri()
        said = store_failure_message(exc, uri)
        if said is None and type(exc).__module__.split(".")[0] not in ("sqlalchemy", "sqlite3", "alembic"):
            raise
        print(f"error: {said or f'the MLflow store {uri} cannot be read: {first_line(exc)}'}", file=sys.stderr)
        return 1


def _rank_metric(parent_run_id: str) -> str | None:
    """The metric the sweep ranked its cells by (tag ``sweep.rank_metric``), None where it is not known."""
    from mlflow.exceptions import MlflowException

    try:
        return mlflow.get_run(parent_run_id).data.tags.get("sweep.rank_metric")
    except MlflowException:
        return None


def _compare(args: argparse.Namespace) -> int:
    from embclust.tracking.store import check_store_to_read, default_tracking_uri

    mlflow.set_tracking_uri(args.tracking_uri or default_tracking_uri())
    given_as = "--tracking-uri" if args.tracking_uri else "MLFLOW_TRACKING_URI"
    check_store_to_read(mlflow.get_tracking_uri(), given_as=given_as)  # at once, not after MLflow's retries
    parent = None if args.all else (args.parent_run or latest_sweep_parent(args.experiment))
    runs = fetch_runs(args.experiment, parent)
    if args.metric is None:  # rank as the sweep did, so the first row is the best cell it named
        args.metric = (_rank_metric(parent) if parent and not runs.empty else None) or "silhouette"
    swept = swept_params(runs) if not runs.empty else []
    table = leaderboard(runs, args.metric, swept)
    if table.empty:
        where = f"sweep {parent} of experiment" if args.parent_run else "experiment"
        print(f"error: no runs found in {where} {args.experiment!r}{_what_run_it_is(args.parent_run)}", file=sys.stderr)
        return 1
    cells = runs[runs.get("tags.sweep_role", pd.Series(index=runs.index, dtype=object)) != "parent"]
    logged = [c[len("metrics."):] for c in cells.columns if c.startswith("metrics.") and cells[c].notna().any()]
    finished = cells.get("status", pd.Series(index=cells.index, dtype=object)).eq("FINISHED").any()
    if not finished:  # nothing to rank: say why each failed, instead of a table of NaN ranked by any name
        scope = f"sweep {parent}" if parent else f"experiment {args.experiment!r}"
        print(f"error: no run of {scope} finished, so nothing is ranked; its runs ({len(table)}):", file=sys.stderr)
        for _, row in table.iterrows():
            error = f": {row['error'][:300]}" if row["error"] else ""
            print(f"  {row['cell']} (run {row['run_id']}): {row['status']}{error}", file=sys.stderr)
        return 1
    if logged and args.metric not in logged:
        shown = [m for m in SCORE_COLUMNS if m in logged] or sorted(logged)[:12]
        print(f"error: --metric={args.metric!r} is not logged by these runs (rank by one of: {', '.join(shown)})",
              file=sys.stderr)
        return 1
    scope = f"sweep {parent}" if parent else "all runs"
    print(f"experiment {args.experiment!r}, {scope}, ranked by {args.metric}")
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.max_colwidth", 60):
        # The swept keys have a column each: the cell's whole command line (the store, the data
        # file, ...) would only widen the table past the screen.
        shown = table.drop(columns=["error", *(["cell"] if swept else [])])
        print(shown.head(args.top).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    if args.html:
        html = table.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="", escape=True, border=0)
        try:
            write_text_whole(args.html, html)
        except OSError as exc:
            from embclust.errors import path_error

            print(f"error: {path_error(exc, args.html, '--html')}", file=sys.stderr)
            return 1
        print(f"wrote {args.html}")
    return 0


def write_text_whole(path: Path, text: str) -> None:
    """Write ``text`` beside ``path`` and rename it into place: a failure leaves no half-written file."""
    import contextlib
    import os

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


if __name__ == "__main__":
    from embclust.console import with_closed_pipe_quiet

    sys.exit(with_closed_pipe_quiet(main)())
