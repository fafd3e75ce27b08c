"""Optional PyTorch backend: PCA, KMeans and the internal scores on a GPU (or the CPU).

Selected with the top-level config key ``backend``: ``cpu`` (scikit-learn, the default),
``torch`` (this module, on CUDA when available, else on the CPU) or ``auto`` (this module when
torch with CUDA is importable, else scikit-learn). torch is not a dependency of embclust: when
it is missing the run says so once and takes the scikit-learn path.

Everything here works on row chunks so memory stays bounded: distances are computed block by
block, scores accumulate in float64.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from embclust.errors import ConfigError

log = logging.getLogger(__name__)

BACKENDS = ("cpu", "torch", "auto")
NOISE = -1


def _import_torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def resolve_backend(backend: str | None) -> str:
    """``"torch"`` or ``"cpu"`` for the configured ``backend``, logging why when it falls back."""
    backend = "cpu" if backend is None else str(backend)
    if backend not in BACKENDS:
        raise ConfigError(f"backend={backend!r} is not allowed (allowed: {', '.join(BACKENDS)})")
    if backend == "cpu":
        return "cpu"
    torch = _import_torch()
    if torch is None:
        log.warning("backend=%s: torch is not installed; using the scikit-learn CPU path", backend)
        return "cpu"
    if backend == "auto" and not torch.cuda.is_available():
        log.info("backend=auto: torch has no CUDA device here; using the scikit-learn CPU path")
        return "cpu"
    log.info("backend=%s: PyTorch on %s", backend, default_device())
    return "torch"


def default_device() -> str:
    torch = _import_torch()
    return "cuda" if torch is not None and torch.cuda.is_available() else "cpu"


def _chunks(n: int, step: int):
    for start in range(0, n, step):
        yield start, min(n, start + step)


def _rows(X, start: int, stop: int, device, dtype):
    import torch

    block = X[start:stop]
    if isinstance(block, torch.Tensor):
        return block.to(device=device, dtype=dtype)
    return torch.as_tensor(np.ascontiguousarray(block), device=device).to(dtype)


# --------------------------------------------------------------------------- PCA
def pca(X: np.ndarray, n_components: int, device: str | None = None, chunk_rows: int = 65_536):
    """PCA by eigendecomposition of the float64 covariance, accumulated over row chunks.

    Returns ``(transformed float32 (n, n_components), components, mean, explained_variance)``
    with scikit-learn's sign convention (the largest entry of each component is positive), so
    the result matches ``PCA(svd_solver="covariance_eigh")``.
    """
    import torch

    device = device or default_device()
    n, d = X.shape
    total = torch.zeros(d, dtype=torch.float64, device=device)
    for a, b in _chunks(n, chunk_rows):
        total += _rows(X, a, b, device, torch.float64).sum(0)
    mean = total / n
    cov = torch.zeros((d, d), dtype=torch.float64, device=device)
    for a, b in _chunks(n, chunk_rows):
        block = _rows(X, a, b, device, torch.float64) - mean
        cov += block.T @ block
    cov /= n - 1
    evals, evecs = torch.linalg.eigh(cov)
    order = torch.argsort(evals, descending=True)[:n_components]
    components = evecs[:, order].T.contiguous()  # (n_components, d)
    signs = torch.sign(components[torch.arange(n_components), components.abs().argmax(dim=1)])
    components *= signs[:, None]
    explained = evals[order].clamp_min(0)
    out = np.empty((n, n_components), dtype=np.float32)
    for a, b in _chunks(n, chunk_rows):
        block = _rows(X, a, b, device, torch.float64) - mean
        out[a:b] = (block @ components.T).to(torch.float32).cpu().numpy()
    return out, components.cpu().numpy(), mean.cpu().numpy(), explained.cpu().numpy()


# --------------------------------------------------------------------------- KMeans
def _sq_dist_to(Xt, centers, x_sq, chunk_rows: int):
    """Yield (start, stop, squared distances of those rows to ``centers``)."""
    c_sq = (centers * centers).sum(1)
    for a, b in _chunks(Xt.shape[0], chunk_rows):
        d = x_sq[a:b, None] - 2.0 * (Xt[a:b] @ centers.T) + c_sq[None, :]
        yield a, b, d.clamp_min_(0)


def _assign(Xt, centers, x_sq, chunk_rows: int):
    import torch

    labels = torch.empty(Xt.shape[0], dtype=torch.long, device=Xt.device)
    mind = torch.empty(Xt.shape[0], dtype=Xt.dtype, device=Xt.device)
    for a, b, d in _sq_dist_to(Xt, centers, x_sq, chunk_rows):
        mind[a:b], labels[a:b] = d.min(1)
    return labels, mind


def _kmeans_plusplus(Xt, x_sq, n_clusters: int, gen, chunk_rows: int):
    """Greedy k-means++ (2 + log k candidates per step), as in scikit-learn."""
    import torch

    n = Xt.shape[0]
    trials = 2 + int(math.log(n_clusters))
    first = int(torch.randint(n, (1,), generator=gen, device=gen.device))
    ids = [first]
    closest = torch.cat([d[:, 0] for _, _, d in _sq_dist_to(Xt, Xt[first : first + 1], x_sq, chunk_rows)])
    pot = closest.sum()
    for _ in range(1, n_clusters):
        r = torch.rand(trials, generator=gen, device=gen.device, dtype=Xt.dtype) * pot
        cand = torch.searchsorted(torch.cumsum(closest, 0), r).clamp_max_(n - 1)
        dist = torch.cat([d.T for _, _, d in _sq_dist_to(Xt, Xt[cand], x_sq, chunk_rows)], dim=1)
        dist = torch.minimum(dist, closest[None, :])
        pots = dist.sum(1)
        best = int(torch.argmin(pots))
        pot, closest = pots[best], dist[best]
        ids.append(int(cand[best]))
    return Xt[torch.as_tensor(ids, device=Xt.device)].clone()


def kmeans(
    X: np.ndarray,
    n_clusters: int,
    n_init: int = 10,
    max_iter: int = 300,
    tol: float = 1e-4,
    seed: int = 0,
    device: str | None = None,
    chunk_rows: int = 65_536,
):
    """KMeans (k-means++ seeding, Lloyd iterations), best of ``n_init`` by inertia.

    Returns ``(labels int64, centers float32, inertia, n_iter)``. Seeded with a torch Generator:
    the same seed and device give the same result; it matches scikit-learn's clustering on
    well-separated data, not its random draws.
    """
    import torch

    device = device or default_device()
    Xt = torch.as_tensor(np.ascontiguousarray(X, dtype=np.float32), device=device)
    n = Xt.shape[0]
    if not 1 <= n_clusters <= n:
        raise ConfigError(f"n_clusters={n_clusters} must be between 1 and the number of samples ({n})")
    x_sq = (Xt * Xt).sum(1)
    # scikit-learn's tolerance: tol times the mean per-feature variance
    tol_abs = tol * float(torch.var(Xt.double(), dim=0, unbiased=False).mean())
    gen = torch.Generator(device=device).manual_seed(int(seed))
    best = None
    for _ in range(int(n_init)):
        centers = _kmeans_plusplus(Xt, x_sq, n_clusters, gen, chunk_rows)
        for it in range(1, int(max_iter) + 1):
            labels, mind = _assign(Xt, centers, x_sq, chunk_rows)
            sums = torch.zeros((n_clusters, Xt.shape[1]), dtype=torch.float64, device=device)
            sums.index_add_(0, labels, Xt.double())
            counts = torch.bincount(labels, minlength=n_clusters)
            empty = (counts == 0).nonzero().flatten()
            if empty.numel():  # relocate empty clusters to the points farthest from their centers
                far = torch.topk(mind, empty.numel()).indices
                sums[empty] = Xt[far].double()
                counts[empty] = 1
            new = (sums / counts[:, None].double()).to(Xt.dtype)
            shift = float(((new - centers) ** 2).sum())
            centers = new
            if shift <= tol_abs:
                break
        labels, mind = _assign(Xt, centers, x_sq, chunk_rows)
        inertia = float(mind.double().sum())
        if best is None or inertia < best[2]:
            best = (labels, centers, inertia, it)
    labels, centers, inertia, n_iter = best
    return labels.cpu().numpy().astype(np.int64), centers.cpu().numpy(), inertia, n_iter


def fit_kmeans_estimator(estimator, X: np.ndarray, device: str | None = None) -> np.ndarray:
    """Fit a scikit-learn ``KMeans`` with :func:`kmeans` and set its fitted attributes.

    The estimator can then ``predict`` and be logged like one fitted by scikit-learn.
    """
    p = estimator.get_params()
    n_init = 1 if p["n_init"] == "auto" else int(p["n_init"])
    seed = p["random_state"] if isinstance(p["random_state"], (int, np.integer)) else 0
    labels, centers, inertia, n_iter = kmeans(
        X, p["n_clusters"], n_init=n_init, max_iter=p["max_iter"], tol=p["tol"], seed=seed, device=device
    )
    estimator.cluster_centers_ = centers
    estimator.labels_ = labels.astype(np.int32)
    estimator.inertia_ = inertia
    estimator.n_iter_ = n_iter
    estimator.n_features_in_ = X.shape[1]
    estimator._n_features_out = centers.shape[0]
    estimator._n_threads = 1
    return labels


def fit_clusterer(clusterer, X: np.ndarray) -> np.ndarray:
    """The torch backend's clustering step: KMeans in torch, any other clusterer in scikit-learn."""
    from sklearn.cluster import KMeans

    from embclust import cluster

    cluster.check_clusterer(clusterer, X.shape[0])
    if type(clusterer) is KMeans and clusterer.init == "k-means++":
        return fit_kmeans_estimator(clusterer, X)
    log.info("backend=torch has no %s; fitting it with scikit-learn", type(clusterer).__name__)
    return cluster.fit_clusterer(clusterer, X)


