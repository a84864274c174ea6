# edge: HTTP/1.1 edge reverse proxy.
#
#   docker build -t edge .
#   docker run --rm -p 127.0.0.1:8080:8080 -p 127.0.0.1:8443:8443 -v edge-state:/var/lib/edge edge
#
# Without REDIS_URL the container runs in embedded mode (private redis-server
# child, data in /var/lib/edge). Pass -e REDIS_URL=redis://... for an
# external Redis.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# redis-server is only used in embedded mode (REDIS_URL unset).
RUN apt-get update \
    && apt-get install -y --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system edge \
    && useradd --system --gid edge --home-dir /var/lib/edge --no-create-home \
       --shell /usr/sbin/nologin edge \
    && mkdir -p /var/lib/edge \
    && chown edge:edge /var/lib/edge \
    && chmod 0750 /var/lib/edge

WORKDIR /usr/src/edge
COPY pyproject.toml README.md constraints.txt ./
COPY edge ./edge
# constraints.txt pins every runtime package: the same commit builds the same image
RUN pip install --no-cache-dir -c constraints.txt . \
    && rm -rf /usr/src/edge

WORKDIR /var/lib/edge

# A non-root user cannot bind ports below 1024, so inside the container plain HTTP
# listens on 8080 and TLS on 8443; the PROXY protocol listeners (HAProxy in front, see
# docs/operations.md) keep their 10001 (then plain HTTP) and 10443 (then TLS), and take
# only peers in PROXY_TRUSTED_CIDRS (loopback by default: set HAProxy's address).
# Publish only those you use; set one to 0 to turn it off.
# The API listens on 127.0.0.1 by default and is therefore only reachable from
# inside the container. To publish it, run with -e API_HOST=0.0.0.0 and
# -p 127.0.0.1:9000:9000 (or otherwise firewall it): it is an admin interface.
# EDGE_WORKERS is left unset: one worker per CPU the container may use, which is its
# CPU quota (docker run --cpus) or cpuset, not the host's core count.
ENV EDGE_STATE_DIR=/var/lib/edge \
    HTTP_PORT=8080 \
    HTTPS_PORT=8443 \
    PROXY_PROTOCOL_PORT=10001 \
    PROXY_PROTOCOL_TLS_PORT=10443 \
    API_PORT=9000

EXPOSE 8080 8443 10001 10443 9000

USER edge

HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('API_PORT', '9000'), timeout=4)"

# SIGTERM drains: stop accepting, finish in-flight requests, exit within
# DRAIN_TIMEOUT (30 s). Give docker stop a longer grace period than that,
# e.g. docker stop -t 45 (the default is 10 s).
STOPSIGNAL SIGTERM

ENTRYPOINT ["edge"]
CMD ["serve"]
