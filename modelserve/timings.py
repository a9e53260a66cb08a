"""`controller.py apply --timings`: where an apply's time went, one stderr line per phase."""

from __future__ import annotations

import sys
import time


class Phases:
    """Marks the end of each phase; prints `timing: <phase> <seconds>` when enabled."""

    def __init__(self, enabled: bool = False) -> None:
        self.enabled = enabled
        self._start = self._last = time.monotonic()

    def mark(self, phase: str) -> None:
        now = time.monotonic()
        if self.enabled:
            print(f"timing: {phase:<44} {now - self._last:6.2f} s", file=sys.stderr, flush=True)
        self._last = now

    def total(self) -> None:
        if self.enabled:
            print(f"timing: {'total':<44} {time.monotonic() - self._start:6.2f} s", file=sys.stderr, flush=True)
