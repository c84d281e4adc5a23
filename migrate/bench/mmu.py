"""`precopy bench mmu`: how fast the model runs, and the seed's crossover in modeled time.

Three wall-clock figures of the emulator itself, each with its target:

- `writes-per-s`: guest writes processed per wall second (`uniform`, 1 GiB, tdp, dirty
  logging on, every page already faulted in and writable: the guest's hot path);
- `walk-16g-ms`: one `walk` harvest of a fully mapped 16 GiB tdp guest;
- `rmap-ns-per-gfn`: one `rmap` harvest of the same guest, per dirty gfn (100k dirty).

The targets hold for those sizes. `--quick` runs smaller guests: its walk figure is named
for the guest it walked (`walk-256m-ms`), and it judges no target (`met` is null), since a
small guest's figures say nothing about a big one's. A full run that misses a target says
which and exits 1 (`exit_code`).

And `crossover`: for each MMU shape and each dirty ratio (dirty pages / n_used_mmu_pages)
from 0.1 % to 1000 %, the modeled kernel time of a `walk` and of an `rmap` harvest of the
same dirty set, and the branch the seed's heuristic takes: "write protection became some
times faster than before when the ratio of dirty pages are low and was not worse even when
the ratio was near the criterion", in numbers.

Pure compute: no asyncio, no files. Everything but the wall times is deterministic.
"""

from __future__ import annotations

import gc
import math
import os
import platform
import statistics
import time
from dataclasses import dataclass

import numpy as np

from vmmodel import PAGE_SIZE, CostTable, GuestSpec, MmuSpec, Vm, WorkloadSpec

EXIT_MET, EXIT_MISSED = 0, 1
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



def _size_label(pages: int) -> str:
    """A guest size as a key fragment: "16g", "256m"."""
    nbytes = pages * PAGE_SIZE
    if nbytes % (1 << 30) == 0:
        return f"{nbytes >> 30}g"
    return f"{nbytes >> 20}m"


def walk_key(sizes: Sizes) -> str:
    """The walk figure's key, named for the guest that was walked."""
    return f"walk-{_size_label(sizes.big_pages)}-ms"


# The targets hold for the full sizes only.
TARGETS = {"writes-per-s": 20e6, walk_key(FULL): 30.0, "rmap-ns-per-gfn": 300.0}


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


def dirty_counts(n_used: int, npages: int) -> list[int]:
    """The dirty page counts for `RATIOS` of *n_used*, each once.

    On a small guest several ratios round to the same count (1 page of 35):
    measuring it again would print the same row under another ratio.
    """
    counts = [min(max(1, round(ratio * n_used)), npages) for ratio in RATIOS]
    return list(dict.fromkeys(counts))


def crossover(sizes: Sizes) -> list[dict]:
    """Modeled cost of walk vs rmap on the same dirty set, per shape and dirty ratio."""
    records = []
    for mmu in (MmuSpec(shape="tdp"), sizes.shadow):
        vm = _idle_guest(sizes.crossover_pages, mmu)
        n_used = vm.n_used_mmu_pages
        rng = np.random.default_rng(SEED)
        for count in dirty_counts(n_used, vm.slot(0).npages):
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
                "ratio": count / n_used,  # as measured, not as asked
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


def _guests(sizes: Sizes) -> dict[str, str]:
    """What each wall-clock figure measured, as the table prints it."""
    def size(pages: int) -> str:
        nbytes = pages * PAGE_SIZE
        return f"{nbytes >> 30} GiB" if nbytes % (1 << 30) == 0 else f"{nbytes >> 20} MiB"

    return {"writes-per-s": f"uniform, {size(sizes.write_pages)} tdp",
            walk_key(sizes): f"idle, {size(sizes.big_pages)} tdp",
            "rmap-ns-per-gfn": f"{sizes.rmap_dirty:,} dirty of {size(sizes.big_pages)} tdp"}


def judge(figures: dict[str, float], quick: bool) -> dict[str, bool | None]:
    """Each target's verdict: met or not, or None when this run did not measure it.

    A quick run measures small guests, so it judges nothing.
    """
    verdicts: dict[str, bool | None] = {}
    for key, target in TARGETS.items():
        value = None if quick else figures.get(key)
        if value is None:
            verdicts[key] = None
        elif key == "writes-per-s":
            verdicts[key] = value >= target
        else:
            verdicts[key] = value <= target
    return verdicts


