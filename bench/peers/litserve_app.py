"""LitServe peer: `python -m bench.peers.litserve_app PORT`, run from the repo root.

Two inference workers on CPU (`workers_per_device=2`), each batching up to 32 requests; run with
OMP_NUM_THREADS=1 (bench's PEER_ENV) so the two workers' BLAS pools do not oversubscribe the cores.
"""

from __future__ import annotations

import sys
from typing import Any

import litserve as ls

from algopkg.BenchMLP.mlp import MLP


class MLPAPI(ls.LitAPI):  # type: ignore[misc]
    def setup(self, device: str) -> None:
        self.mlp = MLP()

    # Unannotated on purpose: LitServe reads an annotation as a FastAPI parameter type, and parses
    # the JSON body only for an unannotated `request` (or returns a plain Response when unannotated).
    def decode_request(self, request):  # type: ignore[no-untyped-def]  # noqa: ANN001, ANN201
        return request

    def batch(self, inputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return inputs

    def predict(self, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return self.mlp.predict(batch)

    def unbatch(self, output: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return output

    def encode_response(self, output):  # type: ignore[no-untyped-def]  # noqa: ANN001, ANN201
        return output


def main() -> None:
    api = MLPAPI(max_batch_size=32, batch_timeout=0.001, api_path="/mlp")
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=2)
    server.run(host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", generate_client_file=False)


if __name__ == "__main__":
    main()
