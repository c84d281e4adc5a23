"""Benchmarks of the emulator itself (`precopy bench ...`): pure compute, no asyncio."""