def exit_code(result: dict) -> int:
    """0 unless a full run missed a target (then 1); a quick run judges none."""
    return EXIT_MISSED if any(v is False for v in result["met"].values()) else EXIT_MET


def run(quick: bool = False) -> dict:
    """Measure everything; `quick` uses small sizes and judges no target."""
    sizes = QUICK if quick else FULL
    rate = writes_per_s(sizes)
    walk_ms, rmap_ns = harvest_wall_times(sizes)
    figures = {"writes-per-s": rate, walk_key(sizes): walk_ms, "rmap-ns-per-gfn": rmap_ns}
    return {
        **{key: round(value, 3) for key, value in figures.items()},
        "measured-on": _guests(sizes),
        "crossover": crossover(sizes),
        "targets": dict(TARGETS),
        "met": judge(figures, quick),
        "quick": quick,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "cpu-count": os.cpu_count() or 1,
    }


def _cheaper(record: dict) -> str:
    return "rmap" if record["rmap-modeled-ns"] < record["walk-modeled-ns"] else "walk"


def _figure_value(key: str, value: float) -> str:
    if key == "writes-per-s":
        return f"{value / 1e6:.1f} M/s"
    if key.endswith("-ms"):
        return f"{value:.2f} ms"
    return f"{value:.0f} ns"


def _target_text(key: str) -> str:
    if key not in TARGETS:
        return "-"
    if key == "writes-per-s":
        return f">= {TARGETS[key] / 1e6:.0f} M/s"
    return f"<= {TARGETS[key]:g} {'ms' if key.endswith('-ms') else 'ns'}"


def _percent(ratio: float) -> str:
    """A ratio as a percentage to three significant digits, never in e-notation."""
    pct = ratio * 100
    digits = max(0, 2 - math.floor(math.log10(pct))) if pct > 0 else 0
    return f"{pct:.{digits}f}"


def _verdict_text(verdict: bool | None) -> str:
    return "not judged" if verdict is None else ("yes" if verdict else "NO")


def format_table(result: dict) -> str:
    """The figures against their targets, then the crossover table."""
    met = result["met"]
    quick = result.get("quick")
    figures = list(result["measured-on"])
    title = "precopy bench mmu" + (" (quick: small sizes)" if quick else "")
    lines = [
        f"{title}: python {result['python']}, numpy {result['numpy']}, "
        f"{result['cpu-count']} CPUs",
        "",
        f"{'figure':<18}{'value':>12}  {'measured on':<28}{'target':<12}met",
    ]
    lines += [f"{key:<18}{_figure_value(key, result[key]):>12}  "
              f"{result['measured-on'][key]:<28}{_target_text(key):<12}"
              f"{_verdict_text(met.get(key))}" for key in figures]
    missed = [key for key, verdict in met.items() if verdict is False]
    if quick:
        lines.append("targets: not judged on a quick run (they are for the full sizes: "
                     "run without --quick)")
    elif missed:
        lines.append(f"targets missed: {', '.join(missed)} (exit {EXIT_MISSED})")
    else:
        lines.append("targets: all met")
    lines += [
        "",
        "crossover: modeled kernel time of one harvest of the same dirty set",
        "(ratio = dirty pages / n_used_mmu_pages; the heuristic takes rmap below 1;",
        " ratios that round to the same dirty page count are measured once)",
        "",
    ]
    header = (f"{'shape':<7}{'ratio':>8}{'dirty':>8}{'n-used':>8}{'walk-us':>10}"
              f"{'rmap-us':>10}{'walk/rmap':>10}  {'cheaper':<8}{'heuristic':<10}"
              f"heuristic-picks-cheaper")
    lines.append(header)
    for r in result["crossover"]:
        cheaper = _cheaper(r)
        speedup = r["walk-modeled-ns"] / r["rmap-modeled-ns"] if r["rmap-modeled-ns"] else 0.0
        lines.append(
            f"{r['shape']:<7}{_percent(r['ratio']):>7}%{r['dirty-pages']:>8}"
            f"{r['n-used-mmu-pages']:>8}{r['walk-modeled-ns'] / 1e3:>10.1f}"
            f"{r['rmap-modeled-ns'] / 1e3:>10.1f}{speedup:>10.2f}  {cheaper:<8}"
            f"{r['heuristic-branch']:<10}{'yes' if r['heuristic-branch'] == cheaper else 'no'}"
        )
    return "\n".join(lines)
