"""How the store's memory maps sit in memory: 2 MiB pages, prefaulting, and the share of a map that
is in 2 MiB pages.

A gather reads rows at random from gigabytes; under 4 KiB pages every row costs a page walk, under
2 MiB pages almost none. On a 2-core CPU VM a 1024-row gather from the 2.56 GB ImageNet-sized store took
0.21 ms with 4 KiB pages and 0.14-0.17 ms with 2 MiB ones (benchmarks/bench_store.py). Linux 6.x
keeps the page cache of ext4 and xfs files in large folios and maps whole 2 MiB folios with one
entry; a file read back under memory pressure can end up in small folios, which ``refresh_huge``
undoes.
"""
from __future__ import annotations

import mmap
import os
import sys

import numpy as np


def want_huge_pages(mm: mmap.mmap) -> None:
    """Ask for 2 MiB pages on this map (MADV_HUGEPAGE): faults and readahead on it then allocate
    2 MiB folios where the kernel and file system can. A kernel without it ignores the request."""
    try:
        mm.madvise(mmap.MADV_HUGEPAGE)
    except (AttributeError, OSError, ValueError):
        pass


def populate(mm: mmap.mmap) -> None:
    """Fault every page of ``mm`` in: MADV_POPULATE_READ (Linux 5.14+) builds the page tables in one
    call; elsewhere read one byte of each page."""
    if len(mm) == 0:
        return
    try:
        if not sys.platform.startswith("linux"):
            raise OSError("MADV_POPULATE_READ is Linux-only")
        mm.madvise(getattr(mmap, "MADV_POPULATE_READ", 22))
    except (OSError, ValueError):
        np.frombuffer(mm, dtype=np.uint8)[::mmap.PAGESIZE].sum()


def huge_share(address: int) -> float | None:
    """Share of the resident pages of the map holding ``address`` that are mapped as 2 MiB pages
    (``FilePmdMapped / Rss`` in /proc/self/smaps); None where smaps does not say."""
    inside, fields = False, {}
    try:
        with open("/proc/self/smaps") as f:
            for line in f:
                parts = line.split()
                if "-" in parts[0] and not parts[0].endswith(":"):  # a map's first line: "lo-hi perms ..."
                    if inside:
                        break
                    lo, hi = (int(x, 16) for x in parts[0].split("-"))
                    inside = lo <= address < hi
                elif inside and len(parts) > 1 and parts[1].isdigit():  # "Rss:  2502280 kB"
                    fields[parts[0].rstrip(":")] = int(parts[1])
    except (OSError, ValueError):
        return None
    if not fields.get("Rss") or "FilePmdMapped" not in fields:
        return None
    return fields["FilePmdMapped"] / fields["Rss"]


def refresh_huge(mm: mmap.mmap, fd: int, address: int, below: float = 0.9) -> float | None:
    """If less than ``below`` of the populated map ``mm`` (of file ``fd``) is in 2 MiB pages, read the
    file into the page cache afresh through this map, which asks for 2 MiB folios: unmap our pages,
    drop the file's cached pages that no process maps (POSIX_FADV_DONTNEED; pages other processes map
    stay), populate again. Costs one read of the file from disk; returns the share after. Done only
    where part of the map is in 2 MiB pages already: a kernel or file system that makes none (share
    0) would have every process re-read the file for nothing."""
    share = huge_share(address)
    if share is None or not 0 < share < below or len(mm) < (2 << 20):
        return share
    try:
        mm.madvise(mmap.MADV_DONTNEED)  # a shared file map: only our page tables go, not the data
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except (AttributeError, OSError):
        pass
    populate(mm)
    return huge_share(address)

