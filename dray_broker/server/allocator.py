"""Gives memory the broker has freed back to the system (glibc malloc_trim).

Buffers above 512 bytes (request frames, cached chunks, responses) come from the C allocator. glibc serves blocks
at or above its mmap threshold with mmap and unmaps them when freed, but raises the threshold to the size of each
such block freed (up to 32 MiB): from then on 1 MiB frames come from the heap, whose freed pages stay resident
while anything above them is in use. Measured (bench/memory.py traffic, 2 GB through a broker with a 256 MiB fetch
cache): RSS stayed about 160 MiB above the cache for good; with a periodic malloc_trim(0), which hands the free
pages anywhere in the heaps back (madvise), it went back to the cache plus the interpreter. Elsewhere than glibc
this does nothing.
"""

from __future__ import annotations

import ctypes
from typing import Any


def _malloc_trim() -> Any:
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_TRIM = _malloc_trim()


def release_free_memory() -> None:
    """Return the allocator's free pages to the system (a few milliseconds at most for a heap of a few GB)."""
    if _TRIM is not None:
        _TRIM(0)
