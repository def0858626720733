"""Peak resident memory of this process and of its finished children (decoding workers).

Linux's `getrusage` keeps the high-water mark of resident memory (`ru_maxrss`, in KiB) for
this process and for the largest child that has been waited for. A spawned child starts from
its parent's mark at fork time, which never exceeds the parent's own peak, so the larger of
the two values is exactly the peak of the largest process. Grain's worker processes are
counted once the iterator that started them has been closed.
"""
from __future__ import annotations

import resource


def host_rss_peak_kib() -> int:
    return max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
               resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)


def host_rss_peak_bytes() -> int:
    return host_rss_peak_kib() * 1024
