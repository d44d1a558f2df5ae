"""The `powlab` command line: help texts, `powlab rpc` argument handling and node lookup.

No daemon is started here; calls that would reach a node are either aimed at a closed port or
intercepted at `NodeEndpoint.call`.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lab import cli
from lab.client import (
    DEFAULT_RPC_URL,
    CookieError,
    NodeEndpoint,
    RPCError,
    add_endpoint_arguments,
    parse_cli_value,
    resolve_endpoint,
)
from node.rpc.cookie import write_cookie
from tests.daemon_harness import REPO

# Options each help text must mention: what users look for first in each subcommand.
HELP_OPTIONS: dict[tuple[str, ...], tuple[str, ...]] = {
    (): ("node", "rpc", "wallet", "watch"),
    ("node",): (
        "--config", "--datadir", "--network", "--p2p-bind", "--rpc-bind", "--connect",
        "--addnode", "--no-listen", "--mine", "--hashrate", "--miner-processes",
        "--mining-address", "--finality-depth", "--log-format", "--rpc-user", "--rpc-password",
    ),
    ("rpc",): ("--rpc", "--rpc-cookie", "--rpc-user", "--rpc-password", "--datadir", "method"),
    ("wallet",): ("new-address", "balance", "send"),
    ("wallet", "new-address"): ("--rpc", "--datadir"),
    ("wallet", "balance"): ("--minconf", "--rpc", "--datadir"),
    ("wallet", "send"): ("address", "amount", "--datadir"),
    ("watch",): ("txid", "--depth", "--interval", "--timeout", "--rpc", "--datadir"),
}


def run_powlab(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`powlab` in a subprocess: `python -m lab`, what the console script runs (a console
    script on PATH may belong to another checkout's installation)."""
    return subprocess.run(
        [sys.executable, "-m", "lab", *args], capture_output=True, text=True, timeout=timeout,
        cwd=REPO,
    )


