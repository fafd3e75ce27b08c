"""UMAP's compiled functions kept on disk, so a new process does not compile them again.

UMAP compiles most of its numba functions without numba's on-disk cache: every new process
spent about 10 s compiling them, for 1,797 points (the default job's map took 11.6 s of which
the fit itself is under 2 s). Before UMAP is first used, :func:`enable_umap_cache` compiles
those functions again with ``cache=True`` into a folder embclust owns
(``$EMBCLUST_NUMBA_CACHE_DIR``, else ``$XDG_CACHE_HOME/embclust/numba``, else
``~/.cache/embclust/numba``): the same code, so the same coordinates, loaded from disk by every
later process (digits map: 11.6 s -> 3.7 s). Where that folder cannot be written, UMAP runs as
it is, compiling in each process.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

CACHE_ENV = "EMBCLUST_NUMBA_CACHE_DIR"
_UMAP_MODULES = ("umap.utils", "umap.distances", "umap.sparse", "umap.layouts", "umap.spectral", "umap.umap_")
# Cached already by their authors: their cache writes are guarded the same way.
_CACHED_MODULES = ("pynndescent.distances", "pynndescent.utils", "pynndescent.rp_trees", "pynndescent.pynndescent_",
                   "pynndescent.sparse", "pynndescent.sparse_nndescent", "pynndescent.graph_utils")
_enabled: bool | None = None
_warned: list[bool] = []


def cache_folder() -> Path | None:
    """The folder for compiled functions, created and checked writable, or None."""
    if os.environ.get(CACHE_ENV):
        folder = Path(os.environ[CACHE_ENV])
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        folder = Path(base) / "embclust" / "numba"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        os.rmdir(tempfile.mkdtemp(prefix=".probe-", dir=folder))
    except OSError as exc:
        log.debug("numba cache %s not writable (%s): UMAP compiles in this process", folder, exc.strerror or exc)
        return None
    return folder


def _never_fails(save, folder: Path):
    """numba raises a cache write's OSError (a full or read-only disk) into the caller; a cache
    that cannot be written must not fail the map: warn once and go on compiling in memory."""
    if getattr(save, "_embclust_guarded", False):
        return save

    def save_overload(*args, **kwargs):
        try:
            return save(*args, **kwargs)
        except OSError as exc:
            if not _warned:
                _warned.append(True)
                log.warning("numba cache %s cannot be written (%s): UMAP compiles in this process", folder,
                            exc.strerror or exc)
            return None

    save_overload._embclust_guarded = True
    return save_overload


def enable_umap_cache() -> bool:
    """Give UMAP's uncached numba functions an on-disk cache (once per process); whether it is on."""
    global _enabled
    if _enabled is not None:
        return _enabled
    _enabled = False
    folder = cache_folder()
    if folder is None:
        return False
    import importlib

    import numba
    from numba.core.caching import NullCache
    from numba.core.registry import CPUDispatcher

    # The caches made below take their folder when they are made: point numba at embclust's
    # folder for them only, so other libraries' caches stay where they were.
    previous = numba.config.CACHE_DIR
    if not os.environ.get("NUMBA_CACHE_DIR"):  # the user's own choice stands
        numba.config.CACHE_DIR = str(folder)
    replaced = 0
    try:
        for name in (*_UMAP_MODULES, *_CACHED_MODULES):
            try:
                module = importlib.import_module(name)
            except ImportError:
                continue
            except OSError as exc:  # pynndescent compiles (cache=True) as it is imported: a full disk here
                log.warning("numba cache %s cannot be written (%s): UMAP compiles in this process", folder,
                            exc.strerror or exc)
                _warned.append(True)
                return False  # the finally puts numba's own cache folder back; UMAP imports it from there
            for attr, obj in list(vars(module).items()):
                if not isinstance(obj, CPUDispatcher):
                    continue
                if name in _UMAP_MODULES and isinstance(obj._cache, NullCache) and not obj.signatures:
                    options = {k: v for k, v in obj.targetoptions.items() if k not in ("cache", "nopython")}
                    obj = numba.njit(cache=True, **options)(obj.py_func)
                    setattr(module, attr, obj)
                    replaced += 1
                if not isinstance(obj._cache, NullCache):
                    obj._cache.save_overload = _never_fails(obj._cache.save_overload, folder)
    finally:
        numba.config.CACHE_DIR = previous
    log.debug("UMAP: %d compiled functions cached under %s", replaced, folder)
    _enabled = True
    return True
