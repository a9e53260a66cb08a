"""The typed settings of a conf.ini: one spec per section, the whole file (`[MODEL SERVE]`: serve_settings.py).

Every conf.ini key is declared once, here or in serve_settings.py, as a field made by `keys.conf_key`:
its parser, default, what a change does, an example and one line of help. config.py reads a file into
these; the planner and the README check read the declarations.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelserve import keys
from modelserve.keys import IN_PLACE, ROLL_OUT, conf_key, declared_keys
from modelserve.serve_settings import ServeSettings

if TYPE_CHECKING:
    from modelserve.models import SectionModels
    from modelserve.node_groups import NodeGroup

PACKAGE_PREFIX = "algopkg."


@dataclass(frozen=True)
class SectionSpec:
    """One `[algopkg.<Package>[:variant]]` section: one Serve application."""

    section: str
    package: str
    backend: str = conf_key(
        "backend",
        keys.text,
        default=None,
        change=ROLL_OUT,
        example="Classifier",
        help="class name in algopkg/<Package>/backend.py",
    )
    route: str = conf_key(
        "route",
        keys.route,
        default=None,
        change=IN_PLACE,
        example="extract",
        help="HTTP path the section is served at",
    )
    model_files: tuple[str, ...] = conf_key(
        "model",
        keys.model_refs,
        default="",
        change=ROLL_OUT,
        example="model.npz, digits@3",
        help="model files in model_zoo, or versions (name@3: every file of <model_zoo>/name/3/; name@latest: "
        "the highest, pinned at apply), comma-separated, may be empty",
    )
    model_zoo: str = conf_key(
        "model_zoo",
        keys.model_zoo,
        default="",
        change=ROLL_OUT,
        example="s3://models/vision",
        help="this section's own model_zoo (a directory or s3://bucket/prefix); empty: [MODEL SERVE]'s",
    )
    models: str = conf_key(
        "models",
        keys.model_zoo,
        default="",
        change=ROLL_OUT,
        example="Model_ZOO/adapters",
        help="a directory or s3:// prefix of models of one kind, one per entry; a request names one (multiplexing)",
    )
    models_per_replica: int = conf_key(
        "models_per_replica",
        keys.whole(1, 1000),
        default="8",
        change=ROLL_OUT,
        example="16",
        help="where `models` is set: models one replica holds at most, least recently used unloaded first",
    )
    replicas: keys.Replicas = conf_key(
        "replicas",
        keys.replicas,
        default="1",
        change=IN_PLACE,
        example="4",
        help="number of replicas, MIN-MAX for autoscaling (0-4 scales to zero), or auto: one per free CPU",
    )
    target_ongoing_requests: float = conf_key(
        "target_ongoing_requests",
        keys.number(0.1, 100000),
        default="2",
        change=IN_PLACE,
        example="4",
        help="autoscaling: requests per replica it aims for",
    )
    upscale_delay_s: float = conf_key(
        "upscale_delay_s",
        keys.number(0, 3600),
        default="30",
        change=IN_PLACE,
        example="5",
        help="autoscaling: how long load must stay high before it adds replicas",
    )
    downscale_delay_s: float = conf_key(
        "downscale_delay_s",
        keys.number(0, 86400),
        default="600",
        change=IN_PLACE,
        example="60",
        help="autoscaling: how long load must stay low before it removes replicas (to zero with 0-N)",
    )
    gpu_cost: float = conf_key(
        "gpu_cost",
        keys.gpu_cost,
        default="0",
        change=ROLL_OUT,
        example="0.25",
        help="GPUs per replica; 0.25 packs four replicas on one GPU",
    )
    cpu_cost: float = conf_key(
        "cpu_cost",
        keys.number(0, 1024),
        default="1",
        change=ROLL_OUT,
        example="2",
        help="CPUs per replica",
    )
    methods: tuple[str, ...] = conf_key(
        "method",
        keys.methods,
        default="GET",
        change=ROLL_OUT,
        example="POST",
        help="GET, POST or GET,POST",
    )
    max_ongoing_requests: int = conf_key(
        "max_ongoing_requests",
        keys.whole(1, 100000),
        default="32",
        change=IN_PLACE,
        example="64",
        help="requests one replica works on at once",
    )
    max_replicas_per_node: int | None = conf_key(
        "max_replicas_per_node",
        keys.optional_whole(1, 1024),
        default="",
        change=ROLL_OUT,
        example="1",
        help="at most this many replicas on one node (spread)",
    )
    user_config: Mapping[str, Any] = conf_key(
        "user_config",
        keys.json_object,
        default="",
        change=IN_PLACE,
        example='{"threshold": 0.5}',
        help="JSON object passed to the backend's reconfigure()",
    )
    max_batch_size: int = conf_key(
        "max_batch_size",
        keys.whole(1, 4096),
        default="32",
        change=IN_PLACE,
        example="8",
        help="largest batch handed to infer_batch, when the backend has one",
    )
    batch_wait_ms: float = conf_key(
        "batch_wait_ms",
        keys.number(0, 60000),
        default="5",
        change=IN_PLACE,
        example="2",
        help="how long a batch may wait to fill, only while other requests are in flight",
    )
    max_body_kb: int = conf_key(
        "max_body_kb",
        keys.whole(1, 1048576),
        default="10240",
        change=IN_PLACE,
        example="512",
        help="largest request body in KiB; larger ones get 413 before the model sees them",
    )
    timeout_s: float = conf_key(
        "timeout_s",
        keys.number(0.001, 86400),
        default="60",
        change=IN_PLACE,
        example="10",
        help="a request whose inference runs longer gets 504",
    )
    model_calls: str = conf_key(
        "model_calls",
        keys.model_calls,
        default="thread",
        change=IN_PLACE,
        example="inline",
        help="thread = on the model thread; inline = a quick model on the event loop (no timeout_s)",
    )
    max_queued: int | None = conf_key(
        "max_queued",
        keys.optional_whole(1, 1000000),
        default="auto",
        change=IN_PLACE,
        example="100",
        help="requests waiting for a replica beyond which new ones get 503 (auto = 4 x max_ongoing_requests)",
    )
    api_keys: str = conf_key(
        "api_keys",
        keys.text,
        default="",
        change=IN_PLACE,
        example="team_keys.txt",
        help="file of API keys for this route, replacing [MODEL SERVE] api_keys",
    )
    traffic: int | None = conf_key(
        "traffic",
        keys.optional_whole(0, 100),
        default="",
        change=IN_PLACE,
        example="10",
        help="percent of its route's requests, where sections share a route (canary)",
    )
    sticky: str = conf_key(
        "sticky",
        keys.sticky,
        default="",
        change=IN_PLACE,
        example="header:x-user-id",
        help="send one client's requests to one section of a shared route, keyed by a header",
    )
    mirror_of: str = conf_key(
        "mirror_of",
        keys.text,
        default="",
        change=IN_PLACE,
        example="algopkg.AlgoExample",
        help="receive a copy of that section's requests; the answers are discarded",
    )
    mirror_percent: int = conf_key(
        "mirror_percent",
        keys.whole(1, 100),
        default="100",
        change=IN_PLACE,
        example="10",
        help="with mirror_of: the percent of requests copied",
    )
    warmup: str = conf_key(
        "warmup",
        keys.text,
        default="",
        change=ROLL_OUT,
        example="warmup.json",
        help="JSON file in the package with requests each replica runs before traffic",
    )
    env: str = conf_key(
        "env",
        keys.env,
        default="",
        change=ROLL_OUT,
        example="pip",
        help="the package's Python environment: empty, pip, or conda:NAME",
    )
    rollout: str = conf_key(
        "rollout",
        keys.rollout,
        default="surge",
        change=IN_PLACE,
        example="replace",
        help="surge: a roll-out starts a new replica before it stops an old one; replace: it stops one first",
    )

    @property
    def queue_limit(self) -> int:
        return self.max_queued if self.max_queued is not None else 4 * self.max_ongoing_requests

    #: Not a conf.ini key: the stage (`controller.py --stage grey`) the section is applied as.
    stage: str = ""

    @property
    def app_name(self) -> str:
        """The Serve application name: the section name without `algopkg.` (`<stage>.` first on a stage)."""
        name = self.section[len(PACKAGE_PREFIX) :]
        return f"{self.stage}.{name}" if self.stage else name


#: `{conf.ini name: (field name, Key)}`, derived from the dataclasses.
SERVE_KEYS = declared_keys(ServeSettings)
SECTION_KEYS = declared_keys(SectionSpec)


@dataclass(frozen=True)
class Config:
    """A whole conf.ini, validated."""

    path: Path
    serve: ServeSettings
    sections: tuple[SectionSpec, ...]
    #: Each section's model files as found in its store (config.load_config resolves them).
    models: Mapping[str, SectionModels] = field(default_factory=dict)
    node_groups: tuple[NodeGroup, ...] = ()  # the [NODES ...] sections (node_groups.py); empty: none

    def api_keys_file(self, spec: SectionSpec) -> Path | None:
        """The key file that guards a section's route: its own, else `[MODEL SERVE]`'s, else none."""
        return self.serve.key_file(spec.api_keys or self.serve.api_keys)

    @property
    def algopkg_dir(self) -> Path:
        return self.serve.root / "algopkg"

    def models_of(self, spec: SectionSpec) -> str:
        """A multiplexed section's `models` (`s3://bucket/prefix` or an absolute directory), else ""."""
        return spec.models and (spec.models if "://" in spec.models else str((self.serve.root / spec.models).resolve()))

    def zoo_of(self, spec: SectionSpec) -> str:
        """Where a section's model files live: `s3://bucket/prefix`, or an absolute directory."""
        zoo = spec.model_zoo or self.serve.model_zoo
        return zoo if zoo.startswith("s3://") else str((self.serve.root / zoo).resolve())
