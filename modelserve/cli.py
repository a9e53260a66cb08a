"""`python controller.py [apply|check|status|down] [-c FILE]`: each subcommand a few calls."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import requests

from modelserve import plan, stages, status, traffic
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
from modelserve.cluster import CONNECT_TIMEOUT_S, Cluster, ClusterError, resolve_dashboard
from modelserve.config import ConfigError, load_config
from modelserve.fit import ClusterResources, Node, fit_problems
from modelserve.localhead import stop_local_head
from modelserve.settings import PACKAGE_PREFIX, Config
from modelserve.timings import Phases
from modelserve.warmup import read_warmup

EXIT_UNHEALTHY = 1
EXIT_CONFIG = 2
EXIT_CLUSTER = 3


class UsageError(Exception):
    """A command line that cannot be carried out; the message says what to give instead (exit 2)."""


#: What the controller remembers of its last apply, so `status` and `down` work without a valid conf.ini.
LAST_APPLY = "last_apply.json"
#: Packages uploaded from here: `{content digest: URI}` (Cluster.upload).
UPLOADS = "uploads.json"


def _config(args: argparse.Namespace) -> Config:
    """conf.ini as `--stage` serves it (production without one)."""
    return stages.staged(load_config(args.config), args.stage)


def _connect_timeout(args: argparse.Namespace) -> float:
    return float(getattr(args, "connect_timeout", CONNECT_TIMEOUT_S))


def _connected(args: argparse.Namespace, dashboard: str, uploads: Path | None = None) -> Cluster:
    """The cluster behind `dashboard`, once it answers within `--connect-timeout` (else exit 3)."""
    cluster = Cluster(dashboard, uploads=uploads, connect_timeout_s=_connect_timeout(args))
    cluster.check_reachable()
    return cluster


def _state_dir(config_path: str) -> Path:
    return Path(config_path).resolve().parent / ".modelserve"


def _base_url(config: Config, dashboard_url: str) -> str:
    host = config.serve.host
    if host in ("0.0.0.0", "::", ""):
        host = urlparse(dashboard_url).hostname or "127.0.0.1"
    return f"http://{host}:{config.serve.port}"


def cmd_check(args: argparse.Namespace) -> int:
    config = _config(args)
    validated(config, plan.deploy_config(config, plan.Artifacts.placeholder(config)))
    _warn_if_it_cannot_fit_a_local_cluster(config)
    routes = ", ".join(f"/{r}" for r in dict.fromkeys(s.route for s in config.sections)) or "no sections"
    print(f"{config.path}: OK ({len(config.sections)} section(s): {routes})")
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    phases = Phases(getattr(args, "timings", False))
    config = _config(args)
    state_dir = _state_dir(args.config)
    validated_once(config, plan.deploy_config(config, plan.Artifacts.placeholder(config)), state_dir)
    phases.mark("read and validate conf.ini")
    dashboard = resolve_dashboard(config.serve, state_dir, start=True, connect_timeout_s=_connect_timeout(args))
    assert dashboard is not None
    cluster = _connected(args, dashboard, uploads=state_dir / UPLOADS)
    phases.mark("find (or start) the cluster")
    before = cluster.details()
    phases.mark("read what runs")
    warn_about_http_options(config, before)
    base_url = _base_url(config, dashboard)
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


def _target(args: argparse.Namespace) -> tuple[str | None, str, float]:
    """The cluster `status` and `down` act on: per conf.ini, or, where the file is broken or
    missing, the one the last apply used (saying so). Returns (dashboard, base URL, timeout)."""
    state_dir = _state_dir(args.config)
    try:
        config = _config(args)
    except ConfigError as exc:
        try:
            last = json.loads((state_dir / LAST_APPLY).read_text())
        except (OSError, ValueError):
            raise ConfigError(exc.path, exc.problems, "and no earlier apply here to fall back on") from None
        print(
            f"warning: {exc.path} is not usable ({exc.problems[0]}); acting on the cluster of the last apply, "
            f"{last['dashboard_url']}",
            file=sys.stderr,
        )
        return str(last["dashboard_url"]), str(last["base_url"]), 300.0
    dashboard = resolve_dashboard(config.serve, state_dir, start=False, connect_timeout_s=_connect_timeout(args))
    base_url = _base_url(config, dashboard) if dashboard else ""
    return dashboard, base_url, config.serve.deploy_timeout_s


class NoCluster(Exception):
    """No Ray cluster runs where conf.ini (or the last apply) points (exit 3)."""


def _running(args: argparse.Namespace) -> tuple[Cluster, str]:
    """The cluster a command reads, and the base URL of its HTTP port."""
    dashboard, base_url, _ = _target(args)
    if dashboard is None:
        raise NoCluster("no Ray cluster is running; `python controller.py` starts one")
    return _connected(args, dashboard), base_url


def cmd_status(args: argparse.Namespace) -> int:
    cluster, base_url = _running(args)
    details = cluster.details()
    code = _report(status.rows(details, base_url, stage=args.stage), details=True)
    if status.splits(details, args.stage):
        for line in status.traffic_lines(details, _mirrored(cluster), args.stage):
            print(line)
    return code


def _mirrored(cluster: Cluster) -> dict[tuple[str, str], float]:
    """`{(mirror section, outcome): copies}` summed over every node's metrics exporter."""
    counts: dict[tuple[str, str], float] = {}
    for target in cluster.metrics_targets():
        try:
            text = requests.get(target, timeout=5).text
        except requests.RequestException:
            continue
        for labels, value in re.findall(r"^ray_modelserve_mirrored_total\{(.*?)\} (\S+)$", text, re.M):
            tags = dict(re.findall(r'(\w+)="(.*?)"', labels))
            key = (tags.get("section", ""), tags.get("outcome", ""))
            counts[key] = counts.get(key, 0.0) + float(value)
    return counts


