"""Specs -> one Ray Serve declarative config; what applying it changes. Pure: no cluster.

Each section becomes one Serve application. Whether a change rolls the replicas or updates
them in place is declared with each conf.ini key (`keys.ROLL_OUT` / `keys.IN_PLACE`):
- roll-out keys travel in the application's `args` (`ReplicaArgs`), which Ray hashes into
  the code version together with `import_path` and `runtime_env` (the uploaded runtime and
  package, the model files' digest): new replicas start before old ones stop.
- in-place keys are deployment options (`num_replicas`, `user_config`, limits), applied to
  running replicas without restarting them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from modelserve import auth, fallback, raycompat, traffic
from modelserve.keys import IN_PLACE, ROLL_OUT
from modelserve.models import SectionModels
from modelserve.replica_spec import ReplicaArgs, ReplicaConfig
from modelserve.settings import SECTION_KEYS, Config, SectionSpec

IMPORT_PATH = "modelserve.app:build"
#: Start a replacement replica (at least one, 25% of the target) before stopping
#: an old one: a new version that fails to load never takes down the running one.
MAX_SURGE_PERCENT = 25
#: What Ray hashes into the replicas' code version: a change starts new replicas. A new
#: `route_prefix` only re-routes the running ones (measured: same PIDs).
_CODE_KEYS = ("import_path", "runtime_env", "args")


@dataclass(frozen=True)
class Artifacts:
    """What the planner needs from outside: upload URIs and model digests."""

    package_uri: Mapping[str, str]
    model_digest: Mapping[str, str]
    requirements: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: The replica's own modules (modelserve's), uploaded like a package: replicas run exactly
    #: the code the controller planned with, whatever copy the nodes have installed.
    runtime_uri: str = ""

    @classmethod
    def placeholder(cls, config: Config) -> Artifacts:
        """Stand-ins for `check`, which validates the plan without a cluster."""
        return cls(
            {s.package: f"gcs://_modelserve_pkg_{s.package}.zip" for s in config.sections},
            {s.section: "0" * 16 for s in config.sections},
            {s.package: () for s in config.sections},
            "gcs://_modelserve_runtime.zip",
        )


@dataclass(frozen=True)
class Change:
    app: str
    action: str  # "new", ROLL_OUT, IN_PLACE, "unchanged", "remove"


def replica_args(spec: SectionSpec, config: Config, model_digest: str) -> ReplicaArgs:
    rollout = {name: getattr(spec, f) for name, (f, key) in SECTION_KEYS.items() if key.change == ROLL_OUT}
    found = section_models(spec, config)
    rollout["model@"] = list(found.pinned)  # digits@latest as pinned: it rolls when it moves
    return ReplicaArgs(
        section=spec.section,
        package=spec.package,
        backend=spec.backend,
        model_zoo=found.zoo,
        model_files=tuple(f.name for f in found.files),
        methods=spec.methods,
        warmup=spec.warmup,
        model_digest=model_digest,
        rollout_keys={k: list(v) if isinstance(v, tuple) else v for k, v in rollout.items()},
        stored_files=tuple(asdict(f) for f in found.files) if found.remote else (),
        model_cache_gb=config.serve.model_cache_gb,
        models=config.models_of(spec),
        models_per_replica=spec.models_per_replica if spec.models else 0,
    )


def section_models(spec: SectionSpec, config: Config) -> SectionModels:
    """The section's resolved model files (config.load_config), or its zoo with none for a config
    built without resolving (a section with no `model`)."""
    return config.models.get(spec.section) or SectionModels(config.zoo_of(spec))


def replica_config(spec: SectionSpec, config: Config, split: Mapping[str, Any] | None = None) -> ReplicaConfig:
    key_file = config.api_keys_file(spec)
    return ReplicaConfig(
        user=dict(spec.user_config),
        max_batch_size=spec.max_batch_size,
        batch_wait_ms=spec.batch_wait_ms,
        max_body_kb=spec.max_body_kb,
        timeout_s=spec.timeout_s,
        model_calls=spec.model_calls,
        api_keys=auth.read_key_file(key_file) if key_file else (),
        access_log_json=config.serve.access_log == "json",
        route=f"/{spec.route}",
        traffic=dict(split or {}),
    )


def max_surge_percent(spec: SectionSpec) -> int:
    """`rollout = replace` is Ray's own default, 0: each old replica stops before its replacement
    starts (`rolling_update_percentage` of the target at a time, at least one), so a roll-out needs
    no room beyond what the section holds."""
    return MAX_SURGE_PERCENT if spec.rollout == "surge" else 0


def deployment_options(spec: SectionSpec, config: Config, split: Mapping[str, Any] | None = None) -> dict[str, Any]:
    options: dict[str, Any] = {
        "name": spec.package,
        "max_ongoing_requests": spec.max_ongoing_requests,
        "max_queued_requests": spec.queue_limit,
        # Ray's replica answers a request beyond the queue itself, before our code runs: plain text, not
        # our envelope; this makes it a 503 that tells the client when to come back.
        "backpressure_config": {"status_code": 503, "retry_after_s": 1},
        "user_config": replica_config(spec, config, split).to_json(),
        "ray_actor_options": {"num_cpus": spec.cpu_cost, "num_gpus": spec.gpu_cost},
        "max_surge_percent": max_surge_percent(spec),
        # Serve's per-request access log is off unless `[MODEL SERVE] access_log = on`, as in
        # gunicorn (its cost: bench/RESULTS.md). Errors are logged either way.
        "logging_config": {"enable_access_log": config.serve.access_log == "on"},
    }
    if spec.max_replicas_per_node is not None:
        options["max_replicas_per_node"] = spec.max_replicas_per_node
    if spec.replicas.autoscaling:
        options["autoscaling_config"] = {
            "min_replicas": spec.replicas.min,
            "max_replicas": spec.replicas.max,
            # The first apply starts one replica even with 0-N: it proves the model loads and warms up.
            "initial_replicas": max(spec.replicas.min, 1),
            "target_ongoing_requests": spec.target_ongoing_requests,
            "upscale_delay_s": spec.upscale_delay_s,
            "downscale_delay_s": spec.downscale_delay_s,
        }
    else:
        options["num_replicas"] = spec.replicas.max
    return options


def package_env(spec: SectionSpec, artifacts: Artifacts) -> dict[str, Any]:
    """The runtime_env keys of the section's own Python environment (built by Ray on each node)."""
    if spec.env == "pip":
        return {"pip": {"packages": list(artifacts.requirements[spec.package]), "pip_check": False}}
    if spec.env.startswith("conda:"):
        return {"conda": spec.env.split(":", 1)[1]}
    return {}


