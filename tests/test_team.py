"""Team use, for real: a local Ray head, an MLflow tracking server and Chromium, nothing mocked.

The Ray head and the server are subprocesses in their own sessions on 127.0.0.1, stopped in the
fixtures' finalizers (their whole process group), also when a test fails. A missing Ray,
Playwright or Chromium skips these tests, unless EMBCLUST_REQUIRE_EXTRAS=1 (CI's second pass,
after it installed them): then it fails them.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
RUN_PY = REPO / "run.py"
SERVER_SH = REPO / "scripts" / "mlflow_server.sh"
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SMALL = ("reducer=pca", "dataset=synthetic", "dataset.n_samples=1000", "dataset.n_features=32")
UNREACHABLE = "is unreachable: start it with scripts/mlflow_server.sh or set mlflow.tracking_uri"

pytestmark = pytest.mark.team


def _missing(what: str) -> None:
    """Skip, unless the run says the extras are installed (CI's second pass): then fail."""
    if os.environ.get("EMBCLUST_REQUIRE_EXTRAS", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{what} is required here (EMBCLUST_REQUIRE_EXTRAS is set)")
    pytest.skip(f"{what} not available (pip install -e '.[team]'; apt-get install chromium)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    """This checkout's code first on the path (driver and Ray workers), no outside stores."""
    drop = ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "EMBCLUST_SWEEP", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    return {**env, **extra}


def _stop(proc: subprocess.Popen, name: str) -> None:
    """Stop ``proc`` and everything it started (its own process group)."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            time.sleep(1)  # let the group's other members exit too
        except subprocess.TimeoutExpired:
            continue
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # stragglers of the group, if any
    except ProcessLookupError:
        pass


def _wait_for(check, timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    tail = log.read_text()[-3000:] if log and log.exists() else ""
    raise TimeoutError(f"{what} not ready after {timeout:.0f}s\n{tail}")


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """scripts/mlflow_server.sh on a free 127.0.0.1 port with a temporary store; yields its URI."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    log = folder / "server.log"
    env = {**_env(), "MLFLOW_SERVER_DIR": str(folder / "store"), "HOST": "127.0.0.1", "PORT": str(port)}
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [str(SERVER_SH)], cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )

    def healthy() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode}\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(uri + "/health", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    try:
        _wait_for(healthy, 120, "mlflow server", log)
        yield uri
    finally:
        _stop(proc, "mlflow server")


@pytest.fixture(scope="module")
def ray_head():
    """``ray start --head --block`` with 2 CPUs on 127.0.0.1; yields (address, driver env).

    Token authentication with a token of its own, whatever ~/.ray holds: ``ray start`` turns
    it on when ~/.ray/auth_token exists, a driver given an explicit address does not.
    """
    try:  # this interpreter's Ray, not only a `ray` command from another environment on PATH
        import ray  # noqa: F401
    except ImportError:
        _missing("Ray")
    if shutil.which("ray") is None:
        _missing("Ray")
    # Short temp dir: Ray's unix socket paths must stay under ~107 characters.
    folder = Path(tempfile.mkdtemp(prefix="ray-"))
    port = _free_port()
    log = folder / "head.log"
    token = folder / "auth_token"
    token.write_text(secrets.token_hex(32))
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    cmd = [
        "ray", "start", "--head", "--block", "--num-cpus", "2", "--port", str(port),
        "--node-ip-address", "127.0.0.1", "--include-dashboard=false", "--disable-usage-stats",
        "--dashboard-agent-listen-port", str(_free_port()),
        "--temp-dir", str(folder / "t"),
    ]  # fmt: skip
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=_env(**auth), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def started() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited with {proc.returncode}\n{log.read_text()[-3000:]}")
        return "Ray runtime started" in log.read_text()

    try:
        _wait_for(started, 120, "Ray head", log)
        yield f"127.0.0.1:{port}", auth
    finally:
        _stop(proc, "Ray head")
        shutil.rmtree(folder, ignore_errors=True)


def _run(args, cwd: Path, timeout: int = 300, flags=(), env=None) -> subprocess.CompletedProcess:
    dirs = [f"hydra.run.dir={cwd / 'outputs'}", f"hydra.sweep.dir={cwd / 'multirun'}"]
    cmd = [sys.executable, str(RUN_PY), *args, *dirs, *flags]
    return subprocess.run(cmd, cwd=cwd, env=_env(**(env or {})), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def ray_sweep(mlflow_server, ray_head, tmp_path_factory):
    """A 2 x 2 sweep run as Ray tasks, logged to the tracking server; yields (result, parent, children)."""
    try:
        import ray  # noqa: F401
    except ImportError:
        _missing("Ray")
    cwd = tmp_path_factory.mktemp("ray-sweep")
    address, auth = ray_head
    args = [
        "-m", *SMALL, "preprocess.pca_components=5,10", "clusterer.n_clusters=8,12",
        "hydra/launcher=ray", f"hydra.launcher.address={address}",
        "tracking=server", f"mlflow.tracking_uri={mlflow_server}",
    ]  # fmt: skip
    start = time.perf_counter()
    res = _run(args, cwd, env=auth)
    print(f"ray sweep: {time.perf_counter() - start:.1f}s")
    assert res.returncode == 0, res.stderr[-4000:]
    mlflow.set_tracking_uri(mlflow_server)
    runs = mlflow.search_runs(experiment_names=["embclust"], output_format="list")
    parents = [r for r in runs if r.data.tags.get("sweep_role") == "parent"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return res, parents, children


def test_ray_sweep_nests_cells_under_parent_on_tracking_server(ray_sweep, mlflow_server, tmp_path):
    res, parents, children = ray_sweep
    assert len(parents) == 1 and len(children) == 4
    (parent,) = parents
    assert parent.info.status == "FINISHED"
    ended = [(c.info.status, c.data.tags.get("error", "")) for c in children]
    assert all(status == "FINISHED" for status, _ in ended), f"{ended}\n{res.stderr[-4000:]}"
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)
    # The cells ran as Ray tasks (Ray prefixes their forwarded output with the task name).
    assert "(_execute_job pid=" in res.stdout + res.stderr
    assert "Ray launcher: 4 jobs" in res.stderr
    assert all(f"cell {i}/4 done" in res.stderr for i in range(1, 5))  # progress lines not folded
    # Artifacts went through the server (no shared disk) and come back through it.
    assert all(r.info.artifact_uri.startswith("mlflow-artifacts:") for r in [parent, *children])
    mlflow.set_tracking_uri(mlflow_server)
    board = mlflow.artifacts.download_artifacts(
        run_id=parent.info.run_id, artifact_path="leaderboard.csv", dst_path=str(tmp_path)
    )
    assert Path(board).read_text().count("FINISHED") == 4
    labels = mlflow.artifacts.download_artifacts(
        run_id=children[0].info.run_id, artifact_path="labels.parquet", dst_path=str(tmp_path)
    )
    import pyarrow.parquet as pq

    assert pq.read_metadata(labels).num_rows == 1000
    assert parent.data.tags["best_run_id"] in {c.info.run_id for c in children}


def test_mlflow_ui_shows_runs_datasets_and_renders_report(ray_sweep, mlflow_server, tmp_path):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("Playwright")
    if not Path(CHROMIUM).exists():
        _missing("Chromium")
    _, (parent,), children = ray_sweep
    # Light cells log no report; the best cell's run holds the full one.
    child = next(c for c in children if c.info.run_id == parent.data.tags["best_run_id"])
    experiment_id = parent.info.experiment_id
    shots = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(60_000)
            page.goto(mlflow_server + "/", timeout=60_000)
            page.get_by_text("embclust", exact=True).first.wait_for()
            # The experiment's runs: the parent is listed, with its 4 cells (5 runs).
            page.goto(f"{mlflow_server}/#/experiments/{experiment_id}/runs")
            page.get_by_text(parent.info.run_name[:40]).first.wait_for()
            page.get_by_text("5 matching runs").first.wait_for()
            # Expand the parent: its 4 cells show the dataset they clustered in the Dataset column.
            page.locator('[col-id*="Run Name"] button[data-component-id*="runnamecellrenderer"]').first.click()
            page.get_by_text(child.info.run_name, exact=True).first.wait_for()
            dataset = f"synthetic ({child.data.tags['data_fingerprint']})"
            cells = page.locator('[role=gridcell][col-id*="Dataset"]')
            _wait_for(lambda: sum(dataset in cells.nth(i).inner_text() for i in range(cells.count())) == 4, 60, "Dataset column")
            shots["runs"] = tmp_path / "mlflow_ui_runs.png"
            page.screenshot(path=str(shots["runs"]))
            # A cell's report: the UI renders the HTML artifact in a frame; Plotly draws SVG.
            # The sweep's report (on the parent) holds the leaderboard and the best cell's figures.
            page.goto(f"{mlflow_server}/#/experiments/{experiment_id}/runs/{parent.info.run_id}/artifacts/report.html")
            page.get_by_text(parent.info.run_name[:40]).first.wait_for()
            _wait_for(
                lambda: any(f.locator(".main-svg").count() > 0 for f in page.frames), 60, "rendered Plotly artifact"
            )
            frame = next(f for f in page.frames if f.locator(".main-svg").count() > 0)
            assert frame.locator(".plotly").count() >= 1
            assert "Cluster sizes" in frame.inner_text("body")
            shots["artifact"] = tmp_path / "mlflow_ui_report.png"
            page.screenshot(path=str(shots["artifact"]))
        finally:
            browser.close()
    for name, path in shots.items():
        assert path.stat().st_size > 10_000
        print(f"screenshot ({name}): {path}")


@pytest.mark.parametrize("multirun", [False, True], ids=["single-run", "sweep"])
def test_unreachable_server_fails_with_one_line_before_any_work(tmp_path, multirun):
    uri = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    args = (["-m", "clusterer.n_clusters=3,4"] if multirun else []) + ["reducer=none", f"mlflow.tracking_uri={uri}"]
    start = time.perf_counter()
    res = _run(args, tmp_path, timeout=120)
    output = res.stdout + res.stderr
    assert res.returncode != 0
    lines = [line for line in output.splitlines() if UNREACHABLE in line]
    assert len(lines) == 1 and f"MLflow tracking server {uri} {UNREACHABLE}" in lines[0]
    assert "Traceback" not in output and "Retrying" not in output
    assert "[1/8] load" not in output and "cell 1/" not in output
    assert time.perf_counter() - start < 60


def test_ray_launcher_and_tracking_group_resolve(tmp_path):
    """hydra/launcher=ray is this package's plugin; tracking=server sets the URI, else as before."""
    res = _run(["hydra/launcher=ray"], tmp_path, timeout=120, flags=["--cfg", "hydra", "-p", "hydra.launcher"])
    assert res.returncode == 0, res.stderr[-2000:]
    assert "hydra_plugins.embclust_ray_launcher.ray_launcher.RayLauncher" in res.stdout
    assert "address: null" in res.stdout and "num_cpus: 1" in res.stdout
    uri = ["--cfg", "job", "-p", "mlflow.tracking_uri"]
    res = _run(["tracking=server"], tmp_path, timeout=120, flags=uri)
    assert res.stdout.strip() == "http://127.0.0.1:5000"
    res = _run([], tmp_path, timeout=120, flags=uri)
    assert res.stdout.strip() == "sqlite:///mlflow.db"  # MLFLOW_TRACKING_URI unset


def test_unreachable_ray_address_fails_with_one_line(tmp_path):
    try:
        import ray  # noqa: F401
    except ImportError:
        _missing("Ray")
    address = f"127.0.0.1:{_free_port()}"  # nothing listens there
    args = ["-m", "reducer=none", "clusterer.n_clusters=3,4", "hydra/launcher=ray", f"hydra.launcher.address={address}"]
    res = _run([*args, f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}"], tmp_path, timeout=120)
    output = res.stdout + res.stderr
    assert res.returncode == 1
    assert f"Ray cluster {address} is unreachable: start it with `ray start --head`" in output
    assert "Traceback" not in output and "cell 1/" not in output


ENGINE_RUN = ("reducer=none", "analysis.explain.enabled=false", "analysis.duplicates.enabled=false",
              "clusterer.n_clusters=6", "metrics.silhouette_sample_size=2000")


def _save_blobs(path: Path, n: int, d: int, k: int, seed: int) -> np.ndarray:
    """``n`` float32 rows around ``k`` well-separated centres in ``d`` dimensions, saved as ``path`` (.npy)."""
    rng = np.random.default_rng(seed)
    X = (rng.normal(scale=4.0, size=(k, d))[rng.integers(0, k, n)] + rng.normal(size=(n, d))).astype(np.float32)
    np.save(path, X)
    return X


SCORES = ("inertia", "silhouette", "calinski_harabasz", "davies_bouldin")


def _engine_run(tmp_path: Path, engine: str, name: str, env=None) -> subprocess.CompletedProcess:
    """One ENGINE_RUN on ``tmp_path / rows.npy`` with ``engine``, named ``name``, into the folder's store; it must finish."""
    res = _run([*ENGINE_RUN, "dataset=npy", f"dataset.path={tmp_path / 'rows.npy'}", f"engine={engine}",
                f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}", f"run_name={name}"], tmp_path, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def _runs_by_name(tmp_path: Path) -> dict:
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    return {r.info.run_name: r for r in mlflow.search_runs(experiment_names=["embclust"], output_format="list")}


def test_engine_ray_gives_the_labels_and_metrics_of_engine_local(ray_head, tmp_path):
    """KMeans's passes over 540,000 rows (two row groups) as Ray Data jobs on a 2-CPU cluster."""
    import pandas as pd

    address, auth = ray_head
    _save_blobs(tmp_path / "rows.npy", 540_000, 6, 6, seed=3)
    results = {engine: _engine_run(tmp_path, engine, engine, {"RAY_ADDRESS": address, **auth} if engine == "ray" else None)
               for engine in ("local", "ray")}
    runs = _runs_by_name(tmp_path)
    local, ray_run = runs["local"], runs["ray"]
    assert ray_run.data.tags["engine"] == "ray" and local.data.tags["engine"] == "local"
    assert int(ray_run.data.tags["engine_passes"]) >= 3  # refinement passes, then the inertia
    assert "540000 / 540000 done on Ray, 2 row groups" in results["ray"].stderr
    for scoring_pass in ("score: CH / DB pass 1 of 2", "score: CH / DB pass 2 of 2"):  # the scores' passes too
        assert f"{scoring_pass}, rows: 540000 / 540000 done on Ray" in results["ray"].stderr
    for metric in SCORES:
        assert ray_run.data.metrics[metric] == local.data.metrics[metric], metric
    # The driver held no row matrix: validation, fingerprint and samples were passes on Ray too.
    assert ray_run.data.tags["data_fingerprint"] == local.data.tags["data_fingerprint"]
    assert "validate: rows checked for NaN, inf and overflow: 540000 / 540000 done on Ray" in results["ray"].stderr
    assert "rows gathered: 540000 / 540000 done on Ray" in results["ray"].stderr
    assert "read on the driver" not in results["ray"].stderr
    assert ray_run.data.metrics["engine/driver_rows_read"] <= 64  # a first row or few, of 540,000
    assert "engine/driver_rows_read" not in local.data.metrics
    labels = {}
    for name, run in (("local", local), ("ray", ray_run)):
        path = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="labels.parquet",
                                                   dst_path=str(tmp_path / name))
        labels[name] = pd.read_parquet(path)["cluster"].to_numpy()
    np.testing.assert_array_equal(labels["local"], labels["ray"])
    # The workers of the last pass wrote the labels dataset into the run's artifacts, one part per row group.
    assert ray_run.data.tags["labels_dataset"].startswith("labels/: 2 parquet parts (id, cluster, distance)")
    assert "written by the Ray workers into the run's artifact folder" in ray_run.data.tags["labels_dataset"]
    folder = mlflow.artifacts.download_artifacts(run_id=ray_run.info.run_id, artifact_path="labels", dst_path=str(tmp_path / "parts"))
    written = pd.read_parquet(folder)
    assert list(written.columns) == ["id", "cluster", "distance"] and len(written) == 540_000
    np.testing.assert_array_equal(written["id"].to_numpy(), np.arange(540_000))
    np.testing.assert_array_equal(written["cluster"].to_numpy(), labels["ray"])
    distance = written["distance"].to_numpy(dtype=np.float64)  # to the centre of the row's cluster
    assert (distance >= 0).all() and np.sum(distance**2) == pytest.approx(ray_run.data.metrics["inertia"], rel=1e-5)
    assert "labels_dataset" not in local.data.tags


def test_engine_ray_with_an_unreachable_cluster_fails_the_run_in_one_line(tmp_path):
    try:
        import ray  # noqa: F401
    except ImportError:
        _missing("Ray")
    rng = np.random.default_rng(0)
    np.save(tmp_path / "rows.npy", rng.normal(size=(20_000, 4)).astype(np.float32))
    address = f"127.0.0.1:{_free_port()}"
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    res = _run([*ENGINE_RUN, "dataset=npy", f"dataset.path={tmp_path / 'rows.npy'}", "engine=ray",
                f"mlflow.tracking_uri={store}"], tmp_path, timeout=120, env={"RAY_ADDRESS": address})
    assert res.returncode == 1
    lines = [line for line in res.stderr.splitlines() if f"RAY_ADDRESS={address} is unreachable" in line]
    assert len(lines) == 1 and "ray start --head" in lines[0] and "Traceback" not in res.stderr
    mlflow.set_tracking_uri(store)
    (run,) = mlflow.search_runs(experiment_names=["embclust"], output_format="list")
    assert run.info.status == "FAILED" and "unreachable" in run.data.tags.get("error", "")


def test_engine_ray_reads_a_parquet_folder_at_a_uri_on_its_workers_and_gives_engine_locals_run(ray_head, tmp_path):
    """Parquet files at a ``file://`` URI (pyarrow's filesystem layer, as for ``s3://``): the driver
    reads ids and labels, the workers the vectors; both engines give the same run."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    address, auth = ray_head
    rng = np.random.default_rng(8)
    topic = rng.integers(0, 5, 90_000)
    X = (rng.normal(scale=3.0, size=(5, 24))[topic] + rng.normal(size=(90_000, 24))).astype(np.float32)
    (tmp_path / "parts").mkdir()
    for i in range(3):
        part = slice(i * 30_000, (i + 1) * 30_000)
        pq.write_table(pa.table({"doc": [f"doc-{j}" for j in range(part.start, part.stop)], "topic": topic[part],
                                 "v": pa.array(list(X[part]), type=pa.list_(pa.float32()))}), tmp_path / "parts" / f"p{i}.parquet")
    data = ["dataset=parquet", f"dataset.path={(tmp_path / 'parts').as_uri()}", "dataset.vector_column=v",
            "dataset.id_column=doc", "dataset.label_column=topic", "clusterer.n_clusters=5", "kmeans.min_sample=2000",
            "reducer=none", "analysis.explain.enabled=false", "analysis.duplicates.enabled=false",
            f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}"]
    for engine in ("local", "ray"):
        res = _run([*data, f"engine={engine}", f"run_name={engine}"], tmp_path, timeout=300,
                   env={"RAY_ADDRESS": address, **auth} if engine == "ray" else None)
        assert res.returncode == 0, res.stderr[-3000:]
    runs = _runs_by_name(tmp_path)
    local, ray_run = runs["local"], runs["ray"]
    for metric in (*SCORES, "ari"):
        assert ray_run.data.metrics[metric] == local.data.metrics[metric], metric
    assert ray_run.data.metrics["ari"] > 0.95
    assert ray_run.data.tags["data_fingerprint"] == local.data.tags["data_fingerprint"]
    assert ray_run.data.metrics["engine/driver_rows_read"] <= 64
    import pandas as pd

    folder = mlflow.artifacts.download_artifacts(run_id=ray_run.info.run_id, artifact_path="labels", dst_path=str(tmp_path / "parts-out"))
    written = pd.read_parquet(folder)
    assert written["id"].tolist()[:2] == ["doc-0", "doc-1"] and len(written) == 90_000


def test_an_engine_ray_sweep_runs_its_cells_passes_on_ray(ray_head, tmp_path):
    """A sweep's cells share a dataset cache; with engine=ray they read the files themselves instead."""
    address, auth = ray_head
    _save_blobs(tmp_path / "rows.npy", 30_000, 5, 5, seed=4)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    res = _run(["-m", *ENGINE_RUN[:-2], "dataset=npy", f"dataset.path={tmp_path / 'rows.npy'}", "engine=ray",
                "clusterer.n_clusters=4,5", f"mlflow.tracking_uri={store}"], tmp_path, timeout=300,
               env={"RAY_ADDRESS": address, **auth})
    assert res.returncode == 0, res.stderr[-3000:]
    mlflow.set_tracking_uri(store)
    cells = [r for r in mlflow.search_runs(experiment_names=["embclust"], output_format="list")
             if r.data.tags.get("sweep_role") != "parent"]
    assert sorted(r.data.params["clusterer.n_clusters"] for r in cells) == ["4", "5"]
    assert all(r.info.status == "FINISHED" for r in cells)
    assert all(r.data.tags["engine"] == "ray" and int(r.data.tags["engine_passes"]) >= 3 for r in cells)


def test_ray_launcher_cells_with_engine_ray_leave_cpus_to_their_passes(ray_head, tmp_path):
    """Cells as Ray tasks whose passes are Ray Data jobs, on 2 CPUs: two cells holding one CPU
    each would leave their passes none (the sweep waited for ever); one runs at a time instead."""
    address, auth = ray_head
    _save_blobs(tmp_path / "rows.npy", 20_000, 5, 4, seed=5)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    res = _run(["-m", *ENGINE_RUN[:-2], "dataset=npy", f"dataset.path={tmp_path / 'rows.npy'}", "engine=ray",
                "clusterer.n_clusters=3,4", "hydra/launcher=ray", f"hydra.launcher.address={address}",
                f"mlflow.tracking_uri={store}"], tmp_path, timeout=240, env=auth)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "engine=ray cells run at most 1 at a time, so that their passes over the rows have 1 of the cluster's 2 CPUs" in res.stderr
    assert "Progress bars disabled" not in res.stderr and "MapBatches(" not in res.stderr  # no Ray Data progress on the sweep's stderr
    mlflow.set_tracking_uri(store)
    runs = mlflow.search_runs(experiment_names=["embclust"], output_format="list")
    cells = [r for r in runs if r.data.tags.get("sweep_role") == "cell"]
    assert len(cells) == 2 and all(r.info.status == "FINISHED" and r.data.tags["engine"] == "ray" for r in cells)


def test_cells_at_once_keeps_a_cpu_for_the_passes_of_engine_ray_cells():
    from omegaconf import OmegaConf

    from hydra_plugins.embclust_ray_launcher._core import cells_at_once

    ray_cells = [(0, [], OmegaConf.create({"engine": "ray"})), (1, [], OmegaConf.create({"engine": "ray"}))]
    local_cells = [(0, [], OmegaConf.create({"engine": "local"}))]
    assert cells_at_once(local_cells, 2, 1) is None  # Ray schedules them as it likes
    assert cells_at_once(ray_cells, 2, 1) == 1
    assert cells_at_once(ray_cells, 16, 1) == 15
    assert cells_at_once(ray_cells, 16, 4) == 3
    with pytest.raises(SystemExit):  # a cell's CPUs would be the whole cluster
        cells_at_once(ray_cells, 1, 1)


def _kill_first_task(marker: str, deadline: float) -> int | None:
    """SIGKILL the first process whose command line holds ``marker`` (a Ray worker running a task)."""
    me = os.getpid()
    while time.time() < deadline:
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == me:
                continue
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if marker.encode() in cmdline:
                os.kill(int(entry), signal.SIGKILL)
                return int(entry)
        time.sleep(0.005)
    return None


def test_a_ray_worker_killed_during_a_pass_is_retried_and_the_run_gives_the_same_answer(ray_head, tmp_path):
    """Ray re-runs the task of a worker killed mid-pass; the group's sums are the same, so is the run."""
    import threading

    address, auth = ray_head
    _save_blobs(tmp_path / "rows.npy", 800_000, 32, 6, seed=8)
    killed: list = []
    killer = threading.Thread(target=lambda: killed.append(_kill_first_task("ray::MapBatches", time.time() + 240)))
    killer.start()
    try:
        _engine_run(tmp_path, "ray", "killed", {"RAY_ADDRESS": address, **auth})
    finally:
        killer.join()
    assert killed and killed[0] is not None, "no Ray task was seen running"
    _engine_run(tmp_path, "local", "local")
    runs = _runs_by_name(tmp_path)
    assert runs["killed"].info.status == "FINISHED"
    for metric in SCORES:
        assert runs["killed"].data.metrics[metric] == runs["local"].data.metrics[metric], metric


def test_a_task_that_fails_on_the_cluster_is_one_line_naming_the_pass_and_the_error(ray_head, tmp_path):
    """A worker's error (a full disk where it writes the labels) comes back as Ray's wrapper with the
    remote traceback as text; the run says the pass and the worker's own error, in one line."""
    address, auth = ray_head
    np.save(tmp_path / "rows.npy", np.zeros((3_000, 2), dtype=np.float32))
    script = f"""
import numpy as np
from embclust.engine.ray_rows import RayRows
from embclust.engine.rows import NpyRows
from embclust.errors import EmbclustError

def full_disk(rows, X_block):
    raise OSError(28, "No space left on device")

try:
    RayRows(NpyRows({str(tmp_path / 'rows.npy')!r}, 3_000, 2)).map_groups(full_disk, list, 1_000, 2, progress="kmeans: labels and inertia, rows")
except EmbclustError as exc:
    print("ERROR", exc)
"""
    res = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=_env(RAY_ADDRESS=address, **auth),
                         capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip() == ("ERROR engine=ray: kmeans: labels and inertia failed on the Ray cluster: "
                                  "OSError: [Errno 28] No space left on device")
    assert "Traceback" not in res.stderr and "UserCodeException" not in res.stderr
