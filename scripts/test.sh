#!/usr/bin/env bash
# Sets up and runs the whole test suite: bash scripts/test.sh [pytest args]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
ruff check src tests benchmarks
exec pytest -q --durations=15 "$@"