def application(
    spec: SectionSpec, config: Config, artifacts: Artifacts, split: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The section's application; `split` is set on the owner of a shared or mirrored route."""
    env_vars = {
        "MODEL_ZOO": config.zoo_of(spec),
        "MODEL_NAME": spec.app_name,
        "MODEL_FILES": ",".join(f.name for f in section_models(spec, config).files),
        **raycompat.replica_env(),
    }
    py_modules = [artifacts.runtime_uri] if artifacts.runtime_uri else []
    return {
        "name": spec.app_name,
        "route_prefix": f"/{spec.route}",
        "import_path": IMPORT_PATH,
        "runtime_env": {
            "py_modules": [*py_modules, artifacts.package_uri[spec.package]],
            "env_vars": env_vars,
            **package_env(spec, artifacts),
        },
        "args": replica_args(spec, config, artifacts.model_digest[spec.section]).to_json(),
        "deployments": [deployment_options(spec, config, split)],
    }


def deploy_config(config: Config, artifacts: Artifacts, owners: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The whole file as one `ServeDeploySchema` dict: applying it removes apps not in it.

    A shared or mirrored route is owned by one of its sections, whose replicas split it
    (`traffic`); `owners` (`route_owners` of what runs) keeps a route with the section that
    owns it now. With any section, it also holds `fallback`'s application (the 404 envelope)."""
    owned: dict[str, dict[str, Any]] = {}
    behind: set[str] = set()
    forward = traffic.forward_url(config.serve.host, config.serve.port)
    for group in traffic.routed(config.sections).values():
        first = traffic.owner(group, owners or {})
        owned[first.section] = traffic.split_config(group, config.sections, first, forward)
        behind.update(s.section for s in group if s is not first)
    apps = []
    for spec in config.sections:
        app = application(spec, config, artifacts, owned.get(spec.section))
        if spec.section in behind:
            app["route_prefix"] = traffic.side_route(spec)  # where the route's owner forwards its share
        apps.append(app)
    modules = [artifacts.runtime_uri] if artifacts.runtime_uri else []
    if apps and not any(spec.stage for spec in config.sections):  # production's; stages share it
        routes = sorted({spec.route for spec in config.sections})
        apps.append(fallback.application(routes, modules, raycompat.replica_env()))
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": config.serve.host, "port": config.serve.port},
        "applications": apps,
    }


def route_owners(running: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """`{route: app name}` of the sections' applications that own a route now (`running_configs`)."""
    return {
        app["route_prefix"].strip("/"): name
        for name, app in running.items()
        if app.get("route_prefix") and not traffic.is_ours(name) and not app["route_prefix"].startswith(SIDE_PREFIX)
    }


SIDE_PREFIX = f"/{traffic.SIDE}/"


def schema_problems(desired: Mapping[str, Any]) -> list[str]:
    """What Ray itself would reject in a deploy config, as `[section]`-named problems."""
    names = {app["name"]: app["args"].get("section", app["name"]) for app in desired.get("applications", [])}
    problems = []
    for problem in raycompat.deploy_schema_problems(desired):
        where, _, msg = problem.partition(": ")
        parts = where.split(".")
        if parts[0] == "applications" and len(parts) > 1 and parts[1].isdigit():
            app = desired["applications"][int(parts[1])]["name"]
            problems.append(f"[{names[app]}] Ray Serve rejects {'.'.join(parts[2:])}: {msg}")
        else:
            problems.append(f"Ray Serve rejects {where}: {msg}")
    return problems


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
    changes = [
        Change(app["name"], _action(app, running.get(app["name"])))
        for app in desired["applications"]
        if app["name"] != fallback.APP_NAME  # the 404 answer: never in the table
    ]
    wanted = {app["name"] for app in desired["applications"]}
    changes.extend(Change(name, "remove") for name in running if name not in wanted and name != fallback.APP_NAME)
    return changes


def unchanged(desired: Mapping[str, Any], running: Mapping[str, Mapping[str, Any]]) -> bool:
    """Whether applying `desired` would change nothing that runs (the 404 app included)."""
    wanted = {app["name"] for app in desired["applications"]}
    same = all(_action(app, running.get(app["name"])) == "unchanged" for app in desired["applications"])
    return same and set(running) <= wanted


def _action(app: Mapping[str, Any], current: Mapping[str, Any] | None) -> str:
    if current is None:
        return "new"
    if any(current.get(k) != app[k] for k in _CODE_KEYS):
        return ROLL_OUT
    if current.get("route_prefix") != app["route_prefix"] or not _deployments_match(
        current.get("deployments") or [], app["deployments"]
    ):
        return IN_PLACE
    return "unchanged"


def _deployments_match(running: list[Mapping[str, Any]], wanted: list[Mapping[str, Any]]) -> bool:
    by_name = {d.get("name"): d for d in running}
    return all(w["name"] in by_name and _subset(by_name[w["name"]], w) for w in wanted)
