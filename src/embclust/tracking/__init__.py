"""Track stage: MLflow store and reproducibility tags, plots, the HTML report."""

from embclust.tracking.store import (
    DEFAULT_TRACKING_URI,
    PROCESS_TAG,
    TRACKED_PACKAGES,
    TrackingServerUnreachable,
    check_server,
    close_dead_runs,
    default_tracking_uri,
    flatten_config,
    git_state,
    log_artifacts,
    store_failure_message,
    package_versions,
    reproducibility_tags,
    runs_page_url,
    setup_tracking,
)

__all__ = [
    "DEFAULT_TRACKING_URI",
    "PROCESS_TAG",
    "TRACKED_PACKAGES",
    "TrackingServerUnreachable",
    "check_server",
    "close_dead_runs",
    "default_tracking_uri",
    "flatten_config",
    "git_state",
    "log_artifacts",
    "store_failure_message",
    "package_versions",
    "reproducibility_tags",
    "runs_page_url",
    "setup_tracking",
]
