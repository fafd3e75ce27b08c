"""What a sweep's parent run records of its grid, and the check of its swept config groups.

A swept key is given with the values its cells take; keys that differ between cells are left
out of the parent's params; a swept group's options are checked on the search path the cells
are composed from, before any run is made.
"""

from __future__ import annotations

import difflib
import functools
from typing import Any

from omegaconf import DictConfig, OmegaConf

from embclust import tracking
from embclust.errors import ConfigError


def _group_options(key: str, config: DictConfig) -> list[str] | None:
    """The options of config group ``key`` on the cells' search path ([] for a value key), None if unknown."""
    from hydra.core.global_hydra import GlobalHydra

    if not GlobalHydra.instance().is_initialized():
        return None
    hydra_overrides = tuple(str(o) for o in config.hydra.overrides.get("hydra", []))
    return _cached_group_options(key, config.hydra.job.get("config_name"), hydra_overrides)


@functools.lru_cache(maxsize=64)
def _cached_group_options(key: str, config_name: str | None, hydra_overrides: tuple[str, ...]) -> list[str] | None:
    from hydra.core.global_hydra import GlobalHydra

    try:
        return GlobalHydra.instance().config_loader().get_group_options(key, config_name=config_name,
                                                                        overrides=list(hydra_overrides))
    except Exception:  # noqa: BLE001 - Hydra says what is wrong when the cell is composed
        return None


def check_swept_options(swept: dict[str, list | None], config: DictConfig) -> None:
    """Every option of a swept config group exists (``clusterer=kmeans,kmeanz``), before any run.

    Hydra composes a cell's config only when the cell is launched: a misspelt option would
    otherwise be found after the sweep's parent run was made. The options are looked up on the
    search path the cells get (``hydra.searchpath`` in config.yaml or on the command line).
    """
    for key, values in swept.items():
        options = _group_options(key, config) if values else None
        if not options:
            continue
        missing = [str(v) for v in values if str(v) not in options]
        if missing:
            raise ConfigError(
                f"Could not find '{key}/{missing[0]}' (the values of {key} are config files in a {key}/ folder "
                f"of the config path; allowed: {', '.join(options)})"
            )


def check_cells_compose(swept: dict[str, list | None], config: DictConfig) -> None:
    """Hydra composes the grid's cells before any run: one for each option of each swept group.

    A swept key that a cell's config does not have (``+experiment=rag_documents``'s grid of
    ``clusterer.n_clusters`` with ``clusterer=hdbscan``) would otherwise be found when the first
    cell is launched, after the sweep's parent run and its dataset (embedding every text).
    """
    import re

    from hydra.core.global_hydra import GlobalHydra

    from embclust.sweep.plan import grid_cells

    cells = grid_cells(config) if GlobalHydra.instance().is_initialized() else None
    if not cells:
        return
    groups = {k for k, values in swept.items() if values and _group_options(k, config)}
    chosen: list[list[str]] = []
    seen: set[str] = set()
    for cell in cells:  # the fewest cells that take every option of every swept group
        options = {o for o in cell if o.partition("=")[0].lstrip("+~") in groups}
        if not chosen or not options <= seen:
            chosen.append(cell)
            seen |= options
    loader = GlobalHydra.instance().config_loader()
    for cell in chosen:
        try:
            loader.load_sweep_config(config, list(cell))
        except Exception as exc:  # noqa: BLE001 - said as one line naming the key, below
            found = re.search(r"Could not override '([^']+)'", str(exc))
            if found is None:
                raise ConfigError(f"a cell of the grid cannot be composed ({' '.join(cell)}): {str(exc).splitlines()[0]}") from None
            raise ConfigError(_missing_key_message(found.group(1), cell, config)) from None


