"""The labels of an ``engine=ray`` run, written by the workers of its last pass over the rows.

The pass that gives every row its final cluster also writes, for each group of rows, one parquet
file ``part-<first row>.parquet`` (id, cluster, distance to the cluster's centre) into the run's
``labels/`` artifact folder: straight there where the workers can write the artifact store (a
local or shared folder, ``s3://``, ``gs://``, ``hdfs://``: any filesystem pyarrow opens), so no
row's label goes through the driver to be stored. Where they cannot (a tracking server that
proxies its artifacts, ``mlflow-artifacts:/``), each task sends its encoded part back instead
and the driver logs the parts, which then cross the network once, compressed.
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
# Filesystems pyarrow opens by URI that a Ray worker on another machine can write as well.
_REMOTE_SCHEMES = ("s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss", "az")


def writable_folder(artifact_uri: str) -> tuple[str | None, str]:
    """The ``labels/`` folder under ``artifact_uri`` that workers write directly, or None and why not."""
    parsed = urllib.parse.urlparse(artifact_uri)
    if parsed.scheme in ("", "file") or (len(parsed.scheme) == 1 and os.name == "nt"):
        path = urllib.parse.unquote(parsed.path) if parsed.scheme == "file" else artifact_uri
        return str(Path(path).resolve() / FOLDER), "written by the Ray workers into the run's artifact folder"
    if parsed.scheme in _REMOTE_SCHEMES:
        try:
            import pyarrow.fs

            pyarrow.fs.FileSystem.from_uri(artifact_uri)
        except Exception as exc:  # noqa: BLE001 - pyarrow built without this filesystem, or no credentials
            return None, f"the artifact store {artifact_uri} cannot be opened here by pyarrow ({exc})"
        return artifact_uri.rstrip("/") + "/" + FOLDER, "written by the Ray workers into the run's artifact store"
    return None, f"the artifact store {parsed.scheme}:/ is not a filesystem the Ray workers can write"


@dataclass
class LabelsSink:
    """Writes one part of the labels dataset per group of rows, where the group was assigned."""

    ids: RowSource  # reads the ids of a range of rows where it runs
    folder: str | None  # written directly by the workers; None: parts go back to the driver
    how: str  # who wrote the parts, and why
    parts: list = field(default_factory=list)  # on the driver: (name, bytes or None) per group

    def write(self, start: int, labels: np.ndarray, distances: np.ndarray) -> tuple[str, bytes | None]:
        """Part ``part-<start>.parquet``: written into the folder, or its bytes returned."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        name = f"part-{int(start):012d}.parquet"
        table = pa.table({"id": self.ids.read_ids(start, start + labels.size), "cluster": labels, "distance": distances})
        if self.folder is None:
            buffer = io.BytesIO()
            pq.write_table(table, buffer, compression="zstd")
            return name, buffer.getvalue()
        if "://" in self.folder:  # an object store: a part appears whole when its upload completes
            import pyarrow.fs

            fs, root = pyarrow.fs.FileSystem.from_uri(self.folder)
            pq.write_table(table, f"{root}/{name}", filesystem=fs, compression="zstd")
            return name, None
        # A folder: written under a temporary name and renamed, so a retried task (Ray re-runs a
        # task whose worker died) never leaves a part half-written under its final name.
        os.makedirs(self.folder, exist_ok=True)
        temporary = os.path.join(self.folder, f".{name}.{uuid.uuid4().hex}.tmp")
        try:
            pq.write_table(table, temporary, compression="zstd")
            os.replace(temporary, os.path.join(self.folder, name))
        finally:
            if os.path.exists(temporary):
                os.remove(temporary)
        return name, None

    def collect(self, parts: list) -> None:
        """On the driver: what each group's task wrote (or sent back), in row order."""
        self.parts = list(parts)

    def save_returned(self, workdir: Path) -> int:
        """Write the parts the workers sent back into ``workdir / labels``; their total size in bytes."""
        folder = workdir / FOLDER
        total = 0
        for name, payload in self.parts:
            if payload is None:
                continue
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(payload)
            total += len(payload)
        return total

    def written_bytes(self) -> int:
        """Size of the parts the workers wrote themselves (0 where they sent them back)."""
        if self.folder is None:
            return 0
        if "://" in self.folder:
            import pyarrow.fs

            fs, root = pyarrow.fs.FileSystem.from_uri(self.folder)
            return sum(info.size or 0 for info in fs.get_file_info(pyarrow.fs.FileSelector(root)))
        return sum(p.stat().st_size for p in Path(self.folder).glob("part-*.parquet"))
