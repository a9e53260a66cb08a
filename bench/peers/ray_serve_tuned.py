"""Ray Serve as an expert tunes it: `python bench/peers/ray_serve_tuned.py PORT`.

Starts a Ray head the way modelserve starts its own (`modelserve.node`: HAProxy ingress, the
same CPUs and internal ports), with Ray's documented `RAY_SERVE_THROUGHPUT_OPTIMIZED=1`, and
deploys one replica (1 CPU, so one BLAS thread) that batches with `@serve.batch` and runs the
model in a thread, off the replica's event loop. Serves POST /mlp on 127.0.0.1:PORT and blocks
until killed; the head runs in this process's session, so stopping the session stops it.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = str(Path(__file__).resolve().parents[2])
sys.path.insert(0, ROOT)

import ray  # noqa: E402
from ray import serve  # noqa: E402
from starlette.requests import Request  # noqa: E402

from modelserve import raycompat  # noqa: E402
from modelserve.node import NodeSpec, free_port, node_env, ray_start_command  # noqa: E402

MAX_BATCH_SIZE = 32
BATCH_WAIT_S = 0.001


@serve.deployment(
    max_ongoing_requests=64,
    ray_actor_options={"num_cpus": 1},  # as modelserve's default cpu_cost: Ray gives it OMP_NUM_THREADS=1
    logging_config={"enable_access_log": False},
)
class TunedMLP:
    def __init__(self) -> None:
        sys.path.insert(0, ROOT)
        from algopkg.BenchMLP.mlp import MLP

        self.mlp = MLP()

    @serve.batch(max_batch_size=MAX_BATCH_SIZE, batch_wait_timeout_s=BATCH_WAIT_S)
    async def predict(self, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.mlp.predict, batch)  # the event loop keeps serving HTTP

    async def __call__(self, request: Request) -> dict[str, Any]:
        return await self.predict(await request.json())  # type: ignore[no-any-return]


def start_head() -> str:
    """`ray start --head --block` as modelserve runs it, in this session; returns the GCS address."""
    spec = NodeSpec(role="head", gcs_port=free_port(), dashboard_port=free_port(), num_cpus=os.cpu_count())
    env = node_env(spec)
    env[raycompat.AUTH_MODE] = "disabled"
    env[raycompat.THROUGHPUT_OPTIMIZED] = "1"
    subprocess.Popen(ray_start_command(spec), stdin=subprocess.DEVNULL, env=env)
    os.environ.update({k: v for k, v in env.items() if k.startswith("RAY_")})
    return f"127.0.0.1:{spec.gcs_port}"


def main() -> None:
    port = int(sys.argv[1])
    address = start_head()
    deadline = time.monotonic() + 90
    while True:
        try:
            ray.init(address=address)
            break
        except ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(TunedMLP.bind(), route_prefix="/mlp")  # type: ignore[attr-defined]
    print(f"ready on http://127.0.0.1:{port}/mlp", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
