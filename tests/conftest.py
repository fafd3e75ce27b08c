"""Shared fixtures: a temporary MLflow store and a helper running ``python run.py``."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest

REPO = Path(__file__).resolve().parents[1]
RUN_PY = REPO / "run.py"


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str
    tracking_uri: str

    def runs(self, experiment: str = "embclust"):
        """All MLflow runs of ``experiment`` in this store, newest first."""
        mlflow.set_tracking_uri(self.tracking_uri)
        return mlflow.search_runs(experiment_names=[experiment], output_format="list")


@pytest.fixture
def tracking_uri(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture
def run_cli(tmp_path, tracking_uri):
    """Run ``python run.py *overrides`` in ``tmp_path`` against the temporary store."""

    def _run(*overrides: str, timeout: int = 240) -> CliResult:
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        cmd = [
            sys.executable,
            str(RUN_PY),
            *overrides,
            f"mlflow.tracking_uri={tracking_uri}",
            f"hydra.run.dir={tmp_path / 'outputs'}",
            f"hydra.sweep.dir={tmp_path / 'multirun'}",
        ]
        proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)
        return CliResult(proc.returncode, proc.stdout, proc.stderr, tracking_uri)

    return _run
