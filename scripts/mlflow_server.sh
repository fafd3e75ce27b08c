#!/usr/bin/env bash
# MLflow tracking server for a team or a cluster: runs in a SQLite store, artifacts served
# through the server (--serve-artifacts), so clients and workers need no shared disk.
#
# Usage:
#   scripts/mlflow_server.sh                       # http://127.0.0.1:5000, data in ./mlflow-server
#   MLFLOW_SERVER_DIR=/srv/mlflow HOST=0.0.0.0 PORT=5000 scripts/mlflow_server.sh
#   python run.py tracking=server [mlflow.tracking_uri=http://<host>:<port>]
#
# Environment: MLFLOW_SERVER_DIR (store and artifacts, default ./mlflow-server), HOST (default
# 127.0.0.1: only this machine; 0.0.0.0 exposes it, unauthenticated, to the network), PORT
# (default 5000), MLFLOW_SERVER_ENABLE_JOB_EXECUTION (default false here: MLflow's job runner
# starts about six worker processes of ~370 MB each for GenAI jobs that embclust does not use).
# Extra arguments are passed to `mlflow server`.
set -euo pipefail
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"
dir="${MLFLOW_SERVER_DIR:-mlflow-server}"
mkdir -p "$dir/artifacts"
dir="$(cd "$dir" && pwd)"
exec mlflow server \
    --backend-store-uri "sqlite:///$dir/mlflow.db" \
    --artifacts-destination "$dir/artifacts" \
    --serve-artifacts \
    --host "${HOST:-127.0.0.1}" \
    --port "${PORT:-5000}" \
    "$@"
