"""CSV artifacts that are safe to open in a spreadsheet: text cells cannot start a formula."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

# Leading characters that spreadsheets read as the start of a formula (OWASP CSV injection).
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def _neutralise_value(value):
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def neutralise(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``df`` whose text cells starting with = + - @ tab or CR get a leading ``'``.

    Numeric columns are left alone: a negative number is not a formula.
    """
    out = df.copy()
    for column in out.columns:
        if not pd.api.types.is_numeric_dtype(out[column]) and not pd.api.types.is_bool_dtype(out[column]):
            out[column] = out[column].map(_neutralise_value)
    return out


def write_csv(df: pd.DataFrame, path: str | Path) -> None:
    """Write ``df`` as a CSV artifact after :func:`neutralise` (no index column)."""
    neutralise(df).to_csv(path, index=False)
