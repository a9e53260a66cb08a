"""One apply: validate, check the plan fits, upload, send, wait, and roll back what failed.

A failed apply never leaves the cluster worse than before: a section that was running and
fails to take its new configuration (a model that will not load, a `user_config` the backend
rejects, replicas that never become healthy) gets its last good configuration back at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import requests

from modelserve import plan, stages, status, traffic
from modelserve.cluster import Cluster, ClusterError
from modelserve.config import ConfigError
from modelserve.envelope import REPLICA_HEADER
from modelserve.fit import fit_problems, resolve_auto
from modelserve.keys import ROLL_OUT
from modelserve.packaging import read_requirements, staged_package, staged_runtime
from modelserve.settings import Config
from modelserve.timings import Phases

#: The full error of each section that failed in the last apply (the table shows one line each).
ERRORS_FILE = "last_errors.log"
#: The digest of the last plan Ray's schema accepted (`validated_once`).
VALIDATED_FILE = "validated_plan.sha256"


@dataclass
class Outcome:
    details: dict[str, Any]
    failed: dict[str, status.Row] = field(default_factory=dict)  # app -> its row, with the cluster's message
    rolled_back: list[str] = field(default_factory=list)


def upload_artifacts(config: Config, cluster: Cluster) -> plan.Artifacts:
    return artifacts(config, lambda staged, _name: cluster.upload(staged))


def artifacts(config: Config, upload: Callable[[Path, str], str]) -> plan.Artifacts:
    """The plan's artifacts: each package and the replica runtime staged and given to `upload(dir, name)`
    (to the cluster, or to an object store: package_store.py), which returns its URI."""
    uris = {}
    for package in sorted({s.package for s in config.sections}):
        with staged_package(config.algopkg_dir, package) as staged:
            uris[package] = upload(staged, package)
    with staged_runtime() as runtime:
        runtime_uri = upload(runtime, "modelserve")
    digests = {s.section: plan.section_models(s, config).digest for s in config.sections}
    requirements = {
        s.package: read_requirements(config.algopkg_dir / s.package / "requirements.txt")
        for s in config.sections
        if s.env == "pip"
    }
    return plan.Artifacts(uris, digests, requirements, runtime_uri)


def validated(config: Config, desired: dict[str, Any]) -> dict[str, Any]:
    """`desired`, once Ray's own schema accepts it (checked here, before the cluster sees it)."""
    problems = plan.schema_problems(desired)
    if problems:
        raise ConfigError(config.path, problems)
    return desired


def validated_once(config: Config, desired: dict[str, Any], state_dir: Path) -> dict[str, Any]:
    """`validated`, skipped for a plan of the shape Ray's schema passed here last time (importing
    the schema alone takes a second or two, on every apply). The shape leaves out each app's `args`,
    the values of its `env_vars` and each deployment's `user_config`: free-form to the schema (model
    files, their digests)."""
    shape = [
        {
            **{k: v for k, v in app.items() if k not in ("args", "runtime_env")},
            "env": sorted((app.get("runtime_env") or {}).get("env_vars") or {}),
            "runtime_env": {k: v for k, v in (app.get("runtime_env") or {}).items() if k != "env_vars"},
            "deployments": [{k: v for k, v in d.items() if k != "user_config"} for d in app.get("deployments", [])],
        }
        for app in desired.get("applications", [])
    ]
    rest = {k: v for k, v in desired.items() if k != "applications"}
    plan_text = json.dumps([importlib.metadata.version("ray"), rest, shape], sort_keys=True, default=str)
    digest = hashlib.sha256(plan_text.encode()).hexdigest()
    stamp = state_dir / VALIDATED_FILE
    with contextlib.suppress(OSError):
        if stamp.read_text() == digest:
            return desired
    validated(config, desired)
    state_dir.mkdir(parents=True, exist_ok=True)
    stamp.write_text(digest)
    return desired


