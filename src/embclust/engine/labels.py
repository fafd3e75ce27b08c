"""The labels of an ``engine=ray`` run, written by the workers of its last pass over the rows.

The pass that gives every row its final cluster also encodes, for each group of rows, one parquet
file ``part-<first row>.parquet`` (id, cluster, distance to the cluster's centre) of the run's
``labels/`` artifact folder. Where the workers are on this machine (a one-node Ray cluster, the
local Ray) and the artifact store is a folder here, each task writes its part straight into the
run's artifact folder, so no row's label goes through the driver. Anywhere else (workers on other
machines, whose disks the driver does not see; an object store or tracking server the workers
may hold no credentials for) each task sends its compressed part back and the driver logs the
parts through MLflow: they cross the network once, at about 6 bytes a row.
"""

from __future__ import annotations

import io
import os
import urllib.parse
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from embclust.engine.rows import RowSource

FOLDER = "labels"


def writable_folder(artifact_uri: str, workers_here: bool) -> tuple[str | None, str]:
    """The ``labels/`` folder under ``artifact_uri`` that the workers write directly, or None and why not.

    ``workers_here``: every Ray node is this machine, so a folder the driver sees is the one the
    workers write."""
    parsed = urllib.parse.urlparse(artifact_uri)
    if parsed.scheme not in ("", "file"):
        return None, (f"written by the driver from the parts the Ray workers sent back (the artifact store "
                      f"{parsed.scheme}:/ is written through MLflow)")
    if not workers_here:
        return None, ("written by the driver from the parts the Ray workers sent back (workers on other "
                      "machines may not see the run's artifact folder)")
    path = urllib.parse.unquote(parsed.path) if parsed.scheme == "file" else artifact_uri
    return str(Path(path).resolve() / FOLDER), "written by the Ray workers into the run's artifact folder"


@dataclass
class LabelsSink:
    """Writes one part of the labels dataset per group of rows, where the group was assigned."""

    ids: RowSource  # reads the ids of a range of rows where it runs
    folder: str | None  # written directly by the workers; None: parts go back to the driver
    how: str  # who wrote the parts, and why
    parts: list = field(default_factory=list)  # on the driver: (name, bytes or None, size) per group

    def write(self, start: int, labels: np.ndarray, distances: np.ndarray) -> tuple[str, bytes | None, int]:
        """Part ``part-<start>.parquet``: written into the folder, or its bytes returned; and its size."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        name = f"part-{int(start):012d}.parquet"
        table = pa.table({"id": self.ids.read_ids(start, start + labels.size), "cluster": labels, "distance": distances})
        if self.folder is None:
            buffer = io.BytesIO()
            pq.write_table(table, buffer, compression="zstd")
            return name, buffer.getvalue(), buffer.tell()
        # Written under a temporary name and renamed, so a retried task (Ray re-runs a task whose
        # worker died) never leaves a part half-written under its final name.
        os.makedirs(self.folder, exist_ok=True)
        temporary = os.path.join(self.folder, f".{name}.{uuid.uuid4().hex}.tmp")
        try:
            pq.write_table(table, temporary, compression="zstd")
            size = os.path.getsize(temporary)
            os.replace(temporary, os.path.join(self.folder, name))
        finally:
            if os.path.exists(temporary):
                os.remove(temporary)
        return name, None, size

    def collect(self, parts: list) -> None:
        """On the driver: what each group's task wrote (or sent back), in row order; the temporary
        files of tasks whose worker was killed mid-write are removed."""
        self.parts = list(parts)
        if self.folder is not None:
            for leftover in Path(self.folder).glob(".part-*.tmp"):
                leftover.unlink(missing_ok=True)

    def save_returned(self, workdir: Path) -> None:
        """Write the parts the workers sent back into ``workdir / labels`` (logged with the run's artifacts)."""
        for name, payload, _ in self.parts:
            if payload is not None:
                (workdir / FOLDER).mkdir(parents=True, exist_ok=True)
                (workdir / FOLDER / name).write_bytes(payload)

    def size(self) -> int:
        """Bytes of all parts, as their tasks measured them."""
        return sum(part[2] for part in self.parts)
