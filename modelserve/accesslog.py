"""`access_log = json`: one JSON object per request, alone on its line, in the replica's log.

Fields: time, request_id, section, route, method, status, latency_ms, batch_size. Never the
request's headers or body (so never an API key).
"""

from __future__ import annotations

import datetime
import json
import logging

from starlette.requests import Request

logger = logging.getLogger("modelserve.access")


def open_in_replica_log() -> None:
    """Write the lines, bare (no Ray prefix), to the file Ray Serve writes this replica's log to."""
    if logger.handlers:
        return
    for handler in logging.getLogger("ray.serve").handlers:
        filename = getattr(getattr(handler, "target", handler), "baseFilename", None)
        if filename:
            file_handler = logging.FileHandler(filename)
            file_handler.setFormatter(logging.Formatter("%(message)s"))
            logger.addHandler(file_handler)
            break
    logger.setLevel(logging.INFO)
    logger.propagate = False


def write(request: Request, request_id: str, section: str, status: int, latency_ms: float, batch_size: int) -> None:
    line = {
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds"),
        "request_id": request_id,
        "section": section,
        "route": request.scope.get("root_path", "") or "/",
        "method": request.method,
        "status": status,
        "latency_ms": round(latency_ms, 3),
        "batch_size": batch_size,
    }
    logger.info(json.dumps(line))
