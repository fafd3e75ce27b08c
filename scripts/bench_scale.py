"""Scale check: a million embeddings through MiniBatchKMeans, timed, with peak memory.

    python scripts/bench_scale.py                       # 1,000,000 x 384, k = 50, 100, 200
    python scripts/bench_scale.py --n 200000 --k 50     # a quicker look

Runs, in a subprocess with a temporary MLflow store and cache,

    python run.py -m clusterer=minibatch_kmeans clusterer.n_clusters=50,100,200 \\
        dataset=synthetic dataset.n_samples=1000000 dataset.n_features=384 \\
        reducer=pca reducer.max_points=50000

(synthetic data generated in chunks, sampled silhouette, exact streamed CH / DB, a 2-D PCA map
fitted on a sample), and prints the wall time, the peak RSS of the process tree and, per cell,
the metrics and the seconds of each stage as logged to MLflow.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sweep import REPO, timed  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--d", type=int, default=384)
    parser.add_argument("--k", default="50,100,200", help="comma-separated cluster counts")
    parser.add_argument("--map-points", type=int, default=50_000, help="reducer.max_points")
    parser.add_argument("--reducer", default="pca", help="pca or umap (umap is much slower)")
    parser.add_argument("overrides", nargs="*", help="more Hydra overrides")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp_name:
        tmp = Path(tmp_name)
        cmd = [
            sys.executable,
            str(REPO / "run.py"),
            "-m",
            "clusterer=minibatch_kmeans",
            f"clusterer.n_clusters={args.k}",
            "dataset=synthetic",
            f"dataset.n_samples={args.n}",
            f"dataset.n_features={args.d}",
            f"reducer={args.reducer}",
            f"reducer.max_points={args.map_points}",
            f"mlflow.tracking_uri=sqlite:///{tmp / 'mlflow.db'}",
            f"hydra.sweep.dir={tmp / 'multirun'}",
            *args.overrides,
        ]
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        env["EMBCLUST_CACHE_DIR"] = str(tmp / "cache")
        env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        data_mb = args.n * args.d * 4 / 2**20
        print(f"data: {args.n} x {args.d} float32 ({data_mb:.0f} MB); k = {args.k}", flush=True)
        t = timed(cmd, env, tmp_name, tmp / "run.log")
        print(f"wall {t['wall_s']:.1f} s, peak RSS {t['peak_rss_mb']:.0f} MB ({t['peak_rss_mb'] / data_mb:.2f}x data)")

        import mlflow

        mlflow.set_tracking_uri(f"sqlite:///{tmp / 'mlflow.db'}")
        runs = mlflow.search_runs(experiment_names=["embclust"], output_format="list")
        cells = sorted(
            (r for r in runs if "mlflow.parentRunId" in r.data.tags),
            key=lambda r: int(r.data.params.get("clusterer.n_clusters", 0)),
        )
        stages = ("load", "preprocess", "cluster", "score", "map", "plots", "log")
        print()
        print(f"{'k':>4} {'status':>8} {'silhouette':>10} {'sample':>7} {'CH':>10} {'DB':>7} "
              + " ".join(f"{s + ' s':>9}" for s in stages))
        for r in cells:
            m = r.data.metrics
            print(
                f"{r.data.params.get('clusterer.n_clusters'):>4} {r.info.status:>8} {m.get('silhouette', float('nan')):10.4f}"
                f" {m.get('silhouette_sample_size', 0):7.0f} {m.get('calinski_harabasz', float('nan')):10.1f}"
                f" {m.get('davies_bouldin', float('nan')):7.4f} "
                + " ".join(f"{m.get(f'time/{s}_s', float('nan')):9.1f}" for s in stages)
            )
            if r.info.status != "FINISHED":
                print(f"     error: {r.data.tags.get('error', '')[:300]}")


if __name__ == "__main__":
    main()
