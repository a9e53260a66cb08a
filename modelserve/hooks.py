"""What runs a pipeline (pipeline.py) plugs into it: an `Observer` of its answers (the replica's metrics and
access log) and a `Batcher` in front of the model (Ray Serve's batch queue)."""

from __future__ import annotations

from typing import Any, Protocol

from starlette.requests import Request


class Observer(Protocol):
    """What the replica records of each answer (metrics, the access log)."""

    def answered(self, request: Request, request_id: str, status: int, latency_ms: float, counted: bool) -> None:
        """After each answer; `counted` is False for probes (`/ping`, `/openapi.json`)."""

    def batched(self, request_ids: list[str], size: int) -> None:
        """Each batch of more than one request handed to the model."""

    def idle(self) -> None:
        """The pipeline has no request left (also after one that was cancelled)."""


class Batcher(Protocol):
    """A batch queue in front of `Pipeline.infer_batch` (the replica's: Ray Serve's `serve.batch`)."""

    def set_max_batch_size(self, size: int) -> None: ...
    def set_batch_wait_timeout_s(self, seconds: float) -> None: ...
    async def __call__(self, params: Any, request_id: str) -> Any: ...
