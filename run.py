"""Entry point: ``python run.py [overrides]`` or ``python run.py -m [sweep overrides]``."""

import hydra
from omegaconf import DictConfig

from embclust import console, runner


@hydra.main(version_base=None, config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    console.quiet_libraries(verbose=console.hydra_verbose())
    return runner.run(cfg)


if __name__ == "__main__":
    import sys

    console.check_hydra_output_dir(sys.argv[1:])
    console.exit_without_teardown(main)
