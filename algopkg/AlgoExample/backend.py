"""AlgoExample: a handwritten-digit classifier (8x8 images, scikit-learn's digits).

Request:  {"x": [64 pixel values, 0-16]}, or an image: a form upload `image=@digit.png`
          (or the raw image as the body), any size, light ink on dark like the training
          digits; send `invert=1` for dark ink on white paper.
Result:   {"class": 3, "probabilities": [10 floats]}
The model is a 64-64-10 MLP whose weights `train.py` wrote to Model_ZOO.
"""

import io
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from modelserve import Backend, BadRequest, File, Tensor


class algo_backend(Backend):
    inputs = [Tensor("x", "FP32", (64,))]  # over the Open Inference Protocol: 64 pixel values

    def load(self, model_paths: list[str]) -> None:
        weights = np.load(model_paths[0])
        self.w1, self.b1 = weights["w1"], weights["b1"]
        self.w2, self.b2 = weights["w2"], weights["b2"]

    def _pixels(self, params: dict[str, Any]) -> np.ndarray:
        image = params.get("image", params.get("file"))
        if isinstance(image, File):
            return self._image_pixels(image, invert=str(params.get("invert", "")).lower() in ("1", "true"))
        try:
            x = np.asarray(params["x"], dtype=np.float32)
        except KeyError:
            raise BadRequest('params need "x": a list of 64 pixel values, or an image upload') from None
        except (TypeError, ValueError):
            raise BadRequest('"x" must be a list of 64 numbers') from None
        if x.shape != (64,):
            raise BadRequest(f'"x" must hold 64 pixel values, got shape {list(x.shape)}')
        return x / 16.0

    def _image_pixels(self, image: File, invert: bool) -> np.ndarray:
        try:
            gray = Image.open(io.BytesIO(image.data)).convert("L")
        except (UnidentifiedImageError, OSError) as exc:
            raise BadRequest(f"{image.filename or 'the upload'} is not an image Pillow can read: {exc}") from None
        pixels = np.asarray(gray.resize((8, 8), Image.Resampling.BOX), dtype=np.float32).reshape(64)
        return (255.0 - pixels if invert else pixels) / 255.0

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
