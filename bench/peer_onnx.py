"""The strongest Python peer of `make bench-serve`: our own pipeline, ported, on the best Python
serving stack we know how to set up.

* The same models: MediaPipe BlazeFace (the same ONNX file) and the same model.onnx, both on
  ONNX Runtime with one intra-op and one inter-op thread per session.
* The same pipeline as `pipeline/src`, version 2 (port kept line by line so the two can be
  compared): OpenCV decode (`cv2.imdecode`, which applies the EXIF orientation; big JPEGs
  reduced by 2, 4 or 8 while decoding, as `model::decode_reduced` does), BlazeFace on one
  reduced copy of the photo (the whole image letterboxed to a square plus overlapping square
  tiles for wide or tall photos, every pass cut from that copy), the same anchors, sigmoid,
  0.7 score threshold, greedy NMS at IoU 0.3, the largest 8 faces, the crop 1.8x the face with
  its centre a quarter face above the face's, shorter side to the model size and centre crop,
  ImageNet normalisation; all faces in one forward pass.
* The serving stack: FastAPI with a **sync** endpoint (`def`: Starlette's threadpool runs it, the
  event loop only reads bodies), uvicorn with uvloop and httptools, one worker process per core,
  OpenCV limited to one thread per worker, a warm-up pass at start.

Run as:

    python bench/peer_onnx.py --model model.onnx --detector blazeface.onnx --port 8091 \
        [--image-size 224] [--workers N]
    python bench/peer_onnx.py ... --predict photo.jpg        # one answer as JSON, no server
    PEER_STAGE_TIMES=50 python bench/peer_onnx.py ... --predict photo.jpg
        # per-stage medians over 50 runs as JSON (decode, detect, crop+fit, classify, serialize)
"""

import argparse
import json
import math
import os
import statistics
import sys
import time

import cv2
import numpy as np
import onnxruntime as ort

# Quiet: the detector file has unused initializers ONNX Runtime warns about at every load.
ort.set_default_logger_severity(3)

CLASSES = ["homer", "marge", "bart", "lisa"]
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

# pipeline/src/faces.rs, constant for constant.
INPUT = 128
HEADS = [(16, 2), (8, 6)]
BOX_VALUES = 16
MIN_SCORE = 0.7
NMS_IOU = 0.3
TILE_ASPECT = 1.3
MAX_TILES = 6
MAX_REDUCED_LONG = 1024.0
CROP_MARGIN = 1.8
MAX_FACES = 8
# pipeline/src/lib.rs: the smallest face BlazeFace finds, as a share of the square it sees.
SMALLEST_FACE = 1.0 / 8.0


F32 = np.float32


def rust_round(v: float) -> int:
    """Rust's `f32::round` (half away from zero); Python's round() rounds half to even."""
    return int(math.floor(v + 0.5)) if v >= 0 else -int(math.floor(-v + 0.5))


