"""hydra/sweeper=embclust: cells' configs derived from one composition equal Hydra's own."""

from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.types import RunMode
from omegaconf import OmegaConf

from conftest import REPO
from hydra_plugins.embclust_sweeper.embclust_sweeper import DerivingConfigLoader


def _container(cfg):
    return OmegaConf.to_container(cfg, resolve=False)


def test_derived_cell_configs_equal_full_composition():
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        loader = GlobalHydra.instance().config_loader()
        master = loader.load_configuration("config", overrides=[], run_mode=RunMode.MULTIRUN)
        deriving = DerivingConfigLoader(loader)
        cells = [
            ["clusterer.n_clusters=5", "preprocess.pca_components=10"],
            ["clusterer.n_clusters=7", "preprocess.pca_components=null"],
            ["clusterer=hdbscan", "clusterer.min_cluster_size=9"],
            ["clusterer=hdbscan", "clusterer.min_cluster_size=12"],
            ["clusterer.n_clusters=9", "preprocess.pca_components=20", "seed=3"],
        ]
        for overrides in cells:
            derived = deriving.load_sweep_config(master, overrides)
            composed = loader.load_sweep_config(master, overrides)
            assert _container(derived) == _container(composed), overrides
        # the second cell of each structure was derived, not composed
        assert len(deriving._templates) == 3
        # a derived config does not leak into the next one
        again = deriving.load_sweep_config(master, ["clusterer.n_clusters=5", "preprocess.pca_components=10"])
        assert again.clusterer.n_clusters == 5 and again.preprocess.pca_components == 10
    GlobalHydra.instance().clear()


def test_a_launcher_failure_is_said_in_one_line_with_what_to_do():
    from hydra_plugins.embclust_sweeper.embclust_sweeper import launcher_failure

    generic = launcher_failure(RuntimeError("cluster went away\n  detail line"))
    assert generic.startswith("the launcher failed: RuntimeError: cluster went away;") and "\n" not in generic
    assert "run the same command again to resume" in generic


def test_a_worker_killed_is_blamed_on_memory_only_for_sigkill():
    from hydra_plugins.embclust_sweeper.embclust_sweeper import launcher_failure

    text = "A worker process managed by the executor was unexpectedly terminated. The exit codes of the workers are {}"
    oom = launcher_failure(RuntimeError(text.format("{SIGKILL(-9)}")))
    assert "killed (SIGKILL), often by the system for lack of memory" in oom and "hydra.launcher.n_jobs" in oom
    term = launcher_failure(RuntimeError(text.format("{SIGTERM(-15)}")))
    assert "memory" not in term and "stopped by a signal from outside the sweep" in term
    assert "(exit codes {SIGTERM(-15)})" in term and "run the same command again to resume" in term
