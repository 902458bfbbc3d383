#!/usr/bin/env bash
# Sets up the environment (idempotent), checks the lint and the format (ruff, configured in pyproject.toml), then
# runs the test suite. Extra arguments go to pytest (e.g. -m "not slow" for the fast loop).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
VENV="${ESC_NET_VENV:-$ROOT/.venv}"
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
export HF_HUB_OFFLINE=1
exec "$VENV/bin/python" -m pytest -q tests "$@"
