"""`python controller.py [apply|check|status|down] [-c FILE]`: each subcommand a few calls.

The commands live in groups (cmd_*.py), each adding its own with `register(sub)`; this module
builds the parser from them and turns errors into exit codes.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence

from modelserve import cmd_author, cmd_bench, cmd_deploy, cmd_export, cmd_inspect, cmd_models
from modelserve.cluster import ClusterError
from modelserve.cmd_common import EXIT_CLUSTER, EXIT_CONFIG, EXIT_UNHEALTHY, NoCluster, UsageError, add_shared_options
from modelserve.config import ConfigError

#: The command groups, in the order `--help` lists their commands.
GROUPS = (cmd_deploy, cmd_inspect, cmd_models, cmd_bench, cmd_author, cmd_export)


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(prog="controller.py", description="Serve algorithm packages as conf.ini says.")
    add_shared_options(main)
    main.set_defaults(func=cmd_deploy.cmd_apply, command="apply")
    sub = main.add_subparsers()
    for group in GROUPS:
        group.register(sub)
    sub.metavar = "{" + ",".join(sub.choices) + "}"
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
