"""FastAPI peer: `uvicorn bench.peers.fastapi_app:app --workers 2`, run from the repo root."""

from typing import Any

from fastapi import FastAPI

from algopkg.BenchMLP.mlp import MLP

app = FastAPI()
MODEL = MLP()  # once per worker, at import


@app.post("/mlp")
def mlp(params: dict[str, Any]) -> dict[str, Any]:  # a sync endpoint: FastAPI runs it in its thread pool
    return MODEL.predict([params])[0]
