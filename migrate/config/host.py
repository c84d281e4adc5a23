"""Will the run fit? What each process will hold, against what this host has free.

numpy raises "Unable to allocate 29.1 TiB" deep inside the model, after the
destination is up; checked here, at load time, the message names the key
that asked for the memory. The source's need depends on how its memory is
backed (`stored`: 4 KiB per written page; `generated`: 9 B per page), and
`precopy run` also holds the destination on the same host, whose need
depends on its store (the image: 4 KiB per received page; digests: 12 B per
page). `run_destination_store` picks that store.
"""

from __future__ import annotations

import os
from pathlib import Path

from migrate import units
from vmmodel import (
    AUTO_GENERATED_PAGES,
    PAGE_SIZE,
    REGION_ALIGN,
    SPTES_PER_PAGE,
    GuestSpec,
    MmuSpec,
    WorkloadSpec,
)

MEMINFO = Path("/proc/meminfo")
# The model's state besides the page backing (vmmodel/mmu.py, tlb.py, vm.py). Per gfn: its
# slot index, dirty bit and rmap length (10 B), and 8 B per rmap column (one on tdp; as
# many as the most aliased gfn has sptes on shadow)...
PER_GFN_STATE_BYTES = 10
PER_RMAP_COLUMN_BYTES = 8
# ...per spte: its gfn, present, writable and dirty bits, the one int32 unique scratch and the
# zap scratch (16 B), plus one TLB byte per vCPU. tdp has an spte per gfn (rounded up to whole
# shadow pages); shadow paging has the direct map plus, per guest process, one 1 GiB-aligned
# region of sptes (layout.py's REGION_ALIGN) and a gfn -> spte map (8 B per gfn).
PER_SPTE_STATE_BYTES = 16
PER_PAGE_PER_ADDRESS_SPACE_BYTES = 8
# On tdp that is 34 B per page plus a byte per vCPU: with 4 vCPUs and the generated backing
# (9 B), 47 B, 11.8 MiB per GiB, counted from every array of a 4 GiB Vm after prefill, a
# second of guest time and a sync (tests/test_config.py checks the sum against tracemalloc).
PER_PAGE_STATE_BYTES = PER_GFN_STATE_BYTES + PER_RMAP_COLUMN_BYTES + PER_SPTE_STATE_BYTES
# The backings: the write counter (u64), plus the template id (u8) when generated; stored
# pages hold 4 KiB each once written (calloc'd: an untouched page costs nothing).
BACKING_BYTES_PER_PAGE = {"stored": 8, "generated": 9}
# The source's migration arrays on top of the model, at their peak: the first pass's gfns
# (int64), the stop-and-copy's union of pending and harvested gfns, every page's digest at
# COMPLETE and its encoded body (measured by `precopy bench scale`, peak RSS less the
# model's: see README, bench scale).
SOURCE_MIGRATION_BYTES_PER_PAGE = 40
# The destination's arrays per page besides its store's (migrate/dest/store.py): the pass
# each page came from (u32), the image's zero flag, and at COMPLETE the source's digests
# (u64, read from the body and decoded) and its own, compared.
DEST_PER_PAGE_BYTES = {"image": 4 + 1 + 24, "digests": 4 + 8 + 24}
# What a process of ours holds before any guest: Python, numpy, aiohttp (the destination
# of a 4 MiB guest peaks at ~60 MiB here).
PROCESS_BASE_BYTES = 64 << 20
# `precopy run`'s destination keeps digests, not the image, from this guest size up (the
# model's own generated backing starts at 1 GiB): measured here, the digest store was as
# fast at 1 GiB and faster from 4 GiB, and holds 12 B a page instead of 4 KiB.
DIGEST_STORE_FROM_PAGES = AUTO_GENERATED_PAGES
# ...and below it, whenever source and image together would take more than this share of
# the memory available (the rest is for the kernel, page cache and anything else running).
IMAGE_HOST_SHARE = 0.5


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


