"""No model, with `infer_batch`: the runtime batches its requests; each answer is a constant."""

from modelserve import Backend

RESULT = {"class": 0, "score": 0.0}


class NoopBatched(Backend):
    def infer(self, params):
        return RESULT

    def infer_batch(self, batch):
        return [RESULT] * len(batch)
