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


def _as_from_a_terminal():
    # In the child: SIGINT and SIGHUP as a terminal delivers them, even where pytest itself runs as
    # a background job (SIGINT ignored) or under nohup (SIGHUP ignored), which the child inherits.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGHUP, 129)])
def test_signal_during_a_run_ends_it_killed(tmp_path, tracking_uri, sig, code):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    cmd = [sys.executable, str(RUN_PY), *SLOW, f"mlflow.tracking_uri={tracking_uri}", f"hydra.run.dir={tmp_path / 'out'}"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_as_from_a_terminal)
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


def test_deferred_holds_a_signal_until_the_block_ends():
    from embclust.signals import deferred

    with pytest.raises(Stopped):
        with stop_on_signals():
            reached = False
            with deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)
                reached = True  # the step ran to its end; the signal comes after it
            pytest.fail("the held signal was not delivered when the block ended")
    assert reached


def test_a_stop_lost_in_a_finaliser_is_raised_at_the_next_checkpoint():
    import gc

    from embclust import signals

    class RaisesOnCollect:
        def __del__(self):
            raise Stopped(signal.SIGTERM)  # as a signal handler does when it lands in a finaliser

    obj = RaisesOnCollect()
    del obj
    gc.collect()  # Python prints "Exception ignored" and drops it: embclust keeps it
    with pytest.raises(Stopped, match="stopped by SIGTERM"):
        signals.checkpoint()
    signals.checkpoint()  # raised once only


