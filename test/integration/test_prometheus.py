"""The monitoring profile against a real Prometheus: the Debian `prometheus` package's binary,
started here on the test cluster the way docker/monitoring/prometheus.yml finds nodes (the file
Ray's head writes), and every PromQL query of the Grafana dashboard answered with data.
And `controller.py bench -H` on the module's keyed route."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from helpers import REPO, TestCluster, controller_in_process, make_project, wait_for, write_conf

from modelserve.node import free_port

pytestmark = pytest.mark.integration

MONITORING = REPO / "docker" / "monitoring"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "modelserve.json"
DOCKER_RAY_TEMP_DIR = "/tmp/ray"  # the head's temp dir in docker/compose.yaml
KEY = "monitoring-key-0123456789abcdef"
SECTION = "algopkg.Batcher"
BATCHER = """
[algopkg.Batcher]
backend = Batcher
route = batch
method = POST
cpu_cost = 0.5
max_batch_size = 4
batch_wait_ms = 20
max_body_kb = 1
api_keys = keys.txt
"""
#: A section of many models, for the dashboard's model panels.
MANY = "algopkg.Adapters"
ADAPTERS = """
[algopkg.Adapters]
backend = Adapter
models = adapters
models_per_replica = 2
route = adapters
method = POST
cpu_cost = 0.25
"""


def needs(binary: str) -> str:
    found = shutil.which(binary)
    if not found:  # CI installs it (.ci/run); say how, never pass silently
        pytest.fail(f"`{binary}` is not installed: apt-get install -y --no-install-recommends prometheus")
    return found


def dashboard_exprs() -> list[str]:
    """Every panel target's `expr`, rows' nested panels included, with the dashboard's variables set."""
    board = json.loads(DASHBOARD.read_text())
    panels, exprs = list(board["panels"]), []
    while panels:
        panel = panels.pop(0)
        panels.extend(panel.get("panels", []))
        exprs.extend(t["expr"] for t in panel.get("targets", []) if "expr" in t)
    values = {"$__rate_interval": "1m", "$__interval": "2s"}
    for name, value in values.items():
        exprs = [e.replace(name, value) for e in exprs]
    exprs = [e.replace("$section", MANY if "ray_modelserve_model_" in e else SECTION) for e in exprs]
    assert exprs and not [e for e in exprs if "$" in e], exprs
    return exprs


