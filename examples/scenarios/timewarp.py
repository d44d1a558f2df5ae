"""Timewarp: a minority miner stamps its blocks to stretch retarget windows (testnet).

Run it on a retargeting network (`powlab testnet up --network testnet`):

    powlab scenario run examples/scenarios/timewarp.py [--dir D] [--json] -- [OPTIONS]

The attacker (default share 30%) stamps the last block of a window as far ahead as the future
limit allows (so the window measures ~2 h instead of 600 s), the first block of a window as
far back as it can (Bitcoin's timewarp: the step between two windows is measured by none) and
its other blocks at the median time past + 1. At every window boundary (whoever then finds
the block) and before its own blocks, up to `--probes` times per rule, it also mines a block
stamped just beyond the limit and submits it to a node that does not mine, which names the
rule that refuses it (`time-too-new`, `time-timewarp-attack`, `time-too-old`).

Real hashing at testnet difficulty in real time would take 10 minutes per window, so the run
keeps time itself: every node's clock is set (`setmocktime`) to a virtual clock that advances
by an exponential draw per block, with the mean a total hash rate of `--equilibrium` times the
easiest difficulty's gives (10 s per block at that difficulty); the block's miner is drawn by
share. Blocks are mined for real (proof of work at the real target) and validated by every
node. If the last attack window ended with a block stamped ahead, one more window follows in
which the attacker stamps honestly, so the chain's timestamps are back at the virtual clock;
all clocks are then given back to the system. The
chain is then `clock_lead_s` ahead of the wall clock: a node that joins later refuses its
newest blocks until the wall clock catches up (time-too-new, as any block from the future).

The JSON also holds a pure virtual-time comparison computed with the consensus functions
(no nodes): the difficulty per window with no attack, with the attack under powlab's rules,
and with the attack and the timewarp rule switched off.
"""

# No `from __future__ import annotations`: the runner loads this file as a module that is not
# in sys.modules, where dataclasses cannot resolve string annotations.
import argparse
import dataclasses
import hashlib
import random
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from consensus.block import Block, BlockHeader, decode_block
from consensus.params import ChainParams, network_params
from consensus.pow import bits_to_target, difficulty, retarget, target_to_bits
from consensus.validation import timewarp_floor
from lab.scenario import Network, Node, ScenarioError

NO_RULE_GRACE = 2**31  # a grace no timestamp can exceed: the timewarp rule switched off


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--share", type=float, default=0.3,
                        help="the attacker's share of the hash rate (default 0.3)")
    parser.add_argument("--windows", type=int, default=4,
                        help="retarget windows under attack (default 4)")
    parser.add_argument("--equilibrium", type=float, default=4.0,
                        help="the total hash rate, as the difficulty at which it finds a block "
                             "every target spacing (default 4: cheap to hash)")
    parser.add_argument("--margin", type=int, default=60,
                        help="seconds inside (kept block) and beyond (refused probe) each "
                             "limit (default 60)")
    parser.add_argument("--probes", type=int, default=2,
                        help="refused probe blocks per rule at most (default 2)")
    parser.add_argument("--virtual-windows", type=int, default=12,
                        help="attack windows of the pure virtual-time comparison (default 12)")
    parser.add_argument("--virtual-trials", type=int, default=200,
                        help="runs averaged per series in the comparison (default 200)")
    parser.add_argument("--virtual-equilibrium", type=float, default=1024.0,
                        help="its honest difficulty, high enough that drops show before the "
                             "easiest difficulty stops them (default 1024)")


# --------------------------------------------------------------------------- the chain model


