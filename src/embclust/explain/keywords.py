"""Keywords of text clusters by class-based TF-IDF (each cluster's documents as one class)."""

from __future__ import annotations

from typing import Callable

import numpy as np
from scipy.sparse import csr_matrix
from sklearn.feature_extraction.text import CountVectorizer, TfidfTransformer

NOISE = -1


def cluster_keywords(
    texts: np.ndarray,
    labels: np.ndarray,
    top_n: int = 10,
    stop_words: str | None = "english",
    max_features: int | None = 50_000,
) -> dict[int, list[str]]:
    """Top ``top_n`` terms per cluster by c-TF-IDF; noise (-1) gets none.

    Term counts are summed per cluster (a cluster x term matrix), then weighted with
    scikit-learn's TfidfTransformer so terms common to every cluster rank low.
    """
    docs = [str(t) for t in texts]
    vectorizer = CountVectorizer(stop_words=stop_words, max_features=max_features)
    try:
        counts = vectorizer.fit_transform(docs)
    except ValueError:  # empty vocabulary: only stop words or empty texts
        return {}
    clusters = np.unique(labels[labels != NOISE])
    keep = np.flatnonzero(labels != NOISE)
    rows = np.searchsorted(clusters, labels[keep])
    indicator = csr_matrix((np.ones(keep.size), (rows, keep)), shape=(clusters.size, len(docs)))
    class_terms = indicator @ counts
    weights = TfidfTransformer(sublinear_tf=True).fit_transform(class_terms).toarray()
    vocab = vectorizer.get_feature_names_out()
    result = {}
    for i, c in enumerate(clusters):
        order = np.argsort(-weights[i], kind="stable")[:top_n]
        result[int(c)] = [str(vocab[j]) for j in order if weights[i, j] > 0]
    return result


def label_clusters(
    keywords: dict[int, list[str]],
    texts: np.ndarray,
    labels: np.ndarray,
    labeler: Callable[[int, list[str], list[str]], str] | None,
    n_examples: int = 5,
) -> dict[int, str]:
    """Optional names for clusters from a user hook (e.g. an LLM call); none when no hook is set.

    The hook gets (cluster id, its keywords, up to ``n_examples`` of its texts) and returns a name.
    """
    if labeler is None:
        return {}
    names = {}
    for c, words in keywords.items():
        examples = [str(t) for t in np.asarray(texts)[labels == c][:n_examples]]
        names[c] = str(labeler(c, words, examples))
    return names
