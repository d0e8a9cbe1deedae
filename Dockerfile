# tokendealer: OAuth 2.0 client-credentials token service.
#
#   docker build -t tokendealer .
#   docker run -d -p 5000:5000 -e TOKENDEALER_ISSUER=https://auth.example.com \
#       -v tokendealer-keys:/var/lib/tokendealer/keys \
#       -v tokendealer-data:/var/lib/tokendealer/data tokendealer
#   docker exec <container> tokendealer clients add my-service --scope read
#
# Keys and the SQLite store live on volumes, owned by the unprivileged user the service
# runs as (uid 10001). Named volumes inherit that ownership from the image; for a bind
# mount, make the host directory writable by uid 10001 first. With PostgreSQL, set
# TOKENDEALER_DATABASE_URL=postgresql://user:password@host:5432/db and the data volume
# stays empty. Several replicas share PostgreSQL and, for their rate limits, Redis
# (TOKENDEALER_REDIS_URL=redis://host:6379/0): both extras are installed, and OpenTelemetry
# (tracing is on when OTEL_EXPORTER_OTLP_ENDPOINT is set). Set
# TOKENDEALER_ISSUER to the URL clients reach the service at: it is the `iss` of every
# token and the default audience.

# -- build: the package and its PostgreSQL, Redis and OpenTelemetry extras, in a venv ----
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.rst ./
COPY tokendealer ./tokendealer
RUN python -m venv /opt/tokendealer \
    && /opt/tokendealer/bin/pip install ".[postgres,redis,otel]"

# -- runtime: the environment only, no sources, no build tools, not root ---------------
FROM python:3.11-slim
LABEL org.opencontainers.image.title="tokendealer" \
      org.opencontainers.image.description="OAuth 2.0 client-credentials token service issuing JWT access tokens" \
      org.opencontainers.image.licenses="MIT"

ENV PATH=/opt/tokendealer/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TOKENDEALER_KEYS_DIR=/var/lib/tokendealer/keys \
    TOKENDEALER_DATABASE_URL=sqlite:////var/lib/tokendealer/data/tokendealer.db

RUN groupadd --system --gid 10001 tokendealer \
    && useradd --system --uid 10001 --gid tokendealer --home-dir /var/lib/tokendealer \
       --no-create-home --shell /usr/sbin/nologin tokendealer \
    && mkdir -p /var/lib/tokendealer/keys /var/lib/tokendealer/data \
    && chown -R tokendealer:tokendealer /var/lib/tokendealer \
    && chmod 0700 /var/lib/tokendealer/keys

COPY --from=build /opt/tokendealer /opt/tokendealer

USER 10001:10001
WORKDIR /var/lib/tokendealer
VOLUME ["/var/lib/tokendealer/keys", "/var/lib/tokendealer/data"]
EXPOSE 5000

# Liveness through the standard library: the slim image has no curl. Any failure
# (refused connection, timeout, non-2xx answer) raises, and python exits 1: unhealthy.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/healthz', timeout=3)"]

# The same server as `tokendealer serve` anywhere else (uvicorn, one worker per core).
CMD ["tokendealer", "serve", "--host", "0.0.0.0", "--port", "5000", "--workers", "2"]
