"""Routes shared by sections (canary split) and mirrored sections. Pure: no cluster.

Ray Serve routes one path to one application and has no traffic split or mirroring. So one
section of a shared or mirrored route owns it (Ray routes the path to it, straight from the
ingress), and its replicas split the requests (`router.py`): their own share answered with no
extra hop, the other sections' forwarded over HTTP through the node's ingress to a side route
of theirs (`/modelserve-split/<route>/<app>`), copies sent to mirrors through Ray's deployment
handles. Weights, stickiness and mirrors are the owner's `user_config`: changing them is an
update in place.

The owner is the section that owns the route now, while it stays in the route; else the one
with the largest share (the first in the file on a tie). So shifting weights never moves the
route: only removing its owner does (the last step of a promotion).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from modelserve.settings import PACKAGE_PREFIX, SectionSpec

#: Applications modelserve adds beside the sections (the 404 answer) are named `modelserve-...`.
OURS_PREFIX = "modelserve-"
#: Where a section of a shared route that does not own it is reached: `/<SIDE>/<route>/<app>`.
SIDE = "modelserve-split"


def is_ours(app_name: str) -> bool:
    """Applications modelserve adds beside the sections (the 404 answer), on any stage."""
    return app_name.startswith(OURS_PREFIX) or app_name.partition(".")[2].startswith(OURS_PREFIX)


def mirror_target(spec: SectionSpec, sections: Sequence[SectionSpec]) -> SectionSpec | None:
    """The section `spec` mirrors (`mirror_of` names it with or without `algopkg.`)."""
    if not spec.mirror_of:
        return None
    wanted = spec.mirror_of if spec.mirror_of.startswith(PACKAGE_PREFIX) else PACKAGE_PREFIX + spec.mirror_of
    return next((s for s in sections if s.section == wanted), None)


def routed(sections: Sequence[SectionSpec]) -> dict[str, list[SectionSpec]]:
    """`{route: its sections}` for every route that is split: shared, weighted or mirrored."""
    mirrored = {t.section for s in sections if (t := mirror_target(s, sections)) is not None}
    groups: dict[str, list[SectionSpec]] = {}
    for spec in sections:
        groups.setdefault(spec.route, []).append(spec)
    return {
        route: group
        for route, group in groups.items()
        if len(group) > 1 or any(s.traffic is not None or s.section in mirrored for s in group)
    }


def owner(group: Sequence[SectionSpec], owners: Mapping[str, str]) -> SectionSpec:
    """The section whose replicas serve and split `group`'s route; `owners` is `{route: app name}`
    of what owns each route on the cluster now."""
    current = owners.get(group[0].route)
    for spec in group:
        if spec.app_name == current:
            return spec
    return max(group, key=lambda s: s.traffic if s.traffic is not None else 100)


def side_route(spec: SectionSpec) -> str:
    """The route of a section that shares a route it does not own: the owner forwards to it."""
    return f"/{SIDE}/{spec.route}/{spec.app_name}"


def forward_url(host: str, port: int) -> str:
    """Where a replica reaches its node's ingress: loopback when the ingress listens on every interface."""
    local = host in ("0.0.0.0", "::", "") or host.startswith("127.") or host == "localhost"
    return f"http://{'127.0.0.1' if local else host}:{port}"


def _target(spec: SectionSpec) -> dict[str, Any]:
    return {"app": spec.app_name, "deployment": spec.package, "section": spec.section}


def split_config(
    group: Sequence[SectionSpec], sections: Sequence[SectionSpec], owner: SectionSpec, forward: str
) -> dict[str, Any]:
    """The owner's `traffic` user_config: weights (a lone section gets 100), where the others are
    reached (`forward` + their side route), stickiness, mirrors."""
    targets = [
        {
            **_target(s),
            "weight": 100 if len(group) == 1 else (s.traffic or 0),
            "path": "" if s is owner else side_route(s),
        }
        for s in group
    ]
    mirrors: dict[str, list[dict[str, Any]]] = {}
    for spec in sections:
        primary = mirror_target(spec, sections)
        if primary is not None and primary in group:
            mirrors.setdefault(primary.section, []).append({**_target(spec), "percent": spec.mirror_percent})
    sticky = next((s.sticky for s in group if s.sticky), "")
    return {"targets": targets, "sticky": sticky, "mirrors": mirrors, "forward": forward}


