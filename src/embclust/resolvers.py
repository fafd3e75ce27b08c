"""OmegaConf resolvers that embclust's configs use; registered when embclust is imported."""

from __future__ import annotations

from omegaconf import OmegaConf


def if_clusterer(name: str, then, otherwise, *, _root_):
    """``then`` when the configured clusterer's ``_target_`` mentions ``name``, else ``otherwise``.

    Lets an experiment choose settings by clusterer, e.g.
    ``umap_components: ${embclust.if_clusterer:hdbscan,5,null}``, which Hydra's defaults list
    cannot express for a clusterer picked on the command line.
    """
    target = OmegaConf.select(_root_, "clusterer._target_", default="") or ""
    return then if str(name).lower() in str(target).lower() else otherwise


def register() -> None:
    """Register the resolvers once (importing embclust twice must not fail)."""
    if not OmegaConf.has_resolver("embclust.if_clusterer"):
        OmegaConf.register_new_resolver("embclust.if_clusterer", if_clusterer)
