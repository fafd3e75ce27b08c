"""Fault matrix: every command against the file-system and store faults a user meets.

Each command is run as a user would (a subprocess) against a read-only folder, a full small file
system, a path whose parent is a file and an unreachable tracking server, and must keep the
one-line contract: a non-zero exit, no traceback, a last line that names the path (or the
setting) and the cause, nothing half-written, and no MLflow run left RUNNING. The read-only and
full file systems are small tmpfs mounts; rows that need one skip where this machine cannot
mount (not root, or no mount permission in a container).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import uuid
from contextlib import contextmanager
from pathlib import Path

import mlflow
import pytest

REPO = Path(__file__).resolve().parents[1]
RUN_PY = REPO / "run.py"
FAST = ("reducer=none", "analysis.explain.enabled=false", "analysis.report.enabled=false")


def _mount(path: Path, options: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    return done.returncode == 0


@contextmanager
def small_fs(path: Path, size: str = "4m"):
    """A fresh tmpfs of ``size`` at ``path``; skips the test where it cannot be mounted."""
    if shutil.which("mount") is None or not _mount(path, f"size={size}"):
        pytest.skip("cannot mount a small file system here (needs root and mount permission)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def make_read_only(path: Path) -> None:
    done = subprocess.run(["mount", "-o", "remount,ro", str(path)], capture_output=True)
    assert done.returncode == 0, done.stderr


def fill(path: Path) -> None:
    """Fill the file system holding ``path`` to the last byte."""
    with open(path / ".filler", "wb") as f:
        block = b"\0" * 65536
        try:
            while True:
                f.write(block)
                f.flush()
        except OSError:
            pass
    for size in (4096, 512, 1):  # the tail, in smaller writes
        try:
            with open(path / ".filler", "ab") as f:
                while True:
                    f.write(b"\0" * size)
                    f.flush()
        except OSError:
            continue


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "EMBCLUST_CACHE_DIR")}
    return {**env, **(extra or {})}


def run_py(cwd: Path, *overrides: str, tracking_uri: str, multirun: bool = False, env: dict | None = None,
           outputs: Path | None = None):
    outputs = outputs or cwd
    cmd = [sys.executable, str(RUN_PY), *(["-m"] if multirun else []), *FAST, *overrides,
           f"mlflow.tracking_uri={tracking_uri}", f"hydra.run.dir={outputs / 'outputs'}",
           f"hydra.sweep.dir={outputs / 'multirun'}"]
    return subprocess.run(cmd, cwd=cwd, env=_env(env), capture_output=True, text=True, timeout=240)


def embclust(cwd: Path, *args: str):
    cmd = [sys.executable, "-m", "embclust.cli", *args]
    return subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=240)


def assert_one_line(proc, *parts: str) -> str:
    """Non-zero exit, no traceback, and a last stderr line that holds every one of ``parts``."""
    assert proc.returncode != 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    line = proc.stderr.strip().splitlines()[-1]
    for part in parts:
        assert part in line, line
    return line


def runs_left_running(tracking_uri: str) -> list[str]:
    mlflow.set_tracking_uri(tracking_uri)
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    return [r.info.run_id for r in runs if r.info.status == "RUNNING"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A store with a finished run and a finished 2-cell sweep on the default data."""
    import numpy as np
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("finished")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    X = load_digits().data.astype(np.float32)
    np.save(root / "digits.npy", X)
    np.save(root / "rows.npy", X[:20])
    single = run_py(root, "dataset=npy", f"dataset.path={root / 'digits.npy'}", "clusterer.n_clusters=5", tracking_uri=uri)
    assert single.returncode == 0, single.stderr[-2000:]
    sweep = run_py(root, "clusterer.n_clusters=4,6", tracking_uri=uri, multirun=True,
                   env={"EMBCLUST_CACHE_DIR": str(root / "cache")})
    assert sweep.returncode == 0, sweep.stderr[-2000:]
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    parent = next(r.info.run_id for r in runs if r.data.tags.get("sweep_role") == "parent")
    run = next(r.info.run_id for r in runs if not r.data.tags.get("mlflow.parentRunId") and r.info.run_id != parent)
    return {"root": root, "uri": uri, "run": run, "sweep": parent}


