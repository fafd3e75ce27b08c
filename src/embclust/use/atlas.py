"""``embclust atlas``: a run's ``labels.parquet`` in Apple's Embedding Atlas, a local web app that
draws millions of points in the browser.

The run's own map is the projection (x, y: nothing is embedded or projected again), ``cluster``
colours the points, each cluster is named at its median position, and ``id``, ``label`` and
``text`` (where the run logged them) are columns of its table and filters (``text`` is the
point's hover text). The app and its queries are served from this machine: Embedding Atlas's
bundled frontend, with DuckDB running in this process (nothing is fetched from the network).
The point view needs a browser with WebGPU (and its shader-f16 feature); without it the page
still shows the counts, the cluster legend, the charts and the table.
"""

from __future__ import annotations

import errno
import hashlib
import inspect
import ipaddress
import logging
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

from embclust.errors import ConfigError, DataError
from embclust.use import runs

log = logging.getLogger(__name__)

EXTRA_HINT = 'embclust atlas needs the atlas extra: pip install -e ".[atlas]"'
DEFAULT_PORT = 5055
ROW_ID = "__row_index__"  # Embedding Atlas's own row id column (columns named __* are hidden)
COLUMNS = ("id", "cluster", "x", "y", "label", "text")
MAX_CLUSTER_NAMES = 1000  # cluster names drawn on the map, largest clusters first
START_TIMEOUT_S = 60.0


def _atlas_modules():
    """Embedding Atlas's server pieces, or :class:`ConfigError` naming the extra."""
    try:
        import uvicorn
        from embedding_atlas.data_source import DataSource
        from embedding_atlas.options import make_embedding_atlas_props
        from embedding_atlas.server import make_server
        from embedding_atlas.version import __version__
    except ImportError as exc:
        if exc.name and exc.name.split(".")[0] in ("embedding_atlas", "uvicorn"):
            raise ConfigError(EXTRA_HINT) from None
        raise ConfigError(f"{EXTRA_HINT} (embedding-atlas is installed but {exc.name or exc} does not import)") from None
    return uvicorn, DataSource, make_embedding_atlas_props, make_server, __version__


# ----------------------------------------------------------------------------- the run's map


def reducer_name(run) -> str:
    """The run's reducer as its config group name (umap, pca, tsne), ``none`` when it had none."""
    target = run.data.params.get("reducer._target_")
    if not target or target in ("None", "null"):
        return "none"
    name = target.rsplit(".", 1)[-1].lower()
    return {"tsne": "tsne", "pca": "pca", "umap": "umap"}.get(name, name)


def load_map(run_id: str) -> tuple[object, pd.DataFrame]:
    """The run (a sweep's parent id gives its best cell) and the rows of its ``labels.parquet``
    that have a map position, with columns id, cluster, x, y and label / text where logged."""
    run = runs.resolve_run(run_id)
    rid = run.info.run_id
    if not runs.has_artifact(run, "labels.parquet"):
        status = run.info.status
        why = "" if status == "FINISHED" else f" (it is {status}: labels.parquet is logged when a run finishes)"
        raise DataError(f"run {rid} has no labels.parquet{why}: pass the id of a finished embclust run")
    logged = runs.load_labels(run)  # one line, not pyarrow's traceback, where the file is damaged
    names = logged.schema.names
    missing = [c for c in ("id", "cluster") if c not in names]
    if missing:
        raise DataError(f"labels.parquet of run {rid} has no column {', '.join(missing)}: it is not an embclust labels table")
    if "x" not in names or "y" not in names:
        parent = run.data.tags.get("mlflow.parentRunId")
        hint = (
            f"it is a sweep cell, which logs only id and cluster; pass the sweep id {parent} to open its best cell"
            if parent
            else "re-run it with reducer=pca or reducer=umap"
        )
        raise DataError(f"run {rid} has no 2-D map (labels.parquet has no x / y): {hint}")
    table = logged.select([c for c in COLUMNS if c in names])
    df = table.to_pandas()
    placed = np.isfinite(df["x"].to_numpy(dtype=np.float64)) & np.isfinite(df["y"].to_numpy(dtype=np.float64))
    if not placed.any():
        reducer = reducer_name(run)
        if reducer == "none":
            raise DataError(f"run {rid} has no 2-D map (reducer=none): re-run with reducer=pca or reducer=umap")
        raise DataError(f"run {rid} has no 2-D map (every x / y is NaN, reducer={reducer}): re-run with reducer=pca or reducer=umap")
    if not placed.all():
        left = int((~placed).sum())
        log.warning(
            "%d of %d rows have no map position (reducer=%s placed only its fitted sample): left out of the atlas",
            left, placed.size, reducer_name(run),
        )
        df = df.loc[placed].reset_index(drop=True)
    return run, df


def cluster_names(df: pd.DataFrame, limit: int = MAX_CLUSTER_NAMES) -> list[dict]:
    """A label per cluster (noise excepted) at its median map position, larger clusters first."""
    members = df.loc[df["cluster"] != -1, ["cluster", "x", "y"]]
    if members.empty:
        return []
    grouped = members.groupby("cluster", sort=False)
    centres = grouped[["x", "y"]].median()
    sizes = grouped.size().sort_values(ascending=False).head(limit)
    return [
        {"x": float(centres.at[c, "x"]), "y": float(centres.at[c, "y"]), "text": f"cluster {c}", "priority": int(n)}
        for c, n in sizes.items()
    ]


# ----------------------------------------------------------------------------- the server


