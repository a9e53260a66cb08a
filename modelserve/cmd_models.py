"""`models [SECTION]`: the versions a store holds for each section's models, the one serving marked."""

from __future__ import annotations

import argparse
import sys

from modelserve import inprocess, status
from modelserve.cluster import ClusterError
from modelserve.cmd_common import NoCluster, Subparsers, UsageError, add_command, running_cluster, staged_config
from modelserve.modelstore import ModelStoreError, open_store, parse_ref
from modelserve.settings import Config, SectionSpec


def register(sub: Subparsers) -> None:
    models = add_command(sub, "models", cmd_models, "list the versions the model store holds, marking those serving")
    models.add_argument("section", nargs="?", help="one section of conf.ini (default: every section with a model)")


def _serving(args: argparse.Namespace) -> tuple[dict[str, tuple[str, ...]], str]:
    """`{section: its model entries as the cluster runs them}`, and a note where the cluster was not read."""
    try:
        cluster, base_url = running_cluster(args)
        rows = status.rows(cluster.details(), base_url, stage=args.stage)
    except (ClusterError, NoCluster) as exc:
        return {}, f"(what serves is not shown: {str(exc).splitlines()[0]})"
    return {row.section: row.models for row in rows}, ""


def _lines(config: Config, spec: SectionSpec, serving: tuple[str, ...] | None) -> list[tuple[str, ...]]:
    store = open_store(config.zoo_of(spec))
    lines: list[tuple[str, ...]] = []
    for entry in spec.model_files:
        ref = parse_ref(entry)
        if not ref.versioned:
            shown = "serving" if serving and entry in serving else "-"
            lines.append((spec.section, ref.name, "(a file)", entry, shown))
            continue
        versions = store.versions(ref.name)
        live = {int(m.split("@", 1)[1]) for m in serving or () if m.split("@", 1)[0] == ref.name}
        listed = " ".join(f"*{v}" if v in live else str(v) for v in versions) or "none"
        now = ", ".join(f"{ref.name}@{v}" for v in sorted(live)) or ("not deployed" if serving is None else "-")
        lines.append((spec.section, ref.name, listed, entry, now))
    return lines


def cmd_models(args: argparse.Namespace) -> int:
    config = staged_config(args)
    specs = [s for s in config.sections if s.model_files]
    if args.section:
        try:
            spec = inprocess.find_section(config, args.section)
        except inprocess.LocalError as exc:
            raise UsageError(f"models: {exc}") from None
        if not spec.model_files:
            raise UsageError(f"models: [{spec.section}] has no `model` key")
        specs = [spec]
    served, note = _serving(args)
    header = ("SECTION", "MODEL", "VERSIONS (*serving)", "CONF.INI", "SERVING")
    lines: list[tuple[str, ...]] = []
    try:
        for spec in specs:
            lines += _lines(config, spec, served.get(spec.section) if served or not note else None)
    except ModelStoreError as exc:
        raise UsageError(f"models: {exc}") from None
    print(status.columns(header, lines) if lines else "no section names a model")
    if note:
        print(note, file=sys.stderr)
    return 0
