"""The `[MODEL SERVE]` section of a conf.ini: where and how the whole service runs.

Each key is a field made by `keys.conf_key` (see settings.py, which holds the sections' keys).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from modelserve import keys
from modelserve.keys import IN_PLACE, LOCAL_START, NEXT_RUN, ROLL_OUT, SERVE_RESTART, conf_key


@dataclass(frozen=True)
class ServeSettings:
    """The `[MODEL SERVE]` section: where and how the whole service runs."""

    root: Path
    port: int = conf_key(
        "port",
        keys.whole(1, 65535),
        default="8000",
        change=SERVE_RESTART,
        example="8000",
        help="HTTP port of the service",
    )
    host: str = conf_key(
        "host",
        keys.host,
        default="127.0.0.1",
        change=SERVE_RESTART,
        example="0.0.0.0",
        help="bind address; 0.0.0.0 only when other hosts must reach it",
    )
    address: str = conf_key(
        "address",
        keys.address,
        default="auto",
        change=NEXT_RUN,
        example="head:6379",
        help="Ray cluster: auto | local | http://head:8265 (dashboard) | head:6379 (GCS)",
    )
    model_zoo: str = conf_key(
        "model_zoo",
        keys.model_zoo,
        default="Model_ZOO",
        change=ROLL_OUT,
        example="s3://models/prod",
        help="where model files live: a directory, the same path on every node, or s3://bucket/prefix",
    )
    model_cache_gb: float = conf_key(
        "model_cache_gb",
        keys.number(0.1, 100000),
        default="20",
        change=ROLL_OUT,
        example="50",
        help="each node's cache of model files from an object store, GiB (least recently used files go first)",
    )
    dashboard_port: int = conf_key(
        "dashboard_port",
        keys.whole(1, 65535),
        default="8265",
        change=LOCAL_START,
        example="8266",
        help="dashboard port of the local cluster the controller starts",
    )
    local_cpus: int | None = conf_key(
        "local_cpus",
        keys.optional_whole(1, 4096),
        default="auto",
        change=LOCAL_START,
        example="2",
        help="CPUs of the local cluster the controller starts",
    )
    local_gpus: int | None = conf_key(
        "local_gpus",
        keys.optional_whole(0, 1024),
        default="auto",
        change=LOCAL_START,
        example="1",
        help="GPUs of the local cluster the controller starts",
    )
    deploy_timeout_s: float = conf_key(
        "deploy_timeout_s",
        keys.number(1, 86400),
        default="300",
        change=NEXT_RUN,
        example="600",
        help="how long `controller.py` waits for sections to be healthy",
    )
    ingress: str = conf_key(
        "ingress",
        keys.ingress,
        default="fast",
        change=LOCAL_START,
        example="proxy",
        help="fast = HAProxy ingress; proxy = Ray Serve's Python proxy",
    )
    access_log: str = conf_key(
        "access_log",
        keys.access_log,
        default="off",
        change=IN_PLACE,
        example="json",
        help="on = Ray Serve's line per request; json = one JSON line per request (both cost throughput)",
    )
    api_keys: str = conf_key(
        "api_keys",
        keys.text,
        default="",
        change=IN_PLACE,
        example="api_keys.txt",
        help="file of API keys every route requires (relative to conf.ini); empty = open",
    )

    def key_file(self, value: str) -> Path | None:
        return (self.root / value).resolve() if value else None
