"""The `[NODES <name>]` sections of a conf.ini: the node groups of a KubeRay cluster.

`[NODES head]` is the head group (one pod); any other name is a worker group. Their keys are
declared with `keys.conf_key`, like `[MODEL SERVE]`'s and the sections'; `controller.py export
kuberay` reads the groups. A conf.ini without `[NODES ...]` sections needs none of this; with them,
every section must fit some group (`fit_problems`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from modelserve import keys
from modelserve.keys import NEW_CLUSTER, Key, conf_key, declared_keys

if TYPE_CHECKING:
    from modelserve.settings import SectionSpec

NODES_PREFIX = "NODES"
HEAD = "head"
DEFAULT_IMAGE = "modelserve-node:2.60"  # docker/compose.yaml's image
#: A Kubernetes name (RFC 1123 label): KubeRay puts the group's name in its pods' names.
_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_QUANTITY_RE = re.compile(r"^([0-9]+)(Ki|Mi|Gi|Ti|K|M|G|T)?$")
_REPLICA_KEYS = ("min_replicas", "max_replicas")

#: config._parse_keys: `{field name: value}` of a section's keys, a problem for each bad one.
ParseKeys = Callable[[str, Mapping[str, str], Mapping[str, tuple[str, Key]], list[str]], dict[str, Any]]


def _image(raw: str) -> str:
    if not raw or any(c.isspace() for c in raw):
        raise keys.Invalid("must be a container image such as modelserve-node:2.60 or registry.example.com/x:tag")
    return raw


def _cpus(raw: str) -> float:
    try:
        return float(keys.whole(1, 1024)(raw))
    except keys.Invalid:
        raise keys.Invalid("must be a whole number from 1 to 1024 (it is Ray's --num-cpus)") from None


def _memory(raw: str) -> str:
    match = _QUANTITY_RE.match(raw)
    if match is None or int(match.group(1)) == 0:
        raise keys.Invalid("must be a Kubernetes memory quantity such as 16Gi (a whole number, then Ki, Mi, Gi or Ti)")
    return raw


@dataclass(frozen=True)
class NodeGroup:
    """One `[NODES <name>]` section of conf.ini: a KubeRay head group (`[NODES head]`) or a worker group."""

    name: str
    image: str = conf_key(
        "image",
        _image,
        default=DEFAULT_IMAGE,
        change=NEW_CLUSTER,
        example="registry.example.com/modelserve-node:2.60",
        help="container image of the group's pods (docker/'s image)",
    )
    cpus: float = conf_key(
        "cpus",
        _cpus,
        default="4",
        change=NEW_CLUSTER,
        example="8",
        help="CPUs per pod: Ray's num-cpus and the container's CPU limit",
    )
    memory: str = conf_key(
        "memory",
        _memory,
        default="8Gi",
        change=NEW_CLUSTER,
        example="16Gi",
        help="memory per pod, a Kubernetes quantity",
    )
    gpus: int = conf_key(
        "gpus",
        keys.whole(0, 64),
        default="0",
        change=NEW_CLUSTER,
        example="1",
        help="GPUs per pod (nvidia.com/gpu), 0 for none",
    )
    min_replicas: int = conf_key(
        "min_replicas",
        keys.whole(0, 1000),
        default="1",
        change=NEW_CLUSTER,
        example="0",
        help="worker groups: fewest pods (KubeRay's minReplicas); the head is one pod",
    )
    max_replicas: int = conf_key(
        "max_replicas",
        keys.whole(1, 1000),
        default="1",
        change=NEW_CLUSTER,
        example="4",
        help="worker groups: most pods (KubeRay's maxReplicas), at least min_replicas",
    )

    @property
    def is_head(self) -> bool:
        return self.name == HEAD

    @property
    def section(self) -> str:
        """The conf.ini section name, `NODES <name>`."""
        return f"{NODES_PREFIX} {self.name}"


#: `{conf.ini name: (field name, Key)}` of a `[NODES ...]` section.
NODE_KEYS = declared_keys(NodeGroup)


def is_nodes_section(name: str) -> bool:
    return name == NODES_PREFIX or name.startswith(f"{NODES_PREFIX} ")


def load(
    sections: Mapping[str, Mapping[str, str]], parse_keys: ParseKeys, problems: list[str]
) -> tuple[NodeGroup, ...]:
    """The node groups among `sections` (`{section name: its keys}`), in file order; a problem
    for every bad name, key or value, and for worker groups without a head group."""
    groups: list[NodeGroup] = []
    for section, items in sections.items():
        if is_nodes_section(section):
            group = _group(section, items, parse_keys, problems)
            if group is not None:
                groups.append(group)
    if groups and not any(g.is_head for g in groups):
        named = ", ".join(f"[{g.section}]" for g in groups)
        problems.append(
            f"{named}: worker groups need a head group (one pod); add [{NODES_PREFIX} {HEAD}], e.g. with `cpus = 4`"
        )
    return tuple(groups)


def _group(section: str, items: Mapping[str, str], parse_keys: ParseKeys, problems: list[str]) -> NodeGroup | None:
    name = section[len(NODES_PREFIX) + 1 :]
    good_name = _NAME_RE.match(name) is not None
    if not good_name:
        problems.append(
            f"[{section}]: a node group's name is lower-case letters, digits and - (a Kubernetes name, "
            f"at most 63 characters, no - at either end); write e.g. [{NODES_PREFIX} gpu], or [{NODES_PREFIX} {HEAD}]"
        )
    if name == HEAD:
        for key in (k for k in _REPLICA_KEYS if k in items):
            problems.append(
                f"[{section}] {key} = {items[key].strip()!r}: the head group is one pod; remove the key "
                f"(worker groups, e.g. [{NODES_PREFIX} cpu], take min_replicas and max_replicas)"
            )
        items = {k: v for k, v in items.items() if k not in _REPLICA_KEYS}
    values = parse_keys(section, items, NODE_KEYS, problems)
    group = NodeGroup(name=name, **values)
    parsed = all(k not in items or NODE_KEYS[k][0] in values for k in _REPLICA_KEYS)
    if parsed and group.min_replicas > group.max_replicas:
        default = "" if "max_replicas" in items else ", its default"
        problems.append(
            f"[{section}] min_replicas = {group.min_replicas}: above max_replicas = {group.max_replicas}{default}; "
            f"set max_replicas = {group.min_replicas} or more, or lower min_replicas"
        )
    return group if good_name else None


def fit_problems(groups: Sequence[NodeGroup], specs: Iterable[SectionSpec]) -> list[str]:
    """A problem for each section whose replica fits no group: none has `gpus >= gpu_cost` (a
    fraction shares one GPU), or none of those has `cpus >= cpu_cost`. No groups: no problems."""
    found: list[str] = []
    for spec in specs if groups else ():
        with_gpus = [g for g in groups if g.gpus >= spec.gpu_cost]
        if not with_gpus:
            found.append(_no_gpu_group(spec, groups))
        elif not any(g.cpus >= spec.cpu_cost for g in with_gpus):
            found.append(_no_cpu_group(spec, with_gpus))
    return found


def _no_gpu_group(spec: SectionSpec, groups: Sequence[NodeGroup]) -> str:
    need = math.ceil(spec.gpu_cost)
    where = f"[{spec.section}] gpu_cost = {spec.gpu_cost:g}"
    most = max(groups, key=lambda g: g.gpus)
    if most.gpus == 0:
        return f"{where}: no [{NODES_PREFIX} ...] group has a GPU; add one, e.g. [{NODES_PREFIX} gpu] gpus = {need}"
    return (
        f"{where}: no [{NODES_PREFIX} ...] group has {need} GPUs (the most is {most.gpus}, in [{most.section}]); "
        f"set gpus = {need} there, or add a group, e.g. [{NODES_PREFIX} gpu{need}] gpus = {need}"
    )


def _no_cpu_group(spec: SectionSpec, groups: Sequence[NodeGroup]) -> str:
    need = math.ceil(spec.cpu_cost)
    with_gpus = f" with gpus >= {spec.gpu_cost:g}" if spec.gpu_cost else ""
    most = max(groups, key=lambda g: g.cpus)
    return (
        f"[{spec.section}] cpu_cost = {spec.cpu_cost:g}: no [{NODES_PREFIX} ...] group{with_gpus} has {need} CPUs "
        f"(the most is {most.cpus:g}, in [{most.section}]); set cpus = {need} there, or lower cpu_cost"
    )
