"""Passes over rows in blocks: the same function of (block of rows, small state) wherever it runs.

A pass maps a function over consecutive row blocks and returns the per-block results in block
order, so whoever adds them up does so in one fixed order. Blocks run on a pool of threads with
one BLAS thread each: OpenBLAS's float32 GEMM rounds differently with 1 and 2 threads, and a
block's result must not depend on how many threads there are.
"""

from __future__ import annotations

import logging
import mmap
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from embclust.errors import PathError, os_error_reason

log = logging.getLogger(__name__)
_threadpool_controller = None


def one_blas_thread():
    """A context in which BLAS runs on one thread (threadpoolctl), for results that must not
    depend on the thread count: OpenBLAS's float32 GEMM rounds by it.

    One threadpoolctl controller serves the process: ``threadpool_limits`` builds a new one per
    call, scanning every loaded library (3-20 ms; 2.1 s of a 25-cell sweep's 32 s in a py-spy
    profile). It is built on first use, once numpy's, scipy's and scikit-learn's BLAS and OpenMP
    libraries are loaded."""
    return threadpool_controller().limit(limits=1, user_api="blas")


def threadpool_controller():
    """The process's threadpoolctl controller (see :func:`one_blas_thread`)."""
    global _threadpool_controller
    if _threadpool_controller is None:
        import scipy.linalg  # noqa: F401  (loads scipy's own BLAS before the scan)
        import sklearn.cluster  # noqa: F401  (and scikit-learn's OpenMP runtime)
        from threadpoolctl import ThreadpoolController

        _threadpool_controller = ThreadpoolController()
    return _threadpool_controller


def threads_now() -> int:
    """The most threads a BLAS or OpenMP pool may use here now (threadpoolctl limits included)."""
    info = threadpool_controller().info()
    return max((int(i.get("num_threads") or 1) for i in info), default=1)


BLOCK_ROWS = 8_192
# Row-sized results larger than this (MB) live in a file-backed temporary mapping (memory.spill_above_mb).
DEFAULT_SPILL_ABOVE_MB = 1024
_spill_above_mb: float | None = DEFAULT_SPILL_ABOVE_MB


def set_spill_above_mb(value: float | None) -> None:
    """Size (MB) above which :func:`scratch_matrix` maps a temporary file (None: never)."""
    global _spill_above_mb
    _spill_above_mb = None if value is None else float(value)


# Passes over at least this many rows report progress on stderr, at most every PROGRESS_SECONDS.
PROGRESS_ROWS = 1_000_000
PROGRESS_SECONDS = 10.0


class Progress:
    """``what: done / total rows (s)`` on stderr while a long pass runs (silent below PROGRESS_ROWS)."""

    def __init__(self, what: str, total: int) -> None:
        import time

        self.what, self.total, self.done = what, int(total), 0
        self._clock = time.perf_counter
        self.started = self.last = self._clock()

    def __call__(self, rows: int) -> None:
        self.done += int(rows)
        now = self._clock()
        if self.total >= PROGRESS_ROWS and now - self.last >= PROGRESS_SECONDS and self.done < self.total:
            self.last = now
            log.info("%s: %d / %d rows (%.0f s)", self.what, self.done, self.total, now - self.started)


def spill_above_mb() -> float | None:
    return _spill_above_mb


def is_spilled(array: np.ndarray) -> bool:
    """Whether ``array`` lies in a temporary file mapped by :func:`scratch_matrix`."""
    base = array
    while isinstance(base, np.ndarray):
        base = base.base
    if isinstance(base, memoryview):
        base = base.obj
    return isinstance(base, mmap.mmap)


def scratch_matrix(n_rows: int, n_cols: int, dtype=np.float32, what: str = "matrix") -> np.ndarray:
    """An uninitialised ``(n_rows, n_cols)`` array, in memory or, above ``memory.spill_above_mb``,
    mapped onto an unnamed temporary file under TMPDIR.

    The file's pages are the kernel's to write back and drop (file pages, not anonymous memory),
    so a matrix the size of the data never needs that much RAM. The file has no name: it is gone
    when the array is, even if the process is killed. Its space is reserved first, so a full disk
    is one clear error here, not a crash on a later write.
    """
    nbytes = int(n_rows) * int(n_cols) * np.dtype(dtype).itemsize
    if _spill_above_mb is None or nbytes <= _spill_above_mb * 2**20 or nbytes == 0:
        return np.empty((n_rows, n_cols), dtype=dtype)
    folder = tempfile.gettempdir()
    try:
        with tempfile.TemporaryFile(dir=folder) as fh:
            os.posix_fallocate(fh.fileno(), 0, nbytes)
            mapping = mmap.mmap(fh.fileno(), nbytes)
    except OSError as exc:
        raise PathError(
            f"cannot keep the {what} ({nbytes / 2**30:.1f} GB) in a temporary file under {folder}: "
            f"{os_error_reason(exc, folder)}; point TMPDIR at a disk with room, or raise "
            "memory.spill_above_mb to keep it in memory"
        ) from None
    log.info("%s: %d x %d (%.1f GB) kept in a temporary file under %s, not in memory (memory.spill_above_mb=%g)",
             what, n_rows, n_cols, nbytes / 2**30, folder, _spill_above_mb)
    return np.frombuffer(mapping, dtype=dtype).reshape(n_rows, n_cols)


