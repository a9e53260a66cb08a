"""Serve's details (the dashboard's JSON) -> one row per section, and the table we print. Pure."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from modelserve import raycompat
from modelserve.stages import stage_of
from modelserve.traffic import is_ours

HEALTHY = "HEALTHY"
PACKAGE = "algopkg."
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
#: The line of a Python traceback that names the exception: `ValueError: ...`, `pkg.mod.SomeError: ...`.
_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_][\w]*\.)*[A-Za-z_]\w*(?:Error|Exception|Exit|Interrupt)\b:? ?.*$")
_FAILED_APP = {"DEPLOY_FAILED", "UNHEALTHY"}
_SETTLED_DEPLOYMENT = {"HEALTHY", "UNHEALTHY", "DEPLOY_FAILED"}


@dataclass(frozen=True)
class Row:
    section: str
    url: str
    ready: int
    target: int
    status: str
    message: str = ""
    nodes: tuple[str, ...] = ()
    #: The section's `model` entries as pinned at its apply (`digits@3` for `digits@latest`).
    models: tuple[str, ...] = ()

    @property
    def healthy(self) -> bool:
        return self.status == HEALTHY


def _deployment(app: Mapping[str, Any]) -> Mapping[str, Any]:
    deployments = app.get("deployments") or {}
    return next(iter(deployments.values()), {})


def node_labels(replicas: list[Mapping[str, Any]]) -> tuple[str, ...]:
    """`ip xN` per node; the node id is added where several nodes share an IP."""
    counts = Counter((str(r.get("node_ip") or "?"), str(r.get("node_id") or "?")) for r in replicas)
    ips = Counter(ip for ip, _ in counts)
    labels = []
    for (ip, node_id), n in sorted(counts.items()):
        name = f"{ip}/{node_id[:6]}" if ips[ip] > 1 else ip
        labels.append(f"{name} x{n}" if n > 1 else name)
    return tuple(labels)


def replica_ids(details: Mapping[str, Any]) -> frozenset[str]:
    """Every replica of every app in `details` (before an apply: the replicas a roll-out replaces)."""
    apps = (details.get("applications") or {}).values()
    return frozenset(
        str(r.get("replica_id"))
        for app in apps
        for deployment in (app.get("deployments") or {}).values()
        for r in deployment.get("replicas") or []
    )


def serving_new(app: Mapping[str, Any] | None, old: frozenset[str]) -> bool:
    """A rolled-out app whose new replicas all serve while replicas from before (`old`) drain.

    Serve reports it DEPLOYING until the old replicas have drained and stopped (5 s, node.DRAIN_S),
    but its new version is at its target: the apply is done. (`_draining` without knowing which
    replicas are new; here every replica from before must be one of the stopping ones.)"""
    if app is None or not _draining(app):
        return False
    leaving = [r for r in _deployment(app).get("replicas") or [] if r.get("replica_id") in old]
    return bool(leaving) and all(r.get("state") == "STOPPING" for r in leaving)


def app_row(name: str, app: Mapping[str, Any], base_url: str) -> Row:
    """One row for one Serve application (one conf.ini section). A roll-out's last seconds, its
    new replicas serving while the replaced ones drain (Serve: DEPLOYING), show as HEALTHY."""
    config = app.get("deployed_app_config") or {}
    section = (config.get("args") or {}).get("section") or f"{PACKAGE}{name}"
    deployment = _deployment(app)
    replicas = deployment.get("replicas") or []
    running = [r for r in replicas if r.get("state") == "RUNNING"]
    app_status = app.get("status", "UNKNOWN")
    dep_status = deployment.get("status", "")
    if (app_status == "RUNNING" and dep_status == "HEALTHY") or _draining(app):
        status = HEALTHY
    elif app_status in _FAILED_APP or dep_status in ("UNHEALTHY", "DEPLOY_FAILED"):
        status = dep_status if dep_status in ("UNHEALTHY", "DEPLOY_FAILED") else app_status
    else:
        status = app_status if app_status != "RUNNING" else dep_status or app_status
    message = app_message(app)
    route = app.get("route_prefix") or config.get("route_prefix") or ""
    nodes = node_labels(running)
    return Row(
        section=section,
        url=f"{base_url}{route}",
        ready=len(running),
        target=int(deployment.get("target_num_replicas", 0) or 0),
        status=status,
        message=message,
        nodes=nodes,
        models=tuple((config.get("args") or {}).get("rollout_keys", {}).get("model@", ())),
    )


def rows(details: Mapping[str, Any], base_url: str, only: Iterable[str] | None = None, stage: str = "") -> list[Row]:
    apps = details.get("applications") or {}
    if only is None:  # the stage's sections; not our 404 app
        only = sorted(a for a in apps if not is_ours(a) and stage_of(a) == stage)
    names = list(only)
    # By application name: a stage's section has the section name of production's (its app is `<stage>.<name>`).
    behind = {t.get("app"): route for route, split in splits(details, stage).items() for t in split.get("targets", [])}
    result = []
    for name in names:
        app = apps.get(name)
        if app is None:
            result.append(Row(section=f"{PACKAGE}{name}", url="", ready=0, target=0, status="MISSING"))
        else:
            row = app_row(name, app, base_url)
            if name in behind:  # served through its route's owner
                row = replace(row, url=f"{base_url}{behind[name]}")
            result.append(row)
    return result


def splits(details: Mapping[str, Any], stage: str = "") -> dict[str, dict[str, Any]]:
    """`{"/route": its split}` of every shared or mirrored route of the stage: the `traffic` part
    of the user_config of the section that owns the route (traffic.py)."""
    found = {}
    for name, app in (details.get("applications") or {}).items():
        config = app.get("deployed_app_config") or {}
        if is_ours(name) or stage_of(name) != stage:
            continue
        for deployment in config.get("deployments") or []:
            split = (deployment.get("user_config") or {}).get("traffic")
            if split and config.get("route_prefix"):
                found[config["route_prefix"]] = split
    return found


def traffic_lines(details: Mapping[str, Any], mirrored: Mapping[tuple[str, str], float], stage: str = "") -> list[str]:
    """One line per shared route (its split) and per mirror (its counts, `{(section, outcome): n}`),
    and how fresh those counts are: Ray exports its metrics every METRICS_EXPORT_INTERVAL_S."""
    lines = []
    for route, config in sorted(splits(details, stage).items()):
        split = ", ".join(f"{t['section']} {t['weight']}%" for t in config.get("targets", []))
        sticky = f" (sticky by header {config['sticky']})" if config.get("sticky") else ""
        lines.append(f"{route}: {split}{sticky}")
        for primary, mirrors in sorted((config.get("mirrors") or {}).items()):
            for m in mirrors:
                outcomes = ("sent", "failed", "dropped")  # whole numbers: never `1.04858e+06`
                counts = ", ".join(f"{o} {mirrored.get((m['section'], o), 0):.0f}" for o in outcomes)
                lines.append(f"  mirror {m['section']} <- {primary} ({m['percent']}%): {counts}")
    if any(line.startswith("  mirror ") for line in lines):
        every = raycompat.METRICS_EXPORT_INTERVAL_S
        lines.append(f"  (mirror counts come from Ray's metrics, exported every {every} s: up to {every} s behind)")
    return lines


def multiplexed(details: Mapping[str, Any]) -> bool:
    """Whether any section on the cluster serves many models (`models`)."""
    for app in (details.get("applications") or {}).values():
        config = (app.get("deployed_app_config") or {}).get("args") or {}
        if config.get("models"):
            return True
    return False


def held_lines(
    details: Mapping[str, Any], held: Iterable[tuple[Mapping[str, str], float]], stage: str = ""
) -> list[str]:
    """Per replica of each multiplexed section, the models it holds (`modelserve_model_held` samples)."""
    by_replica: dict[tuple[str, str], list[str]] = {}
    for tags, value in held:
        if value >= 1:
            by_replica.setdefault((tags.get("section", ""), tags.get("replica", "")), []).append(tags.get("model", ""))
    alive = replica_ids(details)
    lines = []
    for (section, replica), models in sorted(by_replica.items()):
        if replica in alive or not alive:
            lines.append(
                f"{section} replica {replica.rsplit('#', 1)[-1]}: {len(models)} model(s): {', '.join(sorted(models))}"
            )
    if lines:
        every = raycompat.METRICS_EXPORT_INTERVAL_S
        lines.append(f"  (models held come from Ray's metrics, exported every {every} s: up to {every} s behind)")
    return lines


def app_healthy(app: Mapping[str, Any] | None) -> bool:
    return app is not None and app_row("", app, "").healthy


def _draining(app: Mapping[str, Any]) -> bool:
    """Serving at its target while replicas it replaced drain: RUNNING and STOPPING ones only."""
    deployment = _deployment(app)
    states = [r.get("state") for r in deployment.get("replicas") or []]
    target = int(deployment.get("target_num_replicas", 0) or 0)
    serving = app.get("status") == "DEPLOYING" and deployment.get("status") == "UPDATING"
    return serving and "STOPPING" in states and states.count("RUNNING") == target > 0 == states.count("STARTING")


def app_message(app: Mapping[str, Any]) -> str:
    """The cluster's message about an app (its deployment's first), without colour codes."""
    return _ANSI.sub("", _deployment(app).get("message") or app.get("message") or "")


def cause(message: str) -> str:
    """One line for a failure: the last exception a traceback names (the backend's own error),
    without Ray's wrapping; else the message's first line."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    named = [line for line in lines if _EXCEPTION_LINE.match(line) and not line.startswith("ray.")]
    named = named or [line for line in lines if line.startswith("ERROR:")]  # pip's own words
    if not named and len(lines) > 1 and lines[0].endswith(":"):
        return f"{lines[0]} {lines[-1]}"  # "... failed:" says nothing without its last line
    line = named[-1] if named else (lines[0] if lines else "no message from the cluster")
    return re.sub(r"^(?:[A-Za-z_]\w*\.)+(?=[A-Za-z_]\w*:)", "", line)


def settled(app: Mapping[str, Any] | None) -> bool:
    """An app has finished deploying: healthy at its target, or failed."""
    if app is None:
        return False
    status = app.get("status")
    if status in _FAILED_APP:
        return True
    deployment = _deployment(app)
    if status != "RUNNING" or deployment.get("status") not in _SETTLED_DEPLOYMENT:
        return False
    if deployment.get("status") != "HEALTHY":
        return True
    running = [r for r in deployment.get("replicas") or [] if r.get("state") == "RUNNING"]
    return len(running) == int(deployment.get("target_num_replicas", 0) or 0)


def table(rows_: Iterable[Row]) -> str:
    rows_ = list(rows_)
    header: tuple[str, ...] = ("SECTION", "URL", "REPLICAS", "STATUS", "NODES")
    lines: list[tuple[str, ...]] = [
        (r.section, r.url, f"{r.ready}/{r.target}", r.status, ",".join(r.nodes) or "-") for r in rows_
    ]
    if any("@" in model for r in rows_ for model in r.models):  # a section serves a numbered version
        header = (*header, "MODEL")
        lines = [(*line, ",".join(r.models) or "-") for line, r in zip(lines, rows_, strict=True)]
    return columns(header, lines) if lines else "no sections are deployed"


def columns(header: tuple[str, ...], lines: Iterable[tuple[str, ...]]) -> str:
    """A header and its lines as left-aligned columns two spaces apart (the CLI's tables)."""
    rows_ = [header, *lines]
    widths = [max(len(str(x)) for x in col) for col in zip(*rows_, strict=True)]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows_)
