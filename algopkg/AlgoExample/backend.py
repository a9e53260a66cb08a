"""AlgoExample: a handwritten-digit classifier (8x8 images, scikit-learn's digits).

Request:  {"x": [64 pixel values, 0-16]}
Result:   {"class": 3, "probabilities": [10 floats]}
The model is a 64-64-10 MLP whose weights `train.py` wrote to Model_ZOO.
"""

from typing import Any

import numpy as np

from modelserve import Backend, BadRequest


class algo_backend(Backend):
    def load(self, model_paths: list[str]) -> None:
        weights = np.load(model_paths[0])
        self.w1, self.b1 = weights["w1"], weights["b1"]
        self.w2, self.b2 = weights["w2"], weights["b2"]

    def _pixels(self, params: dict[str, Any]) -> np.ndarray:
        try:
            x = np.asarray(params["x"], dtype=np.float32)
        except KeyError:
            raise BadRequest('params need "x": a list of 64 pixel values') from None
        except (TypeError, ValueError):
            raise BadRequest('"x" must be a list of 64 numbers') from None
        if x.shape != (64,):
            raise BadRequest(f'"x" must hold 64 pixel values, got shape {list(x.shape)}')
        return x / 16.0

    def _forward(self, x: np.ndarray) -> np.ndarray:
        hidden = np.maximum(x @ self.w1 + self.b1, 0.0)
        logits = hidden @ self.w2 + self.b2
        exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return exp / exp.sum(axis=-1, keepdims=True)

    def infer(self, params: dict[str, Any]) -> dict[str, Any]:
        return self.infer_batch([params])[0]

    def infer_batch(self, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        probabilities = self._forward(np.stack([self._pixels(p) for p in batch]))
        return [{"class": int(p.argmax()), "probabilities": [round(float(v), 6) for v in p]} for p in probabilities]
