"""Large k: KMeans ``auto`` (restarts on a sample within kmeans.max_restart_work, then passes over
all rows) against MiniBatchKMeans, side by side in one process on the same rows.

    python scripts/bench_scale.py --n 1000000 --formats npy --no-single --no-sweep   # writes the data
    python scripts/bench_large_k.py /tmp/embclust-bench-scale/emb_1000000x384_s42.npy --k 1000

Each fit is timed alone; every inertia is recomputed exactly (float64) over all rows from the
fitted centres and labels, so the figures compare the same quantity. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.cluster import KMeans, MiniBatchKMeans

from embclust.cluster import kmeans, lloyd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("npy", help="a float32 .npy of rows (bench_scale.py writes one)")
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--n-init", type=int, default=10, help="clusterer.n_init of the KMeans runs (conf default 10)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--fast-tol", type=float, default=5e-4, help="a looser kmeans.refine_tol, also timed")
    args = parser.parse_args()

    X = np.ascontiguousarray(np.load(args.npy, mmap_mode="r"), dtype=np.float32)
    print(f"# {X.shape[0]:,} x {X.shape[1]}, k = {args.k}")
    results = []

    def timed(name, fit):
        start = time.perf_counter()
        labels, centers, extra = fit()
        seconds = time.perf_counter() - start
        total = lloyd.inertia(X, np.asarray(labels, dtype=np.int32), np.asarray(centers, dtype=np.float32), 2)
        results.append((name, seconds, total, extra))
        print(f"{name}: {seconds:.1f} s, inertia {total:.6g} ({extra})", flush=True)

    def minibatch():
        m = MiniBatchKMeans(n_clusters=args.k, n_init=3, batch_size=4096, max_iter=100, random_state=args.seed).fit(X)
        return m.labels_, m.cluster_centers_, f"{m.n_iter_} epochs, {m.n_steps_} steps"

    def auto(refine_tol):
        def fit():
            m = KMeans(n_clusters=args.k, n_init=args.n_init, random_state=args.seed)
            ran = kmeans.fit_kmeans(m, X, "auto", kmeans.SampleSettings(refine_tol=refine_tol))
            return m.labels_, m.cluster_centers_, f"{ran.restarts} restart(s) on {ran.sample_size or 'all'} rows, {m.n_iter_} passes"
        return fit

    timed("clusterer=minibatch_kmeans (batch 4,096, n_init 3)", minibatch)
    timed("auto (kmeans.refine_tol=1e-4, the default)", auto(1e-4))
    timed(f"auto (kmeans.refine_tol={args.fast_tol:g})", auto(args.fast_tol))
    best = min(r[2] for r in results)
    print("\n| fit | time | inertia | vs best |\n| --- | ---: | ---: | ---: |")
    for name, seconds, total, _ in results:
        print(f"| {name} | {seconds:.1f} s | {total:,.0f} | {(total / best - 1) * 100:+.2f}% |")


if __name__ == "__main__":
    main()
