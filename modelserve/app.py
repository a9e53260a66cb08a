"""The Serve application builder named by every application's `import_path`.

`args` carry the section as `plan.section_args` wrote it, plus digests of the
package and model files: Ray hashes `args` into the code version, so a change
of either rolls the replicas, and an unchanged file restarts nothing.
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application

from modelserve.ingress import ModelReplica


def build(args: dict[str, Any]) -> Application:
    deployment = serve.deployment(ModelReplica, name=args["deployment"])
    return deployment.bind(args)  # type: ignore[attr-defined]
