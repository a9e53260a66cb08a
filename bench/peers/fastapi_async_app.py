"""FastAPI's fast idiom: `uvicorn bench.peers.fastapi_async_app:app --workers 2 --no-access-log`, from the repo root.

`async def` endpoints run on the event loop (no thread-pool hand-off); with one BLAS thread per worker
(bench's PEER_ENV) this is the faster FastAPI row, and `/noop` is FastAPI's no-compute path for
bench/accounting.py: the same request parsed, the same answer as bench/noop's packages.
"""

from typing import Any

from fastapi import FastAPI

from algopkg.BenchMLP.mlp import MLP

app = FastAPI()
MODEL = MLP()  # once per worker, at import
NOOP_RESULT = {"class": 0, "score": 0.0}


@app.post("/mlp")
async def mlp(params: dict[str, Any]) -> dict[str, Any]:
    return MODEL.predict([params])[0]


@app.post("/noop")
async def noop(params: dict[str, Any]) -> dict[str, Any]:
    return NOOP_RESULT
