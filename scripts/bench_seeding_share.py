"""Share of k-means++ seeding in ``cluster_implementation=auto``'s restarts on the sweep benchmark's grid.

    python scripts/bench_seeding_share.py        # 42,000 x 768, PCA 5 / 20 / 100 x k 10 / 30 / 50

For each cell: the seeded sample ``auto`` restarts on, the time of its k-means++ starts (all
restarts, as auto draws them) and of the Lloyd loops from them, one after the other. The
seeding's share bounds what sharing k-means++ draws across a sweep's k values could save.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.utils import check_random_state
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sweep import make_embedding_like, reduce  # noqa: E402

from embclust.cluster import kmeans_plusplus  # noqa: E402
from embclust.cluster.kmeans import SampleSettings, _best_of_restarts, _openmp_threads, sample_rows  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=42_000)
    parser.add_argument("--d", type=int, default=768)
    parser.add_argument("--n-init", type=int, default=10)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    X, _ = make_embedding_like(args.n, args.d, seed=args.seed)
    settings = SampleSettings()
    restarts = args.n_init * settings.restarts_per_init
    threads = _openmp_threads()
    seeding = lloyd = 0.0
    for pca in (5, 20, 100):
        Xp = reduce(X, pca, args.seed).astype(np.float32)
        for k in (10, 30, 50):
            rows = sample_rows(len(Xp), settings.size(k), args.seed)
            S = np.ascontiguousarray(Xp if rows is None else Xp[rows])
            mean = S.mean(axis=0)
            started = time.perf_counter()
            with threadpool_limits(limits=1, user_api="blas"):
                starts = kmeans_plusplus.kmeans_plusplus_starts(S, k, check_random_state(args.seed), restarts,
                                                                mean=mean, n_threads=threads)
            seeded = time.perf_counter()
            _best_of_restarts(S - mean, starts, k, 300, 1e-4, threads)
            done = time.perf_counter()
            seeding += seeded - started
            lloyd += done - seeded
            print(f"PCA {pca:3d}, k {k:2d}, {S.shape[0]} sample rows: seeding {restarts} starts {seeded - started:.3f} s, "
                  f"Lloyd from them {done - seeded:.3f} s", flush=True)
    print(f"seeding {seeding:.2f} s, Lloyd {lloyd:.2f} s: seeding is {seeding / (seeding + lloyd):.1%} of the restarts")


if __name__ == "__main__":
    main()
