"""MLflow tracking: where runs go and what makes each one reproducible."""

from __future__ import annotations

import errno
import functools
import hashlib
import logging
import os
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import contextlib
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig, OmegaConf

from embclust.errors import ConfigError, EmbclustError, first_line
from embclust.locks import HeldByStoppedProcess, file_lock

log = logging.getLogger(__name__)

# Packages whose versions decide a run's numbers; recorded as tags on every run.
TRACKED_PACKAGES = (
    "embclust",
    "numpy",
    "scipy",
    "scikit-learn",
    "scikit-learn-intelex",
    "umap-learn",
    "pynndescent",
    "numba",
    "hdbscan",
    "xgboost",
    "shap",
    "plotly",
    "pyarrow",
    "hydra-core",
    "omegaconf",
    "mlflow",
)


DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
# URI schemes MLflow's tracking stores accept ("" is a plain folder path).
KNOWN_SCHEMES = frozenset(
    {"", "file", "sqlite", "http", "https", "databricks", "databricks-uc", "uc", "postgresql", "mysql", "mssql"}
)


def default_tracking_uri() -> str:
    """MLFLOW_TRACKING_URI when set, else the SQLite store in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


# Seconds to wait for a tracking server to answer before giving up on it.
SERVER_CHECK_TIMEOUT_S = 5.0


# How the commands (embclust assign / export / search / compare) are pointed at another store.
CLI_POINT_IT = "pass --tracking-uri (or set MLFLOW_TRACKING_URI)"


class TrackingServerUnreachable(EmbclustError):
    """The configured MLflow tracking server does not answer."""


def check_server(
    tracking_uri: str, timeout: float = SERVER_CHECK_TIMEOUT_S, point_it: str = "set mlflow.tracking_uri"
) -> None:
    """Raise :class:`TrackingServerUnreachable` when an http(s) tracking URI does not answer.

    Any HTTP answer counts as reachable (auth errors are MLflow's to report); only a refused,
    timed-out or unresolvable connection fails. Other URIs (sqlite, file, ...) are not checked.
    """
    if not tracking_uri.lower().startswith(("http://", "https://")):
        return
    for name, value in HTTP_RETRY_DEFAULTS.items():
        os.environ.setdefault(name, value)
    try:
        with urllib.request.urlopen(tracking_uri.rstrip("/") + "/health", timeout=timeout):
            pass
    except urllib.error.HTTPError:
        pass  # the server answered
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise TrackingServerUnreachable(
            f"MLflow tracking server {tracking_uri} is unreachable: start it with scripts/mlflow_server.sh "
            f"or {point_it}"
        ) from exc


def check_store_to_read(tracking_uri: str, point_it: str = CLI_POINT_IT, given_as: str = "--tracking-uri") -> None:
    """For commands that read runs: a URI scheme MLflow has a store for (named as ``given_as``),
    a server that answers (:func:`check_server`), and a SQLite store file that exists; MLflow
    would create an empty store (and its folder) instead."""
    check_scheme(tracking_uri, what=given_as)
    check_server(tracking_uri, point_it=point_it)
    db = sqlite_path(tracking_uri)
    if db is not None and not db.is_file():
        raise ConfigError(f"no MLflow store at {db} ({tracking_uri}): {point_it} for the store the runs were logged to")


def check_scheme(tracking_uri: str, what: str = "mlflow.tracking_uri") -> None:
    """A URI scheme MLflow has a tracking store for; else one line naming ``what`` set it."""
    scheme = urllib.parse.urlparse(tracking_uri).scheme.lower()
    # "postgresql+psycopg2" names a database driver after the "+".
    if scheme.split("+", 1)[0] not in KNOWN_SCHEMES:
        raise ConfigError(
            f"{what}={tracking_uri!r}: unknown scheme {scheme + ':' if scheme else '(none)'} "
            "(allowed: sqlite:///FILE, http(s)://HOST:PORT, databricks, "
            "postgresql/mysql/mssql://...)"
        )


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI, None for other URIs."""
    if not tracking_uri.lower().startswith("sqlite:///"):
        return None
    path = tracking_uri[len("sqlite:///"):].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


@contextmanager
def store_lock(tracking_uri: str):
    """Hold an exclusive file lock next to a SQLite store (``<db>.lock``); no-op for other stores.

    MLflow creates or migrates the schema when a process first opens the store; two processes
    doing it at once on a new file break it for good (``_alembic_tmp_... already exists``).
    A lock held by a stopped process is an error saying so, not an endless wait.
    """
    db = sqlite_path(tracking_uri)
    if db is None:
        yield
        return
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(file_lock(db.with_name(db.name + ".lock"), f"the MLflow store {db}"))
        except OSError as exc:
            raise ConfigError(
                f"mlflow.tracking_uri={tracking_uri!r}: cannot write in {db.parent} ({exc.strerror or exc}); "
                "point it at a SQLite file in a folder you can write to"
            ) from None
        except HeldByStoppedProcess as exc:
            raise EmbclustError(
                f"{exc}: resume it ('kill -CONT {exc.pid}') or end it, and run again"
            ) from None
        yield


# The process that created (or reopened) a run, ``host:pid:start`` (see :mod:`embclust.processes`);
# a sweep's parent carries it as SWEEP_OWNER_TAG, which decides whether the sweep is resumed.
PROCESS_TAG = "embclust.process"
SWEEP_OWNER_TAG = "sweep.owner"
_PROCESS_TAGS = (PROCESS_TAG, SWEEP_OWNER_TAG)


def close_dead_runs(experiment_id: str) -> list[str]:
    """End as KILLED the runs of ``experiment_id`` left RUNNING by an embclust process that is gone.

    ``kill -9``, the out-of-memory killer or a power cut give a process no chance to end its
    run; the next run or sweep on the store closes it, with the reason in tag ``error``. Runs
    whose process is alive, unknown (another host or pid namespace) or not recorded (made by
    other tools) are left alone. Returns the ids of the runs closed.
    """
    from embclust.processes import owner_is_alive

    client = mlflow.MlflowClient()
    closed = []
    for run in client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000):
        token = next((run.data.tags[t] for t in _PROCESS_TAGS if run.data.tags.get(t)), None)
        if owner_is_alive(token) is False:
            client.set_tag(
                run.info.run_id, "error",
                f"orphaned: its process ({token}) ended without closing it (kill -9, out of memory, a crash, "
                "or its store stopped answering)",
            )
            client.set_terminated(run.info.run_id, "KILLED")
            closed.append(run.info.run_id)
    if closed:
        log.warning(
            "closed %d run(s) left RUNNING by a process that ended without closing them, as KILLED: %s",
            len(closed), ", ".join(closed[:5]) + (" ..." if len(closed) > 5 else ""),
        )
    return closed


