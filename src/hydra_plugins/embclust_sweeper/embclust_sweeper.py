"""``hydra/sweeper=embclust``: Hydra's grid sweeper with each cell's config derived, not recomposed.

Hydra composes every cell's config from scratch twice (once to validate the batch, once to launch
it), about a quarter of a second each with embclust's config groups: more than a light cell's
own work on small data. Cells of a grid differ mostly in plain values (``clusterer.n_clusters=20``),
so this sweeper composes one config per distinct set of config-group choices and derives the
others by applying their value overrides, exactly as Hydra applies command-line overrides after
composition. Cells that choose other config groups (``clusterer=hdbscan``) are composed in full.
Any launcher (basic, joblib, ray) works with it: they all get their configs from the same loader.
"""


import copy
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_loader import ConfigLoader
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import OverrideType
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict


@dataclass
class EmbclustSweeperConf:
    _target_: str = "hydra_plugins.embclust_sweeper.embclust_sweeper.EmbclustSweeper"
    max_batch_size: Optional[int] = None
    params: Optional[Dict[str, str]] = None


ConfigStore.instance().store(group="hydra/sweeper", name="embclust", node=EmbclustSweeperConf, provider="embclust")


def _is_value_override(override) -> bool:
    """A plain ``a.b=value`` change of an existing key (config groups are paths without dots)."""
    key = override.key_or_group
    return (
        override.type == OverrideType.CHANGE
        and override.package is None
        and not override.is_hydra_override()
        and not override.is_sweep_override()
        and "." in key
        and "/" not in key
    )


class DerivingConfigLoader:
    """A config loader that composes one config per set of group choices and derives the rest."""

    def __init__(self, inner: ConfigLoader) -> None:
        self._inner = inner
        self._parser = OverridesParser.create()
        self._templates: Dict[tuple, DictConfig] = {}
        # Configs made while the sweeper validated a batch, handed to the launcher once.
        self._validated: Dict[tuple, DictConfig] = {}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_inner", "_parser", "_templates"):
            raise AttributeError(name)  # pickling (joblib workers) must not recurse
        return getattr(self._inner, name)

    def load_sweep_config(self, master_config: DictConfig, sweep_overrides: List[str]) -> DictConfig:
        made = self._validated.pop(tuple(sweep_overrides), None)
        if made is not None:
            return made
        return self._derive(master_config, sweep_overrides)

    def validate(self, master_config: DictConfig, batch) -> None:
        """Make every config of ``batch`` now (errors surface before any cell runs); keep them."""
        for overrides in batch:
            self._validated[tuple(overrides)] = self._derive(master_config, list(overrides))

    def _derive(self, master_config: DictConfig, sweep_overrides: List[str]) -> DictConfig:
        parsed = self._parser.parse_overrides(list(sweep_overrides))
        values = [o for o in parsed if _is_value_override(o)]
        structure = tuple(o.input_line for o in parsed if not _is_value_override(o))
        signature = (structure, tuple(sorted(o.key_or_group for o in values)))
        template = self._templates.get(signature)
        if template is None:
            cfg = self._inner.load_sweep_config(master_config, list(sweep_overrides))
            self._templates[signature] = copy.deepcopy(cfg)
            return cfg
        cfg = copy.deepcopy(template)
        ConfigLoaderImpl._apply_overrides_to_config(values, cfg)
        with open_dict(cfg.hydra):
            cfg.hydra.overrides.task = [o.input_line for o in parsed]
            cfg.hydra.job.override_dirname = get_overrides_dirname(
                overrides=list(parsed),
                kv_sep=cfg.hydra.job.config.override_dirname.kv_sep,
                item_sep=cfg.hydra.job.config.override_dirname.item_sep,
                exclude_keys=cfg.hydra.job.config.override_dirname.exclude_keys,
            )
        OmegaConf.copy_cache(from_config=master_config, to_config=cfg)
        return cfg


class EmbclustSweeper(BasicSweeper):
    """Hydra's basic (grid) sweeper over a :class:`DerivingConfigLoader`."""

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        loader = DerivingConfigLoader(hydra_context.config_loader)
        context = HydraContext(config_loader=loader, callbacks=hydra_context.callbacks)
        super().setup(hydra_context=context, task_function=task_function, config=config)
        self.launcher = ReportingLauncher(self.launcher)
        self._loader = loader

    def validate_batch_is_legal(self, batch) -> None:
        try:
            self._loader.validate(self.config, batch)
        except Exception as exc:  # the error's own line says what was wrong; the parent records it
            from embclust.console import config_error_line
            from embclust.sweep.callback import end_failed_sweep

            reason = config_error_line(exc).removeprefix("config error: ")
            end_failed_sweep(f"a cell's config cannot be composed: {reason}", say=False)
            raise


class ReportingLauncher:
    """A launcher whose failure as a whole ends the sweep in one line, not Hydra's traceback.

    A cell's own errors end its run and never reach here; what does is the launcher itself failing
    (a joblib worker process killed, often for lack of memory).
    """

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def launch(self, job_overrides, initial_job_idx: int):
        try:
            return self._inner.launch(job_overrides, initial_job_idx=initial_job_idx)
        except Exception as exc:  # noqa: BLE001 - the sweep ends here, with the reason
            from embclust import signals
            from embclust.sweep.callback import end_failed_sweep

            if signals.received is not None:  # a stop signal: the sweep ends KILLED, as any stopped sweep
                raise SystemExit(signals.received.exit_code) from None
            end_failed_sweep(launcher_failure(exc))
            raise SystemExit(1) from None


def launcher_failure(exc: BaseException) -> str:
    """One line saying why the launcher stopped the sweep and what to do."""
    text = str(exc)
    codes = re.search(r"exit codes of the workers are (\{[^}]*\})", text)
    if type(exc).__name__ == "TerminatedWorkerError" or codes:
        how = f" (exit codes {codes.group(1)})" if codes else ""
        said = codes.group(1) if codes else ""
        if "SIGKILL" in said or not said:  # the kernel's out-of-memory killer sends SIGKILL
            why = "killed (SIGKILL), often by the system for lack of memory"
            fewer = ", with fewer cells at once (hydra.launcher.n_jobs) if memory ran out"
        else:  # SIGTERM, SIGINT, ...: stopped by someone or something else, or a crash (SIGSEGV)
            why = "stopped by a signal from outside the sweep, or a crash"
            fewer = ""
        return (
            f"a worker process of the launcher ended while it ran a cell{how}: {why}; finished cells are kept: "
            f"run the same command again to resume the others{fewer}"
        )
    from embclust.errors import first_line

    return f"the launcher failed: {type(exc).__name__}: {first_line(exc)}; finished cells are kept: run the same command again to resume"
