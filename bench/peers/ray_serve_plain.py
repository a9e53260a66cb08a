"""Plain Ray Serve peer with Serve's defaults: `python bench/peers/ray_serve_plain.py PORT`.

Starts its own local Ray (no dashboard), deploys one replica wrapping the MLP (no batching,
the default Python proxy), serves POST /mlp on 127.0.0.1:PORT and blocks until killed.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import ray
from ray import serve
from starlette.requests import Request

ROOT = str(Path(__file__).resolve().parents[2])


@serve.deployment
class PlainMLP:
    def __init__(self) -> None:
        sys.path.insert(0, ROOT)
        from algopkg.BenchMLP.mlp import MLP

        self.mlp = MLP()

    async def __call__(self, request: Request) -> dict[str, Any]:
        params = await request.json()
        return self.mlp.predict([params])[0]  # type: ignore[no-any-return]


def main() -> None:
    port = int(sys.argv[1])
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(PlainMLP.bind(), route_prefix="/mlp")  # type: ignore[attr-defined]
    print(f"ready on http://127.0.0.1:{port}/mlp", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
