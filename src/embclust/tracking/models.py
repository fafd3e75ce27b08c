"""Log a run's fitted Pipeline to MLflow: skops where it can be, cloudpickle (tagged) where not."""

from __future__ import annotations

import contextlib
import copy
import logging
import sys
from collections.abc import Iterator

import numpy as np
from sklearn.pipeline import Pipeline

from embclust.tracking.store import package_versions

log = logging.getLogger(__name__)

SKOPS = "skops"
CLOUDPICKLE = "cloudpickle"
# Packages whose estimators skops stores as plain data (attributes, arrays); anything else, e.g.
# UMAP with its compiled numba functions, is saved with cloudpickle.
_SKOPS_PACKAGES = ("sklearn", "hdbscan")
# Types any scikit-learn model may hold besides its own classes: arrays, scalars, dtypes.
_DATA_PACKAGES = ("numpy", "scipy", "builtins")


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _top_package(cls: type) -> str:
    return cls.__module__.split(".", 1)[0]


def portable_model(model: Pipeline) -> Pipeline:
    """The same fitted Pipeline with accelerated (sklearnex) steps as their scikit-learn class.

    sklearnex estimators subclass the scikit-learn ones and keep the same fitted attributes, plus
    a handle to a compiled oneDAL object that neither skops nor a machine without sklearnex can
    load; the scikit-learn class predicts from the same centroids.
    """
    steps = []
    for name, step in model.steps:
        if _top_package(type(step)) in ("sklearnex", "daal4py"):
            base = next(c for c in type(step).__mro__ if _top_package(c) == "sklearn")
            plain = base.__new__(base)
            plain.__dict__.update(
                {k: copy.copy(v) for k, v in step.__dict__.items() if not k.startswith("_onedal")}
            )
            step = plain
        steps.append((name, step))
    return Pipeline(steps)


# The scikit-learn packages an embclust model is made of; their estimators are what skops trusts
# by default in this process (see import_skops_io).
_MODEL_PACKAGES = ("sklearn.pipeline", "sklearn.preprocessing", "sklearn.decomposition", "sklearn.cluster")


def loaded_sklearn_estimators() -> list[tuple[str, type]]:
    """``sklearn.utils.all_estimators()`` over the scikit-learn modules already imported.

    The same (name, class) pairs for those modules, without importing every other module of
    scikit-learn to find the rest (2 s of a run on a 2-core machine).
    """
    import importlib
    import inspect

    from sklearn.base import BaseEstimator

    for name in _MODEL_PACKAGES:
        importlib.import_module(name)
    found: dict[type, str] = {}
    for module_name, module in list(sys.modules.items()):
        if module is None or not module_name.startswith("sklearn.") or ".tests" in module_name:
            continue
        for attr, obj in list(vars(module).items()):
            if (
                isinstance(obj, type) and not attr.startswith("_") and issubclass(obj, BaseEstimator)
                and obj.__module__.startswith("sklearn.") and obj is not BaseEstimator and not inspect.isabstract(obj)
            ):
                found[obj] = obj.__name__
    return sorted(((name, cls) for cls, name in found.items()), key=lambda pair: (pair[0], pair[1].__module__))


def whichmodule(obj, name: str) -> str:
    """skops' ``whichmodule`` (its copy of pickle's) with a dict lookup per plain module.

    skops names the scipy.special ufuncs at import (about 230 objects without ``__module__``):
    for each it tries ``getattr(module, name, None)`` on every loaded module in turn, half a
    million failed lookups, 1.4 s once a run has loaded its 3,000 modules. A plain module's
    attributes are its ``__dict__``, so the answer is the same; module subclasses, modules with
    their own ``__getattr__``, names ``ModuleType`` itself has and dotted names take skops' path.
    """
    import types
    import warnings

    module_name = getattr(obj, "__module__", None)
    if module_name is not None:
        return module_name
    plain_name = "." not in name and not hasattr(types.ModuleType, name)
    missing = object()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        for module_name, module in sys.modules.copy().items():
            if module_name in ("__main__", "__mp_main__") or module is None:
                continue
            if plain_name and type(module) is types.ModuleType and "__getattr__" not in module.__dict__:
                found = module.__dict__.get(name, missing)
            else:
                try:
                    found = _dotted_getattr(module, name) if "." in name else getattr(module, name, None)
                except (AttributeError, ImportError):
                    continue
            if found is obj:
                return module_name
    return "__main__"


