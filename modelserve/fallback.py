"""The answer for a path no section owns: a 404 in the JSON envelope, naming the routes there are.

Ray answers such paths itself, in plain text. A small application of our own at route `/` (the
shortest prefix, so every section's route wins over it) takes them instead. It holds no CPU,
and its list of routes changes in place.
"""

from __future__ import annotations

import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from modelserve import envelope
from modelserve.errors import NotFound

#: The application's name: no conf.ini section can have it (sections are `algopkg.<identifier>`).
APP_NAME = "modelserve-404"
DEPLOYMENT = "RouteNotFound"


class RouteNotFound:
    """Answers every request it gets with a 404 envelope."""

    def __init__(self) -> None:
        self._routes: list[str] = []

    def reconfigure(self, config: dict[str, Any]) -> None:
        self._routes = list(config.get("routes", []))

    async def __call__(self, request: Request) -> Response:
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        routes = ", ".join(f"/{r}" for r in self._routes) or "none"
        error = NotFound(f"no route serves {request.url.path!r}; the routes here are: {routes}")
        body = envelope.dumps(envelope.failure(error, request_id))
        return Response(body, status_code=404, media_type="application/json")


def application(routes: list[str], runtime_modules: list[str], env_vars: dict[str, str]) -> dict[str, Any]:
    """Its entry in the deploy config."""
    return {
        "name": APP_NAME,
        "route_prefix": "/",
        "import_path": "modelserve.app:build_fallback",
        "runtime_env": {"py_modules": runtime_modules, "env_vars": env_vars},
        "args": {},
        "deployments": [
            {
                "name": DEPLOYMENT,
                "num_replicas": 1,
                "max_ongoing_requests": 1000,
                "user_config": {"routes": sorted(routes)},
                "ray_actor_options": {"num_cpus": 0},
                "logging_config": {"enable_access_log": False},
            }
        ],
    }