def cmd_down(args: argparse.Namespace) -> int:
    state_dir = _state_dir(args.config)
    if args.stop_cluster and stop_local_head(state_dir):
        (state_dir / LAST_APPLY).unlink(missing_ok=True)
        print("stopped the local Ray cluster and everything it served")
        return 0
    dashboard, _, timeout_s = _target(args)
    if dashboard is None:
        print("no Ray cluster is running; nothing to remove")
        return 0
    cluster = _connected(args, dashboard)
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


def cmd_logs(args: argparse.Namespace) -> int:
    cluster, _ = _running(args)
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
    config = _config(args)
    _, base_url = _running(args)
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
    cluster, _ = _running(args)
    targets = cluster.metrics_targets()
    for target in targets:
        print(target)
    print(
        f"({len(targets)} node(s); modelserve's series are named ray_modelserve_*; "
        "docker/compose.yaml's `monitoring` profile runs Prometheus and Grafana on them)",
        file=sys.stderr,
    )
    return 0 if targets else EXIT_UNHEALTHY


def _bench_params(config: Config, args: argparse.Namespace) -> tuple[str, str, dict[str, Any]]:
    """URL, method and body for `bench`: from the ROUTE's section unless given."""
    route = (args.route or "").strip("/")
    spec = next((s for s in config.sections if s.route == route), None)
    if spec is None and not args.url:
        known = ", ".join(s.route for s in config.sections) or "none"
        raise UsageError(f"bench: no section serves route {route!r} (routes: {known}); name one, or give --url")
    host = "127.0.0.1" if config.serve.host in ("0.0.0.0", "::") else config.serve.host
    url = args.url or f"http://{host}:{config.serve.port}/{route}"
    method = "POST" if spec is None or "POST" in spec.methods else "GET"
    if args.form or args.body_file:
        params: dict[str, Any] = {}  # the body is the form or the file: see cmd_bench
    elif args.body:
        try:
            params = json.loads(Path(args.body).read_text())
        except (OSError, ValueError) as exc:
            raise UsageError(f"bench: --body {args.body}: cannot read it as JSON ({exc})") from None
    elif spec is not None and spec.warmup:
        params = read_warmup(config.algopkg_dir / spec.package / spec.warmup)[0]
    else:
        raise UsageError(f"bench: [{spec.section if spec else route}] has no warmup sample; give --body FILE")
    return url, method, params


def cmd_bench(args: argparse.Namespace) -> int:
    config = _config(args)
    url, method, params = _bench_params(config, args)
    from modelserve import bench  # here: the other commands do without its imports

    try:
        headers = bench.parse_headers(args.header)
        payload = bench.form_payload(args.form) if args.form else None
        if args.body_file:
            payload = bench.raw_payload(args.body_file, args.content_type)
    except bench.BenchError as exc:
        raise UsageError(str(exc)) from None
    print(
        f"{method} {url}: {args.concurrency} connection(s), up to {args.duration}s"
        + (f" or {args.requests} requests" if args.requests else "")
    )
    summary = bench.run(
        url, payload or params, args.concurrency, args.duration, args.requests, method=method, headers=headers
    )
    print(summary.render())
    return 0 if summary.non_2xx == summary.errors == 0 and summary.requests else EXIT_UNHEALTHY


