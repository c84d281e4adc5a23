"""A recorded run -> the precopy scenario configured like it.

Everything comes from the record (its config, QEMU's parameters and
capabilities, the guest's own heartbeats, the polls) or from the reference
guest (`other_nonzero_pages`), except what precopy adds to model it, each
chosen below with its reason: the link, the clock, the seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from migrate.config import HUGE_PAGE_SIZE, ConfigError, Scenario, scenario_from_dict
from migrate.config.params import MAX_ITERATIONS, QEMU_VERSIONS
from migrate.validate.records import RecordError, RunRecord
from vmmodel import PAGE_SIZE

MIB = 1 << 20
COSTS = "qemu-7.2-tcg"  # the reference host's table (configs/costs/qemu/)
SEED = 1
# The link: both QEMUs ran on one host over tcp:127.0.0.1, so the wire is a loopback, not
# the bound: QEMU's own CPU is, and the cost table has it (page_ns, stopped_page_ns). The
# fastest the traces show is a completion, with the rate limit lifted and the vCPU
# stopped: 102 MB in 32 ms (3.2 GB/s, r20000-bw400; 2.5 GB/s in r60000-bw400), CPU-bound
# at stopped_page_ns. A link at the 10 Gbit/s default (1.25 GB/s) would cap that at less
# than half; 32 Gbit/s (4 GB/s) is above every rate in the traces and of the order one TCP
# stream between two processes carries on a 2-core host of this kind (precopy's own
# `bench scale` measured 3.9 GB/s through the loopback on the team's 2-core Xeon), so the
# cost table, not the link, sets every rate, as in the traces.
LINK_BANDWIDTH = "32Gbit/s"
LINK_LATENCY = "20us"  # one way on a loopback: a round trip between two processes, ~tens of us
# QEMU's throttle (cpu_throttle_timer_tick, cpu_throttle_thread; vmmodel's throttle
# schedule is the same): a vCPU runs 10 ms per period and sleeps 10 ms x p / (1 - p).
THROTTLE_RUN_MS = 10.0  # CPU_THROTTLE_TIMESLICE_NS
MIGRATION_KEYS = {  # precopy's [migration] key <- QEMU's migration parameter
    "throttle-trigger-threshold": "throttle_trigger_threshold",
    "cpu-throttle-initial": "cpu_throttle_initial",
    "cpu-throttle-increment": "cpu_throttle_increment",
    "cpu-throttle-max": "max_cpu_throttle",
    "cpu-throttle-tailslow": "cpu_throttle_tailslow",
}


@dataclass(frozen=True)
class Configured:
    """A record's scenario, and the figures it was derived from (shown by `--json`)."""

    record: RunRecord
    scenario: Scenario
    config: dict[str, Any]  # the scenario in TOML spelling, as given to the loader (--json)
    rate: float  # the dirtier's unthrottled writes per second
    paced_share: float  # of that rate, what the throttle the trace shows let it write


def paced_share(record: RunRecord) -> float:
    """The share of its rate a paced guest writes under the throttle the polls show,
    time-weighted over the active polls: per throttle period it writes its rate for the
    10 ms it runs and, woken, the backlog of the sleep up to max-lag (the reference
    guest's pacing; vmmodel's `paced` workloads, README "The model"). 1 when unthrottled.
    """
    p = record.progress
    active = p.active()
    if "cpu-throttle-percentage" not in p.columns or active.sum() < 2:
        return 1.0
    t = p.t[active]
    pct = np.nan_to_num(p["cpu-throttle-percentage"][active])
    lag_ms = record.config.maxlag_ms
    shares = []
    for percent in pct[:-1]:
        share = min(float(percent), 99.0) / 100  # cpu_throttle_set clamps to 1..99
        sleep_ms = THROTTLE_RUN_MS * share / (1 - share)
        shares.append(min(1.0, (THROTTLE_RUN_MS + min(sleep_ms, lag_ms))
                          / (THROTTLE_RUN_MS + sleep_ms)))
    dt = np.diff(t)
    return float(np.dot(shares, dt) / dt.sum()) if dt.sum() > 0 else 1.0


def unthrottled_rate(record: RunRecord) -> tuple[float, float]:
    """The dirtier's writes per second to give precopy's guest, and the paced share.

    The rate the program ran at before the migration (`rate_before_mean`): its own, not
    an outcome of the migration. During the migration it wrote less
    (`rate_during_mean`) for reasons the model has of its own: its vCPU waits for the
    BQL while setup and each sync hold it, under TCG (the cost table's
    `sync_holds_vcpus`, measured from the guest's longest gap), and catches up at most
    `max-lag` of backlog after (it dropped the rest: `dropped_during`); with
    auto-converge it is throttled too, on QEMU's schedule. Giving the model the mean
    during the migration would count those twice. `paced_share` (the share of its rate
    a paced guest writes under the trace's own throttle) is returned for the report.
    """
    return record.guest_src.rate_before_mean, paced_share(record)


