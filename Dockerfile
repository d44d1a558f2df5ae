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
# Dependencies first, read from pyproject.toml's [project] table alone (no README, no code),
# so editing the code or the README does not re-download them; the optional extras (plots:
# matplotlib; dev) are not installed.
COPY pyproject.toml /src/
RUN /opt/venv/bin/python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
        > /tmp/requirements.txt \
 && /opt/venv/bin/pip install -r /tmp/requirements.txt
COPY . /src
# Then the package itself, and out go pip and setuptools (25 MB the daemon never uses).
RUN /opt/venv/bin/pip install --no-deps /src \
 && /opt/venv/bin/python -m compileall -q /opt/venv/lib \
 && /opt/venv/bin/python -m pip uninstall -q -y pip setuptools

# ---------------------------------------------------------------- slim: the base, pruned
# What a node never reads: documentation, manual pages, message translations, the system
# pip/setuptools (the virtualenv does not see them), package lists and caches. Deleting them
# in a layer on top would not make the image smaller, so the runtime starts FROM scratch with
# this tree copied in: one base layer instead of the base image's (docs/docker.md, "Image
# size", has the figures).
FROM python:3.11-slim AS slim
RUN rm -rf /usr/share/doc /usr/share/man /usr/share/info /usr/share/locale \
        /usr/share/python-wheels /usr/lib/python3/dist-packages \
        /var/lib/apt/lists/* /var/cache/apt/* /var/cache/debconf/* /var/log/*

# ---------------------------------------------------------------- runtime
FROM scratch
COPY --from=slim / /
RUN useradd --system --uid 10001 --user-group --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin powlab \
 && mkdir -p /data \
 && chown powlab:powlab /data \
 && chmod 0700 /data
# Same interpreter path as the build stage: the virtualenv moves over as it is.
COPY --from=build /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 \
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
