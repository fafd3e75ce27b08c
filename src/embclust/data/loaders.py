"""File loaders: embeddings from .npy/.npz, parquet and CSV, and tabular features.

Every loader returns a :class:`~embclust.data.Dataset` with a float32 matrix; files are read
with numpy memory maps or pyarrow, selecting only the columns that are needed.
"""

from __future__ import annotations

import json
import logging
import errno
import os
import stat
import re
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from embclust.data.dataset import FLOAT32_MAX, MISSING_LABEL, Dataset, as_float32, is_real_dtype
from embclust.errors import ConfigError, DataError, first_line

log = logging.getLogger(__name__)

TABLE_SUFFIXES = (".parquet", ".csv")


def check_file(path: str | None, allowed: tuple[str, ...] | None, what: str = "dataset.path") -> Path:
    """The path of an existing, readable, non-empty file with an allowed extension, else one-line errors."""
    if not path:
        raise ConfigError(f"{what} is required (a {' or '.join(allowed or ('data',))} file)")
    if is_uri(path):
        raise DataError(f"{path}: only parquet data is read from a URI ({what}; dataset=parquet); copy this file "
                        "to a disk this machine (and, with engine=ray, every worker) reads, and give its path")
    p = Path(path)
    if p.is_dir():
        raise DataError(f"{path} is a folder, not a file ({what}): give the data file's path")
    if not p.is_file():
        try:
            kind = p.stat().st_mode
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise DataError(f"{path}: its links lead back to themselves ({what}): point it at the data file") from None
            raise DataError(f"file not found: {path} ({what})") from None
        if stat.S_ISFIFO(kind) or stat.S_ISSOCK(kind) or stat.S_ISCHR(kind) or stat.S_ISBLK(kind):
            raise DataError(f"{path} is not a regular file (a pipe, socket or device) ({what}): save the data to a "
                            "file and give its path")
        raise DataError(f"file not found: {path} ({what})")
    if allowed is not None and p.suffix.lower() not in allowed:
        raise DataError(f"{path}: unsupported extension '{p.suffix}' (allowed: {', '.join(allowed)})")
    try:
        fd = os.open(p, os.O_RDONLY)
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror}) ({what})") from None
    try:
        if os.fstat(fd).st_size == 0:
            raise DataError(f"{path} is empty (0 bytes) ({what})")
    finally:
        os.close(fd)
    return p


# ---------------------------------------------------------------------------- numpy files


def _load_array(path: str, what: str, mmap: bool = False, key: str | None = None) -> np.ndarray:
    p = check_file(path, (".npy", ".npz"), what)
    try:
        if p.suffix.lower() == ".npy":
            if key is not None:  # a .npy holds one array: a key names one of a .npz's
                raise ConfigError(f"dataset.key={key!r} names an array of a .npz archive; {path} is a .npy "
                                  "holding one array: remove dataset.key (or set it to null)")
            return np.load(p, mmap_mode="r" if mmap else None, allow_pickle=False)
        archive = np.load(p, allow_pickle=False)
        keys = list(archive.keys())
        if not keys:
            raise DataError(f"{path}: the .npz archive holds no arrays")
        if key is not None and key not in keys:
            raise DataError(f"{path}: no array named {key!r} (arrays: {', '.join(keys)})")
        if key is None and len(keys) > 1:  # which one is meant would be a guess
            fix = ("name the one to cluster with dataset.key=NAME" if what == "dataset.path"
                   else f"save the one for {what} alone with numpy.save")
            raise DataError(f"{path} ({what}): the .npz archive holds {len(keys)} arrays ({', '.join(keys[:10])}): {fix}")
        return archive[key or keys[0]]
    except ValueError as exc:
        if "pickle" in str(exc) or "Python objects" in str(exc):  # no .npy header, or an array of objects
            raise DataError(
                f"{path}: not a numeric NumPy array (no .npy/.npz header, or an array of Python objects); "
                "save a numeric matrix with numpy.save"
            ) from None
        short = _npy_cut_short(p) if p.suffix.lower() == ".npy" else None
        if short is not None:
            raise DataError(f"{path}: {short} ({what}): it was cut short; copy or save it again") from None
        raise DataError(f"{path}: cannot be read as a numeric array ({exc})") from exc


def _npy_cut_short(p: Path) -> str | None:
    """What a .npy's header declares against the bytes the file holds, where it holds fewer."""
    try:
        with open(p, "rb") as f:
            major, _ = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape, _, dtype = read_header(f)
            data_start = f.tell()
        size = p.stat().st_size
    except (OSError, ValueError):
        return None
    needed = data_start + int(np.prod(shape, dtype=object)) * dtype.itemsize
    if size >= needed:
        return None
    return (f"its header declares a {' x '.join(str(n) for n in shape)} {dtype} array ({needed:,} bytes) but the file "
            f"holds {size:,} bytes")


