"""``hydra/launcher=ray``: registered in Hydra's ConfigStore when Hydra scans ``hydra_plugins``.

Imports no Ray here: Hydra imports every plugin module on every run.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class RayLauncherConf:
    _target_: str = "hydra_plugins.embclust_ray_launcher.ray_launcher.RayLauncher"
    # Ray cluster to run on: null connects to $RAY_ADDRESS or the cluster started with
    # `ray start` on this machine, else starts a local one; "auto" requires a running cluster;
    # "ray://<head>:10001" or "<head>:6379" for a remote cluster.
    address: Optional[str] = None
    # Resources each job (sweep cell) reserves; at most (cluster CPUs / num_cpus) run at once.
    num_cpus: float = 1
    num_gpus: float = 0
    # Driver environment variables copied to every task (their values when the sweep starts):
    # the sweep's parent run (EMBCLUST_SWEEP), cache folder, MLflow URI and credentials.
    env_prefixes: List[str] = field(default_factory=lambda: ["EMBCLUST_", "MLFLOW_"])
    # Extra keyword arguments for ray.init(...) and for the task's .options(...).
    init: Dict[str, Any] = field(default_factory=dict)
    remote: Dict[str, Any] = field(default_factory=dict)


ConfigStore.instance().store(
    group="hydra/launcher",
    name="ray",
    node=RayLauncherConf,
    provider="embclust_ray_launcher",
)
