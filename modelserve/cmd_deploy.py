"""The deploy cycle: `apply` (the default), `check`, `status` and `down`."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

import requests

from modelserve import plan, stages, status, traffic
from modelserve.address import resolve_dashboard
from modelserve.apply import (
    ERRORS_FILE,
    apply,
    carried,
    running_configs,
    validated,
    validated_once,
    wait,
    warn_about_http_options,
)
from modelserve.cluster import Cluster
from modelserve.cmd_common import (
    EXIT_UNHEALTHY,
    LAST_APPLY,
    UPLOADS,
    Subparsers,
    add_command,
    base_url_of,
    connect_timeout_s,
    connected,
    running_cluster,
    staged_config,
    state_dir_of,
    target_of,
)
from modelserve.fit import ClusterResources, Node, fit_problems
from modelserve.localhead import stop_local_head
from modelserve.settings import Config
from modelserve.timings import Phases


def register(sub: Subparsers) -> None:
    apply_cmd = add_command(sub, "apply", cmd_apply, "validate, then make the cluster match the file (default)")
    apply_cmd.add_argument("--timings", action="store_true", help="print where the apply's time went (stderr)")
    add_command(sub, "check", cmd_check, "validate the file only; touches no cluster")
    add_command(sub, "status", cmd_status, "show what runs now (works from the last apply if conf.ini is broken)")
    down = add_command(
        sub, "down", cmd_down, "remove every deployed section (works from the last apply if conf.ini is broken)"
    )
    down.add_argument("--stop-cluster", action="store_true", help="also stop the local cluster we started")


def cmd_check(args: argparse.Namespace) -> int:
    config = staged_config(args)
    validated(config, plan.deploy_config(config, plan.Artifacts.placeholder(config)))
    _warn_if_it_cannot_fit_a_local_cluster(config)
    routes = ", ".join(f"/{r}" for r in dict.fromkeys(s.route for s in config.sections)) or "no sections"
    print(f"{config.path}: OK ({len(config.sections)} section(s): {routes})")
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    phases = Phases(getattr(args, "timings", False))
    config = staged_config(args)
    state_dir = state_dir_of(args.config)
    validated_once(config, plan.deploy_config(config, plan.Artifacts.placeholder(config)), state_dir)
    phases.mark("read and validate conf.ini")
    timeout_s = connect_timeout_s(args)
    dashboard = resolve_dashboard(config.serve, state_dir, start=True, connect_timeout_s=timeout_s, stage=args.stage)
    assert dashboard is not None
    cluster = connected(args, dashboard, uploads=state_dir / UPLOADS)
    phases.mark("find (or start) the cluster")
    before = cluster.details()
    phases.mark("read what runs")
    warn_about_http_options(config, before)
    base_url = base_url_of(config, dashboard)
    _remember(state_dir, dashboard, base_url)
    outcome = apply(config, cluster, before, state_dir, base_url, stage=args.stage, phases=phases)
    code = _report(status.rows(outcome.details, base_url, [s.app_name for s in config.sections], args.stage))
    phases.total()
    for name, row in outcome.failed.items():
        what = "rolled back to its last good configuration" if name in outcome.rolled_back else "left as it is"
        why = status.cause(row.message) if row.message else f"not healthy within {config.serve.deploy_timeout_s:g} s"
        print(f"[{row.section}] was {row.status}, {what}: {why}", file=sys.stderr)
    if outcome.failed:
        print(f"(full errors: {state_dir / ERRORS_FILE}; replica logs: `controller.py logs SECTION`)", file=sys.stderr)
    return EXIT_UNHEALTHY if outcome.failed else code


def _report(rows: list[status.Row], details: bool = False) -> int:
    """Print the table; with `details`, the cluster's message of each unhealthy section too."""
    print(status.table(rows), flush=True)
    failed = [r for r in rows if not r.healthy and r.status != "DELETING"]  # being removed is no failure
    for row in failed if details else []:
        print(f"\n[{row.section}] is {row.status}:\n{row.message or '(no message from the cluster)'}", file=sys.stderr)
    return EXIT_UNHEALTHY if failed else 0


