"""The one contract between the planner (controller side) and the replica (cluster side).

`ReplicaArgs` travel as the application's `args`: Ray hashes them into the code version,
so a change of any of them rolls the replicas. `ReplicaConfig` travels as the deployment's
`user_config`: Ray hands it to running replicas (`reconfigure`) without restarting them.
Both cross the wire as JSON; `to_json`/`from_json` are the only encoders.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class ReplicaArgs:
    """What every replica of one section is built with."""

    section: str
    package: str
    backend: str
    model_zoo: str
    model_files: tuple[str, ...] = ()
    methods: tuple[str, ...] = ("GET",)
    warmup: str = ""
    model_digest: str = ""
    #: Where `model_zoo` is an object store: each file's `modelstore.StoredFile` fields (uri, name, etag,
    #: size), fetched through the node's cache (modelcache.py) before the backend loads.
    stored_files: tuple[Mapping[str, Any], ...] = ()
    #: The node cache's size cap, GiB.
    model_cache_gb: float = 20.0
    #: A multiplexed section's store of models (an absolute directory or s3://), one model per entry,
    #: and how many one replica holds (multiplex.py); "" and 0 for a section of one model.
    models: str = ""
    models_per_replica: int = 0
    #: Every conf.ini key whose change rolls the replicas (keys.ROLL_OUT), by name: being part of
    #: the args makes Ray roll them exactly when the apply table says "roll out".
    rollout_keys: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["model_files"], data["methods"] = list(self.model_files), list(self.methods)
        data["rollout_keys"] = dict(self.rollout_keys)
        data["stored_files"] = [dict(f) for f in self.stored_files]
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ReplicaArgs:
        return cls(
            **{
                **data,
                "model_files": tuple(data.get("model_files", ())),
                "methods": tuple(data.get("methods", ())),
                "stored_files": tuple(data.get("stored_files", ())),
            }
        )


@dataclass(frozen=True)
class ReplicaConfig:
    """What a running replica takes in place: the backend's own `user_config` and batching."""

    user: Mapping[str, Any] = field(default_factory=dict)
    max_batch_size: int = 1
    batch_wait_ms: float = 0.0
    max_body_kb: int = 10240
    timeout_s: float = 60.0
    #: `thread`, or `inline`: a quick model's calls on the event loop (modelcalls.py).
    model_calls: str = "thread"
    #: SHA-256 digests of the API keys the route accepts; empty = open.
    api_keys: tuple[str, ...] = ()
    #: One JSON line per request in the replica's log.
    access_log_json: bool = False
    #: The section's public route (`/extract`): known even when another section owns it (a split).
    route: str = ""
    #: Set on the section that owns a shared or mirrored route: its split (`traffic.split_config`).
    traffic: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = {**asdict(self), "user": dict(self.user), "api_keys": list(self.api_keys)}
        if not self.traffic:
            del data["traffic"]  # a section that owns no split: its user_config as before
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ReplicaConfig:
        return cls(**{**data, "api_keys": tuple(data.get("api_keys", ()))})
