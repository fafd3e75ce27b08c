"""The MLflow store: created once under a lock, and bad URIs / deleted experiments as one line."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from conftest import RUN_PY

from embclust.errors import ConfigError
from embclust.tracking import setup_tracking
from embclust.tracking.store import TrackingServerUnreachable

_SETUP = "import sys; from embclust.tracking import setup_tracking; print(setup_tracking(sys.argv[1], 'embclust'))"


def test_processes_started_together_on_a_fresh_sqlite_store_all_succeed(tmp_path):
    uri = f"sqlite:///{tmp_path / 'fresh' / 'mlflow.db'}"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    procs = [
        subprocess.Popen([sys.executable, "-c", _SETUP, uri], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=180) for p in procs]
    for proc, (out, err) in zip(procs, outs):
        assert proc.returncode == 0, err[-2000:]
    assert len({out.strip() for out, _ in outs}) == 1  # one experiment, the same id everywhere
    # A later run into that store works.
    assert setup_tracking(uri, "embclust") == outs[0][0].strip()
    with mlflow.start_run() as run:
        mlflow.log_metric("m", 1.0)
    assert mlflow.get_run(run.info.run_id).info.status == "FINISHED"


def test_a_store_whose_creation_was_killed_is_created_again(tmp_path):
    # MLflow migrates a new database in place; stopped halfway, every later run failed on it.
    import signal
    import time

    db = tmp_path / "mlflow.db"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["EMBCLUST_STORE_TEMPLATE"] = "0"  # MLflow's migrations, not a copy of the cached empty store
    proc = subprocess.Popen([sys.executable, "-c", _SETUP, f"sqlite:///{db}"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list(tmp_path.glob(".mlflow.db.new-*")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert not db.exists()  # the half-built schema never took the store's name
    experiment_id = setup_tracking(f"sqlite:///{db}", "embclust")
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.log_metric("m", 1.0)
    assert mlflow.get_run(run.info.run_id).info.status == "FINISHED"
    assert not list(tmp_path.glob(".mlflow.db.new-*"))  # the stopped creator's file is cleaned up


def test_a_file_that_is_not_a_store_is_one_clear_line(tmp_path):
    db = tmp_path / "mlflow.db"
    db.write_bytes(b"not a database " * 100)
    with pytest.raises(ConfigError, match=r"mlflow.tracking_uri='sqlite:///.*mlflow.db' cannot be used: .*not a database"):
        setup_tracking(f"sqlite:///{db}", "embclust")


def test_unknown_scheme_is_one_clear_line():
    with pytest.raises(ConfigError, match=r"mlflow.tracking_uri='sqlit:///x.db': unknown scheme sqlit:"):
        setup_tracking("sqlit:///x.db", "embclust")


@pytest.mark.parametrize("name", ["", "  "])
def test_a_blank_experiment_name_names_the_key(tmp_path, name):
    with pytest.raises(ConfigError, match=r"^mlflow.experiment_name='\s*' must be a name"):
        setup_tracking(f"sqlite:///{tmp_path / 'mlflow.db'}", name)


def test_deleted_experiment_says_how_to_restore(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment_id = setup_tracking(uri, "gone")
    mlflow.delete_experiment(experiment_id)
    with pytest.raises(ConfigError) as info:
        setup_tracking(uri, "gone")
    assert str(info.value) == (
        f"experiment 'gone' (mlflow.experiment_name) was deleted: restore it with "
        f"'mlflow experiments restore --experiment-id {experiment_id}' or choose another mlflow.experiment_name"
    )


def _one_line_exit_1(res, expected):
    assert res.returncode == 1
    assert expected in res.stderr
    assert "Traceback" not in res.stderr and "Error executing job" not in res.stderr


def _run(tmp_path, uri):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    cmd = [sys.executable, str(RUN_PY), "reducer=none", f"mlflow.tracking_uri={uri}", f"hydra.run.dir={tmp_path / 'out'}"]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)


def test_cli_mistyped_scheme_deleted_experiment_and_unreachable_server(tracking_uri, tmp_path):
    _one_line_exit_1(_run(tmp_path, "htp://localhost:5000"), "unknown scheme htp:")

    mlflow.delete_experiment(setup_tracking(tracking_uri, "embclust"))
    res = _run(tmp_path, tracking_uri)
    _one_line_exit_1(res, "experiment 'embclust' (mlflow.experiment_name) was deleted: restore it with")

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _one_line_exit_1(_run(tmp_path, f"http://127.0.0.1:{port}"), f"MLflow tracking server http://127.0.0.1:{port} is unreachable")


def test_unreachable_server_raises_before_any_work():
    with pytest.raises(TrackingServerUnreachable):
        setup_tracking("http://127.0.0.1:9", "embclust")


def test_a_sqlite_store_in_a_folder_that_cannot_be_made_fails_with_one_line(tmp_path):
    from embclust.errors import ConfigError
    from embclust.tracking.store import setup_tracking

    (tmp_path / "a_file").write_text("not a folder")
    uri = f"sqlite:///{tmp_path / 'a_file' / 'mlflow.db'}"
    with pytest.raises(ConfigError, match=r"cannot write in .*a_file \(.*\); point it at a SQLite file in a folder you can write to"):
        setup_tracking(uri, "e")


def _new_store_run(uri):
    experiment_id = setup_tracking(uri, "embclust")
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.log_metric("m", 1.0)
    client = mlflow.MlflowClient()
    return client.get_run(run.info.run_id), client.get_experiment("0")


def test_new_stores_start_from_the_cached_empty_store_and_match_a_migrated_one(tmp_path, monkeypatch):
    import sqlite3

    from embclust.tracking import store as store_module

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    first, first_default = _new_store_run(f"sqlite:///{tmp_path / 'a.db'}")  # migrations, then cached
    template = store_module.schema_template_path()
    assert template.is_file() and template.parent == tmp_path / "cache" / "embclust"
    with sqlite3.connect(template) as con:
        assert con.execute("SELECT count(*) FROM experiments").fetchone()[0] == 0

    def no_migrations(path):
        raise AssertionError("a second store ran MLflow's migrations again")

    monkeypatch.setattr(store_module, "_migrate_new_store", no_migrations)
    second, second_default = _new_store_run(f"sqlite:///{tmp_path / 'b.db'}")
    assert second.info.status == "FINISHED" and second.data.metrics == {"m": 1.0}
    # MLflow made the Default experiment of the copy itself, where it puts a new store's.
    assert second_default.name == "Default" and second_default.artifact_location == first_default.artifact_location
    schema = [sqlite3.connect(tmp_path / name).execute("SELECT sql FROM sqlite_master ORDER BY name").fetchall()
              for name in ("a.db", "b.db")]
    assert schema[0] == schema[1]


def test_a_damaged_cached_empty_store_is_rebuilt_with_a_warning(tmp_path, monkeypatch, caplog):
    from embclust.tracking import store as store_module

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    template = store_module.schema_template_path()
    template.parent.mkdir(parents=True)
    template.write_bytes(b"SQLite format 3\x00" + b"\x00" * 200)  # truncated
    with caplog.at_level("WARNING", logger="embclust.tracking.store"):
        run, _ = _new_store_run(f"sqlite:///{tmp_path / 'a.db'}")
    assert run.info.status == "FINISHED"
    assert any("is damaged (or not empty); it is rebuilt" in r.getMessage() for r in caplog.records)
    assert store_module._schema_is_whole(template)


def test_a_cached_empty_store_that_holds_runs_is_not_copied_into_new_stores(tmp_path, monkeypatch):
    # A used mlflow.db put in the template's place started every new store with its runs.
    import shutil

    from embclust.tracking import store as store_module

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    used, _ = _new_store_run(f"sqlite:///{tmp_path / 'used.db'}")
    shutil.copyfile(tmp_path / "used.db", store_module.schema_template_path())
    run, _ = _new_store_run(f"sqlite:///{tmp_path / 'b.db'}")
    assert [r.info.run_id for r in mlflow.search_runs(search_all_experiments=True, output_format="list")] == [run.info.run_id]
    assert used.info.run_id != run.info.run_id and store_module._schema_is_whole(store_module.schema_template_path())


def test_the_cached_empty_store_can_be_turned_off(tmp_path, monkeypatch):
    from embclust.tracking import store as store_module

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("EMBCLUST_STORE_TEMPLATE", "0")
    monkeypatch.chdir(tmp_path)
    run, _ = _new_store_run(f"sqlite:///{tmp_path / 'a.db'}")
    assert run.info.status == "FINISHED" and store_module.schema_template_path() is None
    assert not (tmp_path / "cache").exists()


def test_runs_left_running_by_a_gone_process_are_closed_and_others_left_alone(tmp_path):
    from embclust.processes import host_id, owner_token
    from embclust.tracking import PROCESS_TAG, close_dead_runs

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    dead = owner_token(child.pid)  # taken while the child runs: its start time is known
    child.wait()
    experiment_id = setup_tracking(f"sqlite:///{tmp_path / 'mlflow.db'}", "embclust")
    client = mlflow.MlflowClient()

    def run(tags, status="RUNNING"):
        run_id = client.create_run(experiment_id, tags=tags).info.run_id
        if status != "RUNNING":
            client.set_terminated(run_id, status)
        return run_id

    gone = run({PROCESS_TAG: dead})
    gone_parent = run({"sweep.owner": dead, "sweep_role": "parent"})
    alive = run({PROCESS_TAG: owner_token()})
    other_host = run({PROCESS_TAG: f"elsewhere:{dead.rsplit(':', 2)[1]}:1"})
    other_namespace = run({PROCESS_TAG: dead.replace(host_id(), host_id() + "0", 1)})
    untagged = run({})  # a run made by another tool
    finished = run({PROCESS_TAG: dead}, status="FINISHED")

    assert sorted(close_dead_runs(experiment_id)) == sorted([gone, gone_parent])
    for run_id in (gone, gone_parent):
        closed = client.get_run(run_id)
        assert closed.info.status == "KILLED" and f"orphaned: its process ({dead}) ended" in closed.data.tags["error"]
    assert [client.get_run(r).info.status for r in (alive, other_host, other_namespace, untagged, finished)] == [
        "RUNNING", "RUNNING", "RUNNING", "RUNNING", "FINISHED"]
    assert close_dead_runs(experiment_id) == []


def test_a_single_run_records_its_process(run_cli):
    from embclust.processes import owner_is_alive
    from embclust.tracking import PROCESS_TAG

    res = run_cli("dataset=synthetic", "dataset.n_samples=300", "reducer=none", "analysis.explain.enabled=false")
    assert res.returncode == 0, res.stderr[-2000:]
    (run,) = res.runs()
    assert owner_is_alive(run.data.tags[PROCESS_TAG]) is False  # that process has ended


def test_a_server_lost_during_a_run_is_one_line_and_retries_are_bounded(monkeypatch):
    from mlflow.exceptions import MlflowException

    from embclust.tracking.store import HTTP_RETRY_DEFAULTS, check_server, store_failure_message

    lost = MlflowException(
        "API request to http://127.0.0.1:5077/api/2.0/mlflow/runs/get failed with exception HTTPConnectionPool("
        "host='127.0.0.1', port=5077): Max retries exceeded with url: /api/2.0/mlflow/runs/get"
    )
    try:
        try:
            raise lost
        except MlflowException:
            raise RuntimeError("while recording the failure")  # noqa: B904 - the chain a run produces
    except RuntimeError as exc:
        chained = exc
    message = store_failure_message(chained, "http://127.0.0.1:5077")
    assert message.startswith("the MLflow tracking server http://127.0.0.1:5077 stopped answering during the run")
    assert store_failure_message(chained, "sqlite:///mlflow.db") is None  # not a server
    assert store_failure_message(ValueError("k must be >= 2"), "http://127.0.0.1:5077") is None

    for name in HTTP_RETRY_DEFAULTS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "3")  # the user's own setting wins
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(Exception):
        check_server(f"http://127.0.0.1:{port}", timeout=1)
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "4" and os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] == "3"


def test_a_full_disk_is_one_line_naming_the_file_that_could_not_be_written():
    import errno

    from mlflow.exceptions import MlflowException

    from embclust.tracking.store import store_failure_message

    artifact = "/data/mlruns/1/abc/artifacts/report.html"
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device", "/tmp/embclust-x/report.html", None, artifact)
        except OSError:
            raise MlflowException("(sqlite3.OperationalError) database or disk is full")  # noqa: B904 - recording it failed too
    except MlflowException as exc:
        message = store_failure_message(exc, "sqlite:///mlflow.db")
    assert message.startswith(f"the disk is full: cannot write {artifact} (mlflow.tracking_uri='sqlite:///mlflow.db'); free some space")
    only_store = store_failure_message(MlflowException("database or disk is full"), "sqlite:///mlflow.db")
    assert only_store.startswith("the disk is full: the MLflow store cannot be written")


def test_errors_are_reported_by_their_first_line_or_their_type():
    from mlflow.exceptions import MlflowException

    from embclust.errors import first_line

    assert first_line(RuntimeError("disk gone\n  at line 3")) == "disk gone"
    assert first_line(MlflowException("RESOURCE_DOES_NOT_EXIST\nmore")) == "RESOURCE_DOES_NOT_EXIST"
    assert first_line(OSError()) == "OSError"  # an empty message: its type, not an IndexError in the handler


def test_a_full_disk_while_copying_the_empty_store_is_said_as_a_full_disk(tmp_path, monkeypatch):
    # The part copy was left and migrated: "database disk image is malformed ... move the file away".
    import errno
    import shutil

    from embclust.tracking import store

    template = tmp_path / "template.db"
    template.write_bytes(b"x" * 100)
    target = tmp_path / ".mlflow.db.new-1"

    def copy_part(src, dst):
        Path(dst).write_bytes(b"x" * 10)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shutil, "copyfile", copy_part)
    with pytest.raises(OSError) as raised:
        store._copy_schema_template(template, target)
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(target)
    assert not target.exists()
    message = store.store_failure_message(raised.value, f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert message.startswith(f"the disk is full: cannot write {target}")


def test_compare_on_a_store_that_is_not_a_database_is_one_line(tmp_path, capsys):
    from embclust.sweep.compare import main

    db = tmp_path / "mlflow.db"
    db.write_bytes(os.urandom(300_000))
    assert main(["--tracking-uri", f"sqlite:///{db}"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: the MLflow store sqlite:///") and "not a database" in err


def test_a_store_link_to_a_missing_file_is_refused_not_replaced(tmp_path):
    # A link to a shared store whose mount was not up was replaced by a new, empty local store.
    db = tmp_path / "mlflow.db"
    db.symlink_to(tmp_path / "mnt" / "shared.db")
    with pytest.raises(ConfigError, match=r"mlflow.db is a link to .*shared.db, which does not exist; mount or restore"):
        setup_tracking(f"sqlite:///{db}", "embclust")
    assert db.is_symlink() and not (tmp_path / "mnt").exists()


def test_a_run_whose_experiment_was_deleted_while_it_ran_is_one_line_saying_how_to_restore(tmp_path):
    # A sweep whose experiment was deleted mid-cell ended on two MLflow tracebacks.
    from embclust.tracking.store import store_failure_message

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment_id = setup_tracking(uri, "embclust")
    client = mlflow.MlflowClient()
    run = client.create_run(experiment_id)
    client.delete_experiment(experiment_id)
    with pytest.raises(Exception) as caught:
        client.set_terminated(run.info.run_id, "FINISHED")
    assert store_failure_message(caught.value, uri) == (
        f"MLflow run {run.info.run_id} was deleted while it ran (it, or its experiment), so it cannot be recorded or "
        f"closed: restore it (mlflow experiments restore --experiment-id {experiment_id}) and run the same command again "
        "(the next run closes a run left RUNNING)")


def test_a_store_moved_away_while_a_run_writes_is_named_as_moved_not_read_only(tmp_path):
    import sqlite3

    from embclust.tracking.store import store_failure_message

    db = tmp_path / "mlflow.db"
    error = sqlite3.OperationalError("attempt to write a readonly database")
    assert "was moved or deleted while the run used it" in store_failure_message(error, f"sqlite:///{db}")
    db.write_bytes(b"")
    assert "cannot be written (attempt to write a readonly database)" in store_failure_message(error, f"sqlite:///{db}")
