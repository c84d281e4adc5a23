"""Will the model fit? The source's memory need against what this host has free.

numpy raises "Unable to allocate 29.1 TiB" deep inside the model, after the
destination is up; checked here, at load time, the message names the key
that asked for the memory.
"""

from __future__ import annotations

import os
from pathlib import Path

from migrate import units
from vmmodel import PAGE_SIZE, GuestSpec, MmuSpec, WorkloadSpec

MEMINFO = Path("/proc/meminfo")
# Per-gfn state the model keeps besides a written page's 4 KiB: the dirty bitmap, write
# counter, slot index, rmap head and scratch (~34 B), and per spte its gfn, present and
# writable bits and scratch (~27 B); each vCPU's TLB adds a byte per spte (vmmodel/mmu.py,
# tlb.py, vm.py). Shadow paging adds a gfn per guest process (layout.py's as_map).
PER_PAGE_STATE_BYTES = 64
PER_PAGE_PER_ADDRESS_SPACE_BYTES = 8


def available_memory_bytes() -> int | None:
    """Return the memory this host can give a new process (MemAvailable), or None if unknown."""
    try:
        for line in MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


def _workloads(w: WorkloadSpec) -> list[WorkloadSpec]:
    return [w, *(x for child in (*w.phases, *w.parts) for x in _workloads(child))]


def model_memory_bytes(guest: GuestSpec, mmu: MmuSpec) -> int:
    """Return about how much host memory the source's model of *guest* needs.

    Pages the workloads write hold 4 KiB each (untouched ones are calloc'd
    and cost nothing); every page has its per-page state.
    """
    ram = [w.working_set_pages or guest.memory_pages
           for w in _workloads(guest.workload) if w.kind not in ("vga", "phases", "mix")]
    written = min(guest.memory_pages, max(ram, default=0)) + guest.vga_pages
    pages = guest.memory_pages + guest.vga_pages
    per_page = PER_PAGE_STATE_BYTES + guest.vcpus
    if mmu.shape == "shadow":
        per_page += PER_PAGE_PER_ADDRESS_SPACE_BYTES * mmu.address_spaces
    return written * PAGE_SIZE + pages * per_page


def check_host_memory(guest: GuestSpec, mmu: MmuSpec, available: int | None) -> str | None:
    """Return a one-line reason the model will not fit in *available* bytes, or None."""
    need = model_memory_bytes(guest, mmu)
    if available is None or need <= available:
        return None
    return (f"guest.memory: {units.format_bytes(guest.memory_pages * PAGE_SIZE)} needs about "
            f"{units.format_bytes(need, exact=False)} of host memory for the model; this host "
            f"has {units.format_bytes(available, exact=False)} available")