# --------------------------------------------------------------------------- run.py and sweeps

def test_store_on_a_read_only_file_system_is_one_line_naming_the_store(tmp_path, finished):
    with small_fs(tmp_path / "ro") as ro:
        shutil.copy(finished["root"] / "mlflow.db", ro / "mlflow.db")
        make_read_only(ro)
        uri = f"sqlite:///{ro / 'mlflow.db'}"
        for multirun in (False, True):
            proc = run_py(tmp_path, "clusterer.n_clusters=3,4" if multirun else "clusterer.n_clusters=3",
                          tracking_uri=uri, multirun=multirun)
            assert_one_line(proc, str(ro), "Read-only file system", "mlflow.tracking_uri")


def test_a_read_only_store_file_in_a_writable_folder_is_one_line_naming_the_store(tmp_path, finished):
    db = tmp_path / "mlflow.db"
    shutil.copy(finished["root"] / "mlflow.db", db)
    # The file alone read-only (a bind mount: root writes files whatever their mode).
    if subprocess.run(["mount", "--bind", str(db), str(db)], capture_output=True).returncode != 0:
        pytest.skip("cannot bind-mount a file here (needs root and mount permission)")
    try:
        assert subprocess.run(["mount", "-o", "remount,ro,bind", str(db)], capture_output=True).returncode == 0
        for multirun in (False, True):
            proc = run_py(tmp_path, "clusterer.n_clusters=3,4" if multirun else "clusterer.n_clusters=3",
                          tracking_uri=f"sqlite:///{db}", multirun=multirun)
            assert_one_line(proc, str(db), "cannot be written", "readonly database", "mlflow.tracking_uri")
    finally:
        subprocess.run(["umount", "-l", str(db)], capture_output=True)


def test_store_on_a_full_disk_is_one_line_naming_the_disk(tmp_path):
    with small_fs(tmp_path / "full") as full:
        fill(full)
        uri = f"sqlite:///{full / 'mlflow.db'}"
        proc = run_py(tmp_path, tracking_uri=uri)
        assert_one_line(proc, str(full), "No space left on device", "mlflow.tracking_uri")
        assert not (full / "mlflow.db").exists() or (full / "mlflow.db").stat().st_size == 0


def test_store_whose_folder_is_a_file_is_one_line(tmp_path):
    (tmp_path / "a_file").write_text("x")
    proc = run_py(tmp_path, tracking_uri=f"sqlite:///{tmp_path / 'a_file' / 'mlflow.db'}")
    assert_one_line(proc, "a_file")


