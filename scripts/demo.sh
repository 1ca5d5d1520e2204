#!/usr/bin/env bash
# Sets up and runs the main job, the leaf study: bash scripts/demo.sh [robustlab run options]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
exec robustlab run leaf "$@"
