"""The one place that talks to Ray: find a cluster (or have localhead.py start one), upload, apply, read status.

Everything goes through the dashboard's REST API (the one `serve deploy` uses),
so the controller never joins the cluster as a driver.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import requests

from modelserve import raycompat
from modelserve.fit import ClusterResources, Held, Node
from modelserve.node import has_token
from modelserve.packaging import tree_digest
from modelserve.serve_settings import ServeSettings


class ClusterError(RuntimeError):
    """The cluster cannot be reached, started or changed; the message says what to do."""


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


#: How long a command waits for a cluster to answer before it gives up (exit 3): `--connect-timeout`.
CONNECT_TIMEOUT_S = 10.0


def _waited(timeout_s: float) -> str:
    return f"waited {timeout_s:g} s; --connect-timeout S waits longer"


def _accepts_connections(gcs_address: str, timeout_s: float) -> None:
    """A TCP connect to the GCS port: a cluster that is down answers this at once, with no Ray code."""
    host, _, port = gcs_address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return
    except ValueError:
        raise ClusterError(f"the Ray address {gcs_address!r} is not host:port, e.g. head:6379") from None
    except OSError as exc:
        # a refusal is an answer: only a wait that ran out says how to wait longer
        reason = f"no answer; {_waited(timeout_s)}" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise ClusterError(
            f"cannot reach the Ray cluster at {gcs_address}: nothing accepts connections there ({reason}). "
            "Check that the cluster's head runs and that [MODEL SERVE] address "
            "(or RAY_ADDRESS) names its GCS address"
        ) from None


@contextlib.contextmanager
def _terminate_raises() -> Iterator[None]:
    """SIGTERM raises SystemExit while inside (in the main thread), so a child we wait on is stopped too."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _dashboard_from_gcs(gcs_address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> str:
    """The dashboard URL of a cluster known by its GCS address, within about `timeout_s`: a TCP connect
    first, then Ray's GCS client in a child process that is killed at the deadline, or with us on
    SIGINT or SIGTERM (`ray.init` retried for minutes here, deaf to both). The whole lookup, the
    child's start included, ends within `timeout_s`."""
    started = time.monotonic()
    _accepts_connections(gcs_address, timeout_s)
    use_token_if_available()  # the child reads RAY_AUTH_MODE from the environment it inherits
    left_s = max(timeout_s - (time.monotonic() - started), 0.1)
    command = raycompat.dashboard_from_gcs_command(gcs_address, time.time() + left_s)
    try:
        with _terminate_raises():
            done = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=left_s)
    except subprocess.TimeoutExpired:
        raise ClusterError(
            f"the Ray cluster at {gcs_address} did not answer: its port accepts connections, but no Ray GCS "
            f"answered there ({_waited(timeout_s)}). Check that [MODEL SERVE] address (or RAY_ADDRESS) names "
            "the head's GCS port (6379 unless RAY_GCS_PORT says otherwise)"
        ) from None
    try:
        answer = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        answer = {"error": (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]}
    if "error" in answer:
        raise ClusterError(f"cannot connect to the Ray cluster at {gcs_address}: {answer['error']}")
    url = str(answer.get("dashboard") or "")
    if not url:
        raise ClusterError(f"the Ray cluster at {gcs_address} runs no dashboard; start its head with one")
    return url if "://" in url else f"http://{url}"


def resolve_dashboard(
    settings: ServeSettings,
    state_dir: Path,
    start: bool,
    connect_timeout_s: float = CONNECT_TIMEOUT_S,
    stage: str = "",
) -> str | None:
    """Where the cluster's dashboard is, per `[MODEL SERVE] address`; starts a head if allowed. A GCS
    address that does not answer within `connect_timeout_s` is a ClusterError, and so is, for the
    production stage, a local cluster on `dashboard_port` that another project started."""
    address = settings.address
    if address == "auto":
        address = os.environ.get("RAY_ADDRESS", "") or "local"
    if address.startswith(("http://", "https://")):
        return address.rstrip("/")
    if address != "local":
        return _dashboard_from_gcs(address, connect_timeout_s)
    from modelserve import localhead  # here: localhead builds on this module (ClusterError, dashboard_answers)

    head = localhead.read_local_head(state_dir)
    if head is not None:
        return head.dashboard_url
    default = f"http://127.0.0.1:{settings.dashboard_port}"
    if dashboard_answers(default):
        if not stage:  # a stage's apply touches only that stage: it may share another project's cluster
            localhead.refuse_another_project_s(default, state_dir, settings.dashboard_port)
        return default
    if not start:
        return None
    localhead.refuse_taken_ports(settings)
    return localhead.start_local_head(settings, state_dir).dashboard_url


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

    def __init__(
        self, dashboard_url: str, uploads: Path | None = None, connect_timeout_s: float = CONNECT_TIMEOUT_S
    ) -> None:
        self.dashboard_url = dashboard_url
        self.connect_timeout_s = connect_timeout_s
        self._headers = raycompat.auth_headers()
        self._client: Any = None
        self._uploads = uploads

    def check_reachable(self) -> None:
        """A ClusterError, naming the dashboard and what to check, unless it answers within the connect timeout."""
        try:
            requests.get(f"{self.dashboard_url}/api/version", headers=self._headers, timeout=self.connect_timeout_s)
        except requests.RequestException as exc:
            errno = re.search(r"\[Errno -?\d+\] ([^'\")]+)", str(exc))
            reason = "no answer" if isinstance(exc, requests.Timeout) else errno[1] if errno else type(exc).__name__
            waited = _waited(self.connect_timeout_s)
            raise ClusterError(
                f"cannot reach the Ray dashboard at {self.dashboard_url} ({reason}; {waited}). "
                "Check that the cluster runs and that [MODEL SERVE] address (or RAY_ADDRESS, or the last apply's "
                "record in .modelserve/) points at its dashboard"
            ) from None

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
            reply = requests.request(
                method, url, json=body, headers=self._headers, timeout=(self.connect_timeout_s, 60)
            )
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

    def _nodes(self) -> list[dict[str, Any]]:
        """Every node of the cluster, as the State API lists them (`ray list nodes --detail`)."""
        listed = self._get_json(f"{raycompat.NODES_API_PATH}?detail=1&limit=10000")
        nodes: list[dict[str, Any]] = listed["result"]["result"]
        return nodes

    def head_labels(self) -> dict[str, str]:
        """The head node's Ray labels (none where the dashboard does not list them)."""
        try:
            return raycompat.head_labels(self._nodes())
        except (ClusterError, KeyError, TypeError):
            return {}

    def metrics_targets(self) -> list[str]:
        """Each alive node's Prometheus endpoint (Ray's metrics exporter)."""
        return raycompat.metrics_targets(self._get_json(raycompat.NODE_SUMMARY_PATH))

    def resources(self, details: Mapping[str, Any]) -> ClusterResources:
        """Each alive node's totals and use, and what each running application's replicas hold."""
        nodes = self._nodes()
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
        # Ray's report of use per node is the autoscaler's, refreshed every few seconds: just after an
        # apply it may not count replicas Serve has placed. A node's use is the larger of the two.
        used: dict[str, dict[str, float]] = {}
        for node_id in alive:
            reported = {kind: float(pair[0]) for kind, pair in by_node.get(node_id, {}).items()}
            serve = _held_on(node_id, apps.values())
            used[node_id] = {kind: max(reported.get(kind, 0.0), serve.get(kind, 0.0)) for kind in {*reported, *serve}}
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
