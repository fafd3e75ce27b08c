"""Time the benchmark sweep the notebook way and the embclust way, and compare their answers.

    python scripts/bench_sweep.py            # n = 42,000 x 768, 40 clusters (about 10 minutes on 2 cores)
    python scripts/bench_sweep.py --small    # n = 10,000 x 384 (2 to 3 minutes on 2 cores)

Synthetic embeddings (``embclust.data.make_synthetic``: seeded, L2-normalised) are saved as
``.npy`` in a temporary folder, then three runs are timed one after the other, each in its own
subprocess so its peak memory can be measured:

(a) the notebook way: for every cell of PCA {5, 10, 20, 50, 100} x k {10, 20, 30, 40, 50} a
    fresh ``Pipeline(Normalizer, PCA, KMeans(n_init=10))``, silhouette on all points, CH and DB
    with scikit-learn;
(b) ``python run.py -m +sweep=bench_grid dataset=npy reducer=none`` (basic launcher, temporary
    MLflow store and cache);
(c) the same with ``hydra/launcher=joblib``.

Peak RSS is the largest sum of resident memory over the subprocess and all its descendants
(joblib workers included), polled from /proc every 50 ms (Linux). Per cell the script prints
the metric differences between (a) and (b), the ARI between their labels (from each child run's
``labels.parquet``), and CH / DB recomputed with scikit-learn on (b)'s own labels and matrix.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PCA_GRID = (5, 10, 20, 50, 100)
K_GRID = (10, 20, 30, 40, 50)


# --------------------------------------------------------------------------- notebook way (a)
def notebook_sweep(x_path: str, out_dir: str, seed: int) -> None:
    """The seed notebooks' loop: refit everything per cell, score with scikit-learn on all points."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score, silhouette_score
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import Normalizer

    X = np.load(x_path)
    results = []
    for p in PCA_GRID:
        for k in K_GRID:
            t = time.perf_counter()
            pipe = Pipeline(
                [
                    ("normalize", Normalizer()),
                    ("pca", PCA(n_components=p, random_state=seed)),
                    ("kmeans", KMeans(n_clusters=k, n_init=10, random_state=seed)),
                ]
            )
            # Pipeline.fit_predict, with the KMeans fit timed on its own: (b) has to make the
            # same fits to give the same labels, so their time bounds any speed-up.
            Xp = pipe[:-1].fit_transform(X)
            t_fit = time.perf_counter()
            labels = pipe[-1].fit_predict(Xp)
            kmeans_seconds = time.perf_counter() - t_fit
            row = {
                "pca": p,
                "k": k,
                "silhouette": float(silhouette_score(Xp, labels)),
                "calinski_harabasz": float(calinski_harabasz_score(Xp, labels)),
                "davies_bouldin": float(davies_bouldin_score(Xp, labels)),
                "seconds": time.perf_counter() - t,
                "kmeans_seconds": kmeans_seconds,
            }
            np.save(Path(out_dir) / f"labels_pca{p}_k{k}.npy", labels)
            results.append(row)
            print(f"(a) pca={p} k={k}: {row['seconds']:.1f}s", file=sys.stderr, flush=True)
    (Path(out_dir) / "notebook.json").write_text(json.dumps(results))


