"""The one place that talks to Ray: find or start a cluster, upload, apply, read status.

Everything goes through the dashboard's REST API (the one `serve deploy` uses),
so the controller never joins the cluster as a driver. A local head started
here runs `ray start --head --block` in its own process group; stopping it
stops exactly that group, never other clusters on the machine.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil
import requests

from modelserve import raycompat
from modelserve.fit import ClusterResources, Held, Node
from modelserve.node import NodeSpec, ensure_token, free_port, has_token, node_env, ray_start_command
from modelserve.packaging import tree_digest
from modelserve.settings import ServeSettings

STATE_FILE = "cluster.json"


class ClusterError(RuntimeError):
    """The cluster cannot be reached, started or changed; the message says what to do."""


@dataclass
class LocalHead:
    """A head node this controller started (saved in `.modelserve/cluster.json`)."""

    pid: int
    dashboard_url: str
    gcs_address: str
    log_path: str

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def _port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def use_token_if_available() -> bool:
    """Turn on Ray token auth for this process when a token exists (the default for our heads)."""
    mode = os.environ.get(raycompat.AUTH_MODE)
    if mode is None:
        if not has_token(os.environ):
            return False
        os.environ[raycompat.AUTH_MODE] = "token"
    elif mode != "token":
        return False
    raycompat.refresh_auth_mode()
    return True


def dashboard_answers(url: str, timeout_s: float = 1.0) -> bool:
    try:
        return requests.get(f"{url}/api/version", timeout=timeout_s).status_code in (200, 401, 403)
    except requests.RequestException:
        return False


def start_local_head(settings: ServeSettings, state_dir: Path, timeout_s: float = 90.0) -> LocalHead:
    """Start a head node on loopback, with token auth, and wait for its dashboard."""
    ensure_token(os.environ, create=True)
    use_token_if_available()
    state_dir.mkdir(parents=True, exist_ok=True)
    if _port_in_use(settings.dashboard_port):
        raise ClusterError(
            f"[MODEL SERVE] dashboard_port = {settings.dashboard_port} is taken by something that is not a "
            "Ray dashboard; choose another port"
        )
    spec = NodeSpec(
        role="head",
        gcs_port=6379 if not _port_in_use(6379) else free_port(),
        dashboard_port=settings.dashboard_port,
        num_cpus=settings.local_cpus,
        num_gpus=settings.local_gpus,
        ingress=settings.ingress,
    )
    log_path = state_dir / "ray-head.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            ray_start_command(spec),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=node_env(spec),
            start_new_session=True,
        )
    head = LocalHead(proc.pid, f"http://127.0.0.1:{spec.dashboard_port}", f"127.0.0.1:{spec.gcs_port}", str(log_path))
    deadline = time.monotonic() + timeout_s
    while not dashboard_answers(head.dashboard_url):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_session(proc.pid)
            tail = log_path.read_text(errors="replace")[-2000:]
            raise ClusterError(f"the local Ray head did not start; its log ({log_path}) ends with:\n{tail}")
        time.sleep(0.5)
    (state_dir / STATE_FILE).write_text(json.dumps(asdict(head), indent=2))
    return head


def read_local_head(state_dir: Path) -> LocalHead | None:
    try:
        head = LocalHead(**json.loads((state_dir / STATE_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return None
    return head if head.alive() else None


def session_members(sid: int) -> list[int]:
    """Live processes of a session (zombies, which no signal ends, do not count)."""
    members = []
    for proc in psutil.process_iter(["status"]):
        with contextlib.suppress(psutil.Error, OSError):
            if proc.info["status"] != psutil.STATUS_ZOMBIE and os.getsid(proc.pid) == sid:
                members.append(proc.pid)
    return members


def stop_session(sid: int, grace_s: float = 5.0) -> None:
    """Stop every process of the session led by `sid`: SIGTERM, then SIGKILL after `grace_s`.

    A head started with `start_new_session=True` leads a session that holds all
    of its processes, including workers Ray puts in process groups of their own.
    """
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        for pid in session_members(sid) or [sid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(sid, os.WNOHANG)
            if not session_members(sid):
                return
            time.sleep(0.2)


def stop_local_head(state_dir: Path) -> bool:
    head = read_local_head(state_dir)
    (state_dir / STATE_FILE).unlink(missing_ok=True)
    if head is None:
        return False
    stop_session(head.pid)
    return True


def _dashboard_from_gcs(gcs_address: str) -> str:
    """The dashboard URL of a cluster known by its GCS address (joins briefly as a driver)."""
    import ray

    use_token_if_available()  # before ray.init: a token given only as RAY_AUTH_TOKEN must be used
    try:
        context = ray.init(address=gcs_address, log_to_driver=False, logging_level=logging.ERROR)
        url = context.dashboard_url
    except Exception as exc:
        raise ClusterError(f"cannot connect to the Ray cluster at {gcs_address}: {exc}") from exc
    finally:
        ray.shutdown()
    if not url:
        raise ClusterError(f"the Ray cluster at {gcs_address} runs no dashboard; start its head with one")
    return url if "://" in url else f"http://{url}"


def resolve_dashboard(settings: ServeSettings, state_dir: Path, start: bool) -> str | None:
    """Where the cluster's dashboard is, per `[MODEL SERVE] address`; starts a head if allowed."""
    address = settings.address
    if address == "auto":
        address = os.environ.get("RAY_ADDRESS", "") or "local"
    if address.startswith(("http://", "https://")):
        return address.rstrip("/")
    if address != "local":
        return _dashboard_from_gcs(address)
    head = read_local_head(state_dir)
    if head is not None:
        return head.dashboard_url
    default = f"http://127.0.0.1:{settings.dashboard_port}"
    if dashboard_answers(default):
        return default
    if not start:
        return None
    return start_local_head(settings, state_dir).dashboard_url


