"""The one door to what belongs to one Ray version: flags Ray reads from the environment,
and the few private helpers we call.

Ray ignores environment variables it does not know, so after an upgrade a renamed flag
would silently cost throughput or make ports collide. `test/unit/test_raycompat.py`
checks every name here against the installed Ray: upgrading Ray is this file plus that test.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

RAY_SERIES = "2.60"

# Ray core: token authentication (ray/_private/authentication).
AUTH_MODE = "RAY_AUTH_MODE"
AUTH_TOKEN = "RAY_AUTH_TOKEN"
AUTH_TOKEN_PATH = "RAY_AUTH_TOKEN_PATH"

# Ray core: how often each process exports its metrics to its node's exporter (Ray: 10,000 ms,
# floored at 1,000 ms; ray/_private/telemetry/open_telemetry_metric_recorder.py).
METRICS_REPORT_INTERVAL_MS = "RAY_metrics_report_interval_ms"

# Ray Serve flags, read by each Ray process when it starts (ray/serve/_private/constants.py).
ENABLE_HA_PROXY = "RAY_SERVE_ENABLE_HA_PROXY"
HAPROXY_STATS_PORT = "RAY_SERVE_HAPROXY_STATS_PORT"
HAPROXY_METRICS_PORT = "RAY_SERVE_HAPROXY_METRICS_PORT"
# HAProxy logs every request to a socket that the node's HAProxyManager parses into Ray's ingress metrics
# (serve_num_http_requests, serve_http_request_latency_ms): about 90 us of CPU per request (bench/RESULTS.md).
HAPROXY_METRICS_ENABLED = "RAY_SERVE_HAPROXY_METRICS_ENABLED"
WORKER_PROXY_HTTP_PORT = "RAY_SERVE_WORKER_PROXY_HTTP_PORT"
RUN_USER_CODE_IN_SEPARATE_THREAD = "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD"
LOG_TO_STDERR = "RAY_SERVE_LOG_TO_STDERR"
THROUGHPUT_OPTIMIZED = "RAY_SERVE_THROUGHPUT_OPTIMIZED"
DIRECT_INGRESS_MIN_DRAINING_PERIOD_S = "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"
PROXY_MIN_DRAINING_PERIOD_S = "RAY_SERVE_PROXY_MIN_DRAINING_PERIOD_S"
RUN_ROUTER_IN_SEPARATE_LOOP = "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP"
# The head's fallback proxy: HAProxy's backup server on every route (proxy_state.py). Ray's
# default, 8500, is bound with SO_REUSEPORT: two clusters on a host would share its connections.
FALLBACK_PROXY_HTTP_PORT = "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT"
FALLBACK_PROXY_GRPC_PORT = "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT"

# Ray core: the head's Prometheus pages, fixed ports unless set (ray/dashboard/consts.py,
# ray/autoscaler/_private/constants.py). The second cluster on a host would fail to bind them.
DASHBOARD_METRIC_PORT = "DASHBOARD_METRIC_PORT"
AUTOSCALER_METRIC_PORT = "AUTOSCALER_METRIC_PORT"


def _direct_ingress_port(bound: str, kind: str) -> str:
    return f"RAY_SERVE_DIRECT_INGRESS_{bound}_{kind}_PORT"


#: Every Ray Serve flag modelserve sets anywhere (the unit test checks each against Ray).
SERVE_FLAGS: tuple[str, ...] = (
    ENABLE_HA_PROXY,
    HAPROXY_STATS_PORT,
    HAPROXY_METRICS_PORT,
    HAPROXY_METRICS_ENABLED,
    WORKER_PROXY_HTTP_PORT,
    RUN_USER_CODE_IN_SEPARATE_THREAD,
    LOG_TO_STDERR,
    THROUGHPUT_OPTIMIZED,
    DIRECT_INGRESS_MIN_DRAINING_PERIOD_S,
    PROXY_MIN_DRAINING_PERIOD_S,
    RUN_ROUTER_IN_SEPARATE_LOOP,
    FALLBACK_PROXY_HTTP_PORT,
    FALLBACK_PROXY_GRPC_PORT,
    *(_direct_ingress_port(b, k) for b in ("MIN", "MAX") for k in ("HTTP", "GRPC")),
)
#: Variables that set a port a node listens on.
PORT_ENV: tuple[str, ...] = (
    HAPROXY_STATS_PORT,
    HAPROXY_METRICS_PORT,
    WORKER_PROXY_HTTP_PORT,
    FALLBACK_PROXY_HTTP_PORT,
    FALLBACK_PROXY_GRPC_PORT,
    DASHBOARD_METRIC_PORT,
    AUTOSCALER_METRIC_PORT,
    *(_direct_ingress_port(b, k) for b in ("MIN", "MAX") for k in ("HTTP", "GRPC")),
)
#: Flags that choose a cluster, its auth or its ingress: never inherited by a server we start for comparison.
CLUSTER_CHOICE_ENV = ("RAY_ADDRESS", AUTH_MODE, ENABLE_HA_PROXY, THROUGHPUT_OPTIMIZED)


def replica_env() -> dict[str, str]:
    """Flags each replica process reads when it starts; they travel in the section's runtime_env.

    User code runs on the replica's own event loop (the model has its own thread, so the loop
    never waits on it), and Serve's log lines go to the replica's log file only. The deployment
    handles of a replica that splits its route (router.py) route on that same loop instead of a
    second loop thread: one cross-thread hop less per forwarded request.
    """
    return {RUN_USER_CODE_IN_SEPARATE_THREAD: "0", LOG_TO_STDERR: "0", RUN_ROUTER_IN_SEPARATE_LOOP: "0"}


def direct_handle(handle: Any) -> Any:
    """A deployment handle whose calls go straight to the replica over gRPC, not through Ray's
    object store (`_by_reference=False`: a private option in Ray 2.60). Measured on a forwarded
    request: +1.7 ms over a direct route at p50 instead of +3.5 ms."""
    return handle.options(_by_reference=False)


def fast_ingress_env(stats_port: int, metrics_port: int, direct_port_base: int) -> dict[str, str]:
    """HAProxy ingress on; its listeners and the replicas' direct-ingress ports chosen per node; Ray's
    per-request ingress metrics off (modelserve's replicas count every request: metrics.py)."""
    env = {ENABLE_HA_PROXY: "1", HAPROXY_STATS_PORT: str(stats_port), HAPROXY_METRICS_PORT: str(metrics_port)}
    env[HAPROXY_METRICS_ENABLED] = "0"
    for kind, offset in (("HTTP", 0), ("GRPC", 20000)):
        env[_direct_ingress_port("MIN", kind)] = str(direct_port_base + offset)
        env[_direct_ingress_port("MAX", kind)] = str(direct_port_base + offset + 99)
    return env


def host_ports_env(
    fallback_http: int, fallback_grpc: int, dashboard_metrics: int, autoscaler_metrics: int
) -> dict[str, str]:
    """The ports Ray 2.60 otherwise fixes for every cluster on a host: the fallback proxy's (8500,
    9500), the dashboard's and the autoscaler's Prometheus pages (44227, 44217)."""
    return {
        FALLBACK_PROXY_HTTP_PORT: str(fallback_http),
        FALLBACK_PROXY_GRPC_PORT: str(fallback_grpc),
        DASHBOARD_METRIC_PORT: str(dashboard_metrics),
        AUTOSCALER_METRIC_PORT: str(autoscaler_metrics),
    }


def draining_env(seconds: int) -> dict[str, str]:
    """How long a stopping replica keeps serving so the ingress can drop it first (Ray: 30 s)."""
    return {DIRECT_INGRESS_MIN_DRAINING_PERIOD_S: str(seconds), PROXY_MIN_DRAINING_PERIOD_S: str(seconds)}


#: The dashboard's log endpoint (what `ray logs` and `ray.util.state.get_log` call):
#: `/file` returns a node's log file, `/stream` follows it. Query: node_id, filename, lines.
LOG_API_PATH = "/api/v0/logs"
#: The State API's node list (`ray list nodes`): each alive node's `resources_total`.
NODES_API_PATH = "/api/v0/nodes"
#: `ray start --labels k=v,...` (a hidden option in Ray 2.60; node labels are public API) gives a
#: node labels that NODES_API_PATH returns as each node's `labels`. A local head carries the
#: project whose controller started it.
LABELS_OPTION = "--labels"
PROJECT_LABEL = "modelserve-project"


def labels_flag(labels: Mapping[str, str]) -> list[str]:
    """`ray start`'s option for the node's labels (none: no option)."""
    return [f"{LABELS_OPTION}={','.join(f'{key}={value}' for key, value in labels.items())}"] if labels else []


def head_labels(nodes: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """The alive head node's labels, from NODES_API_PATH's `result.result`."""
    for node in nodes:
        if node.get("is_head_node") and node.get("state") == "ALIVE":
            return {str(key): str(value) for key, value in (node.get("labels") or {}).items()}
    return {}


#: The dashboard's cluster status: `loadMetricsReport.usage` is `{resource: [used, total]}`, and
#: `loadMetricsReport.usageByNode` the same by node id.
CLUSTER_STATUS_PATH = "/api/cluster_status"


def refresh_auth_mode() -> None:
    """Ray caches the auth mode it read at import; make it read `RAY_AUTH_MODE` again."""
    from ray._raylet import Config  # type: ignore[attr-defined]

    Config.initialize("")


#: The dashboard's node summary: each node's raylet record (GcsNodeInfo), with its metrics export port.
NODE_SUMMARY_PATH = "/nodes?view=summary"
#: How often each Ray process sends its metrics to its node's exporter (Ray's default
#: `metrics_report_interval_ms`): what an exporter shows is up to this old.
METRICS_EXPORT_INTERVAL_S = 10


def metrics_targets(summary: Mapping[str, Any]) -> list[str]:
    """`http://ip:port/metrics` of each alive node's Ray metrics exporter, from NODE_SUMMARY_PATH."""
    targets = []
    for node in summary.get("summary") or []:
        raylet = node.get("raylet") or {}
        port = raylet.get("metricsExportPort")
        if raylet.get("state") == "ALIVE" and port:
            targets.append(f"http://{raylet.get('nodeManagerAddress')}:{port}/metrics")
    return sorted(targets)


def ray_auth_headers() -> dict[str, str]:
    """Ray's own `Authorization` header for its HTTP endpoints (imports Ray: a second or more)."""
    from ray._private.authentication.http_token_authentication import get_auth_headers_if_auth_enabled

    return dict(get_auth_headers_if_auth_enabled({}))


def auth_headers(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """What `ray_auth_headers` returns, without importing Ray: under token auth (RAY_AUTH_MODE=token,
    or unset with a token at hand, as `cluster.use_token_if_available` decides), `Bearer <token>`
    with the token from RAY_AUTH_TOKEN, else the file RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token.
    test_raycompat checks both agree."""
    env = os.environ if env is None else env
    if env.get(AUTH_MODE, "token") != "token":
        return {}
    token = env.get(AUTH_TOKEN, "")
    if not token:
        path = Path(env.get(AUTH_TOKEN_PATH) or Path.home() / ".ray" / "auth_token")
        with contextlib.suppress(OSError):
            token = path.read_text()
    token = token.strip()
    return {"authorization": f"Bearer {token}"} if token else {}


#: Where a head records its dashboard's `host:port` in its GCS (ray/_private/node.py; what `ray.init`
#: reports as `dashboard_url`): a key of the GCS's key-value store, in the dashboard's namespace.
DASHBOARD_KV_KEY = b"webui:url"
DASHBOARD_KV_NAMESPACE = b"dashboard"

#: `python -c` this, GCS_ADDRESS, DEADLINE (the `time.time()` to give up at): prints
#: `{"dashboard": "host:port" or ""}` or `{"error": ...}`.
#: Ray's GCS client, without joining the cluster as a driver. Its channel waits 5 s
#: (gcs_rpc_server_connect_timeout_s) twice on a port that does not answer gRPC, whatever the
#: timeout, in C++ that no signal interrupts: hence a child process, which the caller stops.
_DASHBOARD_FROM_GCS = f"""
import json, sys, time
from ray._raylet import InnerGcsClient
address, timeout_s = sys.argv[1], max(float(sys.argv[2]) - time.time(), 0.1)
try:
    client = InnerGcsClient.standalone(address, None, int(timeout_s * 1000))
    value = client.internal_kv_get({DASHBOARD_KV_KEY!r}, {DASHBOARD_KV_NAMESPACE!r}, timeout=timeout_s)
    print(json.dumps({{"dashboard": (value or b"").decode()}}))
except Exception as exc:
    print(json.dumps({{"error": f"{{type(exc).__name__}}: {{exc}}"}}))
"""


def dashboard_from_gcs_command(gcs_address: str, deadline: float) -> list[str]:
    """The command that reads a cluster's dashboard address from its GCS by `deadline` (a
    `time.time()`; see _DASHBOARD_FROM_GCS)."""
    return [sys.executable, "-c", _DASHBOARD_FROM_GCS, gcs_address, repr(deadline)]


def submission_client(dashboard_url: str) -> Any:
    """The dashboard's Serve REST client (`serve deploy` uses it)."""
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    for name in ("ray.dashboard.modules.dashboard_sdk", "ray._private.runtime_env.packaging"):
        logging.getLogger(name).setLevel(logging.WARNING)  # upload chatter
    return ServeSubmissionClient(dashboard_url)


def upload_package(client: Any, directory: str) -> str:
    """Upload a directory as a content-addressed py_module; skipped when that content is there."""
    uri: str = client._upload_package_if_needed(directory, include_gitignore=False, include_parent_dir=True)
    return uri


def surge_replicas(target: int, max_surge_percent: int) -> int:
    """How many new replicas Ray Serve 2.60 starts in a roll-out before it stops an old one: its
    integer ceiling of percent x target (`_surge_replicas_to_start`, plus what the target grew
    by; old replicas stop only while more than the target run, `_surge_replicas_to_stop`, in
    ray/serve/_private/deployment_state.py). A new replica that no node has room for waits, and
    the old ones keep serving: Ray never gives up on it. With 0 (Ray's default) old replicas stop
    first. The target of an autoscaling deployment goes back to `initial_replicas` on every config
    change (`DeploymentAutoscalingState.register`, ray/serve/_private/autoscaling_state.py)."""
    return (max_surge_percent * target + 99) // 100


def deploy_schema_problems(config: Mapping[str, Any]) -> list[str]:
    """What Ray's own `ServeDeploySchema` rejects in a deploy config (public API, no cluster)."""
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    try:
        ServeDeploySchema.model_validate(dict(config))
    except ValidationError as exc:
        return [f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()]
    return []


def mend_redirected_print() -> bool:
    """Ray 2.60's replica `print` (installed with RAY_SERVE_LOG_TO_STDERR=0) passes its arguments
    as one tuple when given a file. `logging` prints tracebacks that way, so every traceback in
    a replica log read `('Traceback ...\\n',)('  File ...`. Print to files as Python does; the
    rest goes to the replica log as Ray's does. Returns whether Ray's print was replaced."""
    import builtins

    from ray.serve._private import logging_utils

    if builtins.print is not logging_utils.redirected_print:
        return False
    to_file = logging_utils.buildin_print
    serve_logger = logging.getLogger("ray.serve")

    def mended(
        *objects: Any, sep: str | None = " ", end: str | None = "\n", file: Any = None, flush: bool = False
    ) -> None:
        if file is None or file is sys.stdout or file is sys.stderr:
            text = (" " if sep is None else sep).join(map(str, objects)) + ("\n" if end is None else end)
            serve_logger.log(logging.INFO, text, stacklevel=2)
        else:
            to_file(*objects, sep=sep, end=end, file=file, flush=flush)

    builtins.print = mended
    return True
