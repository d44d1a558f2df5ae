"""Tests for node.config: precedence, parsing, validation errors and TOML round-trips."""

from __future__ import annotations

import argparse
import dataclasses
import pickle
from pathlib import Path

import pytest

from lab.testnet.nodeconfig import render_toml
from node.config import (
    ConfigError,
    NodeConfig,
    add_node_arguments,
    env_var_name,
    load_config,
    load_config_from_sources,
    parse_host_port,
    parse_peer,
)

HOME = {"HOME": "/home/alice"}


def parse_flags(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="powlab node")
    add_node_arguments(parser)
    return parser.parse_args(list(argv))


# --------------------------------------------------------------------------- defaults


def test_defaults() -> None:
    cfg = load_config({}, HOME)
    assert cfg == NodeConfig(datadir=Path("/home/alice/.powlab/regtest"))
    assert cfg.network == "regtest"
    assert cfg.p2p_bind == "127.0.0.1:18444"
    assert cfg.rpc_bind == "127.0.0.1:18443"
    assert cfg.connect == () and cfg.addnode == () and cfg.allow_peer == ()
    assert cfg.no_listen is False and cfg.mine is False and cfg.enforce_finality is False
    assert cfg.hashrate is None and cfg.miner_processes is None
    assert cfg.mining_address is None and cfg.finality_depth is None
    assert cfg.log_format is None and cfg.log_level == "info"
    assert cfg.rpc_user is None and cfg.rpc_password is None
    assert cfg.max_rpc_body_bytes == 1_000_000
    assert cfg.max_mempool_bytes == 50_000_000
    assert cfg.max_orphan_txs == 100
    assert cfg.mempool_replacement == "first-seen"
    assert (cfg.max_inbound, cfg.max_outbound, cfg.ban_seconds) == (32, 8, 86400)
    assert cfg.params == {}


def test_default_datadir_follows_network_from_any_layer() -> None:
    assert load_config({}, HOME, 'network = "testnet"').datadir == Path(
        "/home/alice/.powlab/testnet"
    )
    env = {**HOME, "POWLAB_NETWORK": "testnet"}
    assert load_config({}, env).datadir == Path("/home/alice/.powlab/testnet")
    assert load_config(parse_flags("--network", "testnet"), HOME).datadir == Path(
        "/home/alice/.powlab/testnet"
    )


def test_explicit_datadir_is_expanded() -> None:
    assert load_config(parse_flags("--datadir", "~/chain"), HOME).datadir == Path(
        "/home/alice/chain"
    )
    assert load_config({}, {**HOME, "POWLAB_DATADIR": "/srv/p"}).datadir == Path("/srv/p")


def test_effective_log_format() -> None:
    cfg = load_config({}, HOME)
    assert cfg.effective_log_format(stderr_is_tty=True) == "console"
    assert cfg.effective_log_format(stderr_is_tty=False) == "json"
    forced = load_config(parse_flags("--log-format", "json"), HOME)
    assert forced.effective_log_format(stderr_is_tty=True) == "json"


# --------------------------------------------------------------------------- precedence

