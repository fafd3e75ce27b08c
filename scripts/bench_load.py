"""Load + validate time and peak memory of a 42,000 x 768 float32 file as .npy and .parquet.

    python scripts/bench_load.py [--rows 42000] [--dim 768]

Each format is loaded in a fresh subprocess; its peak RSS is measured from after the imports
(Linux: /proc/self/clear_refs resets the high-water mark).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, sys, time
import numpy as np
from embclust.data import validate_dataset
from embclust.data.loaders import load_npy, load_table

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) / 1024

path = sys.argv[1]
open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) after imports
base = status("VmRSS")
t = time.perf_counter()
ds = load_npy(path) if path.endswith(".npy") else load_table(path, id_column="article_id", feature_prefix="bert_")
ds = validate_dataset(ds)
fp = ds.fingerprint
elapsed = time.perf_counter() - t
print(json.dumps({"seconds": elapsed, "peak_rss_mb": status("VmHWM"), "import_rss_mb": base, "shape": list(ds.X.shape)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=42_000)
    parser.add_argument("--dim", type=int, default=768)
    args = parser.parse_args()

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    X = rng.standard_normal((args.rows, args.dim), dtype=np.float32)
    size_mb = X.nbytes / 2**20
    with tempfile.TemporaryDirectory() as tmp:
        npy, parquet = Path(tmp) / "emb.npy", Path(tmp) / "emb.parquet"
        np.save(npy, X)
        table = pa.table({"article_id": np.arange(args.rows), **{f"bert_{j}": X[:, j] for j in range(args.dim)}})
        pq.write_table(table, parquet)
        del table
        del X
        print(f"matrix: {args.rows} x {args.dim} float32 = {size_mb:.0f} MiB")
        print(f"{'format':<8} {'load+validate s':>16} {'peak RSS MiB':>13} {'RSS after imports':>18} {'peak-imports / data':>20}")
        for path in (npy, parquet):
            out = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            ratio = (r["peak_rss_mb"] - r["import_rss_mb"]) / size_mb
            print(f"{path.suffix[1:]:<8} {r['seconds']:>16.2f} {r['peak_rss_mb']:>13.0f} {r['import_rss_mb']:>18.0f} {ratio:>19.2f}x")


if __name__ == "__main__":
    main()