def _dotted_getattr(obj, name: str):
    for part in name.split("."):
        if part == "<locals>":
            raise AttributeError(f"Can't get local attribute {name!r} on {obj!r}")
        obj = getattr(obj, part)
    return obj


class _PatchAfterImport:
    """A meta-path finder that calls ``patch(module)`` right after module ``name`` is executed,
    before the modules importing it go on."""

    def __init__(self, name: str, patch):
        self.name, self.patch = name, patch

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
                execute = spec.loader.exec_module

                def exec_module(module, execute=execute):
                    execute(module)
                    self.patch(module)

                spec.loader.exec_module = exec_module
                return spec
        return None


def import_skops_io():
    """``skops.io``, imported without walking every scikit-learn package.

    At import, skops lists every scikit-learn estimator (``all_estimators``, which imports each
    module of scikit-learn, and through its array-API adapters torch where it is installed) as
    the types it trusts by default. Here that default is the estimators of the modules already
    loaded plus those an embclust model is made of (:func:`loaded_sklearn_estimators`): a
    narrower default, never a wider one. A model logged here names every type it holds that is
    not in that default (:func:`skops_trusted_types`), so it loads with full skops as well.
    Its naming of scipy's ufuncs uses :func:`whichmodule` meanwhile.
    """
    if "skops.io" in sys.modules:
        return sys.modules["skops.io"]
    import sklearn.utils
    import sklearn.utils.discovery

    own: dict[str, object] = {}

    def faster_lookup(module) -> None:
        own["whichmodule"] = module.whichmodule
        module.whichmodule = whichmodule

    hook = _PatchAfterImport("skops.io._utils", faster_lookup)
    walk = sklearn.utils.all_estimators
    homes = (sklearn.utils, sklearn.utils.discovery)  # where skops may import it from
    for home in homes:
        home.all_estimators = loaded_sklearn_estimators
    sys.meta_path.insert(0, hook)
    try:
        import skops.io
    finally:
        sys.meta_path.remove(hook)
        for home in homes:
            home.all_estimators = walk
        if "whichmodule" in own:
            sys.modules["skops.io._utils"].whichmodule = own["whichmodule"]
    return skops.io


def step_classes(model: Pipeline) -> list[type]:
    """Classes of the Pipeline's fitted steps (``"passthrough"`` steps left out)."""
    return [type(step) for _, step in model.steps if not isinstance(step, str) and step is not None]


def skops_trusted_types(model: Pipeline) -> tuple[list[str] | None, str]:
    """Types to trust when loading ``model`` with skops, or (None, why not) when it cannot be.

    The list is built from the Pipeline's own classes: the types skops reports as unknown must
    come from the packages of the steps or be numpy / scipy data.
    """
    classes = step_classes(model)
    foreign = [c for c in classes if _top_package(c) not in _SKOPS_PACKAGES]
    if foreign:
        return None, f"{', '.join(_qualname(c) for c in foreign)} is not a scikit-learn or hdbscan estimator"
    skops_io = import_skops_io()

    try:
        untrusted = skops_io.get_untrusted_types(data=skops_io.dumps(model))
    except Exception as exc:  # noqa: BLE001 - skops raises many types for objects it cannot store
        return None, f"skops cannot store it ({type(exc).__name__}: {exc})"
    own = {_top_package(c) for c in classes} | {"sklearn"}
    refused = [t for t in untrusted if t.split(".", 1)[0] not in own | set(_DATA_PACKAGES)]
    if refused:
        return None, f"it holds {', '.join(refused)}, which is not one of the Pipeline's own types"
    return sorted(set(untrusted) | {_qualname(c) for c in [type(model), *classes]}), ""


def model_requirements(model: Pipeline, serialization_format: str) -> list[str]:
    """Pinned pip requirements for loading ``model`` (skips MLflow's slow inference)."""
    packages = ["scikit-learn", "numpy", "scipy", serialization_format]
    if any(_top_package(c) == "hdbscan" for c in step_classes(model)):
        packages.append("hdbscan")
    if any(_top_package(c) == "umap" for c in step_classes(model)):
        packages.append("umap-learn")
    return [f"{pkg}=={ver}" for pkg, ver in package_versions(tuple(packages)).items() if ver != "not installed"]


