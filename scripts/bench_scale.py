"""Scale benchmark: millions of embeddings on one machine, with each stage's time and peak memory.

    python scripts/bench_scale.py                          # 10,000,000 x 384, .npy and parquet folder
    python scripts/bench_scale.py --n 1000000 --formats npy --reducer umap
    python scripts/bench_scale.py --n 4000000 --no-sweep --data-dir /big/disk/embeddings
    python scripts/bench_scale.py --formats npy --no-sweep --engine local,ray   # engine=ray beside local

Generates realistic embeddings (the sweep benchmark's cluster model: anisotropic clusters of
Dirichlet-drawn sizes in a 32-d latent space, a shared offset direction, isotropic noise, unit
rows) block by block straight to disk, as one ``.npy`` and as a folder of ``--files`` parquet
files (one list column ``vector``), kept in ``--data-dir`` for the next call. Then, for each
format, runs

    python run.py dataset=npy|parquet ... clusterer.n_clusters=K reducer=pca      (a single run)
    python run.py -m ... clusterer.n_clusters=50,100,200                          (a 3-cell sweep)

in a subprocess with a temporary MLflow store and cache, samples the process tree's memory every
0.2 s (peak RSS, and peak anonymous memory ``RssAnon``: what the data path allocates, not the
file pages the kernel may drop) and prints the wall time, each stage's time and the peak
anonymous memory seen during it, the labels file's row count and the run's scores.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
# Rows generated per block: the data depend on it (the order of random draws), so it is fixed.
GENERATE_BLOCK = 50_000
STAGE_LINE = re.compile(r"\[(\d+)/(\d+)\] (\w+)")


# ------------------------------------------------------------------------------------- data
def generate(n: int, d: int, folder: Path, formats: list[str], n_files: int, seed: int = 42) -> dict[str, Path]:
    """Write ``n`` x ``d`` embedding-like rows (and true labels) block by block; return the paths."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    stem = f"emb_{n}x{d}_s{seed}"
    paths = {"npy": folder / f"{stem}.npy", "labels": folder / f"{stem}_labels.npy", "parquet": folder / f"{stem}_parquet"}
    wanted = [f for f in formats if not (paths[f].exists() and (paths[f] / "_done" if f == "parquet" else paths[f]).exists())]
    if not wanted and paths["labels"].exists():
        print(f"data: reusing {folder}", file=sys.stderr)
        return paths
    rng = np.random.default_rng(seed)
    n_clusters, dim = 40, min(32, d)
    probs = rng.dirichlet(np.full(n_clusters, 2.5))
    centers = rng.normal(scale=0.28, size=(n_clusters, dim))
    shapes = np.empty((n_clusters, dim, dim))
    for c in range(n_clusters):
        rotation, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
        shapes[c] = rotation * np.exp(rng.normal(scale=0.6, size=dim))
    basis, _ = np.linalg.qr(rng.normal(size=(d, dim)))
    direction = rng.normal(size=d)
    direction /= np.linalg.norm(direction)

    X = np.lib.format.open_memmap(paths["npy"], mode="w+", dtype=np.float32, shape=(n, d)) if "npy" in formats else None
    labels = np.lib.format.open_memmap(paths["labels"], mode="w+", dtype=np.int64, shape=(n,))
    writers, per_file = [], -(-n // n_files)
    if "parquet" in formats:
        paths["parquet"].mkdir(exist_ok=True)
        schema = pa.schema([("id", pa.int64()), ("label", pa.int64()), ("vector", pa.list_(pa.float32(), d))])
    start_time = time.perf_counter()
    for start in range(0, n, GENERATE_BLOCK):
        size = min(GENERATE_BLOCK, n - start)
        lab = rng.choice(n_clusters, size=size, p=probs)
        z = centers[lab] + np.einsum("nj,nij->ni", rng.normal(size=(size, dim)), shapes[lab]) / np.sqrt(dim)
        block = z @ basis.T + 1.5 * direction
        block += rng.normal(scale=1.0 / np.sqrt(d), size=block.shape)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        block = block.astype(np.float32)
        labels[start : start + size] = lab
        if X is not None:
            X[start : start + size] = block
        if "parquet" in formats:
            file_index = start // per_file
            while len(writers) <= file_index:
                if writers:
                    writers[-1].close()
                writers.append(pq.ParquetWriter(paths["parquet"] / f"part-{len(writers):03d}.parquet", schema))
            vectors = pa.FixedSizeListArray.from_arrays(pa.array(block.ravel()), d)
            writers[file_index].write_table(
                pa.table({"id": np.arange(start, start + size), "label": lab.astype(np.int64), "vector": vectors}, schema=schema)
            )
        if (start // GENERATE_BLOCK) % 20 == 0:
            print(f"data: {start + size:,} / {n:,} rows ({time.perf_counter() - start_time:.0f} s)", file=sys.stderr)
    if writers:
        writers[-1].close()
        (paths["parquet"] / "_done").touch()
    if X is not None:
        X.flush()
    labels.flush()
    del X, labels
    return paths


# ----------------------------------------------------------------------------------- memory
def _tree_memory_kb(root: int) -> tuple[int, int]:
    """Summed VmRSS and RssAnon (kB) of ``root`` and its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    rss = anon = 0
    stack = [root]
    while stack:
        pid = stack.pop()
        stack.extend(children.get(pid, []))
        try:
            with open(f"/proc/{pid}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1])
                    elif line.startswith("RssAnon:"):
                        anon += int(line.split()[1])
        except OSError:
            continue
    return rss, anon


def run_sampled(cmd: list[str], env: dict, cwd: Path, log_path: Path) -> dict:
    """Run ``cmd``: wall seconds, peak RSS and RssAnon (MB), and per stage its peak RssAnon."""
    samples: list[tuple[float, int, int]] = []
    stage_starts: list[tuple[float, str]] = []
    start = time.perf_counter()
    with open(log_path, "w") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.PIPE, text=True)
        done = threading.Event()

        def poll() -> None:
            while not done.is_set():
                rss, anon = _tree_memory_kb(proc.pid)
                samples.append((time.perf_counter() - start, rss, anon))
                done.wait(0.2)

        def read_stderr() -> None:
            for line in proc.stderr:
                out.write(line)
                out.flush()
                found = STAGE_LINE.search(line)
                if found:
                    prefix = line[: found.start()].rsplit("]", 1)[-1].strip()
                    stage_starts.append((time.perf_counter() - start, f"{prefix} {found[3]}".strip()))
                if "rows" in line and "/" in line and ("done" in line or "pass" in line):
                    sys.stderr.write("    " + line.split(" - ", 1)[-1])

        threads = [threading.Thread(target=poll, daemon=True), threading.Thread(target=read_stderr, daemon=True)]
        for t in threads:
            t.start()
        rc = proc.wait()
        wall = time.perf_counter() - start
        done.set()
        for t in threads:
            t.join()
    per_stage: list[tuple[str, float, float]] = []
    bounds = [*stage_starts, (wall, "")]
    for (t0, name), (t1, _) in zip(bounds[:-1], bounds[1:]):
        inside = [s[2] for s in samples if t0 <= s[0] <= t1] or [0]
        per_stage.append((name, t1 - t0, max(inside) / 1024))
    return {
        "rc": rc,
        "wall_s": wall,
        "peak_rss_mb": max((s[1] for s in samples), default=0) / 1024,
        "peak_anon_mb": max((s[2] for s in samples), default=0) / 1024,
        "stages": per_stage,
    }


# -------------------------------------------------------------------------------------- runs
def dataset_overrides(fmt: str, paths: dict[str, Path]) -> list[str]:
    if fmt == "npy":
        return ["dataset=npy", f"dataset.path={paths['npy']}", f"dataset.labels_path={paths['labels']}"]
    return ["dataset=parquet", f"dataset.path={paths['parquet']}", "dataset.vector_column=vector",
            "dataset.id_column=id", "dataset.label_column=label"]


def report(title: str, result: dict, store: Path, data_mb: float) -> None:
    import mlflow
    import pyarrow.parquet as pq

    status = "finished" if result["rc"] == 0 else f"FAILED (exit {result['rc']})"
    print(f"\n## {title}: {status}")
    print(f"wall {result['wall_s']:.1f} s; peak RSS {result['peak_rss_mb']:.0f} MB ({result['peak_rss_mb'] / data_mb:.2f}x data); "
          f"peak RssAnon {result['peak_anon_mb']:.0f} MB ({result['peak_anon_mb'] / data_mb:.2f}x data)")
    print("| stage | s | peak RssAnon MB |\n| --- | ---: | ---: |")
    for name, seconds, anon in result["stages"]:
        print(f"| {name} | {seconds:.1f} | {anon:.0f} |")
    mlflow.set_tracking_uri(f"sqlite:///{store / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["embclust"], output_format="list")
    for run in sorted(runs, key=lambda r: r.info.start_time):
        if run.data.tags.get("sweep_role") == "parent":
            continue
        m, tags = run.data.metrics, run.data.tags
        rows = ""
        try:
            path = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="labels.parquet", dst_path=str(store / "dl"))
            rows = f"labels.parquet rows {pq.ParquetFile(path).metadata.num_rows:,}; "
            Path(path).unlink()
        except Exception:  # noqa: BLE001 - a failed run has none
            pass
        print(f"run {run.data.tags.get('mlflow.runName')} [{run.info.status}]: {rows}k={m.get('n_clusters', float('nan')):.0f} "
              f"inertia={m.get('inertia', float('nan')):.6g} silhouette={m.get('silhouette', float('nan')):.4f} "
              f"CH={m.get('calinski_harabasz', float('nan')):.6g} DB={m.get('davies_bouldin', float('nan')):.6f} "
              f"ARI={m.get('ari', float('nan')):.3f} impl={tags.get('cluster_implementation')} "
              f"sample={tags.get('kmeans_sample_size')}" + (f"\n    error: {tags['error'][:300]}" if "error" in tags else ""))
        if "labels_dataset" in tags:  # engine=ray: the workers' labels/ parts
            print(f"    {tags['labels_dataset']}; engine passes {tags.get('engine_passes')} "
                  f"({m.get('time/engine_passes_s', float('nan')):.1f} s); rows the driver read itself: "
                  f"{m.get('engine/driver_rows_read', float('nan')):.0f}; fingerprint {tags.get('data_fingerprint')}")
        steps = {k[len("time/analysis_"):-2]: v for k, v in m.items() if k.startswith("time/analysis_")}
        if steps:
            print("    analyses (s): " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(steps.items(), key=lambda kv: -kv[1])))


def quality(x_path: Path, store: Path, k: int, n_init: int) -> None:
    """The streamed run against the in-memory way: scikit-learn's KMeans on all rows, and
    scikit-learn's CH / DB on the run's own labels."""
    import mlflow
    import pyarrow.parquet as pq
    from sklearn.cluster import KMeans
    from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score
    from sklearn.preprocessing import normalize

    mlflow.set_tracking_uri(f"sqlite:///{store / 'mlflow.db'}")
    run = mlflow.search_runs(experiment_names=["embclust"], output_format="list")[0]
    labels = pq.read_table(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="labels.parquet",
                                                               dst_path=str(store / "q")), columns=["cluster"])["cluster"].to_numpy()
    X = normalize(np.load(x_path))  # in memory, as a notebook would
    m = run.data.metrics
    ch, db = calinski_harabasz_score(X, labels), davies_bouldin_score(X, labels)
    print(f"\n## quality at {X.shape[0]:,} rows")
    print(f"CH on the run's labels: logged {m['calinski_harabasz']:.10g}, scikit-learn {ch:.10g}, "
          f"relative difference {abs(m['calinski_harabasz'] - ch) / ch:.2e}")
    print(f"DB on the run's labels: logged {m['davies_bouldin']:.10g}, scikit-learn {db:.10g}, "
          f"relative difference {abs(m['davies_bouldin'] - db) / db:.2e}")
    start = time.perf_counter()
    fitted = KMeans(k, n_init=n_init, random_state=42).fit(X)
    seconds = time.perf_counter() - start
    print(f"inertia: streamed run {m['inertia']:.8g}; scikit-learn KMeans(n_init={n_init}) on all rows in memory "
          f"{fitted.inertia_:.8g} ({seconds:.0f} s, {fitted.n_iter_} iterations): streamed "
          f"{(m['inertia'] / fitted.inertia_ - 1) * 100:+.3f}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000_000)
    parser.add_argument("--d", type=int, default=384)
    parser.add_argument("--k", type=int, default=100, help="clusters of the single run")
    parser.add_argument("--sweep-k", default="50,100,200", help="the sweep's k grid ('' for no sweep)")
    parser.add_argument("--no-sweep", action="store_true")
    parser.add_argument("--no-single", action="store_true")
    parser.add_argument("--formats", default="npy,parquet", help="npy, parquet or both")
    parser.add_argument("--files", type=int, default=20, help="parquet files in the folder")
    parser.add_argument("--reducer", default="pca", help="the 2-D map: pca, umap, none")
    parser.add_argument("--map-points", type=int, default=50_000, help="reducer.max_points")
    parser.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "embclust-bench-scale",
                        help="where the generated data is kept between calls")
    parser.add_argument("--quality", type=int, default=0, metavar="N_INIT",
                        help="after the .npy single run: fit scikit-learn KMeans(n_init=N_INIT) on all rows in memory "
                             "and compare inertia; recompute CH / DB with scikit-learn on the run's labels")
    parser.add_argument("--engine", default="local",
                        help="engine of the single runs: local, ray (a local Ray started by the run, on this "
                             "machine's cores) or local,ray side by side")
    parser.add_argument("overrides", nargs="*", help="more Hydra overrides for every run")
    args = parser.parse_args()
    formats = [f for f in args.formats.split(",") if f]

    paths = generate(args.n, args.d, args.data_dir, formats, args.files)
    data_mb = args.n * args.d * 4 / 2**20
    print(f"# bench_scale: {args.n:,} x {args.d} float32 ({data_mb:,.0f} MB), {os.cpu_count()} cores, "
          f"{os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.0f} GB RAM")
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "EMBCLUST_CACHE_DIR")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "src"), env.get("PYTHONPATH", "")) if p)
    env["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    jobs = []
    for fmt in formats:
        common = [*dataset_overrides(fmt, paths), f"reducer={args.reducer}", *args.overrides]
        if args.reducer != "none":
            common.append(f"reducer.max_points={args.map_points}")
        if not args.no_single:
            for engine in [e for e in args.engine.split(",") if e]:
                jobs.append((f"{fmt}: single run, k={args.k}" + ("" if engine == "local" and args.engine == "local" else f", engine={engine}"),
                             [f"clusterer.n_clusters={args.k}", f"engine={engine}", *common]))
        if args.sweep_k and not args.no_sweep:
            jobs.append((f"{fmt}: sweep k={args.sweep_k}", ["-m", f"clusterer.n_clusters={args.sweep_k}", *common]))
    for title, overrides in jobs:
        with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp_name:
            tmp = Path(tmp_name)
            cmd = [sys.executable, str(REPO / "run.py"), *overrides, f"mlflow.tracking_uri=sqlite:///{tmp / 'mlflow.db'}",
                   f"hydra.run.dir={tmp / 'outputs'}", f"hydra.sweep.dir={tmp / 'multirun'}"]
            run_env = {**env, "EMBCLUST_CACHE_DIR": str(tmp / "cache"), "TMPDIR": str(tmp)}
            run_env.pop("RAY_ADDRESS", None)  # engine=ray: a local Ray, its processes in the sampled tree
            print(f"\n$ python run.py {' '.join(overrides)}", flush=True)
            result = run_sampled(cmd, run_env, tmp, tmp / "run.log")
            if result["rc"] != 0:
                sys.stderr.write("".join((tmp / "run.log").read_text(errors="replace").splitlines(keepends=True)[-15:]))
            report(title, result, tmp, data_mb)
            if args.quality and title.startswith("npy: single") and result["rc"] == 0:
                quality(paths["npy"], tmp, args.k, args.quality)
            sys.stdout.flush()


if __name__ == "__main__":
    main()
