"""PML (mmu.pml): D bits instead of W bits, each vCPU's 512-entry log, its exits and flushes.

The counts are checked against what the test wrote: a write that misses the TLB on an spte
whose D bit is clear is logged once, every 512 logs of one vCPU are a PML-full exit, and no
write faults. The correctness under every workload is tests/test_lost_writes.py's (its
`tdp-pml` cases); here the kick, the pause, and the two ways to get it wrong.
"""

from __future__ import annotations

import numpy as np
import pytest

from migrate.config import ConfigError, load_scenario
from tests.procs import BROKEN, SMALL, load_json, precopy
from vmmodel import CORRECT_STRATEGIES, CostTable, DirtyLogAudit, GuestSpec, MmuSpec, SpecError, Vm
from vmmodel.harvest import KernelWork
from vmmodel.pml import PML_ENTITY_NUM

PAGES = 8192


def pml_vm(make_vm, **kw):
    """A paused, prefilled tdp guest with PML, logging on: every spte present, D clear."""
    kw.setdefault("working_set_pages", PAGES)
    return make_vm("tdp", "uniform", pages=PAGES, paused=True, pml=True, **kw)


# ------------------------------------------------------------------ the log and its exits


def test_enabling_logging_clears_d_bits_and_leaves_w_bits(make_vm):
    vm = make_vm("tdp", "uniform", pages=PAGES, logging=False, paused=True, pml=True,
                 working_set_pages=PAGES)
    present = vm.mmu.spte_present.copy()
    assert vm.mmu.spte_dirty[present].all() and present.sum() == PAGES
    enable = vm.enable_dirty_logging()
    assert not vm.mmu.spte_dirty.any()
    assert vm.mmu.spte_writable[present].all()  # nothing write-protected: PML logs it all
    assert enable.sptes_cleared == PAGES and enable.tlb_flushes == 1
    assert vm.pml.enabled


def test_writes_are_logged_not_faulted_and_every_512th_is_an_exit(make_vm):
    vm = pml_vm(make_vm)
    gfns = np.random.default_rng(3).permutation(PAGES)[:1300]
    vm.write(0, gfns)
    assert vm.stats.write_faults == vm.stats.page_faults == 0
    assert vm.stats.pml_logged == 1300
    assert vm.stats.pml_full_exits == 1300 // PML_ENTITY_NUM == 2
    # The two full buffers are in the bitmap, in write order; the rest waits in the buffer.
    flushed = gfns[:2 * PML_ENTITY_NUM]
    assert vm.slots[0].nr_dirty_pages == len(flushed)
    assert vm.slots[0].dirty_bitmap[flushed].all()
    np.testing.assert_array_equal(vm.pml.pending(), gfns[2 * PML_ENTITY_NUM:])
    assert vm.pml.fill.tolist() == [1300 % PML_ENTITY_NUM, 0, 0, 0]
    # Written again: the D bits are set (and the translations cached), nothing is logged.
    vm.write(0, gfns)
    vm.tlbs.flush_all()
    vm.write(1, gfns)
    assert vm.stats.pml_logged == 1300 and vm.stats.pml_full_exits == 2


def test_each_vcpu_has_its_own_buffer(make_vm):
    vm = pml_vm(make_vm)
    vm.write(0, np.arange(700))
    vm.write(1, np.arange(600, 1000))  # 600..699 already have their D bit: 300 new logs
    vm.write(2, np.arange(1000, 1000 + 3 * PML_ENTITY_NUM))
    assert vm.stats.pml_logged == 700 + 300 + 3 * PML_ENTITY_NUM
    # 3 x 512 logs fill the buffer three times but exit twice: the third fill is full,
    # and only a 513th log attempt would exit.
    assert vm.pml.full_exits.tolist() == [1, 0, 2, 0]
    assert vm.pml.fill.tolist() == [700 - PML_ENTITY_NUM, 300, PML_ENTITY_NUM, 0]
    assert vm.stats.pml_full_exits == 3


def test_a_page_fault_is_an_exit_that_flushes_the_buffer(make_vm):
    vm = make_vm("tdp", "uniform", pages=PAGES, paused=True, pml=True, working_set_pages=4096)
    vm.write(0, np.arange(10))  # logged, pending
    vm.write(0, np.array([20, 5000]))  # 5000 was never mapped: an EPT violation
    assert vm.stats.page_faults == 1 and vm.pml.fill[0] == 0
    assert vm.slots[0].dirty_bitmap[np.r_[np.arange(10), 20, 5000]].all()


# ------------------------------------------------------------------ the harvest's kick


