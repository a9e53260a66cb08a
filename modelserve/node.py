"""`python -m modelserve.node head|worker`: start one Ray node as modelserve needs it.

The docker entrypoint runs this; so do the tests, without docker. Settings come from
the environment (see `NODE_ENV`), with defaults that expose nothing: the dashboard on
127.0.0.1, token auth on, Ray's internal ports chosen free.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from modelserve import raycompat

#: Seconds a stopping replica keeps serving so the ingress can drop it before it goes.
DRAIN_S = 5
_INTERNAL_PORT_FLAGS = (
    "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port",
    "metrics-export-port",
    "runtime-env-agent-port",
)

NODE_ENV: dict[str, str] = {
    "MODELSERVE_NODE_IP": "address other nodes reach this node at: an IP, or auto (default 127.0.0.1)",
    "RAY_HEAD_ADDRESS": "worker: the head's GCS address, host:port (required)",
    "RAY_GCS_PORT": "head: GCS port (default 6379)",
    "RAY_DASHBOARD_HOST": "head: dashboard bind address (default 127.0.0.1)",
    "RAY_DASHBOARD_PORT": "head: dashboard port (default 8265)",
    "RAY_NUM_CPUS": "CPUs this node offers (default: all)",
    "RAY_NUM_GPUS": "GPUs this node offers (default: detected)",
    "RAY_RESOURCES": 'custom resources as JSON, e.g. {"camera": 1}',
    "MODELSERVE_INGRESS": "fast (HAProxy) or proxy (Ray Serve's Python proxy); default fast",
    "MODELSERVE_WORKER_HTTP_PORT": "worker: HTTP port of its ingress when it shares a host with the head",
    f"{raycompat.AUTH_TOKEN} / {raycompat.AUTH_TOKEN_PATH}": "the cluster's token; the head creates one if none exists",
    "RAY_TEMP_DIR": "head: Ray's session directory (default /tmp/ray)",
    f"{raycompat.FALLBACK_PROXY_HTTP_PORT}, {raycompat.DASHBOARD_METRIC_PORT}, {raycompat.AUTOSCALER_METRIC_PORT}": (
        "head: ports Ray fixes for every cluster on a host (8500, 44227, 44217); default: chosen per head"
    ),
}


class NodeError(RuntimeError):
    """A node cannot start as configured; the message says which variable to set."""


@dataclass(frozen=True)
class NodeSpec:
    role: str  # "head" or "worker"
    node_ip: str = "127.0.0.1"
    head_address: str = ""
    gcs_port: int = 6379
    dashboard_host: str = "127.0.0.1"
    dashboard_port: int = 8265
    num_cpus: int | None = None
    num_gpus: int | None = None
    resources: str = ""
    ingress: str = "fast"
    worker_http_port: int | None = None
    temp_dir: str = ""
    labels: tuple[tuple[str, str], ...] = ()  # Ray node labels (a local head: its project)


#: Ports this process has handed out: the kernel may give a closed port back at once.
_HANDED_OUT: set[int] = set()
#: Per-cluster blocks of replica HTTP ports behind HAProxy (Ray's default is 30000-31000).
_DIRECT_INGRESS_BLOCKS = range(20000, 28000, 100)
#: Ports for listeners bound long after they are chosen, below the kernel's ephemeral range.
_LATE_PORTS = (28000, 32768)
#: Per-node blocks of workers' gRPC ports, inside Ray's default 10002-19999 (a port something
#: else holds is skipped by the raylet): clusters sharing a host mostly keep to their own.
_WORKER_PORT_BLOCKS = range(10002, 19500, 500)


def free_port(host: str = "127.0.0.1") -> int:
    """A port free now, from the kernel's ephemeral range: for a listener that binds at once."""
    while True:
        with socket.socket() as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def late_port() -> int:
    """A port free now that no other process is handed by the kernel in the meantime.

    HAProxy binds its listeners at the first deploy, minutes after the node starts. A port
    from the ephemeral range (`free_port`) can be taken by then by any of Ray's outgoing
    connections; ports below that range are only ever taken on purpose.
    """
    low, high = _LATE_PORTS[0], min(_LATE_PORTS[1], _ephemeral_low())
    for _ in range(200 if high > low else 0):
        port = random.randrange(low, high)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("0.0.0.0", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    return free_port("0.0.0.0")


def _int_env(env: Mapping[str, str], name: str) -> int | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise NodeError(f"{name}={raw!r} must be a whole number") from None


def detect_ip(toward: str = "") -> str:
    """The local address that routes toward `toward` (host[:port]), else the hostname's address."""
    host = toward.rsplit(":", 1)[0] if toward else ""
    if host:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            try:
                sock.connect((host, 9))  # UDP: nothing is sent
                return str(sock.getsockname()[0])
            except OSError:
                pass
    return socket.gethostbyname(socket.gethostname())


def spec_from_env(role: str, env: Mapping[str, str]) -> NodeSpec:
    """Read a node's settings from environment variables (see `NODE_ENV`)."""
    if role not in ("head", "worker"):
        raise NodeError(f"unknown role {role!r}: use `head` or `worker`")
    if role == "worker" and not env.get("RAY_HEAD_ADDRESS"):
        raise NodeError("a worker needs RAY_HEAD_ADDRESS=<head ip>:<gcs port>")
    ingress = env.get("MODELSERVE_INGRESS", "fast")
    if ingress not in ("fast", "proxy"):
        raise NodeError(f"MODELSERVE_INGRESS={ingress!r}: use fast or proxy")
    node_ip = env.get("MODELSERVE_NODE_IP", "127.0.0.1")
    if node_ip == "auto":
        node_ip = detect_ip(env.get("RAY_HEAD_ADDRESS", ""))
    return NodeSpec(
        role=role,
        node_ip=node_ip,
        head_address=env.get("RAY_HEAD_ADDRESS", ""),
        gcs_port=_int_env(env, "RAY_GCS_PORT") or 6379,
        dashboard_host=env.get("RAY_DASHBOARD_HOST", "127.0.0.1"),
        dashboard_port=_int_env(env, "RAY_DASHBOARD_PORT") or 8265,
        num_cpus=_int_env(env, "RAY_NUM_CPUS"),
        num_gpus=_int_env(env, "RAY_NUM_GPUS"),
        resources=env.get("RAY_RESOURCES", ""),
        ingress=ingress,
        worker_http_port=_int_env(env, "MODELSERVE_WORKER_HTTP_PORT"),
        temp_dir=env.get("RAY_TEMP_DIR", ""),
    )


def _ray_executable() -> str:
    beside = Path(sys.executable).parent / "ray"
    found = str(beside) if beside.exists() else shutil.which("ray")
    if not found:
        raise NodeError("the `ray` command was not found; install ray[serve] into this environment")
    return found


def ray_start_command(spec: NodeSpec) -> list[str]:
    """`ray start ... --block` for the node, every internal port chosen free."""
    cmd = [_ray_executable(), "start", "--block", "--disable-usage-stats", f"--node-ip-address={spec.node_ip}"]
    if spec.role == "head":
        cmd += ["--head", f"--port={spec.gcs_port}", f"--ray-client-server-port={free_port()}"]
        cmd += [f"--dashboard-host={spec.dashboard_host}", f"--dashboard-port={spec.dashboard_port}"]
        if spec.temp_dir:
            cmd.append(f"--temp-dir={spec.temp_dir}")
    else:
        cmd.append(f"--address={spec.head_address}")
    cmd += [f"--{flag}={free_port()}" for flag in _INTERNAL_PORT_FLAGS]
    low = random.choice(_WORKER_PORT_BLOCKS)
    cmd += [f"--min-worker-port={low}", f"--max-worker-port={low + 499}"]
    if spec.num_cpus is not None:
        cmd.append(f"--num-cpus={spec.num_cpus}")
    if spec.num_gpus is not None:
        cmd.append(f"--num-gpus={spec.num_gpus}")
    if spec.resources:
        cmd.append(f"--resources={spec.resources}")
    return cmd + raycompat.labels_flag(dict(spec.labels))


def node_env(spec: NodeSpec, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment Ray's processes start with: token auth and the ingress flags."""
    env = dict(os.environ if base is None else base)
    env[raycompat.AUTH_MODE] = "token"
    env.pop(raycompat.ENABLE_HA_PROXY, None)
    if spec.ingress == "fast":
        # HAProxy's stats and metrics listeners default to fixed ports (8404, 9101): each node
        # gets its own so several nodes can share a host. Replicas serve HAProxy on ports from
        # a range every node of every cluster on a host would otherwise share (30000-31000):
        # a port one cluster frees could be taken by another's replica while the first's
        # HAProxy still routes to it. Values already in the environment win.
        chosen = raycompat.fast_ingress_env(late_port(), late_port(), random.choice(_DIRECT_INGRESS_BLOCKS))
        env.update({k: v for k, v in chosen.items() if k not in env or k == raycompat.ENABLE_HA_PROXY})
    # A stopping replica keeps serving while the ingress drops it (Ray: 30 s); 5 s is above
    # HAProxy's update latency and cuts a roll-out's wait by 25 s (bench/RESULTS.md).
    for key, value in raycompat.draining_env(DRAIN_S).items():
        env.setdefault(key, value)
    if spec.role == "head":
        # Ports Ray fixes for every cluster on a host (the fallback proxy behind HAProxy, 8500,
        # shared through SO_REUSEPORT; the Prometheus pages, 44227 and 44217): one per head.
        for key, value in raycompat.host_ports_env(late_port(), late_port(), late_port(), late_port()).items():
            env.setdefault(key, value)
    if spec.role == "worker" and spec.worker_http_port:
        env[raycompat.WORKER_PROXY_HTTP_PORT] = str(spec.worker_http_port)
    return env


def chosen_ports(cmd: list[str], env: Mapping[str, str]) -> dict[str, int]:
    """Every port a node is told to use, by its `ray start` flag or environment variable."""
    flags = dict(arg[2:].split("=", 1) for arg in cmd if arg.startswith("--") and "=" in arg)
    ports = {flag: int(value) for flag, value in flags.items() if flag == "port" or flag.endswith("-port")}
    return ports | {name: int(env[name]) for name in raycompat.PORT_ENV if env.get(name, "").isdigit()}


def token_path(env: Mapping[str, str]) -> Path:
    return Path(env.get(raycompat.AUTH_TOKEN_PATH) or Path.home() / ".ray" / "auth_token")


def has_token(env: Mapping[str, str]) -> bool:
    return bool(env.get(raycompat.AUTH_TOKEN)) or token_path(env).is_file()


def ensure_token(env: Mapping[str, str], create: bool) -> None:
    """A head creates the cluster's token if none exists; a worker must be given it."""
    if has_token(env):
        return
    if not create:
        raise NodeError("token auth is on: give this worker the head's token in RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH")
    import secrets

    path = token_path(env)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(secrets.token_hex(32))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] in ("-h", "--help"):
        print("usage: python -m modelserve.node head|worker\n\nenvironment:")
        for name, text in NODE_ENV.items():
            print(f"  {name:38} {text}")
        return 0 if args and args[0] in ("-h", "--help") else 2
    try:
        spec = spec_from_env(args[0], os.environ)
        ensure_token(os.environ, create=spec.role == "head")
        cmd = ray_start_command(spec)
    except NodeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"starting Ray {spec.role} on {spec.node_ip}: {' '.join(cmd)}", flush=True)
    env = node_env(spec)
    os.execve(cmd[0], cmd, env)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
