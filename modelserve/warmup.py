"""Warm-up requests: each replica runs them after loading its model and before taking traffic."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class WarmupError(ValueError):
    """The warm-up file cannot be used; the message says what it should hold."""


def read_warmup(path: Path) -> list[dict[str, Any]]:
    """A JSON object (one request's params), a list of them, or `{"params": {...}, "repeat": N}`."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise WarmupError(f"cannot read {path.name} as JSON ({exc})") from None
    if isinstance(data, dict) and "params" in data:
        repeat = data.get("repeat", 1)
        if not isinstance(repeat, int) or repeat < 1:
            raise WarmupError(f'{path.name}: "repeat" must be a whole number >= 1')
        data = [data["params"]] * repeat
    requests = data if isinstance(data, list) else [data]
    if not requests or not all(isinstance(r, dict) for r in requests):
        raise WarmupError(
            f'{path.name} must hold params objects: {{...}}, [{{...}}, ...] or {{"params": {{...}}, "repeat": N}}'
        )
    return requests