# option -> (file TOML value, env value, flag argv, expected file/env/flag results)
PRECEDENCE_CASES = {
    "datadir": ('"/f"', "/e", ["--datadir", "/a"], (Path("/f"), Path("/e"), Path("/a"))),
    "network": ('"testnet"', "regtest", ["--network", "testnet"],
                ("testnet", "regtest", "testnet")),
    "p2p_bind": ('"1.1.1.1:1"', "2.2.2.2:2", ["--p2p-bind", "3.3.3.3:3"],
                 ("1.1.1.1:1", "2.2.2.2:2", "3.3.3.3:3")),
    "rpc_bind": ('"h1:1"', "h2:2", ["--rpc-bind", "h3:3"], ("h1:1", "h2:2", "h3:3")),
    "connect": ('["f:1"]', "e:1,e:2", ["--connect", "a:1"],
                (("f:1",), ("e:1", "e:2"), ("a:1",))),
    "addnode": ('["f:1"]', "e:1", ["--addnode", "a:1", "--addnode", "b:2"],
                (("f:1",), ("e:1",), ("a:1", "b:2"))),
    "loadblock": ('["f.hex"]', "e.hex,e2.hex", ["--loadblock", "a.hex", "--loadblock", "b.hex"],
                  (("f.hex",), ("e.hex", "e2.hex"), ("a.hex", "b.hex"))),
    "no_listen": ("false", "true", ["--no-listen"], (False, True, True)),
    "mine": ("true", "off", ["--mine"], (True, False, True)),
    "hashrate": ("10", "20.5", ["--hashrate", "30"], (10.0, 20.5, 30.0)),
    "miner_processes": ("1", "2", ["--miner-processes", "3"], (1, 2, 3)),
    "miner_prefork": ("true", "off", ["--miner-prefork"], (True, False, True)),
    "mining_address": ('"addr-f"', "addr-e", ["--mining-address", "addr-a"],
                       ("addr-f", "addr-e", "addr-a")),
    "finality_depth": ("6", "10", ["--finality-depth", "100"], (6, 10, 100)),
    "enforce_finality": ("true", "no", ["--enforce-finality"], (True, False, True)),
    "addressindex": ("true", "no", ["--addressindex"], (True, False, True)),
    "reindex_addresses": ("true", "no", ["--reindex-addresses"], (True, False, True)),
    "log_format": ('"json"', "console", ["--log-format", "json"],
                   ("json", "console", "json")),
    "log_level": ('"debug"', "warning", ["--log-level", "error"],
                  ("debug", "warning", "error")),
    "max_mempool_bytes": ("1", "2", ["--max-mempool-bytes", "3"], (1, 2, 3)),
    "max_inbound": ("1", "2", ["--max-inbound", "3"], (1, 2, 3)),
    "mempool_replacement": ('"full"', "Opt-In", ["--mempool-replacement", "first-seen"],
                            ("full", "opt-in", "first-seen")),
    "max_outbound": ("1", "2", ["--max-outbound", "3"], (1, 2, 3)),
    "allow_peer": ('["aa"]', "bb,cc", ["--allow-peer", "DD"], (("aa",), ("bb", "cc"), ("dd",))),
    "ban_seconds": ("1", "2", ["--ban-seconds", "3"], (1, 2, 3)),
    "assumed_attacker_share": ("0.2", "0.3", ["--assumed-attacker-share", "0.4"],
                               (0.2, 0.3, 0.4)),
    "double_spend_alerts": ("true", "0", ["--double-spend-alerts"], (True, False, True)),
    "listening_period": ("1.5", "2", ["--listening-period", "3"], (1.5, 2.0, 3.0)),
    "wallet_rbf": ("true", "0", ["--wallet-rbf"], (True, False, True)),
    "wallet_rebroadcast_interval": ("1.5", "2", ["--wallet-rebroadcast-interval", "3"],
                                    (1.5, 2.0, 3.0)),
    "rpc_user": ('"fu"', "eu", ["--rpc-user", "au"], ("fu", "eu", "au")),
    "rpc_password": ('"fp"', "ep", ["--rpc-password", "ap"], ("fp", "ep", "ap")),
}
# The credentials must be set together, so each one's case supplies the other via env.
PARTNER_ENV = {"rpc_user": {"POWLAB_RPC_PASSWORD": "pw"}, "rpc_password": {"POWLAB_RPC_USER": "u"}}


@pytest.mark.parametrize("name", sorted(PRECEDENCE_CASES))
def test_precedence_flag_over_env_over_file_over_default(name: str) -> None:
    file_value, env_value, argv, (from_file, from_env, from_flag) = PRECEDENCE_CASES[name]
    text = f"{name} = {file_value}\n"
    base = {**HOME, **PARTNER_ENV.get(name, {})}
    env = {**base, env_var_name(name): env_value}
    flags = parse_flags(*argv)
    default = getattr(NodeConfig(datadir=Path("/")), name)

    assert getattr(load_config(parse_flags(), base, text), name) == from_file
    assert getattr(load_config(parse_flags(), env, text), name) == from_env
    assert getattr(load_config(parse_flags(), env), name) == from_env
    assert getattr(load_config(flags, env, text), name) == from_flag
    assert getattr(load_config(flags, base, text), name) == from_flag
    # Sanity: each case really differs from the default somewhere, or it proves nothing.
    assert default != from_flag or default != from_env or default != from_file


def test_every_flagged_option_has_a_precedence_case() -> None:
    flagged = {a.dest for a in parse_flags_parser()._actions if a.dest not in ("help", "config")}
    assert flagged == set(PRECEDENCE_CASES)


def parse_flags_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_node_arguments(parser)
    return parser


