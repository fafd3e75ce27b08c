"""embclust: config-driven, reproducible experiments for clustering embeddings."""

__version__ = "0.1.0"

import os as _os

# MLflow draws a progress bar on stderr for every artifact download (the best cell's config,
# drill-down labels): one line per stage is what embclust prints.
_os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

from embclust.resolvers import register as _register_resolvers

_register_resolvers()
