"""Exclusive file locks that tell who holds them and never wait on a stopped process.

``flock`` is released when its holder exits or is killed, so a lock is never left behind by a
dead process. A *stopped* holder (``kill -STOP``, Ctrl-Z, a debugger) keeps it, and a plain
``flock`` would make every other process wait for it for ever, silently. Here the holder writes
its owner token (``host:pid:start``, see :mod:`embclust.processes`) into the lock file; a
waiter says on stderr whom it waits for, and gives up at once when that process is stopped
(:class:`HeldByStoppedProcess`), so the caller can go on without the lock (compute privately)
or fail with a line that says what to do.
"""

from __future__ import annotations

import fcntl
import logging
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from embclust.processes import owner_token, stopped_pid

log = logging.getLogger(__name__)

# How often a waiter looks again, when it first says it waits (short waits, as between the cells
# of a parallel sweep taking turns at the store, are not worth a line), and how often after that.
_POLL_S = 0.1
_FIRST_NOTE_S = 2.0
_NOTE_EVERY_S = 30.0


def holder_of(lock_path: Path) -> str:
    """The owner token written in ``lock_path`` by its holder ('' if none or unreadable)."""
    try:
        return Path(lock_path).read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return ""


class HeldByStoppedProcess(Exception):
    """The lock is held by a process that is stopped; ``pid`` names it."""

    def __init__(self, what: str, pid: int):
        super().__init__(f"{what} is held by process {pid}, which is stopped (kill -STOP or Ctrl-Z)")
        self.pid = pid


@contextmanager
def file_lock(lock_path: Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path``, waiting while another running process holds it.

    Raises :class:`HeldByStoppedProcess` instead of waiting when the holder is stopped. ``what``
    names the locked thing in the messages.
    """
    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+", encoding="ascii") as fh:  # "a+": opening must not erase the holder's token
        waited_since = next_note = None
        noted = False
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                pass
            token = holder_of(lock_path)
            pid = stopped_pid(token)
            if pid is not None:
                raise HeldByStoppedProcess(what, pid)
            now = time.monotonic()
            if waited_since is None:
                waited_since, next_note = now, now + _FIRST_NOTE_S
            elif now >= next_note:
                next_note = now + _NOTE_EVERY_S
                if noted:
                    log.info("still waiting for %s after %.0f s (held by %s)", what, now - waited_since, token or "unknown")
                else:
                    log.info("waiting for %s, held by another process (%s)", what, token or "unknown")
                noted = True
            time.sleep(_POLL_S)
        try:
            fh.seek(0)
            fh.truncate()
            fh.write(owner_token())
            fh.flush()
            yield
        finally:
            fh.truncate(0)
            fh.flush()
            fcntl.flock(fh, fcntl.LOCK_UN)