@pytest.mark.parametrize("strategy", CORRECT_STRATEGIES)
def test_the_kick_brings_the_buffers_into_the_harvest(make_vm, strategy):
    vm = pml_vm(make_vm)
    written = np.arange(3000)
    for vcpu in range(4):
        vm.write(vcpu, written[vcpu::4])  # 750 each: one full buffer, 238 still held
    pending = len(vm.pml.pending())
    assert pending == 4 * (750 - PML_ENTITY_NUM)
    t0 = vm.now_ns
    r = vm.harvest(0, strategy)
    np.testing.assert_array_equal(r.gfns, written)
    assert r.pml_flushed == pending and vm.pml.pending().size == 0
    assert r.nr_dirty_pages == len(written)  # counted after the kick
    assert not vm.mmu.spte_dirty[written].any() and vm.mmu.spte_writable[written].all()
    assert r.sptes_cleared == len(written)
    assert vm.now_ns - t0 == pytest.approx(r.kernel_ns)
    # Re-armed: the next writes are logged again, still without a fault.
    vm.write(0, written[:10])
    assert vm.stats.pml_logged == len(written) + 10 and vm.stats.write_faults == 0


def test_the_kick_is_priced_once_per_harvest(make_vm):
    costs = CostTable(pml_kick_ns=333.0, get_dirty_log_ns=1000.0, bitmap_word_ns=0.0,
                      rmap_lookup_ns=0.0, lock_acquire_ns=0.0)
    vm = pml_vm(make_vm, costs=costs)
    r = vm.harvest(0, "heuristic")  # the heuristic kicks before it decides, rmap not again
    assert r.branch == "rmap" and len(r.gfns) == 0
    assert r.kernel_ns == pytest.approx(4 * 333.0 + 1000.0)


def test_the_vcpus_pay_for_exits_and_flushes(make_vm):
    costs = CostTable(write_fault_ns=0.0, page_fault_ns=0.0)
    vm = make_vm("tdp", "uniform", pages=PAGES, rate=2e6, pml=True, costs=costs)
    harvests = 0
    for _ in range(5):
        vm.advance(3e6)
        vm.sync_dirty_log("masked")
        harvests += 1
    vm.advance(1e6)  # the last kick's exits are charged as the vCPUs write on
    assert vm.stats.pml_full_exits > 0 and vm.stats.write_faults == 0
    expected = (vm.stats.pml_full_exits * costs.pml_exit_ns
                + harvests * vm.guest.vcpus * costs.pml_exit_ns
                + vm.pml.flushed * costs.pml_entry_ns)
    assert vm.stats.pml_ns + vm.pml.owed_ns.sum() == pytest.approx(expected)
    assert vm.stats.fault_ns == 0


def test_pml_costs_the_guest_less_than_write_faults(make_vm):
    """The same guest with and without PML: a logged page costs ~21 ns (a 512th of an exit
    and one flushed entry) against a fault's 1.5 us, so the vCPUs lose less time and write
    more. With free faults both re-arm about as many pages."""
    runs = {}
    for pml in (False, True):
        for costs in (CostTable(), CostTable(write_fault_ns=0.0, pml_exit_ns=0.0,
                                             pml_entry_ns=0.0)):
            vm = make_vm("tdp", "uniform", pages=PAGES, seed=2, rate=1e6, pml=pml, costs=costs)
            for _ in range(5):
                vm.advance(4e6)
                vm.sync_dirty_log("masked")
            runs[pml, costs == CostTable()] = vm.stats
    faulted, logged = runs[False, True], runs[True, True]
    assert faulted.write_faults > 1000 and logged.write_faults == 0
    assert logged.pml_ns / logged.pml_logged < faulted.fault_ns / faulted.write_faults / 50
    assert logged.writes > faulted.writes
    assert runs[True, False].pml_logged == pytest.approx(runs[False, False].write_faults,
                                                         rel=0.05)


# ------------------------------------------------------------------ getting it wrong


def _skip_the_kick(work: KernelWork) -> np.ndarray:
    """masked, but KVM_GET_DIRTY_LOG forgets kvm_arch_sync_dirty_log (no kick)."""
    work._kicked = True  # as if it had kicked: the buffers stay where they are
    gfns, flush = work.get_dirty_log_protect()
    if flush:
        work.flush_remote_tlbs()
    return gfns