def session(path: str) -> ort.InferenceSession:
    """One intra-op and one inter-op thread: the worker processes are the parallelism."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def anchors() -> tuple[np.ndarray, np.ndarray]:
    """Anchor centres (x, y in 0..1) of each head, in the network's output order."""
    out = []
    for cells, per_cell in HEADS:
        cell = np.arange(cells * cells * per_cell) // per_cell
        ax = ((cell % cells) + 0.5) / cells
        ay = ((cell // cells) + 0.5) / cells
        out.append((ax.astype(np.float32), ay.astype(np.float32)))
    return out


def resize(img: np.ndarray, w: int, h: int) -> np.ndarray:
    """fast_image_resize's bilinear convolution widens with the scale when shrinking, as
    OpenCV's INTER_AREA does; enlarging, both are bilinear."""
    if w < img.shape[1] or h < img.shape[0]:
        return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)


def resize_region(img: np.ndarray, left: float, top: float, width: float, height: float, w: int, h: int) -> np.ndarray:
    """model::resize_region: a fractional region resized to w x h. Whole-pixel regions are
    views; others (a tile of the detector's reduced copy, scale about 1) are sampled in between
    with an affine map."""
    if all(float(v).is_integer() for v in (left, top, width, height)):
        x, y = int(left), int(top)
        return resize(img[y : y + int(height), x : x + int(width)], w, h)
    sx, sy = w / width, h / height
    m = np.array([[sx, 0.0, -left * sx], [0.0, sy, -top * sy]], dtype=np.float64)
    return cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def regions(w: int, h: int) -> list[tuple[int, int, int]]:
    """faces.rs `regions`: the whole image, plus square tiles along the long side of wide or
    tall photos."""
    out = [(0, 0, max(w, h))]
    long, short = max(w, h), min(w, h)
    if long > short * TILE_ASPECT:
        tiles = min(max(-(-2 * long // short) - 1, 2), MAX_TILES)
        # f32 arithmetic, as faces.rs does it, so the tiles land on the same pixels.
        stride = F32(long - short) / F32(tiles - 1)
        for t in range(tiles):
            off = rust_round(float(F32(t) * stride))
            out.append((off, 0, short) if w >= h else (0, off, short))
    return out


class Reduced:
    """faces.rs `Reduced`: the photo shrunk once, so that a tile's square is 128 px (never
    enlarged, at most 1024 px long); every pass's input is cut from it."""

    def __init__(self, rgb: np.ndarray):
        h, w = rgb.shape[:2]
        self.w, self.h = w, h
        s = min(INPUT / min(w, h), MAX_REDUCED_LONG / max(w, h), 1.0)
        if s >= 1.0:
            self.img, self.fx, self.fy = rgb, 1.0, 1.0
            return
        rw, rh = max(rust_round(w * s), 1), max(rust_round(h * s), 1)
        self.img = resize(rgb, rw, rh)
        self.fx, self.fy = rw / w, rh / h

    def input(self, region: tuple[int, int, int]) -> tuple[np.ndarray, tuple[float, float, float, float]]:
        """The region as the network's input (scaled so its side is 128 px, padded black, -1),
        and how detections map back: (x, y, decoded px per input px along x, along y)."""
        x, y, side = region
        cw, ch = max(min(side, self.w - x), 1), max(min(side, self.h - y), 1)
        scale = F32(INPUT) / F32(side)
        sw = min(max(rust_round(float(F32(cw) * scale)), 1), INPUT)
        sh = min(max(rust_round(float(F32(ch) * scale)), 1), INPUT)
        small = resize_region(self.img, x * self.fx, y * self.fy, cw * self.fx, ch * self.fy, sw, sh)
        out = np.full((INPUT, INPUT, 3), -1.0, dtype=np.float32)
        out[:sh, :sw] = small.astype(np.float32) / 127.5 - 1.0
        return out[None], (x, y, cw / sw, ch / sh)


class Detector:
    def __init__(self, path: str):
        self.session = session(path)
        self.name = self.session.get_inputs()[0].name
        self.anchors = anchors()

    def run(self, x: np.ndarray) -> np.ndarray:
        """Rows (cx, cy, w, h, score) in 0..1 units of the input, scores >= MIN_SCORE."""
        outs = self.session.run(None, {self.name: x})
        rows = []
        for head, (ax, ay) in enumerate(self.anchors):
            logits = outs[head].reshape(-1)
            boxes = outs[head + 2].reshape(-1, BOX_VALUES)
            score = 1.0 / (1.0 + np.exp(-np.clip(logits, -80.0, 80.0)))
            keep = score >= MIN_SCORE
            b = boxes[keep]
            rows.append(
                np.stack(
                    [ax[keep] + b[:, 0] / INPUT, ay[keep] + b[:, 1] / INPUT, b[:, 2] / INPUT, b[:, 3] / INPUT, score[keep]],
                    axis=1,
                )
            )
        return np.concatenate(rows)

    def detect(self, photo: "Photo") -> tuple[list[dict], int]:
        """Faces (x, y, w, h) in the photo's own pixels, largest first, and the number of
        detector passes."""
        rgb = photo.rgb
        h, w = rgb.shape[:2]
        if w < 16 or h < 16:
            return [], 0
        reduced = Reduced(rgb)
        found = []
        passes = regions(w, h)
        for region in passes:
            x, (rx, ry, sx, sy) = reduced.input(region)
            d = self.run(x)
            d[:, 0] = rx + d[:, 0] * INPUT * sx
            d[:, 1] = ry + d[:, 1] * INPUT * sy
            d[:, 2] *= INPUT * sx
            d[:, 3] *= INPUT * sy
            found.append(d)
        kept = [d.copy() for d in nms(np.concatenate(found))]
        for d in kept:
            d[:4] *= photo.scale
        boxes = [b for b in (clamp(d, photo.width, photo.height) for d in kept) if b]
        # Stable, like Rust's sort_by_key: equal areas keep the NMS (score) order.
        boxes.sort(key=lambda b: -b["w"] * b["h"])
        return boxes[:MAX_FACES], len(passes)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    x0 = max(a[0] - a[2] / 2, b[0] - b[2] / 2)
    y0 = max(a[1] - a[3] / 2, b[1] - b[3] / 2)
    x1 = min(a[0] + a[2] / 2, b[0] + b[2] / 2)
    y1 = min(a[1] + a[3] / 2, b[1] + b[3] / 2)
    inner = max(x1 - x0, 0.0) * max(y1 - y0, 0.0)
    return inner / (a[2] * a[3] + b[2] * b[3] - inner)


def nms(dets: np.ndarray) -> list[np.ndarray]:
    """Greedy, strongest first (stable, as Rust's sort_by)."""
    kept = []
    for d in dets[np.argsort(-dets[:, 4], kind="stable")]:
        if all(iou(k, d) <= NMS_IOU for k in kept):
            kept.append(d)
    return kept


def clamp(d: np.ndarray, w: int, h: int) -> dict | None:
    cx, cy, bw, bh = (float(v) for v in d[:4])
    x0, y0 = max(cx - bw / 2, 0.0), max(cy - bh / 2, 0.0)
    x1, y1 = min(cx + bw / 2, float(w)), min(cy + bh / 2, float(h))
    if x1 - x0 < 1.0 or y1 - y0 < 1.0:
        return None
    return {"x": int(x0), "y": int(y0), "w": int(x1 - x0), "h": int(y1 - y0)}


def face_crop(face: dict, w: int, h: int) -> tuple[int, int, int]:
    """faces.rs `face_crop`: a square 1.8x the face, centred a quarter face higher, in the
    photo's own pixels."""
    side = int(F32(max(face["w"], face["h"])) * F32(CROP_MARGIN))
    cx = face["x"] + face["w"] // 2
    cy = face["y"] + face["h"] // 2 - face["h"] // 4
    side = max(min(side, w, h), 1)
    x = min(max(cx - side // 2, 0), max(w - side, 0))
    y = min(max(cy - side // 2, 0), max(h - side, 0))
    return x, y, side


def crop_with_margin(photo: "Photo", face: dict) -> np.ndarray:
    """The face's crop, cut from the decoded pixels (rounded to whole decoded pixels when the
    photo was decoded reduced)."""
    x, y, side = face_crop(face, photo.width, photo.height)
    k = photo.scale
    x, y, side = rust_round(x / k), rust_round(y / k), max(rust_round(side / k), 1)
    return photo.rgb[y : y + side, x : x + side]


def fit(rgb: np.ndarray, size: int) -> np.ndarray:
    """preprocess.rs `resize_center_crop`: the centred square, resized to the model size."""
    h, w = rgb.shape[:2]
    side = max(min(w, h), 1)
    x, y = (w - side) // 2, (h - side) // 2
    square = rgb[y : y + side, x : x + side]
    return square if side == size else resize(square, size, size)


def normalize(fitted: np.ndarray) -> np.ndarray:
    return ((fitted.astype(np.float32) / 255.0 - MEAN) / STD).transpose(2, 0, 1)


class Photo:
    """pipeline::Photo: upright RGB, the reduction it was decoded at, the photo's own size."""

    def __init__(self, rgb: np.ndarray, scale: int, width: int, height: int):
        self.rgb, self.scale, self.width, self.height = rgb, scale, width, height


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's SOF header, as stored; None when not a JPEG."""
    if data[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            return int.from_bytes(data[i + 7 : i + 9], "big"), int.from_bytes(data[i + 5 : i + 7], "big")
        i += 2 + length
    return None


REDUCED_FLAGS = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}


def decode(data: bytes, image_size: int) -> Photo | None:
    """Upright RGB: IMREAD_COLOR applies the EXIF orientation inside imdecode. A JPEG whose
    shorter side stays at least `min_side` when halved is decoded reduced (libjpeg's DCT
    scaling), as pipeline::decode does."""
    min_side = math.ceil(F32(image_size) / (F32(CROP_MARGIN) * F32(SMALLEST_FACE)))
    size = jpeg_size(data)
    k = next((k for k in (8, 4, 2) if size and min(size) // k >= min_side), 1)
    flags = REDUCED_FLAGS.get(k, cv2.IMREAD_COLOR)
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if bgr is None:
        return None
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    h, w = rgb.shape[:2]
    if size and k > 1:
        # The upright size: the reduced image's orientation says whether EXIF turned it.
        sw, sh = size
        width, height = (sw, sh) if (w >= h) == (sw >= sh) else (sh, sw)
    else:
        width, height = w, h
    return Photo(rgb, k, width, height)


class Pipeline:
    def __init__(self, model: str, detector: str, image_size: int):
        self.detector = Detector(detector)
        self.classifier = session(model)
        self.input = self.classifier.get_inputs()[0].name
        self.size = image_size

    def inputs(self, photo: Photo, faces: list[dict]) -> np.ndarray:
        crops = [crop_with_margin(photo, f) for f in faces] or [photo.rgb]
        return np.stack([normalize(fit(c, self.size)) for c in crops])

    def classify(self, batch: np.ndarray) -> list[dict]:
        probs = self.classifier.run(None, {self.input: batch})[0]
        return [dict(zip(CLASSES, map(float, p))) for p in probs]

    def predict(self, data: bytes) -> dict | None:
        photo = decode(data, self.size)
        if photo is None:
            return None
        faces, _ = self.detector.detect(photo)
        return answer(faces, self.classify(self.inputs(photo, faces)))


def answer(faces: list[dict], verdicts: list[dict]) -> dict:
    """The shape of `/v1/predict`."""
    top = lambda v: max(v, key=v.get)  # noqa: E731
    return {
        "character": top(verdicts[0]),
        "probabilities": verdicts[0],
        "face_detected": bool(faces),
        "faces": [{"box": f, "character": top(v), "probabilities": v} for f, v in zip(faces, verdicts)],
        "model": {"run_id": None, "test_accuracy": None},
    }


def stage_times(p: Pipeline, data: bytes, runs: int) -> dict:
    """Median ms of each stage over `runs` single requests, the service's stage names."""
    names = ["decode+orient", "detect", "crop+fit", "classify", "serialize"]
    samples = {n: [] for n in names}
    passes = 0
    for _ in range(runs):
        t = [time.perf_counter()]
        photo = decode(data, p.size)
        t.append(time.perf_counter())
        faces, passes = p.detector.detect(photo)
        t.append(time.perf_counter())
        batch = p.inputs(photo, faces)
        t.append(time.perf_counter())
        verdicts = p.classify(batch)
        t.append(time.perf_counter())
        json.dumps(answer(faces, verdicts)).encode()
        t.append(time.perf_counter())
        for i, n in enumerate(names):
            samples[n].append((t[i + 1] - t[i]) * 1e3)
    out = {n: statistics.median(v) for n, v in samples.items()}
    out["faces"] = len(faces)
    out["detector_passes"] = passes
    return out


def create_app():
    """uvicorn's factory: each worker process builds its own sessions."""
    from fastapi import Depends, FastAPI, Request
    from fastapi.responses import JSONResponse

    cv2.setNumThreads(1)
    env = os.environ
    p = Pipeline(env["PEER_MODEL"], env["PEER_DETECTOR"], int(env.get("PEER_IMAGE_SIZE", "224")))
    # Warm-up: the first run of each session allocates its arenas.
    warm = np.full((256, 256, 3), 128, np.uint8)
    p.predict(cv2.imencode(".jpg", warm)[1].tobytes())
    app = FastAPI()

    async def body(request: Request) -> bytes:
        # Read on the event loop; the work then runs in the threadpool.
        if request.headers.get("content-type", "").startswith("multipart/"):
            form = await request.form()
            return await form["image"].read()
        return await request.body()

    @app.post("/v1/predict")
    def predict(data: bytes = Depends(body)):
        out = p.predict(data)
        if out is None:
            return JSONResponse({"error": "not an image"}, status_code=415)
        return out

    @app.get("/healthz")
    def healthz():
        return "ok"

    return app


def main() -> None:
    a = argparse.ArgumentParser()
    a.add_argument("--model", required=True)
    a.add_argument("--detector", required=True)
    a.add_argument("--port", type=int, default=8091)
    a.add_argument("--image-size", type=int, default=224)
    a.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    a.add_argument("--predict", help="print the answer for this photo and exit")
    args = a.parse_args()
    os.environ.update(PEER_MODEL=args.model, PEER_DETECTOR=args.detector, PEER_IMAGE_SIZE=str(args.image_size))
    if args.predict:
        cv2.setNumThreads(1)
        p = Pipeline(args.model, args.detector, args.image_size)
        data = open(args.predict, "rb").read()
        runs = int(os.environ.get("PEER_STAGE_TIMES", "0"))
        print(json.dumps(stage_times(p, data, runs) if runs else p.predict(data)))
        return
    import uvicorn

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    uvicorn.run(
        "peer_onnx:create_app",
        factory=True,
        host="127.0.0.1",
        port=args.port,
        workers=args.workers,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
