"""`export kuberay`: conf.ini as a manifest for a platform other than a cluster we apply to."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from modelserve import kuberay, plan
from modelserve.apply import validated
from modelserve.cmd_common import Subparsers, add_command, staged_config
from modelserve.config import ConfigError
from modelserve.package_store import store_artifacts

TARGETS = ("kuberay",)


def register(sub: Subparsers) -> None:
    export = add_command(sub, "export", cmd_export, "write conf.ini as a KubeRay RayService manifest (YAML)")
    export.add_argument("target", choices=TARGETS, help="kuberay: a RayService (ray.io/v1)")
    export.add_argument("-o", "--output", default="-", metavar="FILE", help="where to write it (default: stdout)")
    export.add_argument("--name", default="", help="the RayService's name (default: modelserve[-<stage>])")


def cmd_export(args: argparse.Namespace) -> int:
    config = staged_config(args)
    groups = tuple(getattr(config, "node_groups", ()))  # [NODES ...]: the "nodes" branch adds it to Config
    problems = kuberay.refusals(config, groups)
    if problems:
        raise ConfigError(config.path, problems, "no manifest was written")
    validated(config, plan.deploy_config(config, plan.Artifacts.placeholder(config)))  # before any upload
    serve_config = validated(config, plan.deploy_config(config, store_artifacts(config)))
    name = args.name or ("modelserve-" + args.stage if args.stage else "modelserve")
    text = kuberay.to_yaml(kuberay.rayservice(config, serve_config, name, groups))
    if args.output == "-":
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"wrote {args.output}: RayService {name} ({len(config.sections)} section(s))", file=sys.stderr)
    return 0