# SQLite's lock wait that MLflow sets on its connections (PRAGMA busy_timeout).
_MLFLOW_BUSY_TIMEOUT_S = 20


# MLflow retries a failed request to a tracking server 7 times with a backoff factor of 2 (about
# 4 minutes a request); a run whose server went away then spent 12 minutes in retries before its
# traceback. These bound a request to about 15 s of retries; the user's own settings win.
HTTP_RETRY_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "4", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}


def _chain(exc: BaseException | None):
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


def store_failure_message(exc: BaseException, tracking_uri: str) -> str | None:
    """The error line for a store that failed during a run (locked SQLite, a server gone), else None."""
    locked = locked_store_message(exc, tracking_uri)
    if locked is not None:
        return locked
    deleted = _deleted_run_message(exc)
    if deleted is not None:
        return deleted
    db = sqlite_path(tracking_uri)
    if db is not None and any("readonly database" in str(e) or "read-only database" in str(e) for e in _chain(exc)):
        if not db.exists():  # SQLite's word for a file moved or deleted while it was open
            return (
                f"the MLflow store {db} (mlflow.tracking_uri={tracking_uri!r}) was moved or deleted while the run used "
                "it: put it back, or point mlflow.tracking_uri at where it is now, and run again (the next run closes "
                "a run left RUNNING)"
            )
        return (
            f"the MLflow store {db} (mlflow.tracking_uri={tracking_uri!r}) cannot be written (attempt to write a "
            "readonly database): make the file and its folder writable, or point mlflow.tracking_uri elsewhere"
        )
    # the first failed write names the file; later ones (recording the failure) only the store
    full = next((e for e in _chain(exc) if isinstance(e, OSError) and e.errno == errno.ENOSPC), None)
    full = full or next((e for e in _chain(exc) if _is_disk_full(e)), None)
    if full is not None:
        where = getattr(full, "filename2", None) or getattr(full, "filename", None)
        return (
            f"the disk is full: {'cannot write ' + str(where) if where else 'the MLflow store cannot be written'} "
            f"(mlflow.tracking_uri={tracking_uri!r}); free some space, or point mlflow.tracking_uri elsewhere, and re-run "
            "(the next run closes a run left RUNNING)"
        )
    if not tracking_uri.lower().startswith(("http://", "https://")):
        return None
    lost = ("Max retries exceeded", "Connection refused", "Failed to establish a new connection", "Read timed out")
    if not any(any(text in str(e) for text in lost) for e in _chain(exc)):
        return None
    return (
        f"the MLflow tracking server {tracking_uri} stopped answering during the run, so the run could not "
        "be recorded or closed: start the server again and re-run (the next run closes a run left RUNNING)"
    )


