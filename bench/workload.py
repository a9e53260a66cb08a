"""The workload every server computes: the MLP of algopkg/BenchMLP, and its in-process speed limit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from algopkg.BenchMLP.mlp import MLP, sample_params

BATCHES = (8, 16, 32, 64)


def sample() -> dict[str, Any]:
    return sample_params()


def reference(params: dict[str, Any]) -> dict[str, Any]:
    """What every server must answer for `params`."""
    return MLP().predict([params])[0]


def items_per_s(model: MLP, batch: int, seconds: float) -> float:
    """Items/s of `model.forward` on a fixed batch, in a loop bounded by `seconds`."""
    x = np.asarray([sample_params()["x"]] * batch, dtype=np.float32)
    model.forward(x)  # first call: page in the weights
    done, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        model.forward(x)
        done += batch
    return done / elapsed


def _by_batch(seconds: float) -> dict[int, float]:
    model = MLP()
    return {b: items_per_s(model, b, seconds) for b in (1, *BATCHES)}


def in_process(seconds: float) -> dict[str, Any]:
    """Items/s at batch 1 and at the best batch of BATCHES (the limit a batching server could reach).

    Measured in a fresh process with 1 BLAS thread and with one per core, taking the better of the
    two for each batch: on a busy machine a multi-threaded BLAS loses much of its speed at batch 1.
    """
    runs: dict[int, dict[int, float]] = {}
    for threads in sorted({1, os.cpu_count() or 1}):
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads)}
        cmd = [sys.executable, __file__, str(seconds)]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, timeout=30 + 10 * seconds)
        runs[threads] = {int(b): rate for b, rate in json.loads(out.stdout).items()}
    best_of = {b: max(runs, key=lambda t: runs[t][b]) for b in (1, *BATCHES)}  # batch -> its best thread count
    best = max(BATCHES, key=lambda b: runs[best_of[b]][b])
    return {
        "batch1": runs[best_of[1]][1],
        "batch1_threads": best_of[1],
        "best": runs[best_of[best]][best],
        "best_batch": best,
        "best_threads": best_of[best],
        "by_threads": runs,
    }


if __name__ == "__main__":  # one measurement, in this process: `python bench/workload.py SECONDS`
    print(json.dumps(_by_batch(float(sys.argv[1]))))