def row_blocks(n_rows: int, block_rows: int = BLOCK_ROWS) -> list[slice]:
    """Consecutive row slices of at most ``block_rows`` rows covering ``n_rows`` rows."""
    return [slice(start, min(n_rows, start + block_rows)) for start in range(0, n_rows, block_rows)]


def map_on_threads(fn: Callable[[Any], Any], items: list, n_threads: int,
                   done: Callable[[Any], None] | None = None) -> list:
    """``fn(item)`` for every item, results in item order, on up to ``n_threads`` threads with one
    BLAS thread each; ``done(item)`` is called as each result is collected (progress)."""
    items = list(items)
    results = []
    with one_blas_thread():
        if n_threads <= 1 or len(items) <= 1:
            for item in items:
                results.append(fn(item))
                if done is not None:
                    done(item)
            return results
        with ThreadPoolExecutor(max_workers=min(n_threads, len(items))) as pool:
            for item, result in zip(items, pool.map(fn, items)):
                results.append(result)
                if done is not None:
                    done(item)
            return results


def map_blocks(fn: Callable[[slice], Any], n_rows: int, n_threads: int, block_rows: int = BLOCK_ROWS,
               progress: str | None = None) -> list:
    """``fn(block)`` for every row block, in block order, on ``n_threads`` threads with one BLAS
    thread each; ``progress`` names the pass in progress lines on stderr for large data."""
    tick = Progress(progress, n_rows) if progress else None
    return map_on_threads(fn, row_blocks(n_rows, block_rows), n_threads,
                          None if tick is None else lambda block: tick(block.stop - block.start))


# Block results of a pass are folded per group of this many consecutive blocks (524,288 rows),
# and the groups' folds added in group order: the same float64 sums whether the blocks run on
# threads here or one group per Ray task (embclust.engine.ray_rows).
GROUP_BLOCKS = 64


def iter_on_threads(fn: Callable[[Any], Any], items: list, n_threads: int,
                    done: Callable[[Any], None] | None = None) -> Iterator[Any]:
    """``fn(item)`` for every item, yielded in item order as they are ready, on up to ``n_threads``
    threads with one BLAS thread each: the consumer holds one result at a time."""
    items = list(items)
    with one_blas_thread():
        if n_threads <= 1 or len(items) <= 1:
            for item in items:
                result = fn(item)
                if done is not None:
                    done(item)
                yield result
            return
        with ThreadPoolExecutor(max_workers=min(n_threads, len(items))) as pool:
            for item, result in zip(items, pool.map(fn, items)):
                if done is not None:
                    done(item)
                yield result


def map_groups(X, block_fn: Callable[[slice, np.ndarray], Any], fold: Callable[[Iterable], Any], n_threads: int,
               block_rows: int = BLOCK_ROWS, progress: str | None = None) -> list:
    """``fold(block_fn(rows, X[rows]) for each block of a group)`` for every group of
    ``GROUP_BLOCKS`` blocks, in group order. ``fold`` gets the group's block results one at a
    time, in block order, and must go through them once (it adds them up as they come, so a group
    never holds every block's result). ``X`` is an array (blocks on ``n_threads`` threads, one BLAS
    thread each) or a remote row set with its own ``map_groups`` (engine=ray)."""
    remote = getattr(X, "map_groups", None)
    if remote is not None:
        return remote(block_fn, fold, block_rows, GROUP_BLOCKS, progress)
    tick = Progress(progress, X.shape[0]) if progress else None
    blocks = row_blocks(X.shape[0], block_rows)
    folds = []
    for first in range(0, len(blocks), GROUP_BLOCKS):
        folds.append(fold(iter_on_threads(lambda rows: block_fn(rows, np.asarray(X[rows])), blocks[first : first + GROUP_BLOCKS],
                                          n_threads, None if tick is None else lambda rows: tick(rows.stop - rows.start))))
    return folds


def available_threads() -> int:
    """Threads a pass may use here: the OpenMP limit threadpoolctl sets (a sweep cell's share of the cores)."""
    from sklearn.utils._openmp_helpers import _openmp_effective_n_threads

    return int(_openmp_effective_n_threads())
