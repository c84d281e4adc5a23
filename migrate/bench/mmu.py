"""`precopy bench mmu`: how fast the model runs, and the seed's crossover in modeled time.

Three wall-clock figures of the emulator itself, each with its target:

- `writes-per-s`: guest writes processed per wall second (`uniform`, 1 GiB, tdp, dirty
  logging on, every page already faulted in and writable: the guest's hot path);
- `walk-16g-ms`: one `walk` harvest of a fully mapped 16 GiB tdp guest;
- `rmap-ns-per-gfn`: one `rmap` harvest of the same guest, per dirty gfn (100k dirty).

And `crossover`: for each MMU shape and each dirty ratio (dirty pages / n_used_mmu_pages)
from 0.1 % to 1000 %, the modeled kernel time of a `walk` and of an `rmap` harvest of the
same dirty set, and the branch the seed's heuristic takes: "write protection became some
times faster than before when the ratio of dirty pages are low and was not worse even when
the ratio was near the criterion", in numbers.

Pure compute: no asyncio, no files. Everything but the wall times is deterministic.
"""

from __future__ import annotations

import gc
import os
import platform
import statistics
import time
from dataclasses import dataclass

import numpy as np

from vmmodel import CostTable, GuestSpec, MmuSpec, Vm, WorkloadSpec

TARGETS = {"writes-per-s": 20e6, "walk-16g-ms": 30.0, "rmap-ns-per-gfn": 300.0}
RATIOS = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
SEED = 1


@dataclass(frozen=True)
class Sizes:
    write_pages: int  # guest of the writes-per-s figure
    write_rate: float  # writes/s asked of the workload
    write_warmup_ns: float
    write_run_ns: float
    write_runs: int
    big_pages: int  # guest of the walk and rmap figures
    rmap_dirty: int  # dirty gfns per timed harvest
    harvest_runs: int
    crossover_pages: int
    shadow: MmuSpec  # shape of the crossover's shadow-paging guest


# A 1 GiB shadow guest run by 16 processes that each map 256 MiB (a quarter of it shared by
# all): n_used_mmu_pages is ~5x the tdp guest's, and a gfn has up to 17 sptes.
FULL = Sizes(write_pages=262_144, write_rate=50e6, write_warmup_ns=0.1e9, write_run_ns=0.2e9,
             write_runs=3, big_pages=4 << 20, rmap_dirty=100_000, harvest_runs=5,
             crossover_pages=262_144,
             shadow=MmuSpec(shape="shadow", address_spaces=16, mapped_pages=65_536, shared=0.25))
QUICK = Sizes(write_pages=16_384, write_rate=5e6, write_warmup_ns=5e6, write_run_ns=10e6,
              write_runs=3, big_pages=1 << 16, rmap_dirty=4_000, harvest_runs=3,
              crossover_pages=16_384,
              shadow=MmuSpec(shape="shadow", address_spaces=4, mapped_pages=4_096, shared=0.25))


def _idle_guest(pages: int, mmu: MmuSpec) -> Vm:
    """An idle, paused guest with every possible spte faulted in and dirty logging on."""
    guest = GuestSpec(memory_pages=pages, workload=WorkloadSpec(kind="idle", prefill=False))
    vm = Vm(guest, mmu, CostTable(), seed=SEED)
    vm.mmu.fault_in(np.flatnonzero(vm.mmu.spte_gfn >= 0))
    vm.enable_dirty_logging()
    vm.pause()
    return vm


# ---------------------------------------------------------------- wall-clock figures


def writes_per_s(sizes: Sizes) -> float:
    """Median guest writes per wall second of timed `advance` runs."""
    workload = WorkloadSpec(kind="uniform", rate=sizes.write_rate)
    vm = Vm(GuestSpec(memory_pages=sizes.write_pages, workload=workload), MmuSpec(shape="tdp"),
            CostTable(), seed=SEED)
    vm.prefill()
    vm.enable_dirty_logging()
    vm.advance(sizes.write_warmup_ns)  # every page faults once, then the steady state
    rates = []
    for _ in range(sizes.write_runs):
        writes = vm.stats.writes
        t0 = time.perf_counter()
        vm.advance(sizes.write_run_ns)
        rates.append((vm.stats.writes - writes) / (time.perf_counter() - t0))
    return float(statistics.median(rates))


def harvest_wall_times(sizes: Sizes) -> tuple[float, float]:
    """(median ms of a walk harvest, median ns per dirty gfn of an rmap harvest)."""
    vm = _idle_guest(sizes.big_pages, MmuSpec(shape="tdp"))
    rng = np.random.default_rng(SEED)
    ram = vm.slot(0)
    timings: dict[str, list[float]] = {"walk": [], "rmap": []}
    for strategy in ("walk", "rmap"):
        for _ in range(sizes.harvest_runs):
            gfns = np.sort(rng.choice(ram.npages, sizes.rmap_dirty, replace=False))
            vm.mmu.make_writable(gfns)  # tdp: spte id == gfn
            ram.mark_page_dirty(gfns)
            t0 = time.perf_counter_ns()
            result = vm.harvest(ram.id, strategy)
            elapsed = time.perf_counter_ns() - t0
            if len(result.gfns) != sizes.rmap_dirty or result.tlb_flushes != 1:
                raise RuntimeError(f"bench: {strategy} harvested {len(result.gfns)} gfns")
            timings[strategy].append(
                elapsed / 1e6 if strategy == "walk" else elapsed / sizes.rmap_dirty)
    del vm
    gc.collect()
    return float(statistics.median(timings["walk"])), float(statistics.median(timings["rmap"]))