def test_a_harvest_without_the_kick_delays_pages_but_loses_none(make_vm):
    """Why the broken PML variant is `pml-full-only` and not a missing kick: what a buffer
    holds reaches the bitmap at the vCPU's next exit (the TLB flush right after the harvest,
    at the latest the pause, which stops every vCPU), so a sync without the kick reports it
    one sync late, and the final sync, with the vCPUs stopped, has it."""
    vm = make_vm("tdp", "hotspot", pages=PAGES, seed=1, rate=4e6, pml=True,
                 costs=CostTable(write_fault_ns=0.0, page_fault_ns=0.0))
    audit = DirtyLogAudit(vm)
    late = 0
    for _ in range(8):
        vm.advance(4e6)
        held = set(vm.pml.pending().tolist())
        work = KernelWork(vm, vm.slots[0], "no-kick")
        result = work.result(_skip_the_kick(work))
        late += len(held - set(result.gfns.tolist()))
        audit.read(result.gfns)
        assert audit.unreported().size == 0  # held, or flushed into the bitmap since
    assert late > 0  # the buffers' pages did miss their sync
    vm.pause()
    assert vm.pml.pending().size == 0  # stopping the vCPUs flushed them
    work = KernelWork(vm, vm.slots[0], "no-kick")
    audit.read(work.result(_skip_the_kick(work)).gfns)
    assert audit.stale().size == 0


def test_pml_full_only_is_caught_at_the_final_sync(make_vm):
    """Buffers read only when full: a sync's audit sees nothing wrong (KVM holds the pages),
    but at the pause the partly filled buffers are never read, and those writes are lost."""
    vm = make_vm("tdp", "hotspot", pages=PAGES, seed=1, rate=4e6, pml=True,
                 strategy="pml-full-only")
    audit = DirtyLogAudit(vm)
    for _ in range(6):
        vm.advance(4e6)
        result = vm.sync_dirty_log()
        assert result.pml_flushed == 0  # the kick flushed nothing
        audit.read(result.gfns)
        assert audit.unreported().size == 0
    vm.pause()
    held = vm.pml.pending()
    assert held.size > 0
    audit.read(vm.sync_dirty_log().gfns)
    stale = audit.stale()
    assert stale.size > 0 and np.isin(stale, held).all()


def test_masked_noflush_under_pml_leaves_cached_translations_whose_d_bit_is_clear(make_vm):
    vm = make_vm("tdp", "hotspot", pages=PAGES, seed=4, rate=4e6, pml=True)
    vm.advance(5e6)
    result = vm.harvest(0, "masked-noflush")
    assert result.tlb_flushes == 0 and len(result.gfns) > 0
    assert vm.tlbs.stale_writable(vm.mmu.spte_dirty) > 0  # they write on, unlogged


# ------------------------------------------------------------------ configuration


def test_pml_needs_tdp_and_pml_full_only_needs_pml():
    with pytest.raises(SpecError, match=r"mmu\.pml"):
        MmuSpec(shape="shadow", pml=True)
    with pytest.raises(SpecError, match="needs mmu.pml = true"):
        Vm(GuestSpec(memory_pages=PAGES), MmuSpec(strategy="pml-full-only"), CostTable(), 1)
    with pytest.raises(ConfigError, match=r"^config: mmu\.pml: .*tdp"):
        load_scenario(None, ["mmu.pml=true", "mmu.shape=shadow"])
    with pytest.raises(ConfigError, match=r"^config: mmu\.strategy: 'pml-full-only' needs"):
        load_scenario(None, ["mmu.strategy=pml-full-only"])


def test_pml_is_written_only_when_on_and_round_trips():
    assert "pml" not in load_scenario(None).to_dict()["mmu"]
    on = load_scenario(None, ["mmu.pml=true", "mmu.strategy=masked"])
    assert on.mmu.pml and on.to_dict()["mmu"]["pml"] is True
    assert MmuSpec.from_dict(on.mmu.to_dict()) == on.mmu


# ------------------------------------------------------------------ end to end


@pytest.mark.parametrize("strategy", ["heuristic", "masked"])
def test_a_migration_with_pml_verifies_without_a_write_fault(tmp_path, strategy):
    out = tmp_path / "pml.json"
    proc = precopy("run", str(SMALL), "--quiet", "--json", str(out),
                   "--set", "mmu.pml=true", "--set", f"mmu.strategy={strategy}")
    assert proc.returncode == 0, proc.stderr
    report = load_json(out)
    assert report["status"] == "completed" and report["verified"] is True
    guest = report["guest"]
    assert guest["write-faults"] == 0 and guest["pml-logged"] > 0
    assert guest["pml-ns"] > 0 and guest["fault-ns"] < guest["pml-ns"]
    assert report["config"]["mmu"]["pml"] is True


@pytest.mark.parametrize("seed", (1, 2))
def test_pml_full_only_is_caught_losing_writes(tmp_path, seed):
    out = tmp_path / "full-only.json"
    proc = precopy("run", str(BROKEN), "--quiet", "--json", str(out), "--set", "mmu.pml=true",
                   "--set", "mmu.strategy=pml-full-only", "--set", f"seed={seed}")
    assert proc.returncode == 1
    report = load_json(out)
    assert report["verified"] is False and report["lost-pages"]
    assert report["lost-count"] == len(report["lost-pages"])
