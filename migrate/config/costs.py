"""Cost tables: `mmu.costs` as a name in configs/costs/, a path, or an inline table.

Every constant is bounded at load time: finite, non-negative, and at most its
ceiling. The model charges a constant per counted operation and advances the
guest through the charged time slice by slice, so a constant of `inf` or 1e13
ns would spin for ever; the ceilings sit far above any x86 host's.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from migrate.config.reader import error, read_toml
from vmmodel import CostTable, SpecError

CONFIGS_DIR = Path(__file__).resolve().parent.parent.parent / "configs"
COSTS_DIR = CONFIGS_DIR / "costs"

# Ceilings, per kind of constant. A per-call cost (the ioctl, a remote TLB flush and its
# per-vCPU IPIs, PML's kick of each vCPU) is tens of microseconds on a loaded multi-socket
# host (kvm-unit-tests x86/vmexit.c "ipi"); 1 ms is 500x the shipped 2 us. A per-item cost
# (one spte, rmap entry, bitmap word, fault, PML exit or lz4 page) is paid for every page,
# or every 512 for a PML-full exit: 10 us is twice the dearest shipped one (lz4, 5 us) and
# keeps a walk of a 1 GiB slot under 3 s of modeled time.
MAX_PER_CALL_NS = 1_000_000.0
MAX_PER_ITEM_NS = 10_000.0
PER_CALL_COSTS = ("get_dirty_log_ns", "tlb_flush_ns", "tlb_flush_per_vcpu_ns", "pml_kick_ns")


def cost_ceiling_ns(name: str) -> float:
    """Return the most the constant *name* may cost, in ns."""
    return MAX_PER_CALL_NS if name in PER_CALL_COSTS else MAX_PER_ITEM_NS


COST_CEILINGS_NS = {f.name: cost_ceiling_ns(f.name) for f in dataclasses.fields(CostTable)
                    if f.name != "name"}


def costs_from_toml(value: object) -> CostTable:
    """Return the cost table named by mmu.costs: a name, a path, or an inline table.

    Raise `ConfigError` naming mmu.costs (and the file) for a table that does
    not exist, cannot be read, or has a constant that is unknown or out of bounds.
    """
    if isinstance(value, dict):
        return _cost_table(value, "mmu.costs", default_name="custom")
    if not isinstance(value, str) or not value:
        raise error(f"mmu.costs: {value!r} is not a name, a path or a table")
    path = Path(value)
    if "/" not in value and path.suffix != ".toml":
        path = COSTS_DIR / f"{value}.toml"
        if not path.is_file():
            have = ", ".join(sorted(p.stem for p in COSTS_DIR.glob("*.toml")))
            raise error(f"mmu.costs: {value!r} is not a cost table in {COSTS_DIR} (have: {have})")
    return _cost_table(read_toml(path, "mmu.costs"), f"mmu.costs: {path}", default_name=path.stem)


def _cost_table(data: dict[str, Any], where: str, default_name: str) -> CostTable:
    values: dict[str, Any] = {"name": default_name}
    for name, value in data.items():
        if name == "name":
            if not isinstance(value, str):
                raise error(f"{where}: name {value!r} is not a string")
            values[name] = value
            continue
        ceiling = COST_CEILINGS_NS.get(name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise error(f"{where}: {name} = {value!r} is not a number of ns")
        if ceiling is not None and not 0 <= value <= ceiling:  # nan and inf fail too
            per = "per-call" if name in PER_CALL_COSTS else "per-item"
            raise error(f"{where}: {name} = {value!r} is not a finite number of ns in "
                        f"0..{ceiling:,.0f} (the ceiling of a {per} cost)")
        values[name] = float(value) if ceiling is not None else value
    try:
        return CostTable.from_dict(values)
    except SpecError as exc:
        raise error(f"{where}: {exc}") from None


# --- QEMU's own costs ----------------------------------------------------------------

QEMU_COSTS_DIR = COSTS_DIR / "qemu"
MAX_QEMU_PER_CALL_NS = 1e9  # a sync or a setup: QEMU 7.2 under TCG takes ~0.15-0.4 s
MAX_QEMU_PER_PAGE_NS = 100_000.0  # 10x the reference host's dearest per-page cost


@dataclasses.dataclass(frozen=True)
class QemuCosts:
    """What QEMU's own code costs (migration.costs), as `CostTable` is KVM's.

    All zero (`none`) is an ideal QEMU: only KVM's work and the link take time.
    A host's table is measured, each constant saying how (configs/costs/qemu/).
    """

    name: str = "none"
    # Setup beyond KVM's enabling of dirty logging (ram_init_bitmaps: bitmaps, the setup
    # sync's userspace part, the first MIGRATION_PASS).
    setup_ns: float = 0.0
    # The userspace part of a bitmap sync while the guest runs: fixed, per GiB of RAM,
    # and per page the sync finds newly dirty.
    sync_ns: float = 0.0
    sync_gib_ns: float = 0.0
    sync_page_ns: float = 0.0
    # The migration thread's time per page it sends while the guest runs (normal, zero),
    # and per page of the completion, with the guest stopped.
    page_ns: float = 0.0
    zero_page_ns: float = 0.0
    stopped_page_ns: float = 0.0
    # The completion's fixed part: vm_stop, the final sync with the guest stopped, the
    # device state, the end.
    stop_ns: float = 0.0
    # Whether the vCPUs wait while QEMU's setup and each sync run (the BQL, under TCG): 0 or 1.
    sync_holds_vcpus: float = 0.0


QEMU_COST_NAMES = tuple(f.name for f in dataclasses.fields(QemuCosts) if f.name != "name")
QEMU_FLAGS = ("sync_holds_vcpus",)  # 0 or 1, not a time
QEMU_PER_CALL_COSTS = ("setup_ns", "sync_ns", "sync_gib_ns", "stop_ns")


def qemu_cost_ceiling_ns(name: str) -> float:
    """Return the most the QEMU cost *name* may be, in ns."""
    return MAX_QEMU_PER_CALL_NS if name in QEMU_PER_CALL_COSTS else MAX_QEMU_PER_PAGE_NS


def qemu_costs_from_toml(value: str) -> QemuCosts:
    """Return the table named by migration.costs: `none`, a name in configs/costs/qemu/, a path.

    Raise `ConfigError` naming migration.costs (and the file) for a table that does
    not exist or cannot be read, or a constant that is unknown, not a number, or out
    of bounds.
    """
    if value == "none":
        return QemuCosts()
    path = Path(value)
    if "/" not in value and path.suffix != ".toml":
        path = QEMU_COSTS_DIR / f"{value}.toml"
        if not path.is_file():
            have = ", ".join(["none", *sorted(p.stem for p in QEMU_COSTS_DIR.glob("*.toml"))])
            raise error(f"migration.costs: {value!r} is not a table in {QEMU_COSTS_DIR} "
                        f"(have: {have})")
    data = read_toml(path, "migration.costs")
    where = f"migration.costs: {path}"
    values: dict[str, Any] = {"name": path.stem}
    for name, number in data.items():
        if name == "name":
            if not isinstance(number, str):
                raise error(f"{where}: name {number!r} is not a string")
            values[name] = number
            continue
        if name not in QEMU_COST_NAMES:
            raise error(f"{where}: {name} is not a QEMU cost (known: {', '.join(QEMU_COST_NAMES)})")
        if name in QEMU_FLAGS:
            if isinstance(number, bool) or number not in (0, 1):
                raise error(f"{where}: {name} = {number!r} is not 0 or 1")
        else:
            ceiling = qemu_cost_ceiling_ns(name)
            if isinstance(number, bool) or not isinstance(number, int | float) \
                    or not 0 <= number <= ceiling:
                raise error(f"{where}: {name} = {number!r} is not a number of ns in "
                            f"0..{ceiling:,.0f}")
        values[name] = float(number)
    return QemuCosts(**values)
