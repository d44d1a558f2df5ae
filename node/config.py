"""Node configuration: TOML file, ``POWLAB_*`` environment variables and command-line flags.

Precedence is **flag > env > file > default**. Every layer is validated on its own (a bad
value in the file is reported even if a flag overrides it) so mistakes surface early,
and every error names the offending source, key and value.

The module holds no global mutable state: callers pass the parsed flags and the
environment explicitly, which keeps tests hermetic and lets ``powlab testnet`` build
configurations for many nodes in one process.
"""

from __future__ import annotations

import argparse
import difflib
import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, NamedTuple

from consensus.replacement import (
    DEFAULT_REPLACEMENT_POLICY,
    REPLACEMENT_POLICIES,
    ReplacementPolicy,
)
from node.rpc.limits import (
    DEFAULT_MAX_RPC_BATCH,
    DEFAULT_MAX_RPC_CONNECTIONS,
    DEFAULT_RPC_HEADER_TIMEOUT,
)

__all__ = [
    "ENV_PREFIX",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "NETWORKS",
    "ConfigError",
    "NodeConfig",
    "ParamValue",
    "add_node_arguments",
    "env_var_name",
    "load_config",
    "load_config_from_sources",
    "parse_host_port",
]

Network = Literal["regtest", "testnet"]
LogFormat = Literal["json", "console"]
LogLevel = Literal["debug", "info", "warning", "error"]
ParamValue = int | str | bool | float

NETWORKS: tuple[str, ...] = ("regtest", "testnet")
LOG_FORMATS: tuple[str, ...] = ("json", "console")
LOG_LEVELS: tuple[str, ...] = ("debug", "info", "warning", "error")
ENV_PREFIX = "POWLAB_"
CONFIG_ENV_VAR = "POWLAB_CONFIG"

_TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
_FALSE_WORDS = frozenset({"0", "false", "no", "off"})
_HOSTNAME_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_DOTTED_NUMBERS = re.compile(r"[0-9.]+")
_HEX = re.compile(r"[0-9a-fA-F]+")


class ConfigError(Exception):
    """A configuration value is missing, malformed or inconsistent."""


@dataclass(frozen=True)
class NodeConfig:
    """Fully merged and validated configuration of one node.

    Field defaults here are the single source of truth for option defaults; ``datadir``
    has none because it depends on the network (see :func:`load_config`).
    """

    datadir: Path
    network: Network = "regtest"
    p2p_bind: str = "127.0.0.1:18444"
    rpc_bind: str = "127.0.0.1:18443"
    connect: tuple[str, ...] = ()
    addnode: tuple[str, ...] = ()
    loadblock: tuple[str, ...] = ()
    no_listen: bool = False
    mine: bool = False
    hashrate: float | None = None
    miner_processes: int | None = None
    miner_prefork: bool = False
    mining_address: str | None = None
    finality_depth: int | None = None
    enforce_finality: bool = False
    addressindex: bool = False
    reindex_addresses: bool = False
    log_format: LogFormat | None = None
    log_level: LogLevel = "info"
    rpc_user: str | None = None
    rpc_password: str | None = None
    max_rpc_body_bytes: int = 1_000_000
    # The RPC server's bounds are defined (and explained) next to the code they bound.
    max_rpc_batch: int = DEFAULT_MAX_RPC_BATCH
    rpc_header_timeout: float = DEFAULT_RPC_HEADER_TIMEOUT
    max_rpc_connections: int = DEFAULT_MAX_RPC_CONNECTIONS
    max_mempool_bytes: int = 50_000_000
    max_orphan_txs: int = 100
    mempool_replacement: ReplacementPolicy = DEFAULT_REPLACEMENT_POLICY
    max_inbound: int = 32
    max_outbound: int = 8
    allow_peer: tuple[str, ...] = ()
    ban_seconds: int = 86_400
    assumed_attacker_share: float = 0.1
    double_spend_alerts: bool = False
    listening_period: float = 0.0
    # bitcoind's walletrbf: whether sendtoaddress signals BIP125 when its caller does not say
    # (bitcoind's default is on since v23; off here so that earlier results stay reproducible).
    wallet_rbf: bool = False
    # Seconds between rebroadcasts of the wallet's unconfirmed payments (bitcoind waits 12 to
    # 36 hours; a lab network is smaller and faster).
    wallet_rebroadcast_interval: float = 300.0
    # A plain dict rather than a read-only proxy so the config stays picklable for
    # miner worker processes.
    params: dict[str, ParamValue] = field(default_factory=dict)

    def effective_log_format(self, stderr_is_tty: bool) -> LogFormat:
        """Resolve ``log_format=None``: humans get console output, pipes get JSON."""
        if self.log_format is not None:
            return self.log_format
        return "console" if stderr_is_tty else "json"