def running_configs(details: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """`{name: deployed_app_config}` of the applications Serve could be given again as they run. Ray
    reports no config for an app being deleted (nor for one deployed with `serve.run`): such an app is
    left out, never sent without its `import_path`. A failed app keeps the config it failed with."""
    apps = details.get("applications") or {}
    configs = {name: app.get("deployed_app_config") or {} for name, app in apps.items()}
    return {name: config for name, config in configs.items() if config.get("import_path")}


def carried(details: Mapping[str, Any], stage: str) -> dict[str, dict[str, Any]]:
    """The other stages' applications, as they run: an apply or `down` of `stage` sends them again so
    they stay. One being deleted is left out (its deletion goes on); one that is not, yet has no config
    to send, could not stay: a ClusterError before anything is sent."""
    keep = stages.others(running_configs(details), stage)
    apps = details.get("applications") or {}
    stuck = [
        f"{name} ({app.get('status')})"
        for name, app in apps.items()
        if stages.stage_of(name) != stage and name not in keep and app.get("status") != "DELETING"
    ]
    if stuck:
        raise ClusterError(
            f"the cluster reports no configuration for {', '.join(stuck)}, so this apply could not keep "
            "it running; nothing was changed. Retry once it has settled; one deployed other than from "
            "conf.ini (serve.run) must be removed first"
        )
    return keep


def warn_about_http_options(config: Config, details: Mapping[str, Any]) -> None:
    running = details.get("http_options") or {}
    if details.get("applications") and running.get("port") not in (None, config.serve.port):
        print(
            f"warning: Serve on this cluster already listens on port {running['port']}; "
            f"[MODEL SERVE] port = {config.serve.port} takes effect once Serve restarts there "
            "(for the local cluster: `controller.py down --stop-cluster`, then apply)",
            file=sys.stderr,
        )


def wait(
    cluster: Cluster, apps: list[str], gone: list[str], timeout_s: float, old: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """Until every app in `apps` is healthy (its old replicas, `old`, may still drain) or failed,
    and every app in `gone` is being deleted."""
    deadline = time.monotonic() + timeout_s
    time.sleep(0.25)
    while True:
        details = cluster.details()
        running = details.get("applications") or {}
        leaving = [g for g in gone if g in running and running[g].get("status") != "DELETING"]
        done = all(status.settled(running.get(a)) or status.serving_new(running.get(a), old) for a in apps)
        if (done and not leaving) or time.monotonic() > deadline:
            return details
        time.sleep(0.25)


def wait_routed(
    base_url: str, routes: list[str], settle_s: float = 1.0, timeout_s: float = 20.0, old: frozenset[str] = frozenset()
) -> bool:
    """Until the HTTP port has answered `/<route>/ping` from a replica for every route, `settle_s`
    in a row. Serve reports a section healthy a moment before its ingress reloads with the route;
    a user's first call must not get a 404. With `old`: answered by none of those replicas (a
    rolled-out section's replaced ones drain for a while, node.DRAIN_S, and the ingress stops
    sending them requests a moment after they start to). False where the port cannot be reached
    from here (a remote head that listens on its own loopback) or the routes never settle."""
    start = since = time.monotonic()
    reached = False
    while time.monotonic() - since < settle_s:
        if time.monotonic() - start > timeout_s or (not reached and time.monotonic() - start > 3):
            return False
        try:
            ok = all(_pings(f"{base_url}/{route}/ping", old) for route in routes)
            reached = True
        except requests.ConnectionError:
            ok = False
        if not ok:
            since = time.monotonic()
        time.sleep(0.05)
    return True


def _pings(url: str, old: frozenset[str] = frozenset()) -> bool:
    try:
        reply = requests.get(url, timeout=5)
        fresh = reply.headers.get(REPLICA_HEADER, "") not in old
        return reply.status_code == 200 and fresh and reply.json().get("result") == "pong"
    except (requests.Timeout, ValueError, AttributeError):
        return False


def check_fit(config: Config, cluster: Cluster, before: Mapping[str, Any], changes: list[plan.Change]) -> None:
    actions = {c.app: c.action for c in changes}
    problems = fit_problems(config.sections, cluster.resources(before), actions)
    if problems:
        raise ConfigError(config.path, problems)


def apply(
    config: Config,
    cluster: Cluster,
    before: dict[str, Any],
    state_dir: Path,
    base_url: str = "",
    stage: str = "",
    phases: Phases | None = None,
) -> Outcome:
    """Make the cluster match `config`; restore the sections that fail. Prints the change table."""
    phases = phases or Phases()
    artifacts = upload_artifacts(config, cluster)
    phases.mark("upload packages (skipped if there)")
    # Ray's schema passed this plan with stand-in artifacts (cli.cmd_apply); the real ones differ
    # only in the URIs Ray's upload made, file digests and requirement lines.
    keep = carried(before, stage)  # other stages' apps, as they run
    previous = {name: app for name, app in running_configs(before).items() if name not in keep}
    if any(s.replicas.auto for s in config.sections):  # `replicas = auto`: counted on this cluster, now
        config = replace(config, sections=tuple(resolve_auto(config.sections, cluster.resources(before))))
    desired = plan.deploy_config(config, artifacts, plan.route_owners(previous))
    changes = plan.diff(desired, previous)
    check_fit(config, cluster, before, changes)  # after the diff: a roll-out needs room for more
    phases.mark("check that the plan fits")
    for change in changes:
        print(f"{change.action:>16}  {change.app}", flush=True)
    if plan.unchanged(desired, previous) and all(
        status.app_healthy(a) for a in (before.get("applications") or {}).values()
    ):
        _save_errors(state_dir, {})
        return Outcome(before)  # nothing to send: Serve runs this plan already, healthy
    desired = {**desired, "applications": [*desired["applications"], *keep.values()]}
    phases.mark("plan")
    desired = _start_new_shares_first(cluster, before, desired, config.serve.deploy_timeout_s, base_url, phases)
    cluster.apply(desired)
    phases.mark("send the plan to Serve")
    names = [s.app_name for s in config.sections]
    gone = [c.app for c in changes if c.action == "remove"]
    old = status.replica_ids(before)
    # In-place updates too: a new weight or sticky header is live once every replica of the owner has it.
    waited = [c.app for c in changes if c.action != "remove"]
    details = wait(cluster, waited, gone, config.serve.deploy_timeout_s, old)
    phases.mark("wait until the new replicas serve")
    outcome = Outcome(details, failed=_failures(details, names))
    routes = [r for r in _newly_routed(desired, previous) if not _served_by_failed(r, config, outcome.failed)]
    if routes and base_url:
        wait_routed(base_url, routes)
        phases.mark("wait until the routes answer")
    rolled = {c.app for c in changes if c.action == ROLL_OUT and c.app not in outcome.failed}
    apps = desired["applications"]
    rolled_routes = [a["route_prefix"].strip("/") for a in apps if a["name"] in rolled and a.get("route_prefix")]
    if rolled_routes and base_url:
        wait_routed(base_url, rolled_routes, settle_s=0.4, timeout_s=15, old=old)
        phases.mark("wait until the old replicas get no requests")
    _save_errors(state_dir, outcome.failed)
    was_healthy = {name for name in previous if status.app_healthy((before.get("applications") or {})[name])}
    restore = [name for name in outcome.failed if name in was_healthy]
    if restore:
        print(f"restoring the last good configuration of {', '.join(restore)}", file=sys.stderr, flush=True)
        apps = [previous[app["name"]] if app["name"] in restore else app for app in desired["applications"]]
        cluster.apply({**desired, "applications": apps})
        outcome.details = wait(cluster, restore, [], config.serve.deploy_timeout_s)
        outcome.rolled_back = restore
    return outcome


def _start_new_shares_first(
    cluster: Cluster,
    before: Mapping[str, Any],
    desired: dict[str, Any],
    timeout_s: float,
    base_url: str,
    phases: Phases,
) -> dict[str, Any]:
    """Where a route's owner would forward a share to a section that does not serve yet (a canary
    just added), start that section first with its share kept by the owner, so no request is sent
    to replicas still starting. Returns the plan to send next: `desired`, or, where a new section
    failed to start, `desired` with its share left with the owner."""
    serving = {name for name, app in (before.get("applications") or {}).items() if status.app_healthy(app)}
    first, starting = traffic.held_back(desired["applications"], serving)
    if not starting:
        return desired
    cluster.apply({**desired, "applications": first})
    phases.mark("send the plan, the new sections' shares held back")
    started = wait(cluster, starting, [], timeout_s)
    if _failures(started, starting):
        return {**desired, "applications": first}
    side_routes = [a["route_prefix"].strip("/") for a in first if a["name"] in starting and a.get("route_prefix")]
    if base_url:  # the owner forwards over the ingress: once it knows their side routes
        wait_routed(base_url, side_routes)
    phases.mark("wait until the new sections serve")
    return desired


def _newly_routed(desired: Mapping[str, Any], previous: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Routes that this apply gives to an app that did not serve them: Ray's ingress learns them a
    moment after Serve reports the app healthy. (A rolled-out section keeps its route throughout.)"""
    routes = []
    for app in desired["applications"]:
        prefix = app.get("route_prefix")
        if prefix and prefix != "/" and (previous.get(app["name"]) or {}).get("route_prefix") != prefix:
            routes.append(prefix.strip("/"))
    return routes


def _served_by_failed(route: str, config: Config, failed: Mapping[str, status.Row]) -> bool:
    return any(s.route == route and s.app_name in failed for s in config.sections)


def _failures(details: Mapping[str, Any], names: list[str]) -> dict[str, status.Row]:
    rows = status.rows(details, "", names)
    return {name: row for name, row in zip(names, rows, strict=True) if not row.healthy}


def _save_errors(state_dir: Path, failed: Mapping[str, status.Row]) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    text = "".join(f"==> {row.section} is {row.status} <==\n{row.message}\n\n" for row in failed.values())
    (state_dir / ERRORS_FILE).write_text(text)