class AtlasServer:
    """Embedding Atlas on one run's map, served by uvicorn on a background thread.

    ``start()`` returns once the server accepts connections; ``wait()`` blocks until it stops
    (Ctrl-C in the calling thread stops it); ``stop()`` shuts it down. Also a context manager.
    """

    def __init__(self, app, sock: socket.socket, run_id: str, rows: int, clusters: int):
        uvicorn = _atlas_modules()[0]
        self.run_id, self.rows, self.clusters = run_id, rows, clusters
        self._sock = sock
        host, port = sock.getsockname()[:2]
        self.host, self.port = host, port
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{port}/"
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=2)
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = START_TIMEOUT_S) -> AtlasServer:
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, name="embclust-atlas", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise DataError(f"Embedding Atlas did not start on {self.url} within {timeout:.0f} s")
            time.sleep(0.02)
        return self

    def wait(self) -> None:
        """Block until the server stops; Ctrl-C (or SIGTERM / SIGHUP, which the command turns into
        :class:`embclust.signals.Stopped`) stops it and re-raises."""
        from embclust.signals import Stopped

        try:
            while self._thread is not None and self._thread.is_alive():
                self._thread.join(0.5)
        except (KeyboardInterrupt, Stopped):
            self.stop()
            raise

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(10)
        self._sock.close()

    def __enter__(self) -> AtlasServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _bind(host: str, port: int | None) -> socket.socket:
    """A listening socket on ``host``:``port``; ``None`` is :data:`DEFAULT_PORT`, or a free port when it is taken."""
    if port is not None and not 0 <= port <= 65535:
        raise ConfigError(f"--port {port}: a port is 0-65535 (0: a free one)")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port or 0, type=socket.SOCK_STREAM)[0]
    except socket.gaierror:
        raise ConfigError(f"--host {host}: no such host name or address") from None

    def listen(addr) -> socket.socket:
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(addr)
            sock.listen(128)
        except OSError:
            sock.close()
            raise
        return sock

    if not ipaddress.ip_address(address[0]).is_loopback:
        log.warning("serving on %s: anyone who can reach this machine can read the run's labels", address[0])
    try:
        return listen((address[0], DEFAULT_PORT if port is None else port, *address[2:]))
    except OSError as exc:
        if exc.errno == errno.EADDRNOTAVAIL:  # the host is not one of this machine's addresses
            raise ConfigError(f"cannot listen on {host} ({exc.strerror or exc}): --host must be an address of this "
                              "machine (127.0.0.1, or 0.0.0.0 for all of them)") from None
        if port is None:
            log.info("port %d is in use: serving on a free port", DEFAULT_PORT)
            return listen((address[0], 0, *address[2:]))
        raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror or exc}): pass another --port, or --port 0 for a free one") from None


def build_app(run, df: pd.DataFrame, point_size: float | None = None):
    """Embedding Atlas's FastAPI app for ``df`` (the rows of :func:`load_map`), DuckDB in this process."""
    _, DataSource, make_props, make_server, version = _atlas_modules()
    df = df.copy()
    df[ROW_ID] = np.arange(len(df), dtype=np.int64)
    text = "text" if "text" in df.columns else None
    names = cluster_names(df)
    props = make_props(
        row_id=ROW_ID, x="x", y="y", text=text, point_size=point_size,
        # the clusters' own names; "disabled" rather than labels guessed from the text
        labels=names or None,
    )
    if not names:
        props["embeddingViewLabels"] = "disabled"
    # The default embedding chart, coloured by cluster (this object replaces its data whole).
    props["defaultChartsConfig"] = {"embedding": {"data": {"x": "x", "y": "y", "text": text, "category": "cluster"}}}
    metadata = {"props": props}
    digest = hashlib.sha256(f"embclust-atlas|{version}|{run.info.run_id}|{len(df)}".encode()).hexdigest()
    source = DataSource(digest, df, metadata)
    static = (Path(inspect.getfile(make_server)).parent / "static").as_posix()  # the bundled frontend
    return make_server(source, static_path=static, duckdb_uri="server", mcp=False, cors=False)


def open_atlas(
    run_id: str,
    host: str = "127.0.0.1",
    port: int | None = None,
    open_browser: bool = False,
    point_size: float | None = None,
) -> AtlasServer:
    """Start Embedding Atlas on run ``run_id``'s map and return the running :class:`AtlasServer`.

    ``port=None`` serves on :data:`DEFAULT_PORT` (a free port when it is taken), ``0`` on a free
    port. The tracking URI is MLflow's current one (``mlflow.set_tracking_uri``).
    """
    _atlas_modules()  # the extra's one line before any download
    started = time.perf_counter()
    run, df = load_map(run_id)
    clusters = int(df.loc[df["cluster"] != -1, "cluster"].nunique())
    app = build_app(run, df, point_size=point_size)
    server = AtlasServer(app, _bind(host, port), run.info.run_id, len(df), clusters).start()
    log.info(
        "Embedding Atlas on run %s: %d points, %d clusters, served at %s (%.1f s); Ctrl-C stops it",
        run.info.run_id, len(df), clusters, server.url, time.perf_counter() - started,
    )
    if open_browser:
        import webbrowser

        if not webbrowser.open(server.url):
            log.info("no browser to open here: open %s", server.url)
    return server


def serve(server: AtlasServer) -> None:
    """Block until Ctrl-C, then stop ``server`` (the command's normal way out)."""
    from embclust.signals import Stopped

    try:
        server.wait()
    except (KeyboardInterrupt, Stopped):  # its normal way out: status 0
        log.info("stopped")