# --------------------------------------------------------------------------- options

_Kind = Literal[
    "path", "path_list", "choice", "hostport", "hostport_list", "peer_list", "nodeid_list",
    "bool", "int",
    "positive_float", "fraction", "seconds", "text",
]
_LIST_KINDS = frozenset({"hostport_list", "peer_list", "nodeid_list", "path_list"})


@dataclass(frozen=True)
class _Option:
    name: str
    kind: _Kind
    help: str
    flag: bool = True
    minimum: int | None = None
    choices: tuple[str, ...] = ()

    @property
    def flag_name(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env_name(self) -> str:
        return env_var_name(self.name)


_OPTION_LIST: tuple[_Option, ...] = (
    _Option("datadir", "path", "data directory (default ~/.powlab/<network>)"),
    _Option("network", "choice", "network to join", choices=NETWORKS),
    _Option("p2p_bind", "hostport", "P2P listen address HOST:PORT (port 0 = any free port)"),
    _Option("rpc_bind", "hostport", "JSON-RPC listen address HOST:PORT"),
    _Option("connect", "peer_list",
            "connect only to this peer [NODEID@]HOST:PORT (a node id pins the identity the peer "
            "must prove); repeatable (env: comma-separated)"),
    _Option("addnode", "peer_list",
            "also connect to this peer [NODEID@]HOST:PORT; repeatable (env: comma-separated)"),
    _Option("loadblock", "path_list",
            "import blocks from FILE at start-up (one hex block per line, as `getblock HASH 0`"
            " prints); repeatable"),
    _Option("no_listen", "bool", "do not accept inbound P2P connections"),
    _Option("mine", "bool", "run the miner"),
    _Option("hashrate", "positive_float", "cap the miner at this many hashes per second"),
    _Option("miner_processes", "int", "number of miner processes (default: all cores)",
            minimum=1),
    _Option("miner_prefork", "bool",
            "start the miner's worker processes at start-up, by fork before any thread, idle "
            "until mining starts, so that they share the daemon's memory (else they are "
            "spawned, each a fresh interpreter, when mining starts)"),
    _Option("mining_address", "text", "address that receives mining rewards"),
    _Option("finality_depth", "int", "blocks after which a block is final (default: network's)",
            minimum=1),
    _Option("enforce_finality", "bool",
            "refuse reorganisations that would disconnect finality-depth or more blocks "
            "(revert a final transaction)"),
    _Option("addressindex", "bool",
            "keep an index of every address's history on disk (getaddress* RPCs); built from "
            "the stored blocks at start when missing or stale"),
    _Option("reindex_addresses", "bool",
            "rebuild the address index from scratch at start (implies --addressindex)"),
    _Option("log_format", "choice",
            "log format (default: console on a terminal, json otherwise)", choices=LOG_FORMATS),
    _Option("log_level", "choice", "minimum log level", choices=LOG_LEVELS),
    _Option("rpc_user", "text", "JSON-RPC user name (requires --rpc-password)"),
    _Option("rpc_password", "text", "JSON-RPC password (requires --rpc-user)"),
    _Option("max_rpc_body_bytes", "int", "largest accepted JSON-RPC request body", flag=False,
            minimum=1),
    _Option("max_rpc_batch", "int", "most requests in one JSON-RPC batch", flag=False,
            minimum=1),
    _Option("rpc_header_timeout", "positive_float",
            "seconds an RPC client gets to send complete request headers; also how long an "
            "idle keep-alive connection stays open", flag=False),
    _Option("max_rpc_connections", "int",
            "most simultaneous RPC connections, event streams included", flag=False, minimum=1),
    _Option("max_mempool_bytes", "int", "mempool size limit in bytes", minimum=1),
    _Option("max_orphan_txs", "int", "orphan transaction pool limit", flag=False, minimum=0),
    _Option("mempool_replacement", "choice",
            "what a conflicting transaction may do to the one in the mempool: first-seen (never "
            "replace it), opt-in (BIP125: replace it if it signals) or full (replace-by-fee, "
            "Bitcoin Core's default since v28)", choices=REPLACEMENT_POLICIES),
    _Option("max_inbound", "int", "maximum inbound peer connections", minimum=0),
    _Option("max_outbound", "int", "maximum outbound peer connections", minimum=0),
    _Option("allow_peer", "nodeid_list",
            "only accept peers with this node id (hex); repeatable (env: comma-separated)"),
    _Option("ban_seconds", "int", "how long a misbehaving peer stays banned", minimum=0),
    _Option("assumed_attacker_share", "fraction",
            "attacker hash-rate share used for the reversal risk gettransaction reports"),
    _Option("double_spend_alerts", "bool",
            "relay proof of double spends of unconfirmed payments and flag the victims"),
    _Option("listening_period", "seconds",
            "merchant setting: seconds a 0-confirmation payment must go unchallenged before "
            "it counts as accepted"),
    _Option("wallet_rbf", "bool",
            "sendtoaddress payments signal BIP125 replaceability unless its replaceable "
            "argument says otherwise (bitcoind's walletrbf)"),
    _Option("wallet_rebroadcast_interval", "positive_float",
            "seconds between rebroadcasts of the wallet's unconfirmed payments"),
)
_OPTIONS: dict[str, _Option] = {opt.name: opt for opt in _OPTION_LIST}
_DEFAULTS: dict[str, Any] = {
    f.name: f.default for f in fields(NodeConfig) if f.name in _OPTIONS and f.name != "datadir"
}
_FILE_KEYS: tuple[str, ...] = (*_OPTIONS, "params")


def env_var_name(option: str) -> str:
    """``p2p_bind`` -> ``POWLAB_P2P_BIND``."""
    return ENV_PREFIX + option.replace("-", "_").upper()


def add_node_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the node flags to ``parser``.

    Every flag defaults to ``argparse.SUPPRESS`` so an absent flag leaves no attribute
    on the namespace and lower-precedence layers can fill it in.  Values are kept as
    strings; :func:`load_config` converts them so that bad flags raise
    :class:`ConfigError` naming the flag, like bad env or file values do.
    """
    group = parser.add_argument_group("node configuration")
    group.add_argument(
        "--config", metavar="FILE", default=argparse.SUPPRESS,
        help=f"read options from this TOML file (env {CONFIG_ENV_VAR})",
    )
    for opt in _OPTION_LIST:
        if not opt.flag:
            continue
        help_text = f"{opt.help} (env {opt.env_name}{_default_hint(opt)})"
        if opt.kind == "bool":
            group.add_argument(opt.flag_name, dest=opt.name, action="store_true",
                               default=argparse.SUPPRESS, help=help_text)
        elif opt.kind in _LIST_KINDS:
            group.add_argument(opt.flag_name, dest=opt.name, action="append",
                               metavar=_metavar(opt), default=argparse.SUPPRESS, help=help_text)
        else:
            group.add_argument(opt.flag_name, dest=opt.name, metavar=_metavar(opt),
                               default=argparse.SUPPRESS, help=help_text)


def _metavar(opt: _Option) -> str:
    if opt.choices:
        return "{" + ",".join(opt.choices) + "}"
    return {
        "path": "DIR", "path_list": "FILE", "hostport": "HOST:PORT", "hostport_list": "HOST:PORT",
        "peer_list": "[NODEID@]HOST:PORT",
        "nodeid_list": "NODE_ID", "int": "N", "positive_float": "H/S", "text": "TEXT",
        "fraction": "Q", "seconds": "SECONDS",
    }.get(opt.kind, "VALUE")


def _default_hint(opt: _Option) -> str:
    default = _DEFAULTS.get(opt.name)
    if default is None or default == () or opt.kind == "bool":
        return ""
    # No '%' in help strings: argparse would treat it as a format directive.
    return f"; default {default}"


# --------------------------------------------------------------------------- parsing values


class _Setting(NamedTuple):
    value: Any
    source: str  # e.g. "flag --hashrate", used in cross-field error messages


def _show(value: object) -> str:
    text = repr(str(value)) if isinstance(value, Path) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _bad(source: str, value: object, expected: str) -> ConfigError:
    return ConfigError(f"{source}: invalid value {_show(value)}; expected {expected}")


def parse_peer(text: str) -> tuple[bytes | None, tuple[str, int]]:
    """Split ``[NODEID@]HOST:PORT``: the pinned node id (32 bytes) if given, and the address.

    Raises ValueError with the reason.
    """
    node_hex, sep, address = text.strip().rpartition("@")
    if not sep:
        return None, parse_host_port(address)
    if len(node_hex) != 64 or not _HEX.fullmatch(node_hex):
        raise ValueError(f"node id {node_hex!r} is not 64 hex digits")
    return bytes.fromhex(node_hex), parse_host_port(address)


def parse_host_port(text: str) -> tuple[str, int]:
    """Split and validate ``HOST:PORT`` (IPv6 as ``[::1]:PORT``); port 0 means "any".

    Raises ValueError with the reason.
    """
    text = text.strip()
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        if not sep:
            raise ValueError("IPv6 hosts are written [ADDRESS]:PORT")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError("missing ':PORT'")
        if ":" in host:
            raise ValueError("write IPv6 hosts in brackets, e.g. [::1]:18444")
        _check_host(host)
    if not port_text.isascii() or not port_text.isdigit():
        raise ValueError(f"port {port_text!r} is not a number")
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"port {port} is out of range 0..65535")
    return host, port


def _check_host(host: str) -> None:
    if not host:
        raise ValueError("missing host")
    if _DOTTED_NUMBERS.fullmatch(host):
        # All-numeric names would never resolve, so treat them as IPv4 and insist on it.
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv4 address") from None
        return
    labels = host.rstrip(".").split(".")
    if len(host) > 253 or not all(_HOSTNAME_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"{host!r} is not a valid host name or IP address")


def _format_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _expected(opt: _Option, textual: bool) -> str:
    if opt.kind == "bool":
        return "a boolean (1/0, true/false, yes/no, on/off)" if textual else "true or false"
    if opt.kind == "int":
        return f"an integer >= {opt.minimum}"
    if opt.kind == "positive_float":
        return "a finite number > 0"
    if opt.kind == "fraction":
        return "a number between 0 and 1"
    if opt.kind == "seconds":
        return "a finite number of seconds >= 0"
    if opt.kind == "choice":
        return "one of " + ", ".join(opt.choices)
    if opt.kind in ("path", "path_list"):
        return "a non-empty path"
    if opt.kind in ("hostport", "hostport_list"):
        return "HOST:PORT with a port in 0..65535"
    if opt.kind == "peer_list":
        return "[NODEID@]HOST:PORT: an optional 64-hex-digit node id, a port in 0..65535"
    if opt.kind == "nodeid_list":
        return "a hex node id"
    return "a non-empty string"


def _convert(opt: _Option, raw: object, source: str, textual: bool) -> Any:
    """Turn one raw value into the option's type, or raise ConfigError.

    ``textual`` marks sources where everything arrives as a string (env, flags), so
    strings are parsed; TOML values already carry types and are checked strictly.
    """
    if opt.kind in _LIST_KINDS:
        return tuple(_convert_item(opt, item, source, textual)
                     for item in _list_items(opt, raw, source, textual))
    return _convert_item(opt, raw, source, textual)


def _list_items(opt: _Option, raw: object, source: str, textual: bool) -> list[object]:
    if textual and isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list | tuple):
        raise _bad(source, raw, f"a list of values, each {_expected(opt, textual)}")
    if not textual:
        return list(raw)
    # Comma-splitting lets "--connect a:1,b:2" and POWLAB_CONNECT=a:1,b:2 mean the same;
    # empty pieces are dropped so POWLAB_CONNECT="" clears the list.
    items: list[object] = []
    for item in raw:
        if isinstance(item, str):
            items.extend(piece.strip() for piece in item.split(",") if piece.strip())
        else:
            items.append(item)
    return items


def _convert_item(opt: _Option, raw: object, source: str, textual: bool) -> Any:
    expected = _expected(opt, textual)
    if opt.kind == "bool":
        return _to_bool(raw, source, expected, textual)
    if opt.kind == "int":
        value = _to_int(raw, source, expected, textual)
        if opt.minimum is not None and value < opt.minimum:
            raise _bad(source, raw, expected)
        return value
    if opt.kind in ("positive_float", "fraction", "seconds"):
        number = _to_float(raw, source, expected, textual)
        valid = math.isfinite(number) and (
            number > 0 if opt.kind == "positive_float"
            else 0 <= number <= 1 if opt.kind == "fraction"
            else number >= 0
        )
        if not valid:
            raise _bad(source, raw, expected)
        return number
    if opt.kind in ("path", "path_list") and isinstance(raw, os.PathLike):
        raw = os.fspath(raw)
    if not isinstance(raw, str):
        raise _bad(source, raw, expected)
    return _convert_text(opt, raw, source, expected)


def _convert_text(opt: _Option, raw: str, source: str, expected: str) -> Any:
    text = raw.strip()
    if opt.kind == "choice":
        if text.lower() not in opt.choices:
            raise _bad(source, raw, expected)
        return text.lower()
    if opt.kind in ("hostport", "hostport_list", "peer_list"):
        try:
            node_id, (host, port) = (
                parse_peer(text) if opt.kind == "peer_list" else (None, parse_host_port(text))
            )
        except ValueError as exc:
            raise ConfigError(
                f"{source}: invalid value {_show(raw)}; expected {expected} ({exc})"
            ) from None
        return (f"{node_id.hex()}@" if node_id else "") + _format_host_port(host, port)
    if opt.kind == "nodeid_list":
        if not _HEX.fullmatch(text):
            raise _bad(source, raw, expected)
        return text.lower()
    if not text:
        raise _bad(source, raw, expected)
    # Secrets and addresses keep their exact spelling; only emptiness is checked here.
    return text if opt.kind in ("path", "path_list") else raw


def _to_bool(raw: object, source: str, expected: str, textual: bool) -> bool:
    if isinstance(raw, bool):
        return raw
    if textual and isinstance(raw, str):
        word = raw.strip().lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
    raise _bad(source, raw, expected)


def _to_int(raw: object, source: str, expected: str, textual: bool) -> int:
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if textual and isinstance(raw, str):
        try:
            return int(raw.strip())
        except ValueError:
            pass
    raise _bad(source, raw, expected)


def _to_float(raw: object, source: str, expected: str, textual: bool) -> float:
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        return float(raw)
    if textual and isinstance(raw, str):
        try:
            return float(raw.strip())
        except ValueError:
            pass
    raise _bad(source, raw, expected)


# --------------------------------------------------------------------------- layers


def _file_layer(
    text: str, file_name: str | None
) -> tuple[dict[str, _Setting], dict[str, ParamValue]]:
    where = f" in {file_name}" if file_name else ""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message already ends with "(at line N, column M)".
        raise ConfigError(f"config file{where}: TOML syntax error: {exc}") from None
    settings: dict[str, _Setting] = {}
    spelled: dict[str, str] = {}
    params: dict[str, ParamValue] = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in _FILE_KEYS:
            raise ConfigError(f"config file{where}: unknown key {key!r}{_suggest(key)}")
        if name in spelled:
            raise ConfigError(
                f"config file{where}: key {key!r} is given twice (also as {spelled[name]!r})"
            )
        spelled[name] = key
        if name == "params":
            params = _check_params(value, key, where)
        else:
            source = f"config file key {key!r}{where}"
            settings[name] = _Setting(_convert(_OPTIONS[name], value, source, False), source)
    return settings, params


def _suggest(key: str) -> str:
    kebab = "-" in key
    candidates = [k.replace("_", "-") if kebab else k for k in _FILE_KEYS]
    match = difflib.get_close_matches(key, candidates, n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _check_params(value: object, key: str, where: str) -> dict[str, ParamValue]:
    if not isinstance(value, dict):
        raise _bad(f"config file key {key!r}{where}", value,
                   "a table of consensus parameter overrides ([params])")
    params: dict[str, ParamValue] = {}
    for name, item in value.items():
        if not isinstance(item, int | str | bool | float):
            raise _bad(f"config file key '{key}.{name}'{where}", item,
                       "an integer, float, string or boolean")
        params[name] = item
    return params


def _env_layer(environ: Mapping[str, str]) -> dict[str, _Setting]:
    # Only known names are looked up, so stray POWLAB_* variables are ignored.
    settings: dict[str, _Setting] = {}
    for opt in _OPTION_LIST:
        if opt.env_name in environ:
            source = f"environment variable {opt.env_name}"
            settings[opt.name] = _Setting(
                _convert(opt, environ[opt.env_name], source, True), source
            )
    return settings


def _args_dict(args: argparse.Namespace | Mapping[str, object]) -> Mapping[str, object]:
    return vars(args) if isinstance(args, argparse.Namespace) else args


def _args_layer(args: argparse.Namespace | Mapping[str, object]) -> dict[str, _Setting]:
    # None counts as "not given" so callers may use None defaults instead of SUPPRESS;
    # keys that are not options (subcommand, handler functions...) are ignored.
    settings: dict[str, _Setting] = {}
    for key, value in _args_dict(args).items():
        opt = _OPTIONS.get(key.replace("-", "_"))
        if opt is None or value is None or value is argparse.SUPPRESS:
            continue
        source = f"flag {opt.flag_name}" if opt.flag else f"argument {opt.name!r}"
        settings[opt.name] = _Setting(_convert(opt, value, source, True), source)
    return settings


def _expand_user(text: str, environ: Mapping[str, str]) -> Path:
    # Prefer the caller's HOME so results depend only on the arguments given.
    home = environ.get("HOME")
    if home and (text == "~" or text.startswith("~/")):
        return Path(home + text[1:])
    try:
        return Path(text).expanduser()
    except RuntimeError as exc:
        raise ConfigError(f"cannot expand '~' in path {text!r}: {exc}") from None


def load_config(
    args: argparse.Namespace | Mapping[str, object],
    environ: Mapping[str, str],
    file_text: str | None = None,
    *,
    file_name: str | None = None,
) -> NodeConfig:
    """Merge flags (``args``), ``environ`` and TOML ``file_text`` into a NodeConfig.

    ``args`` is the namespace from a parser set up with :func:`add_node_arguments` or a
    plain dict keyed by option name (values may be strings or already typed).
    ``file_name`` is only used in error messages.  Lists from a higher layer replace,
    not extend, those from a lower one.
    """
    file_settings: dict[str, _Setting] = {}
    params: dict[str, ParamValue] = {}
    if file_text is not None:
        file_settings, params = _file_layer(file_text, file_name)
    merged = {**file_settings, **_env_layer(environ), **_args_layer(args)}
    values: dict[str, Any] = dict(_DEFAULTS)
    values.update({name: setting.value for name, setting in merged.items()})
    _check_rpc_credentials(merged)
    datadir = values.pop("datadir", None)
    if datadir is None:
        # The default lives under the network name so regtest and testnet never share data.
        datadir = f"~/.powlab/{values['network']}"
    return NodeConfig(datadir=_expand_user(datadir, environ), params=params, **values)


def _check_rpc_credentials(merged: Mapping[str, _Setting]) -> None:
    # A lone user or password would leave RPC either open or unusable; neither is intended.
    user, password = merged.get("rpc_user"), merged.get("rpc_password")
    if user is not None and password is None:
        given, missing, source = "rpc_user", "rpc_password", user.source
    elif password is not None and user is None:
        given, missing, source = "rpc_password", "rpc_user", password.source
    else:
        return
    opt = _OPTIONS[missing]
    raise ConfigError(
        f"{given} is set ({source}) but {missing} is not; set both or neither "
        f"(flag {opt.flag_name}, environment variable {opt.env_name} "
        f"or config file key {missing!r})"
    )


def load_config_from_sources(
    args: argparse.Namespace | Mapping[str, object], environ: Mapping[str, str]
) -> NodeConfig:
    """Like :func:`load_config`, reading the file named by ``--config`` or ``POWLAB_CONFIG``.

    Without either, no file is read.  A file that is named but missing is an error,
    because silently running with defaults would hide a typo in the path.
    """
    located = _config_path(args, environ)
    if located is None:
        return load_config(args, environ)
    path, source = located
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} (from {source}) does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path} (from {source}): {exc}") from None
    return load_config(args, environ, text, file_name=str(path))


def _config_path(
    args: argparse.Namespace | Mapping[str, object], environ: Mapping[str, str]
) -> tuple[Path, str] | None:
    candidates: Iterable[tuple[object, str]] = (
        (_args_dict(args).get("config"), "flag --config"),
        (environ.get(CONFIG_ENV_VAR), f"environment variable {CONFIG_ENV_VAR}"),
    )
    for raw, source in candidates:
        if raw is None or raw is argparse.SUPPRESS:
            continue
        if isinstance(raw, os.PathLike):
            raw = os.fspath(raw)
        if not isinstance(raw, str) or not raw.strip():
            raise _bad(source, raw, "a config file path")
        return _expand_user(raw.strip(), environ), source
    return None