def test_store_that_is_a_folder_is_one_line_at_once(tmp_path):
    # MLflow itself retries opening a folder as a database for about two minutes, then says
    # "unable to open database file".
    (tmp_path / "store").mkdir()
    proc = run_py(tmp_path, tracking_uri=f"sqlite:///{tmp_path / 'store'}")
    assert_one_line(proc, "is a folder, not a SQLite file", f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")


@pytest.mark.parametrize("multirun", [False, True])
def test_unreachable_tracking_server_is_one_line(tmp_path, multirun):
    uri = f"http://127.0.0.1:{closed_port()}"
    proc = run_py(tmp_path, "clusterer.n_clusters=3,4" if multirun else "clusterer.n_clusters=3",
                  tracking_uri=uri, multirun=multirun)
    assert_one_line(proc, uri)


def test_artifacts_on_a_full_disk_name_the_artifact_not_the_store(tmp_path):
    # The store is on a good disk; the artifact root (./mlruns of a new store) is on a full one.
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with small_fs(tmp_path / "work", size="8m") as work:
        fill(work)
        proc = run_py(work, tracking_uri=uri, outputs=tmp_path)
        line = assert_one_line(proc, "the disk is full", "cannot write", str(work / "mlruns"))
        assert "MLflow store cannot be written" not in line
    mlflow.set_tracking_uri(uri)
    (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert run.info.status == "FAILED" and "the disk is full" in run.data.tags["error"]


def test_a_sweep_whose_disk_fills_at_its_report_fails_in_one_line_leaving_no_cut_report(tmp_path):
    # The cells' small artifacts fit on the artifact disk; the sweep's report does not.
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with small_fs(tmp_path / "work", size="500k") as work:
        proc = run_py(work, "clusterer.n_clusters=3,4", "analysis.report.enabled=true", tracking_uri=uri, multirun=True,
                      outputs=tmp_path, env={"EMBCLUST_CACHE_DIR": str(tmp_path / "cache")})
        assert_one_line(proc, "the disk is full", "cannot write", str(work / "mlruns"))
        assert not list(work.rglob("report.html")), "a report cut short is left in the artifacts"
    assert runs_left_running(uri) == []
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    (parent,) = [r for r in runs if r.data.tags.get("sweep_role") == "parent"]
    assert parent.info.status == "FAILED" and "the disk is full" in parent.data.tags["error"]


def test_a_sweep_goes_on_without_a_cache_on_a_full_disk_with_one_warning(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with small_fs(tmp_path / "cache", size="1m") as cache:
        fill(cache)
        proc = run_py(tmp_path, "clusterer.n_clusters=3,4", tracking_uri=uri, multirun=True,
                      env={"EMBCLUST_CACHE_DIR": str(cache)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "cache.dir=" in line]
    assert len(warnings) == 1 and "going on without the cache" in warnings[0], proc.stderr[-3000:]
    assert runs_left_running(uri) == []


# --------------------------------------------------------------------------- embclust commands

@pytest.mark.parametrize("command", ["assign", "export"])
@pytest.mark.parametrize("fault", ["parent_is_a_file", "read_only", "full"])
def test_output_faults_are_one_line_naming_the_output(tmp_path, finished, command, fault):
    if fault == "parent_is_a_file":
        (tmp_path / "a_file").write_text("x")
        output = tmp_path / "a_file" / "out.csv"
        expected = f"{tmp_path / 'a_file'} is a file, not a folder"
        context = None
    else:
        context = small_fs(tmp_path / fault, size="1m")
        folder = context.__enter__()
        if fault == "read_only":
            make_read_only(folder)
            expected = "the file system is read-only"
        else:
            fill(folder)
            expected = "the disk is full"
        output = folder / "out.csv"
    try:
        args = ([command, finished["run"], "--input", str(finished["root"] / "rows.npy")] if command == "assign"
                else [command, finished["sweep"]])
        proc = embclust(finished["root"], *args, "--output", str(output), "--tracking-uri", finished["uri"])
        line = assert_one_line(proc, "error:", str(output), "--output", expected)
        assert line.startswith("error:")
        assert not output.exists()
        if output.parent.is_dir():
            assert not [p for p in output.parent.iterdir() if p.name != ".filler"]  # nothing half-written
    finally:
        if context is not None:
            context.__exit__(None, None, None)


def test_compare_html_on_a_read_only_disk_is_one_line(tmp_path, finished):
    with small_fs(tmp_path / "ro", size="1m") as ro:
        make_read_only(ro)
        proc = embclust(finished["root"], "compare", "--parent-run", finished["sweep"], "--html", str(ro / "board.html"),
                        "--tracking-uri", finished["uri"])
        assert_one_line(proc, "error:", str(ro / "board.html"), "--html", "read-only")


@pytest.mark.parametrize("command", ["assign", "export", "compare", "search"])
def test_every_command_at_an_unreachable_server_is_one_line(tmp_path, finished, command):
    uri = f"http://127.0.0.1:{closed_port()}"
    args = {
        "assign": ["assign", "abc", "--input", str(finished["root"] / "rows.npy"), "--output", str(tmp_path / "o.csv")],
        "export": ["export", "abc", "--output", str(tmp_path / "o.csv")],
        "compare": ["compare", "--parent-run", "abc"],
        "search": ["search", "abc", "a query"],
    }[command]
    proc = embclust(tmp_path, *args, "--tracking-uri", uri)
    assert_one_line(proc, "error:", uri)


def test_no_run_is_left_running_after_the_matrix(finished):
    assert runs_left_running(finished["uri"]) == []


def test_a_run_id_that_is_not_a_run_is_one_line(tmp_path, finished):
    proc = embclust(tmp_path, "export", uuid.uuid4().hex, "--output", str(tmp_path / "o.csv"), "--tracking-uri",
                    finished["uri"])
    assert_one_line(proc, "error:")


@pytest.mark.parametrize("fault", ["read_only", "full", "parent_is_a_file"])
def test_hydra_output_folder_faults_are_one_line_naming_the_key(tmp_path, fault):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    if fault == "parent_is_a_file":
        (tmp_path / "a_file").write_text("x")
        proc = run_py(tmp_path, tracking_uri=uri, outputs=tmp_path / "a_file")
        assert_one_line(proc, "hydra.run.dir", f"{tmp_path / 'a_file'} is a file, not a folder")
        return
    with small_fs(tmp_path / fault, size="1m") as folder:
        if fault == "read_only":
            make_read_only(folder)
        else:
            fill(folder)
        for multirun in (False, True):
            proc = run_py(tmp_path, "clusterer.n_clusters=3,4" if multirun else "clusterer.n_clusters=3",
                          tracking_uri=uri, outputs=folder, multirun=multirun)
            key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
            reason = "the file system is read-only" if fault == "read_only" else "the disk is full"
            assert_one_line(proc, key, str(folder), reason)


@pytest.mark.parametrize("command", [["compare"], ["export", "abc", "--output", "x.parquet"]])
def test_a_reading_command_at_a_store_that_is_not_there_creates_nothing(tmp_path, command):
    # MLflow would create an empty store (and its folder) and then find no runs in it.
    uri = f"sqlite:///{tmp_path / 'nowhere' / 'mlflow.db'}"
    proc = embclust(tmp_path, *command, "--tracking-uri", uri)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"error: no MLflow store at {tmp_path / 'nowhere' / 'mlflow.db'} ({uri}): pass --tracking-uri (or set "
        "MLFLOW_TRACKING_URI) for the store the runs were logged to"]
    assert not (tmp_path / "nowhere").exists()


def test_a_full_temporary_folder_is_named_not_the_store(tmp_path, monkeypatch):
    # A full TMPDIR failed the run with "the MLflow store cannot be written" (the write names no file).
    import errno
    import tempfile

    from embclust.pipeline import failure_message

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    def write_report(path):
        raise OSError(errno.ENOSPC, "No space left on device")

    try:
        write_report(tmp_path / "embclust-x" / "report.html")
    except OSError as exc:
        message, users = failure_message(exc)
    assert users and message.startswith(f"the disk is full: cannot write {tmp_path}/embclust-x/report.html (the temporary "
                                        "folder, TMPDIR")

    def save_cache(path):  # a write elsewhere, from code that also holds an input file under the temp folder
        raise OSError(errno.ENOSPC, "No space left on device")

    def run(data_file, run_folder):
        return save_cache(".cache/embclust/embeddings/x.npy")

    try:
        run(tmp_path / "docs.csv", tmp_path / "embclust-y")
    except OSError as exc:
        message, _ = failure_message(exc)
    assert "docs.csv" not in message and "embclust-y" not in message and "TMPDIR" not in message


def test_a_compile_cache_on_a_full_disk_is_a_warning_not_a_failure(tmp_path, monkeypatch, caplog):
    # pynndescent compiles into the cache as it is imported: ENOSPC there failed the whole run.
    import errno
    import importlib

    from embclust import compiled

    monkeypatch.setenv(compiled.CACHE_ENV, str(tmp_path / "numba"))
    monkeypatch.setattr(compiled, "_enabled", None)
    monkeypatch.setattr(compiled, "_warned", [])
    real = importlib.import_module

    def import_module(name, *args):
        if name.startswith("pynndescent"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", import_module)
    with caplog.at_level("WARNING"):
        assert compiled.enable_umap_cache() is False
    assert "cannot be written (No space left on device): UMAP compiles in this process" in caplog.text