# --------------------------------------------------------------------------- measuring
def _descendants_rss_mb(root: int) -> float:
    """Sum of VmRSS over ``root`` and all its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/statm") as fh:
                rss[int(entry)] = int(fh.read().split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total * os.sysconf("SC_PAGE_SIZE") / 2**20


def timed(cmd: list[str], env: dict, cwd: str, log_path: Path) -> dict:
    """Run ``cmd``; return wall seconds and peak RSS (MB) of its process tree."""
    peak = 0.0
    with open(log_path, "w") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
        done = threading.Event()

        def poll() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, _descendants_rss_mb(proc.pid))
                done.wait(0.05)

        thread = threading.Thread(target=poll, daemon=True)
        thread.start()
        rc = proc.wait()
        wall = time.perf_counter() - start
        done.set()
        thread.join()
    if rc != 0:
        sys.exit(f"{' '.join(cmd[:4])} ... failed with status {rc}; see {log_path}")
    return {"wall_s": wall, "peak_rss_mb": peak}


# --------------------------------------------------------------------------- embclust way (b)
def embclust_cmd(x_path: Path, tmp: Path, tag: str, launcher: str | None) -> tuple[list[str], dict]:
    cmd = [
        sys.executable,
        str(REPO / "run.py"),
        "-m",
        "+sweep=bench_grid",
        "dataset=npy",
        f"dataset.path={x_path}",
        "reducer=none",
        f"mlflow.tracking_uri=sqlite:///{tmp / tag / 'mlflow.db'}",
        f"hydra.sweep.dir={tmp / tag / 'multirun'}",
    ]
    if launcher:
        cmd.append(f"hydra/launcher={launcher}")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["EMBCLUST_CACHE_DIR"] = str(tmp / tag / "cache")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    (tmp / tag).mkdir(parents=True, exist_ok=True)
    return cmd, env


def embclust_cells(tmp: Path, tag: str) -> dict[tuple[int, int], dict]:
    """Metrics and labels of each FINISHED child run of the sweep stored under ``tmp/tag``."""
    import mlflow
    import polars as pl

    mlflow.set_tracking_uri(f"sqlite:///{tmp / tag / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["embclust"], output_format="list")
    cells = {}
    for run in runs:
        params = run.data.params
        if "mlflow.parentRunId" not in run.data.tags or run.info.status != "FINISHED":
            continue
        key = (int(params["preprocess.pca_components"]), int(params["clusterer.n_clusters"]))
        path = mlflow.artifacts.download_artifacts(
            run_id=run.info.run_id, artifact_path="labels.parquet", dst_path=str(tmp / tag / "artifacts" / run.info.run_id)
        )
        cells[key] = {**run.data.metrics, "labels": pl.read_parquet(path, columns=["cluster"])["cluster"].to_numpy()}
    return cells


def cached_matrices(cache_dir: Path) -> dict[int, np.ndarray]:
    """The preprocessed matrices (by PCA size) that the sweep clustered, from its cache."""
    import joblib

    out = {}
    for entry in (cache_dir / "preprocess").iterdir():
        if entry.is_dir() and (entry / "Xp.npy").exists():
            pca = joblib.load(entry / "pipeline.joblib").named_steps["pca"]
            out[int(pca.n_components)] = np.load(entry / "Xp.npy", mmap_mode="r")
    return out


# --------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="n = 10,000 x 384 instead of 42,000 x 768")
    parser.add_argument("--n", type=int, default=None)
    parser.add_argument("--d", type=int, default=None)
    parser.add_argument("--clusters", type=int, default=40)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--skip-joblib", action="store_true", help="do not time (c)")
    parser.add_argument("--notebook-child", nargs=2, metavar=("X_NPY", "OUT_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.notebook_child:
        notebook_sweep(*args.notebook_child, seed=args.seed)
        return

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from sklearn.metrics import adjusted_rand_score, calinski_harabasz_score, davies_bouldin_score

    sys.path.insert(0, str(REPO / "src"))  # time this checkout's code
    from embclust.data import make_synthetic

    n = args.n or (10_000 if args.small else 42_000)
    d = args.d or (384 if args.small else 768)
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp_name:
        tmp = Path(tmp_name)
        X = make_synthetic(n_samples=n, n_features=d, n_clusters=args.clusters, seed=args.seed).X
        x_path = tmp / "X.npy"
        np.save(x_path, X)
        data_mb = X.nbytes / 2**20
        del X
        print(f"data: {n} x {d} float32 ({data_mb:.0f} MB), {args.clusters} true clusters, seed {args.seed}", flush=True)

        timings = {}
        base_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
        baseline = timed([sys.executable, "-c", "import embclust.runner"], base_env, tmp_name, tmp / "base.log")
        nb_dir = tmp / "notebook"
        nb_dir.mkdir()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
        cmd = [sys.executable, __file__, "--seed", str(args.seed), "--notebook-child", str(x_path), str(nb_dir)]
        print("(a) notebook way ...", flush=True)
        timings["a"] = timed(cmd, env, tmp_name, tmp / "a.log")
        print(f"    {timings['a']['wall_s']:.1f} s", flush=True)
        for tag, launcher in (("b", None), ("c", "joblib")):
            if tag == "c" and args.skip_joblib:
                continue
            print(f"({tag}) embclust sweep{' (joblib)' if launcher else ''} ...", flush=True)
            cmd, env = embclust_cmd(x_path, tmp, tag, launcher)
            timings[tag] = timed(cmd, env, tmp_name, tmp / f"{tag}.log")
            print(f"    {timings[tag]['wall_s']:.1f} s", flush=True)

        names = {"a": "(a) notebook: refit per cell, full silhouette", "b": "(b) embclust -m, basic launcher",
                 "c": "(c) embclust -m, joblib launcher"}
        print()
        print(f"{'run':<48} {'wall s':>8} {'peak RSS MB':>12} {'x data':>7} {'speed-up':>9}")
        for tag, t in timings.items():
            print(
                f"{names[tag]:<48} {t['wall_s']:8.1f} {t['peak_rss_mb']:12.0f} {t['peak_rss_mb'] / data_mb:7.2f}"
                f" {timings['a']['wall_s'] / t['wall_s']:8.1f}x"
            )

        notebook = {(r["pca"], r["k"]): r for r in json.loads((nb_dir / "notebook.json").read_text())}
        cells = embclust_cells(tmp, "b")
        matrices = cached_matrices(tmp / "b" / "cache")
        print()
        print(
            f"{'pca':>4} {'k':>3} {'sil (a) full':>12} {'sil (b) samp':>12} {'d sil':>8} {'rel d CH':>9} {'rel d DB':>9}"
            f" {'ARI a-b':>8} {'CH b vs skl':>11} {'DB b vs skl':>11}"
        )
        worst = {"dsil": 0.0, "ari": 1.0, "ch": 0.0, "db": 0.0}
        for key in sorted(notebook):
            a = notebook[key]
            b = cells.get(key)
            if b is None:
                print(f"{key[0]:>4} {key[1]:>3}  missing in (b)")
                continue
            labels_a = np.load(nb_dir / f"labels_pca{key[0]}_k{key[1]}.npy")
            ari = adjusted_rand_score(labels_a, b["labels"])
            Xp = np.asarray(matrices[key[0]])
            ch_rel = abs(b["calinski_harabasz"] / calinski_harabasz_score(Xp, b["labels"]) - 1)
            db_rel = abs(b["davies_bouldin"] / davies_bouldin_score(Xp, b["labels"]) - 1)
            dsil = b["silhouette"] - a["silhouette"]
            worst = {"dsil": max(worst["dsil"], abs(dsil)), "ari": min(worst["ari"], ari),
                     "ch": max(worst["ch"], ch_rel), "db": max(worst["db"], db_rel)}
            print(
                f"{key[0]:>4} {key[1]:>3} {a['silhouette']:12.4f} {b['silhouette']:12.4f} {dsil:+8.4f}"
                f" {b['calinski_harabasz'] / a['calinski_harabasz'] - 1:+9.1e} {b['davies_bouldin'] / a['davies_bouldin'] - 1:+9.1e}"
                f" {ari:8.4f} {ch_rel:11.1e} {db_rel:11.1e}"
            )
        stages = ("load", "validate", "preprocess", "cluster", "score", "map", "analyse", "plots", "report", "log")
        per_stage = {st: sum(c.get(f"time/{st}_s", 0.0) for c in cells.values()) for st in stages}
        print()
        print("(b) seconds per stage, summed over cells: " + ", ".join(f"{st} {v:.1f}" for st, v in per_stage.items()))
        print(f"(b) outside the stages (start-up, MLflow runs, sweep bookkeeping): "
              f"{timings['b']['wall_s'] - sum(per_stage.values()):.1f}")
        nb_seconds = sum(r["seconds"] for r in notebook.values())
        nb_kmeans = sum(r["kmeans_seconds"] for r in notebook.values())
        print(f"(a) seconds in its cells: {nb_seconds:.1f}, of which KMeans fits (n_init=10): {nb_kmeans:.1f}")
        print(
            f"(a)'s KMeans fits alone bound the speed-up of any run that makes the same fits: "
            f"{timings['a']['wall_s']:.1f} / {nb_kmeans:.1f} = {timings['a']['wall_s'] / nb_kmeans:.1f}x"
        )
        sample = next(iter(cells.values())).get("silhouette_sample_size", float("nan"))
        print()
        print(f"silhouette sample size in (b): {sample:.0f} of {n}")
        print(
            f"worst cell: |d silhouette| {worst['dsil']:.4f} (target <= 0.01), ARI {worst['ari']:.4f} (>= 0.95), "
            f"CH rel. error vs scikit-learn {worst['ch']:.1e}, DB {worst['db']:.1e} (<= 1e-6)"
        )
        b_peak = timings["b"]["peak_rss_mb"]
        print(
            f"speed-up (a)/(b) {timings['a']['wall_s'] / timings['b']['wall_s']:.1f}x (target >= 10x); "
            f"peak RSS of (b) {b_peak / data_mb:.2f}x data (target < 4x); the interpreter with embclust's "
            f"imports alone takes {baseline['peak_rss_mb']:.0f} MB, so (b) holds "
            f"{(b_peak - baseline['peak_rss_mb']) / data_mb:.2f}x data above it"
        )


if __name__ == "__main__":
    main()
