"""Entry point: ``python run.py [overrides]`` or ``python run.py -m [sweep overrides]``."""

from embclust import signals

signals.catch_early_interrupt()  # before the imports below: a stop during them is not lost

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from embclust import console, runner  # noqa: E402


@hydra.main(version_base=None, config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    console.quiet_libraries(verbose=console.hydra_verbose())
    return runner.run(cfg)


if __name__ == "__main__":
    import os
    import sys

    # A `_target_` of the user's own (analysis.keywords.labeler: {_target_: mylabels.name}) is found in
    # the folder they run from, after every installed package.
    sys.path.append(os.getcwd())

    console.check_hydra_output_dir(sys.argv[1:])
    console.log_file_errors_once()
    console.one_line_config_errors()
    console.exit_without_teardown(main)
