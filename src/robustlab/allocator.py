"""Run CPU work under tcmalloc, as PyTorch's own CPU launcher (torch.backends.xeon.run_cpu) does.

glibc malloc page-faults on the large short-lived tensors of convolutions; preloading tcmalloc
made CPU training and attacks up to 3x faster on the 2-core machines. ``LD_PRELOAD`` only
takes effect at process start, so the process restarts itself once with it set.

tcmalloc keeps freed pages for reuse and hands them back to the system slowly
(``TCMALLOC_RELEASE_RATE``, default 1). An attack at 224 px frees and allocates windows of
different sizes all the time, and that cache grew its peak by 0.9 GB over glibc's (3.65 GB RSS
vs 2.69). Rate 10, the fastest gradual release, cut it to 3.24 GB at the same speed, and left
training's peak and speed unchanged (issue 13; in-process peak RSS, 700 test images of a
12 000-image set, measured with a throwaway script, not a committed benchmark). Returning
every free page at once (``TCMALLOC_AGGRESSIVE_DECOMMIT``) reaches glibc's peak but was 1.8x
slower: the page faults tcmalloc is here to avoid. A rate set in the environment is kept;
``scripts/setup.sh``, which preloads tcmalloc itself, sets the same default.
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

RELEASE_RATE = "10"  # tcmalloc's fastest gradual return of free pages (see the module doc)


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
    env.setdefault("TCMALLOC_RELEASE_RATE", RELEASE_RATE)
    os.execve(sys.executable, [sys.executable, *python_args], env)


def allocator_name() -> str:
    """'tcmalloc' when this process runs with it preloaded, else 'glibc malloc'."""
    return "tcmalloc" if "tcmalloc" in os.environ.get("LD_PRELOAD", "") else "glibc malloc"
