"""The docker-compose testnet: `powlab testnet … --docker` drives it through this module.

:class:`DockerTestnet` wraps the repository's ``docker-compose.yml`` (or any compose file
built the same way: one service per node, a ``powlab.role`` label on each, the JSON-RPC on
container port 18443 published on the host, credentials each node's own cookie, or
``POWLAB_RPC_USER`` / ``POWLAB_RPC_PASSWORD``). It works with Compose v2 (``docker compose``)
and v1.29 (``docker-compose``), whichever answers, and finds everything else through Docker
labels, so it needs no YAML parser and no state of its own.

Partitions are the nodes' own bans over RPC, as on a swarm and on processes (nothing about
Docker networking changes). A container cut off at the network level by hand answers RPC
through ``docker exec`` inside it, and ``heal`` puts it back.

At top level this module imports only the standard library and the lab's RPC client (itself
standard library until its first call): the image's HEALTHCHECK runs
``python -m lab.testnet.docker healthcheck`` every few seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets as secrets_module
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.client import (
    CookieError,
    RPCAuthError,
    RPCConnectionError,
    RPCError,
    read_cookie,
    rpc_call_sync,
)

__all__ = [
    "RPC_FAILURES",
    "DockerError",
    "DockerTestnet",
    "NodeContainer",
    "describe",
    "find_compose_command",
    "healthcheck",
    "write_password_files",
]

RPC_PORT = 18443
P2P_PORT = 18444
ROLE_LABEL = "powlab.role"
EXTRA_LABEL = "powlab.extra"  # on containers started beside a project (value: the project)
IMAGE_LABEL = "powlab.compose-image"  # on a recreated node: the image its compose file names
PARTITION_LABEL = "powlab.partition"
PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
NUMBER_LABEL = "com.docker.compose.container-number"
NETWORK_LABEL = "com.docker.compose.network"
ROLE_ORDER = ("miner", "merchant", "attacker", "observer")
BAN_SECONDS = 24 * 3600  # a partition's bans; `heal` lifts them
# Per-node RPC credentials. A compose node (docker-compose.yml) configures none, so it uses
# its cookie, a random password it writes to its own volume at each start (COOKIE_PATH),
# which the lab reads with `docker exec`. A swarm node, which the lab may not reach with
# `docker exec` (another engine), gets a password file of its own at SECRET_PATH (a Docker
# secret) that POWLAB_RPC_PASSWORD_FILE names. Either way no password is in any container's
# configuration and no container holds another's.
COOKIE_PATH = "/data/.cookie"
SECRET_TARGET = "powlab_rpc_password"
SECRET_PATH = f"/run/secrets/{SECRET_TARGET}"
PASSWORD_FILE_ENV = "POWLAB_RPC_PASSWORD_FILE"
SETUP_HINT = (
    "install Docker Engine and Compose (v2 plugin or docker-compose 1.29) and start the "
    "engine; on a machine without a container registry, shared/tools/docker-offline.sh "
    "beside the repository (see docs/docker.md) sets both up"
)
INVALID_REQUEST = -32600  # JSON-RPC code `call-batch` reports rejected credentials with
DOCKER_TIMEOUT = 120.0  # seconds for one ordinary docker command
BUILD_TIMEOUT = 1800.0  # seconds for `compose build` / `up`


class DockerError(RuntimeError):
    """Docker or Compose is missing, not running, or a docker command failed."""


# What a call to a node can fail with, short of Docker itself failing.
RPC_FAILURES = (RPCConnectionError, RPCAuthError, RPCError)


def describe(exc: BaseException) -> str:
    """One line for an error of this module's calls (an RPC error names its code)."""
    if isinstance(exc, RPCError):
        return f"RPC error {exc.code}: {exc.message}"
    return str(exc)


# --------------------------------------------------------------------------------------------
# The node inside this container (HEALTHCHECK and `call-batch` run here)
# --------------------------------------------------------------------------------------------


def _local_endpoint(environ: Mapping[str, str]) -> tuple[str, tuple[str, str] | None]:
    """The RPC of the node in this container, from its own POWLAB_* environment."""
    bind = environ.get("POWLAB_RPC_BIND", f"127.0.0.1:{RPC_PORT}")
    port = bind.rsplit(":", 1)[-1] or str(RPC_PORT)
    url = f"http://127.0.0.1:{port}/"
    user, password = environ.get("POWLAB_RPC_USER"), environ.get("POWLAB_RPC_PASSWORD")
    secret = environ.get(PASSWORD_FILE_ENV)
    if user and password is None and secret:
        # The node's own password, from its secret file (compose file or swarm secret).
        try:
            password = Path(secret).read_text().strip()
        except OSError:
            password = None
    if user and password is not None:
        return url, (user, password)
    try:
        return url, read_cookie(Path(environ.get("POWLAB_DATADIR", "/data")))
    except CookieError:
        return url, None


def healthcheck(environ: Mapping[str, str] | None = None, timeout: float = 4.0) -> int:
    """Exit status for Docker's HEALTHCHECK: 0 when the node's RPC answers getblockcount."""
    url, auth = _local_endpoint(os.environ if environ is None else environ)
    try:
        height = rpc_call_sync(url, "getblockcount", [], auth, timeout)
    except RPC_FAILURES as exc:
        print(f"unhealthy: {describe(exc)}")
        return 1
    print(f"ok: height {height}")
    return 0


def _exec_calls(calls: Sequence[Sequence[Any]], environ: Mapping[str, str]) -> list[Any]:
    """Run [method, params] calls against the local node; each result or error as a dict."""
    url, auth = _local_endpoint(environ)
    out: list[Any] = []
    for method, params in calls:
        try:
            out.append({"result": rpc_call_sync(url, method, params, auth)})
        except RPCError as exc:
            out.append({"error": {"code": exc.code, "message": exc.message}})
        except RPCAuthError as exc:
            out.append({"error": {"code": INVALID_REQUEST, "message": str(exc)}})
        except RPCConnectionError as exc:
            out.append({"unreachable": str(exc)})
    return out