def _warn_if_it_cannot_fit_a_local_cluster(config: Config) -> None:
    if config.serve.address not in ("auto", "local"):
        return
    cpus = config.serve.local_cpus or os.cpu_count() or 1
    local = ClusterResources({"local": Node({"CPU": float(cpus), "GPU": float(config.serve.local_gpus or 0)})})
    for problem in fit_problems(config.sections, local):
        print(f"warning: on a local cluster of {cpus} CPU(s): {problem}", file=sys.stderr)


def _remember(state_dir: Path, dashboard_url: str, base_url: str) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    record = {"dashboard_url": dashboard_url, "base_url": base_url}
    (state_dir / LAST_APPLY).write_text(json.dumps(record, indent=2))


def cmd_status(args: argparse.Namespace) -> int:
    cluster, base_url = running_cluster(args)
    details = cluster.details()
    code = _report(status.rows(details, base_url, stage=args.stage), details=True)
    if status.splits(details, args.stage):
        for line in status.traffic_lines(details, _mirrored(cluster), args.stage):
            print(line)
    if status.multiplexed(details):
        for line in status.held_lines(details, _series(cluster, "ray_modelserve_model_held")):
            print(line)
    return code


def _mirrored(cluster: Cluster) -> dict[tuple[str, str], float]:
    """`{(mirror section, outcome): copies}` summed over every node's metrics exporter."""
    counts: dict[tuple[str, str], float] = {}
    for tags, value in _series(cluster, "ray_modelserve_mirrored_total"):
        key = (tags.get("section", ""), tags.get("outcome", ""))
        counts[key] = counts.get(key, 0.0) + value
    return counts


def _series(cluster: Cluster, name: str) -> list[tuple[dict[str, str], float]]:
    """Every node exporter's samples of one series: `(tags, value)`."""
    found = []
    for target in cluster.metrics_targets():
        try:
            text = requests.get(target, timeout=5).text
        except requests.RequestException:
            continue
        for labels, value in re.findall(rf"^{name}\{{(.*?)\}} (\S+)$", text, re.M):
            found.append((dict(re.findall(r'(\w+)="(.*?)"', labels)), float(value)))
    return found


def cmd_down(args: argparse.Namespace) -> int:
    state_dir = state_dir_of(args.config)
    if args.stop_cluster and stop_local_head(state_dir):
        (state_dir / LAST_APPLY).unlink(missing_ok=True)
        print("stopped the local Ray cluster and everything it served")
        return 0
    dashboard, _, timeout_s = target_of(args)
    if dashboard is None:
        print("no Ray cluster is running; nothing to remove")
        return 0
    cluster = connected(args, dashboard)
    details = cluster.details()
    apps = stages.deployed(details, args.stage)
    where = f"stage {args.stage!r} of " if args.stage else ""
    if apps:
        keep = carried(details, args.stage)  # other stages' apps stay
        http = details.get("http_options") or {}
        options = {"http_options": {"host": http.get("host"), "port": http.get("port")}, "proxy_location": "EveryNode"}
        cluster.apply({**options, "applications": list(keep.values())} if keep else {"applications": []})
        wait(cluster, [], apps, timeout_s)
        print(f"removed {len([a for a in apps if not traffic.is_ours(a)])} section(s) from {where}{dashboard}")
    else:
        keep = stages.others(running_configs(details), args.stage)
        print(f"nothing is deployed on {where}{dashboard}; nothing to remove")
    staying = sorted({stages.stage_of(name) for name in keep} - {stages.PRODUCTION})
    if staying:
        print(f"stage(s) {', '.join(staying)} keep running (`controller.py down --stage NAME` removes one)")
    if args.stop_cluster:
        print("the cluster was not started by this controller; it keeps running")
    return 0