def problems(sections: Sequence[SectionSpec]) -> list[str]:
    """The `traffic` of a route's sections adds up to 100 (a lone section's too), one stickiness per
    route; mirrors must name a primary."""
    found = []
    groups: dict[str, list[SectionSpec]] = {}
    for spec in sections:
        groups.setdefault(spec.route, []).append(spec)
    for route, group in groups.items():
        if len(group) < 2:
            (spec,) = group
            if spec.traffic is not None and spec.traffic != 100:
                found.append(
                    f"[{spec.section}] traffic = {spec.traffic}: the percents of a route add up to 100, and /{route} "
                    "has no other section; write `traffic = 100` (or no traffic), or add the section that takes the "
                    f"other {100 - spec.traffic}%"
                )
            continue
        unweighted = [s for s in group if s.traffic is None]
        if unweighted:
            spec = unweighted[-1] if unweighted[-1] is not group[0] else group[1]
            found.append(
                f"[{spec.section}] route = {route!r}: /{route} is already the route of [{group[0].section}]; give "
                "each section its own route, or give every section of the route a `traffic` percent "
                "(e.g. `traffic = 10`: a canary)"
            )
        total = sum(s.traffic or 0 for s in group)
        if not unweighted and total != 100:
            shares = ", ".join(f"[{s.section}] {s.traffic}" for s in group)
            found.append(
                f"[{group[0].section}] traffic: the sections of /{route} add up to {total}, not 100 ({shares}); "
                "make them add up to 100"
            )
        if len({s.sticky for s in group if s.sticky}) > 1:
            found.append(f"[{group[0].section}] sticky: the sections of /{route} name different headers; name one")
    for spec in sections:
        if not spec.mirror_of:
            continue
        primary = mirror_target(spec, sections)
        where = f"[{spec.section}] mirror_of = {spec.mirror_of!r}"
        if primary is None:
            found.append(f"{where}: no such section in this file; name one, e.g. `mirror_of = algopkg.AlgoExample`")
        elif primary is spec:
            found.append(f"{where}: a section cannot mirror itself; name the section whose requests it should copy")
        elif primary.mirror_of:
            found.append(f"{where}: that section is itself a mirror; mirror its primary, {primary.mirror_of}")
        elif primary.route == spec.route:
            found.append(f"{where}: a mirror needs a route of its own (for direct calls), not its primary's")
    return found


def _waiting(app: Mapping[str, Any], serving: Collection[str]) -> list[dict[str, Any]]:
    """The targets of `app`'s split (where it owns a route and serves) that do not serve yet."""
    if app["name"] not in serving:
        return []  # a new owner: its route has no traffic to protect yet
    return [
        t
        for deployment in app.get("deployments", [])
        for t in ((deployment.get("user_config") or {}).get("traffic") or {}).get("targets") or []
        if t["app"] != app["name"] and t["app"] not in serving and t["weight"] > 0
    ]


def held_back(apps: Sequence[Mapping[str, Any]], serving: Collection[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """`apps` with the share of every section that does not serve yet given to its route's owner, and
    those sections' apps (none: `apps` as they are). A new canary's replicas take seconds to start:
    an owner that forwarded its share meanwhile would fail those requests, so an apply sends this
    first and the real split once the new sections serve."""
    held: list[dict[str, Any]] = []
    names: set[str] = set()
    for app in apps:
        waiting = _waiting(app, serving)
        if not waiting:
            held.append(dict(app))
            continue
        names.update(t["app"] for t in waiting)
        extra = sum(t["weight"] for t in waiting)
        deployments = []
        for deployment in app["deployments"]:
            split = deployment["user_config"]["traffic"]
            targets = [
                {**t, "weight": 0 if t in waiting else t["weight"] + (extra if t["app"] == app["name"] else 0)}
                for t in split["targets"]
            ]
            user_config = {**deployment["user_config"], "traffic": {**split, "targets": targets}}
            deployments.append({**deployment, "user_config": user_config})
        held.append({**app, "deployments": deployments})
    return held, sorted(names)