# --------------------------------------------------------------------------------------------
# Docker plumbing
# --------------------------------------------------------------------------------------------


def _run(
    argv: Sequence[str],
    *,
    timeout: float = DOCKER_TIMEOUT,
    cwd: Path | None = None,
    check: bool = True,
    capture: bool = True,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    # Resolved through PATH here, not by subprocess, so every caller gets the same
    # "not installed" error whether the binary is missing or merely off PATH.
    executable = shutil.which(argv[0])
    if executable is None:
        raise DockerError(f"{argv[0]} is not installed: {SETUP_HINT}")
    try:
        result = subprocess.run(
            [executable, *argv[1:]], cwd=cwd, text=True, timeout=timeout, check=False,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE if capture else None,
            stdin=subprocess.DEVNULL,
            env=None if env is None else {**os.environ, **env},
        )
    except FileNotFoundError:
        raise DockerError(f"{argv[0]} is not installed: {SETUP_HINT}") from None
    except subprocess.TimeoutExpired:
        raise DockerError(f"`{' '.join(argv)}` did not finish within {timeout:.0f}s") from None
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout or "").strip() if capture else ""
        raise DockerError(
            f"`{' '.join(argv)}` failed (exit {result.returncode})" + (f": {detail}" if detail
                                                                         else "")
        )
    return result


