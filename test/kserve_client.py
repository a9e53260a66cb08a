"""KServe's InferenceRESTClient against one section, run by test_protocol in .venv-kserve (the kserve
package pins protobuf 6 and psutil 5, which Ray 2.60 cannot share a virtualenv with).

Usage: kserve_client.py BASE_URL MODEL  ->  prints one JSON line of what the client got back.
"""

import asyncio
import json
import sys

import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest
from kserve.inference_client import RESTConfig


async def main(base_url: str, model: str) -> dict:
    client = InferenceRESTClient(RESTConfig(protocol="v2", retries=1, timeout=30))
    try:
        live = await client.is_server_live(base_url)
        ready = await client.is_model_ready(base_url, model)
        x = InferInput("x", [1, 4], "FP32")
        x.set_data_from_numpy(np.array([[1, 2, 3, 4]], dtype=np.float32), binary_data=True)
        n = InferInput("n", [1, 1], "INT64")
        n.set_data_from_numpy(np.array([[5]], dtype=np.int64), binary_data=False)
        label = InferInput("label", [1], "BYTES")
        label.set_data_from_numpy(np.array([b"ks"], dtype=np.object_), binary_data=True)
        request = InferRequest(model_name=model, infer_inputs=[x, n, label], request_id="kserve-1")
        response = await client.infer(base_url, request, model_name=model)
        outputs = {o.name: o.as_numpy() for o in response.outputs}
    finally:
        await client.close()
    return {
        "live": live,
        "ready": ready,
        "y": outputs["y"].tolist(),
        "count": outputs["count"].tolist(),
        "text": [v.decode() if isinstance(v, bytes) else v for v in outputs["text"].tolist()],
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2]))))
