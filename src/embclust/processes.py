"""Which process runs a run, a sweep or holds a lock, and whether that process is alive or stopped.

A process is named by a token ``host:pid:start``. ``host`` is the host name plus, where
``/proc`` has it, the pid namespace (``name/4026531836``): containers that share a host name
(``--network=host``) and a store or cache see each other's pids as absent, and a token from
another namespace or host is *unknown*, never *dead*. ``start`` is the process's start time in
clock ticks since boot (``/proc/<pid>/stat``), so a pid reused by another process does not pass
for the owner. Where ``/proc`` is missing the token has no start time and a pid that exists
counts as alive.

Uses: a sweep run again resumes its parent unless the parent's owner is alive
(:mod:`embclust.sweep.callback`); a run left RUNNING by a process that is gone (``kill -9``, the
OOM killer) is closed by the next run (:func:`embclust.tracking.store.close_dead_runs`); a lock
held by a stopped process is not waited for (:mod:`embclust.locks`).
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time


def proc_stat_fields(pid: int) -> list[str] | None:
    """Fields 3 on (state, ppid, ...) of ``/proc/<pid>/stat``, None where it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read().decode("ascii", "replace")
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after its end.
    return stat[stat.rfind(")") + 2 :].split()


def _start_ticks(pid: int) -> str | None:
    """The start time of process ``pid`` (field 22 of ``/proc/<pid>/stat``), None if unknown."""
    fields = proc_stat_fields(pid)
    return fields[19] if fields is not None and len(fields) > 19 else None


def host_id() -> str:
    """This host's name, with the pid namespace where ``/proc`` tells it."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")  # "pid:[4026531836]"
    except OSError:
        return socket.gethostname()
    return f"{socket.gethostname()}/{namespace.strip('pid:[]')}"


def owner_token(pid: int | None = None) -> str:
    """``host:pid:start`` for this process (or ``pid`` on this host)."""
    pid = os.getpid() if pid is None else pid
    return f"{host_id()}:{pid}:{_start_ticks(pid) or ''}"


def _local_pid(token: str | None) -> tuple[int, str] | None:
    """``(pid, start)`` of a token naming a process of this host and pid namespace, else None."""
    if not token or token.count(":") < 2:
        return None
    host, pid_text, start = token.rsplit(":", 2)
    # a token without a namespace (written by an earlier release) names this host's processes
    if host not in (host_id(), socket.gethostname()) or not pid_text.isdigit():
        return None
    return int(pid_text), start


def owner_is_alive(token: str | None) -> bool | None:
    """True if the process named by ``token`` is running, False if it is not, None if unknown.

    Unknown: no token (a run from an earlier release or another tool), or one from another host
    or pid namespace.
    """
    local = _local_pid(token)
    if local is None:
        return None
    pid, start = local
    if pid == os.getpid():
        return True
    now = _start_ticks(pid)
    if now is not None or start:
        return now is not None and (not start or now == start)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stopped_pid(token: str | None) -> int | None:
    """The pid named by ``token`` if it is a stopped process (``kill -STOP``, Ctrl-Z), else None."""
    local = _local_pid(token)
    if local is None:
        return None
    pid, start = local
    fields = proc_stat_fields(pid)
    if fields is None or (start and fields[19:20] != [start]):
        return None  # gone, or the pid now belongs to another process
    return pid if fields[0] in ("T", "t") else None


_watching_parent = False
# Set when the sweep process that started this worker is gone (its SIGTERM comes from here).
parent_gone = False
# Seconds between looks at the parent process, and the grace after SIGTERM before a hard exit.
PARENT_POLL_S = 1.0
STOP_GRACE_S = 30.0


def exit_with_parent(parent_pid: int) -> None:
    """In a worker process started by ``parent_pid`` (a joblib launcher's sweep): stop when it is gone.

    A sweep killed with ``kill -9`` (or by the out-of-memory killer) left its workers running,
    reparented to init, for good. A daemon thread looks at the parent once a second; once this
    process has another parent it sends itself SIGTERM (a cell in progress ends KILLED, as any
    stopped run), then exits for good after a grace period. Workers of other hosts (another parent)
    are left alone.
    """
    global _watching_parent
    if _watching_parent or os.getppid() != parent_pid or parent_pid == os.getpid():
        return
    _watching_parent = True

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL_S)
        global parent_gone
        parent_gone = True  # the stop's reason, for the run it ends
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(STOP_GRACE_S)
        os._exit(1)

    threading.Thread(target=watch, name="embclust-exit-with-sweep", daemon=True).start()
