"""`[NODES <name>]` sections of conf.ini: the head group and the worker groups of a KubeRay cluster.

Placeholder for the "nodes" branch, which owns this module and its validation: only the dataclass.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The image docker/ builds (docker/compose.yaml).
DEFAULT_IMAGE = "modelserve-node:2.60"


@dataclass(frozen=True)
class NodeGroup:
    """One `[NODES <name>]` section of conf.ini: a KubeRay head group (`[NODES head]`) or a worker group."""

    name: str
    image: str = DEFAULT_IMAGE
    cpus: float = 1.0
    memory: str = "4Gi"
    gpus: int = 0
    min_replicas: int = 1
    max_replicas: int = 1

    @property
    def is_head(self) -> bool:
        return self.name == "head"
