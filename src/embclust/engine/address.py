"""Which Ray cluster to join, checked before ``ray.init`` (which waits minutes on a dead one).

Shared by ``engine=ray`` and the ``hydra/launcher=ray`` plugin; imports no Ray.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)


def answers(address: str, timeout: float = 3.0) -> bool:
    """Whether something listens at a ``host:port`` Ray address (other forms are not probed)."""
    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return True
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except OSError:
        return False


def without_explicit_address() -> str | None:
    """The address for ``ray.init`` when none is given: None lets Ray use $RAY_ADDRESS, else the
    last cluster ``ray start`` wrote to <tmp>/ray/ray_current_cluster, else start a local one; a
    stale file (its cluster killed without ``ray stop``) gives "local" instead, with a warning."""
    current = Path(os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()) / "ray" / "ray_current_cluster"
    try:
        last = current.read_text().strip()
    except OSError:
        return None
    if last and not answers(last):
        log.warning("Ray cluster %s (from %s) does not answer; starting a local Ray instead", last, current)
        return "local"
    return None
