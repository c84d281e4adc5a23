"""Benchmarks of the emulator itself (`precopy bench ...`): `mmu` (pure compute), `wire` (the
data path into a destination process), `scale` (whole migrations, source and destination
processes, of guests up to 256 GiB)."""
