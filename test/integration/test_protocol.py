"""The Open Inference Protocol on a real cluster, called by the real clients: tritonclient (binary tensors by
default, and JSON) and KServe's InferenceRESTClient (in its own virtualenv: test/kserve_client.py); keys,
limits, timeouts and batching as on the native route; the protocol's published OpenAPI schemas."""

from __future__ import annotations

import json
import os
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import tritonclient.http as triton
from helpers import REPO, TestCluster, controller_in_process, make_project, wait_for, write_conf
from oip_schema import validate
from tritonclient.utils import InferenceServerException

pytestmark = pytest.mark.integration
README = (REPO / "README.md").read_text()

KEY = "protocol-test-key-0123456789abcdef"
SECTIONS = (
    """
    [algopkg.Tensors]
    backend = Scale
    route = tensors
    method = POST
    cpu_cost = 0.25
    max_batch_size = 8
    batch_wait_ms = 20
    """,
    """
    [algopkg.Tensors:legacy]
    backend = LegacyScale
    route = tensors/legacy
    method = POST
    cpu_cost = 0.25
    warmup = legacy_warmup.json
    """,
    """
    [algopkg.AlgoExample]
    backend = algo_backend
    model = algoexample_model_v1.npz
    route = extract
    method = GET,POST
    cpu_cost = 0.25
    warmup = warmup.json
    """,
    """
    [algopkg.Tensors:copy]
    backend = LegacyScale
    route = tensors/copy
    method = POST
    cpu_cost = 0.25
    mirror_of = Tensors:legacy
    """,
    """
    [algopkg.Tensors:blue]
    backend = Scale
    route = split
    method = POST
    cpu_cost = 0.25
    traffic = 50
    """,
    """
    [algopkg.Tensors:green]
    backend = Scale
    route = split
    method = POST
    cpu_cost = 0.25
    traffic = 50
    """,
    """
    [algopkg.Tensors:guarded]
    backend = Scale
    route = guarded
    method = POST
    cpu_cost = 0.25
    api_keys = keys.txt
    max_body_kb = 1
    timeout_s = 1
    """,
)


@pytest.fixture(scope="module")
def conf(tmp_path_factory: pytest.TempPathFactory, cluster: TestCluster) -> Path:
    project = make_project(tmp_path_factory.mktemp("protocol"))
    (project / "keys.txt").write_text(f"{KEY}\n")
    path = write_conf(project, cluster.serve(), *SECTIONS)
    code, out = controller_in_process("-c", str(path))
    assert code == 0, out
    return path


@pytest.fixture(scope="module")
def base(conf: Path, cluster: TestCluster) -> str:
    return cluster.base_url


def client(base: str, route: str, **options: Any) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(f"{base.removeprefix('http://')}/{route}", **options)


def text(value: Any) -> str:
    """A BYTES element as tritonclient gives it: bytes from binary data, str from JSON data."""
    return value.decode() if isinstance(value, bytes) else str(value)


def tensors(x: np.ndarray, n: np.ndarray, labels: list[bytes], binary: bool) -> list[triton.InferInput]:
    inputs = [
        triton.InferInput("x", list(x.shape), "FP32"),
        triton.InferInput("n", list(n.shape), "INT64"),
        triton.InferInput("label", [len(labels)], "BYTES"),
    ]
    inputs[0].set_data_from_numpy(x, binary_data=binary)
    inputs[1].set_data_from_numpy(n, binary_data=binary)
    inputs[2].set_data_from_numpy(np.array(labels, dtype=np.object_), binary_data=binary)
    return inputs


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_health_metadata_and_infer_equal_the_native_route(base: str, binary: bool) -> None:
    triton_client = client(base, "tensors")
    assert triton_client.is_server_live() and triton_client.is_server_ready()
    assert triton_client.is_model_ready("tensors")
    server = triton_client.get_server_metadata()
    validate("server_metadata", server)
    assert server["name"] == "modelserve" and "binary_tensor_data" in server["extensions"]
    metadata = triton_client.get_model_metadata("tensors")
    validate("model_metadata", metadata)
    assert {t["name"]: (t["datatype"], t["shape"]) for t in metadata["inputs"]} == {
        "x": ("FP32", [-1, 4]),
        "n": ("INT64", [-1, 1]),
        "label": ("BYTES", [-1]),
    }
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    n = np.array([[3], [7]], dtype=np.int64)
    outputs = [triton.InferRequestedOutput(name, binary_data=binary) for name in ("y", "count", "text")]
    result = triton_client.infer("tensors", tensors(x, n, [b"cat", b"dog"], binary), outputs=outputs)
    native = requests.post(
        f"{base}/tensors", json={"x": x.tolist(), "n": n.tolist(), "label": ["cat", "dog"]}, timeout=30
    ).json()["result"]
    assert result.as_numpy("y").tolist() == native["y"] == (x * 2).tolist()
    assert result.as_numpy("count").tolist() == native["count"] == [[4], [8]]
    assert [text(v) for v in result.as_numpy("text")] == native["text"] == ["CAT", "DOG"]
    assert result.as_numpy("y").dtype == np.float32 and result.as_numpy("count").dtype == np.int64
    if not binary:
        validate("infer_response", result.get_response())


