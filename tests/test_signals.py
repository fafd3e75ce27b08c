"""SIGTERM / SIGINT during ``python run.py``: the run ends KILLED with the reason, exit 128 + signal."""

import os
import signal
import subprocess
import sys
import time

import mlflow
import pytest

from embclust.signals import Stopped, stop_on_signals
from conftest import RUN_PY

# Real slow work: KMeans with many initialisations on 100,000 points takes minutes, and
# scikit-learn returns to Python between initialisations, where the signal is handled.
SLOW = (
    "reducer=none", "analysis.explain.enabled=false", "dataset=synthetic", "dataset.n_samples=100000",
    "dataset.n_features=32", "clusterer.n_clusters=100", "clusterer.n_init=1000",
)


def test_handler_raises_and_the_previous_handler_comes_back():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Stopped) as info:
        with stop_on_signals():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler interrupts this
    assert str(info.value) == "stopped by SIGTERM" and info.value.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_during_a_run_ends_it_killed(tmp_path, tracking_uri, sig, code):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    cmd = [sys.executable, str(RUN_PY), *SLOW, f"mlflow.tracking_uri={tracking_uri}", f"hydra.run.dir={tmp_path / 'out'}"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    try:
        for line in proc.stderr:  # wait until the clustering has started
            seen.append(line)
            if "] cluster" in line:
                break
        else:
            pytest.fail("run ended before clustering: " + "".join(seen)[-2000:])
        time.sleep(1)
        proc.send_signal(sig)
        stdout, rest = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = "".join(seen) + rest
    name = signal.Signals(sig).name
    assert proc.returncode == code, stderr[-2000:]
    assert f"KILLED: stopped by {name}" in stderr and "Traceback" not in stderr
    assert stdout == ""
    mlflow.set_tracking_uri(tracking_uri)
    (run,) = mlflow.search_runs(experiment_names=["embclust"], output_format="list")
    assert run.info.status == "KILLED"
    assert run.data.tags["error"] == f"stopped by {name}"
    assert "silhouette" not in run.data.metrics
