# jetmail worker image: `jetmail worker QUEUE...` on ECS Fargate (and anywhere else).
# Build from the repository root:
#   docker build -f infra/worker.Dockerfile -t jetmail-worker:0.1.0 .
FROM python:3.12.12-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# A fixed, unprivileged user: the worker needs no root and writes nothing to disk.
RUN groupadd --system --gid 10001 jetmail \
    && useradd --system --uid 10001 --gid jetmail --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin jetmail

# The dependencies exactly as uv.lock pins them (infra/worker-requirements.txt is exported from it by
# `make lock`), each checked against its hash; then the package itself without resolving anything again.
# The sources are removed after the install so only site-packages and the `jetmail` command remain.
WORKDIR /src
COPY infra/worker-requirements.txt ./
RUN pip install --no-cache-dir --require-hashes --no-deps -r worker-requirements.txt
COPY pyproject.toml README.md LICENSE ./
COPY shared/ shared/
RUN pip install --no-cache-dir --no-deps . \
    && rm -rf /src

WORKDIR /app
USER 10001:10001

# `jetmail worker --health-port 8081` serves GET /healthz (bound to 127.0.0.1 by default,
# which is where the health checks below look).
EXPOSE 8081
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8081/healthz', timeout=3)"]

# SIGTERM (docker stop, ECS deployments) makes the worker stop pulling, finish
# or nak its in-flight jobs and exit; give it up to the ECS StopTimeout (120 s).
STOPSIGNAL SIGTERM
ENTRYPOINT ["jetmail"]
CMD ["worker", "--health-port", "8081", "email_transactional", "email_campaign", "email_ab_test", "email_maintenance", "webhooks"]