def _missing_key_message(key: str, cell: list[str], config: DictConfig) -> str:
    """'the grid sets KEY, which clusterer=hdbscan does not have (its keys: ...)' and what to do."""
    from hydra.core.global_hydra import GlobalHydra

    group = key.split(".")[0]
    choice = next((o.partition("=")[2] for o in cell if o.partition("=")[0].lstrip("+~") == group), None)
    choice = choice or config.hydra.runtime.choices.get(group)
    where = ("in hydra.sweeper.params (the grid of an experiment or sweep config)"
             if key in (config.hydra.sweeper.get("params") or {}) else "on the command line")
    has, fix = "", "sweep a key it has"
    try:
        rest = [o for o in cell if o.partition("=")[0].lstrip("+~") != key]
        composed = GlobalHydra.instance().config_loader().load_sweep_config(config, rest)
        parent, _, leaf = key.lstrip("+~").rpartition(".")
        node = OmegaConf.select(composed, parent) if parent else None
        if isinstance(node, DictConfig):
            keys = [str(k) for k in node.keys() if not str(k).startswith("_")]
            has = f" (its keys: {', '.join(keys)})"
            close = difflib.get_close_matches(leaf, keys, n=1, cutoff=0.8)
            if close:
                fix = f"did you mean {parent}.{close[0]}? Otherwise sweep a key it has"
    except Exception:  # noqa: BLE001 - the keys are a hint only
        pass
    if where.startswith("in hydra"):
        fix += ", or drop that grid with hydra.sweeper.params=null"
    what = f"{group}={choice}" if choice else f"the config at {key.rpartition('.')[0]}"
    return f"the grid sets {key} {where}, which {what} does not have{has}: {fix}"


def parent_params(task_cfg: DictConfig, swept: dict[str, list | None], config: DictConfig | None = None,
                  leave_out: tuple[str, ...] = ()) -> dict[str, Any]:
    """The sweep parent's params: what every cell shares, and each swept key with its values.

    A swept key logs the values its cells take (``"10,20,30"``, or ``"chosen by the sweeper"``
    for a range the sweeper picks from) instead of the base config's default, which no cell
    may use. Keys that differ between cells are left out: those that interpolate a swept key
    (``clusterer.random_state: ${seed}``) and those a swept group sets (``clusterer=kmeans,hdbscan``,
    found by composing one config per option), except where an override sets them for every cell.
    Top-level sections in ``leave_out`` (where runs are stored, the sweep's own settings) are not logged.
    """
    flat = tracking.flatten_config(task_cfg)
    raw = tracking.flatten_config(OmegaConf.to_container(task_cfg, resolve=False))
    fixed = _override_keys(config) - set(swept)
    varying = {k for k, v in raw.items() if isinstance(v, str) and "${" in v and any(key in v for key in swept)}
    for key, values in swept.items():
        varying |= _keys_set_by_group(key, values, flat, config, swept)
    params = {k: v for k, v in flat.items() if k.split(".")[0] not in leave_out and (k not in varying or k in fixed)}
    for key, values in swept.items():
        if key.split(".")[0] not in leave_out:
            params[key] = "chosen by the sweeper" if values is None else ",".join(str(v) for v in values)
    return params


def _override_keys(config: DictConfig | None) -> set[str]:
    """The keys the command line's overrides set (``+``/``~`` dropped), swept or not."""
    if config is None:
        return set()
    return {str(o).partition("=")[0].lstrip("+~") for o in config.hydra.overrides.get("task", [])}


def _keys_set_by_group(key: str, values: list | None, base: dict[str, Any], config: DictConfig | None,
                       swept: dict[str, list | None]) -> set[str]:
    """The flat keys whose value differs from ``base`` in some option of the swept group ``key``
    (empty for a key that is not a group); every key under ``key`` where that cannot be composed."""
    under = {k for k in base if k == key or k.startswith(f"{key}.")}
    if config is None or not values:
        return under
    options = _group_options(key, config)
    if options is None:
        return under
    if not options:
        return set()  # a value key, not a group
    from hydra.core.global_hydra import GlobalHydra

    loader = GlobalHydra.instance().config_loader()
    try:
        fixed = [str(o) for o in config.hydra.overrides.get("task", []) if str(o).partition("=")[0].lstrip("+~") not in swept]
        plus = next((str(o)[0] for o in config.hydra.overrides.get("task", [])
                     if str(o).partition("=")[0].lstrip("+~") == key and str(o)[0] in "+~"), "")
        differ = set()
        for value in values:
            composed = loader.load_sweep_config(config, [*fixed, f"{plus}{key}={value}"])
            cell = tracking.flatten_config(OmegaConf.create({k: v for k, v in composed.items() if k != "hydra"}))
            differ |= {k for k in set(cell) | set(base) if cell.get(k, _ABSENT) != base.get(k, _ABSENT)}
        return differ
    except Exception:  # noqa: BLE001 - params are a record, never a reason to stop the sweep
        return under


_ABSENT = object()
