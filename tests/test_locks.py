"""File locks: a stopped holder makes others go on (cache) or fail with a line (store), never hang."""

import logging
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from embclust.data import make_synthetic
from embclust.errors import EmbclustError
from embclust.locks import HeldByStoppedProcess, file_lock
from embclust.preprocess import build_preprocessing, fit_preprocessing
from embclust.sweep.cache import cached_preprocessing, preprocess_key
from embclust.tracking.store import store_lock

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")

_HOLDER = """
import os, signal, sys, time
from embclust.locks import file_lock
with file_lock(sys.argv[1], "test"):
    print("held", flush=True)
    if sys.argv[2] == "stop":
        os.kill(os.getpid(), signal.SIGSTOP)
    time.sleep(float(sys.argv[3]))
"""


def _state(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rfind(")") + 2]


def _holder(lock: Path, mode: str, hold_s: float = 60.0) -> subprocess.Popen:
    """A process holding ``lock``; with mode 'stop' it stops itself once it holds it."""
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(lock), mode, str(hold_s)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    deadline = time.time() + 30
    while mode == "stop" and _state(proc.pid) != "T":
        assert time.time() < deadline, "the holder did not stop"
        time.sleep(0.05)
    return proc


def _end(proc: subprocess.Popen) -> None:
    proc.kill()  # SIGKILL ends a stopped process too
    proc.wait(timeout=30)


def test_a_stopped_holder_is_named_instead_of_waited_for(tmp_path):
    lock = tmp_path / "x.lock"
    holder = _holder(lock, "stop")
    try:
        started = time.monotonic()
        with pytest.raises(HeldByStoppedProcess) as info:
            with file_lock(lock, "the thing"):
                pass
        assert time.monotonic() - started < 5
        assert info.value.pid == holder.pid and "the thing is held by process" in str(info.value)
    finally:
        _end(holder)
    with file_lock(lock, "the thing"):  # free again once the holder is gone
        pass


@pytest.mark.parametrize("hold_s, noted", [(3.5, True), (0.8, False)])
def test_a_running_holder_is_waited_for_with_a_note_once_the_wait_is_long(tmp_path, caplog, hold_s, noted):
    lock = tmp_path / "x.lock"
    holder = _holder(lock, "run", hold_s=hold_s)
    try:
        started = time.monotonic()
        with caplog.at_level(logging.INFO, logger="embclust.locks"), file_lock(lock, "the thing"):
            waited = time.monotonic() - started
    finally:
        holder.wait(timeout=30)
    assert waited > 0.3  # it did wait for the holder to let go
    notes = [r.getMessage() for r in caplog.records if "waiting for the thing" in r.getMessage()]
    # a short wait (cells of a parallel sweep taking turns at the store) is not worth a line
    assert bool(notes) == noted and all(str(holder.pid) in note for note in notes)


def test_cache_entry_locked_by_a_stopped_process_is_computed_here(tmp_path, caplog):
    X = make_synthetic(n_samples=400, n_features=12, seed=0).X
    config = {"pca_components": 4}
    entry = tmp_path / "preprocess" / preprocess_key("fp", config)
    fits = []

    def fit():
        fits.append(1)
        pipe = build_preprocessing("l2", 4)
        return pipe, fit_preprocessing(pipe, X)

    holder = _holder(entry.with_name(entry.name + ".lock"), "stop")
    try:
        started = time.monotonic()
        with caplog.at_level(logging.WARNING):
            pipe, Xp, hit = cached_preprocessing("fp", config, tmp_path, fit)
        assert time.monotonic() - started < 10
    finally:
        _end(holder)
    assert not hit and fits == [1] and Xp.shape == (400, 4)
    np.testing.assert_allclose(pipe.transform(X[:5]), Xp[:5], rtol=1e-5)
    assert any("stopped" in r.getMessage() and "without the cache" in r.getMessage() for r in caplog.records)
    # the private copy is gone and nothing half-written passes for the entry
    assert not entry.exists() and [p.name for p in entry.parent.iterdir()] == [entry.name + ".lock"]
    # with the holder gone, the next call fills the cache as usual
    assert not cached_preprocessing("fp", config, tmp_path, fit)[2]
    assert cached_preprocessing("fp", config, tmp_path, fit)[2] and fits == [1, 1]


def test_store_locked_by_a_stopped_process_is_an_error_saying_what_to_do(tmp_path):
    db = tmp_path / "mlflow.db"
    holder = _holder(db.with_name("mlflow.db.lock"), "stop")
    try:
        with pytest.raises(EmbclustError) as info:
            with store_lock(f"sqlite:///{db}"):
                pass
    finally:
        _end(holder)
    message = str(info.value)
    assert f"process {holder.pid}" in message and f"kill -CONT {holder.pid}" in message and str(db) in message


_SQLITE_HOLDER = """
import os, signal, sqlite3, sys
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("BEGIN IMMEDIATE")  # SQLite's write lock, as a process stopped mid-write holds it
print("held", flush=True)
os.kill(os.getpid(), signal.SIGSTOP)
"""