def _round_up(n: int, align: int) -> int:
    return -(-n // align) * align


def _workloads(w: WorkloadSpec) -> list[WorkloadSpec]:
    return [w, *(x for child in (*w.phases, *w.parts) for x in _workloads(child))]


def guest_pages(guest: GuestSpec) -> int:
    """Every page of the guest, the framebuffer's included."""
    return guest.memory_pages + guest.vga_pages


def written_pages(guest: GuestSpec) -> int:
    """At most how many pages the workloads write (a stored or received page holds 4 KiB).

    A RAM workload writes its working set (all of RAM if it has none), the
    framebuffer may be written whole.
    """
    ram = [w.working_set_pages or guest.memory_pages
           for w in _workloads(guest.workload) if w.kind not in ("vga", "phases", "mix")]
    return min(guest.memory_pages, max(ram, default=0)) + guest.vga_pages


def memory_backing(guest: GuestSpec) -> str:
    """The backing the model will use: `guest.memory-backing`, `auto` resolved as
    vmmodel's `make_memory` resolves it (by the size of all slots)."""
    if guest.memory_backing != "auto":
        return guest.memory_backing
    return "generated" if guest_pages(guest) >= AUTO_GENERATED_PAGES else "stored"


def model_memory_bytes(guest: GuestSpec, mmu: MmuSpec) -> int:
    """Return about how much host memory the source process needs for *guest*.

    Its backing: 4 KiB per written page if stored (untouched ones are calloc'd
    and cost nothing), none if generated; every page has its model state and
    its share of the migration's arrays.
    """
    pages = guest_pages(guest)
    backing = memory_backing(guest)
    per_gfn = (PER_GFN_STATE_BYTES + BACKING_BYTES_PER_PAGE[backing]
               + SOURCE_MIGRATION_BYTES_PER_PAGE)
    if mmu.shape == "tdp":
        sptes, columns = _round_up(pages, SPTES_PER_PAGE), 1
    else:
        region = _round_up(max(min(mmu.mapped_pages, guest.memory_pages), 1), REGION_ALIGN)
        sptes = _round_up(pages, REGION_ALIGN) + mmu.address_spaces * region
        columns = 1 + mmu.address_spaces  # the direct map's spte and one per process at most
        per_gfn += PER_PAGE_PER_ADDRESS_SPACE_BYTES * mmu.address_spaces
    need = pages * (per_gfn + PER_RMAP_COLUMN_BYTES * columns)
    need += sptes * (PER_SPTE_STATE_BYTES + guest.vcpus)
    if backing == "stored":
        need += written_pages(guest) * PAGE_SIZE
    return PROCESS_BASE_BYTES + need


def destination_memory_bytes(guest: GuestSpec, store: str) -> int:
    """Return about how much host memory a destination keeping *store* needs for *guest*.

    `image`: 4 KiB per page it receives with content (the written ones; zero
    pages are never stored over zeros); `digests`: 8 B of digest per page.
    Raise `ValueError` for another store.
    """
    if store not in DEST_PER_PAGE_BYTES:
        raise ValueError(f"store {store!r} is not one of {', '.join(DEST_PER_PAGE_BYTES)}")
    pages = guest_pages(guest)
    need = pages * DEST_PER_PAGE_BYTES[store]
    need += written_pages(guest) * PAGE_SIZE if store == "image" else 0
    return PROCESS_BASE_BYTES + need


def run_destination_store(guest: GuestSpec, mmu: MmuSpec, available: int | None) -> str:
    """The store `precopy run` gives its destination: the image for a small guest that
    fits comfortably beside the source, else the digests (`DIGEST_STORE_FROM_PAGES`,
    `IMAGE_HOST_SHARE`)."""
    if guest_pages(guest) >= DIGEST_STORE_FROM_PAGES:
        return "digests"
    need = model_memory_bytes(guest, mmu) + destination_memory_bytes(guest, "image")
    if available is not None and need > available * IMAGE_HOST_SHARE:
        return "digests"
    return "image"


def check_host_memory(guest: GuestSpec, mmu: MmuSpec, available: int | None, *,
                      destination: str | None = None) -> str | None:
    """Return a one-line reason the run will not fit in *available* bytes, or None.

    The source's process alone, or with *destination* (a store name) the
    source and a destination on the same host, as `precopy run` starts them.
    """
    source = model_memory_bytes(guest, mmu)
    need = source + (destination_memory_bytes(guest, destination) if destination else 0)
    if available is None or need <= available:
        return None
    size = units.format_bytes(guest.memory_pages * PAGE_SIZE)
    what = "for the model"
    if destination:
        what = (f"for the source ({units.format_bytes(source, exact=False)}) and a destination "
                f"keeping {'the image' if destination == 'image' else 'digests'}")
    return (f"guest.memory: {size} needs about {units.format_bytes(need, exact=False)} of host "
            f"memory {what}; this host has {units.format_bytes(available, exact=False)} "
            "available")
