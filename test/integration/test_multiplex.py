"""Many small models in one section (`models`, `models_per_replica`) on a real cluster: 50 models on 2 replicas x 8,
each model correct over the native route and the protocol; a skewed workload that mostly hits a replica holding its
model; LRU unloads; a model that does not load fails only its own requests; `status` lists the models each replica
holds; the section's memory against one section per model. (Also here, to share the cluster: `replicas = auto`.)"""

from __future__ import annotations

import random
import re
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests
from helpers import ECHO_SECTION, MEASURED, TestCluster, controller_in_process, make_project, wait_for, write_conf

from modelserve import raycompat
from modelserve.cluster import Cluster

pytestmark = pytest.mark.integration

MODELS = [f"m{i:02d}" for i in range(50)]
SECTIONS = (
    """
    [algopkg.Adapters]
    backend = Adapter
    models = adapters
    models_per_replica = 8
    replicas = 2
    cpu_cost = 0.25
    route = adapters
    method = POST
    """,
    ECHO_SECTION + "replicas = auto\n",
    """
    [algopkg.Adapters:one]
    backend = Adapter
    model_zoo = adapters
    model = m00
    cpu_cost = 0.25
    route = one-adapter
    method = POST
    """,
)


@pytest.fixture(scope="module")
def cluster_options() -> dict[str, Any]:
    """Metrics exported every second, so `status` shows the models held within seconds."""
    return {"num_cpus": 2, "num_gpus": 0, "extra_env": {raycompat.METRICS_REPORT_INTERVAL_MS: "1000"}}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, cluster: TestCluster) -> Path:
    project = make_project(tmp_path_factory.mktemp("multiplex"))
    (project / "adapters").mkdir()
    for i, name in enumerate(MODELS):
        (project / "adapters" / name).write_text(f"{i + 1}\n")
    (project / "adapters" / "broken").write_text("broken\n")
    code, out = controller_in_process("-c", str(write_conf(project, cluster.serve(), *SECTIONS)))
    assert code == 0, out
    return project


def native(session: requests.Session, base: str, model: str, x: list[float]) -> requests.Response:
    return session.post(f"{base}/adapters", json={"x": x}, headers={"serve_multiplexed_model_id": model}, timeout=60)


def protocol(session: requests.Session, base: str, model: str, x: list[float]) -> requests.Response:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [len(x)], "data": x}], "outputs": [{"name": "y"}]}
    return session.post(f"{base}/adapters/v2/models/{model}/infer", json=body, timeout=60)


def test_every_one_of_50_models_answers_correctly_natively_and_over_the_protocol(
    project: Path, cluster: TestCluster
) -> None:
    session = requests.Session()
    for i, model in enumerate(MODELS):
        answer = native(session, cluster.base_url, model, [1.0, 2.0])
        assert answer.status_code == 200, answer.text
        assert answer.json()["result"]["y"] == [i + 1, 2 * (i + 1)] and answer.json()["result"]["model"] == model
        over = protocol(session, cluster.base_url, model, [3.0])
        assert over.status_code == 200, over.text
        assert over.json()["outputs"][0]["data"] == [3.0 * (i + 1)] and over.json()["model_name"] == model


def test_a_skewed_workload_hits_a_replica_that_holds_its_model(project: Path, cluster: TestCluster) -> None:
    """80% of requests to 5 models, 20% to 10 others: 15 models fit 2 replicas x 8 only if each is held
    by one replica (with no locality, each replica would cycle all 15 through 8 places)."""
    rng = random.Random(7)
    hot, warm, cold = MODELS[10:15], MODELS[20:30], MODELS[:10] + MODELS[15:20] + MODELS[30:]
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()
    local = threading.local()

    def one(model: str) -> None:
        session = local.__dict__.setdefault("session", requests.Session())
        answer = native(session, cluster.base_url, model, [1.0])
        assert answer.status_code == 200, answer.text
        assert answer.json()["result"]["y"] == [MODELS.index(model) + 1.0]
        with lock:
            outcomes[answer.headers["x-modelserve-model"]] += 1
            outcomes["passed on"] += "x-modelserve-passed-by" in answer.headers

    def run(others: list[str], n: int) -> float:
        plan = [rng.choice(hot) if rng.random() < 0.8 else rng.choice(others) for _ in range(n)]
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(one, plan[:300]))  # the first loads, while Ray's routers learn who holds what
            outcomes.clear()
            list(pool.map(one, plan[300:]))
        hits = outcomes["hit"] / (outcomes["hit"] + outcomes["loaded"])
        MEASURED.append(f"multiplexing, 80% to 5 models, 20% to {len(others)}: {dict(outcomes)}: {hits:.1%} hits")
        return hits

    assert run(warm, 1000) >= 0.9, outcomes
    # 20% over the other 35: 16 places hold the 5 and 11 of the 35, so about 2 in 3 of those requests must load
    # whatever the routing: at most about 85% hits. Measured and reported; held to what it can reach.
    assert run(cold, 1000) >= 0.75, outcomes


