"""Drives the service's Open Inference Protocol (v2) routes with NVIDIA's official client,
tritonclient[http] from PyPI, and prints what it saw as one JSON object for tests/oip.rs.

Usage: oip_client.py HOST:PORT MODEL_NAME PHOTO

The photo is sent twice: as binary tensor data (what tritonclient does for BYTES by default,
with the Inference-Header-Content-Length extension) and as a base64 string in JSON `data`.
"""

import base64
import importlib.metadata
import json
import sys

import numpy as np
import tritonclient.http as httpclient


def infer(client, model, photo, binary):
    """One inference: the photo as the BYTES input `image`, shape [1]."""
    if binary:
        data = np.array([photo], dtype=np.object_)
    else:
        # Without binary data tritonclient writes BYTES elements as strings; the server reads
        # them as base64, the usual way to carry bytes in JSON.
        data = np.array([base64.b64encode(photo)], dtype=np.object_)
    image = httpclient.InferInput("image", [1], "BYTES")
    image.set_data_from_numpy(data, binary_data=binary)
    outputs = [
        httpclient.InferRequestedOutput("probabilities", binary_data=binary),
        httpclient.InferRequestedOutput("character", binary_data=binary),
        httpclient.InferRequestedOutput("box", binary_data=False),
    ]
    result = client.infer(model, [image], outputs=outputs, request_id="oip-client")
    response = result.get_response()
    return {
        "probabilities": result.as_numpy("probabilities").astype(float).tolist(),
        "character": [
            c.decode() if isinstance(c, bytes) else str(c)
            for c in result.as_numpy("character").tolist()
        ],
        "box": result.as_numpy("box").tolist(),
        "parameters": response.get("parameters", {}),
        "model_version": response.get("model_version"),
        "id": response.get("id"),
    }


def main():
    url, model, photo_path = sys.argv[1:4]
    with open(photo_path, "rb") as f:
        photo = f.read()
    client = httpclient.InferenceServerClient(url=url, network_timeout=120.0)
    unknown_model_ready = client.is_model_ready(model + "-nonexistent")
    report = {
        "tritonclient": importlib.metadata.version("tritonclient"),
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(model),
        "unknown_model_ready": unknown_model_ready,
        "metadata": client.get_model_metadata(model),
        "binary": infer(client, model, photo, binary=True),
        "json": infer(client, model, photo, binary=False),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
