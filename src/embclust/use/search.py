"""Search the documents of a text run: route the query to its nearest clusters, rank their members."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from embclust.errors import ConfigError
from embclust.use import runs
from embclust.use.retrieval import RoutingIndex

log = logging.getLogger(__name__)

TEXT_LOADER = "embclust.data.text.load_texts"


def search(run_id: str, query: str, top: int = 10, probe: int = 3) -> pd.DataFrame:
    """Top ``top`` documents for ``query`` among the ``probe`` clusters nearest to it: rank, score,
    cluster, id, text."""
    if top < 1 or probe < 1:
        raise ConfigError(f"--top-k={top} and --probe={probe} must both be >= 1")
    if not query.strip():  # its embedding ranks documents all the same: results that mean nothing
        raise ConfigError("the query is empty: give the text to search for")
    run = runs.resolve_run(run_id)
    cfg = runs.load_config(run)
    if cfg.dataset.get("_target_") != TEXT_LOADER:
        raise ConfigError(
            f"run {run.info.run_id} clustered dataset '{cfg.dataset.get('name')}', not texts: search embeds the "
            "query with the run's text model, so it needs a run on dataset=texts"
        )
    from embclust.data.text import embed_texts

    labels = runs.load_labels(run, ["id", "cluster"])
    ds = runs.load_dataset(runs.as_run_read_them(run, cfg))  # relative paths from where the run was started
    rows = runs.align_to_labels(ds, labels)
    cluster = labels["cluster"].to_numpy()
    index = RoutingIndex.build(ds.X[rows], cluster)
    vector = embed_texts(np.asarray([query]), model=cfg.dataset.model, device=cfg.dataset.get("device", "cpu"), cache_dir=None)
    found, scores = index.search(vector[0], top, probe)
    probed = index.route(vector, probe)[0]
    log.info("query routed to clusters %s (%d of %d documents scanned)", ", ".join(map(str, index.clusters[probed])),
             int(np.isin(index.lists, probed).sum()), cluster.size)
    texts = ds.texts[rows] if ds.texts is not None else np.full(cluster.size, "")
    return pd.DataFrame(
        {
            "rank": np.arange(1, found.size + 1),
            "score": np.round(scores.astype(np.float64), 4),
            "cluster": cluster[found],
            "id": labels["id"].to_numpy()[found],
            "text": texts[found],
        }
    )