def _stage(value: str) -> str:
    try:
        return stages.check_name(value)
    except stages.StageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"{value!r}: give a number of seconds above 0, e.g. 5")
    return seconds


def parser() -> argparse.ArgumentParser:
    config_help = "conf.ini to use (default: conf.ini)"
    main = argparse.ArgumentParser(prog="controller.py", description="Serve algorithm packages as conf.ini says.")
    stage_help = "act on that stage (e.g. grey): routes under /<stage>/, one replica per section"
    wait_help = f"seconds to wait for the cluster to answer before exit 3 (default {CONNECT_TIMEOUT_S:g})"
    main.add_argument("-c", "--config", default="conf.ini", help=config_help)
    main.add_argument("--stage", default="", type=_stage, help=stage_help)
    main.add_argument("--connect-timeout", default=CONNECT_TIMEOUT_S, type=_seconds, metavar="S", help=wait_help)
    main.set_defaults(func=cmd_apply, command="apply")
    sub = main.add_subparsers(metavar="{apply,check,status,down,logs,openapi,metrics,bench}")

    def command(name: str, func: Callable[[argparse.Namespace], int], text: str) -> argparse.ArgumentParser:
        cmd = sub.add_parser(name, help=text, description=text)
        cmd.add_argument("-c", "--config", default=argparse.SUPPRESS, help=config_help)
        cmd.add_argument("--stage", default=argparse.SUPPRESS, type=_stage, help=stage_help)
        cmd.add_argument("--connect-timeout", default=argparse.SUPPRESS, type=_seconds, metavar="S", help=wait_help)
        cmd.set_defaults(func=func, command=name)
        return cmd

    apply_cmd = command("apply", cmd_apply, "validate, then make the cluster match the file (default)")
    apply_cmd.add_argument("--timings", action="store_true", help="print where the apply's time went (stderr)")
    command("check", cmd_check, "validate the file only; touches no cluster")
    command("status", cmd_status, "show what runs now (works from the last apply if conf.ini is broken)")
    down = command("down", cmd_down, "remove every deployed section (works from the last apply if conf.ini is broken)")
    down.add_argument("--stop-cluster", action="store_true", help="also stop the local cluster we started")
    logs = command("logs", cmd_logs, "print a section's replica logs, from any node (works from the last apply)")
    logs.add_argument("section", help="a section of conf.ini, e.g. algopkg.AlgoExample (or AlgoExample)")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines (Ctrl-C stops)")
    logs.add_argument("-n", "--tail", type=int, default=100, help="lines from the end of each log (default 100)")
    api = command("openapi", cmd_openapi, "print (or write) one OpenAPI document for every section of conf.ini")
    api.add_argument("-o", "--output", help="write it to this file instead of printing it")
    command("metrics", cmd_metrics, "print the Prometheus scrape targets of the cluster (one per node)")
    bench_cmd = command("bench", cmd_bench, "load one route and print RPS and latency percentiles")
    bench_cmd.add_argument("route", nargs="?", help="a route of conf.ini, e.g. extract")
    bench_cmd.add_argument("--url", help="load this URL instead of the route's local one")
    body = bench_cmd.add_mutually_exclusive_group()
    body.add_argument("--body", help="JSON file of params (default: the section's warm-up sample)")
    body.add_argument("--form", action="append", metavar="NAME=VALUE|NAME=@FILE", help="a multipart form field")
    body.add_argument("--body-file", help="send this file's bytes as the body, with --content-type")
    bench_cmd.add_argument("--content-type", default="application/octet-stream", help="of --body-file")
    bench_cmd.add_argument("-H", "--header", action="append", default=[], help="'Name: value', e.g. an API key")
    bench_cmd.add_argument("-C", "--concurrency", type=int, default=8, help="connections (default 8)")
    bench_cmd.add_argument("-d", "--duration", type=float, default=10.0, help="seconds, at most (default 10)")
    bench_cmd.add_argument("-n", "--requests", type=int, help="stop after this many requests")
    return main


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        code: int = args.func(args)
        sys.stdout.flush()
        return code
    except (ConfigError, UsageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except ClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CLUSTER
    except NoCluster as exc:
        print(exc, file=sys.stderr)
        return EXIT_CLUSTER
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
    except BrokenPipeError:  # `controller.py status | head -1`: the reader left; no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_UNHEALTHY
