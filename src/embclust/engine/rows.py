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
        import pyarrow.parquet as pq

        out = np.empty((stop - start, self.n_cols), dtype=np.float32)
        columns = [self.vector_column] if self.vector_column else self.feature_columns
        for i, path in enumerate(self.files):
            first, last = self.offsets[i], self.offsets[i + 1]
            if last <= start or first >= stop or last == first:  # outside the range, or an empty file
                continue
            lo, hi = max(start, first) - first, min(stop, last) - first
            table = _read_rows(pq.ParquetFile(path), lo, hi, columns)
            out[max(start, first) - start : min(stop, last) - start] = self._matrix(table)
        return out

    def read_ids(self, start: int, stop: int) -> np.ndarray:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.id_column is None:
            return np.arange(start, stop)
        parts = []
        for i, path in enumerate(self.files):
            first, last = self.offsets[i], self.offsets[i + 1]
            if last <= start or first >= stop or last == first:
                continue
            lo, hi = max(start, first) - first, min(stop, last) - first
            parts.append(_read_rows(pq.ParquetFile(path), lo, hi, [self.id_column]).column(self.id_column))
        return pa.chunked_array([c for p in parts for c in p.chunks]).to_numpy(zero_copy_only=False)

    def _matrix(self, table) -> np.ndarray:
        import pyarrow as pa

        if self.vector_column:
            column = table.column(self.vector_column).combine_chunks()
            values = column.flatten().to_numpy(zero_copy_only=False)
            return np.asarray(values, dtype=np.float32).reshape(len(column), self.n_cols)
        return np.stack([table.column(c).cast(pa.float32(), safe=False).to_numpy(zero_copy_only=False)
                         for c in self.feature_columns], axis=1)


def _read_rows(parquet_file, lo: int, hi: int, columns: list[str]):
    """Rows ``[lo, hi)`` of one parquet file: only the row groups that hold them are read."""
    import pyarrow as pa

    meta = parquet_file.metadata
    groups, first, group_start = [], None, 0
    for g in range(meta.num_row_groups):
        rows = meta.row_group(g).num_rows
        if group_start < hi and group_start + rows > lo:
            groups.append(g)
            first = group_start if first is None else first
        group_start += rows
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
