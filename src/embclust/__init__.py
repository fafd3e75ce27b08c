"""embclust: config-driven, reproducible experiments for clustering embeddings."""

__version__ = "0.1.0"