def _sweep_until(tmp_path, tracking_uri, line: str, sig, *overrides, preexec=None):
    """Start a small sweep, send ``sig`` once ``line`` is on its stderr, wait for it to end.

    ``preexec``: how the child starts (default: SIGINT and SIGHUP as from a terminal)."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    cmd = [sys.executable, str(RUN_PY), "-m", "dataset=synthetic", "reducer=none", *overrides,
           f"mlflow.tracking_uri={tracking_uri}", f"hydra.sweep.dir={tmp_path / 'multirun'}"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=preexec or _as_from_a_terminal)
    seen = []
    try:
        for text in proc.stderr:
            seen.append(text)
            if line in text:
                break
        else:
            pytest.fail(f"the sweep ended before {line!r}: " + "".join(seen)[-2000:])
        proc.send_signal(sig)
        stdout, rest = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    mlflow.set_tracking_uri(tracking_uri)
    runs = mlflow.search_runs(experiment_names=["embclust"], output_format="list")
    return proc.returncode, "".join(seen) + rest, runs


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_between_cells_stops_the_sweep_before_the_next_cell(tmp_path, tracking_uri, sig, code):
    rc, stderr, runs = _sweep_until(tmp_path, tracking_uri, "cell 1/3 done", sig, "clusterer.n_clusters=5,6,7")
    name = signal.Signals(sig).name
    assert rc == code, stderr[-2000:]
    assert "Traceback" not in stderr and "Exception ignored" not in stderr
    assert not [r for r in runs if r.info.status == "RUNNING"]
    (parent,) = [r for r in runs if r.data.tags.get("sweep_role") == "parent"]
    assert parent.info.status == "KILLED" and parent.data.tags["error"] == f"sweep stopped by {name}"
    assert f"KILLED: sweep stopped by {name}" in stderr
    cells = [r for r in runs if r.data.tags.get("sweep_role") == "cell"]
    assert 1 <= len(cells) < 3  # cell 3 never started
    assert {r.info.status for r in cells} <= {"FINISHED", "KILLED"}


def test_a_signal_during_the_best_cells_report_keeps_its_result_and_kills_the_sweep(tmp_path, tracking_uri):
    rc, stderr, runs = _sweep_until(
        tmp_path, tracking_uri, "best cell [7/10] analyse", signal.SIGTERM, "clusterer.n_clusters=5,6"
    )  # at once: from this line to the report's end is under a second on a fast machine
    assert rc == 143, stderr[-2000:]
    assert "Traceback" not in stderr and "Exception ignored" not in stderr
    (parent,) = [r for r in runs if r.data.tags.get("sweep_role") == "parent"]
    assert parent.info.status == "KILLED" and parent.data.tags["error"] == "sweep stopped by SIGTERM"
    cells = [r for r in runs if r.data.tags.get("sweep_role") == "cell"]
    assert [r.info.status for r in cells] == ["FINISHED", "FINISHED"]
    best = next(r for r in cells if r.data.tags.get("report_error"))
    assert best.data.tags["report_error"] == "full report stopped by SIGTERM"
    assert "silhouette" in best.data.metrics  # the light cell's scores stand
    # the same sweep again: cells are skipped, the best cell's report is made, the stop's tag goes
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    again = subprocess.run(
        [sys.executable, str(RUN_PY), "-m", "dataset=synthetic", "reducer=none", "clusterer.n_clusters=5,6",
         f"mlflow.tracking_uri={tracking_uri}", f"hydra.sweep.dir={tmp_path / 'multirun'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert again.returncode == 0, again.stderr[-2000:]
    redone = mlflow.get_run(best.info.run_id)
    assert "report_error" not in redone.data.tags and redone.data.tags.get("sweep_best") == "true"
    assert mlflow.get_run(parent.info.run_id).info.status == "FINISHED"


def test_a_hangup_ignored_at_start_stays_ignored_and_an_interrupt_is_handled_anyway():
    # Under nohup a closed terminal must not stop the run: SIGHUP is handled only when it was not
    # ignored at start. SIGINT, which a script's background job (`cmd &`) inherits ignored, is
    # handled either way, so `kill -INT` stops the run as it does in the foreground.
    code = "import signal, embclust.signals as s; print(signal.SIGHUP in s.HANDLED, signal.SIGINT in s.HANDLED)"

    def run(preexec):
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                              preexec_fn=preexec).stdout.strip()

    def ignore_both():
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    assert run(_as_from_a_terminal) == "True True"
    assert run(ignore_both) == "False True"


def test_an_interrupt_between_cells_stops_a_sweep_started_with_it_ignored(tmp_path, tracking_uri):
    # A script's background job inherits SIGINT ignored; the sweep still stops before its next cell.
    def background_job():
        _as_from_a_terminal()
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    rc, stderr, runs = _sweep_until(tmp_path, tracking_uri, "cell 1/3 done", signal.SIGINT, "clusterer.n_clusters=5,6,7",
                                    preexec=background_job)
    assert rc == 130, stderr[-2000:]
    assert "KILLED: sweep stopped by SIGINT" in stderr
    assert not [r for r in runs if r.info.status == "RUNNING"]
    assert 1 <= len([r for r in runs if r.data.tags.get("sweep_role") == "cell"]) < 3


def _background_job():
    _as_from_a_terminal()
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize(("multirun", "preexec", "after_s"), [
    (False, _background_job, 0.3), (True, _background_job, 0.3), (False, _as_from_a_terminal, 0.3),
    (True, _as_from_a_terminal, 1.2)])
def test_an_interrupt_during_start_up_is_not_lost(tmp_path, tracking_uri, multirun, preexec, after_s):
    # Sent while the process still imports its libraries, before any handler of embclust's: with
    # SIGINT ignored at start it used to be dropped and the run went on to finish with status 0;
    # from a terminal, Python's KeyboardInterrupt printed the libraries' traceback, or was lost.
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    cmd = [sys.executable, str(RUN_PY), *(["-m", "clusterer.n_clusters=5,6"] if multirun else []), "reducer=none",
           f"mlflow.tracking_uri={tracking_uri}", f"hydra.run.dir={tmp_path / 'out'}", f"hydra.sweep.dir={tmp_path / 'multirun'}"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=preexec)
    time.sleep(after_s)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 130, stderr[-2000:]
    assert "stopped by SIGINT" in stderr.strip().splitlines()[-1] and "Traceback" not in stderr
    mlflow.set_tracking_uri(tracking_uri)
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert not [r for r in runs if r.info.status in ("RUNNING", "FINISHED")]


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_a_terminate_or_hangup_during_start_up_says_so(tmp_path, tracking_uri, sig, code):
    # Before any run exists the process ended at once with status 143 and nothing on stderr.
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    cmd = [sys.executable, str(RUN_PY), "reducer=none", f"mlflow.tracking_uri={tracking_uri}",
           f"hydra.run.dir={tmp_path / 'out'}"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_as_from_a_terminal)
    time.sleep(0.5)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode == code, stderr[-2000:]
    assert stderr.strip().splitlines()[-1] == f"stopped by {signal.Signals(sig).name} while starting: no run was made"
    mlflow.set_tracking_uri(tracking_uri)
    assert mlflow.search_runs(search_all_experiments=True, output_format="list") == []


def test_a_stop_while_the_run_is_set_up_ends_it_killed(tmp_path, tracking_uri, monkeypatch):
    # The signal lands after the run exists and before its pipeline starts (validation, params).
    from embclust import validate

    def stopped_while_validating(cfg):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)

    monkeypatch.setattr(validate, "validate_config", stopped_while_validating)
    from hydra import compose, initialize_config_dir

    from embclust import runner

    with initialize_config_dir(version_base=None, config_dir=str(RUN_PY.parent / "conf")):
        cfg = compose("config", overrides=["reducer=none", f"mlflow.tracking_uri={tracking_uri}"])
    with pytest.raises(SystemExit) as info:
        runner._run(cfg)
    assert info.value.code == 143
    mlflow.set_tracking_uri(tracking_uri)
    (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert run.info.status == "KILLED" and run.data.tags["error"] == "stopped by SIGTERM"


def test_a_stop_swallowed_by_a_ctypes_callback_is_raised_as_soon_as_the_callback_returns():
    # numba compiles through ctypes callbacks: a stop raised inside one is printed as "Exception
    # ignored" and dropped; it used to wait for the next stage (UMAP: 30-45 s).
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    compare_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int))
    sent = []

    def compare(a, b):
        if not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGTERM)  # its handler runs in this callback
            sum(range(1000))
        return a[0] - b[0]

    values = (ctypes.c_int * 64)(*range(64, 0, -1))
    callback = compare_type(compare)
    started = time.perf_counter()
    with pytest.raises(Stopped, match="stopped by SIGTERM"):
        with stop_on_signals():
            libc.qsort(values, 64, ctypes.sizeof(ctypes.c_int), callback)
            time.sleep(10)
    assert time.perf_counter() - started < 5
    from embclust import signals

    signals.checkpoint()  # nothing left over to raise a second time


def _children(pid: int) -> set[int]:
    found = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as fh:
            found |= {int(c) for c in fh.read().split()}
    return found


def test_the_workers_of_a_joblib_sweep_killed_with_sigkill_do_not_stay(tmp_path, tracking_uri):
    # kill -9 (or the out-of-memory killer) of the sweep left its workers running, idle, for good.
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    cmd = [sys.executable, str(RUN_PY), "-m", "reducer=none", "clusterer.n_clusters=3,4,5,6,7,8", "hydra/launcher=joblib",
           "hydra.launcher.n_jobs=2", f"mlflow.tracking_uri={tracking_uri}", f"hydra.sweep.dir={tmp_path / 'multirun'}"]
    log = tmp_path / "stderr.txt"
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and " done in " not in log.read_text():  # a worker has run a cell
        time.sleep(0.2)
    workers = _children(proc.pid)
    assert workers, log.read_text()[-2000:]
    proc.kill()
    proc.wait()
    # each worker looks at its parent once a second, ends its cell KILLED (a store write: slower on a busy
    # machine) or exits for good after a 30 s grace; the resource trackers follow their workers
    deadline = time.monotonic() + 45
    while time.monotonic() < deadline and [pid for pid in workers if _state(pid) not in ("gone", "Z")]:
        time.sleep(0.5)
    assert not [pid for pid in workers if _state(pid) not in ("gone", "Z")]


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"
