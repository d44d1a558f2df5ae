"""Each node's configuration file, DIR/nK/powlab.toml, and the `--node-option`s in it.

The node is the authority on its options: their names, defaults, types and rules live in the
daemon (node/config.py), which the lab does not import. Instead the lab asks the daemon, the
way a user could: ``python -m node --print-config`` merges and checks a configuration without
starting anything and prints every option as JSON (unset ones as null), or reports the error
a start would. That one answer gives

- the option names (the keys), so an unknown `--node-option` is refused with the list;
- every default, so a node's file holds every option, exactly as `powlab node` would read it;
- the typed value of each `--node-option KEY=VALUE`, passed to the daemon as its
  ``POWLAB_KEY`` environment variable and so parsed by the same rules as a flag.

Answers are cached for the life of the process: one `powlab testnet up` asks once (twice
with node options).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from lab.testnet.manifest import Manifest, NodeEntry, TestnetError

# The testnet lays these out itself; a --node-option may not move them.
# The testnet decides these: where a node lives and whom it talks to (an `addnode` could send
# traffic off this machine, which a testnet never does).
RESERVED_OPTIONS = frozenset(
    {"datadir", "network", "p2p_bind", "rpc_bind", "connect", "addnode"}
)
CONFIG_ERROR_PREFIX = "powlab node: configuration error: "
ASK_TIMEOUT = 120.0
_BARE_TOML_KEY = re.compile(r"[A-Za-z0-9_-]+")


def collect_node_options(args: argparse.Namespace) -> dict[str, str]:
    options: dict[str, str] = {}
    for item in args.node_option:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise TestnetError(f"--node-option wants KEY=VALUE, got {item!r}")
        options[key.strip()] = value.strip()
    if args.double_spend_alerts:
        options["double_spend_alerts"] = "true"
    if args.enforce_finality:
        options["enforce_finality"] = "true"
    return options


def parse_node_options(options: dict[str, str]) -> dict[str, Any]:
    """Validate KEY=VALUE node options with the node's own config rules; typed values back."""
    names = {key.replace("-", "_"): value for key, value in options.items()}
    known = set(node_defaults()) - {"params"}
    unknown = sorted(set(names) - known)
    if unknown:
        raise TestnetError(f"--node-option: unknown option {', '.join(unknown)}; known: "
                           f"{', '.join(sorted(known))}")
    reserved = set(names) & RESERVED_OPTIONS
    if reserved:
        raise TestnetError(f"--node-option cannot set {', '.join(sorted(reserved))}: the "
                           "testnet lays those out itself")
    if not names:
        return {}
    parsed = _ask_node(tuple(sorted(names.items())))
    return {name: parsed[name] for name in names}


def node_defaults() -> dict[str, Any]:
    """Every node option at its default, as the daemon reports it (``params`` included)."""
    return _ask_node(())


@functools.cache
def _ask_node(options: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    """``python -m node --print-config`` with `options` as its POWLAB_* variables (and none
    of the caller's); the node's own message, naming the option, when it refuses one."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("POWLAB_")}
    env["POWLAB_DATADIR"] = "/"  # a placeholder: the layout sets every node's own
    variables = {name: "POWLAB_" + name.upper() for name, _ in options}
    env.update({variables[name]: value for name, value in options})
    try:
        done = subprocess.run([sys.executable, "-m", "node", "--print-config"], env=env,
                              capture_output=True, text=True, timeout=ASK_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise TestnetError(f"`python -m node --print-config` did not answer within "
                           f"{ASK_TIMEOUT:.0f}s") from None
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"exit status {done.returncode}"]
        message = lines[-1].removeprefix(CONFIG_ERROR_PREFIX)
        for name, variable in variables.items():
            message = message.replace(f"environment variable {variable}", f"option {name!r}")
        raise TestnetError(f"--node-option: {message}")
    data = json.loads(done.stdout)
    if not isinstance(data, dict):
        raise TestnetError("`python -m node --print-config` printed no configuration")
    return data


def write_node_config(manifest: Manifest, entry: NodeEntry) -> None:
    mining = manifest.funded and entry.mining_rate is not None
    values = dict(node_defaults())
    values.update(
        datadir=entry.datadir,
        network=manifest.network,
        p2p_bind=entry.p2p,
        rpc_bind=entry.rpc,
        connect=list(entry.connect),
        # A node without a connect list would otherwise dial every address gossip tells it
        # of (n1 of a line would end up peered with everyone); with one, gossip dialling is off.
        max_outbound=len(entry.connect),
        max_inbound=max(32, len(manifest.nodes)),
        # Written only once funded, so a restarted miner resumes at its rate on its own.
        mine=mining,
        hashrate=entry.mining_rate if mining else None,
        miner_processes=1,  # several nodes share few cores
        # A miner's worker is forked at start-up (sharing the daemon's pages), idle until
        # `up` starts mining, rather than spawned as a fresh interpreter then.
        miner_prefork=entry.is_miner,
        finality_depth=manifest.finality_depth,
        log_format="json",
    )
    values.update(parse_node_options(manifest.node_options))
    Path(entry.datadir).mkdir(parents=True, exist_ok=True, mode=0o700)
    Path(entry.config).write_text(render_toml(values))


# --------------------------------------------------------------------------- TOML


def render_toml(values: dict[str, Any]) -> str:
    """A node configuration file: one ``key = value`` line per option in the given order,
    unset (None) ones left out as TOML has no null, then the ``[params]`` table if any."""
    lines = ["# powlab node configuration"]
    for name, value in values.items():
        if name != "params" and value is not None:
            lines.append(f"{name} = {_toml_value(value)}")
    params = values.get("params") or {}
    if params:
        lines.append("")
        lines.append("[params]")
        for key, value in params.items():
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _toml_value(value: object) -> str:
    # bool must be tested before int because bool is a subclass of int.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        # repr gives the shortest round-tripping form; inf/nan are valid TOML too.
        return repr(value)
    if isinstance(value, str | Path):
        return _toml_string(str(value))
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"cannot render {type(value).__name__} as TOML")


def _toml_string(text: str) -> str:
    escapes = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f",
               "\r": "\\r"}
    out = []
    for ch in text:
        if ch in escapes:
            out.append(escapes[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_key(key: str) -> str:
    return key if _BARE_TOML_KEY.fullmatch(key) else _toml_string(key)