# --------------------------------------------------------------------------- scores
def _codes(labels: np.ndarray, keep: np.ndarray | None = None):
    ids, codes = np.unique(labels if keep is None else labels[keep], return_inverse=True)
    return ids, codes.ravel()


def silhouette(
    X: np.ndarray,
    labels: np.ndarray,
    sample_size: int | None = None,
    seed: int = 0,
    device: str | None = None,
    block_rows: int = 2048,
    dtype=None,
    return_values: bool = False,
):
    """Mean silhouette coefficient with blocked pairwise distances (``torch.cdist``).

    ``sample_size`` draws the same seeded sample as scikit-learn's ``silhouette_score``.
    Distances are float64 by default (set ``dtype=torch.float32`` for speed on a GPU).
    With ``return_values``, return ``(rows of X scored, per-point values)`` instead of the mean.
    """
    import torch
    from sklearn.utils import check_random_state

    device = device or default_device()
    dtype = dtype or torch.float64
    labels = np.asarray(labels)
    idx = np.arange(labels.size)
    if sample_size is not None and sample_size < labels.size:
        idx = check_random_state(seed).permutation(labels.size)[:sample_size]
        X, labels = np.asarray(X[idx]), labels[idx]
    _, codes = _codes(labels)
    k = int(codes.max()) + 1
    n = codes.size
    Xt = torch.as_tensor(np.ascontiguousarray(X), device=device).to(dtype)
    ct = torch.as_tensor(codes, device=device)
    counts = torch.bincount(ct, minlength=k).to(dtype)
    values = torch.empty(n, dtype=torch.float64, device=device)
    for a, b in _chunks(n, block_rows):
        D = torch.cdist(Xt[a:b], Xt)
        D[torch.arange(b - a, device=device), torch.arange(a, b, device=device)] = 0
        sums = torch.zeros((b - a, k), dtype=dtype, device=device).index_add_(1, ct, D)
        own = ct[a:b]
        rows = torch.arange(b - a, device=device)
        own_n = counts[own]
        intra = sums[rows, own] / (own_n - 1).clamp_min(1)
        means = sums / counts[None, :]
        means[rows, own] = math.inf
        inter = means.min(1).values
        s = (inter - intra) / torch.maximum(intra, inter)
        values[a:b] = torch.where(own_n > 1, torch.nan_to_num(s), torch.zeros_like(s))
    if return_values:
        return idx, values.cpu().numpy()
    return float(values.mean())


