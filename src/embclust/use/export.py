"""One table of a sweep (a row per item, a column of cluster labels per finished cell, the best map), or of a single run."""

from __future__ import annotations

import logging

import mlflow
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from embclust.errors import DataError
from embclust.use import runs
from embclust.use.assign import check_output, write_table

log = logging.getLogger(__name__)

PARENT_TAG = "mlflow.parentRunId"


def sweep_parent(run_id: str):
    """The sweep's parent run for a parent id (or for one of its cells' ids); None for a single run."""
    run = runs.get_run(run_id)
    if runs.is_sweep_parent(run):
        return run
    parent = run.data.tags.get(PARENT_TAG)
    if parent:
        log.info("run %s is a cell of sweep %s: exporting the sweep", run_id, parent)
        return runs.get_run(parent)
    return None


def export_run(run_id: str, output: str) -> pa.Table:
    """Write a single run's table: id, cluster, and its x / y, label and text where logged."""
    out_path = check_output(output)
    return _write_run_table(run_id, out_path)


def _write_run_table(run_id: str, out_path) -> pa.Table:
    table = runs.load_labels(runs.finished(runs.get_run(run_id)))
    write_table(table, out_path)
    log.info("run %s: %d rows (%s) written to %s", run_id, table.num_rows, ", ".join(table.column_names), out_path)
    return table


def finished_cells(parent) -> list:
    """The latest FINISHED run of each cell of the sweep, in start order."""
    children = mlflow.search_runs(
        experiment_ids=[parent.info.experiment_id],
        filter_string=f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'",
        order_by=["attributes.start_time ASC"],
        output_format="list",
    )
    latest: dict[str, object] = {}
    for child in children:
        cell = child.data.tags.get("sweep_cell") or child.data.tags.get("mlflow.runName") or child.info.run_id
        if child.info.status == "FINISHED":
            latest[cell] = child  # a resumed sweep's retry replaces the earlier attempt
        else:
            log.warning("cell %r (run %s) is %s: left out", cell, child.info.run_id, child.info.status)
    return list(latest.items())


def cell_names(cells: list[str]) -> list[str]:
    """Each cell's overrides, keeping only the keys whose value differs between cells (``clusterer=hdbscan``)."""
    parsed = [dict(item.split("=", 1) if "=" in item else (item, "") for item in cell.split()) for cell in cells]
    keys = list(dict.fromkeys(k for p in parsed for k in p))
    varying = [k for k in keys if len({p.get(k) for p in parsed}) > 1]
    if not varying:
        return list(cells)
    return [" ".join(f"{k}={p[k]}" for k in varying if k in p) for p in parsed]


def _align(base_ids: np.ndarray, table: pa.Table, cell: str) -> np.ndarray:
    """The cell's cluster labels in the order of ``base_ids`` (by id when the rows differ)."""
    ids = table["id"].to_numpy()
    if ids.size == base_ids.size and np.array_equal(ids.astype(str), base_ids.astype(str)):
        return table["cluster"].to_numpy()
    if len(pc.unique(table["id"])) < table.num_rows:
        raise DataError(f"cell {cell!r} clustered other rows than the best cell and its ids repeat: cannot line them up")
    position = {k: i for i, k in enumerate(ids.astype(str))}
    clusters = table["cluster"].to_numpy()
    return np.array([clusters[position[k]] if k in position else None for k in base_ids.astype(str)], dtype=object)


def export_sweep(run_id: str, output: str) -> pa.Table:
    """Write one table for sweep ``run_id``: id, label, the best cell's x / y, one column per cell (for a
    single run, its own table: :func:`export_run`)."""
    out_path = check_output(output)
    parent = sweep_parent(run_id)
    if parent is None:  # a single run: its own item -> cluster table
        return _write_run_table(run_id, out_path)
    if parent.info.status in ("RUNNING", "SCHEDULED"):  # cells still to come, the best not chosen yet
        runs.finished(parent)
    cells = finished_cells(parent)
    if not cells:
        raise DataError(f"sweep {parent.info.run_id} has no finished cells to export")
    best_id = parent.data.tags.get("best_run_id")
    best = next((run for _, run in cells if run.info.run_id == best_id), cells[0][1])
    base = runs.load_labels(best, ["id", "label", "x", "y"])
    if "x" not in base.column_names:
        log.warning("the best cell (run %s) logged no map coordinates: x and y left out", best.info.run_id)
    base_ids = base["id"].to_numpy()
    columns = {}
    for name, (cell, run) in zip(cell_names([c for c, _ in cells]), cells):
        labels = runs.load_labels(run, ["id", "cluster"])
        columns[name] = _align(base_ids, labels, cell)
    cell_columns = [pa.array(values, pa.int64()) for values in columns.values()]
    table = pa.Table.from_arrays(base.columns + cell_columns, names=base.column_names + list(columns))
    write_table(table, out_path)
    log.info("sweep %s: %d rows x %d cells (best cell run %s) written to %s", parent.info.run_id, table.num_rows,
             len(columns), best.info.run_id, out_path)
    return table