@pytest.mark.parametrize(
    ("name", "file_value", "env_value", "expected"),
    [
        ("max_rpc_body_bytes", "10", "20", (10, 20)),
        ("max_orphan_txs", "0", "5", (0, 5)),
        ("rpc_user", '"fu"', "eu", ("fu", "eu")),
    ],
)
def test_file_and_env_only_options(
    name: str, file_value: str, env_value: str, expected: tuple[object, object]
) -> None:
    text = f"{name} = {file_value}\n"
    if name == "rpc_user":
        text += 'rpc_password = "pw"\n'
    env = {**HOME, env_var_name(name): env_value}
    assert getattr(load_config({}, HOME, text), name) == expected[0]
    assert getattr(load_config({}, env, text), name) == expected[1]


def test_absent_flags_leave_namespace_empty() -> None:
    assert vars(parse_flags()) == {}


def test_args_as_dict_with_typed_values_and_none_as_unset() -> None:
    cfg = load_config(
        {"hashrate": 7, "mine": True, "connect": ("a:1",), "network": None, "command": "node",
         "max_orphan_txs": 3},
        {**HOME, "POWLAB_NETWORK": "testnet"},
    )
    assert cfg.hashrate == 7.0 and isinstance(cfg.hashrate, float)
    assert cfg.mine is True
    assert cfg.connect == ("a:1",)
    assert cfg.network == "testnet"  # None in args did not hide the env value
    assert cfg.max_orphan_txs == 3


def test_lists_from_higher_layer_replace_lower() -> None:
    cfg = load_config({}, {**HOME, "POWLAB_CONNECT": ""}, 'connect = ["f:1"]')
    assert cfg.connect == ()


# --------------------------------------------------------------------------- env parsing


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a:1", ("a:1",)),
        ("a:1,b:2", ("a:1", "b:2")),
        (" a:1 , b:2 ,", ("a:1", "b:2")),
        ("[::1]:18444,10.0.0.1:0", ("[::1]:18444", "10.0.0.1:0")),
        ("", ()),
    ],
)
def test_env_list_parsing(text: str, expected: tuple[str, ...]) -> None:
    assert load_config({}, {**HOME, "POWLAB_CONNECT": text}).connect == expected


def test_flag_list_accepts_commas_too() -> None:
    assert load_config(parse_flags("--addnode", "a:1,b:2"), HOME).addnode == ("a:1", "b:2")


@pytest.mark.parametrize(
    ("word", "expected"),
    [("1", True), ("true", True), ("YES", True), ("On", True),
     ("0", False), ("False", False), ("no", False), ("OFF", False)],
)
def test_env_booleans(word: str, expected: bool) -> None:
    assert load_config({}, {**HOME, "POWLAB_NO_LISTEN": word}).no_listen is expected


def test_unknown_env_vars_are_ignored() -> None:
    env = {**HOME, "POWLAB_BOGUS": "x", "POWLAB_PARAMS": "{}", "POWLAB_": "", "POWLABX": "1"}
    assert load_config({}, env) == load_config({}, HOME)


def test_env_choices_are_case_insensitive() -> None:
    cfg = load_config({}, {**HOME, "POWLAB_LOG_LEVEL": "DEBUG", "POWLAB_NETWORK": "TestNet"})
    assert (cfg.log_level, cfg.network) == ("debug", "testnet")


# --------------------------------------------------------------------------- file keys


def test_kebab_and_snake_keys() -> None:
    text = 'p2p-bind = "0.0.0.0:1"\nrpc_bind = "0.0.0.0:2"\nno-listen = true\nmax_inbound = 3\n'
    cfg = load_config({}, HOME, text)
    assert (cfg.p2p_bind, cfg.rpc_bind, cfg.no_listen, cfg.max_inbound) == (
        "0.0.0.0:1", "0.0.0.0:2", True, 3,
    )


def test_same_key_in_both_spellings_is_an_error() -> None:
    with pytest.raises(ConfigError, match="'p2p_bind' is given twice"):
        load_config({}, HOME, 'p2p-bind = "a:1"\np2p_bind = "a:2"\n')


