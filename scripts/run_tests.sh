#!/usr/bin/env bash
# Set up the environment (idempotent) and run the whole test suite on the CPU, in a random order each time
# (test modules, and tests within each module: tests/conftest.py). The seed is printed at the end; repeat an
# order with --random-order-seed N.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup_env.sh" --tests
cd "$ROOT"
export CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES-}"
exec "$ROOT/.venv/bin/python" -m pytest -q --random-order "$@"
