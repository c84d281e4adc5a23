"""Shared fixtures for the vmmodel tests: small guests, built the same way everywhere."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from aiohttp import web

from migrate.dest.server import make_app
from vmmodel import CostTable, GuestSpec, MmuSpec, Vm, WorkloadSpec

# Hypothesis caches the constants it finds in our sources under ./.hypothesis, whatever the
# settings' database; keep its storage out of the checkout (read once, at first use).
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY",
                      str(Path(tempfile.gettempdir()) / "precopy-hypothesis"))

# Shadow shape kept small: few processes, few mappings, so a guest builds in milliseconds.
SMALL_SHADOW = {"address_spaces": 4, "mapped_pages": 1024, "shared": 0.25}


def _mmu_spec(shape: str, **kw) -> MmuSpec:
    if shape == "shadow":
        kw = {**SMALL_SHADOW, **kw}
    return MmuSpec(shape=shape, **kw)


@pytest.fixture
def make_vm():
    """Build a small Vm: `make_vm(shape, kind=..., pages=..., seed=..., **workload/mmu opts)`.

    Keyword arguments named like MmuSpec fields go to the MMU, `vga_pages`/`vcpus`/
    `slice_ns`/`advance` to the guest, everything else to the workload. `logging` enables
    dirty logging after the prefill; `paused` pauses the guest.
    """

    mmu_fields = {"strategy", "pml", "max_mmu_pages", "tlb_entries", "address_spaces",
                  "mapped_pages", "shared"}
    guest_fields = {"vga_pages", "vcpus", "slice_ns", "advance"}

    def build(shape: str = "tdp", kind: str = "idle", *, pages: int = 8192, seed: int = 0,
              logging: bool = True, paused: bool = False, costs: CostTable | None = None,
              **kw) -> Vm:
        mmu_kw = {k: v for k, v in kw.items() if k in mmu_fields}
        guest_kw = {k: v for k, v in kw.items() if k in guest_fields}
        wl_kw = {k: v for k, v in kw.items() if k not in mmu_fields | guest_fields}
        if kind == "idle":
            wl_kw.setdefault("prefill", False)
        guest = GuestSpec(memory_pages=pages, workload=WorkloadSpec(kind=kind, **wl_kw),
                          **guest_kw)
        vm = Vm(guest, _mmu_spec(shape, **mmu_kw), costs or CostTable(), seed=seed)
        vm.prefill()  # a no-op for workloads whose `prefill` is off
        if logging:
            vm.enable_dirty_logging()
        if paused:
            vm.pause()
        return vm

    return build


@pytest.fixture
async def dest_url():
    """A destination in this process, on 127.0.0.1 (an image store of up to 256 MiB)."""
    app = make_app(max_memory_pages=1 << 16)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()