def _run_binary(argv: Sequence[str], data: bytes | None = None,
                timeout: float = DOCKER_TIMEOUT) -> bytes | None:
    """stdout of a docker command that reads or writes binary data; None when it fails."""
    executable = shutil.which(argv[0])
    if executable is None:
        raise DockerError(f"{argv[0]} is not installed: {SETUP_HINT}")
    try:
        result = subprocess.run([executable, *argv[1:]], input=b"" if data is None else data,
                                capture_output=True,
                                timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise DockerError(f"`{' '.join(argv)}` did not finish within {timeout:.0f}s") from None
    return result.stdout if result.returncode == 0 else None


def write_password_files(directory: Path, names: Sequence[str]) -> list[Path]:
    """``directory/NAME`` for each name that has none yet, holding a random password.

    The directory is 0700, so only its owner reaches the files on the host; each file is
    0644 because a file secret keeps the host file's mode and owner, and the node in the
    container runs as another user (uid 10001). Files already there are kept: a running
    node read its password at start."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    written = []
    for name in names:
        path = directory / name
        if path.exists():
            continue
        path.write_text(secrets_module.token_urlsafe(24) + "\n")
        path.chmod(0o644)
        written.append(path)
    return written


def find_compose_command() -> list[str]:
    """``["docker", "compose"]`` (v2) or ``["docker-compose"]`` (v1), whichever works."""
    if shutil.which("docker") is None:
        raise DockerError(f"the docker command is not installed: {SETUP_HINT}")
    candidates = (["docker", "compose"], ["docker-compose"])
    for argv in candidates:
        if shutil.which(argv[0]) is None:
            continue
        try:
            probe = _run([*argv, "version"], timeout=30, check=False)
        except DockerError:
            continue
        if probe.returncode == 0:
            return argv
    raise DockerError(f"neither `docker compose` nor `docker-compose` works: {SETUP_HINT}")


def check_engine() -> None:
    """Raise :class:`DockerError` unless a Docker engine answers."""
    if shutil.which("docker") is None:
        raise DockerError(f"the docker command is not installed: {SETUP_HINT}")
    # As long as any command: an engine busy with a large stack (300 services being
    # deployed) took over 30 s to answer `docker info`; one that is down fails at once.
    probe = _run(["docker", "info", "--format", "{{.ServerVersion}}"], timeout=DOCKER_TIMEOUT,
                 check=False)
    if probe.returncode != 0 or not probe.stdout.strip():
        detail = (probe.stderr or "").strip().splitlines()
        raise DockerError(
            "the Docker engine is not reachable"
            + (f" ({detail[-1]})" if detail else "")
            + f": {SETUP_HINT}"
        )


def default_project_name(project_dir: Path) -> str:
    """What Compose itself would call the project: COMPOSE_PROJECT_NAME or the folder name."""
    name = os.environ.get("COMPOSE_PROJECT_NAME") or Path(project_dir).resolve().name
    name = re.sub(r"[^a-z0-9_-]", "", name.lower()).lstrip("_-")
    return name or "powlab"


@dataclass
class NodeContainer:
    """One node's container, as `docker inspect` sees it."""

    id: str
    container: str  # container name
    node: str  # service name, or service-N for the Nth replica of a scaled service
    service: str
    number: int
    role: str
    running: bool
    health: str | None
    networks: dict[str, str] = field(default_factory=dict)  # network name -> IP
    rpc_port: int | None = None
    rpc_mapped: bool = True  # False: published, but Docker holds no live mapping for it
    auth: tuple[str, str] | None = None
    rpc_host: str = "127.0.0.1"  # where the RPC port is published (a swarm node's engine)
    local: bool = True  # on this machine's engine, so `docker exec` reaches it
    rpc_user: str | None = None  # POWLAB_RPC_USER, when the password is in a file
    password_file: str | None = None  # POWLAB_RPC_PASSWORD_FILE: the path inside
    password_source: str | None = None  # the host file bind-mounted there (a file secret)
    started_at: str = ""  # State.StartedAt: a new start means a new cookie

    @property
    def rpc_url(self) -> str | None:
        return f"http://{self.rpc_host}:{self.rpc_port}/" if self.rpc_port else None


def _parse_container(data: dict[str, Any]) -> NodeContainer:
    config = data.get("Config") or {}
    labels = config.get("Labels") or {}
    env = dict(item.split("=", 1) for item in (config.get("Env") or []) if "=" in item)
    state = data.get("State") or {}
    settings = data.get("NetworkSettings") or {}
    networks = {
        name: (net or {}).get("IPAddress", "")
        for name, net in (settings.get("Networks") or {}).items()
    }
    # NetworkSettings.Ports holds the live mappings (none while a container is cut off
    # from every network); HostConfig.PortBindings says what was asked for, but a random
    # host port ("127.0.0.1::18443") only shows up in the live ones.
    live = _host_port((settings.get("Ports") or {}).get(f"{RPC_PORT}/tcp"))
    wanted = ((data.get("HostConfig") or {}).get("PortBindings") or {}).get(f"{RPC_PORT}/tcp")
    rpc_port = live or _host_port(wanted)
    user, password = env.get("POWLAB_RPC_USER"), env.get("POWLAB_RPC_PASSWORD")
    password_file = env.get(PASSWORD_FILE_ENV) if user and password is None else None
    source = next((str(m.get("Source")) for m in data.get("Mounts") or []
                   if password_file and m.get("Destination") == password_file
                   and m.get("Source")), None)
    service = labels.get(SERVICE_LABEL, data.get("Name", "").lstrip("/"))
    number = int(labels.get(NUMBER_LABEL, "1") or 1)
    return NodeContainer(
        id=data["Id"],
        container=data.get("Name", "").lstrip("/"),
        node=service if number == 1 else f"{service}-{number}",
        service=service,
        number=number,
        role=labels.get(ROLE_LABEL, "node"),
        running=bool(state.get("Running")),
        health=(state.get("Health") or {}).get("Status"),
        networks=networks,
        rpc_port=rpc_port,
        rpc_mapped=live is not None or not wanted,
        auth=(user, password) if user and password is not None else None,
        rpc_user=user if password_file else None,
        password_file=password_file,
        password_source=source,
        started_at=str(state.get("StartedAt") or ""),
    )


def check_groups(groups: Sequence[Sequence[str]],
                 known: Mapping[str, Any]) -> tuple[list[list[str]], set[str]]:
    """A partition's groups, checked: at least two non-empty, only `known` nodes, none in two
    groups. Returns them as lists and the set of nodes they name."""
    out = [list(g) for g in groups if g]
    if len(out) < 2:
        raise ValueError("a partition needs at least two non-empty groups")
    seen: set[str] = set()
    for group in out:
        for name in group:
            if name not in known:
                raise ValueError(f"unknown node {name!r} (nodes: {', '.join(known)})")
            if name in seen:
                raise ValueError(f"node {name!r} is in more than one group")
            seen.add(name)
    return out, seen


def _post_calls(url: str, calls: Sequence[tuple[str, list[Any]]], auth: tuple[str, str],
                timeout: float, errors: str) -> list[Any]:
    """``calls`` over HTTP in order; an RPC error raised or returned as ``errors`` says."""
    results: list[Any] = []
    for method, params in calls:
        try:
            results.append(rpc_call_sync(url, method, params, auth, timeout))
        except RPCError as exc:  # (a refused credential is RPCAuthError: raised)
            if errors == "raise":
                raise
            results.append(exc)
    return results


def _host_port(bindings: list[dict[str, str]] | None) -> int | None:
    for binding in bindings or []:
        port = (binding or {}).get("HostPort")
        if port and port.isdigit() and port != "0":
            return int(port)
    return None


def _role_key(c: NodeContainer) -> tuple[int, str, int]:
    rank = ROLE_ORDER.index(c.role) if c.role in ROLE_ORDER else len(ROLE_ORDER)
    return (rank, c.service, c.number)


# --------------------------------------------------------------------------------------------
# The testnet
# --------------------------------------------------------------------------------------------


class DockerTestnet:
    """A compose project of powlab nodes.

    ``project_dir`` is where compose runs (build context and ``.env`` are relative to it);
    ``compose_file`` is the YAML file; ``project_name`` defaults to what plain
    ``docker compose up`` in ``project_dir`` would use, so the CLI and a user's own compose
    commands manage the same containers. ``network`` is the compose network's key.
    """

    def __init__(
        self,
        project_dir: Path,
        compose_file: Path,
        *,
        project_name: str | None = None,
        network: str = "powlab",
        env: Mapping[str, str] | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.project_dir = Path(project_dir).resolve()
        self.compose_file = Path(compose_file)
        if not self.compose_file.is_absolute():
            self.compose_file = self.project_dir / self.compose_file
        self.project = project_name or default_project_name(self.project_dir)
        self.network_key = network
        self.env = dict(env or {})
        # (container id, start time) -> its cookie: read once per start of the node.
        self._cookies: dict[tuple[str, str], tuple[str, str]] = {}
        self.log = log or (lambda message: None)
        self._compose: list[str] | None = None
        self._main_network: str | None = None

    # ------------------------------------------------------------------ compose

    @property
    def compose_command(self) -> list[str]:
        if self._compose is None:
            check_engine()
            self._compose = find_compose_command()
        return self._compose

    def compose(self, *args: str, timeout: float = DOCKER_TIMEOUT, capture: bool = True,
                check: bool = True) -> subprocess.CompletedProcess[str]:
        if not self.compose_file.exists():
            raise DockerError(f"compose file {self.compose_file} does not exist")
        argv = [*self.compose_command, "-f", str(self.compose_file), "-p", self.project, *args]
        return _run(argv, timeout=timeout, cwd=self.project_dir, capture=capture, check=check,
                    env=self.env)

    def up(self, build: bool = True, *, wait: float = 180.0, fund: bool = True) -> None:
        """Build the image (``build``), start every node, wait until all answer RPC.

        With ``fund``, a fresh chain gets one matured coinbase per node (so every wallet,
        the attacker's and the merchant's included, can spend).
        """
        if build:
            self.log("building the powlab image (compose build)")
            self.compose("build", timeout=BUILD_TIMEOUT)
        self.log("starting the containers (compose up -d)")
        self.compose("up", "-d", "--remove-orphans", timeout=BUILD_TIMEOUT)
        self.wait_ready(wait)
        if fund:
            self.fund()

    def down(self, purge: bool = False) -> None:
        """Stop and remove the containers (and with ``purge`` the chains' volumes), the extra
        containers started beside them (:meth:`run_extra`) first."""
        self.remove_extra()
        self._remove_partition_networks(force=True)
        args = ["down", "--remove-orphans"]
        if purge:
            args.append("-v")
        self.compose(*args, timeout=300)

    def logs(self, node: str, lines: int = 100, follow: bool = False) -> None:
        """Print a node's log (``compose logs``), following it with ``follow``."""
        c = self.container(node)
        argv = ["logs", "--no-color", "--tail", str(lines) if lines > 0 else "all"]
        if follow:
            argv.append("-f")
        self.compose(*argv, c.service, capture=False, timeout=10**9 if follow else 120)

    # ------------------------------------------------------------------ containers

    def containers(self) -> list[NodeContainer]:
        """Every container of the project, miners first."""
        self.compose_command  # noqa: B018 - checks Docker once, with a clear error if missing
        ids = _run(
            ["docker", "ps", "-a", "-q", "--no-trunc", "--filter",
             f"label={PROJECT_LABEL}={self.project}"]
        ).stdout.split()
        if not ids:
            return []
        data = json.loads(_run(["docker", "inspect", *ids]).stdout)
        return sorted((_parse_container(d) for d in data), key=_role_key)

    def nodes(self) -> list[str]:
        return [c.node for c in self.containers()]

    def container(self, name: str) -> NodeContainer:
        found = self.containers()
        for c in found:
            if name in (c.node, c.container, c.id, c.id[:12]):
                return c
        known = ", ".join(c.node for c in found) or "none: is the testnet up?"
        raise DockerError(f"no node {name!r} in compose project {self.project!r} (nodes: {known})")

    def endpoint(self, name: str) -> tuple[str, tuple[str, str]]:
        """``(url, (user, password))`` of a node's RPC as published on the host."""
        c = self.container(name)
        if c.rpc_url is None:
            raise DockerError(f"node {name!r} does not publish its RPC port {RPC_PORT}")
        auth = c.auth or self._cookie(c)
        return c.rpc_url, auth

    def _cookie(self, c: NodeContainer, fresh: bool = False) -> tuple[str, str]:
        """Credentials not in the container's environment: its password file (the host
        file mounted there, else read inside the container), else the node's cookie, read
        once per start of the container (``fresh``: read it again)."""
        if c.rpc_user and c.password_file:
            if c.password_source:
                with contextlib.suppress(OSError):
                    return c.rpc_user, Path(c.password_source).read_text().strip()
            if c.local and c.running:
                return c.rpc_user, _run(["docker", "exec", c.id, "cat",
                                         c.password_file]).stdout.strip()
        key = (c.id, c.started_at)
        cached = self._cookies.get(key)
        if cached is not None and not fresh:
            return cached
        text = _run(["docker", "exec", c.id, "cat", COOKIE_PATH]).stdout.strip()
        user, sep, password = text.partition(":")
        if not sep:
            raise DockerError(f"node {c.node}: no RPC cookie at {COOKIE_PATH} yet")
        # After a kill the last start's cookie stays until the new node writes its own: keep
        # a cookie only once the node has accepted it (one call; where the port does not
        # answer, a cut-off node, it is used as read and not kept).
        if c.rpc_url is not None:
            try:
                rpc_call_sync(c.rpc_url, "getblockcount", [], (user, password), 5)
            except RPCAuthError:
                raise DockerError(f"node {c.node}: its cookie is not the current one yet "
                                  "(starting?)") from None
            except (RPCConnectionError, RPCError):
                return user, password
        self._cookies[key] = (user, password)
        return user, password

    # ------------------------------------------------------------------ extra containers

    def run_extra(self, name: str, environment: Mapping[str, str], *, like: str,
                  role: str = "node") -> NodeContainer:
        """Start a container `name` beside the project: the image of node `like` and its
        POWLAB_* environment (peers and mining dropped) overridden by `environment`, on the
        compose network with an address of its own, its RPC published on a free port of
        127.0.0.1, with no password of the project's: its own random cookie (read with
        `docker exec`). It is no node of the project (`containers` does not list it); `down` and
        :meth:`remove_extra` remove it with its data."""
        model = self.container(like)
        data = self.inspect(model.id)
        env = {k: v for k, v in (item.split("=", 1) for item in
                                 (data.get("Config") or {}).get("Env") or [] if "=" in item)
               if k.startswith("POWLAB_") and k not in ("POWLAB_MINE", "POWLAB_HASHRATE",
                                                         "POWLAB_ADDNODE", "POWLAB_CONNECT",
                                                         "POWLAB_RPC_USER",
                                                         "POWLAB_RPC_PASSWORD",
                                                         PASSWORD_FILE_ENV)}
        env.update(environment)
        argv = ["docker", "run", "-d", "--init", "--name", name,
                "--network", self._main_network_name(),
                "--label", f"{EXTRA_LABEL}={self.project}", "--label", f"{ROLE_LABEL}={role}",
                "-p", f"127.0.0.1::{RPC_PORT}"]
        for key, value in env.items():
            argv += ["-e", f"{key}={value}"]
        _run([*argv, str(data["Image"])])
        return _parse_container(self.inspect(name))

    def extra_containers(self) -> list[NodeContainer]:
        """The containers :meth:`run_extra` started for this project."""
        ids = _run(["docker", "ps", "-a", "-q", "--no-trunc", "--filter",
                    f"label={EXTRA_LABEL}={self.project}"]).stdout.split()
        if not ids:
            return []
        return [_parse_container(d) for d in json.loads(_run(["docker", "inspect", *ids]).stdout)]

    def remove_extra(self, names: Sequence[str] | None = None) -> None:
        """Remove extra containers (default: all of this project's) and their data."""
        found = [c.id for c in self.extra_containers()
                 if names is None or c.container in names or c.id in names]
        if found:
            _run(["docker", "rm", "-f", "-v", *found], timeout=120)

    def inspect(self, ref: str) -> dict[str, Any]:
        """`docker inspect` of one container (by name or id)."""
        data = json.loads(_run(["docker", "inspect", "--type", "container", ref]).stdout)
        return data[0]

    def environment(self, ref: str) -> dict[str, str]:
        """A container's environment variables."""
        env = (self.inspect(ref).get("Config") or {}).get("Env") or []
        return dict(item.split("=", 1) for item in env if "=" in item)

    def p2p_address(self, ref: str) -> str:
        """A container's P2P HOST:PORT as the others dial it: its address on the compose
        network and the port of its POWLAB_P2P_BIND."""
        data = self.inspect(ref)
        env = dict(item.split("=", 1) for item in (data.get("Config") or {}).get("Env") or []
                   if "=" in item)
        port = env.get("POWLAB_P2P_BIND", "").rsplit(":", 1)[-1] or str(P2P_PORT)
        main = self._main_network_name()
        ip = _parse_container(data).networks.get(main)
        if not ip:
            raise DockerError(f"{ref} is not on the compose network {main} (cut off?)")
        return f"{ip}:{port}"

    def credentials(self, c: NodeContainer, fresh: bool = False) -> tuple[str, str]:
        """A node's RPC user and password: its environment's, its password file's, else
        its cookie (``fresh``: read again, not the one read earlier in this start)."""
        return c.auth or self._cookie(c, fresh)

    # ------------------------------------------------------------------ recreating a node

    def recreate(self, node: str, environment: Mapping[str, str] | None = None, *,
                 before_start: Callable[[NodeContainer], None] | None = None,
                 ) -> NodeContainer:
        """Replace a node's container by a new one from the compose file, its volume (chain,
        wallet, key) kept: with `environment` over the file's environment (through an
        override file), or with None as the file has it. The old one gets SIGTERM and the
        service's grace period; `before_start(new)` runs while the new one is created but
        not started (to copy files into its volume). It runs the image the old one ran, on
        the RPC ports the project's containers publish now (the compose file's
        POWLAB_<SERVICE>_RPC_PORT and POWLAB_IMAGE variables are set to them). Returns the
        new container, started."""
        import tempfile

        old = self.container(node)
        data = self.inspect(old.id)
        config = data.get("Config") or {}
        # The image as the compose file named it (an earlier override pinned it by id).
        config_image = str((config.get("Labels") or {}).get(IMAGE_LABEL)
                           or config.get("Image") or "")
        env: dict[str, str] = {}
        if config_image:
            env["POWLAB_IMAGE"] = config_image
        for c in self.containers():
            if c.rpc_port and c.number == 1 and re.fullmatch(r"[A-Za-z0-9_]+", c.service):
                env[f"POWLAB_{c.service.upper()}_RPC_PORT"] = str(c.rpc_port)
        files = ["-f", str(self.compose_file)]
        with tempfile.TemporaryDirectory(prefix="powlab-recreate-") as tmp:
            if environment is not None:
                override = Path(tmp) / "override.yml"
                # JSON is YAML; the image is pinned by id, whatever the tag points to now.
                override.write_text(json.dumps({"services": {old.service: {
                    "image": str(data["Image"]), "environment": dict(environment),
                    "labels": {IMAGE_LABEL: config_image}}}}))
                files += ["-f", str(override)]
            argv = [*self.compose_command, *files, "-p", self.project, "up", "--no-start",
                    "--no-deps", "--no-build", "--force-recreate", old.service]
            _run(argv, timeout=BUILD_TIMEOUT, cwd=self.project_dir,
                 env={**self.env, **env})
        new = self.container(old.node)
        if before_start is not None:
            before_start(new)
        _run(["docker", "start", new.id])
        return self.container(old.node)

    def read_file(self, container: str, path: str) -> bytes | None:
        """`path` in a container (running or not) as a tar archive of that one file
        (`docker cp`), or None when it does not exist."""
        return _run_binary(["docker", "cp", f"{container}:{path}", "-"])

    def write_archive(self, container: str, directory: str, archive: bytes) -> None:
        """Unpack a tar `archive` into `directory` of a container, running or not."""
        if _run_binary(["docker", "cp", "-", f"{container}:{directory}"], archive) is None:
            raise DockerError(f"could not copy into {container}:{directory}")

    # ------------------------------------------------------------------ RPC

    def rpc(self, name: str, method: str, *params: Any, timeout: float = 60.0) -> Any:
        """Call a node: over its published port, or via ``docker exec`` while it is cut off."""
        return self._calls(self.container(name), [(method, list(params))], timeout)[0]

    def _calls(
        self,
        c: NodeContainer,
        calls: Sequence[tuple[str, list[Any]]],
        timeout: float = 60.0,
        errors: str = "raise",
    ) -> list[Any]:
        """Results of ``calls`` in order; with ``errors="return"`` an RPC error comes back
        as its :class:`RPCError` instead of being raised."""
        if c.rpc_url is not None and self._main_network_name() in c.networks:
            try:
                try:
                    return _post_calls(c.rpc_url, calls, c.auth or self._cookie(c), timeout,
                                       errors)
                except RPCAuthError:
                    if c.auth:
                        raise
                    # A cookie read just before the node replaced it (a restart after a
                    # kill leaves the old file until the new node writes its own).
                    return _post_calls(c.rpc_url, calls, self._cookie(c, fresh=True), timeout,
                                       errors)
            except RPCConnectionError:
                pass
        if not c.running:
            raise RPCConnectionError(f"node {c.node}: container {c.container} is not running")
        if not c.local:
            raise RPCConnectionError(f"node {c.node}: {c.rpc_url} does not answer (its "
                                     "container runs on another engine)")
        argv = ["docker", "exec", c.id, "python", "-m", "lab.testnet.docker", "call-batch",
                json.dumps([[m, p] for m, p in calls])]
        out = _run(argv, timeout=timeout + 30, check=False)
        if out.returncode != 0:
            raise RPCConnectionError(f"node {c.node}: docker exec failed: {out.stderr.strip()}")
        results = []
        for item in json.loads(out.stdout):
            if "unreachable" in item:
                raise RPCConnectionError(f"node {c.node}: {item['unreachable']}")
            if "error" in item:
                exc = RPCError(item["error"]["code"], item["error"]["message"])
                if errors == "raise":
                    raise exc
                results.append(exc)
            else:
                results.append(item["result"])
        return results

    # ------------------------------------------------------------------ waiting

    def wait_ready(self, timeout: float = 180.0) -> None:
        """Until every node's RPC answers."""
        deadline = time.monotonic() + timeout
        pending: list[str] = []
        while True:
            found = self.containers()
            if not found:
                raise DockerError(f"compose project {self.project!r} has no containers")
            pending = []
            for c in found:
                try:
                    self._calls(c, [("getblockcount", [])], timeout=10)
                except (*RPC_FAILURES, DockerError):
                    pending.append(c.node)
            if not pending:
                return
            if time.monotonic() > deadline:
                raise DockerError(
                    f"nodes not answering RPC after {timeout:.0f}s: {', '.join(pending)} "
                    f"(see `{' '.join(self.compose_command)} -p {self.project} logs`)"
                )
            time.sleep(1.0)

    def wait_converged(self, timeout: float = 120.0, nodes: Sequence[str] | None = None,
                       min_height: int = 0) -> str:
        """Until the nodes (default: all) share one best block at ``min_height`` or above."""
        deadline = time.monotonic() + timeout
        tips: dict[str, tuple[int, str] | None] = {}
        while True:
            tips = {}
            for c in self.containers():
                if nodes is not None and c.node not in nodes:
                    continue
                try:
                    info = self._calls(c, [("getblockchaininfo", [])], timeout=10)[0]
                    tips[c.node] = (info["blocks"], info["bestblockhash"])
                except (*RPC_FAILURES, DockerError):
                    tips[c.node] = None
            hashes = {t[1] for t in tips.values() if t is not None}
            heights = [t[0] for t in tips.values() if t is not None]
            if (tips and None not in tips.values() and len(hashes) == 1
                    and min(heights) >= min_height):
                return hashes.pop()
            if time.monotonic() > deadline:
                shown = ", ".join(
                    f"{n}={'down' if t is None else f'{t[0]}:{t[1][:12]}'}" for n, t in tips.items()
                )
                raise DockerError(f"nodes did not converge within {timeout:.0f}s: {shown}")
            time.sleep(1.0)

    # ------------------------------------------------------------------ funding

    def fund(self, blocks_per_node: int = 1) -> None:
        """Give every node whose wallet cannot spend yet ``blocks_per_node`` coinbases.

        Each such node mines its own blocks to its own wallet, then the first node buries
        them past coinbase maturity (100 blocks). Wallets that already have a spendable
        balance (a testnet brought up again on its volumes) are left alone.
        """
        found = [c for c in self.containers() if c.running]
        if not found:
            return
        poor = [c for c in found if self._calls(c, [("getbalance", [])])[0] == 0]
        if not poor:
            return
        for c in poor:
            address = self._calls(c, [("getnewaddress", [])])[0]
            self._calls(c, [("generatetoaddress", [blocks_per_node, address])], timeout=120)
            self.wait_converged(60, min_height=self._height(c))
        first = found[0]
        address = self._calls(first, [("getnewaddress", [])])[0]
        self._calls(first, [("generatetoaddress", [100, address])], timeout=300)
        self.wait_converged(120, min_height=self._height(first))
        self.log(f"funded {len(poor)} wallets; height {self._height(first)}")

    def _height(self, c: NodeContainer) -> int:
        return int(self._calls(c, [("getblockcount", [])])[0])

    # ------------------------------------------------------------------ status

    def status(self) -> list[dict[str, Any]]:
        """One row per node: node, role, rpc, height, bestblockhash, peers, mempool,
        hashrate, up (plus container, health and networks)."""
        main = self._main_network_name()
        rows = []
        project: set[str] | None = None
        for c in self.containers():
            row: dict[str, Any] = {
                "node": c.node, "role": c.role, "rpc": c.rpc_url, "height": None,
                "bestblockhash": None, "peers": None, "mempool": None, "hashrate": None,
                "up": False, "container": c.container, "health": c.health,
                "partitioned": main not in c.networks,
            }
            if c.running:
                try:
                    info, peers, mempool, mining, banned = self._calls(c, [
                        ("getblockchaininfo", []), ("getpeerinfo", []), ("getmempoolinfo", []),
                        ("getmininginfo", []), ("listbanned", []),
                    ], timeout=10)
                except (*RPC_FAILURES, DockerError):
                    pass
                else:
                    row.update(
                        height=info["blocks"], bestblockhash=info["bestblockhash"],
                        peers=sum(1 for p in peers if p.get("status", "established")
                                  == "established"),
                        mempool=mempool.get("size"),
                        hashrate=(mining.get("hashrate") or 0.0) if mining.get("mining") else 0.0,
                        up=True,
                    )
                    project = project if project is not None else self._project_addresses()
                    if any(str(b.get("address", "")).split("/")[0] in project for b in banned):
                        row["partitioned"] = True
            rows.append(row)
        return rows

    # ------------------------------------------------------------------ partitions

    def _main_network_name(self) -> str:
        if self._main_network is not None:
            return self._main_network
        out = _run(["docker", "network", "ls", "--format", "{{.Name}}",
                    "--filter", f"label={PROJECT_LABEL}={self.project}",
                    "--filter", f"label={NETWORK_LABEL}={self.network_key}"]).stdout.split()
        if out:
            self._main_network = out[0]  # stable for the project's life, so cached
            return out[0]
        return f"{self.project}_{self.network_key}"

    def _partition_networks(self) -> list[str]:
        return _run(["docker", "network", "ls", "--format", "{{.Name}}", "--filter",
                     f"label={PARTITION_LABEL}={self.project}"]).stdout.split()

    def partition(self, groups: Sequence[Sequence[str]]) -> None:
        """Split the network: nodes in different groups can no longer reach each other.

        Through the nodes' own controls, as on a swarm and in scenarios: each node bans the
        compose-network addresses of the nodes in other groups (``setban``) and drops those
        peers. Nothing about Docker networking changes, so every node keeps its RPC port and
        its place on the network. A node no group names joins the first group. Any earlier
        partition is healed first.
        """
        found = {c.node: c for c in self.containers() if c.running}
        groups, seen = check_groups(groups, found)
        self.heal(reconnect=False)
        found = {c.node: c for c in self.containers() if c.running}
        groups[0] += [n for n in found if n not in seen]
        main = self._main_network_name()
        ip = {n: c.networks.get(main, "") for n, c in found.items()}
        failed = self.ban_across(found, groups, ip)
        if failed:
            raise DockerError("the partition is not in force on every node (`testnet heal` "
                              "lifts what was set): " + "; ".join(failed))
        self.log("partitioned: " + " | ".join(",".join(g) for g in groups))

    def ban_across(self, found: Mapping[str, NodeContainer], groups: Sequence[Sequence[str]],
                   ip: Mapping[str, str],
                   before: Callable[[str, list[str]], None] | None = None) -> list[str]:
        """Each node in `found` bans the addresses (`ip`) of the nodes in the other groups
        and drops those peers; `before(node, hosts)` is told first (to record them). Returns
        what failed, one line per node or ban."""
        group_of = {n: i for i, g in enumerate(groups) for n in g}
        failed: list[str] = []
        for name, c in found.items():
            banned = [ip[o] for o in found if group_of[o] != group_of[name] and ip[o]]
            if before is not None:
                before(name, banned)
            try:
                results = self._calls(c, [("setban", [h, "add", BAN_SECONDS]) for h in banned],
                                      timeout=10, errors="return")
            except (*RPC_FAILURES, DockerError) as exc:
                failed.append(f"{name}: {exc}")
                continue
            failed += [f"{name}: setban {h}: {r}" for h, r in zip(banned, results, strict=True)
                       if isinstance(r, RPCError)]
            self._drop_peers(c, set(banned))
        return failed

    def _drop_peers(self, c: NodeContainer, hosts: set[str]) -> None:
        try:
            peers = self._calls(c, [("getpeerinfo", [])], timeout=10)[0]
        except (*RPC_FAILURES, DockerError):
            return
        stale = [p["id"] for p in peers if str(p.get("addr", "")).rsplit(":", 1)[0] in hosts]
        if stale:
            self._calls(c, [("disconnectnode", ["", pid]) for pid in stale], timeout=10,
                        errors="return")

    def _project_addresses(self) -> set[str]:
        main = self._main_network_name()
        return {c.networks[main] for c in self.containers() if c.networks.get(main)}

    def _lift_bans(self, found: Sequence[NodeContainer]) -> None:
        """Every ban a node holds on a node of this project (what :meth:`partition` sets)."""
        project = self._project_addresses()
        for c in found:
            try:
                banned = self._calls(c, [("listbanned", [])], timeout=10)[0]
            except (*RPC_FAILURES, DockerError):
                continue
            hosts = [str(b.get("address", "")).split("/")[0] for b in banned]
            lift = [h for h in hosts if h in project]
            if lift:
                self._calls(c, [("setban", [h, "remove"]) for h in lift], timeout=10,
                            errors="return")

    def heal(self, reconnect: bool = True) -> None:
        """Undo :meth:`partition`: the bans between the project's nodes lifted, peers
        redialled (and any node an older version moved off the compose network put back)."""
        main = self._main_network_name()
        private = set(self._partition_networks())
        moved: list[NodeContainer] = []
        restarted = False
        for c in self.containers():
            for net in c.networks:
                if net in private:
                    _run(["docker", "network", "disconnect", "--force", net, c.id])
            if main in c.networks and not c.rpc_mapped and c.running:
                # On the network but its published port is not mapped (Docker could not
                # re-bind it on an earlier reconnect, leaving a half-made endpoint behind):
                # a restart rebuilds the container's network sandbox; the chain persists.
                self.log(f"{c.node}: RPC port not mapped; restarting its container")
                _run(["docker", "restart", "-t", "30", c.id], timeout=90)
                moved.append(c)
                restarted = True
                continue
            if main not in c.networks:
                result = _run(["docker", "network", "connect", "--alias", c.service, main,
                               c.id], check=False)
                if result.returncode != 0:
                    raise DockerError(
                        f"could not put {c.node} back on {main}: {result.stderr.strip()} "
                        "(is another program, or another compose project, using its RPC "
                        "port now? free the port and run heal again)"
                    )
                moved.append(c)
        self._remove_partition_networks()
        if restarted:
            self.wait_ready(90)
        if moved:
            self._drop_stale_peers(moved)
            self.log("healed: " + ", ".join(c.node for c in moved) + " back on " + main)
        self._lift_bans([c for c in self.containers() if c.running])
        if reconnect:
            self.reconnect_peers()
            self.log("healed: bans lifted, peers redialled")

    def _drop_stale_peers(self, moved: Sequence[NodeContainer]) -> None:
        """Forget peer links that a move made dead, on both ends.

        A moved node's peers all sat on the network it left; the others still list it at
        its old address. Left alone, such links linger until the peer timeout, and while
        they do a node refuses the same peer at its new address ("already connected").
        """
        moved_ids = {c.id for c in moved}
        old_ips = {ip for c in moved for ip in c.networks.values() if ip}
        for c in self.containers():
            if not c.running:
                continue
            try:
                peers = self._calls(c, [("getpeerinfo", [])], timeout=10)[0]
            except (*RPC_FAILURES, DockerError):
                continue
            stale = [
                p["id"] for p in peers
                if c.id in moved_ids or str(p.get("addr", "")).rsplit(":", 1)[0] in old_ips
            ]
            if stale:
                self._calls(c, [("disconnectnode", ["", pid]) for pid in stale], timeout=10,
                            errors="return")

    def reconnect_peers(self, network: str | None = None,
                        nodes: Sequence[str] | None = None) -> None:
        """Ask each node to dial every other at its current IP on ``network`` (default: the
        compose network). Nodes dial names only once, and a container's IP changes when it
        is disconnected and reconnected."""
        network = network or self._main_network_name()
        found = [c for c in self.containers()
                 if c.running and network in c.networks and (nodes is None or c.node in nodes)]
        for c in found:
            calls = [
                ("addnode", [f"{other.networks[network]}:{P2P_PORT}", "onetry"])
                for other in found
                if other.id != c.id and other.networks.get(network)
            ]
            if calls:
                try:
                    self._calls(c, calls, timeout=10, errors="return")
                except (RPCConnectionError, RPCAuthError, DockerError) as exc:
                    self.log(f"{c.node}: could not redial peers: {exc}")

    def _remove_partition_networks(self, force: bool = False) -> None:
        for net in self._partition_networks():
            if force:
                data = json.loads(_run(["docker", "network", "inspect", net]).stdout or "[]")
                for cid in (data[0].get("Containers") or {}) if data else {}:
                    _run(["docker", "network", "disconnect", "--force", net, cid], check=False)
            _run(["docker", "network", "rm", net], check=False)


# --------------------------------------------------------------------------------------------
# python -m lab.testnet.docker …
# --------------------------------------------------------------------------------------------


def _print_status(rows: list[dict[str, Any]]) -> None:
    header = f"{'node':<10} {'role':<9} {'rpc':<24} {'height':>6} {'best':<14} {'peers':>5} " \
             f"{'mempool':>7} {'H/s':>6} up"
    print(header)
    for r in rows:
        best = (r["bestblockhash"] or "-")[:12]
        rate = "-" if r["hashrate"] is None else f"{r['hashrate']:.2f}"
        print(f"{r['node']:<10} {r['role']:<9} {r['rpc'] or '-':<24} "
              f"{'-' if r['height'] is None else r['height']:>6} {best:<14} "
              f"{'-' if r['peers'] is None else r['peers']:>5} "
              f"{'-' if r['mempool'] is None else r['mempool']:>7} {rate:>6} "
              f"{'yes' if r['up'] else 'NO'}{' (partitioned)' if r['partitioned'] else ''}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.testnet.docker",
                                     description="drive the docker-compose powlab testnet")
    parser.add_argument("--project-dir", type=Path, default=Path.cwd())
    parser.add_argument("--file", "-f", type=Path, default=Path("docker-compose.yml"))
    parser.add_argument("--project-name", "-p")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("healthcheck", help="(inside a container) exit 0 when the node answers RPC")
    batch = sub.add_parser("call-batch", help="(inside a container) run [[method, params]…]")
    batch.add_argument("calls")
    up = sub.add_parser("up")
    up.add_argument("--no-build", action="store_true")
    up.add_argument("--no-fund", action="store_true")
    status = sub.add_parser("status")
    status.add_argument("--json", action="store_true")
    part = sub.add_parser("partition", help="groups as A,B C,D")
    part.add_argument("groups", nargs="+")
    sub.add_parser("heal")
    down = sub.add_parser("down")
    down.add_argument("--purge", action="store_true", help="also delete the chains (down -v)")
    args = parser.parse_args(argv)

    if args.command == "healthcheck":
        return healthcheck()
    if args.command == "call-batch":
        print(json.dumps(_exec_calls(json.loads(args.calls), os.environ)))
        return 0
    net = DockerTestnet(args.project_dir, args.file, project_name=args.project_name,
                        log=lambda m: print(m, file=sys.stderr))
    try:
        if args.command == "up":
            net.up(build=not args.no_build, fund=not args.no_fund)
            _print_status(net.status())
        elif args.command == "status":
            rows = net.status()
            if args.json:
                print(json.dumps(rows, indent=2))
            else:
                _print_status(rows)
        elif args.command == "partition":
            net.partition([g.split(",") for g in args.groups])
        elif args.command == "heal":
            net.heal()
        elif args.command == "down":
            net.down(purge=args.purge)
    except (DockerError, ValueError, *RPC_FAILURES) as exc:
        print(f"error: {describe(exc)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
