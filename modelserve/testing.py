"""Test a package in your own pytest suite, with no cluster: one section loaded in-process.

```python
from modelserve.testing import load_section

def test_a_digit_is_classified():
    with load_section("algopkg.AlgoExample") as route:  # conf.ini in the working directory
        answer = route.call({"x": [0] * 64})
        assert answer.status == 200 and answer.json()["result"]["class"] in range(10)
```

The route runs the replica's own request pipeline (pipeline.py): its answers (status, headers,
envelope bytes, errors, streams) are those the deployed route gives, but for `request_id` and the
`x-modelserve-replica` header.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from modelserve import inprocess
from modelserve.config import load_config
from modelserve.inprocess import Answer
from modelserve.pipeline import Pipeline

__all__ = ["Answer", "Route", "load_section"]


class Route:
    """A loaded section's route: send it requests as a client would, get back `Answer`s."""

    def __init__(self, pipeline: Pipeline, route: str, methods: tuple[str, ...]) -> None:
        self.pipeline = pipeline
        self.route = route
        self.methods = methods
        self._loop = asyncio.new_event_loop()

    def call(self, params: Any, headers: Mapping[str, str] | None = None) -> Answer:
        """The params as a JSON body, with the route's method (POST where it takes POST)."""
        method = "POST" if "POST" in self.methods else self.methods[0]
        return self.request(method, json=params, headers=headers)

    def post(self, **kwargs: Any) -> Answer:
        return self.request("POST", **kwargs)

    def get(self, **kwargs: Any) -> Answer:
        return self.request("GET", **kwargs)

    def ping(self) -> Answer:
        return self.request("GET", path="/ping")

    def openapi(self) -> dict[str, Any]:
        """The route's OpenAPI document (`GET <route>/openapi.json`)."""
        answer: dict[str, Any] = self.request("GET", path="/openapi.json").json()
        return answer

    def request(
        self,
        method: str,
        path: str = "",
        *,
        json: Any = None,
        files: Mapping[str, Any] | None = None,
        data: Mapping[str, str] | bytes | None = None,
        query: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Answer:
        """One request to the route (or to `path` under it: `/ping`). The body is `json` (any
        JSON value), a multipart form of `files` (`{name: (filename, bytes, type)}`, as in
        `requests`) and `data` fields, or `data` as raw bytes (give its `content-type` header)."""
        body, content_type = _body(json, files, data)
        sent = {**({"content-type": content_type} if content_type else {}), **(headers or {})}
        query_string = urlencode(query or {}).encode()
        coroutine = inprocess.call(self.pipeline, method, self.route, body, sent, sub=path, query=query_string)
        return self._loop.run_until_complete(coroutine)

    def close(self) -> None:
        self.pipeline.calls.pool.shutdown()
        self._loop.close()


def _body(
    json_value: Any, files: Mapping[str, Any] | None, data: Mapping[str, str] | bytes | None
) -> tuple[bytes, str]:
    if files is not None or isinstance(data, Mapping):
        from urllib3 import encode_multipart_formdata

        form = data if isinstance(data, Mapping) else {}
        return encode_multipart_formdata([*form.items(), *(files or {}).items()])
    if isinstance(data, bytes):
        return data, ""
    if json_value is not None:
        return json.dumps(json_value).encode(), "application/json"
    return b"", ""


@contextmanager
def load_section(section: str, config: str | Path = "conf.ini") -> Iterator[Route]:
    """Load one section of `config` in this process (its model, `user_config`, warm-up) and give its route.

    `section` is its name (`algopkg.AlgoExample`), its package (`AlgoExample`) or its route.
    Raises `ConfigError` for an invalid conf.ini and the package's own error when it fails to load.
    """
    loaded = load_config(config)
    spec = inprocess.find_section(loaded, section)
    inprocess.require_environment(spec, loaded, "try")
    route = Route(inprocess.load_section(loaded, spec, replica_id="testing"), f"/{spec.route}", spec.methods)
    try:
        yield route
    finally:
        route.close()
