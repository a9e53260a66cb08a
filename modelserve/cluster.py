"""The one place that talks to Ray: upload, apply, read status (address.py finds the cluster).

Everything goes through the dashboard's REST API (the one `serve deploy` uses),
so the controller never joins the cluster as a driver.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import requests

from modelserve import raycompat
from modelserve.fit import ClusterResources, Held, Node
from modelserve.node import has_token
from modelserve.packaging import tree_digest


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


def wait_hint(timeout_s: float) -> str:
    return f"waited {timeout_s:g} s; --connect-timeout S waits longer"


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
            waited = wait_hint(self.connect_timeout_s)
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
