# syntax=docker/dockerfile:1
#
# bitfleet agent image: `bitfleet-agent` on slim Debian, numba where it has wheels, a non-root
# user (uid 10001), no compiler. Build from the repository root:
#
#   docker build -f docker/agent.Dockerfile -t bitfleet-agent .
#   docker buildx build -f docker/agent.Dockerfile --platform linux/arm64,linux/amd64 -t REPO/bitfleet-agent --push .
#
# linux/amd64 and linux/arm64 (64-bit Raspberry Pi OS) install wheels only and get numba
# ([agent,fast]). Other platforms get [agent] and the numpy kernels; there numpy has no wheel on
# PyPI and is compiled in the throw-away build stage (slow under emulation). The Debian base has
# no linux/arm/v6 image: on a Pi Zero/1 use edge_agent/install/install.sh instead.
#
# Everything the agent writes lives in the volume /var/lib/bitfleet-agent: its config (0600,
# holds the secret) at agent.json, its journal in state/, numba's compiled-kernel cache in cache/.
# The data set is read from /data (mount it read-only). Enroll once, then run:
#
#   docker run --rm -v bitfleet-agent:/var/lib/bitfleet-agent bitfleet-agent \
#       enroll --coordinator http://coordinator:8000 --agent-id pi-01 --secret SECRET \
#       --mqtt-url mqtt://broker:1883
#   docker run -d --name bitfleet-agent --restart unless-stopped \
#       -v bitfleet-agent:/var/lib/bitfleet-agent -v /srv/bitfleet/data.npz:/data/data.npz:ro \
#       bitfleet-agent run --config /var/lib/bitfleet-agent/agent.json --data /data/data.npz \
#       --state-dir /var/lib/bitfleet-agent/state
#   docker exec bitfleet-agent bitfleet-agent status --config /var/lib/bitfleet-agent/agent.json \
#       --state-dir /var/lib/bitfleet-agent/state --json
#
# `docker stop` sends SIGTERM to the agent (PID 1), which shuts down cleanly; allow it the same
# 30 s as the systemd unit: `docker stop -t 30`. A bind mount instead of the named volume must
# be writable by uid 10001 (`chown 10001:10001 DIR`).

FROM python:3.11-slim-bookworm AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# --- build stage: every wheel the agent needs, in /wheels ------------------------------------
FROM base AS wheels
# Set by BuildKit/buildx to the platform being built (amd64, arm64, arm, ...).
ARG TARGETARCH
WORKDIR /src
# The whole package, as `pip wheel .` builds it anywhere (server/ is pure Python and its
# dependencies are not installed: the [server] extra is not asked for).
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY server ./server
COPY edge_agent ./edge_agent
# The one place that decides per architecture: the extras, and whether numpy must be
# compiled here (then the final image needs the OpenBLAS it links, listed in
# /wheels/runtime-packages).
RUN set -eu; \
    mkdir /wheels; \
    case "${TARGETARCH:-$(dpkg --print-architecture)}" in \
        amd64 | arm64) \
            extras='[agent,fast]'; \
            : >/wheels/runtime-packages ;; \
        *) \
            extras='[agent]'; \
            apt-get update; \
            apt-get install -y --no-install-recommends build-essential pkg-config libopenblas-dev; \
            echo libopenblas0 >/wheels/runtime-packages ;; \
    esac; \
    pip wheel --wheel-dir /wheels ".$extras"

# --- the image ----------------------------------------------------------------------------
FROM base
# Installs exactly the wheels built above (the bind mount keeps them out of the layers).
RUN --mount=type=bind,from=wheels,source=/wheels,target=/wheels \
    set -eu; \
    if [ -s /wheels/runtime-packages ]; then \
        apt-get update; \
        xargs apt-get install -y --no-install-recommends </wheels/runtime-packages; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    pip install --no-index --find-links /wheels /wheels/*.whl

# Every mount point exists and belongs to uid 10001: Docker gives a new volume the owner and
# mode of the image's directory, and a root-owned one of its own where the image has none.
# /data and /tls (a CA to verify the coordinator and broker against) are mounted read-only.
RUN groupadd --gid 10001 bitfleet \
    && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin bitfleet \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/bitfleet-agent \
        /var/lib/bitfleet-agent/state /var/lib/bitfleet-agent/cache /data /tls

ENV PYTHONUNBUFFERED=1 \
    BITFLEET_AGENT_CONFIG=/var/lib/bitfleet-agent/agent.json \
    NUMBA_CACHE_DIR=/var/lib/bitfleet-agent/cache
VOLUME ["/data", "/var/lib/bitfleet-agent"]
USER 10001:10001
WORKDIR /var/lib/bitfleet-agent
STOPSIGNAL SIGTERM
ENTRYPOINT ["bitfleet-agent"]
CMD ["--help"]