def test_params_table_passed_through() -> None:
    text = 'mine = true\n[params]\ntarget_block_time = 2\nname = "x"\nfast = true\nf = 0.5\n'
    cfg = load_config({}, HOME, text)
    assert cfg.params == {"target_block_time": 2, "name": "x", "fast": True, "f": 0.5}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('params = 3\n', "config file key 'params'"),
        ('[params]\nx = [1, 2]\n', "config file key 'params.x'"),
        ('[params.sub]\nx = 1\n', "config file key 'params.sub'"),
    ],
)
def test_bad_params(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config({}, HOME, text)


@pytest.mark.parametrize(
    ("key", "suggestion"),
    [("hashrat", "hashrate"), ("p2p-bnd", "p2p-bind"), ("max_outbund", "max_outbound"),
     ("param", "params")],
)
def test_unknown_file_key_suggests(key: str, suggestion: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config({}, HOME, f"{key} = 1\n")
    message = str(info.value)
    assert f"unknown key '{key}'" in message
    assert f"did you mean '{suggestion}'?" in message


def test_unknown_file_key_without_close_match() -> None:
    with pytest.raises(ConfigError, match="unknown key 'zzzzzz'") as info:
        load_config({}, HOME, "zzzzzz = 1\n")
    assert "did you mean" not in str(info.value)


def test_toml_syntax_error_reports_line() -> None:
    with pytest.raises(ConfigError, match=r"TOML syntax error.*line 2"):
        load_config({}, HOME, 'mine = true\nhashrate = = 3\n', file_name="node.toml")


# --------------------------------------------------------------------------- bad values

BAD_VALUES = [
    # option, bad TOML value, bad text value, fragment of the expectation message
    ("hashrate", "0", "fast", "number > 0"),
    ("hashrate", "-1.5", "-1", "number > 0"),
    ("hashrate", '"5"', "nan", "number > 0"),
    ("miner_processes", "0", "two", "integer >= 1"),
    ("finality_depth", "0", "1.5", "integer >= 1"),
    ("max_mempool_bytes", "0", "-5", "integer >= 1"),
    ("max_inbound", "-1", "x", "integer >= 0"),
    ("max_outbound", "1.5", "", "integer >= 0"),
    ("ban_seconds", "true", "-1", "integer >= 0"),
    ("network", '"mainnet"', "mainnet", "one of regtest, testnet"),
    ("log_format", '"xml"', "xml", "one of json, console"),
    ("log_level", '"trace"', "trace", "one of debug, info, warning, error"),
    ("mempool_replacement", '"rbf"', "fullrbf", "one of first-seen, opt-in, full"),
    ("p2p_bind", '"localhost"', "localhost", "HOST:PORT"),
    ("p2p_bind", '"127.0.0.1:65536"', "127.0.0.1:70000", "HOST:PORT"),
    ("rpc_bind", '"127.0.0.1:port"', ":8080", "HOST:PORT"),
    ("rpc_bind", '"::1:80"', "300.1.1.1:80", "HOST:PORT"),
    ("connect", '"a:1"', "a:1,b", "HOST:PORT"),
    ("addnode", '["a:1", 5]', "bad host!:1", "HOST:PORT"),
    ("allow_peer", '["xyz"]', "ab,not-hex", "hex node id"),
    ("mining_address", '""', "  ", "non-empty string"),
    ("mine", '"yes"', "maybe", "true"),
    ("no_listen", "1", "2", "true"),
    ("enforce_finality", '"true"', "yep", "true"),
    ("datadir", '""', "", "non-empty path"),
]


@pytest.mark.parametrize(("name", "toml_value", "_text", "expected"), BAD_VALUES)
def test_bad_value_in_file(name: str, toml_value: str, _text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config({}, HOME, f"{name} = {toml_value}\n")
    message = str(info.value)
    assert f"config file key '{name}'" in message
    assert expected in message


@pytest.mark.parametrize(("name", "_toml", "text", "expected"), BAD_VALUES)
def test_bad_value_in_env(name: str, _toml: str, text: str, expected: str) -> None:
    var = env_var_name(name)
    with pytest.raises(ConfigError) as info:
        load_config({}, {**HOME, var: text})
    message = str(info.value)
    assert f"environment variable {var}" in message
    assert expected in message
    assert repr(text.split(",")[-1].strip() or text) in message


# store_true flags take no value, so they cannot be given a bad one.
BAD_FLAG_VALUES = [case for case in BAD_VALUES
                   if case[0] not in ("mine", "no_listen", "enforce_finality")]


@pytest.mark.parametrize(("name", "_toml", "text", "expected"), BAD_FLAG_VALUES)
def test_bad_value_in_flag(name: str, _toml: str, text: str, expected: str) -> None:
    flag = "--" + name.replace("_", "-")
    with pytest.raises(ConfigError) as info:
        load_config(parse_flags(f"{flag}={text}"), HOME)
    message = str(info.value)
    assert f"flag {flag}" in message
    assert expected in message


def test_bad_typed_value_in_args_dict() -> None:
    with pytest.raises(ConfigError, match=r"flag --max-inbound: invalid value -3"):
        load_config({"max_inbound": -3}, HOME)
    with pytest.raises(ConfigError, match=r"argument 'max_orphan_txs'"):
        load_config({"max_orphan_txs": "many"}, HOME)


def test_bad_file_value_is_reported_even_if_overridden() -> None:
    with pytest.raises(ConfigError, match="config file key 'hashrate'"):
        load_config(parse_flags("--hashrate", "5"), HOME, 'hashrate = "fast"\n')


def test_error_names_file_when_known() -> None:
    with pytest.raises(ConfigError, match=r"config file key 'mine' in /etc/p\.toml"):
        load_config({}, HOME, "mine = 3\n", file_name="/etc/p.toml")


@pytest.mark.parametrize(
    ("args", "env", "text", "source"),
    [
        ({"rpc_user": "u"}, HOME, None, "flag --rpc-user"),
        ({}, {**HOME, "POWLAB_RPC_PASSWORD": "p"}, None,
         "environment variable POWLAB_RPC_PASSWORD"),
        ({}, HOME, 'rpc_user = "u"\n', "config file key 'rpc_user'"),
    ],
)
def test_rpc_credentials_both_or_neither(
    args: dict[str, object], env: dict[str, str], text: str | None, source: str
) -> None:
    with pytest.raises(ConfigError, match="set both or neither") as info:
        load_config(args, env, text)
    assert source in str(info.value)


def test_rpc_credentials_may_come_from_different_layers() -> None:
    cfg = load_config(parse_flags("--rpc-user", "u"), HOME, 'rpc-password = "p w"\n')
    assert (cfg.rpc_user, cfg.rpc_password) == ("u", "p w")


# --------------------------------------------------------------------------- host:port


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:0", ("127.0.0.1", 0)),
        ("localhost:65535", ("localhost", 65535)),
        ("node-1.example.org:18444", ("node-1.example.org", 18444)),
        ("[::1]:80", ("::1", 80)),
        ("0.0.0.0:08", ("0.0.0.0", 8)),
    ],
)
def test_parse_host_port_ok(text: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "host", ":1", "h:", "h:-1", "h:65536", "::1:80", "[::1]80", "[nothost]:1",
     "1.2.3:4", "-bad:1", "a b:1", "h:١٢"],
)
def test_parse_host_port_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_host_port(text)