def _deleted_run_message(exc: BaseException) -> str | None:
    """The error line for a run (or its experiment) deleted while the run used it, else None."""
    import re

    found = next((m for e in _chain(exc) for m in [re.search(r"run '?([0-9a-f]{32})'? must be in the 'active' state",
                                                              str(e))] if m), None)
    if found is None:
        return None
    run_id = found.group(1)
    restore = f"mlflow runs restore --run-id {run_id}"
    try:
        client = mlflow.MlflowClient()
        experiment = client.get_experiment(client.get_run(run_id).info.experiment_id)
        if experiment.lifecycle_stage == "deleted":
            restore = f"mlflow experiments restore --experiment-id {experiment.experiment_id}"
    except Exception:  # noqa: BLE001 - the store may be what failed; the run's own restore still applies
        pass
    return (f"MLflow run {run_id} was deleted while it ran (it, or its experiment), so it cannot be recorded or closed: "
            f"restore it ({restore}) and run the same command again (the next run closes a run left RUNNING)")


def _is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return True
    return "database or disk is full" in str(exc) or "No space left on device" in str(exc)


def locked_store_message(exc: BaseException, tracking_uri: str) -> str | None:
    """The error line for a SQLite store that stayed locked by another process, None for other errors."""
    if sqlite_path(tracking_uri) is None or not any("database is locked" in str(e) for e in _chain(exc)):
        return None
    return (
        f"the MLflow store mlflow.tracking_uri={tracking_uri!r} stayed locked by another process for "
        f"{_MLFLOW_BUSY_TIMEOUT_S} s or more (database is locked): if a run, sweep or 'mlflow ui' on it is stopped "
        "(Ctrl-Z, kill -STOP), resume or end it; then run again"
    )


def write_after_lock(write, tracking_uri: str) -> None:
    """Call ``write`` (a run's ``error`` tag); if the SQLite store stayed locked past MLflow's wait,
    wait once more: the run's FAILED status, written a moment later once the lock is gone, would
    otherwise leave a FAILED run without its reason."""
    try:
        write()
    except Exception as exc:
        if locked_store_message(exc, tracking_uri) is None:
            raise
        log.warning(
            "the MLflow store is locked by another process: waiting up to %d s more to record the run's error",
            _MLFLOW_BUSY_TIMEOUT_S,
        )
        write()


def create_sqlite_store(db: Path) -> None:
    """Create a new SQLite store at ``db`` whole or not at all.

    MLflow builds a new database by running its schema migrations one by one in the file itself;
    a process stopped meanwhile (Ctrl-C, SIGTERM, ``kill -9``) leaves a half-built schema that
    every later run fails on. Here the new store is made in a temporary file beside ``db``, which
    is renamed into place only when it is complete (call it under :func:`store_lock`).

    The migrations take 1-2 s; their result is the same empty schema for every store of one MLflow
    version, so the first store made also leaves a copy without MLflow's ``Default`` experiment
    in the user's cache (:func:`schema_template_path`), and later stores start as a copy of it.
    MLflow adds the ``Default`` experiment itself when it first opens a store that lacks it, with
    the artifact location and time it would have given a new one.
    """
    db.parent.mkdir(parents=True, exist_ok=True)
    tmp = db.with_name(f".{db.name}.new-{os.getpid()}")
    leftovers = [tmp.with_name(tmp.name + suffix) for suffix in ("", "-journal", "-wal", "-shm")]
    for path in db.parent.glob(f".{db.name}.new-*"):  # of creators that were stopped (the lock is ours)
        path.unlink(missing_ok=True)
    template = schema_template_path()
    try:
        if not (template is not None and _copy_schema_template(template, tmp)):
            _migrate_new_store(tmp)
            if template is not None:
                _save_schema_template(tmp, template)
        os.replace(tmp, db)
    finally:
        for path in leftovers:
            path.unlink(missing_ok=True)


