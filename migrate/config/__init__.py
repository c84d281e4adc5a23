"""Scenarios: configs/default.toml, a user's file deep-merged over it, then --set.

The TOML speaks in units ("1GiB", "300ms") and hyphenated keys; the model and
the engine take numbers in named units (memory_pages, downtime_limit_ns). This
package is the one place that converts, and it checks everything on the way:
an unknown key, a wrong type or a bad value is a `ConfigError` whose one-line
message names the key and the value. One module per job:

- `reader`: the typed TOML reader (`Table`, `read_toml`, `ConfigError`);
- `schema`: how a key is declared once (`key()`, its `Kind`) and what is derived from it;
- `params`: [migration] and [link], this package's own parameters;
- `specs`: [guest] and [mmu], translated to vmmodel's specs;
- `costs`: cost tables, by name, path or inline, each constant bounded;
- `host`: whether the model fits this host's memory;
- `scenario`: the Scenario, merging, `--set`, loading.
"""

from migrate.config.costs import CONFIGS_DIR, COST_CEILINGS_NS, COSTS_DIR
from migrate.config.params import (
    COMPRESSIONS,
    MAX_BATCH_PAGES,
    MAX_LATENCY_NS,
    MIN_BANDWIDTH_BPS,
    NO_CONVERGENCE_POLICIES,
    LinkParams,
    MigrationParams,
)
from migrate.config.reader import ConfigError
from migrate.config.scenario import (
    CLOCKS,
    DEFAULT_CONFIG,
    Scenario,
    apply_override,
    load_scenario,
    scenario_from_dict,
)
from migrate.config.specs import HUGE_PAGE_SIZE, KNOWN_STRATEGIES

__all__ = [
    "CLOCKS", "COMPRESSIONS", "CONFIGS_DIR", "COSTS_DIR", "COST_CEILINGS_NS", "DEFAULT_CONFIG",
    "HUGE_PAGE_SIZE", "KNOWN_STRATEGIES", "MAX_BATCH_PAGES", "MAX_LATENCY_NS",
    "MIN_BANDWIDTH_BPS", "NO_CONVERGENCE_POLICIES", "ConfigError", "LinkParams",
    "MigrationParams", "Scenario", "apply_override", "load_scenario", "scenario_from_dict",
]
