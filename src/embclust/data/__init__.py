"""Data stage: the Dataset type, file loaders, text embedding, bundled and generated data."""

from embclust.data.builtin import load_digits, make_synthetic
from embclust.data.dataset import (
    Dataset,
    as_float32,
    fingerprint_array,
    subsample,
    take_rows,
    validate_dataset,
)

__all__ = [
    "Dataset",
    "as_float32",
    "fingerprint_array",
    "load_digits",
    "make_synthetic",
    "subsample",
    "take_rows",
    "validate_dataset",
]
