"""The migration system: clock, wire format, source engine, destination, link, reports, CLI.

asyncio + aiohttp on top of vmmodel, which it knows only through its public API.
"""
