"""One apply: validate, check the plan fits, upload, send, wait, and roll back what failed.

A failed apply never leaves the cluster worse than before: a section that was running and
fails to take its new configuration (a model that will not load, a `user_config` the backend
rejects, replicas that never become healthy) gets its last good configuration back at once.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from modelserve import plan, stages, status, traffic
from modelserve.cluster import Cluster
from modelserve.config import ConfigError
from modelserve.fit import fit_problems
from modelserve.packaging import files_digest, read_requirements, staged_package, staged_runtime
from modelserve.settings import Config

#: The full error of each section that failed in the last apply (the table shows one line each).
ERRORS_FILE = "last_errors.log"


@dataclass
class Outcome:
    details: dict[str, Any]
    failed: dict[str, status.Row] = field(default_factory=dict)  # app -> its row, with the cluster's message
    rolled_back: list[str] = field(default_factory=list)


def upload_artifacts(config: Config, cluster: Cluster) -> plan.Artifacts:
    uris = {}
    for package in sorted({s.package for s in config.sections}):
        with staged_package(config.algopkg_dir, package) as staged:
            uris[package] = cluster.upload(staged)
    with staged_runtime() as runtime:
        runtime_uri = cluster.upload(runtime)
    digests = {s.section: files_digest(config.model_zoo / f for f in s.model_files) for s in config.sections}
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


def running_configs(details: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    apps = details.get("applications") or {}
    return {name: app.get("deployed_app_config") or {} for name, app in apps.items()}


def warn_about_http_options(config: Config, details: Mapping[str, Any]) -> None:
    running = details.get("http_options") or {}
    if details.get("applications") and running.get("port") not in (None, config.serve.port):
        print(
            f"warning: Serve on this cluster already listens on port {running['port']}; "
            f"[MODEL SERVE] port = {config.serve.port} takes effect once Serve restarts there "
            "(for the local cluster: `controller.py down --stop-cluster`, then apply)",
            file=sys.stderr,
        )


def wait(cluster: Cluster, apps: list[str], gone: list[str], timeout_s: float) -> dict[str, Any]:
    """Until every app in `apps` is healthy or failed and every app in `gone` is being deleted."""
    deadline = time.monotonic() + timeout_s
    time.sleep(0.5)
    while True:
        details = cluster.details()
        running = details.get("applications") or {}
        leaving = [g for g in gone if g in running and running[g].get("status") != "DELETING"]
        done = all(status.settled(running.get(a)) for a in apps) and not leaving
        if done or time.monotonic() > deadline:
            return details
        time.sleep(0.5)


def wait_routed(base_url: str, routes: list[str], settle_s: float = 1.0, timeout_s: float = 20.0) -> bool:
    """Until the HTTP port has answered `/<route>/ping` from a replica for every route, `settle_s`
    in a row. Serve reports a section healthy a moment before its ingress reloads with the route;
    a user's first call must not get a 404. False where the port cannot be reached from here
    (a remote head that listens on its own loopback) or the routes never settle."""
    start = since = time.monotonic()
    reached = False
    while time.monotonic() - since < settle_s:
        if time.monotonic() - start > timeout_s or (not reached and time.monotonic() - start > 3):
            return False
        try:
            ok = all(_pings(f"{base_url}/{route}/ping") for route in routes)
            reached = True
        except requests.ConnectionError:
            ok = False
        if not ok:
            since = time.monotonic()
        time.sleep(0.05)
    return True


def _pings(url: str) -> bool:
    try:
        reply = requests.get(url, timeout=5)
        return reply.status_code == 200 and reply.json().get("result") == "pong"
    except (requests.Timeout, ValueError, AttributeError):
        return False


def check_fit(config: Config, cluster: Cluster, before: Mapping[str, Any]) -> None:
    problems = fit_problems(config.sections, cluster.resources(before))
    if problems:
        raise ConfigError(config.path, problems)


def apply(
    config: Config, cluster: Cluster, before: dict[str, Any], state_dir: Path, base_url: str = "", stage: str = ""
) -> Outcome:
    """Make the cluster match `config`; restore the sections that fail. Prints the change table."""
    check_fit(config, cluster, before)
    desired = validated(config, plan.deploy_config(config, upload_artifacts(config, cluster)))
    keep = stages.others(running_configs(before), stage)  # other stages' apps, as they run
    previous = {name: app for name, app in running_configs(before).items() if name not in keep}
    changes = plan.diff(desired, previous)
    for change in changes:
        print(f"{change.action:>16}  {change.app}", flush=True)
    desired = {**desired, "applications": [*desired["applications"], *keep.values()]}
    _start_new_routers_beside(cluster, desired, previous, config.serve.deploy_timeout_s)
    cluster.apply(desired)
    names = [s.app_name for s in config.sections]
    gone = [c.app for c in changes if c.action == "remove"]
    details = wait(cluster, names, gone, config.serve.deploy_timeout_s)
    outcome = Outcome(details, failed=_failures(details, names))
    touched = {c.app for c in changes if c.action not in ("unchanged", "remove")}
    routes = [s.route for s in config.sections if s.app_name in touched and s.app_name not in outcome.failed]
    if routes and base_url:
        wait_routed(base_url, routes)
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


def _start_new_routers_beside(
    cluster: Cluster, desired: Mapping[str, Any], previous: Mapping[str, Mapping[str, Any]], timeout_s: float
) -> None:
    """A router that takes over a route already served (a new canary or mirror) first starts on
    a side path while the section keeps the route; the switch is then one in-place update, so
    no request meets a route that nobody serves."""
    served = {app.get("route_prefix"): name for name, app in previous.items() if traffic.ROUTER_PREFIX not in name}
    new = {
        app["name"]: app["route_prefix"]
        for app in desired["applications"]
        if traffic.ROUTER_PREFIX in app["name"] and app["route_prefix"] in served
    }
    if not new:
        return
    moving = set(new.values())
    apps = []
    for app in desired["applications"]:
        if app["name"] in new:
            app = {**app, "route_prefix": f"/{SIDE_PATH}{app['route_prefix']}"}
        elif app["route_prefix"] is None and (previous.get(app["name"]) or {}).get("route_prefix") in moving:
            app = {**app, "route_prefix": previous[app["name"]]["route_prefix"]}  # keeps serving its route
        apps.append(app)
    cluster.apply({**desired, "applications": apps})
    wait(cluster, list(new), [], timeout_s)


#: Where a new router starts before it takes its route over.
SIDE_PATH = "modelserve-starting"


def _failures(details: Mapping[str, Any], names: list[str]) -> dict[str, status.Row]:
    rows = status.rows(details, "", names)
    return {name: row for name, row in zip(names, rows, strict=True) if not row.healthy}


def _save_errors(state_dir: Path, failed: Mapping[str, status.Row]) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    text = "".join(f"==> {row.section} is {row.status} <==\n{row.message}\n\n" for row in failed.values())
    (state_dir / ERRORS_FILE).write_text(text)