def _load_names(path: str) -> list[str]:
    """Label names from a .json list, a .txt (one per line) or a .npy of strings."""
    p = check_file(path, None, "dataset.label_names_path")
    what = f"{p} (dataset.label_names_path)"
    suffix = p.suffix.lower()
    try:
        if suffix == ".json":
            names = json.loads(p.read_text(encoding="utf-8"))
            if not isinstance(names, list) or not all(isinstance(x, (str, int)) and not isinstance(x, bool) for x in names):
                raise DataError(f"{what}: a JSON list of names, one per label (\"cat\", \"dog\", ...), is expected")
            return [str(x) for x in names]
        if suffix in (".npy", ".npz"):
            names = _load_array(str(p), "dataset.label_names_path")
            if names.ndim != 1 or names.dtype.kind not in "iuUS":
                raise DataError(f"{what}: names must be a 1-D array of text (one per label), got dtype {names.dtype} "
                                f"and shape {names.shape}")
            return [x.decode() if isinstance(x, bytes) else str(x) for x in names.tolist()]
        return [line for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError:
        raise DataError(f"{what}: not UTF-8 text; give one name per line (.txt), a JSON list or a .npy of strings") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{what}: not valid JSON ({exc}); give a JSON list of names") from None


def load_npy(
    path: str,
    labels_path: str | None = None,
    ids_path: str | None = None,
    label_names_path: str | None = None,
    key: str | None = None,
    name: str = "npy",
    rows_on_driver: bool = True,
) -> Dataset:
    """Embeddings from ``.npy`` (memory-mapped, never copied when float32) or ``.npz``.

    ``rows_on_driver=False`` (engine=ray): a ``.npy``'s rows stay in the file, a view that the
    passes read where they run (:class:`embclust.engine.rows.LocalRows`).
    """
    X = _load_array(path, "dataset.path", mmap=True, key=key)
    if X.ndim != 2:
        raise DataError(f"{path}: expected a 2-D matrix (rows x dimensions), got shape {X.shape}")
    if not is_real_dtype(X.dtype):
        raise DataError(f"{path}: features must be real numbers (integer or float), got dtype {X.dtype}")
    ids = _check_ids(_load_array(ids_path, "dataset.ids_path"), ids_path) if ids_path else np.arange(X.shape[0])
    labels = _load_array(labels_path, "dataset.labels_path") if labels_path else None
    for what, given, arr in (("dataset.ids_path", ids_path, ids), ("dataset.labels_path", labels_path, labels)):
        if given and arr is not None and len(arr) != X.shape[0]:  # named here, where the files are known
            raise DataError(f"{given} ({what}) has {len(arr)} entries but {path} (dataset.path) has {X.shape[0]} rows: "
                            "give the file written with these embeddings, row for row")
    label_names = _load_names(label_names_path) if label_names_path else None
    if labels is not None:
        labels = _check_labels(labels, labels_path, label_names, label_names_path, ids)
    from embclust.engine.rows import NpyRows

    source = None
    if str(path).endswith(".npy"):
        source = NpyRows(str(Path(path).resolve()), int(X.shape[0]), int(X.shape[1]),
                         str(Path(ids_path).resolve()) if ids_path else None)
    if source is not None and not rows_on_driver:
        from embclust.engine.rows import LocalRows

        return Dataset(name=name, X=LocalRows(source), ids=np.asarray(ids), labels=labels, label_names=label_names,
                       source=source)
    return Dataset(name=name, X=as_float32(X, f"{path} (dataset.path)"), ids=np.asarray(ids), labels=labels, label_names=label_names,
                   source=source)


def _check_ids(ids: np.ndarray, path: str) -> np.ndarray:
    """Ids are one value per row, of a type a parquet table holds (integers, floats, strings, bytes)."""
    if ids.ndim != 1:
        raise DataError(f"{path}: ids must be 1-D (one per row), got shape {ids.shape} (dataset.ids_path)")
    if ids.dtype.kind not in "iufUSb" and not (ids.dtype.kind == "O" and all(isinstance(v, str) for v in ids[:1000])):
        raise DataError(f"{path}: ids must be integers or text, got dtype {ids.dtype} (dataset.ids_path)")
    return ids


def _check_labels(labels: np.ndarray, path: str, names: list[str] | None, names_path: str | None, ids) -> np.ndarray:
    """Reject NaN labels and labels without a name; whole-number float labels become integers.

    Negative integer labels mean "unknown" and are kept (shown as unknown, left out of ARI/NMI/purity).
    """
    if labels.ndim != 1:
        raise DataError(f"{path}: labels must be 1-D, got shape {labels.shape} (dataset.labels_path)")
    if np.issubdtype(labels.dtype, np.floating):
        bad = np.flatnonzero(~np.isfinite(labels))
        if bad.size:
            first = ", ".join(str(i) for i in np.asarray(ids)[bad[:5]]) if len(ids) == len(labels) else ""
            raise DataError(
                f"{path}: {bad.size} of {labels.size} labels are NaN or inf (first ids: {first}) "
                "(dataset.labels_path); use -1 for unknown labels"
            )
        if np.all(labels == np.round(labels)):
            labels = labels.astype(np.int64)
    if names is not None and not np.issubdtype(labels.dtype, np.integer):
        log.warning("%s (dataset.label_names_path) is not used: the labels in %s are already names, not integer "
                    "codes", names_path, path)
    if names is not None and np.issubdtype(labels.dtype, np.integer) and labels.size:
        top = int(labels.max())
        if top >= len(names):
            raise DataError(
                f"{path}: label {top} has no name: {names_path} holds {len(names)} names "
                f"(labels 0..{len(names) - 1}; negative = unknown)"
            )
    return labels


# ---------------------------------------------------------------------------- tables


# CSV: empty fields are missing values, a quoted "" is an empty string; cells up to 16 MiB,
# column types inferred from the first 16 MiB.
_CSV_READ = pcsv.ReadOptions(block_size=16 << 20)
_CSV_NULLS = dict(null_values=[""], strings_can_be_null=True, quoted_strings_can_be_null=False)
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def _on_one_thread(options: pcsv.ReadOptions) -> pcsv.ReadOptions:
    """``options`` read on one thread: slower on a large file, but a parse error then names its row."""
    return pcsv.ReadOptions(block_size=options.block_size, use_threads=False)


def _check_csv_encoding(p: Path) -> None:
    """A UTF-16 CSV (Excel's "Unicode text") parses as one garbled column: say what it is."""
    with open(p, "rb") as f:
        head = f.read(4096)
    for magic, kind, instead in ((b"PAR1", "a parquet file", "name it .parquet"),
                                 (b"\x1f\x8b", "gzip-compressed", "unpack it first (gunzip)"),
                                 (b"PK\x03\x04", "a zip archive (or an Excel .xlsx)", "unpack it, or save the sheet as CSV"),
                                 (b"\x93NUMPY", "a NumPy .npy file", "name it .npy")):
        if head.startswith(magic):
            raise DataError(f"{p}: the file is {kind}, not CSV text: {instead}")
    if head.startswith(_UTF16_BOMS) or (head and head.count(0) > len(head) // 4):
        raise DataError(f"{p}: the file is UTF-16 (or another encoding with NUL bytes), not UTF-8 text; "
                        "save it as CSV UTF-8 (comma-separated) or as parquet")


def _is_numeric(dtype: pa.DataType) -> bool:
    """Integers, floats and decimals; booleans are not numbers."""
    return pa.types.is_integer(dtype) or pa.types.is_floating(dtype) or pa.types.is_decimal(dtype)


def _csv_type(dtype: pa.DataType) -> pa.DataType:
    """Numbers and booleans as inferred; anything else (dates, times, an empty column) stays text as written."""
    return dtype if _is_numeric(dtype) or pa.types.is_boolean(dtype) else pa.string()


def _read_error(p: Path, exc: Exception, what: str, names: list[str]) -> DataError:
    """One line naming the file, and the column or the row when pyarrow gives its number (a parse
    error quotes the whole row: cut short)."""
    message = " ".join(str(exc).split())
    # pyarrow counts rows from the header (row 1), skipping blank lines: not always the line number
    message = re.sub(r"CSV parse error: Row #(\d+): ", r"CSV parse error at row \1 counting the header: ", message)
    found = re.match(r"In CSV column #(\d+): (.*)", message)
    if found and int(found[1]) < len(names):
        message = f"column {names[int(found[1])]!r}: {found[2]}"
    return DataError(f"{p}: {what} ({message[:200] + ' ...' if len(message) > 200 else message})")


def _inspect(p: Path) -> tuple[dict[str, pa.DataType], bool]:
    """Column names and types, and whether the file holds any row: from the parquet metadata or
    the CSV's first block."""
    try:
        if p.suffix.lower() == ".parquet":
            with pq.ParquetFile(p) as parquet:
                fields, has_rows = list(parquet.schema_arrow), parquet.metadata.num_rows > 0
        else:
            _check_csv_encoding(p)
            with pcsv.open_csv(p, read_options=_on_one_thread(_CSV_READ), convert_options=pcsv.ConvertOptions(**_CSV_NULLS)) as reader:
                fields = [pa.field(f.name, _csv_type(f.type)) for f in reader.schema]
                try:
                    has_rows = reader.read_next_batch().num_rows > 0
                except StopIteration:
                    has_rows = False
    except (pa.ArrowException, OSError) as exc:
        sep = _other_separator(p) if isinstance(exc, pa.ArrowInvalid) and p.suffix.lower() == ".csv" else None
        if sep is not None:  # e.g. ';' with decimal commas: the rows then hold more commas than the header
            raise DataError(f"{p}: the header is separated by {sep!r}, not commas (decimal commas too?): save it "
                            "comma-separated with decimal points (CSV) or as parquet") from None
        raise _read_error(p, exc, f"cannot be read as {p.suffix[1:]}", []) from exc
    names = [f.name for f in fields]
    repeated = [name for name, count in Counter(names).items() if count > 1]
    if repeated:  # pyarrow reads them; which one a config key means would be a guess
        raise DataError(
            f"{p}: duplicate column names {', '.join(map(repr, repeated[:10]))}: give each column its own name"
        )
    if len(names) == 1 and (sep := next((c for c in ";\t|" if c in names[0]), None)):
        raise DataError(
            f"{p}: one column named {names[0][:80]!r}: the file looks separated by {sep!r}; "
            "save it comma-separated (CSV) or as parquet"
        )
    return {f.name: f.type for f in fields}, has_rows


def _other_separator(p: Path) -> str | None:
    """The separator of a CSV header written with ';', a tab or '|' instead of commas, else None."""
    try:
        with open(p, encoding="utf-8", errors="replace") as f:
            header = f.readline()
    except OSError:
        return None
    return next((c for c in ";\t|" if c in header), None) if "," not in header else None


def float32_column(column, name: str, where) -> np.ndarray:
    """One table column as float32 (missing values NaN); a finite value beyond float32's range
    (a float64 above 3.4e38) is refused naming the column, not turned into inf."""
    if pa.types.is_floating(column.type) and column.type.bit_width > 32 or pa.types.is_decimal(column.type):
        values = column.cast(pa.float64(), safe=False)
        finite = pc.filter(values, pc.is_finite(values))
        biggest = pc.max(pc.abs(finite)).as_py() if len(finite) else None
        if biggest is not None and biggest > FLOAT32_MAX:
            raise DataError(
                f"{where}: column {name!r} holds values beyond float32's range (magnitude up to {biggest:.3g}, "
                f"float32 ends at {FLOAT32_MAX:.3g}); embclust computes in float32: rescale the feature or clean those rows"
            )
    return column.cast(pa.float32(), safe=False).to_numpy(zero_copy_only=False)


def _feature_matrix(rows: int, features: list[str], read, where="the table") -> np.ndarray:
    """``features`` as one C-ordered float32 matrix (missing values NaN), ``read(names)`` giving 64
    columns at a time: each block is transposed in one copy, much faster than writing column by column."""
    X = np.empty((rows, len(features)), dtype=np.float32)
    for start in range(0, len(features), 64):
        names = features[start : start + 64]
        block = read(names)
        columns = [float32_column(block[c], c, where) for c in names]
        X[:, start : start + len(names)] = np.stack(columns).T
    return X


def read_columns(
    p: Path, schema: dict[str, pa.DataType], columns: list[str], features: list[str], as_text: tuple[str, ...] = ()
) -> tuple[pa.Table, np.ndarray]:
    """Read only ``columns`` (a table) and ``features`` (one float32 matrix); a CSV's ``as_text``
    columns as text, whatever their first block looks like.

    Parquet features are decoded 64 columns at a time, so the file is never held whole beside the matrix.
    """
    try:
        if p.suffix.lower() == ".parquet":
            with pq.ParquetFile(p) as parquet:
                table = parquet.read(columns=columns)
                return table, _feature_matrix(table.num_rows, features, lambda names: parquet.read(columns=names), p)
        types = {c: pa.float32() if c in features else schema[c] for c in dict.fromkeys([*columns, *features])}
        for c in as_text:
            if c in types and c not in features:
                types[c] = pa.string()
        options = pcsv.ConvertOptions(include_columns=list(types), column_types=types, **_CSV_NULLS)
        try:
            table = pcsv.read_csv(p, read_options=_CSV_READ, convert_options=options)
        except pa.ArrowInvalid as exc:
            if "Row #" in str(exc) or "CSV parse error" not in str(exc):
                raise
            # Read on several threads, a parse error does not know its row: find it on one.
            table = pcsv.read_csv(p, read_options=_on_one_thread(_CSV_READ), convert_options=options)
        X = _feature_matrix(table.num_rows, features, table.select, p)
        _check_csv_overflow(p, X, features, options)
        return table, X
    except (pa.ArrowException, OSError) as exc:
        raise _read_error(p, exc, "failed to read columns", list(schema)) from exc


def _check_csv_overflow(p: Path, X: np.ndarray, features: list[str], options: pcsv.ConvertOptions) -> None:
    """CSV features are parsed straight to float32, where a number beyond its range (1e39) becomes
    inf: columns holding inf are read again as float64 to tell an overflow (refused naming the
    column) from an inf written in the file (left to the NaN/inf check)."""
    columns_with_inf = np.zeros(X.shape[1], dtype=bool)
    for start in range(0, X.shape[0], 65_536):  # by blocks: no full-size temporary
        columns_with_inf |= np.isinf(X[start : start + 65_536]).any(axis=0)
    holds_inf = [features[j] for j in np.flatnonzero(columns_with_inf)]
    if not holds_inf:
        return
    again = pcsv.ConvertOptions(include_columns=holds_inf, column_types={c: pa.float64() for c in holds_inf},
                                null_values=options.null_values, strings_can_be_null=True,
                                quoted_strings_can_be_null=False)
    table = pcsv.read_csv(p, read_options=_CSV_READ, convert_options=again)
    for c in holds_inf:
        float32_column(table[c], c, p)


def open_table(path: str, columns: dict[str, str | None]) -> tuple[Path, dict[str, pa.DataType]]:
    """Check a parquet/CSV file and that each named column exists; return (path, schema).

    ``columns`` maps the config key (``dataset.id_column``) to the column it names (or None).
    """
    p = check_file(path, TABLE_SUFFIXES)
    schema, has_rows = _inspect(p)
    for key, column in columns.items():
        require_column(schema, column, key, p)
    if not has_rows:
        # Checked before column types: a header-only CSV has no values to infer them from.
        raise DataError(f"{p}: 0 rows (the file holds {'only a header' if p.suffix.lower() == '.csv' else 'no rows'})")
    return p, schema


def as_strings(column: pa.ChunkedArray, missing: str = MISSING_LABEL, where: str = "a column") -> np.ndarray:
    """A column as strings, nulls shown as ``missing``: labels, categories, metadata, texts.

    ``where`` names the column and its key in the error for a column of lists or records."""
    if pa.types.is_nested(column.type):
        raise DataError(f"{where} holds {column.type} values, not one text or number per row: choose another column")
    if pa.types.is_floating(column.type):  # 1.0 and NaN, not pyarrow's 1 and nan
        text = column.to_numpy().astype(str).astype(object)
        text[text == "nan"] = "NaN"
    else:
        try:
            text = column.cast(pa.string()).to_numpy().astype(object)
        except (pa.ArrowNotImplementedError, pa.ArrowInvalid) as exc:
            raise DataError(f"{where} holds {column.type} values, which cannot be read as text ({first_line(exc)})") from None
    text[column.is_null().to_numpy()] = missing
    return text


def text_where(p, text_column: str) -> str:
    return f"{p}: text column {text_column!r} (dataset.text_column)"


def label_text_column(label_column: str | None, id_column: str | None) -> tuple[str, ...]:
    """The columns a CSV reads as text for :func:`label_values`: the label column, unless it is the id column."""
    return (label_column,) if label_column and label_column != id_column else ()


def ids_and_labels(table: pa.Table, id_column: str | None, label_column: str | None, p: Path | None = None):
    """Row ids (the id column, else 0..n-1) and labels (None without a label column).

    A missing id is refused: it would turn every id into a float (NaN) and could not be joined on.
    """
    if id_column and table[id_column].null_count:
        rows = np.flatnonzero(table[id_column].is_null().to_numpy(zero_copy_only=False))
        raise DataError(
            f"{p or 'table'}: id column {id_column!r} (dataset.id_column) is empty in {rows.size} of {table.num_rows} "
            f"rows (first rows: {', '.join(str(r) for r in rows[:5])}); fill them or set dataset.id_column=null"
        )
    ids = table[id_column].to_numpy() if id_column else np.arange(table.num_rows)
    # A CSV's label column was read as text (read_columns' as_text) and may hold numbers.
    numbers_from_text = p is not None and Path(p).suffix.lower() == ".csv" and bool(label_text_column(label_column, id_column))
    where = f"{p or 'table'}: label column {label_column!r} (dataset.label_column)"
    return ids, (label_values(table[label_column], where, numbers_from_text) if label_column else None)


def label_values(column: pa.ChunkedArray, where: str = "dataset.label_column", numbers_from_text: bool = False) -> np.ndarray:
    """True labels from a table column. Whole numbers (an integer column, or floats that are all
    whole) become integers with an empty cell or NaN as -1, so that, as in a labels .npy, negative
    labels mean unknown (shown as unknown, left out of ARI / NMI / V-measure / purity); any other
    column is taken as text, an empty cell shown as (missing) and left out of those scores too.

    ``numbers_from_text``: the column was read as text (a CSV's label column, so that numbers
    beyond float precision keep their digits) and holds numbers where it parses as such."""
    source = column
    if numbers_from_text and (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        for target in (pa.int64(), pa.float64()):
            try:
                column = pc.cast(source, target)
                break
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                continue
    if pa.types.is_integer(column.type):
        try:
            values = np.array(pc.fill_null(column, 0).cast(pa.int64()).to_numpy())
        except pa.ArrowInvalid:  # uint64 above the int64 range: text keeps every digit
            return as_strings(source, MISSING_LABEL, where)
        values[column.is_null().to_numpy(zero_copy_only=False)] = -1
        _say_negative_labels(values, column.null_count, where)
        return values
    if pa.types.is_floating(column.type):
        values = column.cast(pa.float64()).to_numpy(zero_copy_only=False)
        known = np.isfinite(values)
        if np.all(values[known] == np.round(values[known])) and np.abs(values[known]).max(initial=0) < 2**53:
            labels = np.where(known, values, -1).astype(np.int64)
            _say_negative_labels(labels, int((~known).sum()), where)
            return labels
        text = as_strings(source, MISSING_LABEL, where)
        text[~known] = MISSING_LABEL  # NaN as well as an empty cell
        return text
    return as_strings(source, MISSING_LABEL, where)


def _say_negative_labels(labels: np.ndarray, n_missing: int, where: str) -> None:
    negative = int((labels < 0).sum()) - n_missing
    if negative:
        log.warning("%s: %d of %d rows hold a negative label, which means unknown: they are left out of ARI, NMI, "
                    "V-measure and purity (shift the labels to 0 and up if negative values are classes)",
                    where, negative, labels.size)


def column_list(schema: dict, most: int = 20) -> str:
    """The table's column names for error messages, numbered runs shortened (``bert_0..bert_767
    (768 columns)``) so the other columns show too; at most ``most`` entries."""
    import re

    entries: list[str] = []
    run: list[str] = []
    run_prefix = None

    def close() -> None:
        if len(run) >= 3:
            entries.append(f"{run[0]}..{run[-1]} ({len(run)} columns)")
        else:
            entries.extend(run)

    for name in schema:
        numbered = re.fullmatch(r"(.*?)(\d+)", str(name))
        prefix = numbered.group(1) if numbered else None
        if prefix is None or prefix != run_prefix:
            close()
            run, run_prefix = [], prefix
        run.append(str(name))
    close()
    return ", ".join(entries[:most]) + (" ..." if len(entries) > most else "")


def require_column(schema: dict, column: str | None, key: str, p: Path) -> None:
    if column is not None and column not in schema:
        import difflib

        close = difflib.get_close_matches(str(column), [str(c) for c in schema], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise DataError(f"{p}: column {column!r} ({key}) not found{hint}; columns: {column_list(schema)}")


def _refuse_repeats(columns: list[str], key: str) -> None:
    """One line for a column listed twice: it would count twice in the distances (or fail to be read)."""
    seen: set[str] = set()
    twice = next((c for c in columns if c in seen or seen.add(c)), None)
    if twice is not None:
        raise ConfigError(f"{key} lists column {twice!r} twice: list each column once")


def _select_features(
    schema: dict, p: Path, feature_prefix: str | None, feature_columns: list[str] | None, roles: list[str] = ()
) -> list[str]:
    """The feature columns; ``roles`` (the id, label, text and metadata columns) are never features:
    a label among the features would be clustered on. Listed in feature_columns, that is an error;
    matched by feature_prefix, the column is left out of the features."""
    if feature_columns:
        _refuse_repeats(feature_columns, "dataset.feature_columns")
        missing = [c for c in feature_columns if c not in schema]
        if missing:
            raise DataError(f"{p}: feature columns not found: {', '.join(missing[:10])}")
        both = [c for c in feature_columns if c in roles]
        if both:
            raise ConfigError(f"{p}: column {both[0]!r} is in dataset.feature_columns and is also the id, label, text or "
                              "a metadata column: a column is a feature or one of those, not both")
        features = list(feature_columns)
    elif feature_prefix:
        features = [c for c in schema if c.startswith(feature_prefix) and c not in roles]
    else:
        raise ConfigError(
            f"{p}: which columns hold the features? set dataset.feature_prefix, dataset.feature_columns "
            f"or dataset.vector_column (columns: {column_list(schema)})"
        )
    if not features:
        raise DataError(f"{p}: no feature columns match prefix {feature_prefix!r}; columns: {column_list(schema)}")
    for col in features:
        if not _is_numeric(schema[col]):
            raise DataError(f"{p}: feature column {col!r} is not numeric (type {schema[col]})")
    return features


def _parse_vector_text(column: pa.ChunkedArray, name: str, p: Path) -> pa.ChunkedArray:
    """Vectors written as text, as lists of float64; an empty cell is a missing vector."""
    text = pc.utf8_trim(column, "[] \t\r\n")
    text = pc.if_else(pc.equal(text, ""), pa.scalar(None, pa.string()), text)
    try:
        return pc.split_pattern_regex(text, r"[,;\s]+").cast(pa.list_(pa.float64()))
    except pa.ArrowInvalid as exc:
        raise DataError(
            f"{p}: vector column {name!r} holds text that is not a list of numbers ({first_line(exc)}); write each "
            "vector as [0.1, 0.2, ...], or store them as parquet or as one column per feature (dataset.feature_prefix)"
        ) from None


def _vectors_from_list_column(column: pa.ChunkedArray, name: str, p: Path, ids: np.ndarray) -> np.ndarray:
    """Stack a list/fixed-size-list column into an (n, d) float32 matrix, rejecting ragged rows.

    A text column (a CSV holds lists only as text) is read as vectors written ``[0.1, 0.2, ...]``
    (pandas' ``to_csv`` of lists), ``[0.1 0.2 ...]`` (of NumPy arrays) or ``0.1;0.2;...``."""
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        column = _parse_vector_text(column, name, p)
    dtype = column.type
    is_list = pa.types.is_list(dtype) or pa.types.is_large_list(dtype) or pa.types.is_fixed_size_list(dtype)
    if not is_list or not _is_numeric(dtype.value_type):
        raise DataError(f"{p}: vector column {name!r} is {dtype}, expected a list of numbers")
    missing = np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))
    if missing.size:
        first = ", ".join(str(i) for i in ids[missing[:5]])
        raise DataError(
            f"{p}: vector column {name!r} is empty (null) in {missing.size} of {len(column)} rows (first ids: {first}); "
            "fill them or drop those rows"
        )
    lengths = pc.list_value_length(column).fill_null(0).to_numpy()
    if lengths.size and (lengths != lengths[0]).any():
        dim = int(np.bincount(lengths).argmax())
        bad = np.flatnonzero(lengths != dim)
        first = ", ".join(str(i) for i in ids[bad[:5]])
        raise DataError(
            f"{p}: vector column {name!r} is ragged: {bad.size} of {lengths.size} rows are not of length {dim} (first ids: {first})"
        )
    dim = int(lengths[0]) if lengths.size else 0
    flat = float32_column(pc.list_flatten(column), name, p)
    return flat.reshape(len(column), dim)


def load_table(
    path: str,
    id_column: str | None = None,
    feature_prefix: str | None = None,
    feature_columns: list[str] | None = None,
    vector_column: str | None = None,
    label_column: str | None = None,
    text_column: str | None = None,
    metadata_columns: list[str] | None = None,
    name: str = "table",
    rows_on_driver: bool = True,
) -> Dataset:
    """Embeddings stored as columns (``bert_0..``, ``feature_0..``) or one list column of a parquet/CSV.

    ``path`` may also be a folder of parquet files or a glob (``data/part-*.parquet``): the files
    are read as one pyarrow dataset, a record batch at a time (see :func:`load_parquet_dataset`).
    ``rows_on_driver=False`` (engine=ray): parquet vectors stay in the files (see there).
    """
    chosen = [f"dataset.{k}" for k, v in (("vector_column", vector_column), ("feature_prefix", feature_prefix),
                                           ("feature_columns", feature_columns)) if v]
    if len(chosen) > 1:  # which one would win is not the user's to guess
        raise ConfigError(f"{' and '.join(chosen)} are set together: the features come from one of them; keep one, set the rest to null")
    if is_uri(path) and str(path).lower().endswith(".csv"):
        check_file(path, TABLE_SUFFIXES)  # one line: only parquet is read from a URI
    if path and (is_uri(path) or Path(path).is_dir() or any(c in str(path) for c in "*?[") or
                 (not rows_on_driver and str(path).lower().endswith(".parquet"))):
        return load_parquet_dataset(path, id_column, feature_prefix, feature_columns, vector_column, label_column,
                                    text_column, metadata_columns, name, rows_on_driver)
    p, schema = open_table(
        path,
        {
            "dataset.id_column": id_column,
            "dataset.label_column": label_column,
            "dataset.text_column": text_column,
            "dataset.vector_column": vector_column,
        },
    )
    metadata_columns = column_names(metadata_columns, "dataset.metadata_columns")
    feature_columns = column_names(feature_columns, "dataset.feature_columns") or None
    for column in metadata_columns:
        require_column(schema, column, "dataset.metadata_columns", p)
    extra = [c for c in (id_column, label_column, text_column, vector_column, *metadata_columns) if c]
    features = [] if vector_column else _select_features(schema, p, feature_prefix, feature_columns, roles=extra)
    table, X = read_columns(p, schema, list(dict.fromkeys(extra)), features, label_text_column(label_column, id_column))
    ids, labels = ids_and_labels(table, id_column, label_column, p)
    if vector_column:
        X = _vectors_from_list_column(table[vector_column], vector_column, p, ids)
    texts = as_strings(table[text_column], "", text_where(p, text_column)) if text_column else None
    X = as_float32(X, f"{p} (dataset.path)")
    source = None
    if p.suffix == ".parquet":
        from embclust.engine.rows import ParquetRows

        source = ParquetRows([str(p.resolve())], [0, int(X.shape[0])], int(X.shape[1]), vector_column, list(features),
                             id_column or None)
    return Dataset(
        name=name,
        X=X,
        ids=ids,
        labels=labels,
        texts=texts,
        feature_names=None if vector_column else features,
        metadata={c: as_strings(table[c], where=f"{p}: metadata column {c!r} (dataset.metadata_columns)")
                  for c in metadata_columns},
        source=source,
    )


def column_names(value, key: str) -> list[str]:
    """A column-list setting as a list: one name given alone (``dataset.numeric_columns=age``) is a list of one."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    try:
        names = list(value)
    except TypeError:
        raise ConfigError(f"{key}={value!r} must be a list of column names, e.g. {key}=[a,b]") from None
    if not all(isinstance(n, str) for n in names):
        raise ConfigError(f"{key}={names!r} must be a list of column names, e.g. {key}=[a,b]")
    return names


def load_tabular(
    path: str,
    numeric_columns: list[str],
    categorical_columns: list[str] | None = None,
    encoding: str = "onehot",
    id_column: str | None = None,
    label_column: str | None = None,
    name: str = "tabular",
) -> Dataset:
    """Numeric plus categorical columns (one-hot or ordinal encoded) as one feature matrix."""
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder

    if encoding not in ("onehot", "ordinal"):
        raise ConfigError(f"dataset.encoding={encoding!r} is not allowed (allowed: onehot, ordinal)")
    p, schema = open_table(path, {"dataset.id_column": id_column, "dataset.label_column": label_column})
    numeric_columns = column_names(numeric_columns, "dataset.numeric_columns")
    categorical_columns = column_names(categorical_columns, "dataset.categorical_columns")
    if not numeric_columns and not categorical_columns:
        raise ConfigError("dataset.numeric_columns and dataset.categorical_columns are both empty")
    _refuse_repeats(numeric_columns, "dataset.numeric_columns")
    _refuse_repeats(categorical_columns, "dataset.categorical_columns")
    both = [c for c in numeric_columns if c in categorical_columns]
    if both:
        raise ConfigError(f"{p}: column {both[0]!r} is in dataset.numeric_columns and dataset.categorical_columns: "
                          "a column is one or the other, not both")
    roles = {"dataset.id_column": id_column, "dataset.label_column": label_column}
    for key, role in roles.items():
        if role and role in (*numeric_columns, *categorical_columns):
            raise ConfigError(f"{p}: column {role!r} is {key} and a feature (dataset.numeric_columns/categorical_columns): "
                              "the clusters would follow it; a column is a feature or the id / label, not both")
    for col in [*numeric_columns, *categorical_columns]:
        require_column(schema, col, "dataset.numeric_columns/categorical_columns", p)
    for col in numeric_columns:
        if not _is_numeric(schema[col]):
            raise DataError(f"{p}: numeric column {col!r} is not numeric (type {schema[col]}): list it in "
                            "dataset.categorical_columns instead (a yes/no or text column is a category)")
    extra = [c for c in (id_column, label_column) if c]
    as_text = label_text_column(label_column, id_column)
    table, numeric = read_columns(p, schema, list(dict.fromkeys(extra + categorical_columns)), list(numeric_columns), as_text)
    parts = [numeric] if numeric_columns else []
    names = list(numeric_columns)
    if categorical_columns:
        cats = np.column_stack([as_strings(table[c], where=f"{p}: categorical column {c!r} (dataset.categorical_columns)")
                                for c in categorical_columns])
        for j, col in enumerate(categorical_columns):
            distinct = np.unique(cats[:, j]).size
            if distinct > 50 and distinct > cats.shape[0] // 2:  # a feature per value: the clusters follow it
                log.warning("%s: categorical column %r has %d distinct values in %d rows, like an id: it becomes %s; "
                            "leave it out of dataset.categorical_columns (or make it dataset.id_column)", p, col, distinct,
                            cats.shape[0], f"{distinct} one-hot columns" if encoding == "onehot" else "arbitrary codes")
        if encoding == "onehot":
            enc = OneHotEncoder(sparse_output=False, dtype=np.float32, handle_unknown="ignore").fit(cats)
        else:
            enc = OrdinalEncoder(dtype=np.float32).fit(cats)
        parts.append(enc.transform(cats))
        names += [str(n) for n in enc.get_feature_names_out(categorical_columns)]
    X = np.hstack(parts) if len(parts) > 1 else parts[0]
    ids, labels = ids_and_labels(table, id_column, label_column, p)
    return Dataset(name=name, X=as_float32(X, f"{p} (dataset.path)"), ids=ids, labels=labels, feature_names=names,
                   from_tabular=True)


# ---------------------------------------------------------------------------- parquet datasets
DATASET_BATCH_ROWS = 65_536


def is_uri(path: str | None) -> bool:
    """Whether ``path`` names a filesystem by its scheme (``s3://``, ``gs://``, ``file://``...)."""
    return bool(path) and "://" in str(path)


class Uri(str):
    """A ``scheme://`` location as the loaders print it (``pathlib`` would fold its ``//``)."""

    @property
    def name(self) -> str:
        return self.rstrip("/").rsplit("/", 1)[-1]

    @property
    def suffix(self) -> str:
        return Path(self.name).suffix


def open_parquet(path: str) -> pq.ParquetFile:
    """A parquet file on this machine's disks, or at a URI of any filesystem pyarrow opens."""
    if not is_uri(path):
        return pq.ParquetFile(path)
    import pyarrow.fs as pafs

    filesystem, inner = pafs.FileSystem.from_uri(str(path))
    return pq.ParquetFile(filesystem.open_input_file(inner))


def _uri_files(path: str) -> list[Uri]:
    """The parquet files at a URI: the file, a folder's files (recursively, names starting with
    '.' or '_' left out) or the matches of a glob in its last part, sorted, as URIs."""
    import fnmatch

    import pyarrow.fs as pafs

    scheme = path[: path.index("://") + 3]
    wild = [path.find(c) for c in "*?[" if c in path]
    folder_uri, pattern = path.rstrip("/"), None
    if wild:
        cut = path.rfind("/", 0, min(wild))
        folder_uri, pattern = path[:cut], path[cut + 1 :]
    try:
        filesystem, folder = pafs.FileSystem.from_uri(folder_uri)
        info = filesystem.get_file_info(folder)
        if pattern is None and info.type == pafs.FileType.File:
            infos = [info]
        elif info.type == pafs.FileType.Directory:
            infos = filesystem.get_file_info(pafs.FileSelector(folder, recursive=pattern is None))
        else:
            raise DataError(f"not found: {path} (dataset.path)")
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise DataError(f"{path} cannot be listed (dataset.path): {' '.join(str(exc).split())[:200]}") from None
    files = []
    for entry in infos:
        if entry.type != pafs.FileType.File or not entry.path.lower().endswith(".parquet"):
            continue
        relative = entry.path[len(folder) :].lstrip("/") if entry.path != folder else entry.base_name
        if pattern is not None and not fnmatch.fnmatchcase(relative, pattern):
            continue
        if entry.path != folder and any(part.startswith((".", "_")) for part in relative.split("/")):
            continue
        files.append(Uri(scheme + entry.path))
    if not files:
        raise DataError(f"{path}: no .parquet file there (dataset.path)")
    return sorted(files)


def dataset_files(path: str) -> list[Path]:
    """The parquet files of a folder (names starting with '.' or '_' left out) or a glob, sorted;
    at a URI (``s3://bucket/embeddings/``), the same as URIs."""
    import glob

    if is_uri(path):
        return _uri_files(str(path))
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*.parquet") if not any(part.startswith((".", "_")) for part in f.relative_to(p).parts))
        if not files:
            raise DataError(f"{path}: the folder holds no .parquet files (dataset.path; a folder is read as parquet "
                            "files: point dataset.path at the file itself for a .csv or .npy)")
    else:
        files = sorted(Path(f) for f in glob.glob(str(path)) if Path(f).is_file())
        if not files:
            raise DataError(f"{path}: no file matches this pattern (dataset.path)")
    for f in files:
        check_file(str(f), (".parquet",), "dataset.path")
    return files


def load_parquet_dataset(
    path: str,
    id_column: str | None = None,
    feature_prefix: str | None = None,
    feature_columns: list[str] | None = None,
    vector_column: str | None = None,
    label_column: str | None = None,
    text_column: str | None = None,
    metadata_columns: list[str] | None = None,
    name: str = "table",
    rows_on_driver: bool = True,
) -> Dataset:
    """Embeddings from many parquet files (a folder or a glob), read as one pyarrow dataset.

    ``rows_on_driver=False`` (engine=ray): only the id, label, text and metadata columns are read
    here; the vectors stay in the files, a view that the passes read where they run.

    Only the needed columns are read, one record batch at a time, into one float32 matrix that
    lives in memory or, above ``memory.spill_above_mb``, in a temporary file (see
    :func:`embclust.blocks.scratch_matrix`): the files are never held whole beside it. Rows come
    in file order (files sorted by name), so the same files give the same matrix.
    """
    from embclust import blocks

    files = dataset_files(path)
    p = Uri(path) if is_uri(path) else Path(path)
    try:
        arrow_schema = open_parquet(str(files[0])).schema_arrow  # the dataset's schema: its first file's
        schema = {f.name: f.type for f in arrow_schema}
        counts = [open_parquet(str(f)).metadata.num_rows for f in files]
        n_rows = sum(counts)
    except (pa.ArrowException, OSError) as exc:
        raise _read_error(p, exc, "cannot be read as parquet files", []) from exc
    for key, column in {"dataset.id_column": id_column, "dataset.label_column": label_column,
                        "dataset.text_column": text_column, "dataset.vector_column": vector_column}.items():
        require_column(schema, column, key, p)
    metadata_columns = column_names(metadata_columns, "dataset.metadata_columns")
    for column in metadata_columns:
        require_column(schema, column, "dataset.metadata_columns", p)
    if n_rows == 0:
        raise DataError(f"{path}: 0 rows in {len(files)} parquet files")
    roles = [c for c in (id_column, label_column, text_column, *metadata_columns) if c]
    features = [] if vector_column else _select_features(
        schema, p, feature_prefix, column_names(feature_columns, "dataset.feature_columns") or None, roles=roles
    )
    if vector_column:
        value = schema[vector_column]
        if not (pa.types.is_list(value) or pa.types.is_large_list(value) or pa.types.is_fixed_size_list(value)):
            raise DataError(f"{p}: vector column {vector_column!r} is {value}, expected a list of numbers")
        first = next(iter(open_parquet(str(files[0])).iter_batches(batch_size=1, columns=[vector_column])))
        n_features = len(first.column(0)[0]) if first.num_rows else 0
    else:
        n_features = len(features)
    extra = list(dict.fromkeys(c for c in (id_column, label_column, text_column, *metadata_columns) if c))
    X = blocks.scratch_matrix(n_rows if rows_on_driver else 0, n_features, np.float32, "parquet vectors")
    vector_columns = ([vector_column] if vector_column else features) if rows_on_driver else []
    parts: list[pa.RecordBatch] = []
    start, started, last = 0, time.perf_counter(), time.perf_counter()
    for f in files:
        try:
            reader = open_parquet(str(f))
            lacking = [c for c in dict.fromkeys(extra + vector_columns) if c not in reader.schema_arrow.names]
            if lacking:
                raise DataError(f"{f}: has no column {', '.join(repr(c) for c in lacking)}, which the first file "
                                f"{Path(str(files[0])).name} has: the files of dataset.path={path} must share their "
                                "columns (move the others away, or point dataset.path at one file or a glob)")
            for batch in reader.iter_batches(batch_size=DATASET_BATCH_ROWS, columns=extra + vector_columns):
                stop = start + batch.num_rows
                if not vector_columns:
                    pass
                elif vector_column:
                    ids = np.arange(start, stop)
                    vectors = _vectors_from_list_column(pa.chunked_array([batch.column(vector_column)]), vector_column, f, ids)
                    if vectors.shape[1] != n_features:
                        raise DataError(f"{f}: vector column {vector_column!r} holds vectors of length {vectors.shape[1]}, "
                                        f"the first file's are of length {n_features}")
                    X[start:stop] = vectors
                else:
                    X[start:stop] = np.stack([float32_column(batch.column(c), c, f) for c in features], axis=1)
                parts.append(batch.select(extra))
                start = stop
                if time.perf_counter() - last > 10:
                    last = time.perf_counter()
                    log.info("load: %d / %d rows read (%.0f s)", start, n_rows, last - started)
        except (pa.ArrowException, OSError) as exc:
            raise _read_error(f, exc, "failed to read columns", list(schema)) from exc
    table = pa.Table.from_batches(parts, schema=pa.schema([arrow_schema.field(c) for c in extra]))
    ids, labels = ids_and_labels(table, id_column, label_column, p)
    from embclust.engine.rows import ParquetRows

    source = ParquetRows([str(f) if is_uri(str(f)) else str(Path(f).resolve()) for f in files],
                         [int(x) for x in np.concatenate([[0], np.cumsum(counts)])],
                         int(n_features), vector_column, list(features), id_column or None)
    if not rows_on_driver:
        from embclust.engine.rows import LocalRows

        X = LocalRows(source)
    return Dataset(
        source=source,
        name=name,
        X=X,
        ids=ids,
        labels=labels,
        texts=as_strings(table[text_column], "", text_where(p, text_column)) if text_column else None,
        feature_names=None if vector_column else features,
        metadata={c: as_strings(table[c], where=f"{p}: metadata column {c!r} (dataset.metadata_columns)")
                  for c in metadata_columns},
    )