def _cluster_stats(X, labels, device, chunk_rows: int):
    import torch

    labels = np.asarray(labels)
    _, codes = _codes(labels)
    k, d = int(codes.max()) + 1, X.shape[1]
    ct = torch.as_tensor(codes, device=device)
    sums = torch.zeros((k, d), dtype=torch.float64, device=device)
    for a, b in _chunks(codes.size, chunk_rows):
        sums.index_add_(0, ct[a:b], _rows(X, a, b, device, torch.float64))
    counts = torch.bincount(ct, minlength=k).double()
    centroids = sums / counts[:, None]
    sq = torch.zeros(k, dtype=torch.float64, device=device)
    dist = torch.zeros(k, dtype=torch.float64, device=device)
    for a, b in _chunks(codes.size, chunk_rows):
        diff = _rows(X, a, b, device, torch.float64) - centroids[ct[a:b]]
        s = (diff * diff).sum(1)
        sq.index_add_(0, ct[a:b], s)
        dist.index_add_(0, ct[a:b], s.sqrt())
    return counts, centroids, sums.sum(0) / counts.sum(), sq, dist


def calinski_harabasz(X, labels, device: str | None = None, chunk_rows: int = 65_536) -> float:
    """Calinski-Harabasz index (scikit-learn's definition), float64, chunked."""
    counts, centroids, mean, sq, _ = _cluster_stats(X, labels, device or default_device(), chunk_rows)
    k, n = counts.numel(), float(counts.sum())
    extra = float((counts * ((centroids - mean) ** 2).sum(1)).sum())
    intra = float(sq.sum())
    return 1.0 if intra == 0.0 else extra * (n - k) / (intra * (k - 1.0))


