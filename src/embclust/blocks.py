"""Passes over rows in blocks: the same function of (block of rows, small state) wherever it runs.

A pass maps a function over consecutive row blocks and returns the per-block results in block
order, so whoever adds them up does so in one fixed order. Blocks run on a pool of threads with
one BLAS thread each: OpenBLAS's float32 GEMM rounds differently with 1 and 2 threads, and a
block's result must not depend on how many threads there are.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from threadpoolctl import threadpool_limits

BLOCK_ROWS = 8_192


def row_blocks(n_rows: int, block_rows: int = BLOCK_ROWS) -> list[slice]:
    """Consecutive row slices of at most ``block_rows`` rows covering ``n_rows`` rows."""
    return [slice(start, min(n_rows, start + block_rows)) for start in range(0, n_rows, block_rows)]


def map_on_threads(fn: Callable[[Any], Any], items: list, n_threads: int) -> list:
    """``fn(item)`` for every item, results in item order, on up to ``n_threads`` threads with one BLAS thread each."""
    items = list(items)
    with threadpool_limits(limits=1, user_api="blas"):
        if n_threads <= 1 or len(items) <= 1:
            return [fn(item) for item in items]
        with ThreadPoolExecutor(max_workers=min(n_threads, len(items))) as pool:
            return list(pool.map(fn, items))


def map_blocks(fn: Callable[[slice], Any], n_rows: int, n_threads: int, block_rows: int = BLOCK_ROWS) -> list:
    """``fn(block)`` for every row block, in block order, on ``n_threads`` threads with one BLAS thread each."""
    return map_on_threads(fn, row_blocks(n_rows, block_rows), n_threads)


def available_threads() -> int:
    """Threads a pass may use here: the OpenMP limit threadpoolctl sets (a sweep cell's share of the cores)."""
    from sklearn.utils._openmp_helpers import _openmp_effective_n_threads

    return int(_openmp_effective_n_threads())
