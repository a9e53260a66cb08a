"""The split's mirror copies (router.py) on one event loop, with Ray's handle replaced (no Ray)."""

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from modelserve import router
from modelserve.router import MIRROR_LIMIT, Router

MIRROR = {"app": "Echo:copy", "deployment": "Echo", "section": "algopkg.Echo:copy", "percent": 100}
TRAFFIC = {
    "targets": [{"app": "Echo", "deployment": "Echo", "section": "algopkg.Echo", "weight": 100}],
    "mirrors": {"algopkg.Echo": [MIRROR]},
}


def test_copies_go_out_in_batches_and_beyond_the_limit_are_dropped_and_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    release = asyncio.Event()
    counted: dict[str, float] = {}

    async def handle_copies(payloads: list[Any]) -> list[int]:
        calls.append(len(payloads))
        await release.wait()  # a mirror that hangs until released
        return [500 if p["i"] == 0 else 200 for p in payloads]

    monkeypatch.setattr(router, "COPY_WINDOW_S", 0.01)
    split = Router("echo")
    split._mirrored = SimpleNamespace(
        inc=lambda n, tags: counted.__setitem__(tags["outcome"], counted.get(tags["outcome"], 0) + n)
    )
    monkeypatch.setattr(
        split, "_handle", lambda target: SimpleNamespace(handle_copies=SimpleNamespace(remote=handle_copies))
    )
    split.reconfigure(TRAFFIC)

    async def scenario() -> None:
        for i in range(250):
            split.copy("algopkg.Echo", {"i": i, "body": b"x"})
        split.copy("algopkg.Echo:other", {"i": -1, "body": b""})  # a section without mirrors: nothing
        await asyncio.sleep(0.05)
        assert sum(calls) == 250 and max(calls) == router.COPY_BATCH  # a window's copies, in few calls
        for i in range(30):
            split.copy("algopkg.Echo", {"i": i, "body": b"x"})  # 6 fit beside the 250 unanswered; 24 are dropped
        await asyncio.sleep(0.05)
        assert sum(calls) == MIRROR_LIMIT and counted == {"dropped": 30 - (MIRROR_LIMIT - 250)}
        split.copy("algopkg.Echo", {"i": -1, "body": b"x" * router.MIRROR_BYTES})  # too large beside them
        release.set()
        await asyncio.sleep(0.05)
        assert split._sender is None  # nothing left to send or count: the sender stops

    asyncio.run(scenario())
    assert counted == {"dropped": 25, "sent": 254, "failed": 2}  # copy 0 of each round failed


def request(body: bytes, query: bytes = b"") -> Any:
    from starlette.requests import Request

    headers = [(b"content-type", b"text/plain"), (b"x-api-key", b"k"), (b"host", b"client"), (b"content-length", b"3")]
    scope = {"type": "http", "method": "POST", "path": "/echo", "root_path": "/echo", "query_string": query}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    return Request({**scope, "headers": headers}, receive)


def test_a_share_is_forwarded_over_http_to_the_side_route_else_through_the_handle(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from aiohttp import web

    seen: list[dict[str, Any]] = []

    async def side(req: web.Request) -> web.Response:
        seen.append(
            {"path": req.path, "query": req.query_string, "headers": dict(req.headers), "body": await req.read()}
        )
        if req.path.endswith("Echo:new"):  # the ingress does not know this side route yet: Ray's 404
            return web.Response(status=404, text="not found")
        return web.Response(status=201, text="from b", headers={"x-modelserve-replica": "rb", "x-extra": "1"})

    async def by_handle(payload: dict[str, Any]) -> Any:
        return 200, [("x-modelserve-replica", "rh")], b"by handle " + payload["body"]

    monkeypatch.setattr(
        Router, "_handle", lambda self, target: SimpleNamespace(handle_http=SimpleNamespace(remote=by_handle))
    )

    async def scenario() -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", side)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        split = Router("echo")
        targets = [
            {
                "app": a,
                "deployment": "Echo",
                "section": f"algopkg.{a}",
                "weight": 1,
                "path": f"/modelserve-split/echo/{a}",
            }
            for a in ("Echo:b", "Echo:new")
        ]
        split.reconfigure({"targets": targets, "forward": f"http://127.0.0.1:{port}"})
        b, new = split._targets
        answer = await split.forward(b, request(b"abc", b"x=1"))
        assert (answer.status_code, bytes(answer.body)) == (201, b"from b")
        assert answer.headers["x-modelserve-section"] == "algopkg.Echo:b" and answer.headers["x-extra"] == "1"
        (got,) = seen
        assert (got["path"], got["query"], got["body"]) == ("/modelserve-split/echo/Echo:b", "x=1", b"abc")
        assert got["headers"]["Content-Type"] == "text/plain" and got["headers"]["x-api-key"] == "k"  # as sent
        assert got["headers"]["Host"] != "client" and "User-Agent" not in got["headers"]
        answer = await split.forward(new, request(b"abc"))  # the side route's first moment: through the handle
        assert bytes(answer.body) == b"by handle abc" and answer.headers["x-modelserve-section"] == "algopkg.Echo:new"
        await runner.cleanup()
        answer = await split.forward(b, request(b"abc"))  # the ingress cannot be reached: the handle
        assert bytes(answer.body) == b"by handle abc"
        assert split._session is not None
        await split._session.close()

    asyncio.run(scenario())
