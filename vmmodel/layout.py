"""Where sptes can exist: the guest's page tables as the MMU will shadow them.

Every possible spte has a fixed id; a shadow page (`kvm_mmu_page`) is a run of
512 consecutive ids, so `sp = id >> 9` and the slot walk is a reshape. Which
of them are present, writable and in the rmap is the MMU's dynamic state.

- `tdp` (EPT/NPT): one leaf spte per gfn, id == gfn; a leaf shadow page maps
  512 consecutive gfns.
- `shadow` (legacy shadow paging): the kernel's direct map (shared by every
  process, so shadowed once) occupies ids [0, total_gfns) like tdp; then each
  guest process has its own region of user mappings to random gfns, some
  shared by all processes. A gfn can thus be mapped by several sptes, and
  `n_used_mmu_pages` depends on the processes, not on the slot size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vmmodel.spec import MmuSpec

SPTES_PER_PAGE = 512
SPTE_SHIFT = 9
# Each process's user region starts on a 512 x 512 id boundary, so its level-1
# shadow pages never share a level-2 parent with another process's.
REGION_ALIGN = SPTES_PER_PAGE * SPTES_PER_PAGE


@dataclass(frozen=True)
class Layout:
    spte_gfn: np.ndarray  # int64 per spte id; -1 where no guest pte exists
    # address_space_map[p, gfn]: the spte through which process p reaches gfn, -1 if none
    address_space_map: np.ndarray | None
    max_aliases: int  # the most sptes that can map one gfn
    roots: int  # root shadow pages: one per address space

    @property
    def n_sptes(self) -> int:
        return len(self.spte_gfn)

    @property
    def ids_are_gfns(self) -> bool:
        """tdp: spte id k maps gfn k, so translating a gfn (or back) is the identity."""
        return self.address_space_map is None

    @property
    def n_shadow_pages(self) -> int:
        return self.n_sptes >> SPTE_SHIFT


def _round_up(n: int, align: int) -> int:
    return -(-n // align) * align


def tdp_layout(total_gfns: int) -> Layout:
    n = _round_up(total_gfns, SPTES_PER_PAGE)
    spte_gfn = np.arange(n, dtype=np.int64)
    spte_gfn[total_gfns:] = -1
    return Layout(spte_gfn=spte_gfn, address_space_map=None, max_aliases=1, roots=1)


def shadow_layout(
    total_gfns: int, ram_pages: int, spec: MmuSpec, rng: np.random.Generator
) -> Layout:
    """Direct map plus `address_spaces` processes each mapping `mapped_pages` of RAM."""
    mapped = min(spec.mapped_pages, ram_pages)
    n_shared = int(round(spec.shared * mapped))
    shared = rng.choice(ram_pages, size=n_shared, replace=False)
    direct_end = _round_up(total_gfns, REGION_ALIGN)
    region = _round_up(max(mapped, 1), REGION_ALIGN)
    n = direct_end + spec.address_spaces * region
    spte_gfn = np.full(n, -1, dtype=np.int64)
    spte_gfn[:total_gfns] = np.arange(total_gfns)
    as_map = np.full((spec.address_spaces, total_gfns), -1, dtype=np.int64)
    for p in range(spec.address_spaces):  # per process, a handful: not per page
        private = rng.choice(ram_pages, size=mapped - n_shared, replace=False)
        gfns = np.unique(np.concatenate([shared, private]))
        rng.shuffle(gfns)  # virtual order is not physical order
        base = direct_end + p * region
        ids = base + np.arange(len(gfns))
        spte_gfn[ids] = gfns
        as_map[p, gfns] = ids
    aliases = 1 + np.count_nonzero(as_map >= 0, axis=0)
    return Layout(
        spte_gfn=spte_gfn,
        address_space_map=as_map,
        max_aliases=int(aliases.max()),
        roots=spec.address_spaces,
    )
