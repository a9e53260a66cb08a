"""What every command group of cli.py shares: exit codes, the shared options, conf.ini and the cluster it names."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeAlias
from urllib.parse import urlparse

from modelserve import stages
from modelserve.address import resolve_dashboard
from modelserve.cluster import CONNECT_TIMEOUT_S, Cluster
from modelserve.config import ConfigError, load_config
from modelserve.settings import Config

EXIT_UNHEALTHY = 1
EXIT_CONFIG = 2
EXIT_CLUSTER = 3

#: What `register(sub)` of a command group adds its commands to (argparse names no public type for it).
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
Command: TypeAlias = Callable[[argparse.Namespace], int]


class UsageError(Exception):
    """A command line that cannot be carried out; the message says what to give instead (exit 2)."""


class NoCluster(Exception):
    """No Ray cluster runs where conf.ini (or the last apply) points (exit 3)."""


#: What the controller remembers of its last apply, so `status` and `down` work without a valid conf.ini.
LAST_APPLY = "last_apply.json"
#: Packages uploaded from here: `{content digest: URI}` (Cluster.upload).
UPLOADS = "uploads.json"

_CONFIG_HELP = "conf.ini to use (default: conf.ini)"
_STAGE_HELP = "act on that stage (e.g. grey): routes under /<stage>/, one replica per section"
_WAIT_HELP = f"seconds to wait for the cluster to answer before exit 3 (default {CONNECT_TIMEOUT_S:g})"


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


def add_shared_options(parser: argparse.ArgumentParser, defaults: bool = True) -> None:
    """`-c`, `--stage` and `--connect-timeout`: with their defaults on the main parser; without on a
    command, so one given before the command name is not reset by the command's own."""

    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument("-c", "--config", default=default("conf.ini"), help=_CONFIG_HELP)
    parser.add_argument("--stage", default=default(""), type=_stage, help=_STAGE_HELP)
    parser.add_argument(
        "--connect-timeout", default=default(CONNECT_TIMEOUT_S), type=_seconds, metavar="S", help=_WAIT_HELP
    )


def add_command(sub: Subparsers, name: str, func: Command, text: str) -> argparse.ArgumentParser:
    """A command `name` that runs `func`, with the shared options; `text` is its help line."""
    cmd = sub.add_parser(name, help=text, description=text)
    add_shared_options(cmd, defaults=False)
    cmd.set_defaults(func=func, command=name)
    return cmd


def staged_config(args: argparse.Namespace) -> Config:
    """conf.ini as `--stage` serves it (production without one)."""
    return stages.staged(load_config(args.config), args.stage)


def connect_timeout_s(args: argparse.Namespace) -> float:
    return float(getattr(args, "connect_timeout", CONNECT_TIMEOUT_S))


def connected(args: argparse.Namespace, dashboard: str, uploads: Path | None = None) -> Cluster:
    """The cluster behind `dashboard`, once it answers within `--connect-timeout` (else exit 3)."""
    cluster = Cluster(dashboard, uploads=uploads, connect_timeout_s=connect_timeout_s(args))
    cluster.check_reachable()
    return cluster


def state_dir_of(config_path: str) -> Path:
    return Path(config_path).resolve().parent / ".modelserve"


def base_url_of(config: Config, dashboard_url: str) -> str:
    host = config.serve.host
    if host in ("0.0.0.0", "::", ""):
        host = urlparse(dashboard_url).hostname or "127.0.0.1"
    return f"http://{host}:{config.serve.port}"


def target_of(args: argparse.Namespace) -> tuple[str | None, str, float]:
    """The cluster `status` and `down` act on: per conf.ini, or, where the file is broken or
    missing, the one the last apply used (saying so). Returns (dashboard, base URL, timeout)."""
    state_dir = state_dir_of(args.config)
    try:
        config = staged_config(args)
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
    timeout_s = connect_timeout_s(args)
    dashboard = resolve_dashboard(
        config.serve, state_dir, start=False, connect_timeout_s=timeout_s, stage=getattr(args, "stage", "")
    )
    base_url = base_url_of(config, dashboard) if dashboard else ""
    return dashboard, base_url, config.serve.deploy_timeout_s


def running_cluster(args: argparse.Namespace) -> tuple[Cluster, str]:
    """The cluster a command reads, and the base URL of its HTTP port."""
    dashboard, base_url, _ = target_of(args)
    if dashboard is None:
        raise NoCluster("no Ray cluster is running; `python controller.py` starts one")
    return connected(args, dashboard), base_url