@dataclass
class ChainModel:
    """Heights, timestamps and bits of the recent active chain, and the consensus rules on
    them: the median time past, the next bits (consensus.pow.retarget, as ChainState does) and
    the earliest allowed timestamp (with consensus.validation.timewarp_floor)."""

    params: ChainParams
    times: dict[int, int] = field(default_factory=dict)
    bits: dict[int, int] = field(default_factory=dict)
    height: int = -1

    def add(self, height: int, timestamp: int, bits: int) -> None:
        self.times[height], self.bits[height], self.height = timestamp, bits, height
        for old in [h for h in self.times if h < height - 2 * self.params.retarget_window]:
            del self.times[old], self.bits[old]

    def mtp(self) -> int:
        span = self.params.median_time_span
        times = sorted(self.times[h] for h in range(max(0, self.height - span + 1),
                                                    self.height + 1))
        return times[len(times) // 2]

    def next_bits(self) -> int:
        p, height = self.params, self.height + 1
        if p.no_retarget or height % p.retarget_window:
            return self.bits[self.height] if self.height else p.pow_limit_bits
        first = self.times[height - p.retarget_window]
        new = retarget(bits_to_target(self.bits[self.height]), self.times[self.height] - first,
                       p.target_spacing * p.retarget_window, p.retarget_clamp, p.pow_limit)
        return target_to_bits(new)

    def min_timestamp(self) -> int:
        floor = timewarp_floor(self.height + 1, self.times[self.height], self.params)
        return max(self.mtp() + 1, floor if floor is not None else 0)

    def difficulty(self, bits: int) -> float:
        return difficulty(bits_to_target(bits), self.params.pow_limit)

    def position(self) -> int:
        """Where the next block sits in its window: 0 first … window-1 last."""
        return (self.height + 1) % self.params.retarget_window


@dataclass
class Plan:
    """What the attacker stamps on its next block and the one beyond the limit it tries
    first (None: no probe), with the rule it expects to refuse it."""

    stamp: int
    probe: int | None
    rule: str


def attacker_plan(model: ChainModel, vnow: int, margin: int) -> Plan:
    p = model.params
    position = model.position()
    if position == p.retarget_window - 1:
        # The window's last block: as far ahead as the future limit allows.
        ahead = vnow + p.max_future_drift
        return Plan(ahead - margin, ahead + margin, "time-too-new")
    lowest = model.mtp() + 1
    if position == 0:
        # The window's first block: back to the median time past (the classic timewarp).
        floor = model.min_timestamp()
        return Plan(floor, lowest if lowest < floor else None, "time-timewarp-attack")
    return Plan(lowest, lowest - 1, "time-too-old")


# --------------------------------------------------------------------------- virtual time


def simulate(params: ChainParams, share: float, equilibrium: float, windows: int,
             rng: random.Random, attack: bool, margin: int) -> list[dict[str, Any]]:
    """One run in virtual time, nodes replaced by `ChainModel`: the chain ramps from the
    easiest difficulty to `equilibrium` on honest timestamps, then `windows` windows in which
    the attacker (if `attack`) stamps as `attacker_plan` says. Each attack window: its
    difficulty, its real (virtual) duration and whether the attacker mined its last block."""
    w, spacing = params.retarget_window, params.target_spacing
    model = ChainModel(params)
    vnow = params.genesis_timestamp
    model.add(0, vnow, params.pow_limit_bits)
    ramp = 1
    while 4**ramp < equilibrium * 2:
        ramp += 1
    first_attack = (ramp + 1) * w
    result: list[dict[str, Any]] = []
    while model.height + 1 < first_attack + windows * w:
        height, bits = model.height + 1, model.next_bits()
        level = model.difficulty(bits)
        before = vnow
        vnow += max(1, round(rng.expovariate(1.0) * spacing * level / equilibrium))
        attacker = rng.random() < share
        if attacker and attack and height >= first_attack:
            stamp = max(attacker_plan(model, vnow, margin).stamp, model.min_timestamp())
        else:
            stamp = max(vnow, model.min_timestamp())
        model.add(height, stamp, bits)
        if height >= first_attack:
            if height % w == 0:
                result.append({"difficulty": level, "start_vtime": before,
                               "last_by_attacker": False})
            if height % w == w - 1:
                result[-1]["duration"] = vnow - result[-1].pop("start_vtime")
                result[-1]["last_by_attacker"] = attacker
    return result


def comparison(params: ChainParams, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """The same draws (seeded per trial) with no attack, with the attack under these rules
    and with the attack and the timewarp rule off; the mean difficulty of each attack window
    relative to the no-attack run's, and the blocks found per target window time."""
    no_rule = dataclasses.replace(params, timewarp_grace=NO_RULE_GRACE)
    variants: dict[str, tuple[ChainParams, bool]] = {
        "no_attack": (params, False), "attack": (params, True),
        "attack_without_rule": (no_rule, True)}
    runs: dict[str, list[list[dict[str, Any]]]] = {k: [] for k in variants}
    for trial in range(args.virtual_trials):
        for name, (p, attack) in variants.items():
            runs[name].append(simulate(p, args.share, args.virtual_equilibrium,
                                       args.virtual_windows, random.Random(seed * 7919 + trial),
                                       attack, args.margin))
    window_time = params.target_spacing * params.retarget_window
    base = statistics.fmean(w["difficulty"] for run in runs["no_attack"] for w in run)
    out: dict[str, Any] = {
        "trials": args.virtual_trials, "windows": args.virtual_windows,
        "equilibrium": args.virtual_equilibrium, "share": args.share,
        "honest_difficulty": round(base, 2)}
    for name, series in runs.items():
        per_window = [statistics.fmean(run[k]["difficulty"] for run in series) / base
                      for k in range(args.virtual_windows)]
        lowest = [min(w["difficulty"] for w in run) / base for run in series]
        duration = sum(w["duration"] for run in series for w in run)
        out[name] = {
            "relative_difficulty": [round(x, 3) for x in per_window],
            "mean_relative_difficulty": round(statistics.fmean(per_window), 3),
            "median_lowest_relative_difficulty": round(statistics.median(lowest), 4),
            "blocks_per_window_time": round(
                params.retarget_window * len(series) * args.virtual_windows
                * window_time / duration, 1),
        }
    return out


# --------------------------------------------------------------------------- the live run


def solve(header: BlockHeader) -> BlockHeader:
    """The lowest winning nonce, by midstate (the attacker's own mining software)."""
    raw = header.encode()
    mid, tail = hashlib.sha256(raw[:64]), raw[64:76]
    target = bits_to_target(header.bits)
    for nonce in range(1 << 32):
        h = mid.copy()
        h.update(tail + nonce.to_bytes(4, "big"))
        if int.from_bytes(hashlib.sha256(h.digest()).digest(), "big") <= target:
            return header.with_nonce(nonce)
    raise ScenarioError("no nonce wins")


@dataclass
class Live:
    net: Network
    model: ChainModel
    attacker: Node
    honest: list[Node]
    judge: Node
    vnow: int
    addresses: dict[str, str] = field(default_factory=dict)
    blocks: list[dict[str, Any]] = field(default_factory=list)
    refusals: list[dict[str, Any]] = field(default_factory=list)

    def set_clocks(self, when: int) -> None:
        for node in self.net.nodes.values():
            node.call("setmocktime", when)

    def withheld(self, node: Node, stamp: int) -> Block:
        """A block of `node`'s template stamped `stamp` (its clock set there meanwhile),
        not submitted."""
        node.call("setmocktime", stamp)
        try:
            result = node.call("generateblock", self.addresses[node.name], [], False,
                               timeout=300)
        finally:
            node.call("setmocktime", self.vnow)
        return decode_block(bytes.fromhex(result["hex"]), self.model.params.max_block_size)

    def probe(self, plan: Plan, probes: dict[str, int], limit: int) -> None:
        if plan.probe is None or probes.get(plan.rule, 0) >= limit:
            return
        template = self.withheld(self.attacker, self.vnow)
        header = solve(dataclasses.replace(template.header, timestamp=plan.probe))
        reason = self.judge.call("submitblock", Block(header, template.txs).encode().hex())
        probes[plan.rule] = probes.get(plan.rule, 0) + 1
        refusal = {"height": self.model.height + 1, "stamp": plan.probe,
                   "offset": plan.probe - self.vnow, "expected": plan.rule,
                   "result": reason or "accepted", "judge": self.judge.name}
        self.refusals.append(refusal)
        self.net.timeline.mark(self.attacker.name, "probe refused" if reason else
                               "probe accepted", **refusal)

    def mine(self, node: Node, stamp: int | None) -> str:
        """`node` mines the next block (stamped `stamp`, else by its clock) and every node
        takes it; its hash."""
        if stamp is None:
            [block_hash] = node.call("generatetoaddress", 1, self.addresses[node.name],
                                     timeout=300)
        else:
            block = self.withheld(node, stamp)
            reason = node.call("submitblock", block.encode().hex())
            if reason is not None:
                raise ScenarioError(f"{node.name} refused its own block stamped {stamp}: "
                                    f"{reason}")
            block_hash = block.hash.hex()
        self.net.wait_for(lambda: all(n.call("getbestblockhash") == block_hash
                                      for n in self.net.nodes.values()),
                          60, f"every node at block {block_hash[:16]}")
        return block_hash

    def step(self, rng: random.Random, args: argparse.Namespace, attacking: bool,
             probes: dict[str, int], phase: str) -> None:
        model, p = self.model, self.model.params
        height, bits = model.height + 1, model.next_bits()
        level = model.difficulty(bits)
        self.vnow += max(1, round(rng.expovariate(1.0) * p.target_spacing * level
                                  / args.equilibrium))
        by_attacker = rng.random() < args.share
        self.set_clocks(self.vnow)
        miner = self.attacker if by_attacker else self.pick_honest(rng)
        stamp = None
        if attacking:
            plan = attacker_plan(model, self.vnow, args.margin)
            # The attacker tries every window boundary, whoever then finds the kept block:
            # its probe there is a block it mined beyond the limit, outside the share draw.
            if by_attacker or model.position() in (0, p.retarget_window - 1):
                self.probe(plan, probes, args.probes)
            if by_attacker:
                stamp = plan.stamp
        block_hash = self.mine(miner, stamp)
        header = miner.call("getblockheader", block_hash)
        got_bits = int(header["bits"], 16)
        if got_bits != bits:
            raise ScenarioError(f"block {height}: bits {got_bits:08x}, the model expected "
                                f"{bits:08x} (is this testnet's parameter set?)")
        model.add(height, header["time"], got_bits)
        record = {"height": height, "time": header["time"], "vtime": self.vnow,
                  "offset": header["time"] - self.vnow, "bits": header["bits"],
                  "difficulty": round(level, 4), "miner": miner.name,
                  "attacker": by_attacker, "phase": phase}
        self.blocks.append(record)
        self.net.timeline.mark(miner.name, "block", **{k: v for k, v in record.items()
                                                      if k != "miner"})

    def pick_honest(self, rng: random.Random) -> Node:
        weights = [max(n.hashrate_share or 0.0, 1e-9) for n in self.honest]
        return rng.choices(self.honest, weights)[0]


def start_model(node: Node, params: ChainParams) -> ChainModel:
    model = ChainModel(params)
    tip = node.call("getblockcount")
    for height in range(max(0, tip - 2 * params.retarget_window), tip + 1):
        header = node.call("getblockheader", node.call("getblockhash", height))
        model.add(height, header["time"], int(header["bits"], 16))
    return model


def windows_of(blocks: list[dict[str, Any]], window: int) -> list[dict[str, Any]]:
    """Per whole window in `blocks`: its first height, phase, difficulty, measured span
    (last − first timestamp, what the retarget sees), virtual duration and who ended it."""
    out = []
    by_height = {b["height"]: b for b in blocks}
    for start in sorted(h for h in by_height if h % window == 0):
        end = start + window - 1
        if end not in by_height:
            continue
        first, last = by_height[start], by_height[end]
        prev = by_height.get(start - 1)
        out.append({
            "start": start, "phase": first["phase"], "difficulty": first["difficulty"],
            "measured_span": last["time"] - first["time"],
            "virtual_duration": last["vtime"] - (prev["vtime"] if prev else first["vtime"]),
            "last_by_attacker": last["attacker"], "last_offset": last["offset"],
            "first_offset": first["offset"],
            "attacker_blocks": sum(by_height[h]["attacker"] for h in range(start, end + 1)),
        })
    return out


def run(net: Network) -> None:
    args = net.args
    if not 0 < args.share < 0.5:
        raise ScenarioError("--share must be a minority share, between 0 and 0.5")
    if args.windows < 1 or args.equilibrium < 1:
        raise ScenarioError("--windows and --equilibrium must be at least 1")
    attacker = net.attacker
    honest = [n for n in net.honest if n.name != attacker.name]
    if not honest:
        raise ScenarioError("the timewarp needs an honest miner besides the attacker")
    others = [n for n in net.nodes.values() if n.name != attacker.name and n not in honest]
    judge = (others or honest)[0]  # refused probes go to a node that does not mine
    info = attacker.call("getblockchaininfo")
    params = network_params(info["chain"])
    if params.no_retarget:
        raise ScenarioError(f"network {info['chain']} does not retarget: run it on a testnet "
                            "made with `powlab testnet up --network testnet`")
    if info["genesis"] != params.genesis_hash.hex():
        raise ScenarioError("this network's parameters are not powlab's testnet ones")
    w = params.retarget_window
    window_time = params.target_spacing * w
    net.timeline.mark("*", "setup", network=info["chain"], window=w,
                      window_time=window_time, clamp=params.retarget_clamp,
                      max_future_drift=params.max_future_drift,
                      timewarp_grace=params.timewarp_grace, share=args.share,
                      equilibrium=args.equilibrium)
    rng = net.rng
    with net.staged():  # every miner paused; the scenario mines each block itself
        net.sync_blocks()
        model = start_model(attacker, params)
        wall = int(time.time())
        vnow = max(wall, model.times[model.height])
        # The whole run in virtual time: ramp, baseline, attack and recovery windows, about
        # on schedule (a window after a drop is faster). It must end well inside the future
        # limit of the wall clock, or the nodes would refuse their own next blocks.
        first = (model.height // w + 1) * w
        budget = (first - model.height) * params.target_spacing + (args.windows + 2) * window_time
        if vnow - wall + budget > params.max_future_drift - window_time:
            raise ScenarioError(
                f"the chain's clock is already {vnow - wall} s ahead of the wall clock (an "
                f"earlier run?); {args.windows} windows need {budget} s more of a "
                f"{params.max_future_drift} s future limit: wait, or use a fresh testnet")
        live = Live(net, model, attacker, honest, judge, vnow)
        live.addresses = {n.name: n.call("getnewaddress") for n in (attacker, *honest)}
        probes: dict[str, int] = {}
        attack_start, attack_end = first + w, first + (args.windows + 1) * w
        phases: list[tuple[int, str, bool]] = [(first, "ramp", False),
                                              (attack_start, "baseline", False),
                                              (attack_end, "attack", True)]
        try:
            for end, phase, attacking in phases:
                while model.height + 1 < end:
                    live.step(rng, args, attacking, probes, phase)
            # A last window stamped ahead leaves the next window's start there (the timewarp
            # rule): one more window with honest stamps brings the chain back to the clock.
            if live.blocks[-1]["offset"] > params.target_spacing:
                while model.height + 1 < attack_end + w:
                    live.step(rng, args, False, probes, "recovery")
            final_bits = model.next_bits()
        finally:
            live.set_clocks(0)
        lead = model.times[model.height] - int(time.time())
        net.timeline.mark("*", "clocks given back", clock_lead_s=lead)
    report(net, live, params, window_time, final_bits, lead, judge.name)


def compounds(levels: list[float]) -> bool:
    """Whether difficulty halved in two windows running (a drop that went on)."""
    return any(b < a / 2 and c < b / 2 for a, b, c in zip(levels, levels[1:], levels[2:],
                                                          strict=False))


def report(net: Network, live: Live, params: ChainParams, window_time: int, final_bits: int,
           lead: int, judge: str) -> None:
    args = net.args
    w = params.retarget_window
    windows = windows_of(live.blocks, w)
    baseline = next((x for x in windows if x["phase"] == "baseline"), None)
    attacked = [x for x in windows if x["phase"] in ("attack", "recovery")]
    if baseline is None or not attacked:
        raise ScenarioError("the run recorded no whole baseline and attack windows")
    # What honest timestamps give: the difficulty the baseline window's retarget set.
    honest_level = attacked[0]["difficulty"]
    # The difficulty each attack window's timestamps lead to: that of the window after it.
    final_level = round(live.model.difficulty(final_bits), 4)
    following = [x["difficulty"] for x in attacked[1:]] + [final_level]
    levels = [x["difficulty"] for x in attacked] + [final_level]
    lowest, highest = min(following), max(following)
    probe_results: dict[str, int] = {}
    for r in live.refusals:
        probe_results[r["result"]] = probe_results.get(r["result"], 0) + 1
    refused = {k: v for k, v in probe_results.items() if k != "accepted"}
    future_ends = [x["start"] for x in attacked if x["phase"] == "attack"
                   and x["last_by_attacker"] and x["last_offset"] > window_time]
    next_starts = {x["start"]: x["first_offset"] for x in windows}
    carried = [next_starts.get(s + w) for s in future_ends]
    dropped = lowest < honest_level / 2
    compounded = compounds(levels)
    virtual = comparison(params, args, net.seed)
    blocks_attack = [b for b in live.blocks if b["phase"] == "attack"]
    attack_vtime = blocks_attack[-1]["vtime"] - blocks_attack[0]["vtime"]
    rules = ", ".join(f"{k} ×{v}" for k, v in sorted(refused.items())) or "none"
    accepted = probe_results.get("accepted", 0)
    if future_ends:
        ends = (f"the attacker ({args.share:.0%}) ended {len(future_ends)} of {args.windows} "
                f"attack windows with a block stamped {params.max_future_drift - args.margin} "
                "s ahead, which every node accepted")
    else:
        ends = (f"the attacker ({args.share:.0%}) found the last block of none of the "
                f"{args.windows} attack windows")
    starts = ", ".join(f"{c:+d} s" for c in carried if c is not None)
    if dropped:
        verdict = (
            f"timewarp: {ends}; difficulty fell from {honest_level:.2f} (honest timestamps) "
            f"to {lowest:.2f}" + (", and the drop went on (compounded)" if compounded else
                           ", and the drop did not go on")
            + (f" (the window after such a block began {starts} ahead of the clock, "
               f"within the timewarp grace of {params.timewarp_grace} s before that block)"
               if starts else "")
            + (f"; it then overshot to {highest:.2f} when honest blocks ended a window"
               if highest > honest_level * 1.5 else "")
            + f"; {judge} refused the probe blocks beyond the limits: {rules}")
    else:
        verdict = (
            f"timewarp: {ends}; difficulty stayed between {lowest:.2f} and {highest:.2f} "
            f"against {honest_level:.2f} with honest timestamps; {judge} refused the probe "
            f"blocks beyond the limits: {rules}")
    if accepted:
        verdict += f"; {accepted} probe block(s) beyond a limit were ACCEPTED"
    net.report(
        verdict=verdict, success=dropped,
        network=params.name, window=w, window_time_s=window_time,
        retarget_clamp=params.retarget_clamp, max_future_drift_s=params.max_future_drift,
        timewarp_grace_s=params.timewarp_grace, share=args.share,
        equilibrium=args.equilibrium, attack_windows=args.windows,
        honest_difficulty=honest_level, lowest_difficulty=lowest, highest_difficulty=highest,
        difficulty_after_windows=following, dropped=dropped, compounded=compounded,
        future_stamped_window_ends=future_ends, next_window_first_offsets=carried,
        refused=refused, probes_accepted=accepted, refusals=live.refusals,
        windows=windows, blocks=live.blocks, attack_blocks=len(blocks_attack),
        attack_virtual_s=attack_vtime, clock_lead_s=lead, virtual=virtual)
