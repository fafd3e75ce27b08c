"""embclust: config-driven, reproducible experiments for clustering embeddings."""

__version__ = "0.1.0"

from embclust.resolvers import register as _register_resolvers

_register_resolvers()
