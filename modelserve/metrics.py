"""Per-section metrics, through Ray Serve's metrics API (`ray.serve.metrics`).

Every node's Ray metrics exporter serves them to Prometheus (`controller.py metrics` lists the
scrape targets), named `ray_` + the names below (a counter also gets `_total`), tagged with the
`section` and, by Ray, the `application`, `deployment` and `replica`.
"""

from __future__ import annotations

from typing import Any

from ray.serve import metrics

#: Requests answered, by HTTP status `code` (counter).
REQUESTS = "modelserve_requests"
#: Request latency inside the replica, ms (histogram).
LATENCY = "modelserve_request_latency_ms"
#: Size of each batch handed to the model (histogram).
BATCH_SIZE = "modelserve_batch_size"
#: Requests the replica is working on now (gauge).
IN_FLIGHT = "modelserve_in_flight"
#: Requests refused before the model ran, by `reason`: unauthorized, too_large, timeout, overloaded (counter).
REJECTED = "modelserve_rejected"
#: Seconds a replica took to load its model and to warm up, by `phase` (gauge).
LOAD_SECONDS = "modelserve_load_seconds"

#: A multiplexed section's model events, by `event`: hit, loaded, unloaded, forwarded, failed (counter).
MODEL_EVENTS = "modelserve_model_events"
#: Models a replica of a multiplexed section holds, by `model`: 1 while held, 0 once unloaded (gauge).
MODEL_HELD = "modelserve_model_held"

LATENCY_BOUNDARIES_MS = [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1e3, 2e3, 5e3, 1e4, 3e4]
BATCH_BOUNDARIES = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]

REASONS = {401: "unauthorized", 413: "too_large", 503: "overloaded", 504: "timeout"}


def tag_keys(*names: str) -> Any:
    """Ray annotates `tag_keys` as `Tuple[str]` (one element); it takes any number."""
    return names


def prometheus_names() -> dict[str, str]:
    """`{metric: the series Prometheus stores}`: what dashboards may query."""
    return {
        REQUESTS: f"ray_{REQUESTS}_total",
        LATENCY: f"ray_{LATENCY}_bucket",
        BATCH_SIZE: f"ray_{BATCH_SIZE}_bucket",
        IN_FLIGHT: f"ray_{IN_FLIGHT}",
        REJECTED: f"ray_{REJECTED}_total",
        LOAD_SECONDS: f"ray_{LOAD_SECONDS}",
        MODEL_EVENTS: f"ray_{MODEL_EVENTS}_total",
        MODEL_HELD: f"ray_{MODEL_HELD}",
    }


class SectionMetrics:
    """The metrics of one replica of one section."""

    def __init__(self, section: str) -> None:
        # A fresh dict each time: Ray adds its own tags to the dict it is given, then refuses a dict holding them.
        self.requests = metrics.Counter(
            REQUESTS, "requests answered, by HTTP status", tag_keys=tag_keys("section", "code")
        )
        self.requests.set_default_tags({"section": section})
        self.latency = metrics.Histogram(
            LATENCY, "request latency in the replica (ms)", LATENCY_BOUNDARIES_MS, tag_keys=("section",)
        )
        self.latency.set_default_tags({"section": section})
        self.batch_size = metrics.Histogram(BATCH_SIZE, "requests per model call", BATCH_BOUNDARIES, ("section",))
        self.batch_size.set_default_tags({"section": section})
        self.in_flight = metrics.Gauge(IN_FLIGHT, "requests in the replica now", tag_keys=("section",))
        self.in_flight.set_default_tags({"section": section})
        self.rejected = metrics.Counter(REJECTED, "requests refused before the model", tag_keys("section", "reason"))
        self.rejected.set_default_tags({"section": section})
        self.load_seconds = metrics.Gauge(LOAD_SECONDS, "model load and warm-up time (s)", tag_keys("section", "phase"))
        self.load_seconds.set_default_tags({"section": section})
        self._codes: dict[int, dict[str, str]] = {}

    def answered(self, code: int, latency_ms: float) -> None:
        tags = self._codes.get(code)
        if tags is None:
            tags = self._codes[code] = {"code": str(code)}
        self.requests.inc(1, tags)
        self.latency.observe(latency_ms)
        reason = REASONS.get(code)
        if reason is not None:
            self.rejected.inc(1, {"reason": reason})


class ModelMetrics:
    """A multiplexed section's model events and held models, on one replica (multiplex.py)."""

    def __init__(self, section: str) -> None:
        self.events = metrics.Counter(MODEL_EVENTS, "model hits, loads, unloads", tag_keys("section", "event"))
        self.events.set_default_tags({"section": section})
        self.held = metrics.Gauge(
            MODEL_HELD, "1 while the replica holds the model", tag_keys=tag_keys("section", "model")
        )
        self.held.set_default_tags({"section": section})
        self._tags: dict[str, dict[str, str]] = {}
        #: The same counts, in the replica.
        self.counts: dict[str, int] = {}

    def count(self, event: str) -> None:
        tags = self._tags.get(event)
        if tags is None:
            tags = self._tags[event] = {"event": event}
        self.events.inc(1, tags)
        self.counts[event] = self.counts.get(event, 0) + 1

    def holds(self, model: str, held: bool) -> None:
        self.held.set(1 if held else 0, {"model": model})
