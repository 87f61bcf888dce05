# accounton-relay: the SMTP relay (`relay`, default command) and the admin CLI (`relay-admin`).
# Build: docker build -t accounton-relay .
# Run:   docker run -p 2525:2525 -v relay-data:/data \
#          -e RELAY_HOSTNAME=relay.platform.example \
#          -e RELAY_UPSTREAM=smtp://user:pass@smtp.example.net:587?tls=required accounton-relay
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    RELAY_LISTEN=0.0.0.0:2525 \
    RELAY_DATABASE=sqlite:////data/relay.db \
    RELAY_KEYS_DIR=/data/keys \
    RELAY_UPSTREAM=outbox:/data/outbox

WORKDIR /app
COPY pyproject.toml README.md LICENSE ./
COPY relay ./relay
COPY admin ./admin
RUN pip install --no-cache-dir . \
    && useradd --system --home-dir /data --shell /usr/sbin/nologin relay \
    && install -d -o relay -g relay -m 0700 /data /data/keys

# Keys and the store live on the volume; the process never runs as root.
USER relay
VOLUME ["/data"]
EXPOSE 2525 8025
CMD ["relay"]
