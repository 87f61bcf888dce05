# accounton-relay: the SMTP relay (`relay`, the default command) and the admin CLI and web server
# (`relay-admin`, `relay-admin serve`) in one image. README "Operating" says how to run it.
#
#   docker build -t accounton-relay:0.1.0 .
#   docker run -d -p 2525:2525 -v relay-data:/data -v relay-keys:/keys \
#     -e RELAY_HOSTNAME=relay.platform.example \
#     -e RELAY_UPSTREAM='smtp://user:pass@smtp.example.net:587?tls=required' accounton-relay:0.1.0
#   docker run --rm -it -v relay-data:/data -v relay-keys:/keys accounton-relay:0.1.0 relay-admin tenant list
#
# Two stages: `build` makes the project's wheel and installs it, with its dependencies from PyPI, into
# a virtual environment; the runtime stage copies only that environment. No compiler, pip cache,
# source tree or wheel reaches the runtime image. tests/test_container.py lints this file and runs its
# commands (the wheel build, the entrypoint with these ENV values, the health check) without a
# container engine.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------- build: the wheel, installed in a venv
FROM ${PYTHON_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
# Only what the wheel is built from (.dockerignore keeps everything else out of the context).
COPY pyproject.toml README.md LICENSE ./
COPY relay ./relay
COPY admin ./admin

# Every dependency ships a manylinux wheel (cryptography, psycopg[binary] with its own libpq,
# pydantic-core), so nothing is compiled and no Debian package is needed.
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
    && python -m venv /opt/relay \
    && /opt/relay/bin/pip install --no-cache-dir /wheels/accounton_relay-*.whl

# ---------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="accounton-relay" \
      org.opencontainers.image.description="Outbound SMTP relay: each tenant's verified sender, DKIM-signed for its domain" \
      org.opencontainers.image.licenses="MIT"

# A fixed, unprivileged UID/GID, so that volumes prepared on the host (chown 10001:10001) and
# Kubernetes' runAsNonRoot agree with the image. /data holds the store (SQLite) and the outbox;
# /keys the DKIM private keys, on a volume of their own so they are backed up and secured on their
# own terms. Both 0700, as the relay wants its keys directory. --no-log-init: no huge sparse lastlog
# for a high UID.
RUN groupadd --gid 10001 relay \
    && useradd --no-log-init --uid 10001 --gid 10001 --no-create-home --home-dir /data \
       --shell /usr/sbin/nologin relay \
    && install -d -o 10001 -g 10001 -m 0700 /data /data/outbox /keys

# The code stays root-owned and read-only for the relay's user.
COPY --from=build /opt/relay /opt/relay

# Defaults for a container: listen on every interface, JSON logs on stdout/stderr, metrics and the
# health check on 9125, the store and the outbox on /data, the keys on /keys. RELAY_HOSTNAME has no
# default here: with an smtp:// or smtps:// upstream set it to the relay's public name, or it refuses
# to start (a container's own hostname is no FQDN).
ENV PATH=/opt/relay/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    RELAY_LISTEN=0.0.0.0:2525 \
    RELAY_ADMIN_LISTEN=0.0.0.0:8025 \
    RELAY_METRICS_LISTEN=0.0.0.0:9125 \
    RELAY_LOG_FORMAT=json \
    RELAY_DATABASE=sqlite:////data/relay.db \
    RELAY_KEYS_DIR=/keys \
    RELAY_UPSTREAM=outbox:/data/outbox

WORKDIR /data
USER 10001:10001
VOLUME ["/data", "/keys"]

# 2525 SMTP (relay), 8025 admin web server (relay-admin serve), 9125 /metrics, /healthz, /readyz (relay)
EXPOSE 2525 8025 9125

# SIGTERM drains: the listener closes, messages in flight finish within RELAY_SHUTDOWN_GRACE (30s),
# so give the container more than that to stop (docker stop -t 45, compose stop_grace_period).
STOPSIGNAL SIGTERM

# Alive, not ready: /healthz answers while the process serves. No curl in a slim image: Python asks,
# on the port RELAY_METRICS_LISTEN names. Any error or a status other than 2xx/3xx exits 1 (unhealthy).
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('RELAY_METRICS_LISTEN', '0.0.0.0:9125').rpartition(':')[2]; urllib.request.urlopen('http://127.0.0.1:' + port + '/healthz', timeout=3)"]

CMD ["relay"]
