# oidownload in a container: a lean two-stage build, non-root, ENTRYPOINT oidownload.
# By default the image carries Pillow-SIMD compiled for AVX2 (about 18% faster end to
# end); build with --build-arg PILLOW=mainline for CPUs without AVX2 (the :mainline tag).
# The SIMD image refuses to start on a CPU without AVX2 instead of dying of SIGILL.
# CI builds it against a local stand-in base: --build-arg BASE=...
ARG BASE=python:3.12-slim

FROM ${BASE} AS build
ARG PILLOW=simd
ARG PILLOW_SIMD_VERSION=12.1.1.post0
WORKDIR /src
# Compilers and headers live in this stage only.
# hadolint ignore=DL3008
RUN if [ "$PILLOW" = simd ]; then \
        apt-get update \
        && apt-get install -y --no-install-recommends gcc libc6-dev libjpeg62-turbo-dev zlib1g-dev libwebp-dev \
        && { python -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(sysconfig.get_paths()["include"] + "/Python.h"))' \
             || apt-get install -y --no-install-recommends python3-dev; } \
        && rm -rf /var/lib/apt/lists/*; \
    fi
COPY pyproject.toml README.md ./
COPY oidownload ./oidownload
# Only Pillow-SIMD is compiled (--no-binary pillow-simd); its build tools come as wheels.
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check . \
    && if [ "$PILLOW" = simd ]; then \
        /opt/venv/bin/pip uninstall -y pillow \
        && CC="cc -mavx2" /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check \
            --no-binary pillow-simd "pillow-simd==${PILLOW_SIMD_VERSION}"; \
    fi \
    && find /opt/venv -name '__pycache__' -prune -exec rm -rf {} +

FROM ${BASE}
ARG PILLOW=simd
LABEL org.opencontainers.image.title="oidownload" \
      org.opencontainers.image.description="Verified, resumable Open Images downloader"
# Pillow-SIMD links the system's libjpeg-turbo, zlib and libwebp; mainline Pillow's
# wheel carries its own.
# hadolint ignore=DL3008
RUN if [ "$PILLOW" = simd ]; then \
        apt-get update \
        && apt-get install -y --no-install-recommends libjpeg62-turbo zlib1g libwebp7 libwebpmux3 libwebpdemux2 \
        && rm -rf /var/lib/apt/lists/*; \
    fi
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    OIDOWNLOAD_CACHE=/tmp/oidownload-cache \
    OIDOWNLOAD_PILLOW_BUILD=${PILLOW}
# A numeric UID, so Kubernetes' runAsNonRoot can verify it without /etc/passwd.
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /data --shell /usr/sbin/nologin oidownload \
    && mkdir -p /data \
    && chown 10001:10001 /data
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
ENTRYPOINT ["oidownload"]
CMD ["--help"]
