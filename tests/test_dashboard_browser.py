"""The dashboard in a real headless browser (Debian's chromium driven by Selenium and
chromium-driver) against a real process testnet started like scripts/run: every node shown,
a block mined by RPC drawn with its miner, a partition's two tips and the heal that greys the
loser, a payment followed to final, `powlab attack majority` live with its verdict, playback
to before the reorg; and the two figures of docs/performance.md (a new block drawn within
500 ms of its block_connected on 20 nodes; 10,000 blocks with forks drawn in under 1 s).

Each view is saved as a screenshot (into docs/dashboard/ with POWLAB_UPDATE_SCREENSHOTS=1).
Skipped, with the reason, only where chromium, chromium-driver or selenium cannot be found
(.ci/run installs them)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab.client import basic_auth_header
from lab.stats import percentile
from lab.testnet.control import call, endpoint
from lab.testnet.manifest import load_manifest
from lab.waiting import wait_until
from tests import subnets
from tests.daemon_harness import REPO, run_powlab, tear_down_testnet
from tests.dashboard_harness import DashboardProcess, FakeNode, fake_dashboard, scripts_run_testnet

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
try:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
except ImportError:  # pragma: no cover - the skip below says so
    webdriver = None  # type: ignore[assignment]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(webdriver is None, reason="selenium is not installed (pip install "
                       "'.[dev]')"),
    pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                       reason="chromium and chromium-driver are not installed (Debian: "
                              "apt-get install chromium chromium-driver; .ci/run does it)"),
]

# The screenshots in docs/dashboard/ are refreshed only on request, so that a test run leaves
# the checkout as it was: POWLAB_UPDATE_SCREENSHOTS=1 scripts/test tests/test_dashboard_browser.py
SHOTS = (REPO / "docs" / "dashboard" if os.environ.get("POWLAB_UPDATE_SCREENSHOTS")
         else Path(tempfile.gettempdir()) / f"powlab-dashboard-shots-{os.getpid()}")
WAIT = 60.0


def browser() -> WebDriver:
    options = Options()
    options.binary_location = CHROMIUM or ""
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--window-size=1600,1000", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(CHROMEDRIVER or ""), options=options)


def shoot(driver: WebDriver, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SHOTS / f"{name}.png"))


def text_of(driver: WebDriver, css: str) -> str:
    """An element's text read in one step in the page: the live page redraws often, and an
    element found first and read after may be gone (a stale reference)."""
    return str(driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.textContent : ''", css))


def until(driver: WebDriver, script: str, what: str, timeout: float = WAIT) -> Any:
    """Waits until `script` (a JavaScript expression) is truthy in the page."""
    return wait_until(lambda: driver.execute_script(f"return {script}"), timeout, what,
                      interval=0.1, first=0.02)


def tip_of(driver: WebDriver, node: str) -> str | None:
    return driver.execute_script(
        f"const t = document.querySelector('#tree g.tip[data-node=\"{node}\"]');"
        "return t ? t.dataset.hash : null")


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    directory = tmp_path_factory.mktemp("dashb") / "testnet"
    with scripts_run_testnet(directory, subnets.subnet(subnets.DASHBOARD_BROWSER)) as path:
        yield path


@pytest.fixture(scope="module")
def page(net: Path) -> Iterator[WebDriver]:
    dash = DashboardProcess("--dir", str(net))
    driver = browser()
    try:
        driver.get(dash.base)
        yield driver
    finally:
        driver.quit()
        dash.stop()


FACTS: dict[str, Any] = {}


def test_the_page_shows_every_node(page: WebDriver) -> None:
    until(page, "document.querySelectorAll('#nodes tr[data-node]').length === 4", "4 nodes")
    until(page, "document.querySelectorAll('#tree g.blk').length > 10", "blocks")
    rows = page.find_elements(By.CSS_SELECTOR, "#nodes tr[data-node]")
    assert [r.get_attribute("data-node") for r in rows] == ["n1", "n2", "n3", "n4"]
    assert len(page.find_elements(By.CSS_SELECTOR, "#graph g.gnode")) == 4
    until(page, "document.querySelectorAll('#graph line.link').length === 3", "3 links")
    shoot(page, "network")


def test_a_block_mined_by_rpc_appears_with_its_miner(net: Path, page: WebDriver) -> None:
    n2 = load_manifest(net).node("n2")
    [block_hash] = call(n2, "generatetoaddress", 1, call(n2, "getnewaddress"))
    selector = f"#tree g.blk[data-hash=\"{block_hash}\"]"
    until(page, f"document.querySelector('{selector}')", "the block on the tree", 30)
    # Read and clicked in one script each: a redraw may replace the element in between.
    assert page.execute_script(f"return document.querySelector('{selector}').dataset.miner") \
        == "n2"
    assert "n2" in page.execute_script(f"return document.querySelector('{selector}').textContent")
    page.execute_script(f"document.querySelector('{selector} rect').dispatchEvent("
                        "new MouseEvent('click', {bubbles: true}))")
    until(page, "document.querySelector('#details dl')", "the block's details")
    assert block_hash in text_of(page, "#details")
    shoot(page, "block-details")
    page.find_element(By.CSS_SELECTOR, "#details .close").click()


def test_a_partition_shows_two_tips_and_a_heal_greys_the_loser(net: Path,
                                                               page: WebDriver) -> None:
    manifest = load_manifest(net)
    n1, n3 = manifest.node("n1"), manifest.node("n3")
    assert run_powlab("testnet", "partition", "--dir", str(net), "n1,n2", "n3,n4").returncode == 0
    call(n1, "generatetoaddress", 1, call(n1, "getnewaddress"))
    call(n3, "generatetoaddress", 2, call(n3, "getnewaddress"))
    until(page, "(() => { const t = [...document.querySelectorAll('#tree g.tip')]"
                ".map(g => g.dataset.hash); return new Set(t).size >= 2; })()", "two tips")
    until(page, "document.body.textContent.includes('PARTITIONED')", "the partition shown")
    until(page, "document.querySelector('#graph line[stroke=\"#d92d20\"]')", "partition line")
    # A lead for n3's side, so the heal reorganises n1 and n2 onto it.
    call(n3, "generatetoaddress", 4, call(n3, "getnewaddress"))
    until(page, f"document.querySelector('#tree g.tip[data-node=\"n3\"]')?.dataset.hash === "
                f"'{call(n3, 'getbestblockhash')}'", "n3's lead drawn")
    loser = call(n1, "getbestblockhash")
    until(page, f"document.querySelector('#tree g.tip[data-node=\"n1\"]')?.dataset.hash === "
                f"'{loser}'", "n1's tip drawn")
    assert not page.find_elements(By.CSS_SELECTOR, f"#tree g.blk.stale[data-hash=\"{loser}\"]")
    shoot(page, "partition")
    assert run_powlab("testnet", "heal", "--dir", str(net)).returncode == 0
    until(page, f"document.querySelector('#tree g.blk.stale[data-hash=\"{loser}\"]')",
          "the losing branch greyed")
    until(page, "new Set([...document.querySelectorAll('#tree g.tip')]"
                ".map(g => g.dataset.hash)).size === 1", "one tip again")
    assert tip_of(page, "n1") != loser
    FACTS["loser"] = loser
    until(page, "document.querySelectorAll('#graph line.link').length === 3", "links back")
    shoot(page, "heal")


def test_a_tracked_payment_reaches_final(net: Path, page: WebDriver) -> None:
    manifest = load_manifest(net)
    n1, n2, n4 = manifest.node("n1"), manifest.node("n2"), manifest.node("n4")
    txid = call(n1, "sendtoaddress", call(n4, "getnewaddress"), 250_000)
    page.execute_script("window.powlabShowTab('payments')")
    page.find_element(By.ID, "track-txid").send_keys(txid)
    page.find_element(By.CSS_SELECTOR, "#track-form button").click()
    until(page, f"document.querySelectorAll('.payment[data-txid=\"{txid}\"] .pay-row')"
                ".length === 4", "a row per node")
    wait_until(lambda: call(n2, "gettransaction", txid)["status"] == "mempool", 30,
               "the payment at n2")
    call(n2, "generatetoaddress", 3, call(n2, "getnewaddress"))
    until(page, f"[...document.querySelectorAll('.payment[data-txid=\"{txid}\"] .pay-row')]"
                ".some(r => r.textContent.includes('conf.'))", "confirmations climbing")
    shoot(page, "payment-climbing")
    call(n2, "generatetoaddress", 3, call(n2, "getnewaddress"))
    until(page, f"[...document.querySelectorAll('.payment[data-txid=\"{txid}\"] .pay-row')]"
                ".every(r => r.dataset.status === 'final')", "final on every node")
    assert "final" in text_of(page, f'.payment[data-txid="{txid}"] h3')
    shoot(page, "payment-final")


def test_a_running_majority_attack_shows_its_timeline_and_verdict(net: Path,
                                                                  page: WebDriver) -> None:
    page.execute_script("window.powlabShowTab('attack')")
    attack = subprocess.Popen(
        [sys.executable, "-m", "lab", "attack", "majority", "--dir", str(net),
         "--hashrate-share", "0.7", "--confirmations", "2", "--json"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        until(page, "document.querySelectorAll('#timeline li').length >= 2 && "
                    "document.querySelector('.verdict.running')", "the live timeline", 120)
        assert attack.poll() is None, "the timeline must show while the attack runs"
        assert "majority" in text_of(page, "#attack-name")
        shoot(page, "attack-running")
        out, _ = attack.communicate(timeout=600)
    finally:
        if attack.poll() is None:
            attack.kill()
            attack.wait()
    until(page, "document.querySelector('#verdict')", "the verdict", 60)
    verdict = text_of(page, "#verdict")
    result = json.loads(out)
    assert verdict.startswith("majority:") and verdict.split(" — ")[0] in result["verdict"]
    page.execute_script("document.querySelector('#tree').scrollTop = 0")
    shoot(page, "attack-verdict")
    if not result["success"]:
        return  # the honest side won this time: nothing was double spent
    # The victim's payment, reorganised out: conflicted, with the alert.
    page.execute_script(f"window.powlabTrack('{result['txid1']}')")
    victim = f'.payment[data-txid="{result["txid1"]}"]'
    until(page, f"document.querySelector('{victim} .pay-row[data-node=\"n4\"]')?.dataset.status"
                " === 'conflicted'", "the victim's payment conflicted")
    assert "CONFLICTED" in text_of(page, f"{victim} .alert")
    shoot(page, "payment-conflicted")


LINK_FAULT_SCENARIO = '''"""linkfault: a slow, lossy link n2-n3, held until the test says go."""
from __future__ import annotations

import argparse
from pathlib import Path

from lab.scenario import Network, ScenarioError
from lab.waiting import wait_until


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--go", required=True)


def fault_set(net: Network) -> bool:
    try:
        net.link_fault("n2", "n3", delay=0.2, jitter=0.05, loss=0.1)
    except ScenarioError:
        return False  # the link is not up (yet): an earlier test may have cut it
    return True


def run(net: Network) -> None:
    net.wait_for(lambda: fault_set(net), 60, "the n2-n3 link to carry a fault")
    wait_until(lambda: Path(net.args.go).exists(), 120, "the test's go")
    net.clear_link_faults()
    net.report(verdict="linkfault: done", success=True)
'''


def test_a_scenarios_link_fault_is_drawn_on_its_link(net: Path, page: WebDriver,
                                                     tmp_path: Path) -> None:
    scenario, go = tmp_path / "linkfault.py", tmp_path / "go"
    scenario.write_text(LINK_FAULT_SCENARIO)
    page.execute_script("window.powlabShowTab('network')")
    run = subprocess.Popen([sys.executable, "-m", "lab", "scenario", "run", str(scenario),
                            "--dir", str(net), "--", "--go", str(go)],
                           cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        until(page, "document.querySelector('#graph g.link.fault[data-link=\"n2|n3\"]')",
              "the faulty link", 120)
        label = text_of(page, "#graph g.link.fault text")
        assert label == "⚡ 200±50 ms, 10% loss", label
        shoot(page, "link-fault")
        go.touch()
        out, _ = run.communicate(timeout=120)
        assert run.returncode == 0, out
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    until(page, "!document.querySelector('#graph g.link.fault')", "the fault lifted")


def test_playback_steps_back_to_before_the_reorg(page: WebDriver) -> None:
    loser = FACTS.get("loser")
    if loser is None:
        pytest.skip("needs the partition test's reorganisation")
    page.execute_script("window.powlabShowTab('log')")
    # The heal's reorganisation: the first of n1 or n2 (n3's side had more work).
    index = page.execute_script(
        "return window.powlabLog().findIndex(e => e.kind === 'reorg' && "
        "(e.node === 'n1' || e.node === 'n2'))")
    assert index > 0
    page.execute_script(f"window.powlabSeek({index})")
    page.find_element(By.ID, "pb-back").click()
    until(page, f"document.body.dataset.playback === '{index - 1}'", "one step before the reorg")
    assert "playback" in text_of(page, "#pb-label")
    before = {tip_of(page, "n1"), tip_of(page, "n2")}
    assert None not in before
    # Then, n1 and n2 were on the branch that lost: drawn live, not grey.
    for block_hash in before:
        assert not page.find_elements(By.CSS_SELECTOR,
                                      f"#tree g.blk.stale[data-hash=\"{block_hash}\"]")
    assert page.find_elements(By.CSS_SELECTOR, f"#tree g.blk[data-hash=\"{loser}\"]")
    shoot(page, "playback")
    page.find_element(By.ID, "pb-live").click()
    until(page, "document.body.dataset.playback === 'live'", "live again")
    # Now: that branch is stale, the loser with it.
    stale = page.execute_script(
        "return [...document.querySelectorAll('#tree g.blk.stale')].map(g => g.dataset.hash)")
    assert loser in stale and before & set(stale), (before, loser)
    page.execute_script("window.powlabShowTab('controls')")
    shoot(page, "controls")


def test_a_control_asks_first_then_runs(net: Path, page: WebDriver) -> None:
    page.execute_script("window.powlabShowTab('controls')")
    height = call(load_manifest(net).node("n4"), "getblockcount")
    page.find_element(By.CSS_SELECTOR, "#c-mine-node option[value='n4'], #c-mine-node")
    page.execute_script("document.getElementById('c-mine-node').value = 'n4'")
    page.find_element(By.ID, "c-mine").click()
    alert = page.switch_to.alert
    assert alert.text == "Mine 1 block(s) on n4?"
    alert.dismiss()  # declined: nothing runs
    assert text_of(page, "#c-out") == ""
    page.find_element(By.ID, "c-mine").click()
    page.switch_to.alert.accept()
    until(page, "document.getElementById('c-out').textContent.startsWith('n4 mined 1 block')",
          "the control's result")
    assert call(load_manifest(net).node("n4"), "getblockcount") > height


# --------------------------------------------------------------------------- figures


def synthetic_snapshot(count: int, fork_every: int = 50) -> dict[str, Any]:
    """`count` main-chain blocks and a 1–4-block stale branch every `fork_every` heights; two
    nodes on a live fork at the top; a withheld mark."""
    blocks: list[dict[str, Any]] = []
    prev = "0" * 64
    main: list[str] = []
    t = 1_700_000_000
    for height in range(count):
        h = hashlib.sha256(f"m{height}".encode()).hexdigest()
        blocks.append({"hash": h, "prev": prev, "height": height, "time": t + height * 10,
                       "txs": 1 + height % 3, "miner": f"n{1 + height % 4}", "seen": 1,
                       "invalid": False})
        main.append(h)
        prev = h
        if height % fork_every == 25:
            side = main[-2] if height else h
            for k in range(1 + height % 4):
                s = hashlib.sha256(f"s{height}-{k}".encode()).hexdigest()
                blocks.append({"hash": s, "prev": side, "height": height + k, "time": t,
                               "txs": 1, "miner": "n3", "seen": 1, "invalid": False})
                side = s
    fork = hashlib.sha256(b"top").hexdigest()
    blocks.append({"hash": fork, "prev": main[-2], "height": count - 1, "time": t, "txs": 2,
                   "miner": "n3", "seen": 1, "invalid": False})
    return {"finality_depth": 6, "blocks": blocks,
            "nodes": [{"name": f"n{k}", "role": "miner" if k in (1, 3) else "node",
                       "share": 0.5 if k in (1, 3) else 0, "up": True, "height": count - 1,
                       "tip": main[-1] if k != 3 else fork, "peers": [], "peer_count": 1,
                       "mempool": 0, "hashrate": 0.1, "mining": True, "warnings": ""}
                      for k in range(1, 5)],
            "partition": None, "log": [], "runs": [], "controls": False,
            "base_tips": {f"n{k}": (main[-1] if k != 3 else fork) for k in range(1, 5)},
            "marks": {main[count // 2][:16]: "withheld"}, "now": 1}


def test_ten_thousand_blocks_with_forks_draw_in_under_a_second(page: WebDriver) -> None:
    snap = synthetic_snapshot(10_000)
    runs = []
    for _ in range(5):
        runs.append(page.execute_async_script(
            "const [snap, done] = arguments; const t0 = performance.now();"
            "window.powlabLoad(snap);"
            "requestAnimationFrame(() => setTimeout(() => done(performance.now() - t0)));",
            snap))
    drawn = page.execute_script("return document.querySelector('#tree svg').dataset.blocks")
    elements = page.execute_script("return document.querySelectorAll('#tree g.blk').length")
    collapsed = page.execute_script("return document.querySelectorAll('#tree g.run').length")
    print(f"\nFIGURE tree: {len(snap['blocks'])} blocks ({drawn} in the layout, {elements} "
          f"drawn one by one, {collapsed} runs): {', '.join(f'{r:.0f}' for r in runs)} ms; "
          f"load {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    assert int(drawn) == len(snap["blocks"])
    assert max(runs[1:]) < 1000, runs
    # Every stale side block is drawn, grey, beside the chain; the runs between them collapse;
    # both tips (one on the fork at the top) and the withheld mark are there.
    side = len(snap["blocks"]) - 10_000 - 1
    assert page.execute_script("return document.querySelectorAll('#tree g.blk.stale').length") \
        == side
    assert collapsed > 100
    assert page.execute_script("return new Set([...document.querySelectorAll('#tree g.tip')]"
                               ".map(g => g.dataset.hash)).size") == 2
    assert page.execute_script("return document.querySelectorAll('#tree g.mark-withheld')"
                               ".length") == 1
    # A collapsed run between two forks, mid-chain.
    page.execute_script("const runs = document.querySelectorAll('#tree g.run');"
                        "runs[Math.floor(runs.length / 2)].scrollIntoView({block: 'center'})")
    shoot(page, "tree-10000")


class EventTimes:
    """Arrival times of a node's block_connected events, read by the test itself."""

    def __init__(self, url: str, auth: tuple[str, str] | None) -> None:
        self.times: dict[str, float] = {}
        headers = {"Authorization": basic_auth_header(*auth)} if auth else {}
        request = urllib.request.Request(url + "events?types=block_connected", headers=headers)
        self.resp = urllib.request.urlopen(request, timeout=600)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for line in self.resp:
                if line.startswith(b"data: "):
                    event = json.loads(line[6:])
                    self.times.setdefault(event["hash"], time.time())
        except (OSError, ValueError, AttributeError):  # closed by the test
            return

    def close(self) -> None:
        self.resp.close()


