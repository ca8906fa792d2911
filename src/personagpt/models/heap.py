"""How glibc's allocator treats the large tensors of a run: kept for training, handed back for inference.

Training reuses a few fixed batch shapes, so keeping freed memory in the process saves page faults (1.3-1.7x
faster steps). Inference allocates tensors of ever-changing sizes (a dialogue's length, 20 candidates' logits,
a new conversation's cache); glibc's default raises its mmap threshold after such frees, serves the next large
blocks from the heap, and the heap fragments: ``personagpt eval --limit 5`` peaked at 2.7 GB RSS. Serving every
block over 1 MiB with mmap (returned on free) brought the same run to 1.8 GB (bench/README.md, "Memory").
"""

from __future__ import annotations

import ctypes

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4


def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None  # not glibc: nothing to tune


def keep_freed_memory() -> bool:
    """Training: stop glibc from handing freed blocks back to the OS after every step. Equivalent to running
    with ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=<huge>``; safe because batch shapes come from a few fixed
    widths. Returns whether it applied."""
    libc = _libc()
    return libc is not None and bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


def return_freed_memory(threshold: int = 1 << 20) -> bool:
    """Inference: blocks over ``threshold`` bytes are mmapped and go back to the OS when freed (a fixed
    threshold, so glibc no longer raises it). Returns whether it applied."""
    libc = _libc()
    return libc is not None and bool(libc.mallopt(M_MMAP_THRESHOLD, threshold))
