#!/usr/bin/env bash
# Smoke-runs the three images built by scripts/images.sh, as a cluster would use them:
#   operator   --help (the static binary starts on an empty base);
#   trainer    --help, every CUDA library libtorch_cuda.so needs resolves, then a real (tiny, CPU)
#              training run from a synthetic dataset into a mounted store;
#   inference  no shell, no libtorch, every library resolves; serves the model the trainer image
#              just wrote (or, when the trainer is not among IMAGES, a random-weight model of the
#              real architecture), answers /readyz and a prediction through /v1/predict.
# IMAGES selects which (default: all three), as for scripts/images.sh.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
repo="${IMAGE_REPO:-localhost/face2simpson}"
tag="${IMAGE_TAG:-dev}"
export CONTAINERS_CONF="$root/images/containers.conf"
port="${SMOKE_PORT:-18080}"
store="$root/var/images/smoke-store"
pretrained="${FACE2SIMPSON_DEPS:-$root/.deps}/pretrained/mobilenet_v2-b0353104.pth"

log() { printf '\033[1msmoke:\033[0m %s\n' "$*" >&2; }
fail() { printf '\033[1;31msmoke: FAILED:\033[0m %s\n' "$*" >&2; exit 1; }
run() { podman run --rm --network=host --read-only --cap-drop=ALL --security-opt=no-new-privileges "$@"; }
images=" ${IMAGES:-operator inference trainer} "
want() { [[ "$images" == *" $1 "* ]]; }

if want operator; then
  log "operator --help"
  help=$(run "$repo/operator:$tag" --help) && grep -q "Schedules training" <<<"$help" || fail "operator --help"

  log "operator: the static binary resolves names on an empty base (localhost through /etc/hosts)"
  kube="$root/var/images/smoke-kube"
  mkdir -p "$kube"
  cat >"$kube/config" <<'YAML'
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://localhost:1"}}]
users: [{name: u, user: {token: smoke}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
YAML
  chmod 0644 "$kube/config"
  out=$(run -v "$kube:/kube:ro" -e KUBECONFIG=/kube/config "$repo/operator:$tag" --admin-addr 127.0.0.1:0 2>&1 || true)
  grep -q "Connection refused" <<<"$out" || fail "operator against a closed localhost port: $out"
fi

if want trainer; then
  [[ -f "$pretrained" ]] || fail "no ImageNet weights at $pretrained: run make setup"
  log "trainer --help"
  help=$(run "$repo/trainer:$tag" --help) && grep -q "datagen" <<<"$help" || fail "trainer --help"

  log "trainer: the binary loads libtorch_cuda.so, and every library that needs is in the image"
  libs=$(run --entrypoint ldd "$repo/trainer:$tag" /usr/local/bin/face2simpson-trainer)
  grep -q "libtorch_cuda.so => /opt/face2simpson/torch/lib/" <<<"$libs" || fail "the trainer does not load libtorch_cuda.so"
  missing=$(run --entrypoint ldd "$repo/trainer:$tag" /opt/face2simpson/torch/lib/libtorch_cuda.so | grep "not found" || true)
  [[ -z "$missing" && $(grep -c "not found" <<<"$libs") == 0 ]] || fail "unresolved libraries: $missing"
fi

if want inference; then
  log "inference: no shell, no libtorch, every library the binary and ONNX Runtime need resolves"
  # No shell or ldd in the image: the dynamic loader itself lists what a program would load.
  loader=/lib64/ld-linux-x86-64.so.2
  ! run --entrypoint /bin/sh "$repo/inference:$tag" -c true >/dev/null 2>&1 || fail "the inference image has a shell"
  for f in /usr/local/bin/face2simpson-inference /opt/face2simpson/onnxruntime/libonnxruntime.so; do
    libs=$(run --entrypoint "$loader" "$repo/inference:$tag" --list "$f") || fail "$f does not load: $libs"
    ! grep -q "not found" <<<"$libs" || fail "unresolved libraries for $f: $libs"
    ! grep -qi "torch\|cuda" <<<"$libs" || fail "$f loads libtorch or CUDA: $libs"
  done
fi

if want trainer; then
  log "trainer: synthetic dataset and a 1-epoch 64 px training run (CPU) into $store"
  rm -rf "$store" && mkdir -p "$store/pretrained"
  cp "$pretrained" "$store/pretrained/"
  chown -R 65532:65532 "$store"
  run -v "$store:/store" "$repo/trainer:$tag" datagen --storage /store --per-class 24 --size 96 --seed 3 >/dev/null
  run -v "$store:/store" --tmpfs /tmp "$repo/trainer:$tag" train --storage /store --run-id smoke \
    --image-size 64 --epochs 1 --device auto --promote >/dev/null
  [[ -s "$store/runs/smoke/model.safetensors" && -s "$store/runs/smoke/model.onnx" && -s "$store/runs/smoke/metrics.json" ]] || fail "trainer wrote no model"
fi

if want inference; then
  if ! want trainer; then
    log "inference: a random-weight model of the real architecture (the trainer image is not built here)"
    rm -rf "$store" && mkdir -p "$store/runs/smoke"
    cargo run --release -q -p face2simpson-inference --example random_model -- "$store/runs/smoke/model.onnx" 224
    chmod -R a+rX "$store"
  fi
  log "inference: serving that model on 127.0.0.1:$port"
  name="face2simpson-smoke-$$"
  podman run -d --rm --name "$name" --network=host --read-only --cap-drop=ALL --security-opt=no-new-privileges \
    -v "$store:/store:ro" "$repo/inference:$tag" \
    --model file:///store/runs/smoke/model.safetensors --listen "127.0.0.1:$port" >/dev/null
  trap 'podman rm -f "$name" >/dev/null 2>&1 || true' EXIT
  for _ in $(seq 120); do
    curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
    sleep 1
  done
  curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null || { podman logs "$name" >&2; fail "inference never became ready"; }
  answer=$(curl -fsS -F image=@inference/tests/fixtures/astronaut.png "http://127.0.0.1:$port/v1/predict")
  python3 - "$answer" <<'PY' || fail "unexpected prediction: $answer"
import json, sys
a = json.loads(sys.argv[1])
assert a["character"] in {"homer", "marge", "bart", "lisa"}, a
assert abs(sum(a["probabilities"].values()) - 1) < 1e-3, a
print(f"smoke: astronaut.png -> {a['character']} (face detected: {a['face_detected']})", file=sys.stderr)
PY
fi
log "passed:$images"