def test_tritonclient_default_call_binary_in_and_out(base: str) -> None:
    """tritonclient's defaults: binary inputs, and outputs in binary where none are named."""
    x = np.ones((1, 4), dtype=np.float32)
    result = client(base, "tensors").infer("tensors", tensors(x, np.array([[1]], np.int64), [b"a"], True))
    assert result.as_numpy("y").tolist() == [[2.0] * 4] and result.as_numpy("count").tolist() == [[2]]


def test_the_original_template_gets_arrays_and_its_metadata_comes_from_the_warmup(base: str) -> None:
    triton_client = client(base, "tensors/legacy")
    metadata = triton_client.get_model_metadata("tensors/legacy")
    validate("model_metadata", metadata)
    assert [t["name"] for t in metadata["inputs"]] == ["values"]
    assert {t["name"] for t in metadata["outputs"]} == {"total", "doubled"}
    values = triton.InferInput("values", [2, 3], "FP64")
    values.set_data_from_numpy(np.array([[1, 2, 3], [4, 5, 6]], dtype=np.float64))
    result = triton_client.infer("tensors/legacy", [values])
    assert result.as_numpy("total").tolist() == [6.0, 15.0]
    assert result.as_numpy("doubled").tolist() == [[2, 4, 6], [8, 10, 12]]


def test_a_batch_under_8_concurrent_clients_answers_each_its_own(base: str) -> None:
    def one(i: int) -> tuple[list[Any], list[Any]]:
        x = np.full((1, 4), i, dtype=np.float32)
        result = client(base, "tensors").infer("tensors", tensors(x, np.array([[i]], np.int64), [b"c%d" % i], True))
        return result.as_numpy("y").tolist(), result.as_numpy("count").tolist()

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, range(64)))
    assert answers == [([[2.0 * i] * 4], [[i + 1]]) for i in range(64)]


@pytest.mark.parametrize(
    ("inputs", "status", "says"),
    [
        ([{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3]}], 400, "x"),
        ([{"name": "x", "datatype": "FP99", "shape": [1], "data": [1]}], 400, "FP99"),
        ([{"name": "x", "datatype": "INT64", "shape": [1, 4], "data": [1, 2, 3, 4]}], 400, "FP32"),
        ([{"name": "x", "datatype": "FP32", "shape": [1, 5], "data": [1, 2, 3, 4, 5]}], 400, "x"),
    ],
    ids=["count", "unknown-datatype", "wrong-datatype", "wrong-shape"],
)
def test_bad_tensors_get_the_protocols_error(base: str, inputs: list[Any], status: int, says: str) -> None:
    answer = requests.post(f"{base}/tensors/v2/models/tensors/infer", json={"inputs": inputs}, timeout=30)
    assert answer.status_code == status, answer.text
    validate("error", answer.json())
    assert says in answer.json()["error"]
    x = np.ones((1, 5), dtype=np.float32)
    with pytest.raises(InferenceServerException, match="x"):
        bad = triton.InferInput("x", [1, 5], "FP32")
        bad.set_data_from_numpy(x)
        client(base, "tensors").infer("tensors", [bad])


def test_unknown_model_version_and_path_are_404(base: str) -> None:
    for path in ("v2/models/nope/infer", "v2/models/tensors/versions/7", "v2/nothing"):
        answer = requests.get(f"{base}/tensors/{path}", timeout=30)
        assert answer.status_code == 404, (path, answer.text)
        validate("error", answer.json())