def _held_on(node_id: str, apps: Iterable[Held]) -> dict[str, float]:
    used: dict[str, float] = {}
    for held in apps:
        for kind, amount in held.each.items():
            used[kind] = used.get(kind, 0.0) + amount * list(held.nodes).count(node_id)
    return used


class Cluster:
    """A connection to one cluster's dashboard: upload packages, apply, read, delete.

    Serve's REST API (`/api/serve/applications/`) is called directly: Ray's client for it would
    import Ray, a second or more on every command. Ray's upload client is loaded only for a
    package whose content the cluster has not seen from here (`uploads`: what was uploaded)."""

    SERVE_API = "/api/serve/applications/"

    def __init__(self, dashboard_url: str, uploads: Path | None = None) -> None:
        self.dashboard_url = dashboard_url
        self._headers = raycompat.auth_headers()
        self._client: Any = None
        self._uploads = uploads

    def upload(self, staged_dir: Path) -> str:
        """Upload a directory as a py_module (skipped when that content is there already)."""
        digest = tree_digest(staged_dir)
        known = self._known_uploads()
        uri = known.get(digest)
        if uri and self._package_exists(uri):
            return uri
        if self._client is None:
            use_token_if_available()
            try:
                self._client = raycompat.submission_client(self.dashboard_url)
            except Exception as exc:
                raise ClusterError(f"cannot reach the Ray dashboard at {self.dashboard_url}: {exc}") from exc
        uri = raycompat.upload_package(self._client, str(staged_dir))
        if self._uploads is not None:
            self._uploads.parent.mkdir(parents=True, exist_ok=True)
            self._uploads.write_text(json.dumps({**known, digest: uri}, indent=1))
        return uri

    def _known_uploads(self) -> dict[str, str]:
        try:
            known = json.loads(self._uploads.read_text()) if self._uploads else {}
        except (OSError, ValueError):
            return {}
        return known if isinstance(known, dict) else {}

    def _package_exists(self, uri: str) -> bool:
        protocol, _, name = uri.partition("://")
        return self._call("GET", f"/api/packages/{protocol}/{name}", ok=(200, 404)).status_code == 200

    def apply(self, deploy_config: Mapping[str, Any]) -> None:
        reply = self._call("PUT", self.SERVE_API, body=dict(deploy_config), ok=None)
        if reply.status_code != 200:
            raise ClusterError(f"the cluster refused the configuration (HTTP {reply.status_code}): {reply.text[:2000]}")

    def details(self) -> dict[str, Any]:
        try:
            details: dict[str, Any] = self._call("GET", self.SERVE_API).json()
            return details
        except ValueError as exc:
            raise ClusterError(f"cannot read Serve status from {self.dashboard_url}: {exc}") from exc

    def delete_all(self) -> None:
        self._call("DELETE", self.SERVE_API)

    def _call(self, method: str, path: str, body: Any = None, ok: tuple[int, ...] | None = (200,)) -> requests.Response:
        """One request to the dashboard; a ClusterError where it cannot be reached or answers
        other than `ok` (None: any answer)."""
        url = f"{self.dashboard_url}{path}"
        try:
            reply = requests.request(method, url, json=body, headers=self._headers, timeout=60)
        except requests.RequestException as exc:
            raise ClusterError(f"cannot reach the Ray dashboard at {self.dashboard_url}: {exc}") from exc
        if reply.status_code in (401, 403):
            raise ClusterError(
                f"the Ray dashboard at {self.dashboard_url} refused our token (HTTP {reply.status_code}): "
                "give this cluster's token in RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH"
            )
        if ok is not None and reply.status_code not in ok:
            raise ClusterError(f"{method} {url} answered HTTP {reply.status_code}: {reply.text[:500]}")
        return reply

    def _get_json(self, path: str) -> Any:
        try:
            reply = requests.get(f"{self.dashboard_url}{path}", headers=self._headers, timeout=30)
            reply.raise_for_status()
            return reply.json()["data"]
        except (requests.RequestException, ValueError, KeyError) as exc:
            raise ClusterError(f"cannot read {path} from {self.dashboard_url}: {exc}") from exc

    def metrics_targets(self) -> list[str]:
        """Each alive node's Prometheus endpoint (Ray's metrics exporter)."""
        return raycompat.metrics_targets(self._get_json(raycompat.NODE_SUMMARY_PATH))

    def resources(self, details: Mapping[str, Any]) -> ClusterResources:
        """Each alive node's totals and use, and what each running application's replicas hold."""
        nodes = self._get_json(f"{raycompat.NODES_API_PATH}?detail=1&limit=10000")["result"]["result"]
        report = self._get_json(raycompat.CLUSTER_STATUS_PATH)["clusterStatus"]["loadMetricsReport"]
        alive = {n["node_id"]: n.get("resources_total") or {} for n in nodes if n.get("state") == "ALIVE"}
        apps = {}
        for name, app in (details.get("applications") or {}).items():
            for deployment in (app.get("deployments") or {}).values():
                replicas = deployment.get("replicas") or []  # a replica not placed yet holds nothing
                held = [r["node_id"] for r in replicas if r.get("state") != "STOPPING" and r.get("node_id")]
                each = {kind: float(amount) for kind, amount in (deployment.get("required_resources") or {}).items()}
                apps[name] = Held(each, held)
        by_node = report.get("usageByNode") or {}
        used = {node_id: {kind: float(pair[0]) for kind, pair in by_node.get(node_id, {}).items()} for node_id in alive}
        if not set(alive) <= set(by_node):  # Ray reports no use per node: what Serve's replicas hold there
            used = {node_id: _held_on(node_id, apps.values()) for node_id in alive}
        return ClusterResources({node_id: Node(total, used[node_id]) for node_id, total in alive.items()}, apps)

    def log_lines(self, node_id: str, filename: str, tail: int, follow: bool) -> Iterator[str]:
        """Lines of a log file on any node of the cluster, through the dashboard's log API."""
        query = {"node_id": node_id, "filename": filename.lstrip("/"), "lines": str(tail)}
        url = f"{self.dashboard_url}{raycompat.LOG_API_PATH}/{'stream' if follow else 'file'}"
        try:
            with requests.get(
                url, params=query, headers=self._headers, stream=True, timeout=(5, None if follow else 30)
            ) as reply:
                if reply.status_code != 200:
                    raise ClusterError(f"cannot read {filename} on node {node_id[:8]}: {reply.text[:300]}")
                for line in reply.iter_lines():
                    yield line.decode(errors="replace")
        except requests.RequestException as exc:
            raise ClusterError(f"cannot read {filename} from {self.dashboard_url}: {exc}") from exc