def closed_port() -> int:
    """A loopback port with (almost certainly) nothing listening on it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def endpoint_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_endpoint_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.fixture(autouse=True)
def _no_ambient_node(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # A developer's real ~/.powlab or POWLAB_DATADIR must not leak into these tests.
    monkeypatch.delenv("POWLAB_DATADIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


# --------------------------------------------------------------------------- help


@pytest.mark.parametrize("words", list(HELP_OPTIONS), ids=lambda w: " ".join(w) or "powlab")
def test_help_exits_zero_and_lists_options(
    words: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main([*words, "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: powlab")
    missing = [opt for opt in HELP_OPTIONS[words] if opt not in out]
    assert not missing, f"`powlab {' '.join(words)} --help` does not mention {missing}"


def test_console_script_help() -> None:
    result = run_powlab("--help")
    assert result.returncode == 0, result.stderr
    assert "usage: powlab" in result.stdout and "rpc" in result.stdout


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main([])
    assert exited.value.code == 2
    assert "COMMAND" in capsys.readouterr().err


def test_node_help_shows_env_names_and_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["node", "--help"])
    out = capsys.readouterr().out
    assert "POWLAB_CONNECT" in out and "POWLAB_RPC_BIND" in out
    assert "127.0.0.1:18443" in out


# --------------------------------------------------------------------------- no node running


def test_rpc_without_a_node_says_could_not_connect() -> None:
    url = f"http://127.0.0.1:{closed_port()}/"
    result = run_powlab("rpc", "--rpc", url, "getblockchaininfo")
    assert result.returncode != 0
    assert "could not connect" in result.stderr and url in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_rpc_uses_the_datadirs_url_and_reports_it_when_down(tmp_path: Path) -> None:
    # A node that died without cleaning up leaves rpc.url behind: the error names that URL.
    datadir = tmp_path / "node"
    datadir.mkdir()
    url = f"http://127.0.0.1:{closed_port()}/"
    (datadir / "rpc.url").write_text(url)
    result = run_powlab("rpc", "--datadir", str(datadir), "getblockcount")
    assert result.returncode != 0
    assert f"could not connect to node at {url}" in result.stderr


@pytest.mark.parametrize("words", [("wallet", "balance"), ("wallet", "new-address")])
def test_wallet_without_a_node_fails_cleanly(
    words: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main([*words, "--rpc", f"127.0.0.1:{closed_port()}"])
    assert code != 0
    assert "could not connect" in capsys.readouterr().err


def test_missing_explicit_cookie_is_a_clean_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["rpc", "--rpc-cookie", str(tmp_path / "nope"), "getblockcount"])
    assert code != 0
    assert "cookie" in capsys.readouterr().err


# --------------------------------------------------------------------------- argument parsing


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("101", 101),
        ("-1", -1),
        ("0.5", 0.5),
        ("true", True),
        ("false", False),
        ("null", None),
        ("[1, 2]", [1, 2]),
        ('[{"txid": "ab", "vout": 0}]', [{"txid": "ab", "vout": 0}]),
        ('{"rpow1xyz": 5000}', {"rpow1xyz": 5000}),
        ('"quoted"', "quoted"),
        ("rpow1qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqq", "rpow1qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqq"),
        ("ab" * 32, "ab" * 32),
        ("add", "add"),
        ("True", "True"),  # JSON is case-sensitive: not a boolean
        ("{not json", "{not json"),
        ("", ""),
    ],
)
def test_parse_cli_value_json_where_it_parses_else_string(text: str, value: Any) -> None:
    assert parse_cli_value(text) == value
    assert type(parse_cli_value(text)) is type(value)


class _Recorder:
    """Stands in for the network: records what `powlab rpc` would send, returns a reply."""

    def __init__(self, reply: Any = None, error: RPCError | None = None) -> None:
        self.reply = reply
        self.error = error
        self.calls: list[tuple[str, str, tuple[Any, ...], tuple[str, str] | None]] = []

    def __call__(self, endpoint: NodeEndpoint, method: str, *params: Any, **_: Any) -> Any:
        self.calls.append((endpoint.url, method, params, endpoint.auth))
        if self.error is not None:
            raise self.error
        return self.reply

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        # A plain function, so that it binds as a method and receives the endpoint.
        def call(endpoint: NodeEndpoint, method: str, *params: Any, **kwargs: Any) -> Any:
            return self(endpoint, method, *params, **kwargs)

        monkeypatch.setattr(NodeEndpoint, "call", call)


def test_rpc_arguments_are_sent_typed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    recorder = _Recorder(reply=["00" * 32])
    recorder.install(monkeypatch)
    code = cli.main([
        "rpc", "--rpc", "http://127.0.0.1:9/", "createrawtransaction",
        '[{"txid": "' + "11" * 32 + '", "vout": 0}]', '{"rpow1abc": 5000}', "7", "true",
        "rpow1abc",
    ])
    assert code == 0
    [(url, method, params, _auth)] = recorder.calls
    assert url == "http://127.0.0.1:9/" and method == "createrawtransaction"
    assert params == (
        [{"txid": "11" * 32, "vout": 0}], {"rpow1abc": 5000}, 7, True, "rpow1abc"
    )
    assert json.loads(capsys.readouterr().out) == ["00" * 32]


@pytest.mark.parametrize(
    ("reply", "printed"),
    [("ab" * 32, "ab" * 32 + "\n"), (42, "42\n"), (None, ""), ({"a": 1}, '{\n  "a": 1\n}\n')],
)
def test_rpc_output_strings_bare_json_otherwise(
    reply: Any, printed: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Bare strings let shells capture txids and addresses: TXID=$(powlab rpc ... sendtoaddress)
    _Recorder(reply=reply).install(monkeypatch)
    assert cli.main(["rpc", "--rpc", "127.0.0.1:9", "whatever"]) == 0
    assert capsys.readouterr().out == printed


def test_rpc_error_exits_nonzero_with_message(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _Recorder(error=RPCError(-8, "Block height out of range")).install(monkeypatch)
    assert cli.main(["rpc", "--rpc", "127.0.0.1:9", "getblockhash", "99"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "-8" in captured.err and "Block height out of range" in captured.err


def test_wallet_send_maps_to_sendtoaddress(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    recorder = _Recorder(reply="cd" * 32)
    recorder.install(monkeypatch)
    assert cli.main(["wallet", "send", "--rpc", "127.0.0.1:9", "rpow1abc", "100000"]) == 0
    assert recorder.calls[0][1:3] == ("sendtoaddress", ("rpow1abc", 100000))
    assert capsys.readouterr().out.strip() == "cd" * 32


# --------------------------------------------------------------------------- endpoint resolution


def test_rpc_flag_beats_the_datadirs_rpc_url(tmp_path: Path) -> None:
    (tmp_path / "rpc.url").write_text("http://127.0.0.1:1111/\n")
    endpoint = resolve_endpoint(
        endpoint_args("--datadir", str(tmp_path), "--rpc", "http://127.0.0.1:2222/")
    )
    assert endpoint.url == "http://127.0.0.1:2222/"


def test_datadirs_rpc_url_is_used_without_rpc_flag(tmp_path: Path) -> None:
    (tmp_path / "rpc.url").write_text("http://127.0.0.1:1111/\n")
    assert resolve_endpoint(endpoint_args("--datadir", str(tmp_path))).url == (
        "http://127.0.0.1:1111/"
    )


def test_default_url_when_the_datadir_has_none(tmp_path: Path) -> None:
    assert resolve_endpoint(endpoint_args("--datadir", str(tmp_path))).url == DEFAULT_RPC_URL


@pytest.mark.parametrize(
    ("given", "url"),
    [
        ("127.0.0.1:5000", "http://127.0.0.1:5000/"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000/"),
        ("http://127.0.0.1:5000/", "http://127.0.0.1:5000/"),
    ],
)
def test_rpc_url_is_normalised(given: str, url: str) -> None:
    assert resolve_endpoint(endpoint_args("--rpc", given)).url == url


def test_cookie_is_read_from_the_datadir(tmp_path: Path) -> None:
    user, password = write_cookie(tmp_path)
    endpoint = resolve_endpoint(endpoint_args("--datadir", str(tmp_path)))
    assert endpoint.auth == (user, password)


def test_cookie_from_datadir_even_with_rpc_flag(tmp_path: Path) -> None:
    user, password = write_cookie(tmp_path)
    endpoint = resolve_endpoint(
        endpoint_args("--datadir", str(tmp_path), "--rpc", "127.0.0.1:5000")
    )
    assert endpoint.auth == (user, password)
    assert endpoint.url == "http://127.0.0.1:5000/"


def test_rpc_user_beats_the_cookie(tmp_path: Path) -> None:
    write_cookie(tmp_path)
    endpoint = resolve_endpoint(endpoint_args(
        "--datadir", str(tmp_path), "--rpc-user", "alice", "--rpc-password", "secret"
    ))
    assert endpoint.auth == ("alice", "secret")


def test_rpc_user_without_password_sends_an_empty_one(tmp_path: Path) -> None:
    endpoint = resolve_endpoint(endpoint_args("--datadir", str(tmp_path), "--rpc-user", "bob"))
    assert endpoint.auth == ("bob", "")


def test_explicit_cookie_file_beats_the_datadirs(tmp_path: Path) -> None:
    write_cookie(tmp_path / "a")
    other = write_cookie(tmp_path / "b")
    endpoint = resolve_endpoint(endpoint_args(
        "--datadir", str(tmp_path / "a"), "--rpc-cookie", str(tmp_path / "b" / ".cookie")
    ))
    assert endpoint.auth == other


def test_missing_explicit_cookie_raises(tmp_path: Path) -> None:
    with pytest.raises(CookieError, match="not found"):
        resolve_endpoint(endpoint_args("--rpc-cookie", str(tmp_path / "missing")))


def test_missing_datadir_cookie_means_no_auth(tmp_path: Path) -> None:
    # The node is presumably not running; the connection attempt will say so.
    assert resolve_endpoint(endpoint_args("--datadir", str(tmp_path))).auth is None


def test_powlab_datadir_env_is_the_fallback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_dir, flag_dir = tmp_path / "env", tmp_path / "flag"
    env_auth, flag_auth = write_cookie(env_dir), write_cookie(flag_dir)
    (env_dir / "rpc.url").write_text("http://127.0.0.1:3333/")
    monkeypatch.setenv("POWLAB_DATADIR", str(env_dir))
    from_env = resolve_endpoint(endpoint_args())
    assert (from_env.url, from_env.auth) == ("http://127.0.0.1:3333/", env_auth)
    assert resolve_endpoint(endpoint_args("--datadir", str(flag_dir))).auth == flag_auth


def test_default_datadir_is_home_powlab_regtest(tmp_path: Path) -> None:
    # HOME points into tmp_path (see the autouse fixture).
    default = tmp_path / "home" / ".powlab" / "regtest"
    auth = write_cookie(default)
    (default / "rpc.url").write_text("http://127.0.0.1:4444/")
    endpoint = resolve_endpoint(endpoint_args())
    assert (endpoint.url, endpoint.auth) == ("http://127.0.0.1:4444/", auth)
