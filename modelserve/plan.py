"""Specs -> one Ray Serve declarative config; what applying it changes. Pure: no Ray.

Each section becomes one Serve application. What decides a restart is kept
apart from what updates in place:
- `import_path`, `runtime_env` and `args` form Ray's code version: the package
  upload URI and the model files' digest live there, so new code or new model
  files roll the replicas (new ones start before old ones stop).
- the deployment options (`num_replicas`, `user_config`, batching, limits)
  are applied to running replicas without restarting them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from modelserve.config import Config, SectionSpec

IMPORT_PATH = "modelserve.app:build"
#: Start a replacement replica (at least one, 25% of the target) before stopping
#: an old one: a new version that fails to load never takes down the running one.
MAX_SURGE_PERCENT = 25
#: Ray Serve settings each replica process reads when it starts. They travel in the section's
#: runtime_env, so they hold however the nodes were started. Measured with `make bench` at 32
#: connections (bench/RESULTS.md):
#: - user code on the replica's own event loop: a request is no longer handed to a second loop
#:   thread and back (Ray's RAY_SERVE_THROUGHPUT_OPTIMIZED does the same). The loop never blocks
#:   on the model, which runs on the replica's model thread. 1,302 -> 1,598 requests/s.
#: - Serve's log lines (and a backend's print) go to the replica's log file, which the dashboard
#:   shows, and not also to the worker's stderr, which nobody reads: the controller is not a Ray
#:   driver. About +12% (medians 1,790 -> 2,000 over 4 runs each).
REPLICA_ENV = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0", "RAY_SERVE_LOG_TO_STDERR": "0"}
_CODE_KEYS = ("import_path", "runtime_env", "args", "route_prefix")


@dataclass(frozen=True)
class Artifacts:
    """What the planner needs from outside: upload URIs and model digests per section."""

    package_uri: Mapping[str, str]
    model_digest: Mapping[str, str]
    requirements: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    runtime_digest: str = ""


@dataclass(frozen=True)
class Change:
    app: str
    action: str  # "new", "roll out", "update in place", "unchanged", "remove"


def section_args(spec: SectionSpec, config: Config, model_digest: str, runtime_digest: str = "") -> dict[str, Any]:
    return {
        "section": spec.section,
        "deployment": spec.package,
        "package": spec.package,
        "backend": spec.backend,
        "model_zoo": str(config.model_zoo),
        "model_files": list(spec.model_files),
        "model_digest": model_digest,
        "runtime_digest": runtime_digest,
        "methods": list(spec.methods),
        "warmup": spec.warmup,
    }


def user_config(spec: SectionSpec) -> dict[str, Any]:
    return {
        "user": dict(spec.user_config),
        "max_batch_size": spec.max_batch_size,
        "batch_wait_ms": spec.batch_wait_ms,
    }


def deployment_options(spec: SectionSpec, access_log: bool = False) -> dict[str, Any]:
    options: dict[str, Any] = {
        "name": spec.package,
        "num_replicas": spec.replicas,
        "max_ongoing_requests": spec.max_ongoing_requests,
        "user_config": user_config(spec),
        "ray_actor_options": {"num_cpus": spec.cpu_cost, "num_gpus": spec.gpu_cost},
        "max_surge_percent": MAX_SURGE_PERCENT,
        # Serve's access log costs ~15% of a replica's throughput (`make bench`); like gunicorn's,
        # it is off unless `[MODEL SERVE] access_log = on`. Errors are logged either way.
        "logging_config": {"enable_access_log": access_log},
    }
    if spec.max_replicas_per_node is not None:
        options["max_replicas_per_node"] = spec.max_replicas_per_node
    return options


def package_env(spec: SectionSpec, artifacts: Artifacts) -> dict[str, Any]:
    """The runtime_env keys of the section's own Python environment (built by Ray on each node)."""
    if spec.env == "pip":
        return {"pip": {"packages": list(artifacts.requirements[spec.package]), "pip_check": False}}
    if spec.env.startswith("conda:"):
        return {"conda": spec.env.split(":", 1)[1]}
    return {}


def application(spec: SectionSpec, config: Config, artifacts: Artifacts) -> dict[str, Any]:
    env_vars = {
        "MODEL_ZOO": str(config.model_zoo),
        "MODEL_NAME": spec.app_name,
        "MODEL_FILES": ",".join(spec.model_files),
        **REPLICA_ENV,
    }
    return {
        "name": spec.app_name,
        "route_prefix": f"/{spec.route}",
        "import_path": IMPORT_PATH,
        "runtime_env": {
            "py_modules": [artifacts.package_uri[spec.package]],
            "env_vars": env_vars,
            **package_env(spec, artifacts),
        },
        "args": section_args(spec, config, artifacts.model_digest[spec.section], artifacts.runtime_digest),
        "deployments": [deployment_options(spec, config.serve.access_log)],
    }


def deploy_config(config: Config, artifacts: Artifacts) -> dict[str, Any]:
    """The whole file as one `ServeDeploySchema` dict: applying it removes apps not in it."""
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": config.serve.host, "port": config.serve.port},
        "applications": [application(spec, config, artifacts) for spec in config.sections],
    }


def _subset(running: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    """Whether every key we set has the same value in what runs (Ray adds defaults)."""
    for key, value in wanted.items():
        if isinstance(value, Mapping) and key != "args":
            if not isinstance(running.get(key), Mapping) or not _subset(running[key], value):
                return False
        elif running.get(key) != value:
            return False
    return True


def diff(desired: Mapping[str, Any], running: Mapping[str, Mapping[str, Any]]) -> list[Change]:
    """What applying `desired` does to each app, given `{name: deployed_app_config}` of what runs."""
    changes: list[Change] = []
    for app in desired["applications"]:
        current = running.get(app["name"])
        if current is None:
            action = "new"
        elif any(current.get(k) != app[k] for k in _CODE_KEYS):
            action = "roll out"
        elif not _deployments_match(current.get("deployments") or [], app["deployments"]):
            action = "update in place"
        else:
            action = "unchanged"
        changes.append(Change(app["name"], action))
    wanted = {app["name"] for app in desired["applications"]}
    changes.extend(Change(name, "remove") for name in running if name not in wanted)
    return changes


def _deployments_match(running: list[Mapping[str, Any]], wanted: list[Mapping[str, Any]]) -> bool:
    by_name = {d.get("name"): d for d in running}
    return all(w["name"] in by_name and _subset(by_name[w["name"]], w) for w in wanted)
