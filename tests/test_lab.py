"""The lab's entry points and shared helpers: `powlab` is lab.cli:main, `powlab node` reaches
the daemon, the one percentile, and `--plot` without matplotlib. (That node/ never imports
lab/ and lab/ reaches nodes only over RPC: tests/test_architecture.py.)"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from lab.stats import percentile, wilson_interval
from tests.daemon_harness import REPO


def test_powlab_is_the_lab_command_line() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["powlab"] == "lab.cli:main"
    assert "matplotlib" not in " ".join(project["dependencies"])
    assert any(r.startswith("matplotlib") for r in project["optional-dependencies"]["plots"])


def test_powlab_node_runs_the_daemon(tmp_path: Path) -> None:
    # The lab replaces itself with `python -m node`: the daemon's own errors and exit code.
    config = tmp_path / "bad.toml"
    config.write_text("no_such_option = 1\n")
    done = subprocess.run([sys.executable, "-m", "lab", "node", "--config", str(config)],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 2
    assert done.stderr.startswith("powlab node: configuration error: config file in ")
    assert "unknown key 'no_such_option'" in done.stderr


def test_print_config_shows_every_option_without_starting(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "node", "--datadir", str(tmp_path / "d"), "--print-config"],
        capture_output=True, text=True, timeout=60, cwd=REPO, check=True,
    )
    assert '"max_rpc_batch": 1000' in done.stdout and '"hashrate": null' in done.stdout
    assert not (tmp_path / "d").exists()


# --------------------------------------------------------------------------- percentile


def test_percentile_is_nearest_rank() -> None:
    seven = [7.0, 1.0, 6.0, 2.0, 5.0, 3.0, 4.0]
    assert percentile(seven, 0.5) == 4.0
    assert percentile(seven, 0.9) == 7.0  # only the slowest has >= 90 % at or below it
    assert percentile(seven, 0.0) == 1.0 and percentile(seven, 1.0) == 7.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.0  # the lower middle, not 2.5
    assert percentile([float(k) for k in range(1, 101)], 0.99) == 99.0
    with pytest.raises(ValueError):
        percentile([], 0.5)


# --------------------------------------------------------------------------- plots extra


@pytest.mark.parametrize("words", [
    ("simulate", "doublespend", "--q", "0.3", "--z", "1", "--trials", "10"),
    ("attack", "race"),
])
def test_plot_without_matplotlib_names_the_extra(words: tuple[str, ...], tmp_path: Path) -> None:
    plot = tmp_path / "out.png"
    argv = [*words, "--plot", str(plot)]
    if words[0] == "attack":
        argv += ["--dir", str(tmp_path)]  # no testnet there: the check must come first
    probe = (
        "import sys\n"
        "sys.modules['matplotlib'] = None  # as if it were not installed\n"
        "from lab.cli import main\n"
        f"sys.exit(main({argv!r}))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=60, cwd=REPO)
    assert done.returncode == 2, done.stderr
    assert f"powlab {words[0]}: --plot needs matplotlib" in done.stderr
    assert "pip install 'powlab[plots]'" in done.stderr
    assert "Traceback" not in done.stderr and not plot.exists()


# --------------------------------------------------------------------------- wilson


def test_wilson_interval_is_the_one_of_the_attack_theory() -> None:
    import consensus.attack_theory

    assert wilson_interval is consensus.attack_theory.wilson_interval
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    assert wilson_interval(0, 10) == (0.0, pytest.approx(0.2775, abs=1e-4))
    assert wilson_interval(10, 10) == (pytest.approx(0.7225, abs=1e-4), 1.0)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    wide, narrow = wilson_interval(5, 10, z=2.576), wilson_interval(5, 10, z=1.0)
    assert wide[0] < lo < narrow[0] and narrow[1] < hi < wide[1]
