"""matplotlib for the `--plot` options, and only for them: it is the optional extra `plots`
(``pip install 'powlab[plots]'``), so the daemon's image and a plain install go without it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

INSTALL_HINT = "pip install 'powlab[plots]'"


class PlotsUnavailable(RuntimeError):
    """matplotlib is not installed."""


def require_plots() -> None:
    """Raise :class:`PlotsUnavailable`, naming the install command, unless matplotlib is
    importable (checked before an experiment runs, not after it)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise PlotsUnavailable(
            f"--plot needs matplotlib, which is not installed: {INSTALL_HINT}"
        ) from None


def pyplot() -> Any:
    """matplotlib.pyplot on the headless Agg backend (servers and CI have no display)."""
    require_plots()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path) -> None:
    """Write `fig` as a PNG at `path` (slide resolution, tight margins) and free it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    pyplot().close(fig)
