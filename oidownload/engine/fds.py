"""File descriptors: what a run needs for its concurrency, against RLIMIT_NOFILE.

`fit_concurrency` raises the soft limit towards the hard one when that is needed, and
otherwise says how many requests fit while the journal, the reader and the pool keep
the descriptors they must always have.
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass

from oidownload.core.errors import ConfigError

# Held back for what must never fail for want of a descriptor: the journal's rollback
# file (opened at every commit), the input files (the reader and the row estimate),
# the lock and reserve files, and the odd library that opens one.
RESERVED = 16
# A request in flight holds its socket and its body's memfd; a finished request may
# leave an idle keep-alive socket to its host, counted as one more.
PER_REQUEST = 3


@dataclass(frozen=True, slots=True)
class Fit:
    concurrency: int
    limit: int  # the soft RLIMIT_NOFILE in force
    lowered: bool


def open_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 16  # no /proc: stdio, the loop and a few more


def fit_concurrency(concurrency: int, queued_bodies: int) -> Fit:
    """The concurrency that fits the open-file limit, with `queued_bodies` memfds of
    bodies waiting for or in the pool. Raises ConfigError when not even one request fits."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    fixed = open_fds() + RESERVED + queued_bodies
    needed = fixed + PER_REQUEST * concurrency
    if soft != resource.RLIM_INFINITY and needed > soft and (hard == resource.RLIM_INFINITY or hard > soft):
        raised = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY or needed <= soft:
        return Fit(concurrency, soft, False)
    fits = (soft - fixed) // PER_REQUEST
    if fits < 1:
        raise ConfigError(
            f"the open-file limit (ulimit -n {soft}) leaves no room for a single request next to the "
            f"{fixed} descriptors the run holds; raise it (ulimit -n 1024) or use fewer --processes"
        )
    return Fit(fits, soft, True)