def test_a_replica_holds_at_most_models_per_replica_and_status_lists_them(project: Path, cluster: TestCluster) -> None:
    session = requests.Session()
    for model in MODELS[:30]:
        assert native(session, cluster.base_url, model, [1.0]).status_code == 200
    answer = native(session, cluster.base_url, MODELS[0], [1.0]).json()["result"]
    assert answer["unloaded"] >= 1  # LRU: the backend's `unload` was called

    def listed() -> list[str] | None:
        code, out = controller_in_process("status", "-c", str(project / "conf.ini"))
        lines = [line for line in out.splitlines() if "algopkg.Adapters replica" in line]
        return lines if len(lines) == 2 else None

    lines = wait_for(listed, timeout_s=30, what="status to list the models of both replicas")
    for line in lines:
        count = int(re.search(r": (\d+) model\(s\)", line).group(1))  # type: ignore[union-attr]
        assert 1 <= count <= 8, line


def test_a_model_that_does_not_load_fails_only_its_own_requests(project: Path, cluster: TestCluster) -> None:
    session = requests.Session()
    broken = native(session, cluster.base_url, "broken", [1.0])
    assert broken.status_code == 503 and "broken" in broken.json()["error"]["message"], broken.text
    assert "Traceback" not in broken.text
    missing = protocol(session, cluster.base_url, "nope", [1.0])
    assert missing.status_code == 404 and "nope" in missing.json()["error"]
    unnamed = session.post(f"{cluster.base_url}/adapters", json={"x": [1]}, timeout=30)
    assert unnamed.status_code == 400 and "serve_multiplexed_model_id" in unnamed.json()["error"]["message"]
    assert native(session, cluster.base_url, MODELS[3], [1.0]).json()["result"]["y"] == [4.0]


def test_the_section_uses_less_memory_than_one_section_per_model(project: Path, cluster: TestCluster) -> None:
    details = Cluster(cluster.dashboard_url).details()["applications"]

    def rss(app: str) -> list[int]:
        replicas = [r for d in details[app]["deployments"].values() for r in d["replicas"] if r["state"] == "RUNNING"]
        return [psutil.Process(r["pid"]).memory_info().rss for r in replicas]

    section, one = sum(rss("Adapters")), rss("Adapters:one")[0]
    MEASURED.append(
        f"multiplexing RSS: one section of 50 models on 2 replicas {section / 2**20:.0f} MiB; one section per "
        f"model: {one / 2**20:.0f} MiB each, x 50 = {50 * one / 2**20:.0f} MiB"
    )
    assert section < 50 * one / 10


def test_replicas_auto_starts_one_per_free_cpu_and_a_reapply_keeps_them(project: Path, cluster: TestCluster) -> None:
    """2 CPUs, 0.75 held by the other sections: 1.25 free fits two replicas of 0.5 (one per CPU at most)."""

    def echo_replicas() -> int:
        details = Cluster(cluster.dashboard_url).details()["applications"]["Echo"]["deployments"]
        return sum(1 for d in details.values() for r in d["replicas"] if r["state"] == "RUNNING")

    assert echo_replicas() == 2
    code, out = controller_in_process("-c", str(project / "conf.ini"))
    assert code == 0, out
    assert "Echo" not in out.split("SECTION")[0] or "unchanged" in out  # nothing to change
    assert echo_replicas() == 2
