"""Process-wide settings for the command-line entry points (never applied at import).

Both must be in the environment before the process starts: the BLAS library
reads its thread count when NumPy loads it, and glibc reads its malloc tuning
when the program starts. So `tinyvit train` restarts itself with them, and
`tinyvit bench` starts its workers with them.
"""

from __future__ import annotations

import os

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")

# glibc malloc: arrays up to 32 MB come from the heap rather than fresh mmap pages,
# and freed memory is kept, so each training step reuses pages that are already
# mapped instead of faulting in hundreds of MB of new ones (20-40% of a step).
MALLOC_SETTINGS = {
    "MALLOC_MMAP_THRESHOLD_": str(32 * 1024 * 1024),    # glibc's largest allowed value
    "MALLOC_TRIM_THRESHOLD_": str(1 << 40),             # never give the heap back
    "MALLOC_TOP_PAD_": str(64 * 1024 * 1024),
}


def tuned_env(base=None, threads: int | None = None, malloc_tuning: bool = True) -> dict:
    """A copy of ``base`` (default os.environ) with the thread count set on every
    BLAS/OpenMP variable (when ``threads`` is given) and the malloc settings added
    where the user has not set them."""
    env = dict(os.environ if base is None else base)
    if threads is not None:
        env.update({v: str(threads) for v in THREAD_VARS})
    if malloc_tuning:
        for k, v in MALLOC_SETTINGS.items():
            env.setdefault(k, v)
    return env


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far, in bytes (Unix: Linux and macOS)."""
    import resource                                      # Unix only: imported when measuring
    import sys
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024   # Linux reports KiB
