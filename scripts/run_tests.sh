#!/usr/bin/env bash
# Set up the environment (idempotent) and run the whole test suite on the CPU.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
export CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES-}"
exec "$ROOT/.venv/bin/python" -m pytest -q "$@"
