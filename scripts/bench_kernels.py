"""Time embclust's sweep kernels against scikit-learn on embedding-like data (not a test).

1. Silhouette: ``embclust.scoring.silhouette.silhouette_samples`` vs
   ``sklearn.metrics.silhouette_samples`` on a 10,000-row sample at d = 5, 50, 768 (true
   labels, 40 clusters): wall time of each, ratio, and max |difference| per sample.
2. KMeans (n_init = 10, k = 10 and 50) on PCA-50 of 20,000 rows: sklearnex (oneDAL) vs
   scikit-learn, wall time, ratio and the inertia gap (positive: sklearnex's is higher).
3. k-means++ seeding (10 consecutive starts on one seeded RandomState, as KMeans(n_init=10)
   draws them) at d = 5, 50 and k = 10, 50: ``embclust.cluster.kmeans_plusplus`` vs
   ``sklearn.cluster.kmeans_plusplus``, wall time, ratio and how many starts are identical;
   then ``cluster_implementation=embclust`` (those starts, Lloyd in sklearnex) against
   scikit-learn's whole fit: time and inertia gap.

The data mimics sentence embeddings: 40 unequal, anisotropic Gaussian clusters in a 32-d
latent space, rotated into 768 dimensions, a shared offset direction, isotropic noise and
L2-normalised rows. Takes about a minute on 2 cores.

    python scripts/bench_kernels.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def realistic_embeddings(n: int, d: int, n_clusters: int = 40, latent: int = 32, seed: int = 0):
    """Rows like sentence embeddings (see module docstring) and their cluster labels."""
    rng = np.random.default_rng(seed)
    sizes = rng.dirichlet(np.full(n_clusters, 1.5))
    labels = rng.choice(n_clusters, size=n, p=sizes)
    centers = rng.normal(scale=1.0, size=(n_clusters, latent))
    # Anisotropic: each cluster its own random covariance, axis scales spread over 10x.
    shapes = rng.normal(size=(n_clusters, latent, latent)) / np.sqrt(latent)
    shapes *= rng.uniform(0.1, 1.0, size=(n_clusters, 1, latent))
    Z = centers[labels] + np.einsum("nij,nj->ni", shapes[labels], rng.normal(size=(n, latent)))
    rotation, _ = np.linalg.qr(rng.normal(size=(d, latent)))
    offset = rng.normal(size=d)
    offset *= 2.0 / np.linalg.norm(offset)
    X = Z @ rotation.T + offset + rng.normal(scale=0.8 / np.sqrt(d) * np.sqrt(latent), size=(n, d))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X.astype(np.float32), labels


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20_000, help="rows generated (KMeans data)")
    parser.add_argument("--sample", type=int, default=10_000, help="rows scored by silhouette")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    sys.path.insert(0, str(REPO / "src"))  # time this checkout's code
    from sklearn import metrics as skm
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    from embclust.cluster import fit
    from embclust.scoring.silhouette import silhouette_samples

    X, y = realistic_embeddings(args.n, 768, seed=args.seed)
    pca50 = PCA(50, random_state=args.seed).fit(X)
    X50 = pca50.transform(X).astype(np.float32)
    X5 = X50[:, :5].copy()  # PCA components are nested: the first 5 of PCA-50 are PCA-5
    rows = np.random.default_rng(args.seed).permutation(args.n)[: args.sample]
    true_sil = float(np.mean(silhouette_samples(X[rows], y[rows])))
    print(f"data: {args.n} x 768 float32, 40 clusters, true-label silhouette {true_sil:.3f} (768-d, sample)")

    print(f"\nsilhouette_samples on {rows.size} rows (true labels)")
    print(f"{'d':>5} {'embclust s':>11} {'sklearn s':>10} {'speed-up':>9} {'max |diff|':>11}")
    for name, Z in (("5", X5), ("50", X50), ("768", X)):
        sample, labels = np.ascontiguousarray(Z[rows]), y[rows]
        ours, t_ours = timed(silhouette_samples, sample, labels)
        ref, t_ref = timed(skm.silhouette_samples, sample, labels)
        diff = float(np.abs(ours - ref).max())
        print(f"{name:>5} {t_ours:>11.2f} {t_ref:>10.2f} {t_ref / t_ours:>8.1f}x {diff:>11.1e}", flush=True)

    print(f"\nKMeans n_init=10 on PCA-50 of {args.n} rows")
    print(f"{'k':>4} {'sklearnex s':>12} {'sklearn s':>10} {'speed-up':>9} {'inertia gap':>12}")
    for k in (10, 50):
        fast, t_fast = timed(fit, KMeans(k, n_init=10, random_state=args.seed), X50, implementation="sklearnex")
        ref, t_ref = timed(fit, KMeans(k, n_init=10, random_state=args.seed), X50, implementation="scikit-learn")
        if fast.implementation != "sklearnex":
            print(f"{k:>4} sklearnex did not run ({fast.implementation}); is scikit-learn-intelex installed?")
            continue
        gap = fast.estimator.inertia_ / ref.estimator.inertia_ - 1.0
        print(f"{k:>4} {t_fast:>12.2f} {t_ref:>10.2f} {t_ref / t_fast:>8.1f}x {gap:>+11.3%}", flush=True)

    from sklearn.cluster import kmeans_plusplus as sklearn_kmeans_plusplus

    from embclust.cluster.kmeans_plusplus import kmeans_plusplus_starts

    print(f"\nk-means++, 10 starts (embclust: in lockstep, as its fits draw them), on PCA-d of {args.n} rows"
          " (centred, as KMeans.fit seeds)")
    print(f"{'d':>4} {'k':>4} {'embclust s':>11} {'sklearn s':>10} {'speed-up':>9} {'identical':>10}"
          f" | {'embclust fit s':>14} {'sklearn fit s':>13} {'inertia gap':>12}")
    for name, Z in (("5", X5), ("50", X50)):
        Zc = Z - Z.mean(axis=0)
        for k in (10, 50):
            ours_rs, ref_rs = np.random.RandomState(args.seed), np.random.RandomState(args.seed)
            ours, t_ours = timed(lambda: kmeans_plusplus_starts(Zc, k, ours_rs, 10))
            ref, t_ref = timed(lambda: [sklearn_kmeans_plusplus(Zc, k, random_state=ref_rs)[0] for _ in range(10)])
            same = sum(np.array_equal(a, b) for a, b in zip(ours, ref))
            fast, t_fast = timed(fit, KMeans(k, n_init=10, random_state=args.seed), Z, implementation="embclust")
            full, t_full = timed(fit, KMeans(k, n_init=10, random_state=args.seed), Z, implementation="scikit-learn")
            gap = fast.estimator.inertia_ / full.estimator.inertia_ - 1.0
            print(f"{name:>4} {k:>4} {t_ours:>11.2f} {t_ref:>10.2f} {t_ref / t_ours:>8.1f}x {same:>7}/10"
                  f" | {t_fast:>14.2f} {t_full:>13.2f} {gap:>+11.3%}", flush=True)


if __name__ == "__main__":
    main()
