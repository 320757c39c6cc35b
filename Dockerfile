# The zmqagents image: the sidecar (README, "Run as a sidecar"), the nodes of docker-compose.yml and of
# the Kubernetes load test (deploy/k8s; README, "Load test on Kubernetes").
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml setup.cfg README.md LICENSE ./
COPY zmqagents ./zmqagents
# zmqagents/_data links to these (the specs, example config and unit the wheel ships; setup.cfg).
COPY protocols ./protocols
COPY scripts/node.example.toml scripts/zmqagents.service ./scripts/
# Runtime dependencies only (pyzmq, pynacl, msgpack, click, zeroconf, prometheus-client), all from wheels.
RUN python -m venv /opt/zmqagents \
 && /opt/zmqagents/bin/pip install --no-cache-dir --disable-pip-version-check /src

# `tc` for the Kubernetes load test's latency (deploy/k8s/components/netem): the init container that
# runs `tc qdisc replace dev eth0 root netem ...` uses this image, so the node image stays without
# iproute2. Built only when asked: docker build --target netem -t zmqagents-netem .
FROM python:3.11-slim AS netem
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends iproute2 \
 && rm -rf /var/lib/apt/lists/*
ENTRYPOINT ["tc"]

# The node image (the default target: the last stage).
FROM python:3.11-slim
# A fixed uid/gid, so other containers can be given access to the socket with --group-add 10001.
RUN groupadd --system --gid 10001 zmqagents \
 && useradd --system --uid 10001 --gid zmqagents --home-dir /var/lib/zmqagents --shell /usr/sbin/nologin zmqagents \
 && install -d -o zmqagents -g zmqagents -m 0700 /var/lib/zmqagents \
 && install -d -o zmqagents -g zmqagents -m 0750 /run/zmqagents
COPY --from=build /opt/zmqagents /opt/zmqagents
COPY scripts/node.example.toml /etc/zmqagents/node.toml
# The sidecar's defaults put the key and spool in $STATE_DIRECTORY and the socket in $RUNTIME_DIRECTORY.
ENV PATH=/opt/zmqagents/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    STATE_DIRECTORY=/var/lib/zmqagents \
    RUNTIME_DIRECTORY=/run/zmqagents
USER zmqagents
VOLUME ["/var/lib/zmqagents", "/run/zmqagents"]
EXPOSE 7100
# SIGTERM (docker stop) drains, announces the leave and exits 0; keep --stop-timeout above [node] drain_timeout.
ENTRYPOINT ["zmqagents", "node", "--config", "/etc/zmqagents/node.toml"]
