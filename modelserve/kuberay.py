"""conf.ini as a KubeRay `RayService` (apiVersion ray.io/v1): `controller.py export kuberay`.

`spec.serveConfigV2` is the very Serve config an apply sends (`plan.deploy_config`), its
packages and runtime referenced by `s3://` URIs (package_store.py); the operator PUTs it to
the cluster's dashboard. `spec.rayClusterConfig` comes from the `[NODES ...]` groups, each
node started as modelserve.node starts ours: token auth (the token from a Kubernetes Secret),
HAProxy ingress, a short drain period. No Ray import: only its settings' names (raycompat).

KubeRay's rule, which the README repeats: a change to `rayClusterConfig` makes a new cluster
(`upgradeStrategy: NewCluster`, traffic moves once it serves); a change to `serveConfigV2`
only is applied to the running cluster in place.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from importlib import metadata
from typing import Any

import yaml

from modelserve import node, raycompat
from modelserve.node_groups import NodeGroup
from modelserve.settings import Config

API_VERSION = "ray.io/v1"
#: The Secret the pods and the operator read the cluster's token from (`kubectl create secret`).
TOKEN_KEY = "auth_token"
#: KubeRay's head ports (its defaults); the Serve port comes from `[MODEL SERVE] port`.
HEAD_PORTS = {"gcs-server": 6379, "dashboard": 8265, "client": 10001}
#: A `rayClusterConfig` change: a new cluster, traffic moved once it serves. (`authOptions`, the token
#: the operator's own dashboard client sends, needs KubeRay 1.5.1 or later.)
UPGRADE_STRATEGY = "NewCluster"


def token_secret(name: str) -> str:
    return f"{name}-ray-token"


def store_secret(name: str) -> str:
    """An optional Secret whose keys (AWS_ACCESS_KEY_ID, ...) become every Ray container's environment."""
    return f"{name}-aws"


def refusals(config: Config, groups: Sequence[NodeGroup]) -> list[str]:
    """Why conf.ini cannot be exported as it is; each names `[section] key`, the value and the fix."""
    problems = []
    store = "packages and model files must reach the pods from an object store: set model_zoo = s3://bucket/prefix"
    if not config.serve.model_zoo.startswith("s3://"):
        problems.append(f"[MODEL SERVE] model_zoo = {config.serve.model_zoo or '(empty)'} is local: {store}")
    for spec in config.sections:
        if spec.model_zoo and not spec.model_zoo.startswith("s3://"):
            problems.append(f"[{spec.section}] model_zoo = {spec.model_zoo} is local: {store}")
    if config.serve.host not in ("0.0.0.0", "::"):
        problems.append(
            f"[MODEL SERVE] host = {config.serve.host}: a Kubernetes Service cannot reach it in the pod; "
            "set host = 0.0.0.0"
        )
    if not any(group.is_head for group in groups):
        problems.append("no [NODES head] section: add one (image, cpus, memory, gpus) for the head pod")
    return problems


def _cpu(cpus: float) -> str:
    return str(int(cpus)) if float(cpus).is_integer() else f"{round(cpus * 1000)}m"


def _start_params(group: NodeGroup) -> dict[str, str]:
    """`ray start` flags KubeRay adds (it sets --head, --block, the ports and the address itself)."""
    params = {"dashboard-host": "0.0.0.0"} if group.is_head else {}
    if float(group.cpus).is_integer():  # else KubeRay derives it from the CPU limit
        params["num-cpus"] = str(int(group.cpus))
    params["num-gpus"] = str(group.gpus)
    return params


def _env(name: str) -> list[dict[str, Any]]:
    """What modelserve.node_env gives our nodes: token auth, HAProxy, the drain period."""
    fixed = {raycompat.AUTH_MODE: "token", raycompat.ENABLE_HA_PROXY: "1", **raycompat.draining_env(node.DRAIN_S)}
    env: list[dict[str, Any]] = [{"name": key, "value": value} for key, value in fixed.items()]
    secret = {"secretKeyRef": {"name": token_secret(name), "key": TOKEN_KEY}}
    return [*env, {"name": raycompat.AUTH_TOKEN, "valueFrom": secret}]


def _container(group: NodeGroup, name: str, serve_port: int) -> dict[str, Any]:
    amounts: dict[str, Any] = {"cpu": _cpu(group.cpus), "memory": group.memory}
    limits = {**amounts, "nvidia.com/gpu": group.gpus} if group.gpus else amounts
    container: dict[str, Any] = {
        "name": "ray-head" if group.is_head else "ray-worker",
        "image": group.image,
        "resources": {"limits": limits, "requests": dict(limits)},
        "env": _env(name),
        "envFrom": [{"secretRef": {"name": store_secret(name), "optional": True}}],
    }
    if group.is_head:
        ports = {**HEAD_PORTS, "serve": serve_port}
        container["ports"] = [{"name": port_name, "containerPort": port} for port_name, port in ports.items()]
    return container


def _template(group: NodeGroup, name: str, serve_port: int) -> dict[str, Any]:
    return {"spec": {"containers": [_container(group, name, serve_port)]}}


def _worker_group(group: NodeGroup, name: str, serve_port: int) -> dict[str, Any]:
    return {
        "groupName": group.name,
        "replicas": group.min_replicas,
        "minReplicas": group.min_replicas,
        "maxReplicas": group.max_replicas,
        "rayStartParams": _start_params(group),
        "template": _template(group, name, serve_port),
    }


def ray_version() -> str:
    return metadata.version("ray")


def rayservice(
    config: Config, serve_config: Mapping[str, Any], name: str, groups: Sequence[NodeGroup]
) -> dict[str, Any]:
    """The RayService serving `serve_config` (an apply's `plan.deploy_config`) on `groups`."""
    head = next(group for group in groups if group.is_head)
    workers = [group for group in groups if not group.is_head]
    port = config.serve.port
    return {
        "apiVersion": API_VERSION,
        "kind": "RayService",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "modelserve"}},
        "spec": {
            "upgradeStrategy": {"type": UPGRADE_STRATEGY},
            "serveService": {
                "metadata": {"name": f"{name}-serve"},
                "spec": {"ports": [{"name": "serve", "port": port, "targetPort": port}]},
            },
            "serveConfigV2": yaml.safe_dump(dict(serve_config), sort_keys=False),
            "rayClusterConfig": {
                "rayVersion": ray_version(),
                "authOptions": {"mode": "token", "secretName": token_secret(name)},
                "enableInTreeAutoscaling": any(w.min_replicas < w.max_replicas for w in workers),
                "headGroupSpec": {
                    "rayStartParams": _start_params(head),
                    "template": _template(head, name, port),
                },
                "workerGroupSpecs": [_worker_group(w, name, port) for w in workers],
            },
        },
    }


class _Dumper(yaml.SafeDumper):  # type: ignore[misc]  # (no PyYAML stubs here)
    """Multi-line strings (`serveConfigV2`) as `|` blocks: the manifest reads as the YAML it holds."""


def _text(dumper: Any, value: str) -> Any:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_Dumper.add_representer(str, _text)


def to_yaml(manifest: Mapping[str, Any]) -> str:
    text: str = yaml.dump(dict(manifest), Dumper=_Dumper, sort_keys=False)
    return text
