"""No model: the original template's shape (`__init__(model_path)`, `_model_init`, `_model_inference`),
answering a constant, so a request costs only the serving path."""

RESULT = {"class": 0, "score": 0.0}


class algo_backend:  # noqa: N801 - the original template's name
    def __init__(self, model_path):
        self.info_msg = "noop"
        self._model_init()

    def _model_init(self, model_path_lst=None):
        self.ready = True

    def _model_inference(self, param_dict):
        return RESULT