def test_keys_limits_and_timeouts_hold_for_protocol_calls(base: str) -> None:
    url = f"{base}/guarded/v2/models/guarded/infer"
    body = {
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]},
            {"name": "n", "datatype": "INT64", "shape": [1, 1], "data": [1]},
            {"name": "label", "datatype": "BYTES", "shape": [1], "data": ["ok"]},
        ]
    }
    assert requests.post(url, json=body, timeout=30).status_code == 401
    assert requests.get(f"{base}/guarded/v2/health/live", timeout=30).status_code == 200  # a probe needs no key
    keyed = {"authorization": f"Bearer {KEY}"}
    assert requests.post(url, json=body, headers=keyed, timeout=30).status_code == 200
    big = {"inputs": [{**body["inputs"][0], "shape": [400, 4], "data": [0.5] * 1600}, *body["inputs"][1:]]}
    too_large = requests.post(url, json=big, headers=keyed, timeout=30)
    assert too_large.status_code == 413 and "error" in too_large.json()
    slow = {"inputs": [*body["inputs"][:2], {**body["inputs"][2], "data": ["slow"]}]}
    late = requests.post(url, json=slow, headers=keyed, timeout=30)
    assert late.status_code == 504 and "timeout_s" in late.json()["error"]


def test_kserve_inference_rest_client_calls_a_section(base: str) -> None:
    """KServe's own client (its package pins protobuf 6 and psutil 5, which Ray 2.60 cannot share: its own
    virtualenv, made by `make setup`)."""
    python = REPO / ".venv-kserve" / "bin" / "python"
    if not python.exists() and not os.environ.get("CI"):
        pytest.skip("no .venv-kserve: run `make setup`")
    out = subprocess.run(
        [str(python), str(REPO / "test" / "kserve_client.py"), f"{base}/tensors/", "tensors"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    answer = json.loads(out.stdout.strip().splitlines()[-1])
    assert answer == {"live": True, "ready": True, "y": [[2.0, 4.0, 6.0, 8.0]], "count": [[6]], "text": ["KS"]}


def test_the_readme_example_runs(base: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The README's tritonclient example, against the example package, as written but for the address."""
    code = README.split("## Standard clients: the Open Inference Protocol")[1].split("```python")[1].split("```")[0]
    exec(compile(code.replace("127.0.0.1:8000", base.removeprefix("http://")), "README.md", "exec"), {})
    printed = capsys.readouterr().out
    native = requests.post(f"{base}/extract", json={"x": [0, 0, 5, 13, 9, 1, 0, 0] * 8}, timeout=30).json()["result"]
    assert printed.startswith(f"{native['class']} [")


def test_bench_loads_the_protocol_path_with_the_warmup_sample_as_tensors(conf: Path) -> None:
    for route in ("tensors/legacy", "extract"):  # FP64 as the sample has it; FP32 as the model declares it
        code, out = controller_in_process("bench", route, "--protocol", "-n", "40", "-C", "4", "-c", str(conf))
        assert code == 0, out
        assert f"/{route}/v2/models/{route}/infer" in out and "non-2xx 0" in out, out


def test_a_shared_routes_split_applies_to_protocol_calls(base: str) -> None:
    session = requests.Session()
    body = {
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]},
            {"name": "n", "datatype": "INT64", "shape": [1, 1], "data": [1]},
            {"name": "label", "datatype": "BYTES", "shape": [1], "data": ["s"]},
        ]
    }
    answered = []
    for _ in range(40):
        answer = session.post(f"{base}/split/v2/models/split/infer", json=body, timeout=30)
        assert answer.status_code == 200, answer.text
        answered.append(answer.headers["x-modelserve-section"])
    assert set(answered) == {"algopkg.Tensors:blue", "algopkg.Tensors:green"}, answered


def test_a_mirror_gets_protocol_calls_as_protocol_calls(conf: Path, base: str) -> None:
    """The mirror is the original template on `values`: a copy read as a native call (no `values`) would fail it."""
    values = {"inputs": [{"name": "values", "datatype": "FP64", "shape": [1, 2], "data": [1.0, 2.0]}]}
    for _ in range(20):
        answer = requests.post(f"{base}/tensors/legacy/v2/models/tensors/legacy/infer", json=values, timeout=30)
        assert answer.status_code == 200, answer.text

    def counted() -> tuple[int, int] | None:
        code, out = controller_in_process("status", "-c", str(conf))
        line = next((x for x in out.splitlines() if "mirror algopkg.Tensors:copy" in x), "")
        found = re.search(r"sent (\d+), failed (\d+)", line)
        sent, failed = (int(found.group(1)), int(found.group(2))) if found else (0, 0)
        return (sent, failed) if sent >= 20 or failed else None  # this module's earlier calls copied too

    sent, failed = wait_for(counted, timeout_s=40, what="the mirror's counts in status")
    assert sent >= 20 and failed == 0, (sent, failed)
