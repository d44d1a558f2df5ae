# Shared by scripts/run and scripts/test: make sure .venv exists and holds this checkout.
# Reinstalls when pyproject.toml changes (a stamp file records what was installed).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PYTHON_BIN="${PYTHON:-python3}"

ensure_venv() {  # $1: pip extras spec: "", "[plots]" or "[dev]"
    local extras="$1" stamp="$VENV/.powlab-installed" hash installed
    hash="$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16)"
    installed="$(cat "$stamp" 2>/dev/null || true)"
    if [ ! -x "$VENV/bin/python" ]; then
        echo "creating $VENV" >&2
        "$PYTHON_BIN" -m venv "$VENV"
        installed=""
    fi
    # A dev install also serves a plain one or one with plots (dev includes matplotlib).
    if [ "$installed" != "$hash[dev]" ] && [ "$installed" != "$hash$extras" ]; then
        echo "installing powlab$extras into $VENV" >&2
        "$VENV/bin/python" -m pip install --quiet --upgrade pip >&2
        "$VENV/bin/python" -m pip install --quiet -e "$ROOT$extras" >&2
        echo "$hash$extras" > "$stamp"
    fi
}
