#!/usr/bin/env bash
# Sets up everything robustlab needs on a fresh machine; safe to run again (it is fast then).
# Sourced by scripts/demo.sh and scripts/test.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# System packages: tcmalloc (PyTorch on CPU runs up to 3x faster with it; glibc malloc
# page-faults on large tensors) and Chromium (the report test renders report.html).
want=()
[ -e /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 ] || want+=(libtcmalloc-minimal4)
[ -n "${ROBUSTLAB_SKIP_BROWSER:-}" ] || command -v chromium >/dev/null 2>&1 || want+=(chromium)
if [ ${#want[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing ${want[*]} (apt)"
    apt-get update -qq >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null \
      || echo "setup: warning: could not install ${want[*]}; continuing without" >&2
  else
    echo "setup: note: ${want[*]} not installed (needs root + apt); continuing without" >&2
  fi
fi

# Python environment: uv + the locked dependencies.
if ! command -v uv >/dev/null 2>&1; then
  echo "setup: installing uv"
  python3 -m pip install -q --disable-pip-version-check uv 2>/dev/null \
    || python3 -m pip install -q --user --disable-pip-version-check uv
  export PATH="$HOME/.local/bin:$PATH"
fi
uv sync --frozen --quiet --group bench
export PATH="$ROOT/.venv/bin:$PATH"

# Faster allocator for every robustlab process started from here.
TCMALLOC=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4
if [ -e "$TCMALLOC" ] && [[ "${LD_PRELOAD:-}" != *tcmalloc* ]]; then
  export LD_PRELOAD="$TCMALLOC${LD_PRELOAD:+:$LD_PRELOAD}"
fi
# free pages back to the system at tcmalloc's fastest gradual rate (robustlab/allocator.py)
export TCMALLOC_RELEASE_RATE="${TCMALLOC_RELEASE_RATE:-10}"

# Data sets: ../shared/data beside the checkout unless the user points elsewhere.
if [ -z "${ROBUSTLAB_DATA_DIR:-}" ] && [ -d "$ROOT/../shared/data" ]; then
  export ROBUSTLAB_DATA_DIR="$(cd "$ROOT/../shared/data" && pwd)"
fi
