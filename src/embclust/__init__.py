"""embclust: config-driven, reproducible experiments for clustering embeddings."""

__version__ = "0.1.0"

import os as _os

# MLflow draws a progress bar on stderr for every artifact download (the best cell's config,
# drill-down labels): one line per stage is what embclust prints.
_os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# embclust runs offline: MLflow's usage telemetry (read when mlflow is imported) would fetch its
# configuration from the network and send events at exit. MLFLOW_DISABLE_TELEMETRY=false turns it on.
_os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# A Databricks-only lookup in mlflow.start_run that imports IPython (0.15 s) to find dbutils.
_os.environ.setdefault("MLFLOW_ENABLE_SGC_RUN_RESUMPTION_FOR_DATABRICKS_JOBS", "false")

from embclust.resolvers import register as _register_resolvers

_register_resolvers()
