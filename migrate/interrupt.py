"""Ctrl-C and SIGTERM during a migration: cancel it cleanly, whatever the model is doing."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def cancel_on_signals() -> Iterator[Callable[[], bool]]:
    """Within: SIGINT and SIGTERM cancel the current task; yield `stopped()`, for the model
    to ask between its steps.

    A plain signal handler, not the loop's: it runs between two bytecodes even while the
    model runs a long synchronous stretch. On the way out the handlers are restored and
    the task's cancel taken back, so the caller ends the migration its own way.
    """
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    stopped = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopped
        stopped = True
        loop.call_soon_threadsafe(task.cancel)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield lambda: stopped
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if task is not None and task.cancelling():
            task.uncancel()
