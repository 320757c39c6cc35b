# Sourced by scripts/demo and scripts/test: create .venv once and keep it in
# step with setup.cfg, so both quick-start commands work on a fresh machine.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ZMQAGENTS_VENV:-$ROOT/.venv}"
EXTRAS="${1:-fast}"
if [ ! -x "$VENV/bin/python" ]; then
    echo "setting up $VENV (first run only)..." >&2
    python3 -m venv "$VENV"
fi
stamp="$VENV/.zmqagents-installed-$EXTRAS"
if [ ! -f "$stamp" ] || [ "$ROOT/setup.cfg" -nt "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
    echo "installing zmqagents[$EXTRAS] into $VENV..." >&2
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$ROOT[$EXTRAS]" >&2
    touch "$stamp"
fi
export PATH="$VENV/bin:$PATH"
