# oidownload in a container: a lean two-stage build, non-root, ENTRYPOINT oidownload.
# CI builds it against a local stand-in base: --build-arg BASE=...
ARG BASE=python:3.12-slim

FROM ${BASE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY oidownload ./oidownload
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check . \
    && find /opt/venv -name '__pycache__' -prune -exec rm -rf {} +

FROM ${BASE}
LABEL org.opencontainers.image.title="oidownload" \
      org.opencontainers.image.description="Verified, resumable Open Images downloader"
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    OIDOWNLOAD_CACHE=/tmp/oidownload-cache
# A numeric UID, so Kubernetes' runAsNonRoot can verify it without /etc/passwd.
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /data --shell /usr/sbin/nologin oidownload \
    && mkdir -p /data \
    && chown 10001:10001 /data
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
ENTRYPOINT ["oidownload"]
CMD ["--help"]
