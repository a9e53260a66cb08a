"""The benchmark MLP served by modelserve: `infer_batch` lets the runtime batch requests."""

from typing import Any

from modelserve import Backend, BadRequest

from .mlp import MLP


class BenchMLP(Backend):
    def load(self, model_paths: list[str]) -> None:
        self.mlp = MLP()

    def infer(self, params: dict[str, Any]) -> dict[str, Any]:
        return self.infer_batch([params])[0]

    def infer_batch(self, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        try:
            return self.mlp.predict(batch)
        except (KeyError, TypeError, ValueError) as exc:
            raise BadRequest(f'params need "x": 64 numbers ({exc})') from None
