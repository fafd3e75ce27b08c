"""embclust atlas: a run's labels.parquet in Embedding Atlas, served offline and loaded in headless Chromium."""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import socket
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import mlflow
import numpy as np
import pandas as pd
import pytest

pytest.importorskip("embedding_atlas")

from embclust.errors import ConfigError, DataError  # noqa: E402
from embclust.use import atlas  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    # any host name but this machine's fails to resolve: a request that leaves it cannot succeed
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One SQLite store for the module (creating MLflow's tables takes seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('atlas-store') / 'mlflow.db'}"


@pytest.fixture(autouse=True)
def _tracking(store, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # Embedding Atlas's own cache
    mlflow.set_tracking_uri(store)
    mlflow.set_experiment("embclust")


def _labels(n: int = 300, nan_rows: int = 0, text: bool = True, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    cluster = np.arange(n) % 4 - 1  # -1 (noise), 0, 1, 2
    centres = np.array([[0.0, 0.0], [6.0, 6.0], [-6.0, 6.0], [6.0, -6.0]])
    xy = (centres[cluster + 1] + rng.normal(size=(n, 2))).astype(np.float32)
    xy[n - nan_rows:] = np.nan
    table = {"id": [f"doc{i}" for i in range(n)], "cluster": cluster, "x": xy[:, 0], "y": xy[:, 1],
             "label": [f"topic{c % 3}" for c in cluster]}
    if text:
        table["text"] = [f"document {i} of cluster {c}" for i, c in enumerate(cluster)]
    return pd.DataFrame(table)


def _log_run(tmp_path: Path, labels: pd.DataFrame | None, params: dict | None = None, tags: dict | None = None) -> str:
    with mlflow.start_run(tags=tags) as run:
        if params:
            mlflow.log_params(params)
        if labels is not None:
            labels.to_parquet(tmp_path / "labels.parquet", index=False)
            mlflow.log_artifact(str(tmp_path / "labels.parquet"))
        else:
            mlflow.log_text("seed: 0\n", "config.yaml")
    return run.info.run_id


def _is_local(url: str) -> bool:
    if url.startswith(("data:", "blob:", "about:")):
        return True
    host = urlsplit(url).hostname or ""
    return host == "localhost" or (host.replace(".", "").isdigit() and ipaddress.ip_address(host).is_loopback)


@pytest.fixture
def no_outbound(monkeypatch):
    """Record (and refuse) every connection this process opens to an address that is not loopback."""
    attempts: list = []
    connect, connect_ex = socket.socket.connect, socket.socket.connect_ex

    def remote(address) -> bool:
        if not isinstance(address, tuple):  # a Unix socket
            return False
        try:
            return not ipaddress.ip_address(address[0].split("%")[0]).is_loopback
        except ValueError:
            return address[0] != "localhost"

    def guarded(self, address):
        if remote(address):
            attempts.append(address)
            raise OSError(f"test: no network ({address})")
        return connect(self, address)

    def guarded_ex(self, address):
        if remote(address):
            attempts.append(address)
            return 111
        return connect_ex(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)
    monkeypatch.setattr(socket.socket, "connect_ex", guarded_ex)
    return attempts


def _post_json(url: str, body: dict):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


# ----------------------------------------------------------------------------- the browser


def test_atlas_serves_a_run_offline_and_headless_chromium_shows_its_points(tmp_path, no_outbound, caplog):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no {CHROMIUM} (apt-get install -y --no-install-recommends chromium fonts-liberation)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")

    run_id = _log_run(tmp_path, _labels(300, nan_rows=20), params={"reducer._target_": "sklearn.manifold.TSNE"})
    caplog.set_level(logging.INFO, logger="embclust")
    started = time.perf_counter()
    with atlas.open_atlas(run_id, port=0) as server:
        assert server.rows == 280 and server.clusters == 3
        assert "20 of 300 rows have no map position (reducer=tsne placed only its fitted sample)" in caplog.text

        # What the frontend is told: the run's own map, coloured by cluster, the clusters named.
        meta = json.loads(urllib.request.urlopen(server.url + "data/metadata.json", timeout=30).read())
        props = meta["props"]
        assert props["data"]["projection"] == {"x": "x", "y": "y"} and props["data"]["text"] == "text"
        assert props["defaultChartsConfig"]["embedding"]["data"]["category"] == "cluster"
        assert sorted(label["text"] for label in props["embeddingViewLabels"]) == ["cluster 0", "cluster 1", "cluster 2"]
        assert meta["database"] == {"type": "rest"}  # DuckDB runs in this process, not fetched by the page
        counts = _post_json(server.url + "data/query", {"type": "json", "sql": "SELECT cluster, COUNT(*) AS n FROM dataset GROUP BY 1 ORDER BY 1"})
        assert counts == [{"cluster": -1, "n": 70}, {"cluster": 0, "n": 70}, {"cluster": 1, "n": 70}, {"cluster": 2, "n": 70}]

        requests: list[str] = []
        with sync_api.sync_playwright() as p:
            context = p.chromium.launch_persistent_context(
                str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
                viewport={"width": 1400, "height": 900},
            )
            try:
                context.on("request", lambda request: requests.append(request.url))
                page = context.new_page()
                response = page.goto(server.url, wait_until="load", timeout=60_000)
                assert response is not None and response.status == 200
                assert page.title() == "Embedding Atlas"
                # The point count of the run's placed rows, the cluster legend, the rows' ids and texts.
                page.wait_for_function("t => document.body.innerText.includes(t)", arg="280 / 280 points", timeout=60_000)
                page.wait_for_function("t => document.body.innerText.includes(t)", arg="cluster (BIGINT)", timeout=60_000)
                # The table's rows come from a later query than the legend's counts.
                page.wait_for_function("t => document.body.innerText.includes(t)", arg="document 0 of cluster -1", timeout=60_000)
                body = page.inner_text("body")
                assert "doc0" in body and "document 0 of cluster -1" in body
                webgpu = "WebGPU is unavailable" not in body
                page.screenshot(path=str(tmp_path / "atlas.png"))
            finally:
                context.close()
        loaded = time.perf_counter() - started
        assert requests and all(_is_local(url) for url in requests), [u for u in requests if not _is_local(u)]
        assert any(url.startswith(server.url) for url in requests)
    assert no_outbound == []
    with pytest.raises(OSError):  # stopped: the port no longer answers
        socket.create_connection((server.host, server.port), timeout=2).close()
    print(f"atlas: page with 280 points in {loaded:.1f} s; embedding view drawn: {webgpu} "
          "(the points need WebGPU with shader-f16, which headless Chromium's software adapter lacks)", file=sys.stderr)


# ----------------------------------------------------------------------------- one-line errors and the map


def test_a_run_without_labels_parquet_is_one_line(tmp_path):
    run_id = _log_run(tmp_path, None)
    with pytest.raises(DataError) as err:
        atlas.open_atlas(run_id, port=0)
    assert str(err.value) == f"run {run_id} has no labels.parquet: pass the id of a finished embclust run"


def test_an_unknown_run_is_one_line(store):
    with pytest.raises(ConfigError) as err:
        atlas.open_atlas("0123abc", port=0)
    assert str(err.value) == f"no run '0123abc' at {store} (set --tracking-uri or MLFLOW_TRACKING_URI)"


def test_a_run_without_a_map_says_which_reducer_to_use(tmp_path):
    run_id = _log_run(tmp_path, _labels(40, nan_rows=40), params={"reducer.max_points": None})
    with pytest.raises(DataError) as err:
        atlas.open_atlas(run_id, port=0)
    assert str(err.value) == f"run {run_id} has no 2-D map (reducer=none): re-run with reducer=pca or reducer=umap"

    run_id = _log_run(tmp_path, _labels(40, nan_rows=40), params={"reducer._target_": "umap.UMAP"})
    with pytest.raises(DataError) as err:
        atlas.open_atlas(run_id, port=0)
    assert str(err.value) == (
        f"run {run_id} has no 2-D map (every x / y is NaN, reducer=umap): re-run with reducer=pca or reducer=umap"
    )


def test_a_sweep_opens_its_best_cell_and_a_light_cell_points_to_the_sweep(tmp_path):
    with mlflow.start_run(tags={"sweep_role": "parent"}) as parent:
        pass
    parent_id = parent.info.run_id
    cell_tags = {"mlflow.parentRunId": parent_id}
    best = _log_run(tmp_path, _labels(60, text=False), tags=cell_tags)
    light = _log_run(tmp_path, _labels(60)[["id", "cluster"]], tags=cell_tags)
    mlflow.MlflowClient().set_tag(parent_id, "best_run_id", best)

    run, df = atlas.load_map(parent_id)
    assert run.info.run_id == best and list(df.columns) == ["id", "cluster", "x", "y", "label"] and len(df) == 60
    with pytest.raises(DataError) as err:
        atlas.load_map(light)
    assert str(err.value) == (
        f"run {light} has no 2-D map (labels.parquet has no x / y): it is a sweep cell, which logs only id and "
        f"cluster; pass the sweep id {parent_id} to open its best cell"
    )


def test_cluster_names_sit_at_each_clusters_median_and_skip_noise():
    df = pd.DataFrame({"cluster": [-1, 0, 0, 0, 5, 5], "x": [9.0, 0, 1, 2, 10, 12], "y": [9.0, 0, 0, 3, 1, 1]})
    assert atlas.cluster_names(df) == [
        {"x": 1.0, "y": 0.0, "text": "cluster 0", "priority": 3},
        {"x": 11.0, "y": 1.0, "text": "cluster 5", "priority": 2},
    ]
    assert atlas.cluster_names(df, limit=1)[0]["text"] == "cluster 0"
    assert atlas.cluster_names(df[df["cluster"] == -1]) == []


def test_without_the_extra_the_command_names_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "embedding_atlas.server", None)  # as if embedding-atlas were not installed
    with pytest.raises(ConfigError) as err:
        atlas.open_atlas("any", port=0)
    assert str(err.value) == 'embclust atlas needs the atlas extra: pip install -e ".[atlas]"'


def test_a_port_in_use_or_out_of_range_is_one_line(tmp_path):
    run_id = _log_run(tmp_path, _labels(20))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError) as err:
            atlas.open_atlas(run_id, port=port)
        assert str(err.value).startswith(f"cannot listen on 127.0.0.1:{port} (")
        assert str(err.value).endswith("): pass another --port, or --port 0 for a free one")
    with pytest.raises(ConfigError) as err:
        atlas.open_atlas(run_id, port=70000)
    assert str(err.value) == "--port 70000: a port is 0-65535 (0: a free one)"
    # an address of another machine: the host is wrong, not the port
    with pytest.raises(ConfigError, match=r"cannot listen on 192.0.2.1 \(.*\): --host must be an address of this machine"):
        atlas.open_atlas(run_id, host="192.0.2.1", port=0)


@pytest.mark.skipif(os.name != "posix", reason="SO_REUSEADDR semantics differ")
def test_the_default_port_falls_back_to_a_free_one_when_taken(tmp_path, monkeypatch):
    run_id = _log_run(tmp_path, _labels(20))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        monkeypatch.setattr(atlas, "DEFAULT_PORT", taken.getsockname()[1])
        with atlas.open_atlas(run_id) as server:
            assert server.port != atlas.DEFAULT_PORT
            with urllib.request.urlopen(server.url, timeout=30) as resp:
                assert resp.status == 200 and b"<title>Embedding Atlas</title>" in resp.read()


def test_a_stop_signal_ends_atlas_as_ctrl_c_does(caplog):
    # The command turns SIGINT / SIGTERM into Stopped: atlas ended "stopped by SIGINT", status 130.
    import signal

    from embclust import signals
    from embclust.use import atlas

    stopped = []

    class Server:
        def wait(self):
            stopped.append(True)
            raise signals.Stopped(signal.SIGINT)

    with caplog.at_level("INFO"):
        atlas.serve(Server())
    assert stopped and "stopped" in caplog.text
