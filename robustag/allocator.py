"""The C allocator's settings for training and attack loops on the CPU.

Each training step allocates and frees the same few tensors of several MB ((B, K, d)
products and their gradients). glibc's malloc serves blocks that large with fresh `mmap`
pages and gives freed heap tops back to the system, so every step pays page faults to zero
the same memory again. Keeping blocks up to 32 MB on the heap (M_MMAP_THRESHOLD) and freed
memory up to 1 GB in the process (M_TRIM_THRESHOLD) removes that: measured on LastFM (metric
model, batch 1,024, K = 16, d = 128, 2-core CPU), an eager epoch goes from 1.02–1.17 s to
0.85–0.93 s (`benchmarks/allocator.py`, figures in reports/benchmarks/README.md). Results are
unchanged (only where memory comes from). A setting the user made through glibc's own
environment variables (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_) is left as it is, and
nothing happens on other C libraries.
"""

from __future__ import annotations

import ctypes
import os
import platform

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)
SETTINGS = {M_MMAP_THRESHOLD: ("MALLOC_MMAP_THRESHOLD_", 32 * 2**20), M_TRIM_THRESHOLD: ("MALLOC_TRIM_THRESHOLD_", 2**30)}

_applied = False


def keep_step_memory() -> bool:
    """Apply the settings once per process; True when glibc took them (or already had)."""
    global _applied
    if _applied:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL("libc.so.6")
    for parameter, (variable, value) in SETTINGS.items():
        if variable not in os.environ and libc.mallopt(parameter, value) != 1:
            return False
    _applied = True
    return True
