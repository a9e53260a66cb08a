"""Routes shared by sections (canary split) and mirrored sections: the router applications.

Ray Serve routes one path to one application and has no traffic split or mirroring, so a
route whose sections set `traffic`, or whose section another mirrors, is served by a small
router application of ours (`router.py`) at that route; the sections behind it run as
applications without a route, reached through Ray's deployment handles. Weights, stickiness
and mirrors are the router's `user_config`: changing them is an update in place. Pure: no cluster.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from modelserve.settings import PACKAGE_PREFIX, SectionSpec

#: Router applications are named `modelserve-route.<route, / as :>` (no section can be).
ROUTER_PREFIX = "modelserve-route."
ROUTER_DEPLOYMENT = "Router"
#: Routers hold no CPU and scale with their route's load; two at least, so a router that
#: restarts never takes the route down.
ROUTER_SCALING = {
    "min_replicas": 2,
    "max_replicas": 8,
    "target_ongoing_requests": 32,
    "upscale_delay_s": 5,
    "downscale_delay_s": 60,
}


def router_app_name(route: str, stage: str = "") -> str:
    name = ROUTER_PREFIX + route.replace("/", ":")
    return f"{stage}.{name}" if stage else name


def is_ours(app_name: str) -> bool:
    """Applications modelserve adds beside the sections (routers, the 404 answer), on any stage."""
    return app_name.startswith("modelserve-") or app_name.partition(".")[2].startswith("modelserve-")


def mirror_target(spec: SectionSpec, sections: Sequence[SectionSpec]) -> SectionSpec | None:
    """The section `spec` mirrors (`mirror_of` names it with or without `algopkg.`)."""
    if not spec.mirror_of:
        return None
    wanted = spec.mirror_of if spec.mirror_of.startswith(PACKAGE_PREFIX) else PACKAGE_PREFIX + spec.mirror_of
    return next((s for s in sections if s.section == wanted), None)


def routed(sections: Sequence[SectionSpec]) -> dict[str, list[SectionSpec]]:
    """`{route: its sections}` for every route a router serves: shared, weighted or mirrored."""
    mirrored = {t.section for s in sections if (t := mirror_target(s, sections)) is not None}
    groups: dict[str, list[SectionSpec]] = {}
    for spec in sections:
        groups.setdefault(spec.route, []).append(spec)
    return {
        route: group
        for route, group in groups.items()
        if len(group) > 1 or any(s.traffic is not None or s.section in mirrored for s in group)
    }


def _target(spec: SectionSpec) -> dict[str, Any]:
    return {"app": spec.app_name, "deployment": spec.package, "section": spec.section}


def router_config(group: Sequence[SectionSpec], sections: Sequence[SectionSpec]) -> dict[str, Any]:
    """The router's `user_config`: weights (a lone section gets 100), stickiness, mirrors."""
    targets = [{**_target(s), "weight": 100 if len(group) == 1 else (s.traffic or 0)} for s in group]
    mirrors: dict[str, list[dict[str, Any]]] = {}
    for spec in sections:
        primary = mirror_target(spec, sections)
        if primary is not None and primary in group:
            mirrors.setdefault(primary.section, []).append({**_target(spec), "percent": spec.mirror_percent})
    sticky = next((s.sticky for s in group if s.sticky), "")
    return {"targets": targets, "sticky": sticky, "mirrors": mirrors}


def router_application(
    route: str, group: Sequence[SectionSpec], sections: Sequence[SectionSpec], modules: list[str], env: dict[str, str]
) -> dict[str, Any]:
    return {
        "name": router_app_name(route, group[0].stage),
        "route_prefix": f"/{route}",
        "import_path": "modelserve.app:build_router",
        "runtime_env": {"py_modules": modules, "env_vars": env},
        "args": {"route": route},
        "deployments": [
            {
                "name": ROUTER_DEPLOYMENT,
                "autoscaling_config": dict(ROUTER_SCALING),
                "max_ongoing_requests": 256,
                "user_config": router_config(group, sections),
                "ray_actor_options": {"num_cpus": 0},
                "logging_config": {"enable_access_log": False},
            }
        ],
    }


def problems(sections: Sequence[SectionSpec]) -> list[str]:
    """Shared routes must split 100 percent, one stickiness each; mirrors must name a primary."""
    found = []
    groups: dict[str, list[SectionSpec]] = {}
    for spec in sections:
        groups.setdefault(spec.route, []).append(spec)
    for route, group in groups.items():
        if len(group) < 2:
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
