"""Rows that a worker process opens itself: a file on a disk or object store every worker reads.

A :class:`RowSource` is a small picklable description (a path, column names, row offsets), never
the rows: shipped to Ray workers, it reads the rows ``[start, stop)`` where it runs. Sources
return float32 rows exactly as the loaders do (:func:`embclust.data.loaders.load_npy`,
:func:`embclust.data.loaders.load_parquet_dataset`), and :class:`TransformedRows` applies a
fitted preprocessing in the blocks :func:`embclust.preprocess.transform_by_blocks` uses, so a
block read on a worker holds the bits the same block holds in a local run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class RowSource:
    """Rows ``[start, stop)`` of a matrix of ``n_rows`` x ``n_cols`` float32, read where it runs."""

    n_rows: int
    n_cols: int

    def read(self, start: int, stop: int) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def read_ids(self, start: int, stop: int) -> np.ndarray:
        """The ids of rows ``[start, stop)``, as the loaders give them (row numbers by default)."""
        return np.arange(start, stop)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n_rows, self.n_cols)


@dataclass
class NpyRows(RowSource):
    """A ``.npy`` file, memory-mapped where it is read (a path every worker can open)."""

    path: str
    n_rows: int
    n_cols: int
    ids_path: str | None = None  # dataset.ids_path: a .npy (memory-mapped where it is read) or .npz (its first array)

    def read(self, start: int, stop: int) -> np.ndarray:
        X = np.load(self.path, mmap_mode="r")
        return np.asarray(X[start:stop], dtype=np.float32)

    def read_ids(self, start: int, stop: int) -> np.ndarray:
        if self.ids_path is None:
            return np.arange(start, stop)
        if self.ids_path.lower().endswith(".npz"):
            with np.load(self.ids_path, allow_pickle=False) as archive:
                return np.asarray(archive[next(iter(archive.keys()))][start:stop])
        return np.asarray(np.load(self.ids_path, mmap_mode="r", allow_pickle=False)[start:stop])


@dataclass
class ParquetRows(RowSource):
    """Parquet files read in file order (a file, a folder's files, a glob: any filesystem pyarrow
    opens, e.g. ``s3://``): a list column of vectors, or numeric feature columns."""

    files: list[str]
    offsets: list[int]  # first row of each file; one more entry: the total
    n_cols: int
    vector_column: str | None = None
    feature_columns: list[str] = field(default_factory=list)
    id_column: str | None = None

    @property
    def n_rows(self) -> int:  # type: ignore[override]
        return int(self.offsets[-1])

    def read(self, start: int, stop: int) -> np.ndarray:
        from embclust.data.loaders import open_parquet

        out = np.empty((stop - start, self.n_cols), dtype=np.float32)
        columns = [self.vector_column] if self.vector_column else self.feature_columns
        for i, path in enumerate(self.files):
            first, last = self.offsets[i], self.offsets[i + 1]
            if last <= start or first >= stop or last == first:  # outside the range, or an empty file
                continue
            lo, hi = max(start, first) - first, min(stop, last) - first
            self._read_into(open_parquet(path), lo, hi, columns, out[max(start, first) - start : min(stop, last) - start], path)
        return out

    def _read_into(self, parquet_file, lo: int, hi: int, columns: list[str], target: np.ndarray, path: str) -> None:
        """Rows ``[lo, hi)`` of one file into ``target``, decoded a batch at a time (a group's
        whole table and its copies would be several times its rows)."""
        groups, first = _row_groups(parquet_file, lo, hi)
        if not groups:
            return
        position = first
        for batch in parquet_file.iter_batches(batch_size=_READ_BATCH_ROWS, row_groups=groups, columns=columns):
            begin, end = max(position, lo), min(position + batch.num_rows, hi)
            if begin < end:
                target[begin - lo : end - lo] = self._matrix(batch.slice(begin - position, end - begin), path)
            position += batch.num_rows
            if position >= hi:
                break

    def read_ids(self, start: int, stop: int) -> np.ndarray:
        import pyarrow as pa

        from embclust.data.loaders import open_parquet

        if self.id_column is None:
            return np.arange(start, stop)
        parts = []
        for i, path in enumerate(self.files):
            first, last = self.offsets[i], self.offsets[i + 1]
            if last <= start or first >= stop or last == first:
                continue
            lo, hi = max(start, first) - first, min(stop, last) - first
            parts.append(_read_rows(open_parquet(path), lo, hi, [self.id_column]).column(self.id_column))
        return pa.chunked_array([c for p in parts for c in p.chunks]).to_numpy(zero_copy_only=False)

    def _matrix(self, table, path: str) -> np.ndarray:
        import pyarrow as pa

        from embclust.data.loaders import float32_column  # a float64 beyond float32's range is named, not inf

        if self.vector_column:
            column = table.column(self.vector_column)
            if isinstance(column, pa.ChunkedArray):
                column = column.combine_chunks()
            if column.null_count or len(column.flatten()) != len(column) * self.n_cols:
                from embclust.errors import DataError

                raise DataError(f"vector column {self.vector_column!r} holds missing vectors or vectors whose length is "
                                f"not {self.n_cols} (the first file's): {path}")
            values = float32_column(column.flatten(), self.vector_column, path)
            return values.reshape(len(column), self.n_cols)
        return np.stack([float32_column(table.column(c), c, path) for c in self.feature_columns], axis=1)


# Rows decoded at a time when a task reads its rows from parquet.
_READ_BATCH_ROWS = 65_536


def _row_groups(parquet_file, lo: int, hi: int) -> tuple[list[int], int]:
    """The row groups of one parquet file that hold rows ``[lo, hi)``, and the first one's first row."""
    meta = parquet_file.metadata
    groups, first, group_start = [], 0, 0
    for g in range(meta.num_row_groups):
        rows = meta.row_group(g).num_rows
        if group_start < hi and group_start + rows > lo:
            first = group_start if not groups else first
            groups.append(g)
        group_start += rows
    return groups, first


def _read_rows(parquet_file, lo: int, hi: int, columns: list[str]):
    """Rows ``[lo, hi)`` of one parquet file: only the row groups that hold them are read."""
    import pyarrow as pa

    groups, first = _row_groups(parquet_file, lo, hi)
    if not groups:
        return pa.table({c: [] for c in columns})
    table = parquet_file.read_row_groups(groups, columns=columns)
    return table.slice(lo - first, hi - lo)


@dataclass
class TransformedRows(RowSource):
    """``source``'s rows through a fitted preprocessing (row-wise steps), as float32."""

    source: RowSource
    preprocessing: object  # a fitted scikit-learn Pipeline, or None for the rows as they are
    n_cols: int
    # transform_by_blocks's block: a block's rows are transformed in these aligned pieces.
    piece_rows: int = 4096

    @property
    def n_rows(self) -> int:  # type: ignore[override]
        return self.source.n_rows

    def read_ids(self, start: int, stop: int) -> np.ndarray:
        return self.source.read_ids(start, stop)

    def read(self, start: int, stop: int) -> np.ndarray:
        raw = self.source.read(start, stop)
        if self.preprocessing is None:
            return raw
        out = np.empty((stop - start, self.n_cols), dtype=np.float32)
        edge = start
        while edge < stop:
            end = min(stop, (edge // self.piece_rows + 1) * self.piece_rows)
            out[edge - start : end - start] = self.preprocessing.transform(raw[edge - start : end - start])
            edge = end
        return out


def is_rows_view(X) -> bool:
    """Whether ``X`` is a view of rows read by passes (:class:`RowsView`, engine=ray's rows), not a
    matrix held in this process: anything with ``map_groups`` (see :func:`embclust.blocks.map_groups`)."""
    return getattr(X, "map_groups", None) is not None


def every_row(X, dtype=None) -> np.ndarray:
    """``X`` as a matrix in this process: an array as it is (cast to ``dtype`` if given); a view's
    every row gathered by one pass, so with engine=ray the rows move to the driver (callers bound
    the size first)."""
    rows = X[np.arange(X.shape[0])] if is_rows_view(X) else X
    return rows if dtype is None else np.asarray(rows, dtype=dtype)


class RowsView:
    """The rows of a :class:`RowSource` as the driver sees them when a cluster runs the passes
    (engine=ray): a shape, and the rows the run asks for, never the whole matrix held here.

    A seeded sample (an array of row numbers) is gathered by a pass over the rows on the cluster,
    each task sending back the sample's rows of its group; a slice, or a few rows, is read here in
    :class:`TransformedRows`'s aligned pieces. Either way a row holds the bits a local run's
    matrix holds. ``np.asarray`` of the whole view reads every row here (logged): what still
    does that is what the run records as ``engine/driver_rows_read``.
    Subclasses run ``map_groups`` (see :func:`embclust.blocks.map_groups`).
    """

    # Gathers of at most this many distinct rows are read here; larger ones run as a pass.
    READ_HERE_MOST = 8

    source: RowSource
    ndim = 2
    dtype = np.dtype(np.float32)

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.source.n_rows), int(self.source.n_cols))

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def rows_read_here(self) -> int:
        return getattr(self, "_rows_read_here", 0)

    def map_groups(self, block_fn, fold, block_rows, group_blocks, progress=None) -> list:  # pragma: no cover - interface
        raise NotImplementedError

    def view_of(self, source: RowSource) -> RowsView:
        """The same kind of view (same cluster) over another source, e.g. the preprocessed rows."""
        raise NotImplementedError  # pragma: no cover - interface

    def transformed(self, preprocessing, n_cols: int, piece_rows: int = 4096) -> RowsView:
        """These rows through a fitted row-wise preprocessing, as workers compute them (in
        ``piece_rows`` aligned pieces, as :func:`embclust.preprocess.transform_by_blocks` does)."""
        return self.view_of(TransformedRows(self.source, preprocessing, int(n_cols), int(piece_rows)))

    def __array__(self, dtype=None, copy=None):
        import logging

        n = self.shape[0]
        logging.getLogger(__name__).warning(
            "engine=ray: all %d rows are read on the driver (a step that needs the whole matrix)", n)
        out = self._read_here(0, n)
        return out if dtype is None else out.astype(dtype, copy=False)

    def __getitem__(self, key):
        if isinstance(key, tuple):
            rows, *rest = key
            return self[rows][(slice(None), *rest)] if not isinstance(rows, (int, np.integer)) else self[rows][tuple(rest)]
        n = self.shape[0]
        if isinstance(key, (int, np.integer)):
            i = int(key) + (n if int(key) < 0 else 0)
            if not 0 <= i < n:
                raise IndexError(f"row {key} is out of range for {n} rows")
            return self._gather(np.array([i]))[0]
        if isinstance(key, slice):
            start, stop, step = key.indices(n)
            if step == 1:
                return self._read_here(start, max(start, stop))
            return self._gather(np.arange(start, stop, step))
        rows = np.asarray(key)
        if rows.dtype == bool:
            if rows.shape != (n,):
                raise IndexError(f"a boolean mask of shape {rows.shape} for {n} rows")
            rows = np.flatnonzero(rows)
        rows = rows.astype(np.int64, copy=False)
        if rows.size and (rows.min() < -n or rows.max() >= n):
            raise IndexError(f"row numbers out of range for {n} rows")
        return self._gather(np.where(rows < 0, rows + n, rows))

    def _read_here(self, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` read on the driver, in whole aligned pieces of a transformed
        source (so a row holds the bits of a local run's matrix)."""
        piece = getattr(self.source, "piece_rows", 1)
        lo, hi = start // piece * piece, min(self.shape[0], -(-stop // piece) * piece)
        self._rows_read_here = self.rows_read_here + (hi - lo)
        return self.source.read(lo, hi)[start - lo : stop - lo] if hi > lo else np.empty((0, self.shape[1]), np.float32)

    def _gather(self, rows: np.ndarray) -> np.ndarray:
        """``X[rows]`` (any order, repeats allowed) as a float32 array."""
        wanted = np.unique(rows)
        if wanted.size <= self.READ_HERE_MOST:
            found = np.empty((wanted.size, self.shape[1]), dtype=np.float32)
            for j, i in enumerate(wanted):
                found[j] = self._read_here(int(i), int(i) + 1)[0]
        else:
            found = self._gather_by_pass(wanted)
        return found if wanted.size == rows.size and np.array_equal(wanted, rows) else found[np.searchsorted(wanted, rows)]

    def _gather_by_pass(self, wanted: np.ndarray) -> np.ndarray:
        from embclust import blocks

        def block_fn(rows: slice, X: np.ndarray) -> np.ndarray:
            lo, hi = np.searchsorted(wanted, (rows.start, rows.stop))
            return np.ascontiguousarray(X[wanted[lo:hi] - rows.start])

        def fold(parts) -> np.ndarray:
            parts = list(parts)
            return np.concatenate(parts) if parts else np.empty((0, self.shape[1]), np.float32)

        groups = self.map_groups(block_fn, fold, blocks.BLOCK_ROWS, blocks.GROUP_BLOCKS,
                                 progress=f"sample of {wanted.size} rows gathered")
        found = np.concatenate(groups) if groups else np.empty((0, self.shape[1]), np.float32)
        if found.shape[0] != wanted.size:  # pragma: no cover - every group answers or the pass raises
            raise RuntimeError(f"engine=ray: {found.shape[0]} of {wanted.size} sample rows came back")
        return found


class LocalRows(RowsView):
    """A view whose passes run in this process, a group of blocks read from the source at a time."""

    def __init__(self, source: RowSource):
        self.source = source

    def view_of(self, source: RowSource) -> LocalRows:
        return LocalRows(source)

    def map_groups(self, block_fn, fold, block_rows, group_blocks, progress=None) -> list:
        n, group_rows = self.shape[0], block_rows * group_blocks
        out = []
        for start in range(0, n, group_rows):
            stop = min(n, start + group_rows)
            X = self.source.read(start, stop)
            out.append(fold(block_fn(slice(a, min(stop, a + block_rows)), X[a - start : min(stop, a + block_rows) - start])
                            for a in range(start, stop, block_rows)))
        return out