def test_promtool_accepts_the_docker_profile_s_config() -> None:
    result = subprocess.run(
        [needs("promtool"), "check", "config", str(MONITORING / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory, cluster: TestCluster) -> Path:
    project = make_project(tmp_path_factory.mktemp("prometheus"))
    (project / "keys.txt").write_text(f"{KEY}\n")
    (project / "adapters").mkdir()
    for i in range(3):
        (project / "adapters" / f"a{i}").write_text(f"{i + 1}\n")
    conf = write_conf(project, cluster.serve(), BATCHER, ADAPTERS)
    code, out = controller_in_process("-c", str(conf))
    assert code == 0, out
    return conf


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory, cluster: TestCluster) -> Iterator[str]:
    """docker/monitoring/prometheus.yml with the test head's temp dir for docker's /tmp/ray, and a
    1 s scrape interval; the Debian binary on a free loopback port. Stopped by PID."""
    work = tmp_path_factory.mktemp("prometheus-server")
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"}
    (job,) = config["scrape_configs"]
    (sd,) = job["file_sd_configs"]
    sd["files"] = [f.replace(DOCKER_RAY_TEMP_DIR, cluster.temp_dir, 1) for f in sd["files"]]
    sd["refresh_interval"] = "1s"
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    command = [
        needs("prometheus"),
        f"--config.file={work / 'prometheus.yml'}",
        f"--storage.tsdb.path={work / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with (work / "prometheus.log").open("wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError((work / "prometheus.log").read_text()[-3000:])
            try:
                return requests.get(f"{url}/-/ready", timeout=2).status_code == 200
            except requests.ConnectionError:
                return False

        wait_for(ready, 30, "Prometheus to be ready")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


def query(url: str, expr: str) -> list[dict[str, Any]]:
    answer = requests.get(f"{url}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert answer["status"] == "success", (expr, answer)
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def has_data(result: list[dict[str, Any]]) -> bool:
    """Non-empty, and a number (a rate over one sample, or a quantile of nothing, is NaN)."""
    return bool(result) and all(not math.isnan(float(r["value"][1])) for r in result)


class Traffic:
    """Bounded background traffic to the section: batches of 4, model errors (500), requests
    without a key (401) and bodies over max_body_kb (413), until stopped."""

    def __init__(self, url: str, limit_s: float, many_url: str = "") -> None:
        self.url, self.many_url, self.deadline = url, many_url, time.monotonic() + limit_s
        self.codes: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _post(self, body: dict[str, Any], key: str = KEY) -> None:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        status = requests.post(self.url, json=body, headers=headers, timeout=30).status_code
        self.codes[status] = self.codes.get(status, 0) + 1

    def _run(self) -> None:
        with ThreadPoolExecutor(4) as pool:
            while not self._stop.is_set() and time.monotonic() < self.deadline:
                list(pool.map(self._post, [{"i": i} for i in range(4)]))
                self._post({"fail": True})
                self._post({"i": 0}, key="")
                self._post({"pad": "x" * 2048})
                if self.many_url:  # three models through two places: loads, hits and unloads
                    for model in ("a0", "a1", "a0", "a2"):
                        headers = {"serve_multiplexed_model_id": model}
                        requests.post(self.many_url, json={"x": [1]}, headers=headers, timeout=30)
                self._stop.wait(0.3)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


def test_every_dashboard_query_returns_data_after_traffic(
    deployed: Path, prometheus: str, cluster: TestCluster
) -> None:
    exprs = dashboard_exprs()
    started = time.monotonic()
    answers: dict[str, list[dict[str, Any]]] = {}
    with Traffic(f"{cluster.base_url}/batch", limit_s=90, many_url=f"{cluster.base_url}/adapters") as traffic:

        def all_answered() -> bool:
            answers.update({expr: query(prometheus, expr) for expr in exprs})
            return all(has_data(answer) for answer in answers.values())

        try:
            wait_for(all_answered, 80, "every dashboard query to return data")
        except AssertionError as exc:
            empty = [expr for expr, answer in answers.items() if not has_data(answer)]
            targets = requests.get(f"{prometheus}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
            scraped = [(t["scrapeUrl"], t["health"], t["lastError"]) for t in targets]
            raise AssertionError(f"{exc}; no data from {empty}; targets {scraped}; sent {traffic.codes}") from None
    print(f"every query answered after {time.monotonic() - started:.1f} s of traffic: {traffic.codes}")
    assert {200, 401, 413, 500} <= set(traffic.codes), traffic.codes
    codes = {r["metric"]["code"] for r in answers[next(e for e in exprs if "by (code)" in e)]}
    assert {"200", "401", "413", "500"} <= codes, codes
    reasons = {r["metric"]["reason"] for r in answers[next(e for e in exprs if "by (reason)" in e)]}
    assert {"unauthorized", "too_large"} <= reasons, reasons
    # The dashboard's section variable: Grafana's label_values(ray_modelserve_requests_total, section).
    sections = requests.get(
        f"{prometheus}/api/v1/label/section/values", params={"match[]": "ray_modelserve_requests_total"}, timeout=10
    ).json()["data"]
    assert SECTION in sections, sections


def test_bench_loads_a_keyed_route_with_its_key(
    deployed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`controller.py bench -H` on this module's keyed route; without the key, the 401s are counted as such."""
    from modelserve.cli import main

    (tmp_path / "params.json").write_text('{"i": 1}')
    bench = ["bench", "batch", "-c", str(deployed), "--body", str(tmp_path / "params.json"), "-n", "20", "-C", "4"]
    assert main([*bench, "-H", f"Authorization: Bearer {KEY}"]) == 0
    assert "non-2xx 0  errors 0" in capsys.readouterr().out
    assert main(bench) == 1
    assert "non-2xx 20 (401: 20)  errors 0" in capsys.readouterr().out
