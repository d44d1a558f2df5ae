"""README's "A five-minute tour", run literally: its bash blocks, command by command, on the
testnet `scripts/run` starts (4 nodes in a line, n1 and n3 mining; shorter block time), in a
temporary directory on a random 127.X.Y subnet so it never meets a user's ./testnet.

The commands are the README's own; only what ties them to a developer's checkout changes:
`.venv/bin/powlab` runs this interpreter's `-m lab`, ./testnet and 127.0.0.2 become the test's
directory and subnet, `status --watch` runs once and the endless event stream is cut after
3 s. After `testnet partition` the test waits until both halves have mined.
"""

from __future__ import annotations

import json
import os
import random
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.daemon_harness import REPO, run_powlab, tear_down_testnet

pytestmark = pytest.mark.slow

README = Path(REPO) / "README.md"
MARK = ">>> "

# Both halves of the partition mine: n2 follows n1's half, n4 follows n3's half.
BOTH_HALVES = """h2=$(powlab rpc --node n2 getblockcount); h4=$(powlab rpc --node n4 getblockcount)
for _ in $(seq 120); do
  if [ "$(powlab rpc --node n2 getblockcount)" -gt "$h2" ] \\
     && [ "$(powlab rpc --node n4 getblockcount)" -gt "$h4" ] \\
     && [ "$(powlab rpc --node n2 getbestblockhash)" != "$(powlab rpc --node n4 getbestblockhash)" ]
  then echo BOTH-HALVES-MINED; break; fi
  sleep 0.5
done"""


def tour_commands() -> list[str]:
    text = README.read_text()
    tour = text[text.index("## A five-minute tour"):text.index("## Command line")]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", tour, re.S):
        for line in block.splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                commands.append(line)
    return commands


def adapt(command: str, directory: Path, subnet: str) -> list[str]:
    if command.strip() == "scripts/run":
        return []  # the fixture started it, with scripts/run's topology and roles
    command = command.replace(".venv/bin/powlab", "powlab").replace(" --watch", "")
    if command.startswith("curl"):
        command = command.replace("testnet/", f"{directory}/").replace("127.0.0.2", f"{subnet}.2")
        command = f"timeout 3 {command.split('  #')[0]} | head -c 300 || true"
    lines = [f"echo {shlex.quote(MARK + command)}", command]
    if "testnet partition" in command:
        lines.append(BOTH_HALVES)
    return lines


def scripts_run_arguments() -> list[str]:
    """What scripts/run passes to `testnet up` (its defaults), read from the script."""
    text = (Path(REPO) / "scripts" / "run").read_text()
    assert '[ "$NODES" = 4 ] && [ "$MINERS" = 2 ]' in text and 'MINER_NODES="n1,n3"' in text
    assert 'TOPOLOGY="${POWLAB_RUN_TOPOLOGY:-line}"' in text
    return ["--nodes", "4", "--miner-nodes", "n1,n3", "--topology", "line"]


def test_the_tour_works_literally(tmp_path: Path) -> None:
    directory = tmp_path / "testnet"
    subnet = f"127.{random.randint(100, 250)}.{random.randint(1, 250)}"
    script = ["set -euo pipefail",
              f'powlab() {{ "{sys.executable}" -m lab "$@"; }}']
    for command in tour_commands():
        script += adapt(command, directory, subnet)
    env = {**os.environ, "POWLAB_TESTNET_DIR": str(directory)}
    try:
        up = run_powlab("testnet", "up", "--dir", str(directory), *scripts_run_arguments(),
                        "--block-time", "3", "--subnet", subnet, timeout=400)
        assert up.returncode == 0, up.stdout + up.stderr
        result = subprocess.run(["bash", "-c", "\n".join(script)], capture_output=True,
                                text=True, timeout=900, cwd=REPO, env=env)
    finally:
        tear_down_testnet(directory)
    out = result.stdout
    assert result.returncode == 0, f"{out[-3000:]}\n{result.stderr[-3000:]}"
    steps: list[tuple[str, str]] = []
    for chunk in out.split(MARK)[1:]:
        head, _, body = chunk.partition("\n")
        steps.append((head, body))

    def step(prefix: str) -> str:
        return next(body for head, body in steps if head.startswith(prefix))

    escrow = json.loads(step("powlab rpc --node n1 createmultisig 2"))
    assert escrow["descriptor"].startswith("multi(2,") and escrow["redeemScript"]
    half = json.loads(step('powlab rpc --node n1 signrawtransactionwithwallet "$RAW"'))
    assert half["complete"] is False and "1 of the 2" in half["errors"][0]["error"]
    refused = step('powlab rpc --node n3 sendrawtransaction "$HALF"')
    assert "bad-multisig-too-few-signatures" in refused
    assert "BOTH-HALVES-MINED" in step("powlab testnet partition n1,n2 n3,n4")
    majority = json.loads(step("powlab attack majority --hashrate-share 0.7 --json"))
    assert majority["success"], majority["verdict"]
    [isolated] = [e for e in majority["timeline"] if e["event"] == "isolated"]
    # The attacker n3 is a cut vertex of the line: the victim n4 stays reachable via n2.
    assert isolated["note"] == "banned n3<->n2, n3<->n4; added n2<->n4"
    assert "split: " in step("powlab attack split")
    assert "finney: SUCCESS" in step("powlab attack finney")
    assert "eclipse" in step("powlab scenario list --path examples/scenarios")
    assert "race: " in step("powlab scenario run examples/scenarios/race.py")
