"""The benchmark workload: a 64 -> 2048 -> 2048 -> 10 float32 MLP with seeded weights.

Batch 1 is memory-bound on the 16 MiB middle matrix, so batching pays as on a GPU.
Every server in `bench/` answers with `predict` from this file, so results are comparable.
"""

from __future__ import annotations

from typing import Any

import numpy as np

SIZES = (64, 2048, 2048, 10)


class MLP:
    def __init__(self, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.layers = [
            (
                (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(np.float32),
                np.zeros(n_out, dtype=np.float32),
            )
            for n_in, n_out in zip(SIZES[:-1], SIZES[1:], strict=True)
        ]

    def forward(self, x: np.ndarray) -> np.ndarray:
        for i, (w, b) in enumerate(self.layers):
            x = x @ w + b
            if i < len(self.layers) - 1:
                np.maximum(x, 0.0, out=x)
        return x

    def predict(self, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """JSON params `{"x": [64 floats]}` -> `{"class": int, "score": float}`, one per params."""
        x = np.asarray([p["x"] for p in batch], dtype=np.float32).reshape(len(batch), SIZES[0])
        logits = self.forward(x)
        classes = logits.argmax(axis=1)
        return [{"class": int(c), "score": round(float(row[c]), 4)} for c, row in zip(classes, logits, strict=True)]


def sample_params(seed: int = 1) -> dict[str, Any]:
    return {"x": np.random.default_rng(seed).random(SIZES[0]).round(4).tolist()}
