# batchproxy: one image for every role.
#   docker run -p 9487:9487 -e OPENAI_API_KEY=… -e BATCH_SERVER_API_KEY=… -e POSTGRES_URL=… IMAGE
# runs the web server and the scheduler; `IMAGE web` or `IMAGE scheduler` runs only one of them.

# --- build: the dependencies in a virtualenv ----------------------------------------------
FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY batchproxy batchproxy
COPY requests_app requests_app
COPY batches_app batches_app
COPY ops_app ops_app
# Install the project for its dependencies, then drop the project itself: it runs from /app.
RUN /venv/bin/pip install ".[redis]" && /venv/bin/pip uninstall --yes batchproxy

# --- runtime: the virtualenv, the source, the static files; no compiler, no root ---------
FROM python:3.11-slim-bookworm
ENV PATH="/venv/bin:$PATH" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DATA_DIR=/data \
    PORT=9487 \
    STATIC_MANIFEST=true
RUN useradd --system --uid 10001 --user-group --home-dir /app --shell /usr/sbin/nologin batchproxy \
    && install -d -o batchproxy -g batchproxy /data
COPY --from=build /venv /venv
WORKDIR /app
# Source and static files stay root-owned: the app user writes only to /data.
COPY . .
# The key here exists only for this step; a running container has its own (SECRET_KEY or DATA_DIR).
RUN SECRET_KEY=collectstatic-only-not-a-secret-0123456789abcdef DATA_DIR=/tmp/build \
    python manage.py collectstatic --noinput --verbosity 0 \
    && rm -rf /tmp/build \
    && chmod 0755 docker/entrypoint.sh
USER 10001:10001
VOLUME ["/data"]
EXPOSE 9487
# No curl in a slim image: the standard library asks /healthz.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "docker/healthcheck.py"]
ENTRYPOINT ["docker/entrypoint.sh"]
CMD ["all"]
