#!/usr/bin/env bash
# Sets up the environment (idempotent) and runs the test suite. Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
export HF_HUB_OFFLINE=1
exec "${ESC_NET_VENV:-$ROOT/.venv}/bin/python" -m pytest -q tests "$@"
