"""Migration and link parameters: this package's own, one `key()` field each.

The defaults are QEMU's (migration/options.c); the README's tables are these
fields' docs, checked by a test.
"""

from __future__ import annotations

from dataclasses import dataclass

from migrate import wire
from migrate.config.schema import Choice, Flag, Integer, Params, Rate, Text, Time, Version, key

NO_CONVERGENCE_POLICIES = ("force", "cancel")
# The QEMU releases whose precopy loop the engine runs (see migrate/source/loop.py):
# 7.2 syncs in ram_save_pending, 8.0+ in pending_exact, 9.2+ adds the periodic sync
# under auto-converge, 10.2 completes when pending is at most (not below) the threshold.
QEMU_VERSIONS = ("7.2", "9.2", "10.2")
COMPRESSIONS = ("none", "lz4")
MAX_BATCH_PAGES = 4096
# Floors and ceilings that keep a run finite: the model advances in slices and sends in
# batches, so a link of a few bytes a second or a day of latency would run for ever.
MIN_BANDWIDTH_BPS = 1000.0
MAX_LATENCY_NS = 10_000_000_000
MAX_ITERATIONS = 1_000_000  # QEMU has no such bound; max-time ends a run long before

_PERCENT = Integer(1, 99)


@dataclass(frozen=True)
class MigrationParams(Params):
    """QEMU's migration parameters (defaults are QEMU's) that steer precopy."""

    table = "migration"

    downtime_limit_ns: int = key(
        "downtime-limit", Time(), 300_000_000,
        "complete once the dirty memory still to send is below the measured bandwidth x this "
        "(QEMU's `threshold_size`; QEMU's default)")
    max_bandwidth_bps: float = key(
        "max-bandwidth", Rate(MIN_BANDWIDTH_BPS), 128.0 * 1024 * 1024,
        "the migration's rate limit (QEMU's default)")
    qemu_version: str = key(
        "qemu-version", Version(QEMU_VERSIONS), QEMU_VERSIONS[-1],
        "the QEMU release whose precopy loop runs: `7.2`, `9.2` or `10.2` (see "
        "[QEMU's loop](#qemus-loop))")
    avail_switchover_bandwidth_bps: float = key(
        "avail-switchover-bandwidth", Rate(0.0), 0.0,
        "QEMU 9.2+: the bandwidth `threshold_size` assumes in place of the measured one "
        "(`0`: measured)")
    costs: str = key(
        "costs", Text(), "none",
        "QEMU's own costs: a table in `configs/costs/qemu/` (`qemu-7.2-tcg`, the reference "
        "host) or a path; `none`: not modeled")
    max_iterations: int = key(
        "max-iterations", Integer(1, MAX_ITERATIONS), 30,
        "dirty-bitmap syncs after setup (QEMU's passes) before `on-no-convergence` applies")
    max_time_ns: int = key(
        "max-time", Time(), 120_000_000_000,
        "migration time before `on-no-convergence` applies")
    on_no_convergence: str = key(
        "on-no-convergence", Choice(NO_CONVERGENCE_POLICIES), "force",
        "`force`: switch over anyway; `cancel`: give up, the guest keeps running on the source")
    batch_pages: int = key(
        "batch-pages", Integer(1, MAX_BATCH_PAGES), 256,
        "pages per page-batch message, 1 to 4096 (256 is 1 MiB)")
    compression: str = key(
        "compression", Choice(COMPRESSIONS), "none",
        "`lz4`: each batch's normal pages as one lz4 block, sent raw when it does not shrink "
        "(see [Data path](#data-path))")
    channels: int = key(
        "channels", Integer(1, wire.MAX_CHANNELS), 1,
        "parallel page channels per pass, 1 to 16, like QEMU's multifd channels; they share "
        "the link (see [Data path](#data-path))")
    # QEMU's auto-converge capability and its cpu-throttle parameters (migration/options.c).
    auto_converge: bool = key(
        "auto-converge", Flag(), False,
        "QEMU's auto-converge: throttle the vCPUs while they dirty memory faster than it is "
        "sent (see [The model](#the-model))")
    throttle_trigger_threshold: int = key(
        "throttle-trigger-threshold", Integer(1, 100), 50,
        "auto-converge: throttle when the bytes dirtied in a period exceed this % of the bytes "
        "sent (QEMU's default)")
    cpu_throttle_initial: int = key(
        "cpu-throttle-initial", _PERCENT, 20,
        "auto-converge: the first throttle, % of vCPU time taken away (QEMU's default)")
    cpu_throttle_increment: int = key(
        "cpu-throttle-increment", _PERCENT, 10,
        "auto-converge: each further step, % (QEMU's default)")
    cpu_throttle_max: int = key(
        "cpu-throttle-max", _PERCENT, 99,
        "auto-converge: the most it takes, % (QEMU's default)")
    cpu_throttle_tailslow: bool = key(
        "cpu-throttle-tailslow", Flag(), False,
        "auto-converge: past the first step, take only what should bring the dirty rate to "
        "the threshold, at most the increment (QEMU's default: off)")


@dataclass(frozen=True)
class LinkParams(Params):
    """The wire between source and destination: its bandwidth and one-way latency."""

    table = "link"

    bandwidth_bps: float = key(
        "bandwidth", Rate(MIN_BANDWIDTH_BPS), 10e9 / 8,
        "the wire's bandwidth; the migration is also held to `max-bandwidth`")
    latency_ns: int = key(
        "latency", Time(low=0, high=MAX_LATENCY_NS), 100_000,
        "one-way latency")