# --------------------------------------------------------------------------- to_toml
# The lab writes the nodes' config files (lab.testnet.nodeconfig.render_toml): what it writes
# must load back unchanged.


def to_toml(cfg: NodeConfig) -> str:
    return render_toml({f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)})


def test_to_toml_round_trip_defaults() -> None:
    cfg = load_config({}, HOME)
    assert load_config({}, {}, to_toml(cfg)) == cfg


def test_to_toml_round_trip_everything_set() -> None:
    cfg = NodeConfig(
        datadir=Path('/tmp/we"ird\\dir'),
        network="testnet",
        p2p_bind="[::1]:0",
        rpc_bind="0.0.0.0:9",
        connect=("a:1", "b:2"),
        addnode=("c:3",),
        no_listen=True,
        mine=True,
        hashrate=1e-3,
        miner_processes=2,
        mining_address="pow1qxyz",
        finality_depth=6,
        enforce_finality=True,
        log_format="json",
        log_level="debug",
        rpc_user="user",
        rpc_password='p"a\ts\ns\x01w\u00e9',
        max_rpc_body_bytes=5,
        max_mempool_bytes=6,
        max_orphan_txs=0,
        mempool_replacement="opt-in",
        max_inbound=0,
        max_outbound=1,
        allow_peer=("ab01", "ff"),
        ban_seconds=0,
        params={"target_block_time": 3, "name": "x y", "flag": False, "ratio": 0.25,
                "odd key.with dots": 1},
    )
    text = to_toml(cfg)
    assert load_config({}, {}, text) == cfg
    # The file must also survive being re-read by the strict file-layer checks only.
    assert load_config({}, {"POWLAB_UNRELATED": "1"}, text).params == cfg.params


def test_to_toml_omits_none() -> None:
    text = to_toml(load_config({}, HOME))
    assert "hashrate" not in text and "rpc_user" not in text and "[params]" not in text


def test_node_config_is_frozen_and_picklable() -> None:
    cfg = load_config({}, HOME, "[params]\nx = 1\n")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.mine = True  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(cfg)) == cfg


# --------------------------------------------------------------------------- sources


