"""benchmarks/bench_litecoind.py: the ratio table's verdicts, the throughput arithmetic, and
(slow, needs Debian's litecoind) the smallest `--compare` run end to end, after which no
process of the run may be left."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.subnets import BENCH_LITECOIND, subnet

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_litecoind as bench  # noqa: E402
from txflow import FlowResult  # noqa: E402


def test_latency_goal_is_an_upper_bound() -> None:
    row = bench.latency_row("x", [0.002, 0.004, 0.003], [0.010, 0.008, 0.012], 0.3)
    assert row.ratio == pytest.approx(0.3)
    assert row.met and row.verdict == "met"
    slower = bench.latency_row("x", [0.004], [0.010], 0.3)
    assert not slower.met and slower.verdict == "MISSED"


def test_rate_goal_is_a_lower_bound() -> None:
    assert bench.rate_row("x", 2000.0, 1000.0, 2.0, "tx/s").met
    assert not bench.rate_row("x", 1999.0, 1000.0, 2.0, "tx/s").met


def test_a_missing_measurement_is_never_met() -> None:
    for row in (bench.latency_row("x", [0.001], [], 0.5),
                bench.rate_row("x", 100.0, None, 5.0, "blk/s"),
                bench.rate_row("x", None, 100.0, 5.0, "blk/s"),
                bench.rate_row("x", 100.0, 0.0, 5.0, "blk/s")):
        assert row.ratio is None and not row.met and row.verdict == "not measured"


def test_flow_rates() -> None:
    r = FlowResult(window_s=10.0, offered=5000, accepted=4000, errors={}, at_last=3000,
                   exhausted=False,
                   samples=[(0.0, 0), (4.0, 500), (5.0, 900), (7.5, 1900), (10.0, 3000)])
    assert r.last_rate == 300.0
    assert r.accept_rate == 400.0
    assert r.steady_rate == pytest.approx((3000 - 900) / 5.0)
    assert FlowResult(1.0, 0, 0, {}, 0, False, [(0.0, 0)]).steady_rate == 0.0


def test_options() -> None:
    args = bench.parse_args(["--quick"])
    assert (args.rounds, args.txs, args.flow_seconds) == (3, 200, 5.0)
    assert args.flow_txs > 0 and args.parts == {"blocks", "flow", "sync"}
    assert bench.parse_args(["--compare"]).parts == set(bench.PARTS)
    assert bench.parse_args(["--only", "flow,mesh"]).parts == {"flow", "mesh"}
    with pytest.raises(SystemExit):
        bench.parse_args(["--only", "blocks,nonsense"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--nodes", "1"])


def test_subnet_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POWLAB_BENCH_SUBNET", "127.9.8")
    assert bench.pick_subnet(8) == "127.9.8"
    monkeypatch.delenv("POWLAB_BENCH_SUBNET")
    picked = bench.pick_subnet(8)
    assert re.fullmatch(r"127\.\d+\.\d+", picked) and not picked.startswith("127.0.")


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{proc.name}: {cmdline[:200]}")
    return found


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("litecoind") is None,
                    reason="Debian's litecoind is not installed (apt-get install -y litecoind)")
def test_smallest_compare_run_end_to_end() -> None:
    net = subnet(BENCH_LITECOIND)
    env = {**os.environ, "POWLAB_BENCH_SUBNET": net, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "benchmarks" / "bench_litecoind.py"), "--compare",
         "--nodes", "3", "--rounds", "1", "--large-rounds", "1", "--txs", "20",
         "--flow-seconds", "1", "--flow-txs", "1000", "--flow-drain", "2",
         "--sync-blocks", "100"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
    )
    try:
        out, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        # SIGTERM, not SIGKILL: the benchmark then stops every node it started.
        proc.terminate()
        out, err = proc.communicate(timeout=90)
        pytest.fail(f"bench_litecoind did not finish in 240 s:\n{out}\n{err}")
    assert proc.returncode in (0, 1), f"{proc.returncode}\n{out}\n{err}"
    assert f"on {net}.2.." in out
    table = out[out.index("measurement"):]
    for name in ("1-tx block, 3-node line", "20-tx block, 3-node line", "throughput at node 3",
                 "fresh-node sync, 100 blocks", "20-tx block, 3-node mesh, compact ÷ full"):
        line = next((x for x in table.splitlines() if x.startswith(name)), None)
        assert line is not None, f"no row {name!r}:\n{table}"
        assert line.rstrip().endswith(("met", "MISSED")), line  # measured on both sides
    # The exit code follows the table.
    assert proc.returncode == (1 if "MISSED" in table else 0)
    assert "powlab    accepted" in out and "litecoind accepted" in out
    assert _processes_mentioning(net) == []
