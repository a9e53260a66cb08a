"""The Serve application builder named by every application's `import_path`.

`args` are the section's `ReplicaArgs` (replica_spec.py) as the planner wrote them.
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application

from modelserve.fallback import DEPLOYMENT, RouteNotFound
from modelserve.ingress import ModelReplica
from modelserve.replica_spec import ReplicaArgs


def build(args: dict[str, Any]) -> Application:
    spec = ReplicaArgs.from_json(args)
    return serve.deployment(name=spec.package)(ModelReplica).bind(spec)


def build_fallback(args: dict[str, Any]) -> Application:
    """The 404 answer for paths no section owns (fallback.py)."""
    return serve.deployment(name=DEPLOYMENT)(RouteNotFound).bind()
