"""Which process runs a sweep's parent run, and whether that process is still alive.

A sweep that is run again resumes its parent run (see :mod:`embclust.sweep.callback`). That is
right after a sweep was interrupted (its parent is left RUNNING by ``kill -9``, or ended
KILLED), and wrong while the first sweep is still going: two processes would run the same
cells under one parent, and the second would close the first's running cells as orphans. The
parent therefore carries an owner tag, ``host:pid:start``; a RUNNING parent whose owner is alive
is left alone and the new sweep opens a parent of its own.

``start`` is the process's start time in clock ticks since boot (``/proc/<pid>/stat``), so a
pid reused by another process does not pass for the owner. Where ``/proc`` is missing the
token has no start time and a pid that exists counts as alive.
"""

from __future__ import annotations

import os
import socket

OWNER_TAG = "sweep.owner"


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


def owner_token(pid: int | None = None) -> str:
    """``host:pid:start`` for this process (or ``pid`` on this host)."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{_start_ticks(pid) or ''}"


def owner_is_alive(token: str | None) -> bool | None:
    """True if the process named by ``token`` is running, False if it is not, None if unknown.

    Unknown: no token (a parent from an earlier release) or one from another host.
    """
    if not token or token.count(":") < 2:
        return None
    host, pid_text, start = token.rsplit(":", 2)
    if host != socket.gethostname() or not pid_text.isdigit():
        return None
    pid = int(pid_text)
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
