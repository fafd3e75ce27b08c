"""Passes over the rows as Ray Data jobs: each task reads its rows where it runs.

A pass is a function of (row block, what the driver broadcasts: centres, means) whose block
results are folded per group of :data:`embclust.blocks.GROUP_BLOCKS` consecutive blocks. Here a
group is one Ray Data row (``from_items`` of group numbers, ``map_batches`` one group per
batch): the task reads the group's rows from the :class:`~embclust.engine.rows.RowSource` (a
file every worker opens), runs the pass on each block with one BLAS thread, folds, and sends back
only the fold (per-cluster sums and counts, a distance total, the group's labels). The driver
adds the groups' results in group order, as a local run does, so both engines give the same
bits. What crosses the network is the pass function with its broadcast values and the folds;
the rows never reach the driver.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import signal
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from embclust.engine.rows import RowSource, RowsView
from embclust.errors import ConfigError, EmbclustError

log = logging.getLogger(__name__)


def connect() -> None:
    """Join the Ray cluster of ``RAY_ADDRESS``, or the one ``ray start`` left running here, or
    start a local one; a run already inside a Ray task uses its cluster. A cluster that does not
    answer is one line (Ray itself would wait minutes)."""
    # Ray Data logs every execution's plan and progress at INFO on stderr; the run says what ran.
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")
    try:
        import ray
    except ImportError:
        raise ConfigError("engine=ray needs Ray: pip install 'embclust[ray]'") from None
    if not ray.is_initialized():
        from embclust.engine.address import answers, without_explicit_address

        explicit = os.environ.get("RAY_ADDRESS")
        if explicit and not answers(explicit):
            raise EmbclustError(f"engine=ray: the Ray cluster at RAY_ADDRESS={explicit} is unreachable: start it with "
                                "`ray start --head`, or unset RAY_ADDRESS to start a local Ray")
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")
        # ray.init installs a SIGTERM handler that exits at once; the run's own handlers (which
        # end the MLflow run KILLED with its stage) stay in place.
        main = threading.current_thread() is threading.main_thread()
        handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)} if main else {}
        try:
            ray.init(address=None if explicit else without_explicit_address(), logging_level=logging.WARNING, log_to_driver=False,
                     include_dashboard=False)
        finally:
            for sig, handler in handlers.items():
                if handler is not None:
                    signal.signal(sig, handler)
    ctx = ray.data.DataContext.get_current()
    ctx.print_on_execution_start = False
    # Ray Data's progress bars redraw many times a second (from a cell's task, on the sweep's
    # stderr); each pass says on stderr what it did when it is done.
    ctx.enable_progress_bars = False
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "Progress bars disabled. To enable..."
    # A failed task is reported by the run in one line (remote_error); Ray Data would also print
    # it at ERROR with its traceback. Its warnings (a pass waiting for resources) still show.
    for handler in logging.getLogger("ray.data").handlers:
        if not any(isinstance(f, _NoErrors) for f in handler.filters) and getattr(handler, "stream", None) is not None:
            handler.addFilter(_NoErrors())


class _NoErrors(logging.Filter):
    """Drops ERROR records from Ray Data's console handler: the run reports a failed pass itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.ERROR


def workers_on_this_machine() -> bool:
    """Whether every alive node of the connected Ray cluster is this machine (a local Ray)."""
    import ray

    here = ray.util.get_node_ip_address()
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    return bool(nodes) and all(node.get("NodeManagerAddress") == here for node in nodes)


class RayRows(RowsView):
    """A row matrix on files that Ray workers read; ``map_groups`` runs a pass there."""

    def __init__(self, source: RowSource, labels_sink=None):
        self.source = source
        # Where the last pass's tasks write the labels dataset (embclust.engine.labels.LabelsSink).
        self.labels_sink = labels_sink
        self.passes = 0
        self.seconds = 0.0

    def view_of(self, source: RowSource) -> RayRows:
        return RayRows(source)

    def map_groups(self, block_fn: Callable[[slice, np.ndarray], Any], fold: Callable[[Iterable], Any],
                   block_rows: int, group_blocks: int, progress: str | None = None) -> list:
        """``fold(block_fn(rows, X[rows]) for each block of a group)`` for every group, in group order."""
        import ray

        connect()
        n = self.shape[0]
        group_rows = block_rows * group_blocks
        n_groups = -(-n // group_rows)
        source = self.source

        def run_groups(batch: dict) -> dict:
            from threadpoolctl import threadpool_limits

            results = []
            with threadpool_limits(limits=1, user_api="blas"):
                for group in batch["group"]:
                    start = int(group) * group_rows
                    stop = min(n, start + group_rows)
                    X = source.read(start, stop)
                    parts = (block_fn(slice(a, min(stop, a + block_rows)), X[a - start : min(stop, a + block_rows) - start])
                             for a in range(start, stop, block_rows))  # folded as they come, as a local pass folds them
                    results.append(pickle.dumps(fold(parts), protocol=pickle.HIGHEST_PROTOCOL))
            return {"group": np.asarray(batch["group"]), "result": np.array(results, dtype=object)}

        started = time.perf_counter()
        items = ray.data.from_items([{"group": g} for g in range(n_groups)], override_num_blocks=n_groups)
        try:
            rows = items.map_batches(run_groups, batch_size=1, num_cpus=1, batch_format="numpy").take_all()
        except Exception as exc:  # noqa: BLE001 - a task's error comes back as Ray's, its traceback in the text
            what = (progress or "a pass over the rows").split(",")[0]
            raise EmbclustError(f"engine=ray: {what} failed on the Ray cluster: {remote_error(exc)}") from None
        rows.sort(key=lambda r: int(r["group"]))
        if len(rows) != n_groups:  # pragma: no cover - Ray Data returns every row or raises
            raise RuntimeError(f"engine=ray: {len(rows)} of {n_groups} row groups came back")
        self.passes += 1
        self.seconds += time.perf_counter() - started
        if progress:
            log.info("%s: %d / %d done on Ray, %d row groups (%.1f s)", progress, n, n, n_groups, time.perf_counter() - started)
        return [pickle.loads(r["result"]) for r in rows]


# An exception's last line in a traceback: "Type: message" or "Type", unindented, the type a dotted name.
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(?::\s.*)?$")
_RAY_WRAPPER = "The above exception was the direct cause of the following exception"


def remote_error(exc: BaseException) -> str:
    """The error a Ray task raised, as ``Type: message``: the last exception line of its remote
    traceback before Ray's own wrapper (the original exception object does not come back)."""
    text = str(exc).replace("\x1b[36m", "").replace("\x1b[39m", "")
    log.debug("engine=ray: the failed task's error as Ray returned it:\n%s", text)
    if _RAY_WRAPPER in text:  # Ray's UserCodeException wraps the task's own error last
        text = text.rsplit(_RAY_WRAPPER, 1)[0]
    found = [line.strip() for line in text.splitlines()
             if line and not line[0].isspace() and _EXCEPTION_LINE.match(line.strip()) and not line.startswith("ray.")]
    if found:
        return found[-1]
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {first}"
