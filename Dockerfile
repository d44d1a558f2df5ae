# powlab node image.
#
#   docker build --network host -t powlab:latest .
#   docker run --rm -p 127.0.0.1:18443:18443 -e POWLAB_RPC_USER=powlab \
#       -e POWLAB_RPC_PASSWORD=powlab -e POWLAB_MINE=1 -e POWLAB_HASHRATE=0.2 powlab:latest
#
# The container runs the daemon, `python -m node` (what `powlab node` runs), configured
# entirely through POWLAB_* environment variables (see `powlab node --help`); extra
# arguments to `docker run` are passed on as flags. Everything the node persists lives in
# the /data volume. The image has the `powlab` command too, without the optional plots
# extra (matplotlib). See docs/docker.md.

# ---------------------------------------------------------------- build: the virtualenv
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
RUN python3 -m venv /opt/venv
WORKDIR /src
# .dockerignore lets only the packaging files and the five packages in. Dependencies (and
# hatchling, for the build) come from PyPI: build with host networking where the default
# bridge has no way out (docker build --network host / compose `build.network: host`).
# Dependencies first, from pyproject.toml alone (with empty package stubs), so editing the
# code does not re-download them.
COPY pyproject.toml README.md /src/
RUN for pkg in consensus storage p2p node lab; do mkdir -p "$pkg" && touch "$pkg/__init__.py"; done \
 && /opt/venv/bin/pip install /src \
 && rm -rf /src/consensus /src/storage /src/p2p /src/node /src/lab
COPY . /src
RUN /opt/venv/bin/pip install --no-deps --force-reinstall /src \
 && /opt/venv/bin/python -m compileall -q /opt/venv/lib

# ---------------------------------------------------------------- runtime
FROM python:3.11-slim
# Same base, same interpreter path: the virtualenv moves over as it is.
COPY --from=build /opt/venv /opt/venv
RUN useradd --system --uid 10001 --user-group --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin powlab \
 && mkdir -p /data \
 && chown powlab:powlab /data \
 && chmod 0700 /data

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOME=/data \
    POWLAB_DATADIR=/data \
    POWLAB_NETWORK=regtest \
    POWLAB_P2P_BIND=0.0.0.0:18444 \
    POWLAB_RPC_BIND=0.0.0.0:18443

USER powlab
WORKDIR /data
VOLUME ["/data"]
EXPOSE 18443/tcp 18444/tcp 18444/udp

# Healthy = the JSON-RPC answers getblockcount, with POWLAB_RPC_USER/POWLAB_RPC_PASSWORD or,
# without them, the cookie the node wrote to the data directory.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-m", "lab.testnet.docker", "healthcheck"]

STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "-m", "node"]
