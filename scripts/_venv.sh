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
# The MPI simulator tests (tests/sim/test_sim_mpi.py) need mpi4py built against this machine's MPICH:
# with the test extra, the mpi extra comes too wherever mpicc is (.ci/run installs MPICH), built from
# source (setup.cfg says why); where it is not, those tests fail saying what to install.
if [[ ",$EXTRAS," == *",test,"* && ",$EXTRAS," != *",mpi,"* ]] && command -v mpicc >/dev/null; then
    EXTRAS="$EXTRAS,mpi"
fi
stamp="$VENV/.zmqagents-installed-$EXTRAS"
if [ ! -f "$stamp" ] || [ "$ROOT/setup.cfg" -nt "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
    echo "installing zmqagents[$EXTRAS] into $VENV..." >&2
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-binary mpi4py -e "$ROOT[$EXTRAS]" >&2
    touch "$stamp"
fi
export PATH="$VENV/bin:$PATH"
