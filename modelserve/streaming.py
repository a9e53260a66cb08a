"""Streamed answers: a backend's `infer_stream` generator, item by item, as NDJSON lines or
Server-Sent Events (chosen by the request's `Accept`).

A sync generator advances on the model thread (the event loop never waits on the model); an
async generator runs on the loop. The first item is produced before the answer starts, so a
failure before it is a plain error answer (400 for a `BadRequest`); a failure after it ends the
stream with an error item. A client that goes away stops the generator.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import Executor
from typing import Any

import anyio
from starlette.responses import StreamingResponse

from modelserve import envelope
from modelserve.errors import ModelError, ModelServeError

logger = logging.getLogger("ray.serve")

NDJSON = "application/x-ndjson"
SSE = "text/event-stream"
_DONE = object()


class ItemStream:
    """The items of what `infer_stream` returned: a generator, an async generator or an iterable."""

    def __init__(self, produced: Any, pool: Executor) -> None:
        self._async = hasattr(produced, "__anext__")
        self._items = produced if self._async else iter(produced)
        self._pool = pool

    async def next(self) -> Any:
        """The next item, or `_DONE`."""
        if self._async:
            try:
                return await self._items.__anext__()
            except StopAsyncIteration:
                return _DONE
        return await asyncio.get_running_loop().run_in_executor(self._pool, next, self._items, _DONE)

    async def close(self) -> None:
        with anyio.CancelScope(shield=True):  # runs while the answer is being cancelled
            if self._async:
                await self._items.aclose()
            elif hasattr(self._items, "close"):
                await asyncio.get_running_loop().run_in_executor(self._pool, self._items.close)


def _frame(data: bytes, sse: bool, event: str = "") -> bytes:
    if not sse:
        return data + b"\n"
    return (f"event: {event}\n".encode() if event else b"") + b"data: " + data + b"\n\n"


async def respond(stream: ItemStream, accept: str, request_id: str, headers: Mapping[str, str]) -> StreamingResponse:
    """The streamed answer. Raises what the generator raised before its first item."""
    try:
        first = await stream.next()
    except ModelServeError:
        await stream.close()
        raise
    except Exception as exc:
        await stream.close()
        logger.error("request %s: the stream failed before its first item", request_id, exc_info=exc)
        raise ModelError(f"the model failed on this request: {type(exc).__name__}: {exc}") from exc
    sse = SSE in accept

    async def body() -> AsyncIterator[bytes]:
        item = first
        try:
            while item is not _DONE:
                yield _frame(envelope.dumps(item), sse)
                item = await stream.next()
        except Exception as exc:
            error = exc if isinstance(exc, ModelServeError) else ModelError(f"{type(exc).__name__}: {exc}")
            logger.error("request %s: the stream failed", request_id, exc_info=exc)
            yield _frame(envelope.dumps(envelope.failure(error, request_id)), sse, event="error")
        finally:
            await stream.close()

    media_type = SSE if sse else NDJSON
    extra = {"cache-control": "no-cache", "x-accel-buffering": "no"}  # x-request-id: the proxy adds it
    return StreamingResponse(body(), media_type=media_type, headers={**headers, **extra})