def davies_bouldin(X, labels, device: str | None = None, chunk_rows: int = 65_536) -> float:
    """Davies-Bouldin index (scikit-learn's definition), float64, chunked."""
    import torch

    counts, centroids, _, _, dist = _cluster_stats(X, labels, device or default_device(), chunk_rows)
    intra = dist / counts
    cd = torch.cdist(centroids, centroids)
    cd.fill_diagonal_(0.0)  # above 25 rows cdist multiplies matrices: a centre's distance to itself is not exactly 0
    if bool(torch.allclose(intra, torch.zeros_like(intra))) or bool(torch.allclose(cd, torch.zeros_like(cd))):
        return 0.0
    cd[cd == 0] = math.inf
    return float(((intra[:, None] + intra[None, :]) / cd).max(1).values.mean())


def score_clustering(
    X: np.ndarray,
    labels: np.ndarray,
    true_labels: np.ndarray | None = None,
    silhouette_sample_size: int | None = None,
    seed: int = 0,
    return_silhouette_values: bool = False,
    sample_rows: np.ndarray | None = None,
):
    """:func:`embclust.scoring.metrics.score_clustering` with silhouette, CH and DB computed in torch."""
    from embclust.scoring import metrics

    device = default_device()
    labels = np.asarray(labels)
    clustered = labels != NOISE
    scores = metrics.size_scores(labels)
    per_point = None
    n = int(clustered.sum())
    if 2 <= scores["n_clusters"] < n:
        Xc, lc = (X, labels) if clustered.all() else (np.asarray(X[clustered]), labels[clustered])
        if sample_rows is None:
            sample_rows = metrics.sample_rows_for(labels.size, silhouette_sample_size, seed)
        rows = sample_rows[clustered[sample_rows]]
        if metrics.silhouette_sample_scorable(labels[rows]):  # else CH and DB below still use every clustered row
            _, values = silhouette(np.asarray(X[rows]), labels[rows], None, seed, device=device, return_values=True)
            per_point = (rows, values)
            scores["silhouette"] = float(values.mean())
            scores["silhouette_sample_size"] = float(rows.size)
        scores["calinski_harabasz"] = calinski_harabasz(Xc, lc, device=device)
        scores["davies_bouldin"] = davies_bouldin(Xc, lc, device=device)
    else:
        log.warning("%d cluster(s) among %d clustered points: silhouette, CH and DB not scored", scores["n_clusters"], n)
    if true_labels is not None:
        scores.update(metrics.agreement_scores(true_labels, labels))
    return (scores, per_point) if return_silhouette_values else scores