@pytest.mark.slow
def test_a_store_kept_locked_by_a_stopped_process_ends_the_run_with_one_line(run_cli, tracking_uri):
    small = ("dataset=synthetic", "dataset.n_samples=500", "reducer=none", "analysis.explain.enabled=false")
    assert run_cli(*small).returncode == 0  # the store exists
    db = tracking_uri[len("sqlite:///"):]
    holder = subprocess.Popen([sys.executable, "-c", _SQLITE_HOLDER, db], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        res = run_cli(*small)
    finally:
        _end(holder)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 1 and len(lines) == 1, res.stderr[-3000:]
    assert "stayed locked by another process" in lines[0] and "resume or end it" in lines[0]



def _locked_error():
    import sqlite3

    from sqlalchemy.exc import OperationalError

    return OperationalError("UPDATE runs", {}, sqlite3.OperationalError("database is locked"))


def test_a_store_locked_while_it_is_opened_is_waited_for_then_named_as_locked(tmp_path, monkeypatch):
    from embclust.errors import ConfigError
    from embclust.tracking import store

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    attempts = []

    def open_store(tracking_uri, name, locked_for=2):
        attempts.append(name)
        if len(attempts) <= locked_for:
            raise ConfigError(f"MLflow store mlflow.tracking_uri={tracking_uri!r} cannot be used") from _locked_error()
        return "7"

    monkeypatch.setattr(store, "_open_experiment", open_store)
    assert store.setup_tracking(uri, "e") == "7" and len(attempts) == 3  # a lock that ends is waited out

    attempts.clear()
    monkeypatch.setattr(store, "_MLFLOW_BUSY_TIMEOUT_S", 1)
    monkeypatch.setattr(store, "_open_experiment", lambda u, n: open_store(u, n, locked_for=10**6))
    with pytest.raises(ConfigError) as info:
        store.setup_tracking(uri, "e")
    assert "stayed locked by another process" in str(info.value) and "move the file away" not in str(info.value)
    assert 2 <= len(attempts) <= 4


def test_a_run_error_refused_by_a_locked_store_is_written_on_a_second_wait(caplog):
    from embclust.tracking.store import write_after_lock

    uri = "sqlite:///mlflow.db"
    writes = []

    def write(fail_times):
        writes.append(1)
        if len(writes) <= fail_times:
            raise _locked_error()

    write_after_lock(lambda: write(1), uri)
    assert len(writes) == 2 and "waiting up to" in caplog.text
    writes.clear()
    with pytest.raises(Exception, match="database is locked"):  # locked for good: the error goes on up
        write_after_lock(lambda: write(5), uri)
    assert len(writes) == 2
    writes.clear()
    with pytest.raises(OSError):  # other errors are not retried
        write_after_lock(lambda: (writes.append(1), (_ for _ in ()).throw(OSError(28, "No space left on device"))), uri)
    assert len(writes) == 1


def test_a_best_cell_whose_end_a_locked_store_refuses_is_closed_on_a_second_wait(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import mlflow

    from embclust import pipeline, tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking.setup_tracking(uri, "locks")
    with mlflow.start_run() as run:
        mlflow.log_text("seed: 0\n", "config.yaml")
    run_id = run.info.run_id
    monkeypatch.setattr(pipeline, "execute", lambda *a, **k: SimpleNamespace(report="report"))
    original = mlflow.MlflowClient.set_terminated
    ends = []

    def end_refused_once(self, rid, status=None, end_time=None):
        ends.append(status)
        if len(ends) == 1:
            raise _locked_error()
        return original(self, rid, status, end_time)

    monkeypatch.setattr(mlflow.MlflowClient, "set_terminated", end_refused_once)
    with pytest.raises(Exception, match="database is locked"):  # the sweep's summary still says the store failed
        pipeline.complete_best_cell(run_id, plan=None)
    assert ends == ["FINISHED", "FINISHED"]
    assert mlflow.MlflowClient().get_run(run_id).info.status == "FINISHED"  # not left RUNNING


def test_a_run_whose_error_a_locked_store_refused_twice_gets_it_once_its_end_is_written(tmp_path, monkeypatch):
    import mlflow

    from embclust import pipeline, stages, tracking

    tracking.setup_tracking(f"sqlite:///{tmp_path / 'mlflow.db'}", "locks")
    run_id = mlflow.start_run().info.run_id
    refused = []

    def set_tag_refused(key, value):
        refused.append(key)
        raise _locked_error()

    monkeypatch.setattr(mlflow, "set_tag", set_tag_refused)
    with pytest.raises(Exception, match="database is locked"):
        pipeline.record_failure(ValueError("boom"), stages.StageTimer(pipeline.STAGES), run_id, "")
    run = mlflow.MlflowClient().get_run(run_id)
    assert refused == ["error", "error"] and mlflow.active_run() is None
    assert run.info.status == "FAILED" and "boom" in run.data.tags["error"]  # not FAILED without its reason