def test_load_from_config_flag(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text('mine = true\nhashrate = 4\n', encoding="utf-8")
    cfg = load_config_from_sources(
        parse_flags("--config", str(path), "--hashrate", "8"), {**HOME, "POWLAB_HASHRATE": "6"}
    )
    assert cfg.mine is True and cfg.hashrate == 8.0


def test_load_from_config_env(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text('log-level = "warning"\n', encoding="utf-8")
    cfg = load_config_from_sources(parse_flags(), {**HOME, "POWLAB_CONFIG": str(path)})
    assert cfg.log_level == "warning"


def test_config_flag_beats_config_env(tmp_path: Path) -> None:
    flag_file, env_file = tmp_path / "a.toml", tmp_path / "b.toml"
    flag_file.write_text("max_inbound = 1\n", encoding="utf-8")
    env_file.write_text("max_inbound = 2\n", encoding="utf-8")
    cfg = load_config_from_sources(
        {"config": str(flag_file)}, {**HOME, "POWLAB_CONFIG": str(env_file)}
    )
    assert cfg.max_inbound == 1


def test_config_path_expands_home(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text("max_outbound = 4\n", encoding="utf-8")
    cfg = load_config_from_sources(parse_flags("--config", "~/c.toml"), {"HOME": str(tmp_path)})
    assert cfg.max_outbound == 4


def test_no_config_named_reads_nothing() -> None:
    assert load_config_from_sources(parse_flags(), HOME) == load_config({}, HOME)


@pytest.mark.parametrize("via", ["flag", "env"])
def test_missing_config_file_is_an_error(tmp_path: Path, via: str) -> None:
    missing = tmp_path / "nope.toml"
    args = parse_flags("--config", str(missing)) if via == "flag" else parse_flags()
    env = HOME if via == "flag" else {**HOME, "POWLAB_CONFIG": str(missing)}
    source = "flag --config" if via == "flag" else "environment variable POWLAB_CONFIG"
    with pytest.raises(ConfigError, match="does not exist") as info:
        load_config_from_sources(args, env)
    assert str(missing) in str(info.value) and source in str(info.value)


def test_unreadable_config_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config_from_sources({"config": str(tmp_path)}, HOME)  # a directory
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b'mining_address = "\xe9"\n')
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config_from_sources({"config": str(bad)}, HOME)


def test_empty_config_env_is_an_error() -> None:
    with pytest.raises(ConfigError, match="environment variable POWLAB_CONFIG"):
        load_config_from_sources({}, {**HOME, "POWLAB_CONFIG": ""})


def test_syntax_error_in_named_file_mentions_path(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("mine = true\n[params\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"broken\.toml: TOML syntax error.*line 2"):
        load_config_from_sources({"config": str(path)}, HOME)


def test_written_config_loads_from_disk(tmp_path: Path) -> None:
    cfg = dataclasses.replace(
        load_config({}, HOME), datadir=tmp_path / "n1", p2p_bind="127.0.0.1:0", mine=True
    )
    path = tmp_path / "n1.toml"
    path.write_text(to_toml(cfg), encoding="utf-8")
    assert load_config_from_sources({"config": path}, {}) == cfg


@pytest.mark.parametrize("value", ["1.5", "-0.1", "nan"])
def test_assumed_attacker_share_must_be_a_fraction(value: str) -> None:
    with pytest.raises(ConfigError, match="POWLAB_ASSUMED_ATTACKER_SHARE"):
        load_config(parse_flags(), {**HOME, "POWLAB_ASSUMED_ATTACKER_SHARE": value})


def test_connect_and_addnode_take_a_pinned_node_id() -> None:
    node_id = "AB" * 32
    cfg = load_config(
        {"connect": (f"{node_id}@127.0.0.2:18444",), "addnode": ("127.0.0.3:18444",)}, HOME
    )
    assert cfg.connect == (f"{node_id.lower()}@127.0.0.2:18444",)
    assert parse_peer(cfg.connect[0]) == (bytes.fromhex(node_id), ("127.0.0.2", 18444))
    assert parse_peer(cfg.addnode[0]) == (None, ("127.0.0.3", 18444))
    env = {**HOME, "POWLAB_ADDNODE": f"{node_id}@[::1]:1,127.0.0.4:2"}
    assert load_config({}, env).addnode == (f"{node_id.lower()}@[::1]:1", "127.0.0.4:2")
    for bad, why in (("abcd@127.0.0.2:1", "64 hex digits"), (f"{'zz' * 32}@h:1", "64 hex")):
        with pytest.raises(ConfigError, match=why):
            load_config({"connect": (bad,)}, HOME)
