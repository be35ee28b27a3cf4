"""The peer of `make bench-serve`: the service a Python user would write in an afternoon.

FastAPI + OpenCV's Haar cascade face detector + ONNX Runtime, serving the same model.onnx with
the same preprocessing contract (shorter side to the model size, centre crop, ImageNet
normalisation) and the same answer shape. Run as:

    python bench/peer.py --model model.onnx --port 8090 [--image-size 224]
"""

import argparse

import cv2
import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI, File, Request, UploadFile
from fastapi.responses import JSONResponse

CLASSES = ["homer", "marge", "bart", "lisa"]
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def build(model_path: str, image_size: int) -> FastAPI:
    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    app = FastAPI()

    def preprocess(rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        s = min(h, w)
        y, x = (h - s) // 2, (w - s) // 2
        crop = cv2.resize(rgb[y : y + s, x : x + s], (image_size, image_size), interpolation=cv2.INTER_LINEAR)
        x = (crop.astype(np.float32) / 255.0 - MEAN) / STD
        return x.transpose(2, 0, 1)

    def classify(data: bytes) -> dict:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            return None
        gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
        faces = cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(24, 24))
        rgb = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        crops = [rgb[y : y + h, x : x + w] for (x, y, w, h) in faces] or [rgb]
        batch = np.stack([preprocess(c) for c in crops])
        probs = session.run(None, {session.get_inputs()[0].name: batch})[0]
        verdicts = [dict(zip(CLASSES, map(float, p))) for p in probs]
        best = max(verdicts[0], key=verdicts[0].get)
        return {
            "character": best,
            "probabilities": verdicts[0],
            "face_detected": len(faces) > 0,
            "faces": [
                {"box": {"x": int(x), "y": int(y), "w": int(w), "h": int(h)}, "probabilities": v}
                for (x, y, w, h), v in zip(faces, verdicts)
            ],
        }

    @app.post("/v1/predict")
    async def predict(request: Request):
        # Raw image bodies, as the benchmark sends them (multipart works as well).
        if request.headers.get("content-type", "").startswith("multipart/"):
            form = await request.form()
            data = await form["image"].read()
        else:
            data = await request.body()
        out = classify(data)
        if out is None:
            return JSONResponse({"error": "not an image"}, status_code=415)
        return out

    @app.get("/healthz")
    def healthz():
        return "ok"

    return app


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--port", type=int, default=8090)
    p.add_argument("--image-size", type=int, default=224)
    a = p.parse_args()
    uvicorn.run(build(a.model, a.image_size), host="127.0.0.1", port=a.port, log_level="warning")


if __name__ == "__main__":
    main()