def scenario_config(record: RunRecord, other_pages: int) -> tuple[dict[str, Any], float, float]:
    """The record's scenario in TOML spelling, the rate it uses and the paced share.

    Raise `RecordError` for a run precopy cannot configure like it (a QEMU release
    whose loop it does not model, a guest whose memory is not whole pages).
    """
    c, q = record.config, record.parameters
    version = record.qemu_version
    if version not in QEMU_VERSIONS:
        raise RecordError(f"{record.source}: QEMU {version}: precopy models the precopy loop "
                          f"of {', '.join(QEMU_VERSIONS)} only")
    total = record.ram_total_bytes
    if total % PAGE_SIZE:
        raise RecordError(f"{record.source}: ram.total {total} is not whole 4 KiB pages")
    # QEMU's ram.total is every migratable RAMBlock: the RAM (here 1 GiB less 8 KiB) and
    # the ROMs (pc.bios, pc.rom, ...), each its own block, dirty-logged and sent like RAM.
    # precopy takes RAM in whole 2 MiB, so the guest is `ram.total` exactly as RAM to the
    # 2 MiB below and the rest as a second memslot (the framebuffer slot, which nothing
    # writes: 512 KiB of zero pages), as the ROMs are blocks of their own in QEMU. The
    # ROMs' data is counted in `other_pages` instead.
    ram = total // HUGE_PAGE_SIZE * HUGE_PAGE_SIZE
    rest = total - ram
    dirty_pages = round(c.dirty_mb * MIB / PAGE_SIZE)
    if not 0 < dirty_pages <= ram // PAGE_SIZE:
        raise RecordError(f"{record.source}: config.dirty_mb {c.dirty_mb:g} does not fit "
                          f"the guest's {ram // MIB} MiB")
    rate, share = unthrottled_rate(record)
    nonzero = min(dirty_pages + max(other_pages, 0), ram // PAGE_SIZE)
    dirtier = {
        "kind": "uniform" if c.pattern == "random" else "sequential",
        "rate": round(rate, 3),
        "working-set": dirty_pages * PAGE_SIZE,
        "prefill": True,
        "pacing": "paced",  # paced in 1 ms ticks, catching up at most max-lag (README)
        "max-lag": f"{c.maxlag_ms:g}ms",
    }
    # The rest of the guest's data (kernel, initramfs, the ROMs' contents): prefilled and
    # still. Parts start at the slot's start, so its working set covers the dirtier's too.
    others = {"kind": "idle", "working-set": nonzero * PAGE_SIZE, "prefill": True}
    data: dict[str, Any] = {
        "seed": SEED,
        "clock": "virtual",  # deterministic: the same prediction on any host
        "guest": {
            "memory": ram,
            "vga": rest > 0,
            "vga-memory": rest if rest else HUGE_PAGE_SIZE,
            "vcpus": c.smp,
            "workload": {"kind": "mix", "parts": [dirtier, others]},
        },
        "mmu": {"shape": "tdp"},
        "migration": {
            "qemu-version": version,
            "costs": COSTS,
            "max-bandwidth": q.max_bandwidth_bytes_s,
            "downtime-limit": f"{q.downtime_limit_ms:g}ms",
            "auto-converge": record.auto_converge,
            **{key: getattr(q, name) for key, name in MIGRATION_KEYS.items()},
            # The harness cancels at timeout_s; it does not count passes.
            "max-time": f"{c.timeout_s:g}s",
            "on-no-convergence": "cancel",
            "max-iterations": MAX_ITERATIONS,
        },
        "link": {"bandwidth": LINK_BANDWIDTH, "latency": LINK_LATENCY},
    }
    return data, rate, share


def configure(record: RunRecord, other_pages: int, overrides: Sequence[str] = ()) -> Configured:
    """The precopy scenario for *record*; *overrides* are `--set` strings on top.

    Raise `RecordError` as `scenario_config` does, or naming the run for a scenario
    precopy refuses.
    """
    data, rate, share = scenario_config(record, other_pages)
    try:
        scenario = scenario_from_dict(data, overrides)
    except ConfigError as err:
        raise RecordError(f"{record.source}: run {record.name}: {err}") from None
    return Configured(record, scenario, data, rate, share)
