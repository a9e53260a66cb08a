"""The benchmark MLP as a package written for the original runtime: no `infer_batch`, one
request at a time through `_model_inference` (what most users bring)."""

import socket

from .mlp import MLP


class algo_backend:  # noqa: N801 - the original template's name
    def __init__(self, model_path):
        self.info_msg = f"Result from {socket.gethostname()}"
        self._model_init()

    def _model_init(self, model_path_lst=None):
        self.mlp = MLP()

    def _model_inference(self, param_dict):
        return self.mlp.predict([param_dict])[0]