def schema_template_path() -> Path | None:
    """Where this MLflow version's empty store is kept: ``$XDG_CACHE_HOME/embclust`` (or
    ``~/.cache/embclust``); None when ``EMBCLUST_STORE_TEMPLATE=0``."""
    if os.environ.get("EMBCLUST_STORE_TEMPLATE", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "embclust" / f"mlflow-{mlflow.__version__}-empty-store.db"


def _migrate_new_store(path: Path) -> None:
    """MLflow's own creation of a new store at ``path`` (all schema migrations)."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    try:  # what MLflow itself opens for a sqlite:/// URI (artifact root, workspaces)
        from mlflow.tracking._tracking_service.utils import _get_sqlalchemy_store as open_store
    except ImportError:
        from mlflow.store.tracking import DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH

        def open_store(uri, artifact_uri):
            return SqlAlchemyStore(uri, artifact_uri or DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH)

    store = open_store(f"sqlite:///{path}", None)
    engine = getattr(store, "engine", None)
    if engine is not None:
        engine.dispose()


def _schema_is_whole(path: Path) -> bool:
    """Whether ``path`` is an intact SQLite file holding an MLflow schema version and no experiment
    (a store with runs put in the template's place must not be copied into every new store)."""
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as con:
            if con.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                return False
            if con.execute("SELECT count(*) FROM alembic_version").fetchone()[0] != 1:
                return False
            return con.execute("SELECT count(*) FROM experiments").fetchone()[0] == 0
    except sqlite3.Error:
        return False


def _copy_schema_template(template: Path, target: Path) -> bool:
    """Copy the empty store to ``target``; False (and the template removed) when it is not usable."""
    import shutil

    if not template.is_file():
        return False
    try:
        shutil.copyfile(template, target)
    except OSError as exc:
        target.unlink(missing_ok=True)  # a part copy would be taken for a damaged store
        if exc.errno == errno.ENOSPC:  # migrating instead would fail the same way, and less clearly
            raise OSError(errno.ENOSPC, "No space left on device", str(target)) from None
        return False
    if _schema_is_whole(target):
        return True
    log.warning("the cached empty MLflow store %s is damaged (or not empty); it is rebuilt", template)
    target.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        template.unlink()
    return False


def _save_schema_template(store: Path, template: Path) -> None:
    """Keep a copy of the new, empty ``store`` without its ``Default`` experiment as ``template``.

    Written to a temporary name and renamed, so a reader never sees half of it; a cache that
    cannot be written only means the next store runs the migrations again.
    """
    import shutil
    import sqlite3

    tmp = template.with_name(f".{template.name}.new-{os.getpid()}")
    try:
        template.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(store, tmp)
        with contextlib.closing(sqlite3.connect(tmp)) as con:
            with con:
                con.execute("DELETE FROM experiments WHERE experiment_id = 0")
                con.execute("DELETE FROM experiment_tags WHERE experiment_id = 0")
        if _schema_is_whole(tmp):
            os.replace(tmp, template)
    except (OSError, sqlite3.Error) as exc:
        log.debug("empty MLflow store not cached at %s: %s", template, exc)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def skip_notebook_probes_outside_ipython() -> None:
    """Let MLflow's notebook run contexts answer "not a notebook" without importing IPython.

    At each ``start_run`` MLflow asks ``IPython.get_ipython()`` whether it runs in a Jupyter or
    a Databricks notebook, importing IPython (and prompt_toolkit) where it is installed: 0.6 s
    of a run on 2 cores. A process inside IPython has imported it already, so while ``IPython``
    is not in ``sys.modules`` the answer is no (what ``get_ipython()`` returning None gives);
    otherwise MLflow asks as before.
    """
    import functools
    import sys

    try:
        from mlflow.utils import databricks_utils
    except ImportError:
        return
    no_dbutils = getattr(databricks_utils, "_NoDbutilsError", None)

    def not_in_ipython(name: str):
        if no_dbutils is not None and name == "_get_dbutils":
            raise no_dbutils
        return False

    for name in ("is_running_in_ipython_environment", "_get_dbutils"):
        original = getattr(databricks_utils, name, None)
        if original is None or getattr(original, "embclust_wrapped", False):
            continue

        @functools.wraps(original)
        def probe(*args, _original=original, _name=name, **kwargs):
            if "IPython" not in sys.modules:
                return not_in_ipython(_name)
            return _original(*args, **kwargs)

        probe.embclust_wrapped = True  # type: ignore[attr-defined]
        # The module itself and every loaded MLflow module that imported the function by name.
        for module_name, module in list(sys.modules.items()):
            if module_name.startswith("mlflow") and getattr(module, "__dict__", {}).get(name) is original:
                setattr(module, name, probe)


def setup_tracking(tracking_uri: str, experiment_name: str) -> str:
    """Point MLflow at ``tracking_uri`` and return the id of ``experiment_name`` (created if new).

    The store is opened (created or upgraded by MLflow) under :func:`store_lock`, so parallel
    workers never race on the schema; once open, MLflow keeps it for the process. Raises
    :class:`ConfigError` for an unknown URI scheme or a deleted experiment and
    :class:`TrackingServerUnreachable` when ``tracking_uri`` is a server that does not answer.
    """
    if not str(experiment_name).strip():
        raise ConfigError(f"mlflow.experiment_name={experiment_name!r} must be a name (any non-blank text)")
    check_server(tracking_uri)
    check_scheme(tracking_uri)
    skip_notebook_probes_outside_ipython()
    mlflow.set_tracking_uri(tracking_uri)
    # Opening a SQLite store reads its schema with SQLite's own 5 s lock wait, not the 20 s MLflow
    # gives later statements: a store another process holds locked gets the same 20 s here.
    deadline = time.monotonic() + _MLFLOW_BUSY_TIMEOUT_S
    while True:
        try:
            return _open_experiment(tracking_uri, experiment_name)
        except ConfigError as exc:
            if locked_store_message(exc, tracking_uri) is None:
                raise
            if time.monotonic() >= deadline:
                raise ConfigError(locked_store_message(exc, tracking_uri)) from None
            time.sleep(0.5)


def _open_experiment(tracking_uri: str, experiment_name: str) -> str:
    from sqlalchemy.exc import SQLAlchemyError

    with store_lock(tracking_uri):
        try:
            db = sqlite_path(tracking_uri)
            if db is not None and db.is_dir():  # MLflow retries opening it for about two minutes
                raise ConfigError(
                    f"mlflow.tracking_uri={tracking_uri!r}: {db} is a folder, not a SQLite file; "
                    f"point it at a file, e.g. mlflow.tracking_uri=sqlite:///{(db / 'mlflow.db').as_posix()}"
                )
            if db is not None and db.is_symlink() and not db.exists():  # a shared store whose mount is not up
                raise ConfigError(
                    f"mlflow.tracking_uri={tracking_uri!r}: {db} is a link to {os.readlink(db)}, which does not exist; "
                    "mount or restore the store it points to (a new store would split the runs off it), "
                    "or point mlflow.tracking_uri at another file"
                )
            if db is not None and not db.exists():
                create_sqlite_store(db)
            client = mlflow.MlflowClient()
            experiment = client.get_experiment_by_name(experiment_name)
            if experiment is not None and experiment.lifecycle_stage == "deleted":
                raise ConfigError(
                    f"experiment {experiment_name!r} (mlflow.experiment_name) was deleted: restore it with "
                    f"'mlflow experiments restore --experiment-id {experiment.experiment_id}' "
                    "or choose another mlflow.experiment_name"
                )
            experiment = mlflow.set_experiment(experiment_name)
        except MlflowException as exc:
            raise ConfigError(f"MLflow store mlflow.tracking_uri={tracking_uri!r} cannot be used: {first_line(exc)}") from exc
        except SQLAlchemyError as exc:  # e.g. a schema left half-built by another tool's interrupted set-up
            raise ConfigError(
                f"MLflow store mlflow.tracking_uri={tracking_uri!r} cannot be used: {first_line(exc)}; if a process "
                "creating it was stopped, move the file away (or delete it if it holds no runs) and run again"
            ) from exc
    return experiment.experiment_id


def flatten_config(cfg: DictConfig | dict, prefix: str = "") -> dict[str, Any]:
    """Flatten a nested config into ``{"clusterer.n_clusters": 10, ...}`` (values resolved)."""
    container = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    flat: dict[str, Any] = {}
    for key, value in container.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten_config(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


# Other distributions that install the same import package (embclust installs xgboost-cpu where
# it has wheels; mlflow-skinny is MLflow without its UI).
_SAME_PACKAGE = {"xgboost": ("xgboost-cpu",), "mlflow": ("mlflow-skinny",)}


def package_versions(packages: tuple[str, ...] = TRACKED_PACKAGES) -> dict[str, str]:
    """Installed version of each package, ``"not installed"`` when absent."""
    versions = {}
    for pkg in packages:
        versions[pkg] = "not installed"
        for dist in (pkg, *_SAME_PACKAGE.get(pkg, ())):
            try:
                versions[pkg] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    return versions


def git_state(path: str | Path = ".", config_dirs: tuple[str | Path, ...] = ()) -> dict[str, str]:
    """Commit hash and dirty flag of the git checkout holding the code at ``path``; empty when not in one.

    The checkout must track the code itself (``path``'s ``__init__.py``): a package installed
    into a folder of another project's checkout is not that project's commit. Dirty: a tracked
    file changed, or a file that git does not ignore is new in ``path`` or in ``config_dirs``
    (a config the run may have composed that the commit lacks).
    """
    path = Path(path).resolve()

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=path, capture_output=True, text=True, check=True, timeout=10).stdout

    try:
        commit, top = git("rev-parse", "HEAD", "--show-toplevel").splitlines()  # a folder's name may hold spaces
        git("ls-files", "--error-unmatch", "--", "__init__.py")
        dirty = git("status", "--porcelain", "--untracked-files=no").strip()
        inside = [str(Path(d).resolve()) for d in (path, *config_dirs) if _is_within(Path(d), Path(top))]
        dirty = dirty or git("status", "--porcelain", "--untracked-files=normal", "--", *inside).strip()
    except (OSError, ValueError, subprocess.SubprocessError):
        return {}
    return {"git_commit": commit, "git_dirty": str(bool(dirty)).lower()}


def _is_within(folder: Path, top: Path) -> bool:
    try:
        return folder.is_dir() and folder.resolve().is_relative_to(top.resolve())
    except OSError:
        return False


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """Hash of embclust's own source files: which code ran, with or without a git checkout."""
    package = Path(__file__).resolve().parents[1]
    h = hashlib.blake2b(digest_size=16)
    for file in sorted(package.rglob("*.py")):
        h.update(file.relative_to(package).as_posix().encode() + b"\0")
        with contextlib.suppress(OSError):
            h.update(file.read_bytes())
    return h.hexdigest()


def environment_tags() -> dict[str, str]:
    """Python's version, the BLAS library numpy and scipy use, and the threads a run may use now.

    The threads matter where a library adds per-thread sums in the order threads finish
    (``clusterer=minibatch_kmeans``, ``reducer=tsne``): their last digits follow the count.
    """
    import platform

    tags = {"version.python": platform.python_version()}
    try:
        from embclust import blocks

        info = blocks.threadpool_controller().info()
        blas = sorted({f"{i.get('internal_api')} {i.get('version')}" for i in info if i.get("user_api") == "blas"})
        tags["blas"] = ", ".join(blas) or "none found"
        tags["threads"] = str(blocks.threads_now())
    except Exception:  # noqa: BLE001 - a record of the machine must not stop a run
        pass
    return tags


def hydra_config_dirs(hydra_cfg=None) -> tuple[str, ...]:
    """The folders Hydra composed this job's config from (``hydra.runtime.config_sources``)."""
    try:
        if hydra_cfg is None:
            from hydra.core.hydra_config import HydraConfig

            if not HydraConfig.initialized():
                return ()
            hydra_cfg = HydraConfig.get()
        sources = hydra_cfg.runtime.config_sources
        return tuple(str(src.path) for src in sources if str(src.get("schema")) == "file" and src.get("path"))
    except Exception:  # noqa: BLE001 - a record of where configs came from must not stop a run
        return ()


def reproducibility_tags(data_fingerprint: str, overrides: list[str], code_dir: str | Path) -> dict[str, str]:
    """Tags that pin a run: data fingerprint, Hydra overrides, git commit, package versions."""
    tags = {
        "data_fingerprint": data_fingerprint,
        "hydra_overrides": " ".join(overrides) if overrides else "(none)",
        # relative data paths are read from here (embclust search reads the run's own file again)
        "working_dir": os.getcwd(),
    }
    tags.update(git_state(code_dir, hydra_config_dirs()))
    tags["code_fingerprint"] = code_fingerprint()
    tags.update(environment_tags())
    tags.update({f"version.{pkg}": ver for pkg, ver in package_versions().items()})
    return tags



# Where `mlflow ui` serves a local (sqlite or file) store by default.
LOCAL_UI_URL = "http://127.0.0.1:5000"


def runs_page_url(tracking_uri: str, experiment_id: str) -> str | None:
    """Address of the experiment's runs table in the MLflow UI, or None when there is no UI.

    A tracking server serves its own UI; a store file or database is shown by
    ``mlflow ui --backend-store-uri <uri>`` at :data:`LOCAL_UI_URL`; Databricks has its own. The runs page is named explicitly because MLflow 3 may open an
    experiment on its GenAI (traces) view.
    """
    uri = str(tracking_uri)
    if uri.lower().startswith(("http://", "https://")):
        base = uri.rstrip("/")
    elif uri.startswith("databricks"):
        return None
    else:
        base = LOCAL_UI_URL
    return f"{base}/#/experiments/{experiment_id}/runs"


def log_artifacts(folder: Path, run_id: str | None = None) -> None:
    """Log every file under ``folder`` as the run's artifacts; a failed write names the artifact.

    MLflow's own error for a full or read-only artifact store names neither the file nor the
    place (``[Errno 28] No space left on device``); this one says which artifact could not be
    written where, and what to do (:class:`~embclust.errors.PathError`). A file cut short in a
    local artifact location (a disk that filled mid-copy) is removed: a truncated report must not
    look like the run's.
    """
    from embclust.errors import ARTIFACT_LOCATION, ARTIFACT_LOCATION_INSTEAD, path_error

    client = mlflow.MlflowClient()
    run_id = run_id or mlflow.active_run().info.run_id
    try:
        client.log_artifacts(run_id, str(folder))
    except OSError as exc:
        artifact_uri = client.get_run(run_id).info.artifact_uri
        # the copy's destination where the error names it, else the first file not copied whole
        where = getattr(exc, "filename2", None) or _first_artifact_not_written(folder, artifact_uri)
        for short in _artifacts_cut_short(folder, artifact_uri):
            with contextlib.suppress(OSError):
                short.unlink()
        raise path_error(exc, where, ARTIFACT_LOCATION, instead=ARTIFACT_LOCATION_INSTEAD) from None


def _local_artifact_root(artifact_uri: str) -> Path | None:
    from urllib.parse import unquote, urlparse

    parsed = urlparse(artifact_uri)
    return Path(unquote(parsed.path)) if parsed.scheme in ("", "file") else None


def _artifacts_cut_short(folder: Path, artifact_uri: str) -> list[Path]:
    """Copies in a local ``artifact_uri`` of files under ``folder`` that are shorter than the file."""
    local = _local_artifact_root(artifact_uri)
    if local is None:
        return []
    short = []
    for source in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        target = local / source.relative_to(folder)
        with contextlib.suppress(OSError):
            if target.is_file() and target.stat().st_size != source.stat().st_size:
                short.append(target)
    return short


def _first_artifact_not_written(folder: Path, artifact_uri: str) -> str:
    """The destination of the first file under ``folder`` missing or short in a local ``artifact_uri``."""
    local = _local_artifact_root(artifact_uri)
    for source in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        relative = source.relative_to(folder)
        if local is None:
            return f"{artifact_uri}/{relative.as_posix()}"
        target = local / relative
        try:
            if target.stat().st_size == source.stat().st_size:
                continue
        except OSError:
            pass
        return str(target)
    return artifact_uri