# ---------------------------------------------------------------- crossover


def crossover(sizes: Sizes) -> list[dict]:
    """Modeled cost of walk vs rmap on the same dirty set, per shape and dirty ratio."""
    records = []
    for mmu in (MmuSpec(shape="tdp"), sizes.shadow):
        vm = _idle_guest(sizes.crossover_pages, mmu)
        n_used = vm.mmu.n_used_mmu_pages
        rng = np.random.default_rng(SEED)
        for ratio in RATIOS:
            count = min(max(1, round(ratio * n_used)), vm.slot(0).npages)
            gfns = rng.choice(vm.slot(0).npages, count, replace=False)
            results = {}
            for strategy in ("walk", "rmap", "heuristic"):
                vm.write(0, gfns)  # the guest is paused: nothing else writes
                results[strategy] = result = vm.harvest(0, strategy)
                if len(result.gfns) != count or result.n_used_mmu_pages != n_used:
                    raise RuntimeError(f"bench: {strategy} on {mmu.shape} saw "
                                       f"{len(result.gfns)} of {count} dirty pages")
            records.append({
                "shape": mmu.shape,
                "ratio": ratio,
                "dirty-pages": int(results["walk"].nr_dirty_pages),
                "n-used-mmu-pages": int(n_used),
                "walk-modeled-ns": round(results["walk"].kernel_ns),
                "rmap-modeled-ns": round(results["rmap"].kernel_ns),
                "heuristic-branch": results["heuristic"].branch,
            })
        del vm
        gc.collect()
    return records


# ---------------------------------------------------------------- entry points


def run(quick: bool = False) -> dict:
    """Measure everything; `quick` uses small sizes (same keys) for a smoke test."""
    sizes = QUICK if quick else FULL
    rate = writes_per_s(sizes)
    walk_ms, rmap_ns = harvest_wall_times(sizes)
    figures = {"writes-per-s": rate, "walk-16g-ms": walk_ms, "rmap-ns-per-gfn": rmap_ns}
    return {
        **{key: round(value, 3) for key, value in figures.items()},
        "crossover": crossover(sizes),
        "targets": dict(TARGETS),
        "met": {
            "writes-per-s": rate >= TARGETS["writes-per-s"],
            "walk-16g-ms": walk_ms <= TARGETS["walk-16g-ms"],
            "rmap-ns-per-gfn": rmap_ns <= TARGETS["rmap-ns-per-gfn"],
        },
        "quick": quick,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "cpu-count": os.cpu_count() or 1,
    }


def _cheaper(record: dict) -> str:
    return "rmap" if record["rmap-modeled-ns"] < record["walk-modeled-ns"] else "walk"


def format_table(result: dict) -> str:
    """The figures against their targets, then the crossover table."""
    met = result["met"]
    targets = result["targets"]
    rows = [
        ("writes-per-s", f"{result['writes-per-s'] / 1e6:.1f} M/s",
         f">= {targets['writes-per-s'] / 1e6:.0f} M/s"),
        ("walk-16g-ms", f"{result['walk-16g-ms']:.2f} ms", f"<= {targets['walk-16g-ms']:g} ms"),
        ("rmap-ns-per-gfn", f"{result['rmap-ns-per-gfn']:.0f} ns",
         f"<= {targets['rmap-ns-per-gfn']:g} ns"),
    ]
    title = "precopy bench mmu" + (" (quick: small sizes)" if result.get("quick") else "")
    lines = [
        f"{title}: python {result['python']}, numpy {result['numpy']}, "
        f"{result['cpu-count']} CPUs",
        "",
        f"{'figure':<18}{'value':>14}  {'target':<14}met",
    ]
    lines += [f"{key:<18}{value:>14}  {target:<14}{'yes' if met[key] else 'NO'}"
              for key, value, target in rows]
    lines += [
        "",
        "crossover: modeled kernel time of one harvest of the same dirty set",
        "(ratio = dirty pages / n_used_mmu_pages; the heuristic takes rmap below 1)",
        "",
    ]
    header = (f"{'shape':<7}{'ratio':>7}{'dirty':>8}{'n-used':>8}{'walk-us':>10}"
              f"{'rmap-us':>10}{'walk/rmap':>10}  {'cheaper':<8}{'heuristic':<10}"
              f"heuristic-picks-cheaper")
    lines.append(header)
    for r in result["crossover"]:
        cheaper = _cheaper(r)
        speedup = r["walk-modeled-ns"] / r["rmap-modeled-ns"] if r["rmap-modeled-ns"] else 0.0
        lines.append(
            f"{r['shape']:<7}{r['ratio'] * 100:>6g}%{r['dirty-pages']:>8}"
            f"{r['n-used-mmu-pages']:>8}{r['walk-modeled-ns'] / 1e3:>10.1f}"
            f"{r['rmap-modeled-ns'] / 1e3:>10.1f}{speedup:>10.2f}  {cheaper:<8}"
            f"{r['heuristic-branch']:<10}{'yes' if r['heuristic-branch'] == cheaper else 'no'}"
        )
    return "\n".join(lines)
