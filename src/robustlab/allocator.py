"""Run CPU work under tcmalloc, as PyTorch's own CPU launcher (torch.backends.xeon.run_cpu) does.

glibc malloc page-faults on the large short-lived tensors of convolutions; preloading tcmalloc
made CPU training and attacks up to 3x faster on the 2-core machines. ``LD_PRELOAD`` only
takes effect at process start, so the process restarts itself once with it set.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

TCMALLOC_PATHS = (
    "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
    "/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4",
    "/usr/lib64/libtcmalloc_minimal.so.4",
)


def tcmalloc_library() -> str | None:
    """The installed tcmalloc library, or None."""
    return next((path for path in TCMALLOC_PATHS if os.path.exists(path)), None)


def reexec_with_tcmalloc(python_args: Sequence[str]) -> None:
    """Replace this process by ``python python_args...`` with tcmalloc preloaded.

    Returns (doing nothing) when tcmalloc is already preloaded, not installed, or
    ``ROBUSTLAB_TCMALLOC=0`` is set.
    """
    if os.environ.get("ROBUSTLAB_TCMALLOC", "1") == "0":
        return
    preload = os.environ.get("LD_PRELOAD", "")
    library = tcmalloc_library()
    if "tcmalloc" in preload or library is None:
        return
    env = dict(os.environ, LD_PRELOAD=f"{library}:{preload}" if preload else library)
    os.execve(sys.executable, [sys.executable, *python_args], env)


def allocator_name() -> str:
    """'tcmalloc' when this process runs with it preloaded, else 'glibc malloc'."""
    return "tcmalloc" if "tcmalloc" in os.environ.get("LD_PRELOAD", "") else "glibc malloc"
