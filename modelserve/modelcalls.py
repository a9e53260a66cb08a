"""Where a replica runs its model's calls: on its one model thread, or (opted in) on the event loop.

On the model thread (conf.ini `model_calls = thread`, the default) the event loop stays free while
the model runs: other requests are read and answered meanwhile, and `timeout_s` holds, as the loop
can stop waiting for a call it cannot stop. The hand-off is one queue put and one loop wake-up
per call (`ModelThread`: about 35 us of CPU per call in-process, against 65 us through
`run_in_executor`); a batch of one-at-a-time calls (`run_each`) goes over in one hand-off.

`model_calls = inline` (a section's opt-in) saves that hand-off and the two threads' fight for the
GIL (numpy releases it around each BLAS call and waits for the loop to give it back), which for a
sub-millisecond model costs more than the model. Calls start on the thread, and once
`QUICK_CALLS` calls in a row have each taken under `QUICK_S` they run inline, as in an `async def`
endpoint; the first call that takes longer sends the next ones back to the thread. A backend's
`reconfigure` (its behaviour may change) starts the count again. Inline, a call cannot be cut
short: `timeout_s` does not hold, and every other request on the replica waits for it. A batch of
one-at-a-time calls inline gives the loop a turn every `QUICK_S`.

Only one call runs at a time: never one inline beside one on the thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

#: A call that takes less than this may run on the event loop (which is blocked that long).
QUICK_S = 0.002
#: Quick calls in a row before calls run inline (with `model_calls = inline`).
QUICK_CALLS = 16


def _nothing() -> None:
    pass


class ModelThread(Executor):
    """One daemon thread that runs the calls given to it, one at a time, in order.

    `submit` serves `loop.run_in_executor` (a stream's generator); `call` is the cheaper hand-off
    for an awaited call: no `concurrent.futures.Future` to chain, one `call_soon_threadsafe` back."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        threading.Thread(target=self._work, name="model", daemon=True).start()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()

        def job() -> None:
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args, **kwargs))
                except BaseException as exc:
                    future.set_exception(exc)

        self._jobs.put(job)
        return future

    def call(self, fn: Callable[..., Any], *args: Any, done: Callable[[], None] = _nothing) -> asyncio.Future[Any]:
        """`fn(*args)` on the thread, awaited on the running loop; then `done()` on the loop, even
        when the future was cancelled meanwhile."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def job() -> None:
            try:
                result, error = fn(*args), None
            except BaseException as exc:
                result, error = None, exc
            with contextlib.suppress(RuntimeError):  # the loop has closed: no one waits, and the thread lives on
                loop.call_soon_threadsafe(_settle, future, result, error, done)

        self._jobs.put(job)
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """The thread ends once the calls given before have run (`controller.py dev` replacing a version)."""
        self._jobs.put(None)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            job()


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None, done: Callable[[], None]) -> None:
    done()
    if future.done():  # cancelled: the request stopped waiting (timeout_s)
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


class ModelCalls:
    """Runs one replica's model calls, one at a time, timing each."""

    def __init__(self) -> None:
        self.pool = ModelThread()
        self._may_inline = False  # `model_calls = inline`, and not a stream (it advances on the thread)
        self._busy_since: float | None = None
        self._quick = 0  # quick calls in a row
        self._on_thread = 0  # calls handed to the thread and not yet back (even if no longer awaited)
        self._yielding = False  # an inline `run_each` is giving the loop a turn

    @property
    def inline(self) -> bool:
        """Whether the next call runs on the event loop."""
        return self._may_inline and self._quick >= QUICK_CALLS and not self._on_thread and not self._yielding

    def allow_inline(self, allowed: bool) -> None:
        """Opt in to inline calls once the model is quick (`model_calls = inline`), or back out."""
        self._may_inline = allowed

    def relearn(self) -> None:
        """Back to the model thread until the model has been quick again (after a reconfigure)."""
        self._quick = 0

    def busy_for(self) -> float:
        """Seconds the running call has taken so far (0 when none runs)."""
        since = self._busy_since
        return 0.0 if since is None else time.monotonic() - since

    async def run(self, fn: Callable[[Any], Any], arg: Any) -> Any:
        """`fn(arg)`, on the model thread (or inline, when opted in and quick)."""
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

    def _on_thread_run(self, call: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        self._on_thread += 1
        return self.pool.call(call, *args, done=self._back)

    def _back(self) -> None:
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
