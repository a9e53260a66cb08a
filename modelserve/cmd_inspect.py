"""Reading the running cluster: `logs`, `openapi` and `metrics`."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import requests

from modelserve import traffic
from modelserve.cmd_common import EXIT_UNHEALTHY, Subparsers, UsageError, add_command, running_cluster, staged_config
from modelserve.settings import PACKAGE_PREFIX


def register(sub: Subparsers) -> None:
    logs = add_command(
        sub, "logs", cmd_logs, "print a section's replica logs, from any node (works from the last apply)"
    )
    logs.add_argument("section", help="a section of conf.ini, e.g. algopkg.AlgoExample (or AlgoExample)")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines (Ctrl-C stops)")
    logs.add_argument("-n", "--tail", type=int, default=100, help="lines from the end of each log (default 100)")
    api = add_command(
        sub, "openapi", cmd_openapi, "print (or write) one OpenAPI document for every section of conf.ini"
    )
    api.add_argument("-o", "--output", help="write it to this file instead of printing it")
    add_command(sub, "metrics", cmd_metrics, "print the Prometheus scrape targets of the cluster (one per node)")


def cmd_logs(args: argparse.Namespace) -> int:
    cluster, _ = running_cluster(args)
    apps = cluster.details().get("applications") or {}
    name = args.section.removeprefix(PACKAGE_PREFIX).strip("[]").removeprefix(PACKAGE_PREFIX)
    name = f"{args.stage}.{name}" if args.stage else name
    if name not in apps:
        known = ", ".join(f"{PACKAGE_PREFIX}{a}" for a in sorted(apps) if not traffic.is_ours(a)) or "none"
        raise UsageError(f"logs: no section {args.section!r} runs on the cluster (running: {known})")
    replicas = [r for d in (apps[name].get("deployments") or {}).values() for r in d.get("replicas") or []]
    replicas = [r for r in replicas if r.get("log_file_path") and r.get("node_id")]
    if not replicas:
        print(f"{PACKAGE_PREFIX}{name} has no replica yet", file=sys.stderr)
        return EXIT_UNHEALTHY

    def show(replica: dict[str, Any], prefix: str) -> None:
        for line in cluster.log_lines(replica["node_id"], replica["log_file_path"], args.tail, args.follow):
            print(f"{prefix}{line}", flush=args.follow)

    if not args.follow:
        for replica in replicas:
            print(
                f"==> replica {replica.get('replica_id')} on {replica.get('node_ip')}: {replica['log_file_path']} <=="
            )
            show(replica, "")
        return 0
    threads = [
        threading.Thread(target=show, args=(r, f"[{r.get('replica_id')}] " if len(replicas) > 1 else ""), daemon=True)
        for r in replicas
    ]
    for thread in threads:
        thread.start()
    with contextlib.suppress(KeyboardInterrupt):
        while any(t.is_alive() for t in threads):
            time.sleep(0.2)
    return 0


def cmd_openapi(args: argparse.Namespace) -> int:
    """One OpenAPI document for every section of conf.ini, from what the running routes describe."""
    config = staged_config(args)
    _, base_url = running_cluster(args)
    documents, missing = [], []
    routes = {spec.route: spec for spec in config.sections}  # a shared route is described once, by its owner
    for spec in routes.values():
        url = f"{base_url}/{spec.route}/openapi.json"
        try:
            # A section scaled to zero answers once a replica has loaded: up to its deploy timeout.
            response = requests.get(url, timeout=(5, config.serve.deploy_timeout_s))
            response.raise_for_status()
            documents.append(response.json())
        except (requests.RequestException, ValueError) as exc:
            missing.append(f"[{spec.section}] {url}: {exc}")
    if missing:
        print(
            "error: not served as conf.ini says; run `python controller.py` first:",
            *missing,
            sep="\n  ",
            file=sys.stderr,
        )
        return EXIT_UNHEALTHY
    from modelserve import openapi  # here: the other commands do without its imports

    text = json.dumps(openapi.merge(documents, title=f"modelserve: {config.path.name}"), indent=2) + "\n"
    if args.output:
        Path(args.output).write_text(text)
        print(f"wrote {args.output}: {len(config.sections)} section(s)", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def cmd_metrics(args: argparse.Namespace) -> int:
    """The Prometheus scrape targets of the running cluster: one exporter per node."""
    cluster, _ = running_cluster(args)
    targets = cluster.metrics_targets()
    for target in targets:
        print(target)
    print(
        f"({len(targets)} node(s); modelserve's series are named ray_modelserve_*; "
        "docker/compose.yaml's `monitoring` profile runs Prometheus and Grafana on them)",
        file=sys.stderr,
    )
    return 0 if targets else EXIT_UNHEALTHY