def test_a_new_block_is_drawn_within_500_ms_on_20_nodes(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    directory = tmp_path_factory.mktemp("dash20") / "testnet"
    subnet = subnets.subnet(subnets.DASHBOARD_20)
    try:
        up = run_powlab("testnet", "up", "--dir", str(directory), "--nodes", "20",
                        "--miners", "2", "--topology", "ring", "--block-time", "5",
                        "--subnet", subnet, "--no-hints", timeout=600)
        assert up.returncode == 0, up.stdout + up.stderr
        dash = DashboardProcess("--dir", str(directory))
        driver = browser()
        try:
            driver.get(dash.base)
            until(driver, "document.querySelectorAll('#nodes tr[data-node]').length === 20",
                  "20 nodes")
            entry = load_manifest(directory).node("n10")
            ep = endpoint(entry)
            events = EventTimes(ep.url, ep.auth)
            latencies = []
            for _ in range(15):
                [block_hash] = call(entry, "generatetoaddress", 1, call(entry, "getnewaddress"))
                drawn = until(driver, f"window.powlabDrawn['{block_hash}']", "the block drawn",
                              30)
                seen = wait_until(lambda h=block_hash: events.times.get(h), 10, "the event")
                latencies.append(drawn / 1000 - seen)
            events.close()
            print(f"\nFIGURE latency on 20 nodes: n={len(latencies)} "
                  f"p50 {percentile(latencies, 0.5) * 1000:.0f} ms, "
                  f"p90 {percentile(latencies, 0.9) * 1000:.0f} ms, "
                  f"max {max(latencies) * 1000:.0f} ms; load {os.getloadavg()[0]:.2f} on "
                  f"{os.cpu_count()} CPUs")
            shoot(driver, "twenty-nodes")
            assert max(latencies) < 0.5, latencies
        finally:
            driver.quit()
            dash.stop()
    finally:
        tear_down_testnet(directory)


def test_a_real_ten_thousand_block_chain_with_forks(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """The whole path at scale: two nodes, 10,000 blocks mined by RPC, three forks made by
    cutting n2 off while both mine; the dashboard loads the chain and the page draws it."""
    directory = tmp_path_factory.mktemp("dash10k") / "testnet"
    subnet = subnets.subnet(subnets.DASHBOARD_10K)
    try:
        up = run_powlab("testnet", "up", "--dir", str(directory), "--nodes", "2", "--miners",
                        "0", "--subnet", subnet, "--no-hints", timeout=600)
        assert up.returncode == 0, up.stdout + up.stderr
        manifest = load_manifest(directory)
        n1, n2 = manifest.nodes
        call(n1, "generatetoaddress", 9_890, call(n1, "getnewaddress"), timeout=900)
        for k in range(1, 4):
            call(n2, "setnetworkactive", False)
            call(n1, "generatetoaddress", k + 1, call(n1, "getnewaddress"))
            call(n2, "generatetoaddress", k, call(n2, "getnewaddress"))
            call(n2, "setnetworkactive", True)
            wait_until(lambda: call(n2, "getbestblockhash") == call(n1, "getbestblockhash"),
                       60, "n2 back on n1's chain")
            call(n1, "generatetoaddress", 30, call(n1, "getnewaddress"))
        started = time.monotonic()
        dash = DashboardProcess("--dir", str(directory))
        driver = browser()
        try:
            status, body, _ = dash.get("/api/state", timeout=120)  # answers once loaded
            loaded = time.monotonic() - started
            assert status == 200 and len(json.loads(body)["blocks"]) >= 10_000
            driver.get(dash.base)
            until(driver, "document.querySelectorAll('#tree g.blk.stale').length >= 6",
                  "the three stale branches")
            drawn = driver.execute_script("return document.querySelectorAll('#tree g.blk')"
                                          ".length")
            collapsed = driver.execute_script("return document.querySelectorAll('#tree g.run')"
                                              ".length")
            render = driver.execute_script("return window.powlabStats.lastRenderMs")
            print(f"\nFIGURE real chain: dashboard loaded {len(json.loads(body)['blocks'])} "
                  f"blocks ({len(body) / 1e6:.1f} MB snapshot) {loaded:.2f} s after start; "
                  f"the page drew {drawn} blocks and {collapsed} runs in {render:.0f} ms; "
                  f"load {os.getloadavg()[0]:.2f}")
            driver.execute_script("document.querySelector('#tree g.blk.stale')"
                                  ".scrollIntoView({block: 'center'})")
            shoot(driver, "real-10000")
        finally:
            driver.quit()
            dash.stop()
    finally:
        tear_down_testnet(directory)


# --------------------------------------------------------------------------- a hostile node
@contextlib.contextmanager
def dashboard_on(node: FakeNode, token: str | None = None) -> Iterator[dict[str, Any]]:
    """A dashboard following `node`, served from a thread of its own; yields its "url", the
    "loop" it runs on and its "model"."""
    ready = threading.Event()
    box: dict[str, Any] = {}

    def serve() -> None:
        async def main() -> None:
            async with fake_dashboard(node=node, token=token) as (_, collector, _dash, url):
                box["loop"], box["stop"], box["url"] = (asyncio.get_running_loop(),
                                                        asyncio.Event(), url)
                box["model"] = collector.model
                ready.set()
                await box["stop"].wait()

        asyncio.run(main())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(WAIT), "the dashboard did not start"
    try:
        yield box
    finally:
        box["loop"].call_soon_threadsafe(box["stop"].set)
        thread.join(WAIT)


def test_a_hostile_node_neither_injects_markup_nor_breaks_the_page() -> None:
    evil = '<img id="pwned" src="x">'
    node = FakeNode()
    node.answers["getmininginfo"] = lambda p: {"mining": True, "hashrate": "fast"}
    node.answers["getblockchaininfo"] = lambda p: {"blocks": evil, "warnings": evil}
    node.answers["getmempoolinfo"] = lambda p: {"size": evil}
    node.answers["gettransaction"] = lambda p: {
        "status": "confirmed", "confirmations": evil, "double_spend_alert": True,
        "seen_double_spends": "not a list", "reversal_risk": "x", "finality_depth": 6}
    with dashboard_on(node) as dash:
        driver = browser()
        try:
            driver.get(dash["url"])
            until(driver, "document.querySelectorAll('#nodes tr[data-node]').length === 1",
                  "the node's row")
            until(driver, "document.querySelector('#nodes').textContent.includes('<img')",
                  "the node's warnings, shown as text")
            driver.execute_script(f"window.powlabTrack('{'2' * 64}')")
            until(driver, "document.querySelector('.pay-row[data-node=\"evil\"]')",
                  "the payment's row")
            assert driver.execute_script("return document.getElementById('pwned')") is None
        finally:
            driver.quit()


def test_the_page_keeps_no_more_than_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    from lab.dashboard import model as model_module
    from lab.dashboard.model import Block

    for name, value in (("MAX_BLOCKS", 30), ("EVICT_TO", 20), ("MAX_RUNS", 3),
                        ("MAX_RUN_EVENTS", 5)):
        monkeypatch.setattr(model_module, name, value)
    with dashboard_on(FakeNode()) as dash:
        driver = browser()
        try:
            driver.get(dash["url"])
            until(driver, "document.querySelectorAll('#nodes tr[data-node]').length === 1",
                  "the page to load")
            model = dash["model"]

            def feed() -> None:
                prev = "0" * 64
                for height in range(1, 51):
                    block_hash = hashlib.sha256(f"b{height}".encode()).hexdigest()
                    model.add_block(Block(block_hash, prev, height, height, 1))
                    prev = block_hash
                for k in range(6):
                    model.run_record(f"r{k}", {"type": "start", "scenario": "s"})
                    for e in range(10):
                        model.run_record(f"r{k}", {"type": "event", "event": f"e{e}"})
                    model.run_record(f"r{k}", {"type": "end", "verdict": "done"})

            dash["loop"].call_soon_threadsafe(feed)
            until(driver, "window.powlabCounts().ended.includes('r5')", "the last run's end")
            counts = driver.execute_script("return window.powlabCounts()")
            assert counts["runs"] == 3 and counts["events"] == 5
            assert 20 <= counts["blocks"] <= 30
        finally:
            driver.quit()


def test_the_token_leaves_the_address_bar() -> None:
    with dashboard_on(FakeNode(), token="t0ken") as dash:
        assert "?token=t0ken" in dash["url"]
        driver = browser()
        try:
            driver.get(dash["url"])
            until(driver, "document.querySelectorAll('#nodes tr[data-node]').length === 1",
                  "the page to load (the token's cookie works)")
            assert "t0ken" not in driver.current_url
        finally:
            driver.quit()
