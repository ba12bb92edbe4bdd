#!/usr/bin/env bash
# passenger-lite's benchmark, in one command (see bench/README.md):
#
#   bash bench/run.sh            # full run, ~15 min: figures in bench/results/latest.json and .txt
#   bash bench/run.sh --quick    # ~3 min development run (1 repetition, 2 s per load, no profile)
#   bash bench/run.sh --help     # every option
#
# It installs nothing. It needs Debian's nginx, wrk, passenger (6.0.17), ruby + ruby-rack, nodejs, openssl,
# and a Python with passenger-lite installed (.ci/setup makes .venv) plus uvicorn, uvloop, httptools
# (py-spy for the profile). PY=/path/to/python picks the interpreter; default: .venv/bin/python when
# it exists, else python3 on PATH.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")

missing=()
for tool in nginx wrk passenger passenger-config ruby node openssl; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "bench: missing tools: ${missing[*]}" >&2
  echo "  on Debian: apt-get install nginx wrk passenger ruby ruby-rack nodejs openssl" >&2
  exit 2
fi
ruby -e 'require "rack"' 2>/dev/null || { echo "bench: ruby cannot load rack (apt-get install ruby-rack)" >&2; exit 2; }

if [ -z "${PY:-}" ]; then
  if [ -x "$REPO/.venv/bin/python" ]; then PY=$REPO/.venv/bin/python; else PY=$(command -v python3 || true); fi
fi
[ -n "${PY:-}" ] || { echo "bench: no python3 found; set PY=/path/to/python" >&2; exit 2; }
# the real interpreter, not a pyenv shim: its bin/ holds passenger-lite's console script
PY=$("$PY" -c 'import sys; print(sys.executable)')
"$PY" - <<'PYEOF' || exit 2
import importlib.util, sys
need = {"passenger_lite": "pip install -e . (or bash .ci/setup)", "uvicorn": "pip install uvicorn",
        "uvloop": "pip install uvloop", "httptools": "pip install httptools", "aiohttp": "pip install -e .",
        "psutil": "pip install -e .", "yaml": "pip install -e ."}
miss = [f"{m} ({how})" for m, how in need.items() if importlib.util.find_spec(m) is None]
if miss:
    print(f"bench: {sys.executable} lacks: " + ", ".join(miss), file=sys.stderr)
    sys.exit(1)
PYEOF
if [[ " $* " != *" --no-profile "* && " $* " != *" --quick "* ]] && ! command -v py-spy >/dev/null && [ ! -x "$(dirname "$PY")/py-spy" ]; then
  echo "bench: py-spy not found: the profile is left out (pip install py-spy, or pass --no-profile)" >&2
fi
export PATH="$(dirname "$PY"):$PATH"   # py-spy and passenger-lite from the same environment
exec "$PY" "$HERE/bench.py" "$@"
