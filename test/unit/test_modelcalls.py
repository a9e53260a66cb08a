"""Where model calls run (modelserve.modelcalls): always the model thread by default; opted in
(`model_calls = inline`), the thread until the model proves quick, then inline."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from modelserve import modelcalls
from modelserve.modelcalls import QUICK_CALLS, QUICK_S, ModelCalls


def where(_: Any = None) -> int:
    return threading.get_ident()


def slow(_: Any = None) -> int:
    time.sleep(QUICK_S * 3)
    return threading.get_ident()


class FakeClock:
    now = 0.0

    def monotonic(self) -> float:
        return self.now


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def inline_calls() -> ModelCalls:
    calls = ModelCalls()
    calls.allow_inline(True)
    return calls


def test_calls_start_on_the_thread_and_run_inline_once_quick() -> None:
    async def main() -> list[bool]:
        calls, loop_thread = inline_calls(), threading.get_ident()
        return [await calls.run(where, None) == loop_thread for _ in range(QUICK_CALLS + 3)]

    inline = run(main())
    assert inline == [False] * QUICK_CALLS + [True] * 3


def test_one_slow_call_sends_the_next_ones_back_to_the_thread() -> None:
    async def main() -> tuple[bool, bool, bool]:
        calls, loop_thread = inline_calls(), threading.get_ident()
        for _ in range(QUICK_CALLS):
            await calls.run(where, None)
        slow_inline = await calls.run(slow, None) == loop_thread  # judged after it ran: it ran inline
        after = await calls.run(where, None) == loop_thread
        return slow_inline, after, calls.inline

    assert run(main()) == (True, False, False)


def test_reconfigure_starts_the_count_again() -> None:
    async def main() -> tuple[bool, bool]:
        calls = inline_calls()
        for _ in range(QUICK_CALLS):
            await calls.run(where, None)
        before = calls.inline
        calls.relearn()
        return before, calls.inline

    assert run(main()) == (True, False)


def test_by_default_every_call_runs_on_the_thread() -> None:
    async def main() -> set[bool]:
        calls, loop_thread = ModelCalls(), threading.get_ident()
        ran = {await calls.run(where, None) == loop_thread for _ in range(QUICK_CALLS * 2)}
        ran |= set(r == loop_thread for r in await calls.run_each(where, list(range(QUICK_CALLS * 2))))
        return ran | {calls.inline}

    assert run(main()) == {False}


def test_opting_out_sends_a_quick_model_back_to_the_thread() -> None:
    async def main() -> tuple[bool, bool]:
        calls, loop_thread = inline_calls(), threading.get_ident()
        for _ in range(QUICK_CALLS):
            await calls.run(where, None)
        before = await calls.run(where, None) == loop_thread
        calls.allow_inline(False)
        return before, await calls.run(where, None) == loop_thread

    assert run(main()) == (True, False)


def test_never_inline_beside_a_call_on_the_thread() -> None:
    """One call at a time: while a hand-off is out, the next call queues behind it on the thread."""

    async def main() -> tuple[bool, int]:
        calls, loop_thread = inline_calls(), threading.get_ident()
        for _ in range(QUICK_CALLS):
            await calls.run(where, None)
        calls.relearn()
        first = asyncio.ensure_future(calls.run(slow, None))  # on the thread
        await asyncio.sleep(0)
        calls._quick = QUICK_CALLS  # quick again while `first` is still out
        second = await calls.run(where, None)
        await first
        return second == loop_thread, calls._on_thread

    assert run(main()) == (False, 0)


def test_run_each_gives_the_loop_turns_and_moves_to_the_thread_when_the_model_slows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = FakeClock()  # a call's time as the test says: on a busy machine a 0.7 ms sleep may take 20 ms
    monkeypatch.setattr(modelcalls, "time", clock)

    def taking(seconds: float) -> Any:
        def call(_: Any) -> int:
            clock.now += seconds
            return where()

        return call

    async def main() -> tuple[list[bool], int]:
        calls, loop_thread = inline_calls(), threading.get_ident()
        for _ in range(QUICK_CALLS):
            await calls.run(where, None)
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.ensure_future(ticker())
        fns = [taking(QUICK_S / 3)] * 12 + [taking(QUICK_S * 3), where, where]
        results = await calls.run_each(lambda fn: fn(None), fns)
        task.cancel()
        return [r == loop_thread for r in results], ticks

    inline, ticks = run(main())
    assert inline[:13] == [True] * 13  # the slow one is found slow after it ran
    assert inline[13:] == [False, False]
    assert ticks >= 2, "the loop never got a turn during a long inline batch"


def test_busy_for_counts_while_a_call_runs() -> None:
    calls = ModelCalls()
    seen: list[float] = []

    def call(_: Any) -> None:
        time.sleep(0.02)
        seen.append(calls.busy_for())

    run(calls.run(call, None))
    assert seen[0] >= 0.015
    assert calls.busy_for() == 0.0


def test_a_timeout_on_the_thread_frees_the_loop_and_others_are_answered_meanwhile() -> None:
    """What `timeout_s` needs: after many quick calls, a slow one is given up on in time, the loop
    answers other work while it runs, and the next call waits for the thread (never beside it)."""

    async def main() -> tuple[float, int, bool, float]:
        calls = ModelCalls()
        for _ in range(100):
            await calls.run(where, None)
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        task = asyncio.ensure_future(ticker())
        started = time.monotonic()
        try:
            await asyncio.wait_for(calls.run(lambda _: time.sleep(1), None), 0.2)
        except asyncio.TimeoutError:
            gave_up, ticked = time.monotonic() - started, ticks
        busy = calls.busy_for() > 0  # the call still runs on the thread
        await calls.run(where, None)  # queued behind it
        task.cancel()
        return gave_up, ticked, busy, time.monotonic() - started

    gave_up, ticked, busy, next_done = run(main())
    assert gave_up < 0.6, gave_up  # inline, it would have waited the whole second
    assert ticked >= 2, "the loop did not run while the model call did"
    assert busy and next_done >= 1, "the next call ran beside the slow one"


def test_the_thread_outlives_a_loop_that_closed_while_it_ran() -> None:
    calls = ModelCalls()

    async def leave() -> None:
        calls.pool.call(time.sleep, 0.1)  # not awaited: the loop closes before it ends

    run(leave())
    time.sleep(0.2)
    assert run(asyncio.wait_for(calls.run(where, None), 5)) != threading.get_ident()  # a dead thread: TimeoutError


def test_the_thread_passes_results_and_exceptions_and_serves_an_executor() -> None:
    def fail(_: Any) -> None:
        raise ValueError("no")

    async def main() -> tuple[int, str, int]:
        calls = ModelCalls()
        thread = await calls.run(where, None)
        try:
            await calls.run(fail, None)
        except ValueError as exc:
            message = str(exc)
        via_executor = await asyncio.get_running_loop().run_in_executor(calls.pool, where)
        return thread, message, via_executor

    thread, message, via_executor = run(main())
    assert thread == via_executor != threading.get_ident()
    assert message == "no"
