"""Where a replica runs its model's calls: on the event loop while the model is quick, else on one model thread.

A model call on a separate thread keeps the event loop free, but the two threads then fight for the
GIL: numpy releases it around each BLAS call and waits for the loop to give it back, and every
hand-off wakes the other thread. For a sub-millisecond model (an original-template package at
batch 1) that costs more than the model. So calls start on the model thread, and once `QUICK_CALLS`
calls in a row have each taken under `QUICK_S` they run inline, as in an `async def` endpoint; the
first call that takes longer sends the next ones back to the thread. A backend's `reconfigure` (its
behaviour may change) starts the count again. Inline, a batch of one-at-a-time calls (`run_each`)
gives the loop a turn every `QUICK_S`, so it keeps reading the next requests.

Only one call runs at a time: never one inline beside one on the thread.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

#: A call that takes less than this may run on the event loop (which is blocked that long).
QUICK_S = 0.002
#: Quick calls in a row before calls run inline.
QUICK_CALLS = 16


class ModelCalls:
    """Runs one replica's model calls, one at a time, timing each."""

    def __init__(self, may_inline: bool = True) -> None:
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self._may_inline = may_inline  # a stream's generator advances on the thread between calls
        self._busy_since: float | None = None
        self._quick = 0  # quick calls in a row
        self._on_thread = 0  # hand-offs to the thread not yet back
        self._yielding = False  # an inline `run_each` is giving the loop a turn

    @property
    def inline(self) -> bool:
        """Whether the next call runs on the event loop."""
        return self._may_inline and self._quick >= QUICK_CALLS and not self._on_thread and not self._yielding

    def relearn(self) -> None:
        """Back to the model thread until the model has been quick again (after a reconfigure)."""
        self._quick = 0

    def busy_for(self) -> float:
        """Seconds the running call has taken so far (0 when none runs)."""
        since = self._busy_since
        return 0.0 if since is None else time.monotonic() - since

    async def run(self, fn: Callable[[Any], Any], arg: Any) -> Any:
        """`fn(arg)`, inline or on the model thread."""
        if self.inline:
            return self._timed(fn, arg)
        return await self._on_thread_run(self._timed, fn, arg)

    async def run_each(self, fn: Callable[[Any], Any], args: list[Any]) -> list[Any]:
        """`[fn(arg) for arg in args]`, each call timed on its own; on the thread in one hand-off."""
        if not self.inline:
            return list(await self._on_thread_run(self._each, fn, args))
        results, turn_at = [], time.monotonic() + QUICK_S
        for arg in args:
            results.append(self._timed(fn, arg))
            if time.monotonic() > turn_at and self.inline:
                self._yielding = True
                try:
                    await asyncio.sleep(0)  # let the loop read and queue the next requests
                finally:
                    self._yielding = False
                turn_at = time.monotonic() + QUICK_S
            if not self.inline:  # the model turned slow: the rest on the thread
                rest = args[len(results) :]
                return results + (list(await self._on_thread_run(self._each, fn, rest)) if rest else [])
        return results

    async def _on_thread_run(self, call: Callable[..., Any], *args: Any) -> Any:
        self._on_thread += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self.pool, call, *args)
        finally:
            self._on_thread -= 1

    def _each(self, fn: Callable[[Any], Any], args: list[Any]) -> list[Any]:
        return [self._timed(fn, arg) for arg in args]

    def _timed(self, fn: Callable[[Any], Any], arg: Any) -> Any:
        started = self._busy_since = time.monotonic()
        try:
            return fn(arg)
        finally:
            self._busy_since = None
            quick = time.monotonic() - started < QUICK_S
            self._quick = self._quick + 1 if quick else 0