@contextlib.contextmanager
def _no_requirement_scan() -> Iterator[None]:
    """Skip MLflow's check of the model's requirements against the environment, for one save.

    The requirements are pinned from this environment (:func:`model_requirements`), so they
    match by construction; MLflow's check maps every installed distribution to its modules
    first (``importlib.metadata.packages_distributions``), about 1 s of a default run.
    """
    try:
        from mlflow.utils import environment
    except ImportError:
        yield
        return
    original = getattr(environment, "warn_dependency_requirement_mismatches", None)
    if original is None:
        yield
        return
    environment.warn_dependency_requirement_mismatches = lambda *args, **kwargs: None
    try:
        yield
    finally:
        environment.warn_dependency_requirement_mismatches = original


def _say_search_index_is_prepared(model: Pipeline):
    """Saving a UMAP builds its neighbour search index for ``transform``, whose numba code is compiled
    the first time on a machine (about 40 s on 2 cores, then cached): say so before the wait. Its
    search function, which pickling compiles only to drop it, is stood in for; the index is returned so
    the stand-in is removed after the save (a later query in this process builds the real one)."""
    for _, step in model.steps:
        index = getattr(step, "_knn_search_index", None)
        if index is not None and not hasattr(index, "_search_graph"):
            log.info("model: preparing UMAP's search index for embclust assign (its code is compiled the first "
                     "time on a machine, about a minute; cached after)")
            if not hasattr(index, "_search_function"):  # built only to be dropped from the saved state
                index._search_function = None
                return index
    return None


@contextlib.contextmanager
def _failed_if_interrupted():
    """Mark the active run's model FAILED when a signal or Ctrl-C stops its save.

    MLflow marks a logged model FAILED on an ``Exception`` only; a ``BaseException`` (a stop
    signal, ``KeyboardInterrupt``) left it PENDING in the store for good.
    """
    try:
        yield
    except Exception:
        raise
    except BaseException:
        try:
            import mlflow
            from mlflow.entities import LoggedModelStatus

            run = mlflow.active_run()
            model = mlflow.last_logged_model()
            if (run is not None and model is not None and model.source_run_id == run.info.run_id
                    and model.status == LoggedModelStatus.PENDING):
                mlflow.MlflowClient().finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
        except Exception:  # the store may be what failed; the stop is what to report
            pass
        raise


def log_model(pipeline: Pipeline, X_example: np.ndarray, labels_example: np.ndarray) -> str:
    """Log ``pipeline`` as the active run's model ``model``; return the format used.

    skops with a trusted-type list where the Pipeline allows it (KMeans, MiniBatchKMeans,
    Agglomerative); otherwise cloudpickle, said once on the log. Tag ``model_format`` records
    which, tag ``model_format_reason`` why skops was not used.
    """
    import mlflow.sklearn
    from mlflow.models import infer_signature

    model = portable_model(pipeline)
    trusted, why = skops_trusted_types(model)
    fmt = SKOPS if trusted is not None else CLOUDPICKLE
    tags = {"model_format": fmt}
    if trusted is None:
        tags["model_format_reason"] = why[:500]
        log.info("model saved with cloudpickle, not skops: %s", why)
    signature = infer_signature(np.asarray(X_example), np.asarray(labels_example))
    stand_in = _say_search_index_is_prepared(model) if trusted is None else None
    mlflow_log = logging.getLogger("mlflow.sklearn")
    level = mlflow_log.level
    # MLflow warns on every cloudpickle save; the line above already says why it is used.
    mlflow_log.setLevel(logging.ERROR)
    try:
        with _no_requirement_scan(), _failed_if_interrupted():
            mlflow.sklearn.log_model(
                model,
                name="model",
                signature=signature,
                serialization_format=fmt,
                skops_trusted_types=trusted,
                pip_requirements=model_requirements(model, fmt),
            )
    finally:
        mlflow_log.setLevel(level)
        if stand_in is not None and getattr(stand_in, "_search_function", 0) is None:
            del stand_in._search_function
    mlflow.set_tags(tags)
    return fmt
